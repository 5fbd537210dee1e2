"""The ``modelkeep ui`` command: serve the web UI for the configured registry."""

from __future__ import annotations

import click


@click.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="TCP port.")
@click.option("--read-only", is_flag=True, help="Browse only: no alias, tag, description or trash changes.")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a browser.")
@click.pass_context
def ui(ctx: click.Context, host: str, port: int, read_only: bool, open_browser: bool) -> None:
    """Browse, compare and promote models in a web page."""
    try:
        import jinja2  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise click.ClickException(f"the UI needs the [ui] extra: pip install 'modelkeep[ui]' ({exc})") from exc
    from . import ui as web
    from .cli_context import open_registry

    web.serve(open_registry(ctx), host, port, read_only=read_only, open_browser=open_browser, echo=click.echo)
