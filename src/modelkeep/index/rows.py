"""Index rows <-> records, with no SQLAlchemy: what the library's index (:mod:`.sql`,
:mod:`.audit`, :mod:`.fields`) and the command line's read-only reader
(:mod:`.readonly`) share, so both turn the same rows into the same records.

:func:`scalar_fields` flattens a record's ``metadata`` dict for search: top-level
scalars keep their name (``accuracy``), scalars in nested dicts get a dotted key
(``metrics.auc``, up to :data:`MAX_DEPTH` levels), and ``model_params`` become
``params.<name>``. Numbers and booleans (as 1.0/0.0) go to ``num`` as double
precision, strings to ``str``; ``None``, lists and non-finite numbers are left out
(a search sees them as missing).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from ..errors import IntegrityError, SignatureError
from ..metadata import ModelMetadata

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


def parse_record(raw: str) -> ModelMetadata:
    """A version's record from the JSON text of its ``record`` column, unchecked: use
    :func:`bound_record` for a row that a query selected."""
    return ModelMetadata.from_dict(json.loads(raw))


#: The ``modelkeep_versions`` columns a row's record must agree with, after ``record`` itself.
#: ``model_name`` and ``version`` are what a query selects a row by (what was asked for, or
#: what "latest" resolved to); the others name the bytes the row stands for.
BOUND_COLUMNS = ("model_name", "version", "artifact_key", "sha256", "size")


def binding_error(
    record: ModelMetadata, model_name: str, version: str, artifact_key: str, sha256: str, size: int
) -> IntegrityError | None:
    """Why ``record`` (from a row's JSON ``record`` column) does not belong to the row
    ``model_name``/``version`` whose other columns are given, or ``None`` when it does.

    A signature covers the record's own name, version, artifact key, digest and size, so a
    record signed for ``other 1.0.0`` copied into the row of ``fraud 2.0.0`` (with that row's
    ``artifact_key``, ``sha256`` and ``size``) still verifies: only comparing it with the row it
    was selected by shows the replay. That is a :class:`SignatureError` when the record carries a
    signature, and an :class:`IntegrityError` (a corrupt row) when it does not."""
    art = record.artifact
    where = f"model '{model_name}' version '{version}'"
    if record.model_name != model_name or record.version != version:
        found = f"{record.model_name} {record.version}"
    elif art is None:
        return IntegrityError(f"{where}: its index record names no artifact; the index row is corrupt")
    elif art.key != artifact_key:
        found = f"artifact {art.key!r}, but the index row names {artifact_key!r}"
    elif art.sha256 != sha256 or art.size != int(size):
        found = (
            f"SHA-256 {art.sha256[:16]}... ({art.size} bytes), but the index row says {sha256[:16]}... ({size} bytes)"
        )
    else:
        return None
    if record.signature:
        return SignatureError(
            f"{where} carries a record signed for {found}: the index was altered (a signed record "
            "replayed under another name, version or artifact); restore the index from a backup"
        )
    return IntegrityError(
        f"{where} holds a record made for {found}: the index row is corrupt or was altered; "
        "restore the index from a backup"
    )


def bound_record(raw: str, model_name: str, version: str, artifact_key: str, sha256: str, size: int) -> ModelMetadata:
    """The record in a row's ``record`` column, after checking that it is the record of that
    row (see :func:`binding_error`, which says what is raised otherwise)."""
    record = parse_record(raw)
    error = binding_error(record, model_name, version, artifact_key, sha256, size)
    if error is not None:
        raise error
    return record


def fill_lifecycle(
    pairs: list[tuple[ModelMetadata, str | None]],
    alias_rows: Iterable[tuple[str, str]],
    tag_rows: Iterable[tuple[str, str, str]],
) -> list[ModelMetadata]:
    """Set ``aliases``, ``tags`` and ``description`` of each (record, description) pair of one model.

    ``alias_rows`` are ``(version, alias)`` in alias order; ``tag_rows`` are
    ``(version, key, value)`` in version, key order.
    """
    by_version: dict[str, list[str]] = defaultdict(list)
    for v, name in alias_rows:
        by_version[v].append(name)
    tag_map: dict[str, dict[str, str]] = defaultdict(dict)
    for v, key, value in tag_rows:
        tag_map[v][key] = value
    out = []
    for record, description in pairs:
        record.aliases = by_version.get(record.version, [])
        record.tags = tag_map.get(record.version, {})
        record.description = description
        out.append(record)
    return out
