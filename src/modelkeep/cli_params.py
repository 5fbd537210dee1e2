"""``modelkeep backfill-params``: record the deep parameters of versions saved before 0.2."""

from __future__ import annotations

import click


@click.command("backfill-params")
@click.option("--model-name", help="Only this model (default: every model).")
@click.option("--version", help="Only this version (with --model-name).")
@click.option("--dry-run", is_flag=True, help="Load and report, but write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout and nothing else.")
@click.pass_context
def backfill_params(
    ctx: click.Context, model_name: str | None, version: str | None, dry_run: bool, as_json: bool
) -> None:
    """Make pipeline parameters of versions saved before 0.2 searchable (params.<step>__<param>).

    Each such version is loaded as `modelkeep load` loads it (signature, digests,
    allow-list, your trust settings) and its parameters are recorded again from
    the model. Versions that do not load are skipped and listed (exit 1).
    Through a registry server, the versions load here and the server records
    what was captured (admins only).
    """
    from .cli_context import open_registry
    from .cli_context import print_status as _status
    from .cli_render import emit_json as _emit_json

    if version is not None and model_name is None:
        raise click.UsageError("--version needs --model-name")
    report = open_registry(ctx).backfill_params(model_name, version, dry_run=dry_run)
    if as_json:
        _emit_json(report.to_dict())
    else:
        verb = "would record" if dry_run else "recorded"
        for m, v in report.updated:
            click.echo(f"{verb} {m} {v}")
        for m, v in report.given:
            click.echo(f"left {m} {v} as saved: its model_params were given at save")
        for skipped in report.skipped:
            click.echo(f"skipped {skipped.model_name} {skipped.version}: {skipped.cli_reason}")
        _status(ctx, str(report))
    if report.skipped:
        ctx.exit(1)
