"""How the ``modelkeep`` command line shows results: tables for people, JSON for programs.

Only the standard library and ``click`` are imported. Tables are laid out here, as
``rich`` lays out its ``SIMPLE_HEAD`` tables and grids (the same text, bold headers on
a terminal); ``rich``, which costs more to import than a read command takes
otherwise, is imported only to wrap a table too wide for the terminal.
"""

from __future__ import annotations

import json
import os
import sys
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
        **({"damaged": record.damaged} if record.damaged else {}),
    }


def lifecycle_cells(row: dict[str, Any]) -> dict[str, Any]:
    """Aliases and tags of a version row as short text for a table cell."""
    if "aliases" not in row:
        return row
    tags = ", ".join(f"{k}={v}" for k, v in row["tags"].items())
    out = {**row, "aliases": ", ".join(row["aliases"]), "tags": tags}
    if row.get("damaged"):
        out["model_type"] = f"damaged: {row['damaged']}"
    return out


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
    # One line per row, with no tab or other control character: keep the table intact.
    return text if text.isprintable() else " ".join("".join(c if c.isprintable() else " " for c in text).split())


def print_table(headers: dict[str, str], rows: list[dict[str, Any]]) -> None:
    """Rows under a header line and a rule; numeric columns right-aligned."""
    right = [
        any(isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) for r in rows) for key in headers
    ]
    body = [[cell(key, row.get(key)) for key in headers] for row in rows]
    titles = list(headers.values())
    bold = _bold()
    widths = _widths([titles, *body])
    lines = [bold(_line(titles, widths, right, " " * 3)), "\u2500" * (sum(widths) + 3 * (len(widths) - 1))]
    lines += [_line(cells, widths, right, " " * 3) for cells in body]
    if not _fits(sum(widths) + 3 * (len(widths) - 1)):
        return _print_with_rich(headers, rows, right)
    click.echo("\n".join(lines))


def _print_with_rich(headers: dict[str, str], rows: list[dict[str, Any]], right: list[bool]) -> None:
    """The table drawn by rich, which wraps cells to a terminal narrower than the table."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for title, numeric in zip(headers.values(), right, strict=True):
        table.add_column(title, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(Text(cell(key, row.get(key))) for key in headers))
    console().print(table)


def print_info(record: ModelMetadata, location: str | None, signature: dict[str, Any]) -> None:
    """One version, section by section: model, metadata, lifecycle, artifact, environment, signature."""
    grid: list[tuple[str, str, bool]] = []  # (key, value, is a section title)

    def section(title: str, items: dict[str, Any]) -> None:
        grid.append((title, "", True))
        for key, value in flatten(items).items():
            grid.append((f"  {key}", "None" if value is None else cell(key, value), False))

    section(
        "Model",
        {
            "model_name": record.model_name,
            "version": record.version,
            "model_type": record.model_type,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            **({"damaged": f"{record.damaged} (run modelkeep verify)"} if record.damaged else {}),
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
        section("Input signature", _compact_signature(record.input_signature))
    if record.lineage:
        section("Lineage", record.lineage)
    section("Signature", {k: signature.get(k) for k in ("status", "scheme", "signer", "fingerprint", "reason")})
    widths = _widths([[key, value] for key, value, _title in grid])
    if not _terminal():
        return click.echo("\n".join(_plain_info(grid, widths[0])))
    bold, title_style = _bold(), _bold(underline=True)
    if not _fits(widths[0] + 2 + widths[1]):
        return _print_info_with_rich(grid)
    lines = []
    for key, value, is_title in grid:
        pad = " " * (widths[0] - _cell_len(key))
        # rich styles a title's text, and pads the rest of the cell in the column's style
        first = bold(title_style(key) + pad) if is_title else bold(key + pad)
        lines.append((first + "  " + value).rstrip())
    click.echo("\n".join(lines))


#: Piped ``info`` is wrapped to this many columns (``COLUMNS`` overrides it).
PIPE_WIDTH = 100


def _plain_info(grid: list[tuple[str, str, bool]], key_width: int) -> list[str]:
    """``info`` for a file or a pipe: plain text, no trailing blanks, long values wrapped under
    their column (words are not split, so a hash or a path stays whole)."""
    import os
    import textwrap

    width = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else PIPE_WIDTH
    room = max(30, width - key_width - 2)
    lines = []
    for key, value, is_title in grid:
        if is_title:
            lines.append(key)
            continue
        parts = textwrap.wrap(value, room, break_long_words=False, break_on_hyphens=False) or [""]
        lines.append((key + " " * (key_width - _cell_len(key)) + "  " + parts[0]).rstrip())
        lines += [" " * (key_width + 2) + part for part in parts[1:]]
    return lines


def _compact_signature(signature: dict[str, Any]) -> dict[str, Any]:
    """The input signature with each column named once: ``name (dtype)``, and no separate
    ``feature_names`` list when the columns already name them."""
    out = dict(signature)
    columns = out.get("columns")
    if isinstance(columns, list) and all(isinstance(c, dict) and "name" in c for c in columns):
        if out.get("feature_names") == [c["name"] for c in columns]:
            del out["feature_names"]
        out["columns"] = ", ".join(
            f"{c['name']} ({', '.join([str(c.get('dtype'))] + (['nullable'] if c.get('nullable') else []))})"
            for c in columns
        )
    elif isinstance(out.get("feature_names"), list):
        out["feature_names"] = ", ".join(str(n) for n in out["feature_names"])
    return out


def _print_info_with_rich(grid: list[tuple[str, str, bool]]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for key, value, is_title in grid:
        if is_title:
            table.add_row(Text(key, style="bold underline"), "")
        else:
            table.add_row(Text(key), Text(value))
    console().print(table)


# -- layout ------------------------------------------------------------------------
def _cell_len(text: str) -> int:
    """Terminal cells ``text`` takes: wide East Asian characters two, combining marks none."""
    if text.isascii():
        return len(text)
    import unicodedata

    return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _widths(rows: list[list[str]]) -> list[int]:
    return [max(_cell_len(row[i]) for row in rows) for i in range(len(rows[0]))]


def _line(cells: list[str], widths: list[int], right: list[bool], gap: str) -> str:
    out = []
    for text, width, to_right in zip(cells, widths, right, strict=True):
        pad = " " * (width - _cell_len(text))
        out.append(pad + text if to_right else text + pad)
    return gap.join(out)


def _terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def _fits(width: int) -> bool:
    """Whether a table ``width`` cells wide fits the terminal (always, when output is not a terminal)."""
    if not _terminal():
        return True
    import shutil

    return width <= shutil.get_terminal_size().columns


def _bold(underline: bool = False) -> Any:
    """A function that makes text bold (and underlined) on a terminal that takes colour, as rich does."""
    term = os.environ.get("TERM", "")
    if not _terminal() or "NO_COLOR" in os.environ or term in ("dumb", "unknown"):
        return lambda text: text
    start = "\x1b[1;4m" if underline else "\x1b[1m"
    return lambda text: f"{start}{text}\x1b[0m" if text else text


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
