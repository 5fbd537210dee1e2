"""What one save costs in durable writes and database round trips, counted (not timed).

``count_syncs`` wraps ``os.fsync`` for one save (files and folders told apart by
``fstat``) and counts the index's commits that wait for the disk: SQLite in WAL mode
syncs the WAL at a commit only when the connection's ``synchronous`` is FULL (read
from the connection as the commit starts).

``count_round_trips`` counts what one save sends to a PostgreSQL server, from libpq's trace of
the connections: every statement, every message of several statements (the claim's lock, insert
and dedup lookup; a transaction's BEGIN with the model lock and, for the row, its statement),
COMMIT, ROLLBACK, and a liveness ping of a connection that sat idle. Each is one network round
trip; tests/test_save_costs.py pins the same number.
"""

from __future__ import annotations

import contextlib
import os
import re
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

    Read from libpq's own trace of the connections, as tests/test_save_costs.py does: every
    message the client ends with Sync, or a simple Query, waits for the server's answer, so
    nothing the driver or the pool sends on its own (BEGIN, a liveness ping) is missed. The pool
    is emptied first and two saves run untraced, so the counted save runs on connections used a
    moment ago, as in a loop of saves. psycopg prepares a statement on the server the fifth time
    one connection runs it (a Parse with a Sync of its own, once per connection and statement);
    those are counted apart, as ``prepare``, and not in the total."""
    import tempfile

    from psycopg import pq

    engine = registry.index.engine
    opened: list[Any] = []

    def on_connect(dbapi: Any, _record: Any) -> None:
        opened.append(dbapi)

    engine.dispose()
    with tempfile.TemporaryDirectory() as tmp, _listening(engine, "connect", on_connect):
        save()
        save()
        path = os.path.join(tmp, "libpq.trace")
        with open(path, "w") as sink:
            live = [dbapi for dbapi in opened if not dbapi.closed]
            for dbapi in live:
                dbapi.pgconn.trace(sink.fileno())
                dbapi.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
            try:
                save()
            finally:
                for dbapi in live:
                    if not dbapi.closed:
                        dbapi.pgconn.untrace()  # flushes
        with open(path) as f:
            counts = _round_trips(f.read())
    counts["total round trips"] = sum(n for kind, n in counts.items() if kind != "prepare")
    counts["claim protocol minimum"] = CLAIM_PROTOCOL_MIN_ROUND_TRIPS
    return dict(counts)


def _round_trips(trace: str) -> Counter[str]:
    """Client messages that wait for the server, by kind, from a libpq trace."""
    counts: Counter[str] = Counter()
    previous = ""
    for line in trace.splitlines():
        fields = line.split("\t")
        if len(fields) < 3 or fields[0] != "F":
            continue
        message, previous = previous, fields[2] if fields[2] != "Parse" else f"Parse {fields[3].split()[0]}"
        if fields[2] == "Sync":
            counts["prepare" if message.startswith('Parse "_pg3') else "statements"] += 1
        elif fields[2] == "Query":
            counts[_query_kind(fields[3].strip().strip('"'))] += 1
    return counts


_LOCK = re.compile(r"(BEGIN; )?SELECT pg_advisory_xact_lock\(hashtext\('(?:[^']|'')*'\)\)(.*)", re.DOTALL)


def _query_kind(sql: str) -> str:
    """What a simple Query message carries: the model's lock with what follows it in the message
    (the claim's one message, the row's BEGIN, lock and statement), else its first word."""
    locked = _LOCK.fullmatch(sql)
    if locked is None:
        return "pre-ping" if sql == ";" else sql.split()[0]
    rest = locked[2].strip()
    if locked[1]:
        return "BEGIN + model lock + statement" if rest else "BEGIN + model lock"
    if rest.startswith("; INSERT INTO") and "modelkeep_claims" in rest.split()[3]:
        return "claim: lock + insert + dedup lookup" if "; SELECT artifact_key" in rest else "claim: lock + insert"
    return "SELECT"


def postgres_url() -> str | None:
    """The PostgreSQL server the bench may use (MODELKEEP_BENCH_POSTGRES_URL, else the tests' one)."""
    return os.environ.get("MODELKEEP_BENCH_POSTGRES_URL") or os.environ.get("MODELKEEP_TEST_POSTGRES_URL")
