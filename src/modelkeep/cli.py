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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .cli_context import CliState, cli_state, open_registry, print_status, split_csv, stdin_is_interactive
from .cli_render import (
    copy_report_json,
    emit_json,
    gc_lines,
    lifecycle_cells,
    print_info,
    print_table,
    verify_summary,
    version_row,
)
from .errors import ModelKeepError, ServerError, ServerOnlyError
from .formats import FORMATS  # a dict of names; the formats themselves load lazily

if TYPE_CHECKING:
    from .metadata import ModelMetadata
    from .storage import ArtifactStore


#: Exit status when modelkeep itself failed (a bug), as ``sysexits.h``'s EX_SOFTWARE.
EXIT_INTERNAL_ERROR = 70


def _one_line(exc: BaseException) -> str:
    """A one-line description of ``exc`` for the ``Error:`` line, in CLI spelling; lines the
    message indents (commands to paste) stay lines of their own below it."""
    if isinstance(exc, ModelKeepError):
        text = exc.for_cli()
    elif isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{exc.strerror}: {exc.filename}"
        if exc.filename2 is not None:
            text += f" -> {exc.filename2}"
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    out: list[str] = []
    for line in filter(str.strip, text.splitlines()):
        if line.startswith("  ") and out:
            out.append("  " + line.strip())
        elif out and not out[-1].startswith("  "):
            out[-1] += " " + line.strip()
        else:
            out.append(line.strip())
    return "\n".join(out)


def _server_only_line(command_path: str) -> str:
    """The error for a command that cannot run through a registry server (``registry_url`` is
    ``http(s)://``): what to do instead."""
    return (
        f"'{command_path}' needs the registry itself, not a registry server: run it on the server's host "
        "with the server's models_dir and registry_url (unset MODELKEEP_REGISTRY_URL / MODELKEEP_TOKEN there)"
    )


#: Commands defined in modules of their own: ``name -> (module, attribute)``. A module is imported
#: when one of its commands is named (or ``--help`` lists them all), so ``list`` or ``info`` never
#: runs the code that defines ``server`` or ``webhooks``.
LAZY_COMMANDS = {
    "alias": ("cli_lifecycle", "alias"),
    "tag": ("cli_lifecycle", "tag"),
    "describe": ("cli_lifecycle", "describe"),
    "history": ("cli_lifecycle", "history"),
    "restore": ("cli_lifecycle", "restore"),
    "purge": ("cli_lifecycle", "purge"),
    "prune": ("cli_lifecycle", "prune"),
    "search": ("cli_search", "search"),
    "keys": ("cli_keys", "keys"),
    "sign": ("cli_keys", "sign"),
    "export-signed": ("cli_keys", "export_signed"),
    "ui": ("cli_ui", "ui"),
    "server": ("cli_server", "server"),
    "serve": ("cli_serve", "serve"),
    "users": ("cli_users", "users"),
    "policy": ("cli_policy", "policy"),
    "approve": ("cli_policy", "approve"),
    "import-mlflow": ("cli_mlflow", "import_mlflow_command"),
    "export": ("cli_bundle", "export_command"),
    "import": ("cli_bundle", "import_command"),
    "doctor": ("cli_doctor", "doctor"),
    "backfill-params": ("cli_params", "backfill_params"),
    "webhooks": ("cli_events", "webhooks"),
    "events": ("cli_events", "events"),
    "cache": ("cli_cache", "cache"),
}


class _Group(click.Group):
    """Library errors (:class:`ModelKeepError`) and the operating system's (``OSError``:
    missing files, permissions, a full disk) become one ``Error:`` line, exit 1. Anything
    else is a bug in modelkeep: it is shown as one, with its traceback, exit 70; so is a
    registry server's bug (:class:`~modelkeep.errors.ServerError`), in one line, since its
    traceback is in the server's log."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            import importlib

            module, attribute = LAZY_COMMANDS[cmd_name]
            self.add_command(getattr(importlib.import_module(f"{__package__}.{module}"), attribute), cmd_name)
        return self.commands.get(cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and args[0] not in LAZY_COMMANDS:
            for name in LAZY_COMMANDS:  # a mistyped command: click's "Did you mean" reads every name
                self.get_command(ctx, name)
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, BrokenPipeError):
            raise  # click reports these itself (a broken pipe exits 1 quietly)
        except (ModelKeepError, OSError) as exc:
            state = ctx.find_object(CliState)
            if state is not None and state.verbose:
                import traceback

                traceback.print_exc(file=sys.stderr)
            if isinstance(exc, ServerOnlyError) and state is not None and state.command_path:
                # the library names the part it lacks ('store', 'index'); a user typed a command
                raise click.ClickException(_server_only_line(state.command_path)) from exc
            if isinstance(exc, ServerError):  # a bug on the server: its log has the traceback
                click.echo(f"Error: {_one_line(exc)}", err=True)
                ctx.exit(EXIT_INTERNAL_ERROR)
            raise click.ClickException(_one_line(exc)) from exc
        except Exception as exc:
            import traceback

            from . import __version__

            traceback.print_exc(file=sys.stderr)
            click.echo(
                f"Error: internal error in modelkeep {__version__}, please report it with the traceback "
                f"above: {_one_line(exc)}",
                err=True,
            )
            ctx.exit(EXIT_INTERNAL_ERROR)


def add_import_paths(folders: tuple[Path, ...] | list[Path]) -> None:
    """Let a load import the user's own modules, as ``python -m modelkeep`` can: the ``--path``
    folders, then the working directory, appended to ``sys.path``. Appended, not prepended, so a
    file in the working directory never shadows the standard library or an installed package."""
    import os

    for folder in [*folders, Path(os.getcwd())]:
        entry = str(folder.resolve())
        if entry not in sys.path:
            sys.path.append(entry)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from . import __version__

    click.echo(f"modelkeep {__version__}")
    ctx.exit()


model_name_option = click.option("--model-name", required=True, help="Name of the model.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout and nothing else.")
trust_option = click.option(
    "--trust",
    "trust",
    multiple=True,
    metavar="MODULE.NAME",
    help="Trust this global when unpickling, beyond the built-in allow-list (repeatable; "
    "adds to trusted_types from the config and MODELKEEP_TRUSTED_TYPES).",
)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="YAML config file (default: ./config.yaml when it exists).",
)
@click.option("--models-dir", metavar="DIR", help="Directory (or fsspec URL) where artifacts are stored.")
@click.option("--registry-url", metavar="URL", help="Registry index database, e.g. sqlite:///reg.db.")
@click.option(
    "--trusted-key",
    "trusted_keys",
    multiple=True,
    metavar="PUB",
    help="A PEM public key whose signatures are trusted (repeatable; replaces trusted_keys).",
)
@click.option("--verbose/--quiet", default=None, help="Debug logging and tracebacks / errors only, no progress bar.")
@click.option(
    "--quarantine",
    type=click.Choice(["auto", "always", "never"]),
    help="Load versions in a short-lived child process first: auto (default: those not signed by a "
    "trusted key), always, never.",
)
@click.option(
    "--max-load-memory",
    metavar="SIZE",
    help="Bytes one load may allocate, e.g. 4GiB (default: max(256 MiB, 32 x the artifact's size)).",
)
@trust_option
@click.option(
    "--path",
    "import_paths",
    multiple=True,
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also import your own modules (custom classes of a model) from DIR (repeatable); "
    "the working directory is always searched, after installed packages.",
)
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
    trusted_keys: tuple[str, ...],
    verbose: bool | None,
    quarantine: str | None,
    max_load_memory: str | None,
    trust: tuple[str, ...],
    import_paths: tuple[Path, ...],
) -> None:
    """Store, version, inspect and compare machine-learning models.

    Settings come from --config (or ./config.yaml), then MODELKEEP_* environment
    variables, then the options below.
    """
    add_import_paths(import_paths)
    overrides = {
        "models_dir": models_dir,
        "registry_url": registry_url,
        "trusted_keys": list(trusted_keys) or None,
        "quarantine": quarantine,
        "max_load_memory": max_load_memory,
    }
    ctx.obj = CliState(config_path, {k: v for k, v in overrides.items() if v is not None}, verbose, list(trust))


@cli.command()
@model_name_option
@click.option("--version", help="Version to register (default: next patch after the latest).")
@click.option(
    "--model-file",
    required=True,
    type=click.Path(path_type=Path),
    help="Pickle or joblib file holding the model; read under the allow-list (see --trust, --trust-file).",
)
@trust_option
@click.option(
    "--trust-file",
    is_flag=True,
    help="Read --model-file with plain joblib.load, running any code it holds: only for a file you wrote yourself.",
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
    trust: tuple[str, ...],
    trust_file: bool,
) -> None:
    """Register the model in a pickle or joblib file as a new version.

    The file is unpickled under the same allow-list as a load: globals outside it
    are refused unless named with --trust. --trust-file reads the file with plain
    joblib.load, which runs any code the file contains: use it only for files you
    wrote yourself.
    """
    metadata = _read_metadata(metadata_file) if metadata_file is not None else None
    cli_state(ctx).trust.extend(trust)
    record = open_registry(ctx, create=True).import_file(
        model_file,
        model_name,
        version,
        overwrite=overwrite,
        serialization_format=fmt,
        compress=compress,
        metadata=metadata,
        trust_file=trust_file,
    )
    location = _artifact_location(open_registry(ctx), record)
    if as_json:
        emit_json({**record.to_dict(), "path": location})
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
    persistence = open_registry(ctx)
    resolved = persistence.resolve_version(model_name, version)
    written = persistence.export_file(model_name, resolved, output, force=force)
    from .exporting import export_compression
    from .formats import format_for_suffix

    art = persistence.get_version(model_name, resolved).artifact
    assert art is not None
    _, note = export_compression(written.name, *format_for_suffix(written.name), art.format, art.compression)
    print_status(ctx, f"Wrote {model_name} version {resolved} to {written} ({note})")


@cli.command("list")
@click.option("--model-name", help="List this model's versions instead of all models.")
@json_option
@click.pass_context
def list_(ctx: click.Context, model_name: str | None, as_json: bool) -> None:
    """List every model, or (with --model-name) one model's versions."""
    from .cli_readonly import read_registry

    registry = read_registry(ctx)
    if model_name is None:
        rows = [summary.to_dict() for summary in registry.model_summaries()]
        headers = {"name": "Model", "version_count": "Versions", "latest_version": "Latest", "updated_at": "Updated"}
    else:
        rows = [version_row(r) for r in registry.list_version_records(model_name)]
        headers = {
            "version": "Version",
            "model_type": "Type",
            "created_at": "Created",
            "size": "Size",
            "format": "Format",
            "aliases": "Aliases",
            "tags": "Tags",
        }
    if as_json:
        emit_json(rows)
    elif not rows:
        print_status(ctx, "No models registered.")
    else:
        print_table(headers, [lifecycle_cells(row) for row in rows])


@cli.command()
@model_name_option
@click.option("--version", help="Version to describe (default: latest).")
@json_option
@click.pass_context
def info(ctx: click.Context, model_name: str, version: str | None, as_json: bool) -> None:
    """Show one version's metadata, artifact and environment.

    The artifact part gives its path, format, compression, size and SHA-256.
    """
    from .cli_readonly import read_registry

    registry = read_registry(ctx)
    record = registry.get_version(model_name, version)
    location = _artifact_location(registry, record)
    verdict = registry.keyring.verdict(record)
    if as_json:
        emit_json(
            {**record.to_dict(), **record.lifecycle_dict(), "path": location, "signature_status": verdict.to_dict()}
        )
    else:
        print_info(record, location, verdict.to_dict() | {"signer": verdict.signer})


@cli.command()
@model_name_option
@click.option("--versions", callback=split_csv, help="Comma-separated versions (default: all).")
@click.option("--metrics", callback=split_csv, help="Comma-separated columns to show (default: all).")
@click.option("--filter", "filter_text", help="Only versions matching this search filter, e.g. 'accuracy > 0.9'.")
@click.option(
    "--params",
    "params",
    type=click.Choice(["differing", "all", "none"]),
    default="differing",
    show_default=True,
    help="Which model parameters to show as params.<name> columns (--metrics may name any).",
)
@json_option
@click.pass_context
def compare(
    ctx: click.Context,
    model_name: str,
    versions: list[str] | None,
    metrics: list[str] | None,
    filter_text: str | None,
    params: str,
    as_json: bool,
) -> None:
    """Compare metadata, metrics and differing parameters across a model's versions."""
    persistence = open_registry(ctx)
    shown = "all" if metrics is not None else params  # --metrics may name any parameter
    table = persistence.compare_versions(model_name, versions, filter=filter_text, params=shown)
    from .cli_lifecycle import add_lifecycle_columns

    table = add_lifecycle_columns(persistence, model_name, table)
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
        emit_json(rows)
    else:
        print_table({str(c): str(c) for c in table.columns}, rows)


@cli.command()
@model_name_option
@click.option("--version", required=True, help="Version to delete.")
@click.option("--force", is_flag=True, help="Delete even if an alias points at it (the alias is removed).")
@click.option("--yes", "-y", is_flag=True, hidden=True, help="Accepted for older scripts; delete never asks.")
@json_option
@click.pass_context
def delete(ctx: click.Context, model_name: str, version: str, force: bool, yes: bool, as_json: bool) -> None:
    """Move one model version to the trash (undo with `modelkeep restore`; `modelkeep purge` frees the space)."""
    open_registry(ctx).delete(model_name, version, force=force)
    if as_json:
        emit_json({"model_name": model_name, "version": version, "trashed": True})
    else:
        print_status(
            ctx,
            f"Deleted {model_name} version {version} (moved to the trash; undo with: "
            f"modelkeep restore --model-name {model_name} --version {version})",
        )


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
    from .copying import copy_registry

    if to_config is None and to_models_dir is None and to_registry_url is None:
        raise click.UsageError("give the destination: --to-config, --to-models-dir and/or --to-registry-url")
    from .copy_through import copy_through_bundles, is_remote, open_destination

    source = open_registry(ctx)
    progress = ProgressBar(enabled=False if cli_state(ctx).verbose is False else None)
    dest = ctx.with_resource(open_destination(to_config, to_models_dir, to_registry_url, progress))
    if is_remote(source) or is_remote(dest):
        report = copy_through_bundles(source, dest, models=list(model_names) or None, overwrite=overwrite)
    else:
        report = copy_registry(source, dest, models=list(model_names) or None, overwrite=overwrite, progress=progress)
    if as_json:
        emit_json(copy_report_json(report))
    else:
        print_status(ctx, str(report))


@cli.command()
@click.option("--model-name", default=None, help="Check only this model.")
@json_option
@click.pass_context
def verify(ctx: click.Context, model_name: str | None, as_json: bool) -> None:
    """Re-hash every artifact; report missing, corrupt and orphaned files (exit 1 if any)."""
    report = open_registry(ctx).verify(model_name)
    if as_json:
        emit_json(report.to_dict())
    else:
        for problem in report.problems:
            click.echo(str(problem))
        if report.signatures:
            click.echo("signatures: " + ", ".join(f"{n} {status}" for status, n in sorted(report.signatures.items())))
        print_status(ctx, verify_summary(report))
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
@click.option(
    "--purge-deleted-older-than",
    "purge_older",
    metavar="AGE",
    help="First purge versions in the trash for at least AGE (30d, 12h, 90m, 45s).",
)
@json_option
@click.pass_context
def gc(ctx: click.Context, dry_run: bool, min_age: float, purge_older: str | None, as_json: bool) -> None:
    """Remove crash leftovers: staged temp files, and files no index entry uses."""
    report = open_registry(ctx).gc(dry_run=dry_run, min_age_seconds=min_age, purge_deleted_older_than=purge_older)
    if as_json:
        emit_json(report.to_dict())
    else:
        out, err, summary = gc_lines(report, min_age)
        for line in out:
            click.echo(line)
        for line in err:
            click.echo(line, err=True)
        print_status(ctx, summary)
    if not report.ok:
        ctx.exit(1)


@cli.command()
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def reindex(ctx: click.Context, yes: bool) -> None:
    """Rebuild the index from the *_metadata.json sidecar files (disaster recovery, moved stores)."""
    if not yes and not stdin_is_interactive():
        raise click.ClickException("refusing to rebuild the index without confirmation: pass --yes")
    persistence = open_registry(ctx, create=True)  # a lost registry.db is exactly when reindex is needed
    if not yes:
        click.confirm("Replace the index with what the sidecar files describe?", abort=True, err=True)
    count = persistence.reindex()
    print_status(ctx, f"Reindexed {count} version(s)")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``modelkeep`` console script and ``python -m modelkeep``."""
    cli.main(args=argv, prog_name="modelkeep")


# -- input helpers ------------------------------------------------------------


def _read_metadata(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or a one-line user error."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"--metadata {path}: not UTF-8 text: {exc.reason}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.ClickException(
            f"--metadata {path}: invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc
    if not isinstance(data, dict):
        raise click.ClickException(f"--metadata {path}: expected a JSON object, got {type(data).__name__}")
    return data


def _artifact_location(registry: Any, record: ModelMetadata) -> str | None:
    """Where the version's artifact lives: a local path, or a URL for remote stores (behind
    a registry server: the server's URL and the artifact's key there)."""
    if record.artifact is None:
        return None
    store: ArtifactStore | None = getattr(registry, "store", None)
    if store is None:
        return f"{registry.url} ({record.artifact.key})"
    return str(store.display_path(record.artifact.key))
