"""The scalar fields of each version, denormalised into ``modelkeep_fields`` for search.

A record's ``metadata`` dict is flattened: top-level scalars keep their name
(``accuracy``), scalars in nested dicts get a dotted key (``metrics.auc``, up to
:data:`MAX_DEPTH` levels), and ``model_params`` become ``params.<name>``.
Numbers and booleans (as 1.0/0.0) go to ``num`` as double precision, strings
to ``str``; ``None``, lists and non-finite numbers are left out (a search sees
them as missing).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, delete, insert, select

from ..metadata import ModelMetadata
from .schema import fields, versions

MAX_DEPTH = 3
MAX_KEY_LENGTH = 256


def scalar_fields(metadata: dict[str, Any]) -> dict[str, float | str]:
    """``{key: number-or-string}`` for every searchable scalar in a record's ``metadata``."""
    out: dict[str, float | str] = {}
    for key, value in metadata.items():
        if key == "model_params" and isinstance(value, dict):
            _flatten(out, "params", value, 1)
        else:
            _add(out, str(key), value, 0)
    return out


def _flatten(out: dict[str, float | str], prefix: str, tree: dict[str, Any], depth: int) -> None:
    for key, value in tree.items():
        _add(out, f"{prefix}.{key}", value, depth)


def _add(out: dict[str, float | str], key: str, value: Any, depth: int) -> None:
    if len(key) > MAX_KEY_LENGTH:
        return
    if isinstance(value, dict):
        if depth < MAX_DEPTH:
            _flatten(out, key, value, depth + 1)
    elif isinstance(value, bool):
        out.setdefault(key, 1.0 if value else 0.0)
    elif isinstance(value, (int, float)):
        number = float(value)
        if math.isfinite(number):
            out.setdefault(key, number)
    elif isinstance(value, str):
        out.setdefault(key, value)


def field_rows(version_id: int, metadata: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key, value in scalar_fields(metadata).items():
        if isinstance(value, str):
            yield {"version_id": version_id, "key": key, "num": None, "str": value}
        else:
            yield {"version_id": version_id, "key": key, "num": value, "str": None}


def index_fields(conn: Connection, record: ModelMetadata) -> None:
    """(Re)write the field rows of ``record``'s version, inside the caller's transaction."""
    version_id = conn.execute(
        select(versions.c.id).where(versions.c.model_name == record.model_name, versions.c.version == record.version)
    ).scalar_one()
    conn.execute(delete(fields).where(fields.c.version_id == version_id))
    rows = list(field_rows(int(version_id), record.metadata))
    if rows:
        conn.execute(insert(fields), rows)


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
        metadata = json.loads(raw).get("metadata") or {}
        rows.extend(field_rows(int(version_id), metadata if isinstance(metadata, dict) else {}))
        count += 1
        if len(rows) >= batch:
            conn.execute(insert(fields), rows)
            rows = []
    if rows:
        conn.execute(insert(fields), rows)
    return count
