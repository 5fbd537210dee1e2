"""The signed events besides versions: what a writer signs when it moves an alias or removes a
version, and what a reader checks (see :mod:`modelkeep.freshness`).

Each event is a small dict, signed with the same keys and schemes as versions
(:func:`modelkeep.signing.sign_event`, under its own domain prefix). Both name the bytes they
are about by SHA-256, so an event cannot be reused for another version that has the same
number in another registry or after an overwrite.
"""

from __future__ import annotations

import time
from typing import Any

ALIAS = "alias"
REMOVAL = "removal"


def alias_event(
    model_name: str,
    alias: str,
    version: str,
    sha256: str,
    seq: int,
    *,
    previous: str | None = None,
    at: str | None = None,
) -> dict[str, Any]:
    """``alias`` of ``model_name`` points at ``version`` (whose artifact has ``sha256``) as
    of move number ``seq`` (see :func:`next_seq`), moved from ``previous`` (``None``: it did
    not exist) at time ``at``.

    Without ``at`` this is the event of modelkeep before schema 7 (no from-version, no time),
    which readers still verify (:func:`alias_events`)."""
    event: dict[str, Any] = {
        "event": ALIAS,
        "model_name": model_name,
        "alias": alias,
        "version": version,
        "sha256": sha256,
        "seq": seq,
    }
    if at is not None:
        event["from"] = previous
        event["at"] = at
    return event


def alias_events(
    model_name: str, alias: str, version: str, sha256: str, seq: int, previous: str | None, at: str | None
) -> list[dict[str, Any]]:
    """The events a stored move may have signed: the current form (with from-version and time),
    then the older one without them."""
    legacy = alias_event(model_name, alias, version, sha256, seq)
    if at is None:
        return [legacy]
    return [alias_event(model_name, alias, version, sha256, seq, previous=previous, at=at), legacy]


def removal_event(model_name: str, version: str, sha256: str, at: str) -> dict[str, Any]:
    """``version`` of ``model_name`` (with ``sha256``) was moved to the trash at time ``at``."""
    return {"event": REMOVAL, "model_name": model_name, "version": version, "sha256": sha256, "at": at}


def next_seq(previous: int | None) -> int:
    """The number of an alias's next move: above the previous one, and at least the current
    time in microseconds, so that it keeps growing even after the alias was removed and set again."""
    return max((previous or 0) + 1, time.time_ns() // 1000)
