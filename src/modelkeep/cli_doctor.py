"""The ``modelkeep doctor`` command (see :mod:`modelkeep.doctor`)."""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout and nothing else.")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check the settings: index reachable and current, store writable and readable, key sources.

    Prints one line per check; exits 1 if any check fails.
    """
    from .cli import _state
    from .config import load_settings
    from .doctor import run_doctor

    state = _state(ctx)
    report = run_doctor(load_settings(state.config_path, **state.overrides))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for check in report.checks:
            click.echo(str(check))
    if not report.ok:
        ctx.exit(1)
