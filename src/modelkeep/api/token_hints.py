"""Whom an API token named a moment ago: one worker-thread hop, not two, for the hot routes.

A request signed in by token is checked against the index (the token, its user, their grants:
one query) in a worker thread, and its work (a save, a load) runs in another. For the routes
that opt in (``Endpoint.hinted``: the one-request save and load, the reads and the lifecycle
changes whose handlers work only through :meth:`Api.call <modelkeep.api.routes.Api.call>`;
not the admin routes, which check the role on the event loop), :class:`TokenHints` keeps
the identity a token had when last checked, for :data:`HINT_SECONDS`. Such a request takes its
identity from the hint on the event loop (no thread, no query) for what comes before its work
(the writer-role check before a save's body is read), and the token is checked again against
the index in the same worker-thread call as the work, before any of it (:meth:`Api.call
<modelkeep.api.routes.Api.call>`): the work runs as the identity found then. So a revoked or
expired token, a removed user or a changed role or grant is refused at once, by every server
process on the registry; a hint only decides whether a bounded body is read before that.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..users import hash_token

if TYPE_CHECKING:
    from ..identity import Identity

#: Seconds a token's last check is used as a hint.
HINT_SECONDS = 120.0
#: Tokens remembered at most (the least recently used are forgotten first).
HINT_ENTRIES = 1024


class TokenHints:
    """The identity each recent token had at its last check (keyed by the token's SHA-256,
    as the index keeps it); ``check(token)`` is the real check (:meth:`UserStore.token_identity`)."""

    def __init__(self, check: Callable[[str], Identity], *, seconds: float = HINT_SECONDS) -> None:
        self._check = check
        self._seconds = seconds
        self._hints: OrderedDict[str, tuple[float, Identity]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token: str) -> Identity | None:
        """The identity ``token`` had at a check less than :data:`HINT_SECONDS` ago, or ``None``."""
        key = hash_token(token)
        with self._lock:
            found = self._hints.get(key)
            if found is None:
                return None
            if time.monotonic() - found[0] > self._seconds:
                del self._hints[key]
                return None
            self._hints.move_to_end(key)
            return found[1]

    def put(self, token: str, who: Identity) -> None:
        """Remember ``who`` as what ``token`` named when it was just checked."""
        key = hash_token(token)
        with self._lock:
            self._hints[key] = (time.monotonic(), who)
            self._hints.move_to_end(key)
            while len(self._hints) > HINT_ENTRIES:
                self._hints.popitem(last=False)

    def check(self, token: str) -> Identity:
        """Check ``token`` against the index now (blocking: call it in a worker thread); the hint
        is refreshed, or dropped when the check fails."""
        try:
            who = self._check(token)
        except BaseException:
            with self._lock:
                self._hints.pop(hash_token(token), None)
            raise
        self.put(token, who)
        return who
