"""The scalar fields of each version, denormalised into ``modelkeep_fields`` for search.

Which fields a record has is :func:`modelkeep.index.rows.scalar_fields`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select

from ..metadata import ModelMetadata
from .common import run
from .rows import MAX_DEPTH, MAX_KEY_LENGTH, scalar_fields

__all__ = ["MAX_DEPTH", "MAX_KEY_LENGTH", "backfill", "drop_fields", "field_rows", "index_fields", "scalar_fields"]
from .schema import fields, versions


def field_rows(version_id: int, metadata: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key, value in scalar_fields(metadata).items():
        if isinstance(value, str):
            yield {"version_id": version_id, "key": key, "num": None, "str": value}
        else:
            yield {"version_id": version_id, "key": key, "num": value, "str": None}


_VERSION_ID = select(versions.c.id).where(
    versions.c.model_name == bindparam("model_name"), versions.c.version == bindparam("version")
)
_DROP_VERSION_FIELDS = delete(fields).where(fields.c.version_id == bindparam("version_id"))
_INSERT_FIELDS = insert(fields)


def index_fields(
    conn: Connection, record: ModelMetadata, *, version_id: int | None = None, fresh: bool = False
) -> None:
    """(Re)write the field rows of ``record``'s version, inside the caller's transaction.

    ``version_id``: the row's id when the caller knows it (it just inserted the row); ``fresh``:
    that id was never used before (a sequence's), so no field rows can name it yet."""
    if version_id is None:
        params = {"model_name": record.model_name, "version": record.version}
        version_id = int(run(conn, _VERSION_ID, params).scalar_one())
        fresh = False
    if not fresh:
        run(conn, _DROP_VERSION_FIELDS, {"version_id": version_id})
    rows = list(field_rows(version_id, record.metadata))
    if rows:
        run(conn, _INSERT_FIELDS, rows)


def drop_fields(conn: Connection, model_name: str, version: str | None = None) -> None:
    """Remove the field rows of one version (or of every version when ``version`` is None)."""
    ids = select(versions.c.id).where(versions.c.model_name == model_name)
    if version is not None:
        ids = ids.where(versions.c.version == version)
    conn.execute(delete(fields).where(fields.c.version_id.in_(ids)))


def backfill(conn: Connection, batch: int = 2000) -> int:
    """Fill ``modelkeep_fields`` from every version's stored record (migration step 3)."""
    count = 0
    rows: list[dict[str, Any]] = []
    for version_id, raw in conn.execute(select(versions.c.id, versions.c.record)).all():
        try:
            metadata = json.loads(raw).get("metadata") or {}
        except (ValueError, TypeError, AttributeError, RecursionError):  # a damaged row: verify reports it
            metadata = {}
        rows.extend(field_rows(int(version_id), metadata if isinstance(metadata, dict) else {}))
        count += 1
        if len(rows) >= batch:
            conn.execute(insert(fields), rows)
            rows = []
    if rows:
        conn.execute(insert(fields), rows)
    return count
