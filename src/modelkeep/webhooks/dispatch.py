"""The dispatcher: moves history events into each webhook's outbox and POSTs them.

Per webhook, on every poll:

1. **Lease.** Only the dispatcher holding the webhook's lease (a row in the index, renewed
   while it works, taken over once it expires) touches it, so two dispatchers do not POST the
   same event at the same time. A dispatcher that stalls past its lease may still finish one
   POST that the next holder repeats: receivers de-duplicate on the delivery id.
2. **Enqueue.** Events between the webhook's cursor and the settled history id
   (:class:`~modelkeep.webhooks.feed.Settled`) that match its patterns and model glob become
   ``pending`` deliveries, and the cursor moves, in one transaction: nothing is lost across a
   crash, and nothing is queued twice.
3. **Deliver**, oldest first. Per model, in order: a delivery that fails holds back the later
   events of the same model for this webhook until it succeeds or is given up (after
   ``max_attempts``); other models go on. Retries wait ``backoff * 2**(attempt-1)`` seconds,
   at most ``max_backoff``. Every attempt is logged before the POST (``sending``) and updated
   after it, so a dispatcher killed mid-POST leaves an ``interrupted`` attempt, and the event is
   sent again, with the same delivery id.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from ..errors import ModelKeepError
from ..index.webhooks import Delivery, WebhookRow, later
from . import delivery as http
from .events import event_from_row, matches
from .feed import BATCH, Settled
from .settings import DispatchSettings

if TYPE_CHECKING:
    from ..index.webhooks import WebhookRows

logger = logging.getLogger("modelkeep")
#: Seconds to wait after an error before trying again.
ERROR_PAUSE = 1.0


def owner_id() -> str:
    """This dispatcher's name in the leases: host, process id and a random part."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"[:256]


def wanted(hook: WebhookRow, event: dict[str, Any]) -> bool:
    """Whether ``hook`` subscribes to ``event`` (its patterns, and its model glob if any)."""
    if hook.model_glob is not None and not fnmatchcase(event["model"], hook.model_glob):
        return False
    return matches(hook.events.split(","), event["type"])


class Dispatcher:
    """Delivers every webhook of one registry; :meth:`run` until ``stop`` is set."""

    def __init__(self, rows: WebhookRows, settings: DispatchSettings | None = None) -> None:
        self.rows = rows
        self.settings = settings or DispatchSettings()
        self.owner = owner_id()
        self.settled = Settled(rows)
        self.stop = threading.Event()
        #: Webhook id -> when (monotonic) the lease this dispatcher holds on it was last renewed.
        self._held: dict[int, float] = {}

    def run(self) -> None:
        """Poll, enqueue and deliver until :attr:`stop` is set; then give the leases up."""
        try:
            while not self.stop.is_set():
                try:
                    pause = 0.0 if self.run_once() else self.settings.poll
                    if pause and self.settled.held_back:  # events held back by open transactions: look soon
                        pause = min(pause, 0.01)
                except ModelKeepError as exc:  # the database is away: say so, and keep trying
                    logger.warning("webhook dispatcher: %s", exc)
                    pause = max(self.settings.poll, ERROR_PAUSE)
                except Exception:  # a bug or an unreadable row: log it whole, and keep trying
                    logger.exception("webhook dispatcher: unexpected error")
                    pause = max(self.settings.poll, ERROR_PAUSE)
                if pause:
                    self.stop.wait(pause)
        finally:
            self.release()

    def release(self) -> None:
        """Give up every lease this dispatcher holds."""
        for webhook_id in sorted(self._held):  # a dict: its keys
            try:
                self.rows.release(webhook_id, self.owner)
            except ModelKeepError as exc:
                logger.warning("webhook dispatcher: could not release webhook %d: %s", webhook_id, exc)
        self._held.clear()

    def run_once(self) -> bool:
        """One pass over every webhook; ``True`` when it sent or queued something."""
        upto = self.settled.advance()
        due = self.rows.due()
        busy = False
        stamp = later(0)
        for hook in self.rows.all():
            if self.stop.is_set():
                break
            has_new = hook.cursor < upto
            has_due = hook.id in due and due[hook.id] <= stamp
            if not (has_new or has_due):
                continue
            if not self._hold(hook.id):
                continue
            if has_new:
                busy |= self._enqueue(hook, upto)
            busy |= self._deliver(hook)
        return busy

    def _hold(self, webhook_id: int) -> bool:
        """Make sure this dispatcher holds the webhook's lease, renewing it (a write) only once
        a third of it has passed; ``False`` when another dispatcher holds it."""
        renewed = self._held.get(webhook_id)
        if renewed is not None and time.monotonic() - renewed < self.settings.lease / 3:
            return True
        started = time.monotonic()
        if self.rows.lease(webhook_id, self.owner, self.settings.lease) is None:
            self._held.pop(webhook_id, None)
            return False
        self._held[webhook_id] = started
        return True

    def _enqueue(self, hook: WebhookRow, upto: int) -> bool:
        cursor = hook.cursor
        while cursor < upto:
            rows = self.rows.history_rows(cursor, upto, limit=BATCH)
            new_cursor = int(rows[-1]["id"]) if len(rows) == BATCH else upto
            queued = []
            for row in rows:
                event = event_from_row(row)
                if wanted(hook, event):
                    queued.append((event["id"], event["model"], event["type"]))
            if not self.rows.enqueue(hook.id, cursor, new_cursor, queued):
                return False  # another dispatcher moved the cursor (its lease expired ours)
            cursor = new_cursor
        return True

    def _deliver(self, hook: WebhookRow) -> bool:
        """Send the webhook's due deliveries, in order per model; ``True`` if it sent any."""
        blocked: set[str] = set()
        sent = False
        for item in self.rows.pending(hook.id):
            if self.stop.is_set():
                break
            if item.model in blocked:
                continue
            if item.next_attempt_at > later(0):
                blocked.add(item.model)
                continue
            if not self._hold(hook.id):
                break  # lost the lease (stalled past it): the new holder carries on
            sent = True
            if not self.attempt(hook, item):
                blocked.add(item.model)
        return sent

    def attempt(self, hook: WebhookRow, item: Delivery) -> bool:
        """One attempt at ``item``, logged; ``True`` when the receiver answered 2xx."""
        attempt_id, number, row = self.rows.start_attempt(item)
        if row is None:
            outcome = http.Outcome(False, None, "the history row of this event is gone", 0.0)
        else:
            body = http.body_of(event_from_row(row), item.delivery_id, hook.id)
            try:
                secret = http.read_secret(hook.secret_file)
                http.check_url(hook.url)
            except ModelKeepError as exc:
                outcome = http.Outcome(False, None, str(exc)[: http.MAX_ERROR], 0.0)
            else:
                headers = http.headers_for(item.event, item.delivery_id, http.sign(secret, body))
                outcome = http.post(hook.url, body, headers, self.settings.timeout)
        retry = None if outcome.ok else self.settings.retry_in(number)
        self.rows.finish_attempt(
            attempt_id,
            item.delivery_id,
            ok=outcome.ok,
            code=outcome.code,
            error=outcome.error,
            duration_ms=outcome.duration_ms,
            retry_in=retry,
        )
        if not outcome.ok:
            what = "giving up" if retry is None else f"retrying in {retry:g}s"
            logger.warning(
                "webhook %d: delivery %s of event %d failed (%s); %s",
                hook.id,
                item.delivery_id,
                item.history_id,
                outcome.error,
                what,
            )
        return outcome.ok


def start_in_thread(rows: WebhookRows, settings: DispatchSettings | None = None) -> tuple[Dispatcher, threading.Thread]:
    """A :class:`Dispatcher` running in a daemon thread (``modelkeep ui/serve --dispatch-events``);
    set its ``stop`` to end it."""
    dispatcher = Dispatcher(rows, settings)
    thread = threading.Thread(target=dispatcher.run, name="modelkeep-webhooks", daemon=True)
    thread.start()
    return dispatcher, thread
