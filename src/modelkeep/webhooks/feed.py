"""Reading the history as a stream of events, in id order, without skipping a late commit.

:class:`Settled` tracks the largest history id below which nothing can still appear (see
:meth:`modelkeep.index.webhooks.WebhookRows.horizon`); :func:`iter_events` reads up to it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .events import event_from_row, matches

if TYPE_CHECKING:
    from ..index.webhooks import WebhookRows

#: Rows read per query.
BATCH = 500
#: How long a read that does not follow waits for transactions that may still commit an
#: earlier id (seconds); the events they commit are left out when they take longer.
PATIENCE = 1.0


class Settled:
    """The largest history id up to which every id has committed or never will.

    Each :meth:`advance` reads the largest committed id and the transactions that might
    still commit a smaller one; that id is settled once none of them is running any more
    (at once when there are none, which is always the case on SQLite).
    """

    def __init__(self, rows: WebhookRows) -> None:
        self._rows = rows
        self._waiting: list[tuple[int, frozenset[str]]] = []
        self.value = 0

    def advance(self) -> int:
        """Look again; returns the settled id (it never decreases)."""
        top, writers = self._rows.horizon()
        self._waiting.append((top, writers))
        for candidate, waited_for in self._waiting:
            if not waited_for & writers:
                self.value = max(self.value, candidate)
        self._waiting = [(t, w) for t, w in self._waiting if t > self.value]
        return self.value

    @property
    def held_back(self) -> bool:
        """Whether a committed id is waiting for open transactions (look again soon)."""
        return bool(self._waiting)

    def settle(self, patience: float, pause: float = 0.01) -> int:
        """:meth:`advance` until the largest committed id seen first is settled, or for at
        most ``patience`` seconds (a transaction left open holds it back that long)."""
        deadline = time.monotonic() + patience
        value = self.advance()
        while self._waiting and time.monotonic() < deadline:
            time.sleep(pause)
            value = self.advance()
        return value


def iter_events(
    rows: WebhookRows,
    *,
    since: int | None = None,
    model: str | None = None,
    types: Iterable[str] | None = None,
    follow: bool = False,
    poll: float = 0.5,
    stop: threading.Event | None = None,
) -> Iterator[dict[str, Any]]:
    """Events with a history id above ``since`` (all when ``None``), oldest first; see
    :meth:`modelkeep.registry.ModelPersistence.events`."""
    patterns = None if types is None else tuple(types)
    settled = Settled(rows)
    cursor = since or 0
    stop = stop or threading.Event()
    while True:
        upto = settled.advance() if follow else settled.settle(PATIENCE)
        while cursor < upto:
            batch = rows.history_rows(cursor, upto, model=model, limit=BATCH)
            for row in batch:
                event = event_from_row(row)
                if matches(patterns, event["type"]):
                    yield event
            cursor = int(batch[-1]["id"]) if len(batch) == BATCH else upto
        if not follow or stop.wait(poll):
            return
