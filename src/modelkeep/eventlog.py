"""The store's copy of the lifecycle: one append-only event file per history row.

Every history row (an alias move, a tag, a description, a trash, restore or purge, a save, and any
action added later) is also written to the store as ``.events/<model>/<seq>-<event_id>.json``
(:func:`modelkeep.layout.event_key`) by the index's write transaction before it commits
(written, not ``fsync``'ed: a power cut that loses it leaves a row whose file ``gc`` rewrites),
so the store can rebuild what the index knows: ``reindex`` replays the
files (:mod:`modelkeep.index.replay`), ``copy`` and bundles carry them. The file is the row
itself (its columns as stored, its original time and actor) plus ``state``, what a replay needs
that the row does not say (an alias move's number), and a signature over both made with the
keys that sign versions.

A store is written by whoever can write the bucket: :func:`read_events` refuses a file whose
signature does not verify, and with signatures required one that is unsigned or signed by a key
not trusted here, so a forged event cannot set an alias through ``reindex``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ArtifactNotFoundError, UnsafeKeyError
from .index.audit import ROW_COLUMNS, HistoryRow
from .layout import EVENT_DIR, event_key, event_parts
from .signing import INVALID

if TYPE_CHECKING:
    from .signing import Keyring
    from .storage import ArtifactStore

FORMAT = "modelkeep-event"
FORMAT_VERSION = 1
logger = logging.getLogger("modelkeep")


def signed_part(event: HistoryRow) -> dict[str, Any]:
    """What an event file's signature covers: the row, its state and its ids."""
    return {
        "event": "history",
        "seq": event.seq,
        "event_id": event.event_id,
        "row": event.row,
        "state": event.state,
    }


def render(event: HistoryRow, keyring: Keyring | None) -> bytes:
    """The bytes of ``event``'s file, signed with ``keyring``'s signer when it has one."""
    body = signed_part(event)
    signature = keyring.sign_event(body) if keyring is not None else None
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, **body, "file_signature": signature}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode() + b"\n"


class EventJournal:
    """Writes event files into ``store`` (what :attr:`SqlIndex.journal` calls)."""

    def __init__(self, store: ArtifactStore, keyring: Keyring | None) -> None:
        self.store = store
        self.keyring = keyring

    def __call__(self, events: list[HistoryRow]) -> None:
        for event in events:
            self.store.write_new(key_of(event), render(event, self.keyring))

    def rewrite(self, event: HistoryRow) -> str:
        """Write ``event``'s file again (a repair), replacing what is under its key."""
        key = key_of(event)
        self.store.delete(key, missing_ok=True)
        self.store.write_new(key, render(event, self.keyring))
        return key


def key_of(event: HistoryRow) -> str:
    """The store key of ``event``'s file."""
    return event_key(str(event.row["model_name"]), event.seq, event.event_id)


@dataclass
class Refused:
    """An event file :func:`read_events` did not accept, and why."""

    key: str
    why: str


def parse(data: bytes, key: str) -> tuple[HistoryRow, str | None]:
    """The event in a file's bytes, checked against its key, and its signature;
    :class:`ValueError` if it is not one."""
    parts = event_parts(key)
    if parts is None:
        raise ValueError("not an event file name")
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError("not a modelkeep event file")
    if not isinstance(doc.get("format_version"), int) or doc["format_version"] > FORMAT_VERSION:
        raise ValueError(f"written in event format {doc.get('format_version')!r}, newer than this release reads")
    row, state = doc.get("row"), doc.get("state")
    if not isinstance(row, dict) or not isinstance(state, dict):
        raise ValueError("its row or state is not an object")
    values = {c: row.get(c) for c in ROW_COLUMNS}
    for name, value in values.items():
        if value is not None and not isinstance(value, str):
            raise ValueError(f"its {name} is a {type(value).__name__}, not text")
    for name in ("at", "actor", "action", "model_name"):
        if not values[name]:
            raise ValueError(f"it has no {name}")
    model, seq, event_id = parts
    if (values["model_name"], doc.get("seq"), doc.get("event_id")) != (model, seq, event_id):
        raise ValueError("its model, number or id is not the one its file name says")
    signature = doc.get("file_signature")
    return HistoryRow(seq, event_id, values, state), signature if isinstance(signature, str) else None


def read_events(
    store: ArtifactStore, keyring: Keyring | None, model_name: str | None = None
) -> tuple[list[HistoryRow], list[Refused]]:
    """Every event file in ``store`` (of ``model_name`` only when given), in history order,
    and those refused: unreadable, misnamed, or with a signature ``keyring`` does not accept."""
    prefix = f"{EVENT_DIR}/{model_name}" if model_name else EVENT_DIR
    found: list[HistoryRow] = []
    refused: list[Refused] = []
    try:
        keys = store.list_keys(prefix)
    except (ArtifactNotFoundError, FileNotFoundError):
        keys = []
    for key in keys:
        try:
            event, signature = parse(store.read_bytes(key), key)
        except (ValueError, TypeError, RecursionError, UnsafeKeyError, ArtifactNotFoundError) as exc:
            refused.append(Refused(key, f"not a valid event file: {exc}"))
            continue
        why = _signature_problem(event, signature, keyring)
        if why is not None:
            refused.append(Refused(key, why))
            continue
        found.append(event)
    found.sort(key=lambda e: (e.seq, e.event_id))
    return found, refused


def _signature_problem(event: HistoryRow, signature: str | None, keyring: Keyring | None) -> str | None:
    if keyring is None:
        return None
    verdict = keyring.event_verdict(signature, signed_part(event))
    if verdict.status == INVALID:
        return f"its signature does not verify ({verdict.reason})"
    if keyring.required and not verdict.trusted:
        return f"signatures are required and this event's is not trusted ({verdict.reason})"
    return None
