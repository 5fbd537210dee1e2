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
    from .auth import AuthSettings


#: Where ``modelkeep server --serve MODEL@ALIAS`` answers predictions: ``/serve/MODEL@ALIAS/predict``.
PREDICTIONS_PREFIX = "/serve"


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_app(
    persistence: ModelPersistence,
    *,
    read_only: bool = False,
    auth: AuthSettings | None = None,
    anonymous: bool = True,
    max_upload_bytes: int | None = None,
) -> Starlette:
    """The UI of ``persistence``'s registry as an ASGI application (see :func:`modelkeep.ui.app.create_app`)."""
    from .app import create_app as build

    return build(persistence, read_only=read_only, auth=auth, anonymous=anonymous, max_upload_bytes=max_upload_bytes)


def serve(
    persistence: ModelPersistence,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    read_only: bool = False,
    open_browser: bool = False,
    echo: Callable[[str], None] = print,
    auth: AuthSettings | None = None,
    allow_anonymous: bool = False,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    title: str = "UI",
    predictions: tuple[str, ...] = (),
    max_upload_bytes: int | None = None,
) -> None:
    """Serve the UI until Ctrl-C (``title`` names it in messages: ``modelkeep {title}: URL``).

    With ``local`` accounts and no users configured, the UI is sign-in free on a
    loopback address; bound anywhere else it refuses to start (``ConfigError`` that
    says how to add a user) unless ``allow_anonymous``.
    """
    import dataclasses

    import uvicorn

    from ..errors import ConfigError
    from .auth import AuthSettings

    auth = auth or AuthSettings()
    if host not in ("0.0.0.0", "::", ""):
        auth = dataclasses.replace(auth, allowed_hosts=(*auth.allowed_hosts, host.strip("[]")))
    loopback = is_loopback(host)
    if auth.mode == "proxy" and not auth.trusted_proxies:
        raise ConfigError("--auth proxy needs the proxy's address: add --trusted-proxy ADDRESS")
    if auth.mode == "local" and not loopback and not allow_anonymous and persistence.users.count() == 0:
        raise ConfigError(
            f"refusing to serve the UI on {host} with no users configured (anyone who reaches the port could "
            "change aliases and the trash): add one first with 'modelkeep users add NAME --role admin', "
            "or bind to 127.0.0.1, or pass --allow-anonymous to serve everyone on purpose"
        )
    app = create_app(
        persistence,
        read_only=read_only,
        auth=auth,
        anonymous=loopback or allow_anonymous,
        max_upload_bytes=max_upload_bytes,
    )
    for reference in predictions:  # modelkeep server --serve MODEL@ALIAS
        from ..serve import create_app as prediction_app

        # Every request but /health needs a registry user's API token (the server's users).
        served = prediction_app(persistence, reference, require_tokens=True, allowed_hosts=auth.allowed_hosts)
        app.mount(f"{PREDICTIONS_PREFIX}/{reference}", served)
    scheme = "https" if ssl_certfile else "http"
    shown = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{shown}:{port}/"
    if not loopback:
        who = {
            "local": "signed-in users",
            "proxy": f"users signed in by the proxy at {', '.join(map(str, auth.trusted_proxies))}",
        }
        print(
            f"Warning: the UI is bound to {host}, so other machines can reach it; it serves "
            + (who.get(auth.mode, "everyone") if not (allow_anonymous and auth.mode == "local") else "everyone who can")
            + (
                ". Passwords and sessions travel in clear over plain HTTP: use --ssl-certfile or a TLS proxy"
                if scheme == "http" and auth.mode == "local"
                else ""
            ),
            file=sys.stderr,
        )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="off",
            # The peer address must be the real one: trusted-proxy checks and sign-in limits use it.
            proxy_headers=False,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
        )
    )
    echo(f"modelkeep {title}: {url} (read-only)" if read_only else f"modelkeep {title}: {url}")
    echo("Press Ctrl-C to stop.")
    if open_browser:
        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    # server.run() returns after a graceful shutdown on Ctrl-C / SIGTERM; newer uvicorn then
    # re-raises the signal, which here only means "stopped as asked".
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    echo(f"modelkeep {title} stopped.")
