"""Search over a registry index: filtered, ordered, keyset-paginated, all in SQL."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Connection, String, and_, exists, literal, select, union_all

from ..errors import FilterError, ModelNotFoundError
from ..index.schema import aliases, fields, tags, versions
from ..index.sql import SqlIndex, parse_record
from ..metadata import ModelMetadata, ModelSummary
from .compile import Compiler, Resolved, after, field_names, resolve_name
from .grammar import And, Compare, Node, OrderKey, parse_filter, parse_order_by, unparse

_T = TypeVar("_T")
MAX_LIMIT = 10_000
#: Order used when ``order_by`` is not given.
DEFAULT_ORDER = [OrderKey("model_name"), OrderKey("version")]


@dataclass
class SearchPage(Generic[_T]):
    """One page of results; pass ``next_page_token`` back to get the next (``None``: last page)."""

    items: list[_T] = field(default_factory=list)
    next_page_token: str | None = None


def _filter_node(filter: str | Node | None) -> Node | None:
    if filter is None or (isinstance(filter, str) and not filter.strip()):
        return None
    return parse_filter(filter) if isinstance(filter, str) else filter


def _present(conn: Connection, table: Any, keys: set[str]) -> set[str]:
    """Which of ``keys`` occur in ``table.key`` (one query; each key is one index probe)."""
    if not keys:
        return set()
    probes = [select(literal(k, String(256))).where(exists().where(table.c.key == k)) for k in sorted(keys)]
    return {r[0] for r in conn.execute(union_all(*probes))}


def _resolve(conn: Connection, names: list[str]) -> dict[str, Resolved]:
    """Resolve every field name, with one query for the custom fields and one for the tags."""
    candidates = {n[8:] for n in names if n.startswith("metrics.")} | set(names)
    known_fields = _present(conn, fields, candidates)
    known_tags = _present(conn, tags, {n[5:] for n in names if n.startswith("tags.")})

    def check(kind: str, key: str) -> bool:
        return key in (known_tags if kind == "tag" else known_fields)

    return {name: resolve_name(name, check) for name in names}


def _check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise FilterError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
    return limit


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _encode_token(fingerprint: str, values: list[Any]) -> str:
    encoded = [{"b": v.hex()} if isinstance(v, (bytes, memoryview)) else v for v in values]
    encoded = [{"b": bytes(v).hex()} if isinstance(v, memoryview) else v for v in encoded]
    raw = json.dumps({"q": fingerprint, "k": encoded}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, fingerprint: str, size: int) -> list[Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        values = [bytes.fromhex(v["b"]) if isinstance(v, dict) else v for v in data["k"]]
        ok = data["q"] == fingerprint and len(values) == size
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise FilterError(f"page_token is not a token this search returned: {exc}") from exc
    if not ok:
        raise FilterError("page_token belongs to a different search (filter, model_name or order_by changed)")
    return values


def search_versions(
    index: SqlIndex,
    filter: str | Node | None = None,
    *,
    model_name: str | None = None,
    order_by: str | list[str] | None = None,
    limit: int = 100,
    page_token: str | None = None,
) -> SearchPage[ModelMetadata]:
    """Live versions matching ``filter``, in ``order_by`` order, one page at a time."""
    node = _filter_node(filter)
    keys = parse_order_by(order_by) or DEFAULT_ORDER
    limit = _check_limit(limit)
    names = (field_names(node) if node is not None else []) + [k.field for k in keys]
    with index.engine.connect() as conn:
        compiler = Compiler(index.dialect, _resolve(conn, list(dict.fromkeys(names))))
        source, parts = compiler.order(keys, versions, node)
        conds: list[ColumnElement[bool]] = [versions.c.deleted_at.is_(None)]
        if model_name is not None:
            conds.append(versions.c.model_name == model_name)
        if node is not None:
            conds.append(compiler.where(node))
        fingerprint = _fingerprint(unparse(node) if node else None, model_name, [(k.field, k.descending) for k in keys])
        if page_token:
            conds.append(after(parts, _decode_token(page_token, fingerprint, len(parts))))
        query = (
            select(versions.c.record, versions.c.description, *(p[0].label(f"k{i}") for i, p in enumerate(parts)))
            .select_from(source)
            .where(and_(*conds))
            .order_by(*(p[0].desc() if p[1] else p[0].asc() for p in parts))
            .limit(limit + 1)
        )
        rows = conn.execute(query).all()
        page = rows[:limit]
        records = [parse_record(r[0]) for r in page]
        _attach_lifecycle(conn, records, [r[1] for r in page])
    token = None
    if len(rows) > limit:
        token = _encode_token(fingerprint, list(page[-1][2:]))
    return SearchPage(records, token)


def _attach_lifecycle(conn: Connection, records: list[ModelMetadata], descriptions: list[str | None]) -> None:
    """Give each record its aliases, tags and description (fields of ModelMetadata since schema 2)."""
    if not records:
        return
    names = sorted({r.model_name for r in records})
    wanted = {(r.model_name, r.version) for r in records}
    found_aliases: dict[tuple[str, str], list[str]] = {}
    for mn, alias, version in conn.execute(
        select(aliases.c.model_name, aliases.c.alias, aliases.c.version)
        .where(aliases.c.model_name.in_(names))
        .order_by(aliases.c.alias)
    ):
        if (mn, version) in wanted:
            found_aliases.setdefault((mn, version), []).append(alias)
    found_tags: dict[tuple[str, str], dict[str, str]] = {}
    for mn, version, key, value in conn.execute(
        select(tags.c.model_name, tags.c.version, tags.c.key, tags.c.value)
        .where(tags.c.model_name.in_(names), tags.c.version.in_(sorted({v for _, v in wanted})))
        .order_by(tags.c.key)
    ):
        if (mn, version) in wanted:
            found_tags.setdefault((mn, version), {})[key] = value
    for record, description in zip(records, descriptions, strict=True):
        ident = (record.model_name, record.version)
        # setattr: the lifecycle branch declares these fields on ModelMetadata.
        setattr(record, "aliases", found_aliases.get(ident, []))  # noqa: B010
        setattr(record, "tags", found_tags.get(ident, {}))  # noqa: B010
        setattr(record, "description", description)  # noqa: B010


def iter_versions(
    index: SqlIndex,
    filter: str | Node | None = None,
    *,
    model_name: str | None = None,
    order_by: str | list[str] | None = None,
    page_size: int = 1000,
) -> Iterator[ModelMetadata]:
    """Every match, following the page tokens."""
    token: str | None = None
    while True:
        page = search_versions(
            index, filter, model_name=model_name, order_by=order_by, limit=page_size, page_token=token
        )
        yield from page.items
        token = page.next_page_token
        if token is None:
            return


def search_models(
    index: SqlIndex,
    filter: str | Node | None = None,
    *,
    limit: int = 100,
    page_token: str | None = None,
) -> SearchPage[ModelSummary]:
    """Models with at least one live version matching ``filter``, by name."""
    node = _filter_node(filter)
    limit = _check_limit(limit)
    with index.engine.connect() as conn:
        compiler = Compiler(index.dialect, _resolve(conn, field_names(node) if node is not None else []))
        name = compiler.text(versions.c.model_name)
        conds: list[ColumnElement[bool]] = [versions.c.deleted_at.is_(None)]
        if node is not None:
            conds.append(compiler.where(node))
        fingerprint = _fingerprint("models", unparse(node) if node else None)
        if page_token:
            conds.append(name > _decode_token(page_token, fingerprint, 1)[0])
        names = [
            r[0]
            for r in conn.execute(
                select(versions.c.model_name)
                .where(and_(*conds))
                .group_by(versions.c.model_name)
                .order_by(name)
                .limit(limit + 1)
            )
        ]
    page = names[:limit]
    summaries = {s.name: s for s in index.summaries() if s.name in set(page)}
    token = _encode_token(fingerprint, [page[-1]]) if len(names) > limit else None
    return SearchPage([summaries[n] for n in page if n in summaries], token)


def best_version(
    index: SqlIndex, model_name: str, metric: str, mode: str = "max", filter: str | Node | None = None
) -> ModelMetadata:
    """The live version of ``model_name`` with the highest (``mode="max"``) or lowest numeric ``metric``.

    Ties go to the oldest version. Raises :class:`ModelNotFoundError` when no
    matching version has a numeric value for the metric.
    """
    if mode not in ("max", "min"):
        raise FilterError(f"mode must be 'max' or 'min', got {mode!r}")
    node = _filter_node(filter)
    has_metric: Node = Compare(metric, ">=", -sys.float_info.max)  # any number; lets the index drive
    combined = has_metric if node is None else And((has_metric, node))
    page = search_versions(
        index, combined, model_name=model_name, order_by=[("-" if mode == "max" else "") + f"`{metric}`"], limit=1
    )
    if page.items:
        value = _metric_value(page.items[0], metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return page.items[0]
    raise ModelNotFoundError(
        f"no live version of model '{model_name}' has a numeric {metric!r}"
        + (f" and matches {unparse(node)}" if node is not None else "")
    )


def _metric_value(record: ModelMetadata, metric: str) -> Any:
    from ..index.fields import scalar_fields

    values = scalar_fields(record.metadata)
    for key in (metric, metric[8:] if metric.startswith("metrics.") else None):
        if key is not None and key in values:
            return values[key]
    return None


def matching_versions(index: SqlIndex, model_name: str, filter: str | Node | None) -> list[ModelMetadata]:
    """Every live version of ``model_name`` matching ``filter``, in version order (for compare)."""
    return list(iter_versions(index, filter, model_name=model_name, order_by="version"))
