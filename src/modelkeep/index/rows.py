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
    """A version's record from the JSON text of its ``record`` column."""
    return ModelMetadata.from_dict(json.loads(raw))


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
