"""``modelkeep export`` / ``modelkeep import``: portable bundles (see :mod:`modelkeep.bundle`)."""

from __future__ import annotations

from pathlib import Path

import click


def _versions(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[str] | None:
    from .cli_context import split_csv as _split_csv

    return _split_csv(_ctx, _param, value)


@click.command("export")
@click.option("--model-name", required=True, help="Name of the model.")
@click.option("--versions", callback=_versions, help="Comma-separated versions (default: all).")
@click.option(
    "--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Bundle file to write."
)
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
@click.pass_context
def export_command(ctx: click.Context, model_name: str, versions: list[str] | None, output: Path, force: bool) -> None:
    """Write versions of a model, with their metadata and digests, to one bundle file (.mkb).

    The bundle is signed when a signing key is configured.
    """
    from .bundle import export_bundle
    from .cli_context import open_registry as _open
    from .cli_context import print_status as _status

    path = export_bundle(_open(ctx), model_name, output, versions=versions, force=force)
    _status(ctx, f"wrote {path}")


@click.command("import")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout and nothing else.")
@click.pass_context
def import_command(ctx: click.Context, bundle: Path, as_json: bool) -> None:
    """Verify a bundle file completely, then register its versions.

    Every digest (and the signature, when a signing key is configured) is checked before
    anything is registered; versions already present with the same bytes are skipped.
    """
    from .bundle import import_bundle
    from .cli_context import open_registry as _open
    from .cli_context import print_status as _status
    from .cli_render import emit_json as _emit_json

    report = import_bundle(_open(ctx, create=True), bundle)
    if as_json:
        _emit_json(report.to_dict())
    else:
        _status(ctx, str(report))
