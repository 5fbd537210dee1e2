"""The ``modelkeep doctor`` command (see :mod:`modelkeep.doctor`)."""

from __future__ import annotations

import click

from .cli_context import cli_state
from .cli_render import emit_json


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout and nothing else.")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check the settings: index reachable and current, store writable and readable, key sources.

    Prints one line per check; exits 1 if any check fails.
    """
    from .config import load_settings
    from .doctor import run_doctor

    state = cli_state(ctx)
    report = run_doctor(load_settings(state.config_path, **state.overrides))
    if as_json:
        emit_json(report.to_dict())
    else:
        for check in report.checks:
            click.echo(str(check))
    if not report.ok:
        ctx.exit(1)
