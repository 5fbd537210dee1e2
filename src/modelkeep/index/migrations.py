"""Ordered upgrade steps for the index schema.

A registry records the schema it was written with (``schema_version`` in
``modelkeep_info``). Opening an older one applies every later step here, in
order, inside one write transaction under the schema lock, then stamps the new
version; a registry written by a newer modelkeep is refused with
:class:`~modelkeep.errors.IncompatibleRegistryError` rather than misread. A new
registry is created straight from :mod:`modelkeep.index.schema` and stamped
with :data:`SCHEMA_VERSION`.

Rules for a new step: append it (never edit or reorder a released one), make it
work on SQLite and PostgreSQL, backfill existing rows, and keep
:mod:`modelkeep.index.schema` equal to "version 1 plus every step"
(``tests/test_migrations.py`` checks that).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Column, Connection, Index, MetaData, Table, func, insert, null, select, update

from .names import SCHEMA_VERSION as NAMED_SCHEMA_VERSION
from .schema import (
    aliases,
    approvals,
    claims,
    deliveries,
    delivery_attempts,
    fields,
    grants,
    history,
    models,
    policies,
    tags,
    tokens,
    users,
    versions,
    webhooks,
)


@dataclass(frozen=True)
class Migration:
    """One upgrade step: from ``version - 1`` to ``version``."""

    version: int
    summary: str
    upgrade: Callable[[Connection, str], None]


def qualified_table(conn: Connection, table_name: str) -> str:
    """``table_name`` quoted, and prefixed with the PostgreSQL schema the engine maps to."""
    preparer = conn.dialect.identifier_preparer
    translate = conn.get_execution_options().get("schema_translate_map") or {}
    target = translate.get(None)
    quoted = preparer.quote(table_name)
    return f"{preparer.quote_schema(target)}.{quoted}" if target else quoted


def add_column(conn: Connection, table_name: str, column: Column[object]) -> None:
    """``ALTER TABLE ... ADD COLUMN`` for a nullable column (SQLite and PostgreSQL)."""
    kind = column.type.compile(dialect=conn.dialect)
    conn.exec_driver_sql(f"ALTER TABLE {qualified_table(conn, table_name)} ADD COLUMN {column.name} {kind}")


# The version-2 shapes of the tables that later steps changed (steps 6, 7 and 9 added columns).
_V2 = MetaData()
_ALIASES_V2 = Table(
    aliases.name,
    _V2,
    *(c._copy() for c in aliases.columns if c.name not in ("seq", "signature", "previous")),
    *(Index(i.name, *(c.name for c in i.columns)) for i in aliases.indexes),
)
_HISTORY_V2 = Table(
    history.name,
    _V2,
    *(c._copy() for c in history.columns if c.name not in ("signature", "seq", "event_id")),
    *(Index(i.name, *(c.name for c in i.columns)) for i in history.indexes),
)

# The version-5 shape of the tokens table (step 10 added token_id and expires_at).
_TOKENS_V5 = Table(
    tokens.name,
    _V2,
    *(c._copy() for c in tokens.columns if c.name not in ("token_id", "expires_at")),
    *(Index(i.name, *(c.name for c in i.columns)) for i in tokens.indexes),
)


def _baseline(conn: Connection, dialect: str) -> None:
    """Version 1, the 0.1 release: versions, info and blob_refs. Nothing to upgrade from."""


def _lifecycle(conn: Connection, dialect: str) -> None:
    """Version 2: soft delete and descriptions on versions; models, aliases, tags, history."""
    v = versions
    add_column(conn, v.name, Column("deleted_at", v.c.deleted_at.type))
    add_column(conn, v.name, Column("description", v.c.description.type))
    # These tables are new in this step, so their current definitions are the step's, except
    # for aliases and history, which schema 6 changed: their version-2 definitions are below.
    for table in (models, _ALIASES_V2, tags, _HISTORY_V2):
        table.create(conn, checkfirst=True)
    conn.execute(
        insert(models).from_select(
            ["model_name", "description", "created_at", "updated_at"],
            select(v.c.model_name, null(), func.min(v.c.created_at), func.max(v.c.updated_at)).group_by(v.c.model_name),
        )
    )


def _search(conn: Connection, dialect: str) -> None:
    """Version 3: ``modelkeep_fields``, every version's scalar fields for indexed search."""
    from .fields import backfill

    fields.create(conn, checkfirst=True)  # new in this step: see the note in _lifecycle
    backfill(conn)


def _claims(conn: Connection, dialect: str) -> None:
    """Version 4: ``modelkeep_claims``, team-mode write claims (see :mod:`modelkeep.index.claims`).

    No save of an older registry used claims, so there is nothing to backfill: the table
    starts empty. The same DDL serves SQLite and PostgreSQL.
    """
    claims.create(conn, checkfirst=True)  # new in this step: see the note in _lifecycle


def _users(conn: Connection, dialect: str) -> None:
    """Version 5: ``modelkeep_users`` and ``modelkeep_tokens``, who may sign in to the UI.

    New tables, empty: a registry had no users before, so the UI stays sign-in free on
    loopback until someone adds one (``modelkeep users add``).
    """
    for table in (users, _TOKENS_V5):
        table.create(conn, checkfirst=True)  # new in this step; tokens as it was then (step 10 changed it)


def _signed_events(conn: Connection, dialect: str) -> None:
    """Version 6: signed alias moves (``modelkeep_aliases.seq`` and ``.signature``) and signed
    events in the history (``modelkeep_history.signature``). Existing aliases and history rows
    stay unsigned (NULL): moving an alias again signs it."""
    add_column(conn, aliases.name, Column("seq", aliases.c.seq.type))
    add_column(conn, aliases.name, Column("signature", aliases.c.signature.type))
    add_column(conn, history.name, Column("signature", history.c.signature.type))


def _policies(conn: Connection, dialect: str) -> None:
    """Version 7: promotion policies and approvals (new, empty tables), and what signed alias
    moves now cover: the version moved from (``modelkeep_aliases.previous``) and each move's
    number in the history (``modelkeep_history.seq``). Older rows keep NULL there; their
    signatures (model, alias, version, SHA-256, number) still verify."""
    for table in (policies, approvals):
        table.create(conn, checkfirst=True)  # new in this step: see the note in _lifecycle
    add_column(conn, aliases.name, Column("previous", aliases.c.previous.type))
    add_column(conn, history.name, Column("seq", history.c.seq.type))


def _webhooks(conn: Connection, dialect: str) -> None:
    """Version 8: ``modelkeep_webhooks``, ``modelkeep_deliveries`` (the outbox) and
    ``modelkeep_delivery_attempts`` (the delivery log); new tables, empty."""
    for table in (webhooks, deliveries, delivery_attempts):
        table.create(conn, checkfirst=True)  # new in this step: see the note in _lifecycle


def _store_events(conn: Connection, dialect: str) -> None:
    """Version 9: ``modelkeep_history.event_id``, the event file each history row has in the
    store (:mod:`modelkeep.eventlog`). Existing rows keep NULL: the first write through a
    registry that has a store writes their event files out (see ``SqlIndex.export_events``)."""
    add_column(conn, history.name, Column("event_id", history.c.event_id.type))


def _roles(conn: Connection, dialect: str) -> None:
    """Version 10: the writer and maintainer roles, per-model grants, token ids and expiry.

    Users whose role is ``editor`` become ``maintainer`` (what an editor could do; see
    :mod:`modelkeep.identity`). ``modelkeep_grants`` is new and empty. Each existing token gets
    an id, the first 12 hex digits of its SHA-256 (the hash of a random 256-bit secret, which
    says nothing about the secret), and no expiry."""
    conn.execute(update(users).where(users.c.role == "editor").values(role="maintainer"))
    grants.create(conn, checkfirst=True)  # new in this step: see the note in _lifecycle
    add_column(conn, tokens.name, Column("token_id", tokens.c.token_id.type))
    add_column(conn, tokens.name, Column("expires_at", tokens.c.expires_at.type))
    conn.execute(update(tokens).values(token_id=func.substr(tokens.c.token_hash, 1, 12)))


def _live_versions_index(conn: Connection, dialect: str) -> None:
    """Version 11: ``ix_modelkeep_versions_live`` on (model_name, deleted_at, updated_at), so the
    models page counts each model's live versions and finds its last update off the index
    alone. Building the index reads every existing row once: that is the backfill."""
    live = next(i for i in versions.indexes if i.name == "ix_modelkeep_versions_live")
    live.create(conn, checkfirst=True)


MIGRATIONS: list[Migration] = [
    Migration(1, "0.1 baseline: versions, info, blob_refs", _baseline),
    Migration(2, "lifecycle: soft delete, descriptions, models, aliases, tags, history", _lifecycle),
    Migration(3, "search: scalar fields of every version, indexed", _search),
    Migration(4, "team-mode write claims (modelkeep_claims)", _claims),
    Migration(5, "UI users and API tokens (modelkeep_users, modelkeep_tokens)", _users),
    Migration(6, "signed alias moves and signed history events", _signed_events),
    Migration(7, "promotion policies and approvals; alias moves signed with where they came from", _policies),
    Migration(8, "webhooks, their outbox and delivery log", _webhooks),
    Migration(9, "history rows name their event files in the store", _store_events),
    Migration(10, "writer and maintainer roles (editor rewritten), per-model grants, token ids and expiry", _roles),
    Migration(11, "models page: live versions per model counted off an index", _live_versions_index),
]

#: The schema this code writes; bumped by appending a step to :data:`MIGRATIONS` (and in :mod:`.names`).
SCHEMA_VERSION = MIGRATIONS[-1].version
if SCHEMA_VERSION != NAMED_SCHEMA_VERSION:  # pragma: no cover - caught by every test run
    raise RuntimeError(f"index/names.py says schema {NAMED_SCHEMA_VERSION}, the migrations end at {SCHEMA_VERSION}")


def pending(found: int) -> list[Migration]:
    """The steps that bring a registry at schema ``found`` up to :data:`SCHEMA_VERSION`."""
    return [m for m in MIGRATIONS if m.version > found]
