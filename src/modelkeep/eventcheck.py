"""Do the index's history and the store's event files agree? (``verify`` reports, ``gc`` repairs.)

Each history row has one event file (:mod:`modelkeep.eventlog`), written before the row's
transaction commits. A crash can leave:

* a file no row names: its transaction never committed (killed between the write and COMMIT).
  The change did not happen; ``gc`` removes the file;
* a row without a valid file: a file a power cut lost (event files skip the directory
  ``fsync``), a file cut short, or one someone edited. ``gc`` writes it again from the row.

Rows an older release wrote have no file until the first write through this release (or
``gc``, or ``reindex``) writes them all out; ``verify`` does not count them as a fault.

Repairs run under the model's write lock, which every writer holds from its event file's write
until its COMMIT, so a change in progress is never mistaken for a leftover.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import ArtifactNotFoundError, UnsafeKeyError
from .eventlog import EventJournal, key_of, parse, read_events
from .index.audit import HistoryRow
from .layout import EVENT_DIR, event_parts

if TYPE_CHECKING:
    from .registry import ModelPersistence


@dataclass
class EventDiff:
    """Where the history and the event files of a registry disagree."""

    #: Rows whose file is missing, unreadable or says something else: ``(row, why)``.
    unwritten: list[tuple[HistoryRow, str]] = field(default_factory=list)
    #: Files no row names: ``(key, why)``.
    orphaned: list[tuple[str, str]] = field(default_factory=list)
    #: Rows an older release wrote, not written out yet (the next write does it; not a fault).
    unexported: list[HistoryRow] = field(default_factory=list)

    @property
    def models(self) -> set[str]:
        """The models concerned."""
        out = {str(row.row["model_name"]) for row, _ in self.unwritten}
        out |= {str(row.row["model_name"]) for row in self.unexported}
        for key, _ in self.orphaned:
            parts = key.split("/")
            out.add(parts[1] if len(parts) > 1 else "")
        return out


def compare(p: ModelPersistence, model_name: str | None = None) -> EventDiff:
    """Compare ``p``'s history rows with its event files (of ``model_name`` only, when given)."""
    diff = EventDiff()
    names = [model_name] if model_name is not None else p.index.history_models()
    rows: dict[str, HistoryRow] = {}
    unnamed: list[HistoryRow] = []
    for name in names:
        for row, stored in p.index.history_rows(name, stored=True):
            if stored:
                rows[key_of(row)] = row
            else:
                unnamed.append(row)
    prefix = f"{EVENT_DIR}/{model_name}" if model_name else EVENT_DIR
    try:
        keys = p.store.list_keys(prefix)
    except (ArtifactNotFoundError, FileNotFoundError):
        keys = []
    diff.unexported = unnamed
    for key in keys:
        if key not in rows:
            why = "no history row names it (a change that never committed)"
            diff.orphaned.append((key, why if event_parts(key) else "not an event file"))
    for key, row in sorted(rows.items()):
        if key not in keys:
            diff.unwritten.append((row, "its event file is missing"))
            continue
        try:
            found, _signature = parse(p.store.read_bytes(key), key)
        except (ValueError, TypeError, RecursionError, UnsafeKeyError, ArtifactNotFoundError) as exc:
            diff.unwritten.append((row, f"its event file is not valid: {exc}"))
            continue
        if found.row != row.row:
            diff.unwritten.append((row, "its event file says something else than the history row"))
    if not diff.unwritten and not diff.orphaned:
        _, refused = read_events(p.store, p.keyring, model_name)
        for item in refused:
            row = rows.get(item.key)
            if row is not None:
                diff.unwritten.append((row, item.why))
    return diff


def repair(p: ModelPersistence, *, remove_orphans: bool = True) -> tuple[list[str], list[str]]:
    """Make the event files agree with the history, model by model under its write lock:
    remove files no row names (unless not ``remove_orphans``), write those rows lack.
    Returns ``(removed, written)`` keys."""
    removed: list[str] = []
    written: list[str] = []
    p.index.export_events()
    journal = EventJournal(p.store, p.keyring)
    for name in sorted(compare(p).models):
        with p.index.lock_model(name):
            diff = compare(p, name)
            for key, _why in diff.orphaned if remove_orphans else []:
                p.store.delete(key, missing_ok=True)
                removed.append(key)
            for row, _why in diff.unwritten:
                written.append(journal.rewrite(row))
    return removed, written


def describe(row: HistoryRow) -> str:
    """A history row in one line, for reports."""
    return json.dumps({"seq": row.seq, "action": row.row["action"], "at": row.row["at"]})
