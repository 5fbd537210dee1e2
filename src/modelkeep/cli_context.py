"""What every ``modelkeep`` command shares: the global options and the opened registry.

The group in :mod:`modelkeep.cli` stores a :class:`CliState` on the click
context; commands, wherever they are defined, reach the library through
:func:`open_registry`. Only ``click`` and the standard library load at start-up.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from .config import Settings
    from .registry import ModelPersistence


@dataclass
class CliState:
    """Global options, and the library object once a command has asked for it."""

    config_path: Path | None
    overrides: dict[str, Any]
    verbose: bool | None  # True: --verbose, False: --quiet, None: neither
    trust: list[str] = field(default_factory=list)  # --trust names, added to the configured trusted_types
    settings: Settings | None = None
    persistence: ModelPersistence | None = None
    #: The command that opened the registry, as typed (``modelkeep events dispatch``), for errors.
    command_path: str | None = None


def cli_state(ctx: click.Context) -> CliState:
    state = ctx.find_object(CliState)
    if state is None:  # a command invoked without the cli group
        raise RuntimeError("modelkeep commands must run under modelkeep.cli.cli")
    return state


def open_registry(ctx: click.Context, *, create: bool = False) -> ModelPersistence:
    """Build the library object from the config file and global options (once).

    Only ``save`` creates a registry; the other commands report a missing one,
    so that a mistyped ``--models-dir`` is an error rather than a new empty registry.
    """
    state = cli_state(ctx)
    state.command_path = ctx.command_path
    if state.persistence is None:
        from ._progress import ProgressBar
        from .config import load_settings

        level = None if state.verbose is None else "DEBUG" if state.verbose else "ERROR"
        state.settings = load_settings(state.config_path, log_level=level, **state.overrides)
        state.settings.persistence.trusted_types = [*state.settings.persistence.trusted_types, *state.trust]
        state.settings.apply_logging()
        log_to_stderr(bool(state.verbose))
        progress = ProgressBar(enabled=False if state.verbose is False else None)
        from .registry import ModelPersistence

        state.persistence = ctx.with_resource(
            ModelPersistence.from_settings(state.settings, progress=progress, create=create)
        )
    return state.persistence


def log_to_stderr(enabled: bool) -> None:
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


def stdin_is_interactive() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def print_status(ctx: click.Context, message: str) -> None:
    """A message for people; --quiet hides it."""
    if cli_state(ctx).verbose is not False:
        click.echo(message)


def split_csv(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise click.BadParameter("expected a comma-separated list")
    return items
