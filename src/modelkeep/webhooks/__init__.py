"""Events out: the history as events (:meth:`ModelPersistence.events`), and webhooks that
receive them through a durable outbox in the index (see docs/events.md).

* :mod:`.events` names the events (one table: history action -> event name);
* :mod:`.feed` reads the history in id order without skipping a late commit;
* :mod:`.delivery` signs and POSTs one delivery;
* :mod:`.dispatch` moves events into each webhook's outbox and delivers them;
* :mod:`.api` is what ``ModelPersistence`` exposes (``events()``, ``webhooks``).
"""

from __future__ import annotations
