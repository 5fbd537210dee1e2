"""PostgreSQL: several statements in one network round trip.

A simple Query message may carry several statements separated by semicolons; the server runs
them in order, each with a snapshot of its own (READ COMMITTED), and answers once. Without
``BEGIN`` among them they form one implicit transaction, committed when the last one succeeds
(and rolled back whole when one fails); with ``BEGIN`` first the transaction stays open for the
caller to finish. The extended protocol SQLAlchemy uses sends one statement per message, so the
parameters are merged into the text here, by psycopg's own quoting (:class:`psycopg.ClientCursor`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.util import LRUCache

from .common import driver_error, own_values

#: Compiled forms of the statements :func:`literal_sql` renders, by SQLAlchemy's cache key (the
#: row's statement is built anew at each save, with the same shape: compiling it again each time
#: would cost more than the round trip saved).
_COMPILED: Any = LRUCache(64)


def literal_sql(conn: Connection, statement: Any) -> str:
    """``statement`` (SQLAlchemy Core) as SQL text for ``conn``: compiled once per shape (as
    SQLAlchemy's own execution does), schema names translated as the connection would,
    parameters quoted by psycopg."""
    import psycopg

    schemas = conn.get_execution_options().get("schema_translate_map")
    try:
        text, params = _cached(conn, statement, schemas)
    except (AttributeError, TypeError):  # SQLAlchemy's private cache API moved: compile each time
        compiled = statement.compile(dialect=conn.dialect, schema_translate_map=schemas, render_schema_translate=True)
        text, params = compiled.string, compiled.params
    raw = conn.connection.dbapi_connection
    assert raw is not None
    return psycopg.ClientCursor(raw).mogrify(text, params)  # type: ignore[call-overload]


def _cached(conn: Connection, statement: Any, schemas: Any) -> tuple[str, Any]:
    """SQL text and parameters through SQLAlchemy's own compile cache (private API: the caller
    falls back on a public compile when it is gone)."""
    compiled, extracted, *_ = statement._compile_w_cache(
        dialect=conn.dialect, compiled_cache=_COMPILED, column_keys=[], schema_translate_map=schemas
    )
    params = compiled.construct_params(extracted_parameters=extracted)
    text = compiled.string
    if schemas:
        text = compiled.preparer._render_schema_translates(text, schemas)
    return text, params


def run_script(conn: Connection, script: str) -> list[list[tuple[Any, ...]]]:
    """Send ``script`` (statements separated by ``;``) through the driver's connection, bypassing
    SQLAlchemy's statement hooks, in one message; the rows of each statement
    (``[]`` for one that returns none). Errors are raised as SQLAlchemy raises them (a dropped
    connection invalidated), so the callers' handling of :class:`DBAPIError` applies."""
    import psycopg

    raw = conn.connection.dbapi_connection
    assert raw is not None
    cursor = raw.cursor()
    try:
        cursor.execute(script)
        results = []
        while True:
            results.append(list(cursor.fetchall()) if cursor.description is not None else [])
            if not cursor.nextset():
                return results
    except psycopg.Error as exc:
        raise driver_error(conn, cursor, script, None, exc, psycopg.Error) from exc
    finally:
        cursor.close()


#: ``(statement, schema) -> (SQL, the construct's own values)`` of :func:`pooled_rows`.
_POOLED: dict[tuple[Any, str | None], tuple[str, dict[str, Any]]] = {}


def pooled_rows(engine: Engine, schema: str | None, statement: Any, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The rows of one fixed read ``statement`` (built once, at import) with ``params``, sent to
    psycopg on a pooled connection in autocommit: one round trip, as :meth:`SqlIndex._read
    <modelkeep.index.sql.SqlIndex._read>` sends it, without SQLAlchemy's ``Connection`` around it
    (its checkout, execution options and result objects cost more CPU than the round trip itself:
    0.6 ms of 1.3 ms for the token check on a server that sat idle a few milliseconds). The SQL is
    SQLAlchemy's own for ``statement``, compiled once, ``schema`` rendered in; the pool's checkout
    (with its ping of a connection idle too long) and return work as for any other read. Errors
    are raised as SQLAlchemy raises them (a dropped connection invalidated)."""
    import psycopg

    found = _POOLED.get((statement, schema))
    if found is None:
        schemas: dict[str, Any] = {} if schema is None else {"schema_translate_map": {None: schema}}
        compiled = statement.compile(dialect=engine.dialect, render_schema_translate=bool(schemas), **schemas)
        found = _POOLED[(statement, schema)] = (compiled.string, own_values(compiled))
    sql, defaults = found
    raw = engine.raw_connection()
    cursor = None
    try:
        driver = raw.driver_connection
        assert driver is not None
        driver.autocommit = True
        try:
            cursor = driver.execute(sql, {**defaults, **params})
            return cursor.fetchall()
        finally:
            if not driver.closed:  # back as the pool lends it: SQLAlchemy sends its own BEGIN for writes
                driver.autocommit = False
    except psycopg.Error as exc:
        error: Any = exc  # the driver's error, as the dialect's checks take it
        lost = engine.dialect.is_disconnect(error, raw.dbapi_connection, cursor)
        if lost:
            raw.invalidate(exc)
        raise DBAPIError.instance(sql, params, exc, psycopg.Error, connection_invalidated=lost) from exc
    finally:
        raw.close()
