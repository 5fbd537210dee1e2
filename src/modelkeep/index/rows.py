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
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import FormatVersionError, IntegrityError, SignatureError
from ..metadata import HistoryEntry, ModelMetadata

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


_RECORD_TEXT = ("model_name", "model_type", "version", "created_at", "updated_at")


def parse_record(raw: Any, model_name: str | None = None, version: str | None = None) -> ModelMetadata:
    """A version's record from the JSON text of its ``record`` column.

    A row that cannot be read (not JSON, not an object, a field of the wrong type) gives a
    placeholder record named ``model_name``/``version`` whose ``damaged`` says why, so that one
    damaged row never fails a whole listing; it has no artifact, so it cannot be loaded. A
    record from a newer modelkeep still raises :class:`~modelkeep.errors.FormatVersionError`.
    """
    try:
        record = ModelMetadata.from_dict(json.loads(raw))
        problem = record_problem(record)
    except FormatVersionError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        problem = f"the record is not readable: {_reason(exc)}"
    if problem is None:
        return record
    return damaged_record(model_name, version, problem)


def damaged_record(model_name: Any, version: Any, problem: str) -> ModelMetadata:
    """The placeholder listed for a row that cannot be read as written: its name and version
    (as text), no artifact, and ``damaged`` saying why."""
    return ModelMetadata(
        model_name=text_value(model_name),
        model_type="",
        version=text_value(version),
        created_at="",
        updated_at="",
        damaged=problem,
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON ({exc.msg} at character {exc.pos})"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, KeyError):
        return f"the field {exc} is missing"
    return str(exc)[:200] or type(exc).__name__


def record_problem(record: ModelMetadata) -> str | None:
    """What is wrong with the types of a parsed record, or ``None``."""
    for name in _RECORD_TEXT:
        if not isinstance(getattr(record, name), str):
            return f"the record's {name} is a {type(getattr(record, name)).__name__}, not text"
    art = record.artifact
    if art is not None and not (isinstance(art.key, str) and isinstance(art.sha256, str)):
        return "the record's artifact key or digest is not text"
    for name in ("environment", "metadata"):
        if not isinstance(getattr(record, name), dict):
            return f"the record's {name} is not an object"
    return None


def text_value(value: Any) -> str:
    """An index cell read as text whatever its type (SQLite stores any type in any column):
    text as it is, bytes decoded (invalid UTF-8 replaced), ``None`` as ``""``, else ``str()``."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


#: The ``modelkeep_versions`` columns a row's record must agree with, after ``record`` itself.
#: ``model_name`` and ``version`` are what a query selects a row by (what was asked for, or
#: what "latest" resolved to); the others name the bytes the row stands for.
BOUND_COLUMNS = ("model_name", "version", "artifact_key", "sha256", "size")


def binding_error(
    record: ModelMetadata, model_name: Any, version: Any, artifact_key: Any, sha256: Any, size: Any
) -> IntegrityError | None:
    """Why ``record`` (from a row's JSON ``record`` column) does not belong to the row
    ``model_name``/``version`` whose other columns are given, or ``None`` when it does (or when
    the record is already marked ``damaged``: it cannot be loaded anyway).

    A signature covers the record's own name, version, artifact key, digest and size, so a
    record signed for ``other 1.0.0`` copied into the row of ``fraud 2.0.0`` (with that row's
    ``artifact_key``, ``sha256`` and ``size``) still verifies: only comparing it with the row it
    was selected by shows the replay. That is a :class:`SignatureError` when the record carries a
    signature, and an :class:`IntegrityError` (a corrupt row) when it does not."""
    if record.damaged:
        return None
    art = record.artifact
    model_name, version = text_value(model_name), text_value(version)
    where = f"model '{model_name}' version '{version}'"
    if record.model_name != model_name or record.version != version:
        found = f"{record.model_name} {record.version}"
    elif art is None:
        return IntegrityError(f"{where}: its index record names no artifact; the index row is corrupt")
    elif art.key != text_value(artifact_key):
        found = f"artifact {art.key!r}, but the index row names {text_value(artifact_key)!r}"
    elif art.sha256 != text_value(sha256) or not _same_size(art.size, size):
        found = (
            f"SHA-256 {art.sha256[:16]}... ({art.size} bytes), "
            f"but the index row says {text_value(sha256)[:16]}... ({text_value(size)} bytes)"
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


def _same_size(recorded: Any, cell: Any) -> bool:
    try:
        return int(recorded) == int(cell) and not isinstance(cell, bool)
    except (TypeError, ValueError):
        return False


def bound_record(
    raw: Any, model_name: Any, version: Any, artifact_key: Any, sha256: Any, size: Any, *, strict: bool = True
) -> ModelMetadata:
    """The record in a row's ``record`` column (a ``damaged`` placeholder when unreadable, see
    :func:`parse_record`), after checking that it is the record of that row: a mismatch raises
    (see :func:`binding_error`), or with ``strict=False`` (listings) gives a ``damaged``
    placeholder saying why, so that one altered row does not fail a whole page."""
    record = parse_record(raw, model_name, version)
    error = binding_error(record, model_name, version, artifact_key, sha256, size)
    if error is None:
        return record
    if strict:
        raise error
    return damaged_record(model_name, version, str(error))


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
        by_version[text_value(v)].append(text_value(name))
    tag_map: dict[str, dict[str, str]] = defaultdict(dict)
    for v, key, value in tag_rows:
        tag_map[text_value(v)][text_value(key)] = text_value(value)
    out = []
    for record, description in pairs:
        record.aliases = by_version.get(record.version, [])
        record.tags = tag_map.get(record.version, {})
        record.description = description
        out.append(record)
    return out


_HISTORY_TEXT = ("at", "actor", "action", "model_name")
_HISTORY_OPTIONAL = ("version", "alias", "key")


def history_entry(row: Mapping[Any, Any]) -> HistoryEntry:
    """A history row as a :class:`HistoryEntry`. A value that is not JSON, or a cell of the
    wrong type, does not fail the read: the entry keeps the value as text and says why in
    ``damaged``."""
    problems: list[str] = []
    text: dict[str, Any] = {}
    for name in (*_HISTORY_TEXT, *_HISTORY_OPTIONAL):
        value = row.get(name)
        if value is None and name in _HISTORY_OPTIONAL:
            text[name] = None
        elif isinstance(value, str):
            text[name] = value
        else:
            problems.append(f"{name} is a {type(value).__name__}, not text")
            text[name] = text_value(value)
    values: dict[str, Any] = {}
    for name in ("before", "after"):
        raw = row.get(name)
        if raw is None:
            values[name] = None
            continue
        try:
            values[name] = json.loads(raw)
        except (ValueError, TypeError, RecursionError) as exc:
            problems.append(f"{name} is not JSON" + (" (not UTF-8 text)" if isinstance(exc, UnicodeError) else ""))
            values[name] = text_value(raw)
    try:
        ident = int(row.get("id"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        problems.append("id is not a number")
        ident = -1
    return HistoryEntry(id=ident, **text, **values, damaged="; ".join(problems) if problems else None)
