"""A registry's SQLite index opened read-only with the standard ``sqlite3`` module.

The command line's ``list``, ``info`` and ``search`` read a local registry through
this class instead of :class:`~modelkeep.index.sql.SqlIndex`, so that they do not
import SQLAlchemy (see :mod:`modelkeep.cli_readonly`). It answers only what it can
answer exactly as the library does; everything else (no registry, a schema other
than :data:`~modelkeep.index.names.SCHEMA_VERSION`, a missing or trashed version,
an unknown alias) is left to the library, which reports it.

Records come from the same row helpers as the library's (:mod:`.rows`), and search
runs the library's own query builder (:func:`modelkeep.search.api.search_versions_in`)
on this connection, so both paths give the same answers; ``tests/test_cli_readonly.py``
checks that on the same registries.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from ..metadata import ModelMetadata, ModelSummary
from ..search.api import Database
from .names import ALIASES, INFO, MODELS, SCHEMA_VERSION, TAGS, VERSIONS
from .rows import BOUND_COLUMNS, bound_record, fill_lifecycle, text_value

#: Version order as the library's ``ORDER_ASC`` / ``ORDER_DESC`` (index/common.py).
_ASC = "parsed ASC, sort_key ASC, id ASC"
_DESC = "parsed DESC, sort_key DESC, id DESC"
_LIVE = "deleted_at IS NULL"
#: The columns each record is checked against (see :func:`.rows.binding_error`), after ``record``.
_BOUND = ", ".join(BOUND_COLUMNS)
_N = 1 + len(BOUND_COLUMNS)


class ReadOnlyIndex:
    """Read queries on one ``registry.db``; open it with :meth:`open`."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @classmethod
    def open(cls, path: Path) -> ReadOnlyIndex | None:
        """The index at ``path``, or ``None`` when the library should open it instead: no such
        file, not a registry, or a schema other than this modelkeep's (an older one needs its
        upgrade, a newer one the library's "upgrade modelkeep" error)."""
        if not path.is_file():
            return None
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60, isolation_level=None)
        except sqlite3.Error:
            return None
        try:
            found = conn.execute(f"SELECT value FROM {INFO} WHERE key = 'schema_version'").fetchone()
            if found is not None and int(found[0]) == SCHEMA_VERSION:
                conn.execute("BEGIN")  # one snapshot for everything this command reads
                return cls(conn)
        except (sqlite3.Error, ValueError):
            pass
        conn.close()
        return None

    def close(self) -> None:
        self._conn.close()

    def _rows(self, sql: str, params: Any = ()) -> list[Any]:
        return self._conn.execute(sql, params).fetchall()

    def summaries(self) -> list[ModelSummary]:
        """Each model with live versions: count, latest version, last update (as ``SqlIndex.summaries``)."""
        own = f"v.model_name = m.model_name AND v.{_LIVE}"
        sql = (
            f"SELECT m.model_name, (SELECT count(*) FROM {VERSIONS} AS v WHERE {own}),"
            f" (SELECT v.version FROM {VERSIONS} AS v WHERE {own} ORDER BY v.{_DESC.replace(', ', ', v.')} LIMIT 1),"
            f" (SELECT max(v.updated_at) FROM {VERSIONS} AS v WHERE {own})"
            f" FROM {MODELS} AS m WHERE EXISTS (SELECT 1 FROM {VERSIONS} AS v WHERE {own}) ORDER BY m.model_name"
        )
        return [ModelSummary(r[0], int(r[1]), r[2], r[3]) for r in self._rows(sql)]

    def list_records(self, model_name: str) -> list[ModelMetadata]:
        """Live records of a model, ascending, with aliases, tags and descriptions (as ``SqlIndex.list_records``)."""
        rows = self._rows(
            f"SELECT record, {_BOUND}, description FROM {VERSIONS} WHERE model_name = ? AND {_LIVE} ORDER BY {_ASC}",
            (model_name,),
        )
        return self._with_lifecycle(model_name, [(bound_record(*r[:_N], strict=False), r[_N]) for r in rows])

    def resolve(self, model_name: str, version: str | None) -> ModelMetadata | None:
        """The live record of ``version`` (latest when ``None``) with its lifecycle fields, or
        ``None`` when there is none (the library then says why)."""
        base = f"SELECT record, {_BOUND}, description FROM {VERSIONS} WHERE model_name = ? AND {_LIVE}"
        if version is None:
            row = self._conn.execute(f"{base} ORDER BY {_DESC} LIMIT 1", (model_name,)).fetchone()
        else:
            row = self._conn.execute(f"{base} AND version = ?", (model_name, version)).fetchone()
        if row is None:
            return None
        record = bound_record(*row[:_N])
        return self._with_lifecycle(model_name, [(record, row[_N])], version=record.version)[0]

    def alias_target(self, model_name: str, alias: str) -> str | None:
        """The version ``alias`` points at, or ``None``."""
        row = self._conn.execute(
            f"SELECT version FROM {ALIASES} WHERE model_name = ? AND alias = ?", (model_name, alias)
        ).fetchone()
        return None if row is None else text_value(row[0])

    def database(self) -> Database:
        """This connection for the library's search (:func:`~modelkeep.search.api.search_versions_in`)."""
        return Database("sqlite", None, self._rows)

    def _with_lifecycle(
        self, model_name: str, pairs: list[tuple[ModelMetadata, str | None]], *, version: str | None = None
    ) -> list[ModelMetadata]:
        """As ``index.audit.attach_lifecycle``: two queries, then :func:`.rows.fill_lifecycle`."""
        if not pairs:
            return []
        params: tuple[str, ...] = (model_name,)
        if version is None:
            alias_where, tag_where = "", " AND version != ''"
        else:
            alias_where, tag_where, params = " AND version = ?", " AND version = ?", (model_name, version)
        aliases = self._rows(
            f"SELECT version, alias FROM {ALIASES} WHERE model_name = ?{alias_where} ORDER BY alias", params
        )
        tags = self._rows(
            f"SELECT version, key, value FROM {TAGS} WHERE model_name = ?{tag_where} ORDER BY version, key", params
        )
        return fill_lifecycle(pairs, aliases, tags)
