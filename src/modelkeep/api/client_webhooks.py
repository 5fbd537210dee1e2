"""The client half of :mod:`modelkeep.api.webhook_routes` and of ``POST /events/dispatch``:
``HttpRegistry.webhooks``, with the methods of :class:`modelkeep.webhooks.api.WebhookStore`.

Admins only, on the server. ``add`` reads the secret file here, on the client, and sends the
secret's text; the server keeps it in a file of its own, whose path it never shows (a listed
webhook's ``secret_file`` reads :data:`KEPT_BY_SERVER`). Deliveries and test pings leave from
the server; ``dispatcher().run()`` asks the server for one dispatch pass after another.
"""

from __future__ import annotations

import builtins
import functools
import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..webhooks import webhook_id as checked_id
from .wire import path_text

if TYPE_CHECKING:
    from ..index.webhooks import Delivery, WebhookRow
    from ..webhooks.delivery import Outcome
    from ..webhooks.settings import DispatchSettings

#: What a webhook listed through a server shows for its secret file (which stays on the server).
KEPT_BY_SERVER = "(kept by the server)"


class WebhooksMixin:
    """``webhooks`` on :class:`~modelkeep.api.client.HttpRegistry`."""

    def request(self, method: str, path: str, **kwargs: Any) -> Any:  # pragma: no cover - HttpRegistry's
        raise NotImplementedError

    @functools.cached_property
    def webhooks(self) -> RemoteWebhooks:
        """The server's webhooks (admins only), as :class:`modelkeep.webhooks.api.WebhookStore`."""
        return RemoteWebhooks(self)


class RemoteWebhooks:
    """The webhooks of a registry server, with :class:`~modelkeep.webhooks.api.WebhookStore`'s methods."""

    def __init__(self, registry: WebhooksMixin) -> None:
        self._r = registry

    def add(
        self, url: str, *, events: str | Iterable[str], secret_file: str | os.PathLike[str], model: str | None = None
    ) -> int:
        """Subscribe ``url`` to ``events`` for models matching ``model``; the secret is read from
        ``secret_file`` here and kept by the server. Returns the webhook's id."""
        from ..errors import ConfigError
        from ..webhooks.delivery import read_secret

        path = os.path.abspath(os.fspath(secret_file))
        try:
            secret = read_secret(path).decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"the webhook secret in {path!r} must be text (UTF-8) to go to a server") from None
        patterns = events if isinstance(events, str) else ",".join(events)
        body = {"url": url, "events": patterns, "model": model, "secret": secret}
        return int(self._r.request("POST", "/webhooks", json=body)["id"])

    def list(self) -> builtins.list[WebhookRow]:
        """Every webhook, by id (its secret file shows as :data:`KEPT_BY_SERVER`)."""
        return [_hook(h) for h in self._r.request("GET", "/webhooks")["webhooks"]]

    def get(self, webhook_id: int) -> WebhookRow:
        """One webhook (:class:`~modelkeep.errors.WebhookNotFoundError` if there is none)."""
        from ..errors import WebhookNotFoundError

        webhook_id = checked_id(webhook_id)
        found = next((h for h in self.list() if h.id == webhook_id), None)
        if found is None:
            raise WebhookNotFoundError(f"no webhook {webhook_id} (see 'modelkeep webhooks list')")
        return found

    def remove(self, webhook_id: int) -> None:
        """Remove a webhook, its undelivered events and its delivery log."""
        self._r.request("DELETE", f"/webhooks/{checked_id(webhook_id)}")

    def test(self, webhook_id: int, *, timeout: float = 10.0) -> Outcome:
        """Have the server POST a signed ``ping`` to the webhook now; how it went."""
        from ..webhooks.delivery import Outcome

        found = self._r.request("POST", f"/webhooks/{checked_id(webhook_id)}/test", json={"timeout": timeout})
        return Outcome(bool(found["ok"]), found["code"], found["error"], float(found["duration_ms"]))

    def deliveries(
        self, webhook_id: int | None = None, *, status: str | None = None, limit: int = 50
    ) -> builtins.list[Delivery]:
        """The delivery log, newest first, with every attempt."""
        params: dict[str, Any] = {"limit": limit}
        if webhook_id is not None:
            params["webhook"] = checked_id(webhook_id)
        if status is not None:
            params["status"] = status
        return [_delivery(d) for d in self._r.request("GET", "/deliveries", params=params)["deliveries"]]

    def redeliver(self, delivery_id: str) -> None:
        """Queue a delivery again (a given-up one, or one the receiver lost)."""
        self._r.request("POST", f"/deliveries/{path_text(delivery_id, 'delivery id')}/redeliver")

    def dispatcher(self, settings: DispatchSettings | None = None) -> RemoteDispatcher:
        """A dispatcher whose ``run()`` has the server deliver, pass after pass, until ``stop`` is set."""
        return RemoteDispatcher(self._r, settings)


class RemoteDispatcher:
    """Has a registry server run its webhook dispatcher, one pass per request (the POSTs leave
    from the server); waits ``settings.poll`` seconds after a pass with nothing to do."""

    def __init__(self, registry: WebhooksMixin, settings: DispatchSettings | None = None) -> None:
        from ..webhooks.settings import DispatchSettings

        self._r = registry
        self.settings = settings or DispatchSettings()
        self.stop = threading.Event()
        self.owner = f"the server at {getattr(registry, 'url', '?')}"

    def run_once(self) -> bool:
        """One pass on the server; ``True`` when it sent or queued something."""
        s = self.settings
        body = {
            "timeout": s.timeout,
            "backoff": s.backoff,
            "max_backoff": s.max_backoff,
            "max_attempts": s.max_attempts,
            "lease": s.lease,
        }
        return bool(self._r.request("POST", "/events/dispatch", json=body)["busy"])

    def run(self) -> None:
        """Pass after pass until ``stop`` is set (an error, such as a refusal, ends it)."""
        while not self.stop.is_set():
            if not self.run_once():
                self.stop.wait(self.settings.poll)


def _hook(data: dict[str, Any]) -> WebhookRow:
    from ..index.webhooks import WebhookRow

    return WebhookRow(
        id=int(data["id"]),
        url=str(data["url"]),
        events=",".join(data["events"]),
        model_glob=data["model"],
        secret_file=KEPT_BY_SERVER,
        cursor=int(data["cursor"]),
        created_at=str(data["created_at"]),
        created_by=str(data["created_by"]),
        lease_owner=None,
        lease_until=None,
    )


def _delivery(data: dict[str, Any]) -> Delivery:
    from ..index.webhooks import Delivery

    return Delivery(
        delivery_id=str(data["delivery_id"]),
        webhook_id=int(data["webhook"]),
        history_id=int(data["history_id"]),
        model=str(data["model"]),
        event=str(data["event"]),
        status=str(data["status"]),
        attempts=int(data["attempts"]),
        next_attempt_at=str(data["next_attempt_at"]),
        created_at=str(data["created_at"]),
        updated_at=str(data["updated_at"]),
        log=tuple(data["log"]),
    )
