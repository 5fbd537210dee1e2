"""What one small save sends to the index, pinned so that it cannot grow silently.

SQLite (the embedded default): the statements and transactions of a save, counted with
SQLAlchemy's cursor and transaction events. PostgreSQL: the network round trips, read from
libpq's own trace of the connections (every message the client ends with Sync, or a simple
Query, waits for the server's answer), so nothing the driver sends on its own is missed.

The minimum the claim protocol allows is two round trips: the claim is committed before any
file is written and the row after the files are durable, two transactions of one batch each.
A save makes 3 (9 before issue 29; see bench/README.md, "What each round trip is for").
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from modelkeep import ModelPersistence

from ._workers import payload
from .conftest import PG_URL

#: What a small save sends to SQLite, in order, as the driver's trace callback sees it (the
#: statements go straight to the driver's cursor, not through SQLAlchemy: index/common.py's run).
SQLITE_STATEMENTS = [
    # the claim: one transaction, committed without waiting for the disk
    "PRAGMA synchronous = NORMAL",
    "BEGIN IMMEDIATE",
    "SELECT highest",  # the highest version and the model's claims (a dead writer's are released)
    "INSERT INTO modelkeep_claims",  # ... SELECT ... WHERE NOT EXISTS: only if the next one is free
    "SELECT modelkeep_versions",  # stored identical bytes (dedup), looked up with the claim
    "COMMIT",
    "PRAGMA synchronous = FULL",
    # no check reads the claim before the sidecar or the artifact: the lease is young
    # (VersionClaim.check, claims.py's "Checks without a read")
    # the row: one transaction, the only commit that syncs the WAL
    "BEGIN IMMEDIATE",
    "DELETE FROM modelkeep_claims",  # the fence: the claim is still this save's
    "INSERT INTO modelkeep_versions",
    "DELETE FROM modelkeep_fields",  # SQLite may reuse the id of a row removed by hand
    "INSERT INTO modelkeep_fields",
    "INSERT INTO modelkeep_models",  # ON CONFLICT DO NOTHING
    "INSERT INTO modelkeep_history",
    "COMMIT",
]

#: PostgreSQL round trips of a small save, by kind: the claim is one message and one implicit
#: transaction (the model's lock, the claim's insert of the next patch, the lookup of stored
#: identical bytes: modelkeep.index.pg_claim); no check reads the claim before a file (the lease
#: is young: VersionClaim.check); the row's transaction opens with BEGIN, the model's lock and the
#: row's one statement (fence, version, fields, model row and history row) in one message, and
#: ends with COMMIT once the history row's event file is written. No pool ping: the connections
#: were used less than a second ago.
POSTGRES_ROUND_TRIPS = {"claim: lock + insert + dedup lookup": 1, "BEGIN + model lock + statement": 1, "COMMIT": 1}
CLAIM_PROTOCOL_MINIMUM = 2


def _model(seq: int) -> dict[str, Any]:
    return payload(0, seq, 4 << 10)


def _first_words(statement: str) -> str:
    """``SELECT modelkeep_claims`` for ``SELECT modelkeep_claims.model_name, ...``."""
    text = " ".join(statement.split())
    text = re.sub(r"\bmk_test_\w+\.", "", text)
    if text.startswith("SELECT (SELECT"):
        return "SELECT (SELECT " + text.split()[2].split(".")[0]
    words = text.split()
    if words[0] == "SELECT":  # the table (or subquery) of the first column
        return f"SELECT {words[1].split('.')[0]}"
    if words[0] in ("INSERT", "DELETE"):
        return " ".join(words[:3])
    return text


@contextlib.contextmanager
def _sqlite_statements(p: ModelPersistence) -> Iterator[list[str]]:
    """The first words of each statement ``p``'s SQLite index runs in the block, in order: its
    connections are opened anew, each traced from just after the engine's own setup statements."""
    sent: list[str] = []

    def on_connect(dbapi: Any, _record: Any) -> None:
        dbapi.set_trace_callback(lambda statement: sent.append(_first_words(statement)))

    p.index.engine.pool.dispose()
    event.listen(p.index.engine, "connect", on_connect)
    try:
        yield sent
    finally:
        event.remove(p.index.engine, "connect", on_connect)
        p.index.engine.pool.dispose()


def test_a_small_save_on_sqlite_sends_its_pinned_statements(tmp_path: Path) -> None:
    with ModelPersistence(models_dir=tmp_path / "models") as p:
        p.save(_model(0), "counted")  # the model's row and the schema check are behind us
        transactions: Counter[str] = Counter()

        def on(kind: str) -> Any:
            return lambda _conn: transactions.update([kind])

        hooks = [("begin", on("begin")), ("commit", on("commit"))]
        with _sqlite_statements(p) as sent:  # the save's connection is a new one, traced
            for name, fn in hooks:
                event.listen(p.index.engine, name, fn)
            try:
                p.save(_model(1), "counted", accuracy=0.9)  # a field row for search
            finally:
                for name, fn in hooks:
                    event.remove(p.index.engine, name, fn)
        assert sent == SQLITE_STATEMENTS
        # Two write transactions (claim, row) and no read; both commit.
        assert transactions == {"begin": 2, "commit": 2}
        assert p.load("counted", "1.0.1")["seq"] == 1


@contextlib.contextmanager
def _libpq_trace(engine: Any, path: Path) -> Iterator[Any]:
    """Trace every connection of ``engine`` opened from here on; ``start()`` in the block begins
    writing what they send to ``path`` (flushed when the block ends)."""
    from psycopg import pq

    opened: list[Any] = []
    state = {"on": False}
    with path.open("w") as sink:

        def trace(dbapi: Any) -> None:
            dbapi.pgconn.trace(sink.fileno())
            dbapi.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)

        def on_connect(dbapi: Any, _record: Any) -> None:
            opened.append(dbapi)
            if state["on"]:
                trace(dbapi)

        def start() -> None:
            state["on"] = True
            for dbapi in opened:
                if not dbapi.closed:
                    trace(dbapi)

        event.listen(engine, "connect", on_connect)
        try:
            yield start
        finally:
            event.remove(engine, "connect", on_connect)
            for dbapi in opened:
                if not dbapi.closed:
                    dbapi.pgconn.untrace()  # flushes


def _round_trips(trace: str) -> Counter[str]:
    """Client messages that wait for the server, by kind, from a libpq trace: bench/save_costs.py's
    own count, so that the test and the bench count alike (``prepare``: psycopg preparing a
    statement on the server the fifth time one connection runs it, once per connection and
    statement; counted apart)."""
    path = Path(__file__).resolve().parent.parent / "bench" / "save_costs.py"
    spec = importlib.util.spec_from_file_location("_bench_save_costs", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    counts: Counter[str] = module._round_trips(trace)
    return counts


@pytest.mark.postgres
def test_a_small_save_on_postgresql_makes_its_pinned_round_trips(pg_schema: str, tmp_path: Path) -> None:
    assert PG_URL is not None
    p = ModelPersistence(models_dir=tmp_path / "models", registry_url=PG_URL, index_schema=pg_schema)
    try:
        p.ensure_registry()
        p.index.engine.dispose()  # every connection from here on is seen by the tracer
        with _libpq_trace(p.index.engine, tmp_path / "libpq.trace") as start:
            for seq in range(2):  # the pool holds its connections, the model its row
                p.save(_model(seq), "counted", accuracy=0.9)
            start()
            p.save(_model(2), "counted", accuracy=0.9)
        counts = _round_trips((tmp_path / "libpq.trace").read_text())
    finally:
        p.close()
    counts.pop("prepare", None)
    assert counts == POSTGRES_ROUND_TRIPS, counts
    # One over the protocol's minimum: the row's COMMIT waits for the event file, which is named
    # by the history row's id that the row's statement returns.
    assert sum(counts.values()) == 3 == CLAIM_PROTOCOL_MINIMUM + 1


#: What moving an alias sends to SQLite, in order (after the model's lock): the target's state and
#: SHA-256 in one read, the alias's row in one read, the policies, then the move and its history row.
ALIAS_MOVE_STATEMENTS = [
    "BEGIN IMMEDIATE",
    "SELECT modelkeep_versions",  # live? and the SHA-256 the move's signature names
    "SELECT modelkeep_aliases",  # where it points, its move number, signature, from-version and time
    "SELECT modelkeep_policies",
    "UPDATE modelkeep_aliases",
    "INSERT INTO modelkeep_history",
    "COMMIT",
]


def test_an_alias_move_reads_each_row_once(tmp_path: Path) -> None:
    """A move read its target's row twice (live?, then its SHA-256) and the alias's row twice
    (where, then its move number): on PostgreSQL each read is a round trip."""
    with ModelPersistence(models_dir=tmp_path / "models", signing_key="k" * 32) as p:
        p.save(_model(0), "counted", "1")
        p.save(_model(1), "counted", "2")
        p.set_alias("counted", "production", "1")
        with _sqlite_statements(p) as sent:
            p.set_alias("counted", "production", "2")
        assert [" ".join(s.split()[:2]) if s.startswith("UPDATE") else s for s in sent] == ALIAS_MOVE_STATEMENTS
        assert p.verify_alias("counted", "production").trusted


def test_a_move_plan_reads_the_record_and_the_alias_in_one_statement(tmp_path: Path) -> None:
    """A server's signed move plans first: the plan read the record, then its aliases and tags,
    then the alias's row, each a round trip on PostgreSQL (four; the token check is a fifth)."""
    with ModelPersistence(models_dir=tmp_path / "models", signing_key="k" * 32) as p:
        p.save(_model(0), "counted", "1")
        p.save(_model(1), "counted", "2")
        p.set_alias("counted", "production", "1")
        with _sqlite_statements(p) as sent:
            event_, record = p.index.lifecycle.plan_move_with_record("counted", "production", "2", expected="1")
        # SQLite wraps the read in BEGIN and ROLLBACK (PostgreSQL reads in autocommit).
        assert [s for s in sent if s not in ("BEGIN", "ROLLBACK")] == ["SELECT modelkeep_versions"]
        assert (record.model_name, record.version) == ("counted", "2")
        assert record.artifact is not None and event_["sha256"] == record.artifact.sha256
        assert (event_["from"], event_["version"]) == ("1", "2")
