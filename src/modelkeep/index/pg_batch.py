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

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError


def literal_sql(conn: Connection, statement: Any) -> str:
    """``statement`` (SQLAlchemy Core) as SQL text for ``conn``: schema names translated as the
    connection would, parameters quoted by psycopg."""
    import psycopg

    options = conn.get_execution_options()
    compiled = statement.compile(
        dialect=conn.dialect,
        schema_translate_map=options.get("schema_translate_map"),
        render_schema_translate=True,
    )
    raw = conn.connection.dbapi_connection
    assert raw is not None
    return psycopg.ClientCursor(raw).mogrify(compiled.string, compiled.params)  # type: ignore[call-overload]


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
        lost = conn.dialect.is_disconnect(exc, raw, cursor)  # type: ignore[arg-type]
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(script, None, exc, psycopg.Error, connection_invalidated=lost) from exc
    finally:
        cursor.close()
