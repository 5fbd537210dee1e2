"""Small pieces shared by the index modules: version order, the reconnect retry, errors, rows."""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import time
from collections import namedtuple
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, ParamSpec, TypeVar

from sqlalchemy import Connection, delete
from sqlalchemy.exc import DBAPIError, MultipleResultsFound, NoResultFound

from ..errors import ConnectionLostError, VersionNotFoundError
from ..metadata import ModelMetadata
from ..versions import sort_key
from .rows import BOUND_COLUMNS, bound_record
from .schema import blob_refs, versions

logger = logging.getLogger("modelkeep")
_P = ParamSpec("_P")
_T = TypeVar("_T")

#: A version's record as a read selects it: the record, then the columns it is checked against.
RECORD_COLUMNS = (versions.c.record, *(versions.c[name] for name in BOUND_COLUMNS))
#: How many columns :data:`RECORD_COLUMNS` selects (a statement's other columns come after them).
RECORD_WIDTH = len(RECORD_COLUMNS)
#: Where :data:`RECORD_COLUMNS` puts the row's ``sha256`` (what a record read is checked against).
RECORD_SHA256 = 1 + BOUND_COLUMNS.index("sha256")


def bound_row(row: Any, *, strict: bool = True) -> ModelMetadata:
    """The record of a row selected with :data:`RECORD_COLUMNS` first, checked against the row
    (see :func:`.rows.bound_record`: a mismatch raises, or in a listing marks the record damaged)."""
    return bound_record(*row[:RECORD_WIDTH], strict=strict)


#: Ascending version order: unparsed versions first (by creation), then by ``sort_key``.
ORDER_ASC = (versions.c.parsed.asc(), versions.c.sort_key.asc(), versions.c.id.asc())
#: The reverse: the first row is "latest".
ORDER_DESC = (versions.c.parsed.desc(), versions.c.sort_key.desc(), versions.c.id.desc())


#: The largest integer a SQLite or PostgreSQL (``bigint``) column or ``LIMIT`` takes.
SQL_INT_MAX = 2**63 - 1


def fits_sql_int(value: int) -> bool:
    """Whether ``value`` fits a 64-bit SQL integer: a larger id names no row (and would fail to bind)."""
    return -SQL_INT_MAX - 1 <= value <= SQL_INT_MAX


#: Pauses before the retries of a read or write transaction whose connection dropped
#: (a failover or restart can drop a new connection too).
RETRY_PAUSES = (0.0, 0.2, 1.0)


def retry_on_disconnect(method: Callable[_P, _T]) -> Callable[_P, _T]:
    """Run ``method`` (a read, or one whole write transaction) again, up to :data:`RETRY_PAUSES`
    more times, when its connection dropped before anything was committed."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        for pause in RETRY_PAUSES:
            try:
                return method(*args, **kwargs)
            except ConnectionLostError as exc:
                logger.warning("%s; retrying on a new connection", exc)
                time.sleep(pause)
        return method(*args, **kwargs)

    return wrapper


#: SQLSTATEs of a connection that is gone: class 08, and the server shutting the session down.
_LOST_STATES = ("57P01", "57P02", "57P03")


def connection_lost(exc: DBAPIError) -> bool:
    """True when ``exc`` means the connection died (invalidated by SQLAlchemy, or a server-side termination)."""
    state = getattr(exc.orig, "sqlstate", None) or ""
    return bool(exc.connection_invalidated) or state.startswith("08") or state in _LOST_STATES


def trashed_error(model_name: str, version: str) -> VersionNotFoundError:
    """The error for using a version that is in the trash."""
    return VersionNotFoundError(f"model '{model_name}' version '{version}' is in the trash; restore it to use it again")


def drop_blob_refs(conn: Connection, model_name: str, version: str) -> None:
    """Remove the blob references of one version."""
    conn.execute(delete(blob_refs).where(blob_refs.c.model_name == model_name, blob_refs.c.version == version))


def record_row(record: ModelMetadata) -> dict[str, Any]:
    """The ``modelkeep_versions`` column values of ``record``."""
    art = record.artifact
    if art is None:
        raise ValueError("a record needs its artifact before it is indexed")
    key = sort_key(record.version)
    return {
        "model_name": record.model_name,
        "version": record.version,
        "parsed": key is not None,
        "sort_key": key,
        "model_type": record.model_type[:256],
        "artifact_key": art.key,
        "format": art.format,
        "compression": art.compression,
        "size": art.size,
        "sha256": art.sha256,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "record": json.dumps(record.to_dict(), separators=(",", ":")),  # keeps the caller's field order
    }


# -- a save's fixed statements, sent straight to SQLite's driver ------------------------------------


class DriverResult:
    """What :func:`run` returns on SQLite: the driver's cursor, read like the part of SQLAlchemy's
    ``CursorResult`` a save uses (rows with named columns, ``rowcount``, the inserted id)."""

    def __init__(self, cursor: sqlite3.Cursor, names: Any) -> None:
        self._cursor = cursor
        self._names = names

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    @property
    def inserted_primary_key(self) -> tuple[Any, ...]:
        return (self._cursor.lastrowid,)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.all())

    def all(self) -> list[Any]:
        make = self._names._make
        return [make(row) for row in self._cursor.fetchall()]

    def first(self) -> Any:
        row = self._cursor.fetchone()
        return None if row is None else self._names._make(row)

    def scalars(self) -> Iterator[Any]:
        return (row[0] for row in self._cursor.fetchall())

    def scalar(self) -> Any:
        row = self._cursor.fetchone()
        return None if row is None else row[0]

    def scalar_one(self) -> Any:
        rows = self._cursor.fetchall()
        if len(rows) != 1:
            raise NoResultFound("no row was found") if not rows else MultipleResultsFound("more than one row")
        return rows[0][0]


class DriverStatement(NamedTuple):
    """One fixed statement as :func:`run` sends it to SQLite's driver."""

    #: The SQL SQLAlchemy compiles for the statement (named parameters).
    sql: str
    #: The values the construct holds itself (``LIMIT 1``), not the caller's parameters.
    defaults: dict[str, Any]
    #: The rows' type, made from the first result's column names (``None`` until then, or for a
    #: statement that returns no rows).
    row_type: Any = None


#: ``(statement, parameter names) -> DriverStatement``: each fixed statement compiled for SQLite
#: once, from the same SQLAlchemy construct the other databases run.
_DRIVER_SQL: dict[tuple[Any, tuple[str, ...]], DriverStatement] = {}
_SQLITE_NAMED: list[Any] = []


def _driver_sql(statement: Any, keys: tuple[str, ...]) -> DriverStatement:
    found = _DRIVER_SQL.get((statement, keys))
    if found is None:
        if not _SQLITE_NAMED:
            from sqlalchemy.dialects.sqlite import pysqlite

            _SQLITE_NAMED.append(pysqlite.dialect(paramstyle="named"))
        compiled = statement.compile(dialect=_SQLITE_NAMED[0], column_keys=list(keys))
        found = _DRIVER_SQL[(statement, keys)] = DriverStatement(str(compiled), own_values(compiled))
    return found


def own_values(compiled: Any) -> dict[str, Any]:
    """The values a compiled statement holds itself (``LIMIT 1``), not the caller's parameters."""
    return {n: b.value for n, b in compiled.binds.items() if not b.required and b.value is not None}


def run(conn: Connection, statement: Any, params: dict[str, Any] | list[dict[str, Any]]) -> Any:
    """``conn.execute(statement, params)``, but on SQLite sent straight to the driver's cursor.

    For the fixed statements of a small save: through SQLAlchemy's execution layer each cost
    several times what SQLite takes to run it. The SQL is SQLAlchemy's own for ``statement``
    (compiled once), run inside the caller's transaction (its BEGIN and COMMIT still go through
    SQLAlchemy). An error is raised as SQLAlchemy raises it (the
    :class:`~sqlalchemy.exc.DBAPIError` subclass of the driver's error, the connection
    invalidated when it is gone), so callers translate it as before. ``params``: one set, or a
    list of them (``executemany``). Statement events (``before_cursor_execute``) do not see
    these statements; the driver's own trace callback does (tests/test_save_costs.py)."""
    if conn.dialect.name != "sqlite":
        return conn.execute(statement, params)
    if isinstance(params, list):
        key = (statement, tuple(params[0]))
        entry = _driver_sql(*key)
        cursor = send(conn, entry.sql, [{**entry.defaults, **p} for p in params], many=True)
    else:
        key = (statement, tuple(params))
        entry = _driver_sql(*key)
        cursor = send(conn, entry.sql, {**entry.defaults, **params})
    if entry.row_type is None and cursor.description is not None:
        row_type = namedtuple("Row", [d[0] for d in cursor.description], rename=True)  # type: ignore[misc]
        entry = _DRIVER_SQL[key] = entry._replace(row_type=row_type)
    return DriverResult(cursor, entry.row_type)


def send(conn: Connection, sql: str, params: Any = (), *, many: bool = False) -> sqlite3.Cursor:
    """Run ``sql`` on the SQLite driver's connection under ``conn`` (see :func:`run`); a driver
    error is raised as SQLAlchemy raises it: the :class:`~sqlalchemy.exc.DBAPIError` subclass of
    the driver's error, with the connection invalidated when it is gone."""
    raw = conn.connection.dbapi_connection
    assert raw is not None
    cursor: Any = None
    try:
        cursor = raw.cursor()
        if many:
            cursor.executemany(sql, params)
        else:
            cursor.execute(sql, params)
        return cursor
    except sqlite3.Error as exc:
        raise driver_error(conn, cursor, sql, params, exc, sqlite3.Error) from exc


def driver_error(conn: Connection, cursor: Any, statement: str, params: Any, exc: Any, error: type) -> DBAPIError:
    """What SQLAlchemy raises for the driver's ``exc`` (an ``error``) from a statement sent on the
    driver's connection under ``conn``: the :class:`~sqlalchemy.exc.DBAPIError` subclass of the
    driver's error, with ``conn`` invalidated when the connection is gone."""
    lost = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, cursor)
    if lost:
        conn.invalidate(exc)
    return DBAPIError.instance(statement, params, exc, error, connection_invalidated=lost)
