"""Events out: the history as events (:meth:`ModelPersistence.events`), and webhooks that
receive them through a durable outbox in the index (see docs/events.md).

* :mod:`.events` names the events (one table: history action -> event name);
* :mod:`.feed` reads the history in id order without skipping a late commit;
* :mod:`.delivery` signs and POSTs one delivery;
* :mod:`.dispatch` moves events into each webhook's outbox and delivers them;
* :mod:`.api` is what ``ModelPersistence`` exposes (``events()``, ``webhooks``).
"""

from __future__ import annotations


def webhook_id(value: object) -> int:
    """``value`` as a webhook id (the number ``modelkeep webhooks list`` shows), or a
    :class:`TypeError` naming it; a local registry and a server's client both check it here, so
    the same wrong value gets the same error from either, before anything is asked."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"a webhook id is a whole number (see 'modelkeep webhooks list'), not {value!r}")
    return value
