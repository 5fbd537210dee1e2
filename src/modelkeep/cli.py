"""The ``modelkeep`` command line: a thin layer over :class:`modelkeep.ModelPersistence`.

Each command parses its arguments, makes one library call, and renders the
result: aligned tables for people, or JSON on stdout with ``--json``. Errors
become one ``Error: ...`` line on stderr and exit code 1 (2 for usage errors);
``--verbose`` adds the traceback.

Only ``click`` and the standard library are imported at start-up, so that
``modelkeep --help`` stays fast; the library, ``rich`` and ``pandas`` are
imported by the commands that use them.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .formats import FORMATS  # a dict of names; the formats themselves load lazily

if TYPE_CHECKING:
    from rich.console import Console

    from .config import Settings
    from .metadata import ModelMetadata
    from .registry import ModelPersistence


@dataclass
class _State:
    """Global options, and the library object once a command has asked for it."""

    config_path: Path | None
    overrides: dict[str, Any]
    verbose: bool | None  # True: --verbose, False: --quiet, None: neither
    settings: Settings | None = None
    persistence: ModelPersistence | None = None


def _state(ctx: click.Context) -> _State:
    state = ctx.find_object(_State)
    if state is None:  # a command invoked without the cli group
        raise RuntimeError("modelkeep commands must run under modelkeep.cli.cli")
    return state


def _open(ctx: click.Context, *, create: bool = False) -> ModelPersistence:
    """Build the library object from the config file and global options (once).

    Only ``save`` creates a registry; the other commands report a missing one,
    so that a mistyped ``--models-dir`` is an error rather than a new empty registry.
    """
    state = _state(ctx)
    if state.persistence is None:
        from ._progress import ProgressBar
        from .config import load_settings

        level = None if state.verbose is None else "DEBUG" if state.verbose else "ERROR"
        state.settings = load_settings(state.config_path, log_level=level, **state.overrides)
        state.settings.apply_logging()
        _log_to_stderr(bool(state.verbose))
        progress = ProgressBar(enabled=False if state.verbose is False else None)
        state.persistence = ctx.with_resource(state.settings.create_persistence(progress=progress, create=create))
    return state.persistence


def _log_to_stderr(enabled: bool) -> None:
    """Send the library's log records to stderr (for --verbose), replacing an earlier handler."""
    import logging

    logger = logging.getLogger("modelkeep")
    for handler in [h for h in logger.handlers if h.get_name() == "modelkeep-cli"]:
        logger.removeHandler(handler)
    if enabled:
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name("modelkeep-cli")
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def _one_line(exc: BaseException) -> str:
    """A one-line description of ``exc`` for the ``Error:`` line."""
    from .errors import ModelKeepError

    if isinstance(exc, ModelKeepError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{exc.strerror}: {exc.filename}"
        if exc.filename2 is not None:
            text += f" -> {exc.filename2}"
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


class _Group(click.Group):
    """A group that turns every non-click exception into one ``Error:`` line, exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, BrokenPipeError):
            raise  # click reports these itself (a broken pipe exits 1 quietly)
        except Exception as exc:
            state = ctx.find_object(_State)
            if state is not None and state.verbose:
                import traceback

                traceback.print_exc(file=sys.stderr)
            raise click.ClickException(_one_line(exc)) from exc


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from . import __version__

    click.echo(f"modelkeep {__version__}")
    ctx.exit()


def _split_csv(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise click.BadParameter("expected a comma-separated list")
    return items


model_name_option = click.option("--model-name", required=True, help="Name of the model.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout and nothing else.")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="YAML config file (default: ./config.yaml when it exists).",
)
@click.option("--models-dir", metavar="DIR", help="Directory (or fsspec URL) where artifacts are stored.")
@click.option("--registry-url", metavar="URL", help="Registry index database, e.g. sqlite:///reg.db.")
@click.option("--verbose/--quiet", default=None, help="Debug logging and tracebacks / errors only, no progress bar.")
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the modelkeep version and exit.",
)
@click.pass_context
def cli(
    ctx: click.Context,
    config_path: Path | None,
    models_dir: str | None,
    registry_url: str | None,
    verbose: bool | None,
) -> None:
    """Store, version, inspect and compare machine-learning models.

    Settings come from --config (or ./config.yaml), then MODELKEEP_* environment
    variables, then the options below.
    """
    overrides = {"models_dir": models_dir, "registry_url": registry_url}
    ctx.obj = _State(config_path, {k: v for k, v in overrides.items() if v is not None}, verbose)


@cli.command()
@model_name_option
@click.option("--version", help="Version to register (default: next patch after the latest).")
@click.option(
    "--model-file",
    required=True,
    type=click.Path(path_type=Path),
    help="Pickle or joblib file holding the model. ONLY USE FILES YOU TRUST.",
)
@click.option(
    "--metadata",
    "metadata_file",
    type=click.Path(path_type=Path),
    help="JSON file with an object of custom metadata (metrics, dataset info, ...).",
)
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), help="Storage format (default: from config).")
@click.option("--compress/--no-compress", default=None, help="Compress the stored artifact (default: from config).")
@click.option("--overwrite", is_flag=True, help="Replace the version if it already exists.")
@json_option
@click.pass_context
def save(
    ctx: click.Context,
    model_name: str,
    version: str | None,
    model_file: Path,
    metadata_file: Path | None,
    fmt: str | None,
    compress: bool | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Register the model in a pickle or joblib file as a new version.

    WARNING: reading --model-file unpickles it, and unpickling runs any code the
    file contains. Use only files you trust.
    """
    metadata = _read_metadata(metadata_file) if metadata_file is not None else None
    record = _open(ctx, create=True).import_file(
        model_file,
        model_name,
        version,
        overwrite=overwrite,
        serialization_format=fmt,
        compress=compress,
        metadata=metadata,
    )
    location = _artifact_location(ctx, record)
    if as_json:
        _emit_json({**record.to_dict(), "path": location})
    else:
        click.echo(f"Saved {record.model_name} version {record.version} to {location}")


@cli.command()
@model_name_option
@click.option("--version", help="Version to export (default: latest).")
@click.option(
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="File to write; its extension (.joblib, .pkl, .pickle, .pkl.gz) picks the format.",
)
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
@click.pass_context
def load(ctx: click.Context, model_name: str, version: str | None, output: Path, force: bool) -> None:
    """Write a stored model version to a file."""
    persistence = _open(ctx)
    resolved = persistence.resolve_version(model_name, version)
    written = persistence.export_file(model_name, resolved, output, force=force)
    _status(ctx, f"Wrote {model_name} version {resolved} to {written}")


@cli.command("list")
@click.option("--model-name", help="List this model's versions instead of all models.")
@json_option
@click.pass_context
def list_(ctx: click.Context, model_name: str | None, as_json: bool) -> None:
    """List every model, or (with --model-name) one model's versions."""
    persistence = _open(ctx)
    if model_name is None:
        rows = [summary.to_dict() for summary in persistence.model_summaries()]
        headers = {"name": "Model", "version_count": "Versions", "latest_version": "Latest", "updated_at": "Updated"}
    else:
        rows = [_version_row(r) for r in persistence.list_version_records(model_name)]
        headers = {
            "version": "Version",
            "model_type": "Type",
            "created_at": "Created",
            "size": "Size",
            "format": "Format",
        }
    if as_json:
        _emit_json(rows)
    elif not rows:
        _status(ctx, "No models registered.")
    else:
        _print_table(headers, rows)


@cli.command()
@model_name_option
@click.option("--version", help="Version to describe (default: latest).")
@json_option
@click.pass_context
def info(ctx: click.Context, model_name: str, version: str | None, as_json: bool) -> None:
    """Show one version's metadata, artifact and environment.

    The artifact part gives its path, format, compression, size and SHA-256.
    """
    record = _open(ctx).get_version(model_name, version)
    location = _artifact_location(ctx, record)
    if as_json:
        _emit_json({**record.to_dict(), "path": location})
    else:
        _print_info(record, location)


@cli.command()
@model_name_option
@click.option("--versions", callback=_split_csv, help="Comma-separated versions (default: all).")
@click.option("--metrics", callback=_split_csv, help="Comma-separated columns to show (default: all).")
@json_option
@click.pass_context
def compare(
    ctx: click.Context,
    model_name: str,
    versions: list[str] | None,
    metrics: list[str] | None,
    as_json: bool,
) -> None:
    """Compare metadata and metrics across a model's versions."""
    table = _open(ctx).compare_versions(model_name, versions)
    if metrics is not None:
        for metric in metrics:
            if metric not in table.columns:
                available = ", ".join(str(c) for c in table.columns if c != "version")
                raise click.ClickException(
                    f"unknown metric {metric!r} for model {model_name!r}; available: {available}"
                )
        table = table[["version", *(m for m in metrics if m != "version")]]
    rows = json.loads(table.to_json(orient="records", date_format="iso"))
    if as_json:
        _emit_json(rows)
    else:
        _print_table({str(c): str(c) for c in table.columns}, rows)


@cli.command()
@model_name_option
@click.option("--version", required=True, help="Version to delete.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def delete(ctx: click.Context, model_name: str, version: str, yes: bool) -> None:
    """Delete one model version (asks for confirmation unless --yes)."""
    if not yes and not _stdin_is_interactive():
        raise click.ClickException("refusing to delete without confirmation: stdin is not a terminal; pass --yes")
    persistence = _open(ctx)
    persistence.resolve_version(model_name, version)  # fail before asking about a missing version
    if not yes:
        click.confirm(f"Delete {model_name} version {version}?", abort=True, err=True)
    persistence.delete(model_name, version)
    _status(ctx, f"Deleted {model_name} version {version}")


@cli.command()
@click.option("--to-config", "to_config", type=click.Path(path_type=Path), help="YAML config of the destination.")
@click.option("--to-models-dir", metavar="DIR", help="Destination models directory (or fsspec URL).")
@click.option("--to-registry-url", metavar="URL", help="Destination index database URL.")
@click.option("--model-name", "model_names", multiple=True, help="Copy only this model (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace destination versions whose bytes differ.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout and nothing else.")
@click.pass_context
def copy(
    ctx: click.Context,
    to_config: Path | None,
    to_models_dir: str | None,
    to_registry_url: str | None,
    model_names: tuple[str, ...],
    overwrite: bool,
    as_json: bool,
) -> None:
    """Copy models from this registry to another (e.g. local -> PostgreSQL + S3).

    Every version is copied byte for byte with its metadata and digests, and
    verified in the destination before it is registered there. Versions the
    destination already holds with the same SHA-256 are skipped.
    """
    from ._progress import ProgressBar
    from .config import load_settings
    from .migrate import copy_registry

    if to_config is None and to_models_dir is None and to_registry_url is None:
        raise click.UsageError("give the destination: --to-config, --to-models-dir and/or --to-registry-url")
    source = _open(ctx)
    settings = load_settings(to_config, models_dir=to_models_dir, registry_url=to_registry_url)
    progress = ProgressBar(enabled=False if _state(ctx).verbose is False else None)
    dest = ctx.with_resource(settings.create_persistence(progress=progress))
    report = copy_registry(source, dest, models=list(model_names) or None, overwrite=overwrite, progress=progress)
    if as_json:
        _emit_json(
            {
                "copied": [list(v) for v in report.copied],
                "skipped": [list(v) for v in report.skipped],
                "overwritten": [list(v) for v in report.overwritten],
                "bytes_copied": report.bytes_copied,
            }
        )
    else:
        _status(ctx, str(report))


@cli.command()
@click.option("--model-name", default=None, help="Check only this model.")
@json_option
@click.pass_context
def verify(ctx: click.Context, model_name: str | None, as_json: bool) -> None:
    """Re-hash every artifact; report missing, corrupt and orphaned files (exit 1 if any)."""
    report = _open(ctx).verify(model_name)
    if as_json:
        _emit_json(report.to_dict())
    else:
        for problem in report.problems:
            click.echo(str(problem))
        _status(
            ctx,
            f"checked {report.versions_checked} version(s), {report.blobs_checked} blob(s), "
            f"{_human_size(report.bytes_checked)}: "
            + ("all intact" if report.ok else f"{len(report.problems)} problem(s)"),
        )
    if not report.ok:
        ctx.exit(1)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only report what would be removed.")
@click.option(
    "--min-age",
    "min_age",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    help="Keep leftovers younger than this many seconds (they may belong to a save in progress).",
)
@json_option
@click.pass_context
def gc(ctx: click.Context, dry_run: bool, min_age: float, as_json: bool) -> None:
    """Remove crash leftovers: staged temp files, and files no index entry uses."""
    report = _open(ctx).gc(dry_run=dry_run, min_age_seconds=min_age)
    if as_json:
        _emit_json(report.to_dict())
    else:
        verb = "would remove" if dry_run else "removed"
        for item in report.removed:
            click.echo(f"{verb} {item.key} ({item.reason}, {_human_size(item.size)})")
        for claim in report.released_claims:
            click.echo(f"{'would release' if dry_run else 'released'} the stale write claim: {claim}")
        for error in report.errors:
            click.echo(f"could not remove {error}", err=True)
        _status(
            ctx,
            f"{verb} {len(report.removed)} file(s), {_human_size(report.bytes_freed)}; "
            f"kept {len(report.kept)} younger than {min_age:g} s; repaired {len(report.repaired)} sidecar(s)",
        )
    if not report.ok:
        ctx.exit(1)


@cli.command()
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def reindex(ctx: click.Context, yes: bool) -> None:
    """Rebuild the index from the *_metadata.json sidecar files (disaster recovery, moved stores)."""
    if not yes and not _stdin_is_interactive():
        raise click.ClickException("refusing to rebuild the index without confirmation: pass --yes")
    persistence = _open(ctx, create=True)  # a lost registry.db is exactly when reindex is needed
    if not yes:
        click.confirm("Replace the index with what the sidecar files describe?", abort=True, err=True)
    count = persistence.reindex()
    _status(ctx, f"Reindexed {count} version(s)")


from .cli_doctor import doctor  # noqa: E402

cli.add_command(doctor)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``modelkeep`` console script and ``python -m modelkeep``."""
    cli.main(args=argv, prog_name="modelkeep")


# -- input helpers ------------------------------------------------------------


def _read_metadata(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or a one-line user error."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.ClickException(
            f"--metadata {path}: invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc
    if not isinstance(data, dict):
        raise click.ClickException(f"--metadata {path}: expected a JSON object, got {type(data).__name__}")
    return data


def _stdin_is_interactive() -> bool:
    try:
        return click.get_text_stream("stdin").isatty()
    except (AttributeError, ValueError):
        return False


def _artifact_location(ctx: click.Context, record: ModelMetadata) -> str | None:
    """Where the version's artifact lives: a local path, or a URL for remote stores."""
    persistence = _state(ctx).persistence
    if record.artifact is None or persistence is None:
        return None
    return str(persistence.store.display_path(record.artifact.key))


# -- rendering ----------------------------------------------------------------


def _status(ctx: click.Context, message: str) -> None:
    """A message for people; --quiet hides it."""
    if _state(ctx).verbose is not False:
        click.echo(message)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _version_row(record: ModelMetadata) -> dict[str, Any]:
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
    }


def _console() -> Console:
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = 1000  # never wrap cells when piped
    return console


def _cell(key: str, value: Any) -> str:
    """Format one value for a table cell."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if key in ("size",) and isinstance(value, int):
        return _human_size(value)
    if key.endswith("_at") and isinstance(value, str):
        return _short_time(value)
    if isinstance(value, float):
        text = format(value, ".6g")
        return text if any(c in text for c in ".en") else f"{text}.0"  # keep 1.0 a float
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def _print_table(headers: dict[str, str], rows: list[dict[str, Any]]) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for key, title in headers.items():
        numeric = any(isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) for r in rows)
        table.add_column(title, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(Text(_cell(key, row.get(key))) for key in headers))
    _console().print(table)


def _print_info(record: ModelMetadata, location: str | None) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()

    def section(title: str, items: dict[str, Any]) -> None:
        table.add_row(Text(title, style="bold underline"), "")
        for key, value in _flatten(items).items():
            table.add_row(Text(f"  {key}"), Text("None" if value is None else _cell(key, value)))

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
    artifact = record.artifact
    if artifact is not None:
        section(
            "Artifact",
            {
                "path": location,
                "format": artifact.format,
                "compression": artifact.compression or "none",
                "size": f"{_human_size(artifact.size)} ({artifact.size} bytes)",
                "sha256": artifact.sha256,
                **artifact.extra,
            },
        )
    section("Environment", record.environment)
    section("Signature", {"signed": "yes" if record.signature else "no"})
    _console().print(table)


def _flatten(items: dict[str, Any]) -> dict[str, Any]:
    """One level of nested dicts becomes dotted keys: ``model_params.C``."""
    flat: dict[str, Any] = {}
    for key, value in items.items():
        if isinstance(value, dict) and value:
            flat.update({f"{key}.{sub_key}": sub_value for sub_key, sub_value in value.items()})
        else:
            flat[key] = value
    return flat


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _short_time(iso: str) -> str:
    import datetime as dt

    try:
        parsed = dt.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return parsed.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
