"""Promotion policies and approvals in the index (see :mod:`modelkeep.policies`).

Everything here runs inside a transaction the caller holds. Changing a policy takes the
policies lock exclusively and a move takes it shared (PostgreSQL advisory locks; on SQLite
every write transaction is already exclusive), and an approval takes the model's write lock
like a move, so a move always judges the policies and approvals committed before it, and
nothing that commits after it can have been the reason it passed.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from sqlalchemy import Connection, and_, delete, insert, select, text

from ..policies import APPROVE, POLICY_DELETE, POLICY_SET, MoveFacts, Policy, from_row, judge
from .audit import actor, now, write_history
from .common import retry_on_disconnect
from .rows import text_value
from .schema import approvals, history, policies

if TYPE_CHECKING:
    from ..metadata import ModelMetadata
    from .sql import SqlIndex


def lock_policies(index: SqlIndex, conn: Connection, *, exclusive: bool) -> None:
    """Changes hold this exclusive, moves shared (PostgreSQL; SQLite writes are exclusive anyway)."""
    if index.dialect == "postgresql":
        fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        conn.execute(text(f"SELECT {fn}(hashtext('modelkeep:policies'))"))


def stored_policies(conn: Connection) -> list[Policy]:
    """Every policy, by model glob and alias."""
    rows = conn.execute(select(policies).order_by(policies.c.model_glob, policies.c.alias))
    return [
        from_row(
            text_value(r.model_glob),
            text_value(r.alias),
            text_value(r.conditions),
            text_value(r.updated_at),
            text_value(r.updated_by),
        )
        for r in rows
    ]


def governing(conn: Connection, model_name: str, alias: str) -> list[Policy]:
    """The policies that govern moves of ``alias`` of ``model_name``."""
    return [p for p in stored_policies(conn) if p.alias == alias and p.matches(model_name)]


def _find(conn: Connection, model_glob: str, alias: str) -> Policy | None:
    found = [p for p in stored_policies(conn) if p.model == model_glob and p.alias == alias]
    return found[0] if found else None


def put_policy(conn: Connection, policy: Policy) -> Policy:
    """Store ``policy`` (replacing the one for the same glob and alias), with its history row."""
    before = _find(conn, policy.model, policy.alias)
    at, who = now(), actor()
    where = and_(policies.c.model_glob == policy.model, policies.c.alias == policy.alias)
    conn.execute(delete(policies).where(where))
    conn.execute(
        insert(policies).values(
            model_glob=policy.model,
            alias=policy.alias,
            conditions=json.dumps(policy.conditions(), sort_keys=True),
            updated_at=at,
            updated_by=who,
        )
    )
    stored = from_row(policy.model, policy.alias, json.dumps(policy.conditions()), at, who)
    write_history(
        conn,
        POLICY_SET,
        policy.model,
        alias=policy.alias,
        before=None if before is None else before.to_dict()["conditions"],
        after=stored.to_dict()["conditions"],
        at=at,
        # The history shows signing keys by fingerprint; the event file keeps the conditions
        # as stored, public keys included, so that a rebuild from the store restores them.
        state={"conditions": policy.conditions()},
    )
    return stored


def drop_policy(conn: Connection, model_glob: str, alias: str) -> Policy | None:
    """Remove the policy for ``model_glob`` and ``alias`` (with its history row); ``None`` if absent."""
    before = _find(conn, model_glob, alias)
    if before is None:
        return None
    conn.execute(delete(policies).where(policies.c.model_glob == model_glob, policies.c.alias == alias))
    write_history(conn, POLICY_DELETE, model_glob, alias=alias, before=before.to_dict()["conditions"])
    return before


def add_approval(conn: Connection, record: ModelMetadata, alias: str) -> str:
    """Record that the acting user approves ``record`` (these bytes) for ``alias``; returns who."""
    art = record.artifact
    sha256 = art.sha256 if art else ""
    who, at = actor(), now()
    key = (
        approvals.c.model_name == record.model_name,
        approvals.c.version == record.version,
        approvals.c.alias == alias,
        approvals.c.user_name == who,
    )
    conn.execute(delete(approvals).where(*key))
    conn.execute(
        insert(approvals).values(
            model_name=record.model_name, version=record.version, alias=alias, user_name=who, sha256=sha256, at=at
        )
    )
    after = {"sha256": sha256}
    write_history(conn, APPROVE, record.model_name, version=record.version, alias=alias, after=after, at=at)
    return who


def approval_rows(
    conn: Connection, model_name: str, version: str | None = None, alias: str | None = None
) -> list[dict[str, str]]:
    """Approvals of a model (one version, one alias), oldest first."""
    query = select(approvals).where(approvals.c.model_name == model_name)
    if version is not None:
        query = query.where(approvals.c.version == version)
    if alias is not None:
        query = query.where(approvals.c.alias == alias)
    rows = conn.execute(query.order_by(approvals.c.at, approvals.c.user_name))
    return [
        {
            "model_name": text_value(r.model_name),
            "version": text_value(r.version),
            "alias": text_value(r.alias),
            "user": text_value(r.user_name),
            "sha256": text_value(r.sha256),
            "at": text_value(r.at),
        }
        for r in rows
    ]


def author(conn: Connection, model_name: str, version: str) -> str | None:
    """Who saved the version's current bytes: the actor of its last save or overwrite."""
    found = conn.execute(
        select(history.c.actor)
        .where(
            history.c.model_name == model_name,
            history.c.version == version,
            history.c.action.in_(("save", "overwrite")),
        )
        .order_by(history.c.id.desc())
        .limit(1)
    ).scalar()
    return None if found is None else text_value(found)


def check_move(
    index: SqlIndex, conn: Connection, model_name: str, alias: str, version: str, fingerprint: str | None
) -> tuple[list[Policy], list[tuple[str, str]]]:
    """The policies governing this move and the conditions it breaks (in ``conn``'s transaction)."""
    found = governing(conn, model_name, alias)
    if not found:
        return [], []
    from ..search.api import Database, version_matches

    record = index._live(conn, model_name, version)
    sha256 = record.artifact.sha256 if record.artifact else ""
    approvers = [row["user"] for row in approval_rows(conn, model_name, version, alias) if row["sha256"] == sha256]
    db = Database(index.dialect, index.schema, lambda sql, params: list(conn.execute(text(sql), params)))
    facts = MoveFacts(
        record=record,
        mover=actor(),
        fingerprint=fingerprint,
        author=author(conn, model_name, version),
        approvers=approvers,
        matches=lambda expression: version_matches(db, expression, model_name, version),
    )
    failures = [failure for policy in found for failure in judge(policy, facts)]
    return found, failures


class PolicyStore:
    """Policies and approvals of one :class:`SqlIndex`, each call one transaction."""

    def __init__(self, index: SqlIndex) -> None:
        self._index = index

    @retry_on_disconnect
    def set(self, policy: Policy) -> Policy:
        """Store ``policy`` (replacing the one for its glob and alias); returns it as stored."""
        with self._index._write() as conn:
            lock_policies(self._index, conn, exclusive=True)
            return put_policy(conn, policy)

    @retry_on_disconnect
    def remove(self, model_glob: str, alias: str) -> Policy | None:
        """Remove one policy; returns it, or ``None`` if there was none."""
        with self._index._write() as conn:
            lock_policies(self._index, conn, exclusive=True)
            return drop_policy(conn, model_glob, alias)

    @retry_on_disconnect
    def all(self) -> list[Policy]:
        """Every policy, by model glob and alias."""
        with self._index._read() as conn:
            return stored_policies(conn)

    @retry_on_disconnect
    def approve(self, model_name: str, version: str, alias: str) -> str:
        """Record the acting user's approval of live ``version`` for ``alias``; returns who approved."""
        with self._index.lifecycle._locked(model_name) as conn:
            return add_approval(conn, self._index._live(conn, model_name, version), alias)

    @retry_on_disconnect
    def approvals(self, model_name: str, version: str | None = None, alias: str | None = None) -> list[dict[str, str]]:
        """Approvals of a model (one version, one alias), oldest first (none of a model the reader
        may not see)."""
        if not self._index.may_view(model_name):
            return []
        with self._index._read() as conn:
            return approval_rows(conn, model_name, version, alias)
