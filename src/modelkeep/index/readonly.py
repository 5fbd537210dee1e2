"""A registry's index opened read-only, with the standard ``sqlite3`` module or with psycopg.

The command line's ``list``, ``info`` and ``search`` read a registry through this class
instead of :class:`~modelkeep.index.sql.SqlIndex`, so that they import neither SQLAlchemy
nor pydantic (see :mod:`modelkeep.cli_readonly`). SQLite files are opened read-only
(``mode=ro``); PostgreSQL is reached with psycopg directly, in one read-only transaction.
It answers only what it can answer exactly as the library does; everything else (no
registry, a database it cannot reach, a schema other than
:data:`~modelkeep.index.names.SCHEMA_VERSION`, a missing or trashed version, an unknown
alias) is left to the library, which reports it.

Records come from the same row helpers as the library's (:mod:`.rows`), and search
runs the library's own query builder (:func:`modelkeep.search.api.search_versions_in`)
on this connection, so both paths give the same answers; ``tests/test_cli_readonly.py``
checks that on the same registries, SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
import sqlite3
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

if TYPE_CHECKING:
    from ..search.api import Database

Rows = Callable[[str, dict[str, Any]], list[Any]]


def pyformat(sql: str) -> str:
    """``sql`` with ``:name`` parameters (as ``text()`` takes them) in psycopg's ``%(name)s`` style."""
    return _BIND.sub(r"%(\1)s", sql.replace("%", "%%"))


class ReadOnlyIndex:
    """Read queries on one registry index; open it with :meth:`open` (SQLite) or
    :meth:`open_postgres`."""

    def __init__(self, dialect: str, rows: Rows, close: Callable[[], None]) -> None:
        self.dialect = dialect
        self._rows = rows
        self._close = close

    @classmethod
    def open(cls, path: Path) -> ReadOnlyIndex | None:
        """The SQLite index at ``path``, or ``None`` when the library should open it instead: no
        such file, not a registry, or a schema other than this modelkeep's (an older one needs its
        upgrade, a newer one the library's "upgrade modelkeep" error)."""
        if not path.is_file():
            return None
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60, isolation_level=None)
        except sqlite3.Error:
            return None
        try:
            found = conn.execute(_SCHEMA_QUERY).fetchone()
            if found is not None and int(found[0]) == SCHEMA_VERSION:
                conn.execute("BEGIN")  # one snapshot for everything this command reads
                return cls("sqlite", lambda sql, params: conn.execute(sql, params).fetchall(), conn.close)
        except (sqlite3.Error, ValueError):
            pass
        conn.close()
        return None

    @classmethod
    def open_postgres(cls, url: str, connect_timeout: float, read_timeout: float) -> ReadOnlyIndex | None:
        """The index in the PostgreSQL database of ``url`` (a ``registry_url``), read in one
        read-only, repeatable-read transaction; ``None`` when the library should open it instead:
        no psycopg, a URL libpq reads otherwise than SQLAlchemy might, a failed connection, no
        tables, or another schema. The connection gets the library's timeouts
        (:func:`modelkeep.timeouts.postgres_connect_args`)."""
        scheme, _, rest = url.partition("://")
        parts = urlsplit(url)
        if scheme not in POSTGRES_SCHEMES or not rest or parts.fragment or "," in parts.netloc:
            return None
        try:
            import psycopg
        except ImportError:
            return None
        from ..timeouts import postgres_connect_args

        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        args = postgres_connect_args(query, connect_timeout, read_timeout)
        try:
            conn = psycopg.connect("postgresql://" + rest, **args)
        except (psycopg.Error, ValueError):
            return None
        try:
            conn.read_only = True
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            found = conn.execute(_SCHEMA_QUERY).fetchone()
            if found is not None and int(found[0]) == SCHEMA_VERSION:
                return cls("postgresql", lambda sql, params: conn.execute(pyformat(sql), params).fetchall(), conn.close)
        except (psycopg.Error, ValueError):
            pass
        conn.close()
        return None

    def close(self) -> None:
        self._close()

    def _one(self, sql: str, params: dict[str, Any]) -> Any:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

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
        """Live records of a model, ascending, with aliases, tags and descriptions (as ``SqlIndex.list_records``)."""
        rows = self._rows(
            f"SELECT record, {_BOUND}, description FROM {VERSIONS} WHERE model_name = :m AND {_LIVE} ORDER BY {_ASC}",
            {"m": model_name},
        )
        return self._with_lifecycle(model_name, [(bound_record(*r[:_N], strict=False), r[_N]) for r in rows])

    def resolve(self, model_name: str, version: str | None) -> ModelMetadata | None:
        """The live record of ``version`` (latest when ``None``) with its lifecycle fields, or
        ``None`` when there is none (the library then says why)."""
        base = f"SELECT record, {_BOUND}, description FROM {VERSIONS} WHERE model_name = :m AND {_LIVE}"
        if version is None:
            row = self._one(f"{base} ORDER BY {_DESC} LIMIT 1", {"m": model_name})
        else:
            row = self._one(f"{base} AND version = :v", {"m": model_name, "v": version})
        if row is None:
            return None
        record = bound_record(*row[:_N])
        return self._with_lifecycle(model_name, [(record, row[_N])], version=record.version)[0]

    def alias_target(self, model_name: str, alias: str) -> str | None:
        """The version ``alias`` points at, or ``None``."""
        row = self._one(
            f"SELECT version FROM {ALIASES} WHERE model_name = :m AND alias = :a", {"m": model_name, "a": alias}
        )
        return None if row is None else text_value(row[0])

    def database(self) -> Database:
        """This connection for the library's search (:func:`~modelkeep.search.api.search_versions_in`)."""
        from ..search.api import Database

        return Database(self.dialect, None, self._rows)

    def _with_lifecycle(
        self, model_name: str, pairs: list[tuple[ModelMetadata, str | None]], *, version: str | None = None
    ) -> list[ModelMetadata]:
        """As ``index.audit.attach_lifecycle``: two queries, then :func:`.rows.fill_lifecycle`."""
        if not pairs:
            return []
        params: dict[str, Any] = {"m": model_name}
        if version is None:
            alias_where, tag_where = "", " AND version != ''"
        else:
            alias_where, tag_where, params = " AND version = :v", " AND version = :v", {"m": model_name, "v": version}
        aliases = self._rows(
            f"SELECT version, alias FROM {ALIASES} WHERE model_name = :m{alias_where} ORDER BY alias", params
        )
        tags = self._rows(
            f"SELECT version, key, value FROM {TAGS} WHERE model_name = :m{tag_where} ORDER BY version, key", params
        )
        return fill_lifecycle(pairs, aliases, tags)
