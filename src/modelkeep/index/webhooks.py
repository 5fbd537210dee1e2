"""The rows behind events and webhooks: reading the history in id order up to the ids that are
settled, the webhooks, their outbox (``modelkeep_deliveries``) and the delivery log.

Plain storage: :mod:`modelkeep.webhooks.dispatch` decides what to send and when.

**Settled ids.** History ids come from an autoincrement. On SQLite one writer at a time holds
the database, so ids commit in order and every committed id is settled. On PostgreSQL a
transaction that took id 10 can commit after one that took id 11: a reader that moved its
cursor past 11 would never see 10. :meth:`WebhookRows.horizon` therefore returns, with the
largest committed id, the transactions that hold a write lock on the history table right then
(from ``pg_locks``); an ``INSERT`` takes that lock before it draws its id, so every id at or
below the largest one that is not visible yet belongs to one of them. Once none of them is
still running, every id up to that largest one has committed or never will.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, delete, func, insert, or_, select, text, update

from ..errors import InvalidNameError, WebhookNotFoundError
from .audit import actor, now
from .common import SQL_INT_MAX, fits_sql_int
from .common import retry_on_disconnect as _retry_on_disconnect
from .schema import deliveries, delivery_attempts, history, webhooks

if TYPE_CHECKING:
    from .sql import SqlIndex

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
SENDING, OK, ERROR, INTERRUPTED = "sending", "ok", "error", "interrupted"


def later(seconds: float) -> str:
    """The UTC time ``seconds`` from now, in :func:`.audit.now`'s fixed-width format."""
    when = _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(seconds=seconds)
    return when.isoformat(timespec="microseconds")


@dataclass(frozen=True)
class WebhookRow:
    """One webhook as stored (``events``: its patterns, comma-separated)."""

    id: int
    url: str
    events: str
    model_glob: str | None
    secret_file: str
    cursor: int
    created_at: str
    created_by: str
    lease_owner: str | None
    lease_until: str | None

    def to_dict(self) -> dict[str, Any]:
        """The webhook as JSON (without its lease)."""
        return {
            "id": self.id,
            "url": self.url,
            "events": self.events.split(","),
            "model": self.model_glob,
            "secret_file": self.secret_file,
            "cursor": self.cursor,
            "created_at": self.created_at,
            "created_by": self.created_by,
        }


@dataclass(frozen=True)
class Delivery:
    """One event queued for one webhook, with its state and its attempts so far."""

    delivery_id: str
    webhook_id: int
    history_id: int
    model: str
    event: str
    status: str
    attempts: int
    next_attempt_at: str
    created_at: str
    updated_at: str
    log: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The delivery and its attempts, as JSON."""
        return {
            "delivery_id": self.delivery_id,
            "webhook": self.webhook_id,
            "history_id": self.history_id,
            "model": self.model,
            "event": self.event,
            "status": self.status,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "log": list(self.log),
        }


_DELIVERY_COLUMNS = (
    deliveries.c.delivery_id,
    deliveries.c.webhook_id,
    deliveries.c.history_id,
    deliveries.c.model_name,
    deliveries.c.event,
    deliveries.c.status,
    deliveries.c.attempts,
    deliveries.c.next_attempt_at,
    deliveries.c.created_at,
    deliveries.c.updated_at,
)


class WebhookRows:
    """History reads, webhooks, outbox and delivery log of one :class:`SqlIndex`."""

    def __init__(self, index: SqlIndex) -> None:
        self._index = index

    # -- the history, in id order -----------------------------------------------------
    @_retry_on_disconnect
    def horizon(self) -> tuple[int, frozenset[str]]:
        """The largest committed history id, and the transactions that may still commit a
        smaller one (PostgreSQL virtual transaction ids; always empty on SQLite)."""
        with self._index._read() as conn:
            top = conn.execute(select(func.coalesce(func.max(history.c.id), 0))).scalar_one()
            if self._index.dialect != "postgresql":
                return int(top), frozenset()
            table = f'"{self._index.schema}".{history.name}' if self._index.schema else history.name
            writers = conn.execute(
                text(
                    "SELECT virtualtransaction FROM pg_locks WHERE locktype = 'relation' "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                    "AND relation = to_regclass(:table) AND mode = 'RowExclusiveLock' AND granted "
                    "AND pid <> pg_backend_pid()"
                ),
                {"table": table},
            ).scalars()
            return int(top), frozenset(str(w) for w in writers)

    @_retry_on_disconnect
    def history_rows(
        self, after: int, upto: int, *, model: str | None = None, limit: int = 500
    ) -> list[dict[str, Any]]:
        """History rows with ``after < id <= upto`` (of ``model`` only, when given), in id order."""
        query = select(history).where(history.c.id > after, history.c.id <= upto)
        if model is not None:
            query = query.where(history.c.model_name == model)
        with self._index._read() as conn:
            return [dict(r._mapping) for r in conn.execute(query.order_by(history.c.id).limit(limit))]

    # -- webhooks ---------------------------------------------------------------------
    @_retry_on_disconnect
    def add(self, url: str, events: str, model_glob: str | None, secret_file: str, cursor: int) -> int:
        """Store a webhook that starts after history id ``cursor``; returns its id."""
        with self._index._write() as conn:
            result = conn.execute(
                insert(webhooks).values(
                    url=url,
                    events=events,
                    model_glob=model_glob,
                    secret_file=secret_file,
                    cursor=cursor,
                    created_at=now(),
                    created_by=actor(),
                )
            )
            return _new_id(result)

    @_retry_on_disconnect
    def all(self) -> list[WebhookRow]:
        """Every webhook, by id."""
        with self._index._read() as conn:
            return [WebhookRow(*r) for r in conn.execute(select(webhooks).order_by(webhooks.c.id))]

    @_retry_on_disconnect
    def get(self, webhook_id: int) -> WebhookRow:
        """One webhook; :class:`WebhookNotFoundError` when there is none with that id."""
        row = None
        if fits_sql_int(webhook_id):
            with self._index._read() as conn:
                row = conn.execute(select(webhooks).where(webhooks.c.id == webhook_id)).first()
        if row is None:
            raise WebhookNotFoundError(f"no webhook {webhook_id} (see 'modelkeep webhooks list')")
        return WebhookRow(*row)

    @_retry_on_disconnect
    def remove(self, webhook_id: int) -> None:
        """Remove a webhook with its outbox and delivery log."""
        if not fits_sql_int(webhook_id):
            raise WebhookNotFoundError(f"no webhook {webhook_id} (see 'modelkeep webhooks list')")
        with self._index._write() as conn:
            if conn.execute(delete(webhooks).where(webhooks.c.id == webhook_id)).rowcount == 0:
                raise WebhookNotFoundError(f"no webhook {webhook_id} (see 'modelkeep webhooks list')")
            ids = select(deliveries.c.delivery_id).where(deliveries.c.webhook_id == webhook_id)
            conn.execute(delete(delivery_attempts).where(delivery_attempts.c.delivery_id.in_(ids)))
            conn.execute(delete(deliveries).where(deliveries.c.webhook_id == webhook_id))

    # -- the lease: one dispatcher per webhook ------------------------------------------
    @_retry_on_disconnect
    def lease(self, webhook_id: int, owner: str, seconds: float) -> bool | None:
        """Take or renew the webhook's lease for ``seconds``: ``None`` when another dispatcher
        holds it, ``True`` when it was taken over (then attempts left ``sending`` by an earlier
        holder are marked ``interrupted``), ``False`` when it was renewed."""
        stamp = now()
        with self._index._write() as conn:
            held = conn.execute(select(webhooks.c.lease_owner).where(webhooks.c.id == webhook_id)).first()
            if held is None:
                return None
            taken = conn.execute(
                update(webhooks)
                .where(
                    webhooks.c.id == webhook_id,
                    or_(
                        webhooks.c.lease_owner.is_(None),
                        webhooks.c.lease_owner == owner,
                        webhooks.c.lease_until < stamp,
                    ),
                )
                .values(lease_owner=owner, lease_until=later(seconds))
            )
            if taken.rowcount != 1:
                return None
            if held[0] == owner:
                return False
            ids = select(deliveries.c.delivery_id).where(deliveries.c.webhook_id == webhook_id)
            conn.execute(
                update(delivery_attempts)
                .where(delivery_attempts.c.status == SENDING, delivery_attempts.c.delivery_id.in_(ids))
                .values(status=INTERRUPTED, error="the dispatcher stopped before the answer was recorded")
            )
            return True

    @_retry_on_disconnect
    def release(self, webhook_id: int, owner: str) -> None:
        """Give the lease up (a dispatcher that stops), so another can take over at once."""
        with self._index._write() as conn:
            conn.execute(
                update(webhooks)
                .where(webhooks.c.id == webhook_id, webhooks.c.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )

    # -- the outbox -------------------------------------------------------------------
    @_retry_on_disconnect
    def enqueue(self, webhook_id: int, cursor: int, new_cursor: int, events: list[tuple[int, str, str]]) -> bool:
        """Queue ``events`` (history id, model, event name) and move the cursor from ``cursor``
        to ``new_cursor``, in one transaction; ``False`` (nothing written) when the cursor was
        not ``cursor`` any more."""
        stamp = now()
        with self._index._write() as conn:
            moved = conn.execute(
                update(webhooks)
                .where(webhooks.c.id == webhook_id, webhooks.c.cursor == cursor)
                .values(cursor=new_cursor)
            )
            if moved.rowcount != 1:
                return False
            if events:
                conn.execute(
                    insert(deliveries),
                    [
                        {
                            "delivery_id": uuid.uuid4().hex,
                            "webhook_id": webhook_id,
                            "history_id": hid,
                            "model_name": model,
                            "event": event,
                            "status": PENDING,
                            "attempts": 0,
                            "next_attempt_at": stamp,
                            "created_at": stamp,
                            "updated_at": stamp,
                        }
                        for hid, model, event in events
                    ],
                )
            return True

    @_retry_on_disconnect
    def pending(self, webhook_id: int, limit: int = 1000) -> list[Delivery]:
        """The webhook's undelivered events, oldest first."""
        query = (
            select(*_DELIVERY_COLUMNS)
            .where(deliveries.c.webhook_id == webhook_id, deliveries.c.status == PENDING)
            .order_by(deliveries.c.history_id)
            .limit(limit)
        )
        with self._index._read() as conn:
            return [Delivery(*r) for r in conn.execute(query)]

    @_retry_on_disconnect
    def due(self) -> dict[int, str]:
        """Webhook id -> the earliest ``next_attempt_at`` of its pending deliveries."""
        query = (
            select(deliveries.c.webhook_id, func.min(deliveries.c.next_attempt_at))
            .where(deliveries.c.status == PENDING)
            .group_by(deliveries.c.webhook_id)
        )
        with self._index._read() as conn:
            return {int(w): str(t) for w, t in conn.execute(query)}

    @_retry_on_disconnect
    def start_attempt(self, delivery: Delivery) -> tuple[int, int, dict[str, Any] | None]:
        """Log a new attempt as ``sending``; returns (attempt row id, attempt number, the
        event's history row or ``None`` when it is gone), in one transaction."""
        number = delivery.attempts + 1
        stamp = now()
        with self._index._write() as conn:
            conn.execute(
                update(deliveries)
                .where(deliveries.c.delivery_id == delivery.delivery_id)
                .values(attempts=number, updated_at=stamp)
            )
            result = conn.execute(
                insert(delivery_attempts).values(
                    delivery_id=delivery.delivery_id, attempt=number, at=stamp, status=SENDING
                )
            )
            row = conn.execute(select(history).where(history.c.id == delivery.history_id)).first()
            return _new_id(result), number, None if row is None else dict(row._mapping)

    @_retry_on_disconnect
    def finish_attempt(
        self,
        attempt_id: int,
        delivery_id: str,
        *,
        ok: bool,
        code: int | None,
        error: str | None,
        duration_ms: float | None,
        retry_in: float | None,
    ) -> None:
        """Record how an attempt ended, and the delivery's new state: delivered when ``ok``,
        else pending again in ``retry_in`` seconds, or failed (given up) when that is ``None``."""
        stamp = now()
        status = DELIVERED if ok else FAILED if retry_in is None else PENDING
        with self._index._write() as conn:
            conn.execute(
                update(delivery_attempts)
                .where(delivery_attempts.c.id == attempt_id)
                .values(status=OK if ok else ERROR, response_code=code, error=error, duration_ms=duration_ms)
            )
            values: dict[str, Any] = {"status": status, "updated_at": stamp}
            if retry_in is not None and not ok:
                values["next_attempt_at"] = later(retry_in)
            conn.execute(update(deliveries).where(deliveries.c.delivery_id == delivery_id).values(**values))

    @_retry_on_disconnect
    def redeliver(self, delivery_id: str) -> None:
        """Queue a delivery again (a failed one, or a delivered one to send it once more)."""
        with self._index._write() as conn:
            done = conn.execute(
                update(deliveries)
                .where(deliveries.c.delivery_id == delivery_id)
                .values(status=PENDING, attempts=0, next_attempt_at=now(), updated_at=now())
            )
            if done.rowcount == 0:
                raise WebhookNotFoundError(f"no delivery {delivery_id!r} (see 'modelkeep webhooks deliveries')")

    @_retry_on_disconnect
    def deliveries(
        self, webhook_id: int | None = None, *, status: str | None = None, limit: int = 50
    ) -> list[Delivery]:
        """The newest ``limit`` deliveries (of one webhook, in one state), newest first, each
        with every attempt."""
        query = select(*_DELIVERY_COLUMNS)
        conditions = []
        if webhook_id is not None:
            conditions.append(deliveries.c.webhook_id == webhook_id)
        if status is not None:
            conditions.append(deliveries.c.status == status)
        if conditions:
            query = query.where(and_(*conditions))
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidNameError(f"limit must be a whole number >= 1, got {limit!r}")
        query = query.order_by(deliveries.c.history_id.desc(), deliveries.c.webhook_id)
        query = query.limit(min(limit, SQL_INT_MAX))
        with self._index._read() as conn:
            rows = [Delivery(*r) for r in conn.execute(query)]
            logs = _attempts(conn, [r.delivery_id for r in rows])
        return [dataclasses.replace(r, log=tuple(logs.get(r.delivery_id, []))) for r in rows]


def _new_id(result: Any) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _attempts(conn: Connection, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    if not ids:
        return out
    a = delivery_attempts
    query = (
        select(a.c.delivery_id, a.c.attempt, a.c.at, a.c.status, a.c.response_code, a.c.error, a.c.duration_ms)
        .where(a.c.delivery_id.in_(ids))
        .order_by(a.c.delivery_id, a.c.attempt, a.c.id)
    )
    for did, attempt, at, status, code, error, ms in conn.execute(query):
        entry = {"attempt": attempt, "at": at, "status": status, "response_code": code, "error": error}
        entry["duration_ms"] = None if ms is None else round(float(ms), 1)
        out.setdefault(did, []).append(entry)
    return out
