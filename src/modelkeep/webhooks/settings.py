"""How the webhook dispatcher polls, retries and leases (standard library only, so that the
command line can show the defaults without loading the database layer)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DispatchSettings:
    """How the dispatcher polls, retries and leases (seconds unless named otherwise)."""

    #: Pause between looks at the history when there was nothing to do.
    poll: float = 0.1
    #: Timeout of each network step of a POST.
    timeout: float = 10.0
    #: Wait before the first retry; doubles with each further attempt ...
    backoff: float = 2.0
    #: ... up to this long.
    max_backoff: float = 600.0
    #: Attempts before a delivery is given up (``failed``); 12 spans about an hour by default.
    max_attempts: int = 12
    #: How long a webhook's lease lasts without renewal (longer than ``timeout``).
    lease: float = 60.0

    def retry_in(self, attempt: int) -> float | None:
        """Seconds before the next try after failed attempt number ``attempt``; ``None``: give up."""
        if attempt >= self.max_attempts:
            return None
        return float(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
