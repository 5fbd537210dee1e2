"""``modelkeep import-mlflow``: bring an MLflow registry in (see :mod:`modelkeep.mlflow_import`)."""

from __future__ import annotations

import click


@click.command("import-mlflow")
@click.option(
    "--tracking-uri",
    required=True,
    metavar="URI",
    help="The MLflow store: sqlite:///mlflow.db, postgresql://..., or an mlruns folder.",
)
@click.option("--model", "models", multiple=True, metavar="NAME", help="Import only this model (repeatable).")
@click.option("--dry-run", is_flag=True, help="Only report what would be imported.")
@click.option("--renumber", is_flag=True, help="Map MLflow versions N to N.0.0 instead of keeping N.")
@click.option(
    "--artifacts-dir",
    type=click.Path(file_okay=False, exists=True),
    help="Where to look for artifacts whose recorded absolute path is gone (the store was moved).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout and nothing else.")
@click.pass_context
def import_mlflow_command(
    ctx: click.Context,
    tracking_uri: str,
    models: tuple[str, ...],
    dry_run: bool,
    renumber: bool,
    artifacts_dir: str | None,
    as_json: bool,
) -> None:
    """Import every registered model and version of an MLflow store (no MLflow needed).

    Soft-deleted versions are left out; versions already imported are skipped. sklearn
    models are loaded under the safe-loading policy (a hostile file is refused, not run);
    other flavors are kept as their MLflow model folder.
    """
    from ._progress import ProgressBar
    from .cli import _emit_json, _open, _state, _status
    from .mlflow_import import import_mlflow

    persistence = _open(ctx, create=True)
    progress = ProgressBar(enabled=False if _state(ctx).verbose is False else None, threshold=50)
    report = import_mlflow(
        persistence,
        tracking_uri,
        models=list(models) or None,
        dry_run=dry_run,
        renumber=renumber,
        artifacts_dir=artifacts_dir,
        progress=progress,
    )
    if as_json:
        _emit_json(report.to_dict())
    else:
        _status(ctx, str(report))
    if report.refused:
        ctx.exit(1)
