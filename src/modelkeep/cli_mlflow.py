"""``modelkeep import-mlflow``: bring an MLflow registry in (see :mod:`modelkeep.mlflow_import`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import click

#: Imports of at least this many versions get a progress bar (on a terminal).
PROGRESS_MIN_VERSIONS = 20


def version_progress(
    enabled: bool | None, console: Any = None
) -> Callable[[str, int | None], AbstractContextManager[Callable[[int], None]]]:
    """A ``progress`` factory counting versions (not bytes): a bar on stderr (or ``console``)
    for imports of :data:`PROGRESS_MIN_VERSIONS` versions or more."""

    @contextmanager
    def progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        from ._progress import stderr_is_terminal

        draw = stderr_is_terminal() if enabled is None else enabled
        if not draw or total is None or total < PROGRESS_MIN_VERSIONS:
            yield lambda _n: None
            return
        import sys

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        out = console if console is not None else Console(file=sys.stderr)
        with Progress(*columns, console=out, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)

    return progress


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
    help=(
        "The folder holding the store's artifacts: the only place they are read from (default: the mlruns "
        "folder, or the SQLite file's folder), and where paths recorded before a move are looked for."
    ),
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
    from .cli_context import cli_state as _state
    from .cli_context import open_registry as _open
    from .cli_context import print_status as _status
    from .cli_render import emit_json as _emit_json
    from .mlflow_import import import_mlflow

    persistence = _open(ctx, create=True)
    progress = version_progress(False if _state(ctx).verbose is False or as_json else None)
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
    if report.refused or report.failed:
        ctx.exit(1)
