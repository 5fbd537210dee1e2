"""Server routes for the registry's webhooks (admins only; the client half is
:mod:`modelkeep.api.client_webhooks`).

Every route needs the admin role, reading ones included: a webhook's URL may carry a
receiver's token, and the delivery log names the events of every model. The deliveries
themselves still leave from the server (``modelkeep events dispatch`` on its host, ``--dispatch-events``,
or ``POST /events/dispatch``).

* ``GET /webhooks``: every webhook, without its secret file (``"secret_file": null``).
* ``POST /webhooks`` ``{url, events, model, secret}``: the client sends the secret's text (read
  from its own file); the server checks the URL as a local ``add`` does, keeps the secret in a
  file of its own (mode 0600, under ``<config dir>/webhook-secrets``) and the index keeps that
  file's path. A path on the server's disk is never accepted from a client.
* ``DELETE /webhooks/{id}``, ``POST /webhooks/{id}/test`` ``{timeout}`` (the server POSTs the ping),
  ``GET /deliveries?webhook=&status=&limit=``, ``POST /deliveries/{id}/redeliver``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, RequestError
from .admin_routes import require_admin
from .endpoint import Body, Endpoint, Query, json_response, read_json

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from .routes import Api

#: Longest wait a client may ask of ``POST /webhooks/{id}/test``.
MAX_TEST_TIMEOUT = 30.0


def secrets_dir() -> Path:
    """Where a server keeps the secrets of webhooks added through it (on its own host)."""
    from ..keys import config_dir

    return config_dir() / "webhook-secrets"


def write_secret(secret: str) -> str:
    """Keep ``secret`` in a new file only this user can read; returns its path."""
    from ..webhooks.delivery import MAX_SECRET, MIN_SECRET

    data = secret.strip().encode()
    if not MIN_SECRET <= len(data) <= MAX_SECRET:
        raise ConfigError(f"a webhook secret must hold {MIN_SECRET} to {MAX_SECRET} bytes")
    folder = secrets_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{uuid.uuid4().hex}.secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data + b"\n")
    return str(path)


def hook_to_wire(hook: Any) -> dict[str, Any]:
    """A webhook as a client sees it: everything but where its secret is kept."""
    return {**hook.to_dict(), "secret_file": None}


class WebhookRoutes:
    """The handlers of :func:`webhook_endpoints`, bound to one :class:`~modelkeep.api.routes.Api`."""

    def __init__(self, api: Api) -> None:
        self.api = api

    async def list(self, request: Request) -> Response:
        """Every webhook (admin), without its secret file."""
        require_admin(self.api, request, "list webhooks")
        hooks = await self.api.call(request, self.api.p.webhooks.list)
        return json_response({"webhooks": [hook_to_wire(h) for h in hooks]})

    async def add(self, request: Request) -> Response:
        """Subscribe a URL to events, signed with the secret the client sent (admin)."""
        require_admin(self.api, request, "manage webhooks")
        body = Body(await read_json(request))
        url, events, secret = body.required("url"), body.required("events"), body.required("secret")
        webhook_id = await self.api.call(request, self._add, url, events, body.text("model"), secret)
        return json_response({"id": webhook_id}, status=201)

    def _add(self, url: str, events: str, model: str | None, secret: str) -> int:
        from ..webhooks.delivery import check_url
        from ..webhooks.events import parse_patterns

        check_url(url)  # refused before a file is written
        try:
            parse_patterns(events)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        path = write_secret(secret)
        try:
            webhook_id: int = self.api.p.webhooks.add(url, events=events, model=model, secret_file=path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        return webhook_id

    async def remove(self, request: Request) -> Response:
        """Remove a webhook, its undelivered events and its delivery log (admin)."""
        require_admin(self.api, request, "manage webhooks")
        webhook_id = _id(request.path_params["webhook"])
        await self.api.call(request, self._remove, webhook_id)
        return json_response({"ok": True})

    def _remove(self, webhook_id: int) -> None:
        hooks = self.api.p.webhooks
        secret = Path(hooks.get(webhook_id).secret_file)
        hooks.remove(webhook_id)
        if secret.parent == secrets_dir():  # a secret this server wrote for a client
            secret.unlink(missing_ok=True)

    async def test(self, request: Request) -> Response:
        """POST a signed ping to the webhook from the server now (admin); answer how it went."""
        require_admin(self.api, request, "test webhooks")
        webhook_id = _id(request.path_params["webhook"])
        timeout = Body(await read_json(request)).get("timeout", 10.0)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TEST_TIMEOUT:
            raise RequestError(f"'timeout' must be a number of seconds, above 0 and at most {MAX_TEST_TIMEOUT:g}")
        outcome = await self.api.call(request, self.api.p.webhooks.test, webhook_id, timeout=float(timeout))
        return json_response(
            {"ok": outcome.ok, "code": outcome.code, "error": outcome.error, "duration_ms": outcome.duration_ms}
        )

    async def deliveries(self, request: Request) -> Response:
        """The delivery log, newest first (admin; ``?webhook``, ``status``, ``limit``)."""
        require_admin(self.api, request, "read the webhook delivery log")
        q = Query(request)
        limit = q.integer("limit")
        found = await self.api.call(
            request,
            self.api.p.webhooks.deliveries,
            q.integer("webhook"),
            status=q.text("status"),
            limit=50 if limit is None else max(1, min(limit, 1000)),
        )
        return json_response({"deliveries": [d.to_dict() for d in found]})

    async def redeliver(self, request: Request) -> Response:
        """Queue a delivery again (admin)."""
        require_admin(self.api, request, "manage webhooks")
        await self.api.call(request, self.api.p.webhooks.redeliver, request.path_params["delivery"])
        return json_response({"ok": True})


def _id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise RequestError(f"a webhook id is a number, got {text[:40]!r}") from None


def webhook_endpoints(api: Api) -> list[Endpoint]:
    """The routes of the registry's webhooks and their delivery log (admins only)."""
    s = WebhookRoutes(api)
    w = "/webhooks/{webhook}"
    return [
        Endpoint("GET", "/webhooks", s.list, "Every webhook, without its secret (admin)"),
        Endpoint(
            "POST",
            "/webhooks",
            s.add,
            "Add a webhook; the server keeps the secret sent (admin)",
            body=("url!", "events!", "secret!", "model"),
            success=(201,),
        ),
        Endpoint("DELETE", w, s.remove, "Remove a webhook, its queue and its delivery log (admin)"),
        Endpoint(
            "POST",
            w + "/test",
            s.test,
            "The server POSTs a signed ping to the webhook now (admin)",
            body=("timeout:number",),
        ),
        Endpoint(
            "GET",
            "/deliveries",
            s.deliveries,
            "The delivery log, newest first (?webhook, status, limit; admin)",
            query=("webhook:integer", "status", "limit:integer"),
        ),
        Endpoint("POST", "/deliveries/{delivery:path}/redeliver", s.redeliver, "Queue a delivery again (admin)"),
    ]
