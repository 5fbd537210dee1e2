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

    The bundle is signed with the key versions are signed with (the per-user key by default).
    """
    from .bundle import export_bundle
    from .cli_context import open_registry as _open
    from .cli_context import print_status as _status

    path = export_bundle(_open(ctx), model_name, output, versions=versions, force=force)
    _status(ctx, f"wrote {path}")


def _byte_size(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    """``1073741824``, ``512M``, ``2G``, ``1T`` (powers of 1024) -> bytes."""
    if value is None:
        return None
    text = value.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    number = text[:-1] if scale > 1 else text
    try:
        size = int(float(number) * scale)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size: use bytes, or a number with K, M, G or T") from None
    if size <= 0:
        raise click.BadParameter("must be more than 0")
    return size


@click.command("import")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--with-aliases",
    is_flag=True,
    help="Also move the aliases the bundle carries (by default they are only reported).",
)
@click.option(
    "--max-bundle-bytes",
    callback=_byte_size,
    metavar="SIZE",
    help="Refuse a bundle whose files total more than SIZE (bytes, or e.g. 512M, 20G) before unpacking it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout and nothing else.")
@click.pass_context
def import_command(
    ctx: click.Context, bundle: Path, with_aliases: bool, max_bundle_bytes: int | None, as_json: bool
) -> None:
    """Verify a bundle file completely, then register its versions.

    Every digest and the manifest's signature are checked before anything is registered;
    versions already present with the same bytes are skipped. The bundle's tags and
    descriptions are applied to the models it carries; its aliases only with --with-aliases.
    """
    from .bundle import import_bundle
    from .cli_context import open_registry as _open
    from .cli_context import print_status as _status
    from .cli_render import emit_json as _emit_json

    report = import_bundle(
        _open(ctx, create=True), bundle, with_aliases=with_aliases, max_bundle_bytes=max_bundle_bytes
    )
    if as_json:
        _emit_json(report.to_dict())
    else:
        _status(ctx, str(report))
