"""How the ``modelkeep`` command line shows results: tables for people, JSON for programs.

Only the standard library and ``click`` are imported at start-up; ``rich`` is
imported by the functions that draw tables.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console

    from .copying import CopyReport
    from .maintenance import GcReport, VerifyReport
    from .metadata import ModelMetadata


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def version_row(record: ModelMetadata) -> dict[str, Any]:
    artifact = record.artifact
    return {
        "version": record.version,
        "model_type": record.model_type,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "size": artifact.size if artifact else None,
        "format": artifact.format if artifact else None,
        "compression": artifact.compression if artifact else None,
        "sha256": artifact.sha256 if artifact else None,
        "aliases": record.aliases,
        "tags": record.tags,
    }


def lifecycle_cells(row: dict[str, Any]) -> dict[str, Any]:
    """Aliases and tags of a version row as short text for a table cell."""
    if "aliases" not in row:
        return row
    tags = ", ".join(f"{k}={v}" for k, v in row["tags"].items())
    return {**row, "aliases": ", ".join(row["aliases"]), "tags": tags}


def console() -> Console:
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = 1000  # never wrap cells when piped
    return console


def cell(key: str, value: Any) -> str:
    """Format one value for a table cell."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if key in ("size",) and isinstance(value, int):
        return human_size(value)
    if key.endswith("_at") and isinstance(value, str):
        return short_time(value)
    if isinstance(value, float):
        text = format(value, ".6g")
        return text if any(c in text for c in ".en") else f"{text}.0"  # keep 1.0 a float
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    text = str(value)
    return " ".join(text.split()) if "\n" in text else text  # one line per row: keep the table intact


def print_table(headers: dict[str, str], rows: list[dict[str, Any]]) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for key, title in headers.items():
        numeric = any(isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) for r in rows)
        table.add_column(title, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(Text(cell(key, row.get(key))) for key in headers))
    console().print(table)


def print_info(record: ModelMetadata, location: str | None, signature: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()

    def section(title: str, items: dict[str, Any]) -> None:
        table.add_row(Text(title, style="bold underline"), "")
        for key, value in flatten(items).items():
            table.add_row(Text(f"  {key}"), Text("None" if value is None else cell(key, value)))

    section(
        "Model",
        {
            "model_name": record.model_name,
            "version": record.version,
            "model_type": record.model_type,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
        },
    )
    section("Metadata", record.metadata)
    section(
        "Lifecycle",
        {"aliases": ", ".join(record.aliases), "tags": record.tags, "description": record.description},
    )
    artifact = record.artifact
    if artifact is not None:
        section(
            "Artifact",
            {
                "path": location,
                "format": artifact.format,
                "compression": artifact.compression or "none",
                "size": f"{human_size(artifact.size)} ({artifact.size} bytes)",
                "sha256": artifact.sha256,
                **artifact.extra,
            },
        )
    section("Environment", record.environment)
    if record.input_signature:
        section("Input signature", record.input_signature)
    if record.lineage:
        section("Lineage", record.lineage)
    section("Signature", {k: signature.get(k) for k in ("status", "scheme", "signer", "fingerprint", "reason")})
    console().print(table)


def flatten(items: dict[str, Any]) -> dict[str, Any]:
    """One level of nested dicts becomes dotted keys: ``model_params.C``."""
    flat: dict[str, Any] = {}
    for key, value in items.items():
        if isinstance(value, dict) and value:
            flat.update({f"{key}.{sub_key}": sub_value for sub_key, sub_value in value.items()})
        else:
            flat[key] = value
    return flat


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def short_time(iso: str) -> str:
    import datetime as dt

    try:
        parsed = dt.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return parsed.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def copy_report_json(report: CopyReport) -> dict[str, Any]:
    """``modelkeep copy --json``."""
    return {
        "copied": [list(v) for v in report.copied],
        "skipped": [list(v) for v in report.skipped],
        "overwritten": [list(v) for v in report.overwritten],
        "bytes_copied": report.bytes_copied,
    }


def verify_summary(report: VerifyReport) -> str:
    """The last line of ``modelkeep verify``."""
    return (
        f"checked {report.versions_checked} version(s), {report.blobs_checked} blob(s), "
        f"{human_size(report.bytes_checked)}: " + ("all intact" if report.ok else f"{len(report.problems)} problem(s)")
    )


def gc_lines(report: GcReport, min_age: float) -> tuple[list[str], list[str], str]:
    """``modelkeep gc``: (lines for stdout, lines for stderr, summary)."""
    verb = "would remove" if report.dry_run else "removed"
    purged = "would purge" if report.dry_run else "purged"
    out = [f"{purged} {model} {version} from the trash" for model, version in report.purged]
    out += [f"{verb} {item.key} ({item.reason}, {human_size(item.size)})" for item in report.removed]
    release = "would release" if report.dry_run else "released"
    out += [f"{release} the stale write claim: {claim}" for claim in report.released_claims]
    err = [f"could not remove {error}" for error in report.errors]
    summary = (
        f"{verb} {len(report.removed)} file(s), {human_size(report.bytes_freed)}; "
        f"kept {len(report.kept)} younger than {min_age:g} s; repaired {len(report.repaired)} sidecar(s)"
    )
    return out, err, summary
