"""``modelkeep ui``: a web page to browse, compare and promote models.

Needs the ``[ui]`` extra (Starlette, Jinja2, uvicorn). Charts are drawn by
uPlot, shipped in ``static/`` (MIT licence beside it), so the page works
offline. :func:`create_app` builds the ASGI app; :func:`serve` runs it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import sys
import threading
import webbrowser
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from ..registry import ModelPersistence


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_app(persistence: ModelPersistence, *, read_only: bool = False) -> Starlette:
    """The UI of ``persistence``'s registry as an ASGI application."""
    from .app import create_app as build

    return build(persistence, read_only=read_only)


def serve(
    persistence: ModelPersistence,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    read_only: bool = False,
    open_browser: bool = False,
    echo: Callable[[str], None] = print,
) -> None:
    """Serve the UI until Ctrl-C. Binding anything but loopback prints a warning."""
    import uvicorn

    app = create_app(persistence, read_only=read_only)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    if not is_loopback(host):
        print(
            f"Warning: the UI is bound to {host}, so other machines can reach it"
            + ("" if read_only else " and change aliases, tags and the trash; consider --read-only"),
            file=sys.stderr,
        )
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    echo(f"modelkeep UI: {url} (read-only)" if read_only else f"modelkeep UI: {url}")
    echo("Press Ctrl-C to stop.")
    if open_browser:
        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    # server.run() returns after a graceful shutdown on Ctrl-C / SIGTERM; newer uvicorn then
    # re-raises the signal, which here only means "stopped as asked".
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    echo("modelkeep UI stopped.")
