"""What one save costs in durable writes and database round trips, counted (not timed).

``count_syncs`` wraps ``os.fsync`` for one save (files and folders told apart by
``fstat``) and counts the index's commits that wait for the disk: SQLite in WAL mode
syncs the WAL at a commit only when the connection's ``synchronous`` is FULL (read
from the connection as the commit starts).

``count_round_trips`` counts, with SQLAlchemy's event hooks and psycopg's connection state,
what one save sends to a PostgreSQL server: every statement, every BEGIN (the driver sends it
on its own before a transaction's first statement, never in autocommit), COMMIT and ROLLBACK
(only inside a transaction), and the liveness ping the pool sends at each checkout
(``pool_pre_ping``). Each is one network round trip; tests/test_save_costs.py reads the same
number from libpq's trace.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import event

#: The fewest round trips the write-claim protocol allows: the claim is committed before any
#: file is written and the row after the files are durable, so two transactions, each at
#: best one round trip (every statement of a transaction sent in one batch).
CLAIM_PROTOCOL_MIN_ROUND_TRIPS = 2


@contextlib.contextmanager
def _counting_fsync(counts: Counter[str]) -> Iterator[None]:
    original = os.fsync

    def fsync(fd: Any) -> None:
        try:
            kind = "folder fsync" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file fsync"
        except OSError:
            kind = "file fsync"
        counts[kind] += 1
        original(fd)

    os.fsync = fsync  # type: ignore[assignment]
    try:
        yield
    finally:
        os.fsync = original


@contextlib.contextmanager
def _listening(target: Any, name: str, fn: Callable[..., None]) -> Iterator[None]:
    event.listen(target, name, fn)
    try:
        yield
    finally:
        event.remove(target, name, fn)


def count_syncs(registry: Any, save: Callable[[], object]) -> dict[str, int]:
    """Durable writes of one ``save()`` on a local store and SQLite index, by kind."""
    counts: Counter[str] = Counter()
    engine = registry.index.engine

    def on_commit(conn: Any) -> None:
        raw = conn.connection.dbapi_connection
        level = raw.execute("PRAGMA synchronous").fetchone()[0] if engine.dialect.name == "sqlite" else 2
        counts["index commit with WAL sync" if level >= 2 else "index commit without sync"] += 1

    with _counting_fsync(counts), _listening(engine, "commit", on_commit):
        save()
    counts["total syncs"] = counts["file fsync"] + counts["folder fsync"] + counts["index commit with WAL sync"]
    return dict(counts)


def count_round_trips(registry: Any, save: Callable[[], object]) -> dict[str, int]:
    """Network round trips of one ``save()`` against a PostgreSQL index, by kind.

    What goes on the wire is told from the driver's state, not from SQLAlchemy's events alone:
    psycopg sends BEGIN before a statement only on a connection outside autocommit and outside
    a transaction, and a COMMIT or ROLLBACK only inside one (a one-statement read in
    autocommit sends neither). Checked against libpq's own trace of a save."""
    counts: Counter[str] = Counter()
    engine = registry.index.engine

    def raw(conn: Any) -> Any:
        return conn.connection.dbapi_connection

    def in_transaction(dbapi: Any) -> bool:
        return int(dbapi.info.transaction_status) != 0  # psycopg.pq.TransactionStatus.IDLE

    def on_statement(conn: Any, *_args: Any) -> None:
        dbapi = raw(conn)
        if not dbapi.autocommit and not in_transaction(dbapi):
            counts["BEGIN"] += 1
        counts["statements"] += 1

    def on_end(kind: str) -> Callable[..., None]:
        def count(conn: Any) -> None:
            if in_transaction(raw(conn)):
                counts[kind] += 1

        return count

    def on_ping(*_args: Any) -> None:
        counts["pre-ping"] += 1

    hooks = [
        (engine, "before_cursor_execute", on_statement),
        (engine, "commit", on_end("COMMIT")),
        (engine, "rollback", on_end("ROLLBACK")),
    ]
    if getattr(engine.pool, "_pre_ping", False):
        hooks.append((engine.pool, "checkout", on_ping))
    with contextlib.ExitStack() as stack:
        for target, name, fn in hooks:
            stack.enter_context(_listening(target, name, fn))
        save()
    counts["total round trips"] = counts["pre-ping"] + counts["BEGIN"] + counts["statements"]
    counts["total round trips"] += counts["COMMIT"] + counts["ROLLBACK"]
    counts["claim protocol minimum"] = CLAIM_PROTOCOL_MIN_ROUND_TRIPS
    return dict(counts)


def postgres_url() -> str | None:
    """The PostgreSQL server the bench may use (MODELKEEP_BENCH_POSTGRES_URL, else the tests' one)."""
    return os.environ.get("MODELKEEP_BENCH_POSTGRES_URL") or os.environ.get("MODELKEEP_TEST_POSTGRES_URL")
