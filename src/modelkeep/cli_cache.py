"""``modelkeep cache info|prune|clear``: the local cache of remote artifacts.

The cache is per user and shared by every registry (see :mod:`modelkeep.storage.cache`);
its cap is ``cache_max_bytes`` from the settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from .cli_render import human_size

if TYPE_CHECKING:
    from .storage.cache import ArtifactCache


def _cache(ctx: click.Context) -> ArtifactCache:
    from .cli_context import cli_state
    from .config import load_settings
    from .storage.cache import DEFAULT_MAX_BYTES, ArtifactCache

    state = cli_state(ctx)
    cap = load_settings(state.config_path, **state.overrides).persistence.cache_max_bytes
    return ArtifactCache(max_bytes=DEFAULT_MAX_BYTES if cap is None else cap)


@click.group()
def cache() -> None:
    """Show, shrink or empty the local cache of remote artifacts."""


@cache.command()
@click.pass_context
def info(ctx: click.Context) -> None:
    """Where the cache is, how many artifacts it holds and how large it is."""
    c = _cache(ctx)
    found = c.info()
    click.echo(f"cache: {found.folder}")
    cap = "off" if found.max_bytes == 0 else human_size(found.max_bytes)
    click.echo(f"entries: {found.entries}, {human_size(found.bytes)} (cap {cap})")


@cache.command()
@click.option("--max-bytes", "max_bytes", help="Shrink to this size (e.g. 2GiB) instead of the configured cap.")
@click.pass_context
def prune(ctx: click.Context, max_bytes: str | None) -> None:
    """Evict the least recently used artifacts down to the cap, and remove odd files."""
    from .formats.budget import parse_size

    c = _cache(ctx)
    try:
        limit = None if max_bytes is None else (0 if max_bytes.strip() == "0" else parse_size(max_bytes))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-bytes") from None
    removed, freed = c.prune(limit)
    click.echo(f"removed {removed} file(s), freed {human_size(freed)}")


@cache.command()
@click.pass_context
def clear(ctx: click.Context) -> None:
    """Remove every cached artifact."""
    c = _cache(ctx)
    removed, freed = c.clear()
    click.echo(f"removed {removed} file(s), freed {human_size(freed)}")
