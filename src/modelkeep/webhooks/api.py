"""What :class:`~modelkeep.registry.ModelPersistence` offers for events: ``events()`` and the
``webhooks`` store (add, list, remove, test, deliveries, dispatch)."""

from __future__ import annotations

import builtins
import functools
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..identity import Identity, acting
from . import webhook_id as checked_id

if TYPE_CHECKING:
    from ..identity import AccessPolicy
    from ..index.sql import SqlIndex
    from ..index.webhooks import Delivery, WebhookRow, WebhookRows
    from .delivery import Outcome
    from .dispatch import Dispatcher
    from .settings import DispatchSettings


class WebhookStore:
    """The webhooks of one registry (``persistence.webhooks``); changing them needs an admin
    when an identity acts (see :mod:`modelkeep.identity`)."""

    def __init__(self, persistence: EventsMixin) -> None:
        self._p = persistence

    @property
    def rows(self) -> WebhookRows:
        from ..index.webhooks import WebhookRows

        return WebhookRows(self._p.index)

    def _admin(self, what: str) -> None:
        self._p.access.require(acting() or self._p.identity, "admin", what)

    def add(
        self, url: str, *, events: str | Iterable[str], secret_file: str | os.PathLike[str], model: str | None = None
    ) -> int:
        """Subscribe ``url`` to ``events`` (patterns such as ``"alias.*,version.created"``), for
        models matching the glob ``model`` (all when ``None``), from the next event on.

        Deliveries are signed with the secret in ``secret_file``, which is read at each
        delivery: the index keeps only its absolute path. Returns the webhook's id.
        """
        from .delivery import check_url, read_secret
        from .events import parse_patterns

        self._admin("manage webhooks")
        try:
            patterns = parse_patterns(events)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        path = os.path.abspath(os.fspath(secret_file))
        read_secret(path)
        # From the largest committed id: an event still uncommitted below it (PostgreSQL) began
        # before the webhook existed, and is not sent to it.
        start, _writers = self.rows.horizon()
        return self.rows.add(check_url(url), ",".join(patterns), model, path, start)

    def list(self) -> list[WebhookRow]:
        """Every webhook, by id."""
        return self.rows.all()

    def get(self, webhook_id: int) -> WebhookRow:
        """One webhook (:class:`~modelkeep.errors.WebhookNotFoundError` if there is none)."""
        return self.rows.get(checked_id(webhook_id))

    def remove(self, webhook_id: int) -> None:
        """Remove a webhook, its undelivered events and its delivery log."""
        checked_id(webhook_id)
        self._admin("manage webhooks")
        self.rows.remove(webhook_id)

    def test(self, webhook_id: int, *, timeout: float = 10.0) -> Outcome:
        """POST a signed ``ping`` event to the webhook now (not through the outbox) and return
        how it went."""
        from .delivery import body_of, headers_for, post, read_secret, sign
        from .events import PING

        hook = self.rows.get(checked_id(webhook_id))
        delivery_id = uuid.uuid4().hex
        event = {"type": PING, "id": None, "model": None, "url": hook.url, "events": hook.events.split(",")}
        body = body_of(event, delivery_id, hook.id)
        headers = headers_for(PING, delivery_id, sign(read_secret(hook.secret_file), body))
        return post(hook.url, body, headers, timeout)

    def deliveries(
        self, webhook_id: int | None = None, *, status: str | None = None, limit: int = 50
    ) -> builtins.list[Delivery]:
        """The delivery log, newest first: each delivery (status ``pending``, ``delivered`` or
        ``failed``) with every attempt (time, outcome, response code, error)."""
        if webhook_id is not None:
            self.rows.get(checked_id(webhook_id))
        return self.rows.deliveries(webhook_id, status=status, limit=limit)

    def redeliver(self, delivery_id: str) -> None:
        """Send a delivery again (a given-up one, or one the receiver lost)."""
        self._admin("manage webhooks")
        self.rows.redeliver(delivery_id)

    def dispatcher(self, settings: DispatchSettings | None = None) -> Dispatcher:
        """A :class:`~modelkeep.webhooks.dispatch.Dispatcher` for this registry: call its
        ``run()`` (until its ``stop`` event is set) or ``run_once()``."""
        from .dispatch import Dispatcher

        return Dispatcher(self.rows, settings)


class EventsMixin:
    """``events()`` and ``webhooks`` on :class:`~modelkeep.registry.ModelPersistence`."""

    identity: Identity | None
    access: AccessPolicy

    @property
    def index(self) -> SqlIndex:  # ModelPersistence.index
        raise NotImplementedError

    @functools.cached_property
    def webhooks(self) -> WebhookStore:
        """The registry's webhooks (see :class:`WebhookStore` and docs/events.md)."""
        return WebhookStore(self)

    def event_horizon(self) -> int:
        """The largest committed history id: ``events(since=...)`` from it yields what happens from
        now on (``modelkeep events watch`` starts there)."""
        from ..index.webhooks import WebhookRows

        return WebhookRows(self.index).horizon()[0]

    def events(
        self,
        since: int | None = None,
        model: str | None = None,
        types: str | Iterable[str] | None = None,
        follow: bool = False,
        *,
        poll: float = 0.5,
        stop: threading.Event | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every history entry as an event dict, oldest first, from history id ``since``
        (exclusive; from the first when ``None``): ``id``, ``type`` (``version.created``,
        ``alias.moved``, ...), ``model``, ``version``, ``alias``, ``key``, ``before``,
        ``after``, ``actor``, ``at``, ``action`` and ``signature``.

        ``model`` keeps one model's events, ``types`` those matching the patterns
        (``"alias.*,version.created"``). With ``follow`` it waits for new events, looking
        every ``poll`` seconds, until ``stop`` is set. An event is yielded only once every
        smaller history id has committed or never will, so none is skipped; without ``follow``,
        a transaction left open more than a second ends the list before the events it may precede.
        When an identity acts, the events of models it may not view are left out.
        """
        from ..index.audit import USERS_LOG
        from ..index.common import SQL_INT_MAX
        from ..index.webhooks import WebhookRows
        from .events import parse_patterns
        from .feed import iter_events

        patterns = None
        if types is not None:
            try:
                patterns = parse_patterns(types)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if since is not None:  # ids run from 1 to a 64-bit integer: outside that, before or after all of them
            since = max(0, min(since, SQL_INT_MAX))
        index = self.index
        for event in iter_events(
            WebhookRows(index), since=since, model=model, types=patterns, follow=follow, poll=poll, stop=stop
        ):
            # Only the events of models the reader may see (as ``history`` does); one a reader with
            # grants only cannot place (no model) is theirs to see only with a registry role.
            who = index.viewer()
            seen = event.get("model")
            if seen == USERS_LOG and who is not None and not who.at_least("admin"):
                continue  # users, tokens and grants: admins only (as in ``history``)
            if who is None or who.sees_everything() or (isinstance(seen, str) and index.may_view(seen)):
                yield event
