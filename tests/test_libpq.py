"""The command line's libpq client (modelkeep/index/libpq.py) reads and sends what psycopg does.

The read path on PostgreSQL goes through libpq directly instead of psycopg; its answers must be
psycopg's. Every value type it reads is read here by both, from the same statements; every
parameter type it sends goes with the type psycopg gives it (``pg_typeof`` on the server says
so); and whatever it does not handle exactly (another column type, a value psycopg refuses, a
parameter type it does not send, a failed statement, bytea in the old escape format) raises
``LibpqError``, for the caller to ask the library, instead of a different answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from modelkeep.index.libpq import Connection, LibpqError, dump
from tests.conftest import PG_URL

pytestmark = pytest.mark.postgres

#: One expression per type the client reads, with edge values: NULL, empty, non-ASCII, extremes.
VALUES = [
    "'plain'::text",
    "'é ✓ \U0001f600'::varchar",
    "''::text",
    "NULL::text",
    "'lit'",
    "current_user",
    "'ab'::char(4)",
    "true",
    "false",
    "NULL::boolean",
    "(-32768)::int2",
    "2147483647::int4",
    "(-9223372036854775808)::int8",
    "1.5::float4",
    "0.1::float8",
    "'NaN'::float8",
    "'-Infinity'::float8",
    "1e308::float8",
    "'\\x'::bytea",
    "'\\x00ff10'::bytea",
    "NULL::bytea",
]
#: Parameters of each type the client sends, at the edges of psycopg's choice of type.
PARAMS: list[Any] = [
    "text",
    "",
    "é ✓",
    0,
    -(2**15),
    2**15,
    2**31 - 1,
    2**31,
    -(2**63),
    2**63 - 1,
    0.5,
    -0.0,
    1e-300,
    float("nan"),
    float("inf"),
    b"",
    b"\x00\xff",
]


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Connection, Any]]:
    """This client's connection and psycopg's, to the same database."""
    import psycopg

    assert PG_URL is not None
    ours = Connection.connect(PG_URL, {"connect_timeout": 10})
    theirs = psycopg.connect(PG_URL, autocommit=True)
    yield ours, theirs
    ours.close()
    theirs.close()


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same type (NaN equal to NaN)."""
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return type(a) is type(b) and a == b


def test_every_type_it_reads_reads_as_psycopg_reads_it(pair: tuple[Connection, Any]) -> None:
    ours, theirs = pair
    sql = "SELECT " + ", ".join(VALUES)
    [[mine]] = ours.run([(sql, [])])
    [expected] = theirs.execute(sql).fetchall()
    assert len(mine) == len(VALUES)
    assert [(v, a) for v, a, b in zip(VALUES, mine, expected, strict=True) if not _same(a, b)] == []


def _run_once(sql: str, params: list[Any]) -> list[list[Any]]:
    """``sql`` on a connection of its own (a failed pipeline leaves a connection unusable)."""
    assert PG_URL is not None
    conn = Connection.connect(PG_URL, {})
    try:
        return conn.run([(sql, params)])
    finally:
        conn.close()


def test_every_parameter_goes_with_psycopg_s_type_and_value(pair: tuple[Connection, Any]) -> None:
    import psycopg

    ours, theirs = pair
    for value in PARAMS:
        [[(mine,)]] = ours.run([("SELECT $1", [value])])
        assert _same(mine, theirs.execute("SELECT %s", [value]).fetchone()[0]), value
        try:
            typed = theirs.execute("SELECT pg_typeof(%s)::text", [value]).fetchone()
        except psycopg.errors.IndeterminateDatatype:  # a str goes untyped: the server cannot say
            with pytest.raises(LibpqError, match="could not determine"):
                _run_once("SELECT pg_typeof($1)::text", [value])
            continue
        assert ours.run([("SELECT pg_typeof($1)::text", [value])]) == [[typed]], value
    assert [dump(v)[0] for v in ("a", 1, 2**40, 2**70, 1.5, b"x")] == [0, 21, 20, 1700, 701, 17]


def test_statements_of_a_pipeline_answer_in_order_in_one_round_trip(pair: tuple[Connection, Any]) -> None:
    ours, _ = pair
    before = ours.round_trips
    results = ours.run(
        [("SELECT 1 WHERE false", []), ("SELECT $1::int + 1", [1]), ("SELECT 'x' UNION ALL SELECT 'y'", [])]
    )
    assert results == [[], [(2,)], [("x",), ("y",)]]
    assert ours.round_trips == before + 1


@pytest.mark.parametrize(
    "sql, params",
    [
        ("SELECT 1.5::numeric", []),  # psycopg reads a Decimal: not read here
        ("SELECT $1", [2**63]),  # sent as numeric (as psycopg does), so read back as one
        ("SELECT '{}'::json", []),
        ("SELECT now()", []),
        ("SELECT $1", ["nul\x00byte"]),  # psycopg refuses it too; never cut short
        ("SELECT $1", ["\ud800"]),  # not UTF-8
        ("SELECT $1", [True]),
        ("SELECT $1", [None]),
        ("SELECT $1", [[1, 2]]),
        ("SELECT nosuchcolumn", []),
    ],
    ids=["numeric", "numeric parameter", "json", "timestamp", "NUL", "surrogate", "bool", "None", "list", "error"],
)
def test_what_it_does_not_handle_exactly_is_refused(sql: str, params: list[Any]) -> None:
    with pytest.raises(LibpqError):
        _run_once(sql, params)


def test_after_a_failure_the_connection_is_not_used_again() -> None:
    assert PG_URL is not None
    conn = Connection.connect(PG_URL, {})
    with pytest.raises(LibpqError, match="nosuch"):
        conn.run([("SELECT 1", []), ("SELECT nosuch", []), ("SELECT 2", [])])
    with pytest.raises(LibpqError, match="unusable"):
        conn.run([("SELECT 1", [])])
    conn.close()
    conn.close()


def test_bytea_in_the_escape_format_is_refused_not_misread() -> None:
    assert PG_URL is not None
    conn = Connection.connect(PG_URL, {"options": "-c bytea_output=escape"})
    try:
        with pytest.raises(LibpqError, match="hex"):
            conn.run([("SELECT '\\x41'::bytea", [])])
    finally:
        conn.close()


def test_a_failed_connection_or_another_client_encoding_is_refused() -> None:
    assert PG_URL is not None
    with pytest.raises(LibpqError):
        Connection.connect("postgresql://nobody@127.0.0.1:9/none", {"connect_timeout": 2})
    with pytest.raises(LibpqError, match="UTF-8"):
        Connection.connect(PG_URL, {"client_encoding": "LATIN1"})
