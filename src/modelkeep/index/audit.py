"""Rows the lifecycle keeps beside each version: the audit log, model rows, and the
aliases, tags and description attached to records when they are read.

Low-level helpers used inside the index's own transactions (no locking here);
:mod:`.lifecycle` holds the operations built on them.
"""

from __future__ import annotations

import datetime as _dt
import functools
import getpass
import json
import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select

from ..identity import acting
from ..metadata import ModelMetadata
from .common import run
from .rows import fill_lifecycle
from .schema import aliases, history, models, tags, versions

#: The ``modelkeep_tags.version`` of model-level tags.
MODEL_LEVEL = ""
#: ``WHERE`` clause of versions that are not in the trash.
LIVE = versions.c.deleted_at.is_(None)


#: The ``model_name`` of the history rows about users, tokens and grants (not a model: a model
#: name cannot start with ``_``). Their ``key`` is the user; only admins read them.
USERS_LOG = "_users"
#: The actions of those rows. ``before``/``after`` hold roles, token ids, labels and globs, never a
#: password, a password hash or a token.
USER_ACTIONS = (
    "user_add",
    "user_remove",
    "user_role",
    "user_password",
    "token_new",
    "token_revoke",
    "grant",
    "grant_revoke",
)


#: The history columns an event file carries, as stored (``before``/``after`` are JSON text).
ROW_COLUMNS = ("at", "actor", "action", "model_name", "version", "alias", "key", "before", "after", "signature")
#: ``Connection.info`` key of the rows written in the open write transaction (see :class:`HistoryRow`).
PENDING = "modelkeep_pending_events"


@dataclass
class HistoryRow:
    """One history row as its event file carries it: ``seq`` (its id in this index), its
    ``event_id``, the columns of :data:`ROW_COLUMNS`, and ``state``: what replaying it needs
    that the row does not say (an alias move's number)."""

    seq: int
    event_id: str
    row: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)


def now() -> str:
    """The current UTC time, ISO-8601 with microseconds (fixed width, so strings sort as times)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def actor() -> str:
    """Who is making the change: the identity acting now (the UI's signed-in user, or the
    library's configured identity), else ``MODELKEEP_USER``, else ``user@host``."""
    who = acting()
    if who is not None:
        return who.name[:256]
    name = os.environ.get("MODELKEEP_USER", "").strip()
    if not name:
        uid = os.getuid() if hasattr(os, "getuid") else None
        name = f"{_login(tuple(os.environ.get(v) for v in _LOGIN_VARIABLES), uid)}@{socket.gethostname()}"
    return name[:256]


#: What :func:`getpass.getuser` reads before the password database.
_LOGIN_VARIABLES = ("LOGNAME", "USER", "LNAME", "USERNAME")


@functools.lru_cache(maxsize=8)
def _login(variables: tuple[str | None, ...], uid: int | None) -> str:
    """:func:`getpass.getuser`, once per (login variables, uid): without LOGNAME/USER (containers)
    it reads the password database, ~30 us on each history row of a small save."""
    del variables, uid  # the cache key: what getuser's answer depends on
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (containers)
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def write_history(
    conn: Connection,
    action: str,
    model_name: str,
    *,
    version: str | None = None,
    alias: str | None = None,
    key: str | None = None,
    before: Any = None,
    after: Any = None,
    at: str | None = None,
    signature: str | None = None,
    seq: int | None = None,
    state: dict[str, Any] | None = None,
) -> None:
    """Append one audit row; call it inside the transaction of the change it records
    (``signature``: of the signed event the row records, see :mod:`modelkeep.events`;
    ``seq``: the move number that event covers; ``state``: what its event file adds for a
    replay, see :class:`HistoryRow`).

    The row is also queued for the store: the index writes its event file before the
    transaction commits (``SqlIndex.journal``)."""
    values = {
        "at": at or now(),
        "actor": actor(),
        "action": action,
        "model_name": model_name,
        "version": version,
        "alias": alias,
        "key": key,
        "before": None if before is None else json.dumps(before, separators=(",", ":")),
        "after": None if after is None else json.dumps(after, separators=(",", ":")),
        "signature": signature,
    }
    insert_history(conn, values, move_seq=seq, state=state)


#: The history action of an alias re-signed after its version was overwritten (same version, same
#: from-version and time; a new move number and signature over the new bytes).
ALIAS_RESIGN = "alias_resign"


def signed_move_seq(values: dict[str, Any], state: dict[str, Any] | None) -> int | None:
    """The move number a replayed history row records in ``modelkeep_history.seq``: a signed
    alias move's or re-sign's, which its event file keeps in ``state`` (the signature covers it)."""
    seq = (state or {}).get("seq")
    if values.get("action") not in ("alias_set", ALIAS_RESIGN) or values.get("signature") is None:
        return None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def insert_history(
    conn: Connection,
    values: dict[str, Any],
    *,
    event_id: str | None = None,
    row_id: int | None = None,
    move_seq: int | None = None,
    state: dict[str, Any] | None = None,
    queue: bool = True,
) -> HistoryRow:
    """Insert one history row as given (``values``: the columns of :data:`ROW_COLUMNS`);
    ``row_id`` keeps a replayed row's id, ``event_id`` its event file's id, ``move_seq`` the
    signed move number (by default the one ``state`` carries). With ``queue`` the row's event
    file is written before the transaction commits."""
    event_id = event_id or uuid.uuid4().hex
    extra: dict[str, Any] = {} if row_id is None else {"id": row_id}
    seq = move_seq if move_seq is not None else signed_move_seq(values, state)
    result = run(conn, _INSERT_HISTORY, {**values, "event_id": event_id, "seq": seq, **extra})
    found = result.inserted_primary_key
    ident = row_id if row_id is not None else int(found[0]) if found is not None else -1
    written = HistoryRow(ident, event_id, {c: values.get(c) for c in ROW_COLUMNS}, dict(state or {}))
    if queue:
        conn.info.setdefault(PENDING, []).append(written)
    return written


#: Built once: ``insert(history).values(**row)`` built and cache-keyed a new statement for each
#: row (~0.1 ms of a small save); the compiled form is cached per set of columns given.
_INSERT_HISTORY = insert(history)


def touch_model(conn: Connection, model_name: str, at: str) -> None:
    """Make sure the model has its ``modelkeep_models`` row (call under the model's lock): one
    ``INSERT ... ON CONFLICT DO NOTHING`` (SQLite and PostgreSQL both speak it)."""
    values = {"model_name": model_name, "description": None, "created_at": at, "updated_at": at}
    upsert = _touch_statement(conn.dialect.name)
    if upsert is not None:
        run(conn, upsert, values)
    elif conn.execute(select(models.c.model_name).where(models.c.model_name == model_name)).first() is None:
        conn.execute(insert(models).values(**values))


@functools.cache
def _touch_statement(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(models).on_conflict_do_nothing(index_elements=[models.c.model_name])
    if dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(models).on_conflict_do_nothing(index_elements=[models.c.model_name])
    return None  # another database: read, then insert


def artifact_summary(record: ModelMetadata) -> dict[str, Any]:
    """What the audit log keeps of a version's content: enough to tell two saves apart."""
    art = record.artifact
    return {
        "sha256": art.sha256 if art else None,
        "size": art.size if art else None,
        "format": art.format if art else None,
        "artifact_key": art.key if art else None,
    }


#: The aliases and tags of one version (what every record read attaches), built once.
_VERSION_ALIASES = (
    select(aliases.c.version, aliases.c.alias)
    .where(aliases.c.model_name == bindparam("model_name"), aliases.c.version == bindparam("version"))
    .order_by(aliases.c.alias)
)
_VERSION_TAGS = (
    select(tags.c.version, tags.c.key, tags.c.value)
    .where(tags.c.model_name == bindparam("model_name"), tags.c.version == bindparam("version"))
    .order_by(tags.c.version, tags.c.key)  # the primary key's order
)


def attach_lifecycle(
    conn: Connection, model_name: str, pairs: list[tuple[ModelMetadata, str | None]], *, version: str | None = None
) -> list[ModelMetadata]:
    """Fill ``aliases``, ``tags`` and ``description`` of ``pairs`` (record, description).

    Two queries however many records there are: all of the model's aliases, and
    its version tags (only ``version``'s when given).
    """
    if not pairs:
        return []
    if version is not None:  # one version (a record read): statements built once
        params = {"model_name": model_name, "version": version}
        return fill_lifecycle(pairs, conn.execute(_VERSION_ALIASES, params), conn.execute(_VERSION_TAGS, params))
    alias_q = select(aliases.c.version, aliases.c.alias).where(aliases.c.model_name == model_name)
    tag_q = select(tags.c.version, tags.c.key, tags.c.value).where(
        tags.c.model_name == model_name, tags.c.version != MODEL_LEVEL
    )
    return fill_lifecycle(
        pairs,
        conn.execute(alias_q.order_by(aliases.c.alias)),
        conn.execute(tag_q.order_by(tags.c.version, tags.c.key)),  # the primary key's order
    )
