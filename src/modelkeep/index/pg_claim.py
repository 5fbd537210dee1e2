"""PostgreSQL: a save's claim in one network round trip, for the usual case.

One message (:mod:`.pg_batch`), one implicit transaction committed with it: the model's lock,
then the claim's insert, then (when the caller knows its bytes) the keys of artifacts stored
with the same SHA-256, for the content dedup. The lock is a statement of its own, so the insert's
snapshot is taken once the lock is held and sees every claim and row committed before.

The insert claims the version only when :func:`modelkeep.index.claims.take` would pick the same
one without looking further:

* the model has no claim at all (so no claim, a dead writer's included, is skipped or released);
* the version has no row;
* for an automatic version, the model's highest parsed version (as
  :meth:`~modelkeep.index.sql.SqlIndex.highest_version`) is a plain ``[v]N.N.N`` without
  leading zeros and the version is its next patch, or there is none and the version is
  ``1.0.0`` (what :func:`modelkeep.versions.next_version` returns then).

Otherwise nothing is inserted and the caller claims version by version, as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg import sql

from ..errors import CommitUnknownError, ConnectionLostError
from .pg_batch import run_script
from .schema import claims, versions

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from .sql import SqlIndex

#: The next patch of the model's highest parsed version, when that is a plain ``[v]N.N.N``
#: (``[.]``, not ``\\.``: no backslash, whatever ``standard_conforming_strings`` says); ``NULL``
#: for any other shape, which :func:`modelkeep.versions.next_version` handles.
_NEXT_PATCH = sql.SQL(
    "CASE WHEN top.v IS NULL THEN '1.0.0' "
    "WHEN top.v ~ '^[vV]?(0|[1-9][0-9]*)[.](0|[1-9][0-9]*)[.](0|[1-9][0-9]*)$' "
    "THEN regexp_replace(top.v, '[0-9]+$', '') || (substring(top.v FROM '[0-9]+$')::numeric + 1)::text END"
)


def _table(index: SqlIndex, name: str) -> sql.Identifier:
    return sql.Identifier(index.schema, name) if index.schema else sql.Identifier(name)


def _script(index: SqlIndex, conn: Connection, row: dict[str, str], version: str | None, sha256: str | None) -> str:
    c, v = _table(index, claims.name), _table(index, versions.name)
    name = sql.Literal(row["model_name"])
    if version is None:
        top = sql.SQL(
            "(SELECT version FROM {v} WHERE model_name = {name} AND parsed IS TRUE "
            "ORDER BY sort_key DESC, id DESC LIMIT 1)"
        ).format(v=v, name=name)
        chosen = sql.SQL("SELECT {next} AS v FROM (SELECT {top} AS v) AS top").format(next=_NEXT_PATCH, top=top)
    else:
        chosen = sql.SQL("SELECT {version}::text AS v").format(version=sql.Literal(version))
    lock_key = sql.Literal("modelkeep:" + row["model_name"])
    parts = [
        sql.SQL("SELECT pg_advisory_xact_lock(hashtext({key}))").format(key=lock_key),
        sql.SQL(
            "INSERT INTO {c} (model_name, version, token, owner, claimed_at, purpose) "
            "SELECT {name}, chosen.v, {token}, {owner}, {at}, {purpose} FROM ({chosen}) AS chosen "
            "WHERE chosen.v IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM {c} WHERE model_name = {name}) "
            "AND NOT EXISTS (SELECT 1 FROM {v} WHERE model_name = {name} AND version = chosen.v) "
            "RETURNING version"
        ).format(
            c=c,
            v=v,
            name=name,
            chosen=chosen,
            **{k: sql.Literal(row[k]) for k in ("token", "owner", "at", "purpose")},
        ),
    ]
    if sha256 is not None:
        parts.append(
            sql.SQL("SELECT artifact_key FROM {v} WHERE sha256 = {sha} LIMIT 2").format(v=v, sha=sql.Literal(sha256))
        )
    raw = conn.connection.dbapi_connection
    assert raw is not None
    return sql.SQL("; ").join(parts).as_string(raw)  # type: ignore[arg-type]


def quick_claim(
    index: SqlIndex, row: dict[str, str], version: str | None, sha256: str | None
) -> tuple[str, tuple[str, ...]] | None:
    """Commit the claim ``row`` (``model_name``, ``token``, ``owner``, ``at``, ``purpose``) on
    ``version`` (the next one when ``None``) in one round trip, if the usual case holds (see the
    module's docstring): the version claimed and the keys of stored artifacts with the bytes
    ``sha256`` (at most two; none when ``sha256`` is ``None``). ``None``: nothing was claimed.
    :class:`CommitUnknownError` when the connection dropped (the message carries the commit)."""
    try:
        with index._write(power_safe=False) as conn:
            results = run_script(conn, _script(index, conn, row, version, sha256))
    except ConnectionLostError as exc:  # perhaps before the message went out, perhaps after it committed
        raise CommitUnknownError(
            f"lost the connection to the registry database {index.safe_url} while claiming a version "
            f"(perhaps after the claim was committed): {getattr(exc.__cause__, 'orig', None) or exc}"
        ) from exc
    inserted = results[1]
    if not inserted:
        return None
    found = tuple(str(r[0]) for r in results[2]) if sha256 is not None else ()
    return str(inserted[0][0]), found
