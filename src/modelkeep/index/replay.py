"""Replaying history rows: rebuild the lifecycle tables from the store's event files (``reindex``)
and carry one registry's events into another (``copy``, bundles).

Each action has an *applier* that redoes its effect on the tables (an alias move sets the
alias, a ``delete`` sets ``deleted_at``...). Actions without one (``save``, ``purge``,
``reindex``, and actions added later, such as policy changes) are kept in the history and change
nothing else; a module that adds an action with state of its own registers its applier with
:func:`applies`. Values from the store are checked as a hostile store's would be: a row whose
names do not validate changes nothing (it stays in the history, where ``verify`` shows it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, insert, select, text, update

from ..errors import InvalidNameError
from ..metadata import ModelMetadata
from ..policies import APPROVE, POLICY_DELETE, POLICY_SET, validate_model_glob
from ..versions import validate_alias, validate_model_name, validate_version
from .audit import (
    ALIAS_RESIGN,
    USER_ACTIONS,
    USERS_LOG,
    HistoryRow,
    insert_history,
    now,
    touch_model,
    write_history,
)
from .migrations import qualified_table
from .schema import aliases, approvals, blob_refs, fields, history, models, policies, tags, versions

if TYPE_CHECKING:
    from .sql import SqlIndex

logger = logging.getLogger("modelkeep")

#: Redoes one history row's effect: ``(conn, row, present)``, ``present`` the versions of the
#: row's model that exist (effects on others are skipped).
Applier = Callable[[Connection, HistoryRow, set[str]], None]
APPLIERS: dict[str, Applier] = {}


def applies(*actions: str) -> Callable[[Applier], Applier]:
    """Register the applier of ``actions`` (see :data:`APPLIERS`)."""

    def register(fn: Applier) -> Applier:
        for action in actions:
            APPLIERS[action] = fn
        return fn

    return register


def _json(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def _live_version(row: HistoryRow, present: set[str]) -> str | None:
    version = row.row.get("version")
    return version if isinstance(version, str) and validate_version(version) in present else None


@applies("alias_set")
def _alias_set(conn: Connection, event: HistoryRow, present: set[str]) -> None:
    r = event.row
    version, alias = _live_version(event, present), validate_alias(r["alias"])
    if version is None:
        return
    seq = event.state.get("seq")
    before = json.loads(r["before"]) if r["before"] else None  # the version moved from (signed too)
    values = {
        "version": version,
        "updated_at": r["at"],
        "seq": seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
        "signature": r["signature"],
        "previous": before if isinstance(before, str) else None,
    }
    where = (aliases.c.model_name == r["model_name"], aliases.c.alias == alias)
    if conn.execute(select(aliases.c.alias).where(*where)).first() is None:
        conn.execute(insert(aliases).values(model_name=r["model_name"], alias=alias, **values))
    else:
        conn.execute(update(aliases).where(*where).values(**values))


@applies(ALIAS_RESIGN)
def _alias_resign(conn: Connection, event: HistoryRow, present: set[str]) -> None:
    """A re-sign after an overwrite: the alias keeps its version, from-version and time (set by
    the move replayed before it) and takes the new move number and signature."""
    r = event.row
    version, alias = _live_version(event, present), validate_alias(r["alias"])
    seq = event.state.get("seq")
    if version is None or not isinstance(seq, int) or isinstance(seq, bool):
        return
    where = (aliases.c.model_name == r["model_name"], aliases.c.alias == alias, aliases.c.version == version)
    conn.execute(update(aliases).where(*where).values(seq=seq, signature=r["signature"]))


@applies("alias_delete")
def _alias_delete(conn: Connection, event: HistoryRow, present: set[str]) -> None:
    alias = validate_alias(event.row["alias"])
    conn.execute(delete(aliases).where(aliases.c.model_name == event.row["model_name"], aliases.c.alias == alias))


def _tag_scope(event: HistoryRow, present: set[str]) -> str | None:
    """``""`` for a model-level tag, the version for a version tag, ``None`` if it is gone."""
    if event.row.get("version") is None:
        return ""
    return _live_version(event, present)


@applies("tag_set", "tag_delete")
def _tag(conn: Connection, event: HistoryRow, present: set[str]) -> None:
    from .lifecycle import validate_tag_key

    r = event.row
    scope, key = _tag_scope(event, present), validate_tag_key(r["key"])
    if scope is None:
        return
    where = (tags.c.model_name == r["model_name"], tags.c.version == scope, tags.c.key == key)
    conn.execute(delete(tags).where(*where))
    if r["action"] == "tag_set":
        value = _json(r["after"])
        if not isinstance(value, str):
            raise InvalidNameError(f"a tag value must be text, got {type(value).__name__}")
        conn.execute(insert(tags).values(model_name=r["model_name"], version=scope, key=key, value=value))


@applies("describe")
def _describe(conn: Connection, event: HistoryRow, present: set[str]) -> None:
    r = event.row
    description = _json(r["after"])
    if description is not None and not isinstance(description, str):
        raise InvalidNameError(f"a description must be text, got {type(description).__name__}")
    if r.get("version") is None:
        where = models.c.model_name == r["model_name"]
        conn.execute(update(models).where(where).values(description=description, updated_at=r["at"]))
    elif (version := _live_version(event, present)) is not None:
        conn.execute(
            update(versions)
            .where(versions.c.model_name == r["model_name"], versions.c.version == version)
            .values(description=description)
        )


@applies("delete", "restore")
def _trash(conn: Connection, event: HistoryRow, present: set[str]) -> None:
    r = event.row
    version = _live_version(event, present)
    if version is None:
        return
    deleted_at = None
    if r["action"] == "delete":
        after = _json(r["after"])
        deleted_at = after.get("deleted_at") if isinstance(after, dict) else None
        if not isinstance(deleted_at, str):
            raise InvalidNameError("a removal names no time")
    conn.execute(
        update(versions)
        .where(versions.c.model_name == r["model_name"], versions.c.version == version)
        .values(deleted_at=deleted_at)
    )


@applies(POLICY_SET, POLICY_DELETE)
def _policy(conn: Connection, event: HistoryRow, present: set[str]) -> None:
    r = event.row
    glob, alias = validate_model_glob(r["model_name"]), validate_alias(r["alias"])
    conn.execute(delete(policies).where(policies.c.model_glob == glob, policies.c.alias == alias))
    if r["action"] == POLICY_DELETE:
        return
    conditions = event.state.get("conditions")
    if not isinstance(conditions, dict):  # written before the event kept them: the history's view
        conditions = _json(r["after"])
    if not isinstance(conditions, dict):
        raise InvalidNameError("a policy change names no conditions")
    # Stored as given; a reader judges it with policies.from_row, which refuses what it cannot read.
    stored = json.dumps(conditions, sort_keys=True)
    row = {"model_glob": glob, "alias": alias, "conditions": stored, "updated_at": r["at"], "updated_by": r["actor"]}
    conn.execute(insert(policies).values(**row))


@applies(APPROVE)
def _approve(conn: Connection, event: HistoryRow, present: set[str]) -> None:
    r = event.row
    version, alias = _live_version(event, present), validate_alias(r["alias"])
    after = _json(r["after"])
    sha256 = after.get("sha256") if isinstance(after, dict) else None
    if version is None or not isinstance(sha256, str):
        return
    key = (
        approvals.c.model_name == r["model_name"],
        approvals.c.version == version,
        approvals.c.alias == alias,
        approvals.c.user_name == r["actor"],
    )
    conn.execute(delete(approvals).where(*key))
    conn.execute(
        insert(approvals).values(
            model_name=r["model_name"], version=version, alias=alias, user_name=r["actor"], sha256=sha256, at=r["at"]
        )
    )


def _about_policies(event: HistoryRow) -> bool:
    """A policy change: its ``model_name`` is a glob of model names, not a model."""
    return event.row["action"] in (POLICY_SET, POLICY_DELETE)


def _about_users(event: HistoryRow) -> bool:
    """A change to users, tokens or grants: its ``model_name`` is :data:`~.audit.USERS_LOG`."""
    return event.row["model_name"] == USERS_LOG and event.row["action"] in USER_ACTIONS


def apply_event(conn: Connection, event: HistoryRow, present: set[str], *, where: str) -> None:
    """Redo ``event``'s effect (nothing for actions without an applier); a row a hostile or
    damaged store made unusable is logged and skipped."""
    if _about_users(event):
        return  # kept in the history only: the users table is not in the store
    if not _about_policies(event):
        touch_model(conn, event.row["model_name"], event.row["at"])
    applier = APPLIERS.get(str(event.row["action"]))
    if applier is None:
        return
    try:
        applier(conn, event, present)
    except (InvalidNameError, ValueError, TypeError, KeyError, AttributeError) as exc:
        logger.warning("%s: history row %s (%s) changes nothing: %s", where, event.seq, event.row["action"], exc)


def usable(events: Iterable[HistoryRow], *, where: str) -> list[HistoryRow]:
    """``events`` whose model name validates, one per number: a number written twice (a crash
    left a file whose transaction never committed, and SQLite gave the number again) keeps the
    later row, the one that committed."""
    chosen: dict[int, HistoryRow] = {}
    for event in events:
        try:
            if not _about_users(event):
                (validate_model_glob if _about_policies(event) else validate_model_name)(event.row["model_name"])
        except InvalidNameError as exc:
            logger.warning("%s: skipping event %s: %s", where, event.seq, exc)
            continue
        if event.seq not in chosen or str(event.row["at"]) > str(chosen[event.seq].row["at"]):
            chosen[event.seq] = event
    return [chosen[seq] for seq in sorted(chosen)]


def rebuild(index: SqlIndex, records: list[ModelMetadata], events: list[HistoryRow]) -> None:
    """Replace the whole index by ``records`` (from the sidecars) and the lifecycle ``events``
    replayed in order (from the event files), each history row under its original number, time
    and actor; then one ``reindex`` row per model. One transaction: readers see the old index or
    the new one."""
    from .sql import Reservation

    events = usable(events, where="reindex")
    with index._write() as conn:
        names = {r[0] for r in conn.execute(select(versions.c.model_name).distinct())}
        for name in sorted(names | {r.model_name for r in records} | {e.row["model_name"] for e in events}):
            index._lock_model(conn, name)
        for table in (blob_refs, fields, versions, aliases, tags, history, models, policies, approvals):
            conn.execute(delete(table))
        present: dict[str, set[str]] = {}
        for record in records:
            slot = Reservation(index, conn, record.model_name, record.version, None)
            slot.history_action = None
            slot.put(record)
            present.setdefault(record.model_name, set()).add(record.version)
        for event in events:
            insert_history(conn, event.row, event_id=event.event_id, row_id=event.seq, state=event.state, queue=False)
            apply_event(conn, event, present.get(event.row["model_name"], set()), where="reindex")
        if index.dialect == "postgresql" and events:
            name = qualified_table(conn, history.name)
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), (SELECT MAX(id) FROM {name}))"))
        at = now()
        index._drop_dangling(conn, {(m, v) for m, vs in present.items() for v in vs}, at)
        for name in sorted(present):
            touch_model(conn, name, at)
            write_history(conn, "reindex", name, at=at)


def carry(
    index: SqlIndex,
    model_name: str,
    events: list[HistoryRow],
    carried: set[str],
    *,
    skip: Callable[[HistoryRow], bool],
) -> int:
    """Append to ``index`` the ``events`` of ``model_name`` (another registry's) it does not have
    yet (by event id), with their times and actors, and redo their effects on ``carried`` (the
    versions that came along); each gets a number and an event file here. Rows about a version
    ``index`` holds that did not come along, and those ``skip`` names, are left out. Returns how
    many were added."""
    with index._write() as conn:
        index._lock_model(conn, model_name)
        known = set(conn.execute(select(history.c.event_id).where(history.c.model_name == model_name)).scalars().all())
        held = set(conn.execute(select(versions.c.version).where(versions.c.model_name == model_name)).scalars())
        present = held & carried
        added = 0
        for event in events:
            version = event.row.get("version")
            if event.event_id in known or event.row["model_name"] != model_name or skip(event):
                continue
            if version in held and version not in present:
                continue
            written = insert_history(conn, event.row, event_id=event.event_id, state=event.state)
            apply_event(conn, written, present, where="copy")
            added += 1
        return added
