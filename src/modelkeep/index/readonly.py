"""A registry's index opened read-only, with the standard ``sqlite3`` module or with libpq.

The command line's ``list``, ``info`` and ``search`` read a registry through this class
instead of :class:`~modelkeep.index.sql.SqlIndex`, so that they import neither SQLAlchemy
nor pydantic (see :mod:`modelkeep.cli_readonly`). SQLite files are opened read-only
(``mode=ro``); PostgreSQL is reached through libpq directly (:mod:`.libpq`, not even
psycopg, whose import alone costs what the command may take), in one read-only,
repeatable-read transaction whose ``BEGIN`` and schema check go in the same round trip as
the first statements. Statements that do not depend on each other go in one pipeline
(:meth:`ReadOnlyIndex.batch`): ``list`` and ``info`` take one round trip after the
connection, ``search`` three.

It answers only what it can answer exactly as the library does; everything else (no
registry, a database it cannot reach, a schema other than
:data:`~modelkeep.index.names.SCHEMA_VERSION`, a failed statement, a value libpq's reader
does not take, a missing or trashed version, an unknown alias) is left to the library,
which reports it: :meth:`ReadOnlyIndex.open` / :meth:`~ReadOnlyIndex.open_postgres`
return ``None``, a read returns ``None`` or raises :class:`Unanswerable`.

Records come from the same row helpers as the library's (:mod:`.rows`), and search
runs the library's own query builder (:func:`modelkeep.search.api.search_versions_in`)
on this connection, so both paths give the same answers; ``tests/test_cli_readonly.py``
checks that on the same registries, SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from ..metadata import ModelMetadata, ModelSummary
from ..plain_settings import POSTGRES_SCHEMES
from .names import ALIASES, INFO, MODELS, SCHEMA_VERSION, TAGS, VERSIONS
from .rows import BOUND_COLUMNS, bound_record, fill_lifecycle, text_value

#: Version order as the library's ``ORDER_ASC`` / ``ORDER_DESC`` (index/common.py).
_ASC = "parsed ASC, sort_key ASC, id ASC"
_DESC = "parsed DESC, sort_key DESC, id DESC"
_LIVE = "deleted_at IS NULL"
#: The columns each record is checked against (see :func:`.rows.binding_error`), after ``record``.
_BOUND = ", ".join(BOUND_COLUMNS)
_N = 1 + len(BOUND_COLUMNS)
#: ``:name`` bound parameters, found as SQLAlchemy's ``text()`` finds them.
_BIND = re.compile(r"(?<![:\w\x5c]):(\w+)(?!:)")
_SCHEMA_QUERY = f"SELECT value FROM {INFO} WHERE key = 'schema_version'"
#: What psycopg sends for a read-only, repeatable-read connection's first statement.
_BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

if TYPE_CHECKING:
    from ..search.api import Database
    from .libpq import Connection

Statements = list[tuple[str, dict[str, Any]]]
#: Runs statements (``:name`` parameters) and returns the rows of each.
Batch = Callable[[Statements], list[list[Any]]]


class Unanswerable(Exception):
    """The read-only index cannot answer exactly as the library would (its database failed,
    holds another schema, or sent a value the reader does not take): ask the library."""


def numbered(sql: str, params: dict[str, Any]) -> tuple[str, list[Any]]:
    """``sql`` with ``:name`` parameters (as ``text()`` takes them) as libpq's ``$1``, and their values."""
    order: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        return "$" + str(order.setdefault(match[1], len(order) + 1))

    text = _BIND.sub(number, sql)
    return text, [params[name] for name in order]


def _current(rows: list[Any]) -> bool:
    """Whether the schema query's ``rows`` say this modelkeep's schema."""
    try:
        return bool(rows) and int(rows[0][0]) == SCHEMA_VERSION
    except (TypeError, ValueError):
        return False


class _Postgres:
    """Statements on a libpq connection, in one read-only, repeatable-read transaction whose
    ``BEGIN`` and schema check go in the pipeline of the first statements."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.checked = False

    def batch(self, statements: Statements) -> list[list[Any]]:
        from .libpq import LibpqError

        prelude: Statements = [] if self.checked else [(_BEGIN, {}), (_SCHEMA_QUERY, {})]
        try:
            results = self.conn.run([numbered(sql, params) for sql, params in [*prelude, *statements]])
        except LibpqError as exc:
            raise Unanswerable(str(exc)) from exc
        if not self.checked:
            if not _current(results[1]):
                raise Unanswerable("another schema")  # older: its upgrade; newer: "upgrade modelkeep"
            self.checked = True
        return results[len(prelude) :]


class ReadOnlyIndex:
    """Read queries on one registry index; open it with :meth:`open` (SQLite) or
    :meth:`open_postgres`."""

    def __init__(self, dialect: str, batch: Batch, close: Callable[[], None], round_trips: Callable[[], int]) -> None:
        self.dialect = dialect
        self.batch = batch
        self._close = close
        self._round_trips = round_trips

    @property
    def round_trips(self) -> int:
        """Network round trips so far, after the connection's own (none for SQLite)."""
        return self._round_trips()

    @classmethod
    def open(cls, path: Path) -> ReadOnlyIndex | None:
        """The SQLite index at ``path``, or ``None`` when the library should open it instead: no
        such file, not a registry, or a schema other than this modelkeep's (an older one needs its
        upgrade, a newer one the library's "upgrade modelkeep" error)."""
        if not path.is_file():
            return None
        import sqlite3  # here: PostgreSQL's commands need none of it (~1 ms)

        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60, isolation_level=None)
        except sqlite3.Error:
            return None
        try:
            if _current(conn.execute(_SCHEMA_QUERY).fetchall()):
                conn.execute("BEGIN")  # one snapshot for everything this command reads

                def batch(statements: Statements) -> list[list[Any]]:
                    try:
                        return [conn.execute(sql, params).fetchall() for sql, params in statements]
                    except sqlite3.Error as exc:
                        raise Unanswerable(str(exc)) from exc

                return cls("sqlite", batch, conn.close, lambda: 0)
        except sqlite3.Error:
            pass
        conn.close()
        return None

    @classmethod
    def open_postgres(cls, url: str, connect_timeout: float, read_timeout: float) -> ReadOnlyIndex | None:
        """The index in the PostgreSQL database of ``url`` (a ``registry_url``), or ``None`` when
        the library should open it instead: a URL libpq reads otherwise than SQLAlchemy might, no
        psycopg or libpq, or a failed connection. The connection gets the library's timeouts
        (:func:`modelkeep.timeouts.postgres_connect_args`); the schema is checked with the first
        statements (:class:`Unanswerable` when it is not this modelkeep's, or has no tables)."""
        scheme, _, rest = url.partition("://")
        parts = urlsplit(url)
        if scheme not in POSTGRES_SCHEMES or not rest or parts.fragment or "," in parts.netloc:
            return None
        from ..timeouts import postgres_connect_args
        from .libpq import Connection, LibpqError

        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        args = postgres_connect_args(query, connect_timeout, read_timeout)
        try:
            conn = Connection.connect("postgresql://" + rest, args)
        except LibpqError:
            return None
        return cls("postgresql", _Postgres(conn).batch, conn.close, lambda: conn.round_trips)

    def close(self) -> None:
        self._close()

    def _rows(self, sql: str, params: dict[str, Any]) -> list[Any]:
        return self.batch([(sql, params)])[0]

    def summaries(self) -> list[ModelSummary]:
        """Each model with live versions: count, latest version, last update (as ``SqlIndex.summaries``)."""
        own = f"v.model_name = m.model_name AND v.{_LIVE}"
        sql = (
            f"SELECT m.model_name, (SELECT count(*) FROM {VERSIONS} AS v WHERE {own}),"
            f" (SELECT v.version FROM {VERSIONS} AS v WHERE {own} ORDER BY v.{_DESC.replace(', ', ', v.')} LIMIT 1),"
            f" (SELECT max(v.updated_at) FROM {VERSIONS} AS v WHERE {own})"
            f" FROM {MODELS} AS m WHERE EXISTS (SELECT 1 FROM {VERSIONS} AS v WHERE {own}) ORDER BY m.model_name"
        )
        return [ModelSummary(r[0], int(r[1]), r[2], r[3]) for r in self._rows(sql, {})]

    def list_records(self, model_name: str) -> list[ModelMetadata]:
        """Live records of a model, ascending, with aliases, tags and descriptions (as
        ``SqlIndex.list_records``): one batch."""
        params = {"m": model_name}
        rows, aliases, tags = self.batch(
            [
                (
                    f"SELECT record, {_BOUND}, description FROM {VERSIONS}"
                    f" WHERE model_name = :m AND {_LIVE} ORDER BY {_ASC}",
                    params,
                ),
                *_lifecycle(None, params),
            ]
        )
        pairs = [(bound_record(*r[:_N], strict=False), r[_N]) for r in rows]
        return fill_lifecycle(pairs, aliases, tags) if pairs else []

    def resolve(self, model_name: str, version: str | None, alias: str | None = None) -> ModelMetadata | None:
        """The live record of ``version`` (latest when ``None``), or of the version ``alias``
        points at (which must then be ``version`` if that is given too), with its lifecycle
        fields; ``None`` when there is none (the library then says why).

        On PostgreSQL one batch: the lifecycle queries name the version by the same subquery
        as the record's (one snapshot, so the same version). SQLite, whose cells may hold any
        type, binds the record's version as text, as the library does."""
        params: dict[str, Any] = {"m": model_name}
        base = f"SELECT record, {_BOUND}, description FROM {VERSIONS} WHERE model_name = :m AND {_LIVE}"
        if alias is not None:
            params["a"] = alias
            selector = f"(SELECT version FROM {ALIASES} WHERE model_name = :m AND alias = :a)"
            record = f"{base} AND version = {selector}"
        elif version is not None:
            params["v"] = version
            selector = ":v"
            record = f"{base} AND version = :v"
        else:
            selector = f"(SELECT version FROM {VERSIONS} WHERE model_name = :m AND {_LIVE} ORDER BY {_DESC} LIMIT 1)"
            record = f"{base} ORDER BY {_DESC} LIMIT 1"
        statements = [(record, params)]
        if alias is not None:
            statements.append((f"SELECT version FROM {ALIASES} WHERE model_name = :m AND alias = :a", params))
        piped = self.dialect == "postgresql"
        if piped:
            statements += _lifecycle(selector, params)
        rows, *more = self.batch(statements)
        if alias is not None:
            target = more.pop(0)
            pointed = text_value(target[0][0]) if target else None
            if pointed is None or (version is not None and version != pointed):
                return None
        if not rows:
            return None
        found = bound_record(*rows[0][:_N])
        aliases, tags = more if piped else self.batch(_lifecycle(":v", {"m": model_name, "v": found.version}))
        return fill_lifecycle([(found, rows[0][_N])], aliases, tags)[0]

    def database(self) -> Database:
        """This connection for the library's search (:func:`~modelkeep.search.api.search_versions_in`)."""
        from ..search.api import Database

        return Database(self.dialect, None, self._rows, self.batch)


def _lifecycle(selector: str | None, params: dict[str, Any]) -> Statements:
    """The alias and tag queries of ``index.audit.attach_lifecycle`` for one model's versions
    (``selector``: SQL for the one version, ``None``: all), for :func:`.rows.fill_lifecycle`."""
    if selector is None:
        alias_where, tag_where = "", " AND version != ''"
    else:
        alias_where = tag_where = f" AND version = {selector}"
    return [
        (f"SELECT version, alias FROM {ALIASES} WHERE model_name = :m{alias_where} ORDER BY alias", params),
        (f"SELECT version, key, value FROM {TAGS} WHERE model_name = :m{tag_where} ORDER BY version, key", params),
    ]
