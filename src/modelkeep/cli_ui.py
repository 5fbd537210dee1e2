"""The ``modelkeep ui`` command: serve the web UI for the configured registry.

:func:`web_options` and :func:`start_web` are shared with ``modelkeep server``
(:mod:`modelkeep.cli_server`), which serves the same app with its JSON API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from .cli_events import dispatch_events_option, dispatching

F = TypeVar("F", bound=Callable[..., Any])


def web_options(default_port: int) -> Callable[[F], F]:
    """The options ``modelkeep ui`` and ``modelkeep server`` share: address, sign-in, Host names, TLS."""
    options = [
        click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default)."),
        click.option(
            "--port", default=default_port, show_default=True, type=click.IntRange(0, 65535), help="TCP port."
        ),
        click.option(
            "--auth",
            "auth_mode",
            type=click.Choice(["local", "proxy"]),
            default="local",
            show_default=True,
            help="local: accounts from 'modelkeep users' (sign-in page, API tokens); "
            "proxy: an SSO proxy names the user.",
        ),
        click.option(
            "--user-header", default="X-Forwarded-User", show_default=True, help="With --auth proxy: the user's header."
        ),
        click.option(
            "--trusted-proxy",
            multiple=True,
            metavar="ADDRESS",
            help="With --auth proxy: the proxy's address or network (repeatable).",
        ),
        click.option(
            "--proxy-role",
            type=click.Choice(["none", "viewer", "writer", "maintainer", "editor", "admin"]),
            default="viewer",
            show_default=True,
            help="With --auth proxy: the role of a user who has no account in 'modelkeep users'.",
        ),
        click.option(
            "--allowed-host", multiple=True, metavar="NAME", help="Another Host name to answer to (repeatable)."
        ),
        click.option(
            "--protected-alias",
            multiple=True,
            metavar="ALIAS",
            help="Alias only admins may move (repeatable; replaces the configured set, 'production' by default).",
        ),
        click.option(
            "--secure-cookies", is_flag=True, help="Mark cookies Secure over plain HTTP (a TLS proxy is in front)."
        ),
        click.option(
            "--ssl-certfile", type=click.Path(exists=True, dir_okay=False), help="Serve HTTPS with this certificate."
        ),
        click.option(
            "--ssl-keyfile", type=click.Path(exists=True, dir_okay=False), help="The certificate's private key."
        ),
        dispatch_events_option,
    ]

    def decorate(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def start_web(
    ctx: click.Context,
    *,
    host: str,
    port: int,
    auth_mode: str,
    user_header: str,
    trusted_proxy: tuple[str, ...],
    proxy_role: str,
    allowed_host: tuple[str, ...],
    protected_alias: tuple[str, ...],
    secure_cookies: bool,
    ssl_certfile: str | None,
    ssl_keyfile: str | None,
    dispatch_events: bool,
    **serve_options: Any,
) -> None:
    """Open the registry and serve the web app with the :func:`web_options` (until Ctrl-C)."""
    try:
        import jinja2  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise click.ClickException(f"this command needs the [ui] extra: pip install 'modelkeep[ui]' ({exc})") from exc
    from . import ui as web
    from .cli_context import open_registry
    from .identity import AccessPolicy
    from .ui.auth import AuthSettings

    try:
        proxies = AuthSettings.networks(trusted_proxy)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--trusted-proxy") from exc
    auth = AuthSettings(
        mode=auth_mode,
        user_header=user_header,
        trusted_proxies=proxies,
        proxy_role=proxy_role,
        allowed_hosts=tuple(allowed_host),
        secure_cookies=secure_cookies,
    )
    persistence = open_registry(ctx)
    from .api.client import HttpRegistry, server_only

    if isinstance(persistence, HttpRegistry):  # a server in front of a server: serve the registry itself
        raise server_only(f"'{ctx.command_path}'")
    if protected_alias:
        persistence.access = AccessPolicy.build(protected_alias, persistence.access.alias_movers)
    ctx.with_resource(dispatching(persistence, dispatch_events))  # stopped when the command ends
    web.serve(
        persistence,
        host,
        port,
        echo=click.echo,
        auth=auth,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        **serve_options,
    )


@click.command("ui")
@web_options(default_port=8765)
@click.option("--read-only", is_flag=True, help="Browse only: no alias, tag, description or trash changes.")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a browser.")
@click.option("--allow-anonymous", is_flag=True, help="Serve a non-loopback address with no users configured.")
@click.pass_context
def ui(ctx: click.Context, read_only: bool, open_browser: bool, allow_anonymous: bool, **options: Any) -> None:
    """Browse, compare and promote models in a web page.

    With users configured ('modelkeep users add'), people sign in and act with
    their role; on loopback with no users, the page is sign-in free.
    """
    start_web(ctx, read_only=read_only, open_browser=open_browser, allow_anonymous=allow_anonymous, **options)
