"""The ``modelkeep server`` command: the registry over HTTP, for teams.

One process serves the web UI and the JSON API under ``/api/v1`` (:mod:`modelkeep.api`), with the
UI's identity system (users, roles, API tokens, the SSO header). It alone holds the index URL and
the store's credentials: clients use ``ModelPersistence("https://host")`` with a token.
"""

from __future__ import annotations

from typing import Any

import click

from .cli_ui import start_web, web_options

#: The port ``modelkeep server`` listens on by default.
DEFAULT_SERVER_PORT = 8766


@click.command("server")
@web_options(default_port=DEFAULT_SERVER_PORT)
@click.option(
    "--serve",
    "predictions",
    multiple=True,
    metavar="MODEL[@ALIAS]",
    help="Also answer predictions at /serve/MODEL@ALIAS/predict (and /invocations, /health, /model), "
    "following the alias, for API token holders (repeatable; needs the [serve] extra).",
)
@click.option(
    "--max-upload-size",
    metavar="SIZE",
    help="Refuse request bodies (uploads, blobs, bundles) larger than SIZE with HTTP 413, e.g. 10GiB "
    "(default: the config's server.max_upload_bytes, else no cap).",
)
@click.pass_context
def server(ctx: click.Context, predictions: tuple[str, ...], max_upload_size: str | None, **options: Any) -> None:
    """Serve the registry to a team: the web UI and the JSON API (/api/v1, OpenAPI at /api/v1/openapi.json).

    Clients need only the URL and a token ('modelkeep users token NAME'):
    MODELKEEP_REGISTRY_URL=https://host:port MODELKEEP_TOKEN=... modelkeep list.
    Bound to anything but loopback, the server refuses to start until a user exists
    ('modelkeep users add NAME --role admin'); use --ssl-certfile or a TLS proxy.
    """
    if predictions:
        try:
            import prometheus_client  # noqa: F401
        except ImportError as exc:
            raise click.ClickException(
                f"--serve needs the [serve] extra: pip install 'modelkeep[serve]' ({exc})"
            ) from exc
        from .serve.app import parse_reference

        for reference in predictions:
            parse_reference(reference)  # a malformed reference is reported before the server starts
    start_web(
        ctx,
        allow_anonymous=False,
        title="server",
        predictions=predictions,
        max_upload_bytes=_upload_cap(ctx, max_upload_size),
        **options,
    )


def _upload_cap(ctx: click.Context, text: str | None) -> int | None:
    """``--max-upload-size``, else the config's ``server.max_upload_bytes`` (``None``: no cap)."""
    from .cli_context import cli_state, open_registry
    from .formats.budget import parse_size

    if text is not None:
        if text.strip().lower() in ("none", "off"):
            return None
        try:
            return parse_size(text)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--max-upload-size") from None
    open_registry(ctx)  # reads the config
    settings = cli_state(ctx).settings
    return None if settings is None else settings.server.max_upload_bytes
