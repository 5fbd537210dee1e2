"""``modelkeep serve``: predictions over HTTP that follow an alias without a restart.

Needs the ``[serve]`` extra (Starlette, uvicorn, prometheus-client).
:func:`create_app` builds the ASGI app for one model reference (mount it in your own
app, or run it with any ASGI server); :func:`serve` runs it with uvicorn, with
``workers`` pre-forked processes that each load and follow the model.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from ..registry import ModelPersistence

__all__ = ["create_app", "read_token_file", "serve"]

#: Environment variable prometheus_client reads for its multiprocess mode (``--workers`` > 1).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Environment variable that carries a worker's settings (``--workers`` > 1).
SPEC_ENV = "MODELKEEP_SERVE_SPEC"


def create_app(persistence: ModelPersistence, reference: str, **options: Any) -> Starlette:
    """The prediction server for ``reference`` as an ASGI app (see :func:`modelkeep.serve.app.create_app`)."""
    from .app import create_app as build

    return build(persistence, reference, **options)


def read_token_file(path: str | os.PathLike[str]) -> list[str]:
    """The tokens of a token file: one a line; blank lines and ``#`` comments ignored."""
    from ..errors import ConfigError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {str(path)!r}: {exc}") from exc
    tokens = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not tokens:
        raise ConfigError(f"the token file {str(path)!r} holds no token (one a line)")
    short = [t for t in tokens if len(t) < 16]
    if short:
        raise ConfigError(
            f"the token file {str(path)!r} holds a token shorter than 16 characters; use long random ones"
        )
    return tokens


def _is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (as ``modelkeep ui`` decides it;
    not imported from :mod:`modelkeep.ui`, whose package imports the registry)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    persistence: ModelPersistence | None,
    reference: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    workers: int = 1,
    token_file: str | os.PathLike[str] | None = None,
    allowed_hosts: Iterable[str] = (),
    settings_spec: dict[str, Any] | None = None,
    echo: Callable[[str], None] = print,
    **options: Any,
) -> None:
    """Serve ``reference`` over HTTP until Ctrl-C (see :func:`create_app` for ``options``).

    Bound to a non-loopback address, every request but ``/health`` needs a bearer token
    (``token_file``, or a registry user's API token): with neither, this raises
    :class:`~modelkeep.errors.ConfigError`. ``workers`` > 1 needs ``settings_spec`` (how
    to open the registry in each worker; the CLI passes it).
    """
    import uvicorn

    from ..errors import ConfigError

    tokens = read_token_file(token_file) if token_file else []
    loopback = _is_loopback(host)
    users = persistence.users.count() if persistence is not None else 0
    if not loopback and not tokens and users == 0:
        raise ConfigError(
            f"refusing to serve on {host} without tokens (anyone who reaches the port could use the model): "
            "pass --token-file FILE, or add users with API tokens ('modelkeep users add', 'modelkeep users token'), "
            "or bind to 127.0.0.1"
        )
    hosts = [*allowed_hosts]
    if host not in ("0.0.0.0", "::", ""):
        hosts.append(host.strip("[]"))
    app_options = dict(
        options,
        token_file_tokens=tokens,
        require_tokens=bool(tokens) or not loopback,
        allowed_hosts=hosts,
    )
    shown = f"[{host}]" if ":" in host else host
    metrics_dir: str | None = None
    server: Any = None
    if workers > 1:
        if settings_spec is None:
            raise ConfigError("workers > 1 needs the registry's settings; use 'modelkeep serve --workers N'")
        # The workers' metrics meet in a private folder (0700), so /metrics reports them all.
        metrics_dir = tempfile.mkdtemp(prefix="modelkeep-serve-metrics-")
        os.environ[MULTIPROC_ENV] = metrics_dir
        os.environ[SPEC_ENV] = json.dumps(
            {"settings": settings_spec, "reference": reference, "app": {**app_options, "metrics_dir": metrics_dir}},
            default=str,
        )
    else:
        assert persistence is not None
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(persistence, reference, **app_options),
                host=host,
                port=port,
                log_level="warning",
                proxy_headers=False,
            )
        )
    echo(f"modelkeep serve: {reference} on http://{shown}:{port}/ ({workers} worker{'s' if workers > 1 else ''})")
    echo("Press Ctrl-C to stop.")
    if not loopback:
        print(
            f"Warning: bound to {host}; requests need a bearer token, and travel in clear over plain HTTP: "
            "put a TLS proxy in front",
            file=sys.stderr,
        )
    try:
        _run(server, host, port, workers)
    finally:
        if metrics_dir is not None:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(metrics_dir, ignore_errors=True)
    echo("modelkeep serve stopped.")


def _run(server: Any, host: str, port: int, workers: int) -> None:
    import uvicorn

    with contextlib.suppress(KeyboardInterrupt):
        if workers > 1:  # uvicorn's own supervisor: it pre-forks, restarts dead workers, stops them on Ctrl-C
            uvicorn.run(
                "modelkeep.serve.worker:build",
                factory=True,
                host=host,
                port=port,
                workers=workers,
                log_level="warning",
                proxy_headers=False,
            )
        else:
            server.run()
