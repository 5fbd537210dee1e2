"""Search over a registry index: filtered, ordered, keyset-paginated, all in SQL.

The SQL is text from :mod:`.compile`; :class:`Database` says where it runs. The
library runs it on its SQLAlchemy connection (:func:`connected`), the command
line's read-only path on a ``sqlite3`` connection (:mod:`modelkeep.index.readonly`):
one compiler and one query builder for both. This module imports SQLAlchemy only
inside :func:`connected`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..errors import FilterError, ModelNotFoundError
from ..index.names import ALIASES, FIELDS, TAGS, VERSIONS
from ..index.rows import BOUND_COLUMNS, bound_record, scalar_fields, text_value
from ..metadata import ModelMetadata, ModelSummary
from .compile import (
    SEGMENT_NUMBERS,
    SEGMENTS,
    Compiler,
    Params,
    Resolved,
    after,
    field_names,
    order_clause,
    resolve_name,
    table,
)
from .grammar import And, Compare, Node, OrderKey, parse_filter, parse_order_by, unparse

if TYPE_CHECKING:
    from ..index.sql import SqlIndex

_T = TypeVar("_T")
MAX_LIMIT = 10_000
#: Order used when ``order_by`` is not given.
DEFAULT_ORDER = [OrderKey("model_name"), OrderKey("version")]
#: The row columns each found record is checked against (see :func:`~modelkeep.index.rows.binding_error`).
_BOUND = ", ".join(f"v.{name}" for name in BOUND_COLUMNS)


@dataclass
class SearchPage(Generic[_T]):
    """One page of results; pass ``next_page_token`` back to get the next (``None``: last page)."""

    items: list[_T] = field(default_factory=list)
    next_page_token: str | None = None


@dataclass
class Database:
    """Where search SQL runs: the dialect, the PostgreSQL schema of the tables (``None``: the
    search path), and ``rows(sql, params)``, which runs one statement and returns its rows;
    ``batch(statements)``, when given, runs several in one round trip (the read-only path's)."""

    dialect: str
    schema: str | None
    rows: Callable[[str, dict[str, Any]], list[Any]]
    batch: Callable[[list[tuple[str, dict[str, Any]]]], list[list[Any]]] | None = None

    def table(self, name: str) -> str:
        return table(name, self.schema)

    def many(self, statements: list[tuple[str, dict[str, Any]]]) -> list[list[Any]]:
        """The rows of each of ``statements``, which do not depend on each other."""
        if self.batch is not None:
            return self.batch(statements)
        return [self.rows(sql, params) for sql, params in statements]


@contextlib.contextmanager
def connected(index: SqlIndex) -> Iterator[Database]:
    """A :class:`Database` on one connection of ``index``'s engine, for the block."""
    from sqlalchemy import text

    with index.engine.connect() as conn:
        yield Database(index.dialect, index.schema, lambda sql, params: list(conn.execute(text(sql), params)))


def _filter_node(filter: str | Node | None) -> Node | None:
    if filter is None or (isinstance(filter, str) and not filter.strip()):
        return None
    return parse_filter(filter) if isinstance(filter, str) else filter


def _present(db: Database, table_name: str, keys: set[str]) -> tuple[str, dict[str, Any]]:
    """The query of which of ``keys`` occur in the table's ``key`` column (each key is one index probe)."""
    params = Params()
    probes = []
    for key in sorted(keys):
        k = params.bind(key)
        probes.append(
            f"SELECT CAST({k} AS VARCHAR(256)) WHERE EXISTS (SELECT 1 FROM {db.table(table_name)} WHERE key = {k})"
        )
    return " UNION ALL ".join(probes), params.values


def _resolve(db: Database, wanted: list[str]) -> dict[str, Resolved]:
    """Resolve every field name, with one query for the custom fields and one for the tags (in one batch)."""
    candidates = {n[8:] for n in wanted if n.startswith("metrics.")} | set(wanted)
    probes = {FIELDS: candidates, TAGS: {n[5:] for n in wanted if n.startswith("tags.")}}
    asked = [name for name, keys in probes.items() if keys]
    found = dict(zip(asked, db.many([_present(db, name, probes[name]) for name in asked]), strict=True))
    known_fields = {r[0] for r in found.get(FIELDS, [])}
    known_tags = {r[0] for r in found.get(TAGS, [])}

    def check(kind: str, key: str) -> bool:
        return key in (known_tags if kind == "tag" else known_fields)

    return {name: resolve_name(name, check) for name in wanted}


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


def _decode_token(db: Database, token: str, fingerprint: str, size: int) -> list[Any]:
    """The order values of a page token; a token no search on ``db`` can have returned is a
    :class:`FilterError` (PostgreSQL text holds no NUL: the driver would fail on it)."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        values = [bytes.fromhex(v["b"]) if isinstance(v, dict) else v for v in data["k"]]
        ok = data["q"] == fingerprint and len(values) == size
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise FilterError(f"page_token is not a token this search returned: {exc}") from exc
    if not ok:
        raise FilterError("page_token belongs to a different search (filter, model_name or order_by changed)")
    if db.dialect == "postgresql" and any(isinstance(v, str) and "\x00" in v for v in values):
        raise FilterError("page_token is not a token this search returned: a NUL in a value")
    return values


def search_versions(index: SqlIndex, filter: str | Node | None = None, **options: Any) -> SearchPage[ModelMetadata]:
    """Live versions matching ``filter``, in ``order_by`` order, one page at a time
    (the options of :func:`search_versions_in`, on a connection of ``index``)."""
    with connected(index) as db:
        return search_versions_in(db, filter, only_models=_visible_models(index, db), **options)


def _visible_models(index: SqlIndex, db: Database) -> list[str] | None:
    """The models the reader may see (``None``: all), for a search's ``WHERE``, so that a page of a
    reader with grants only is as full, and its token as exact, as anyone else's."""
    who = index.viewer()
    if who is None or who.sees_everything():
        return None
    names = db.rows(f"SELECT DISTINCT model_name FROM {db.table(VERSIONS)} WHERE deleted_at IS NULL", {})
    return sorted(n for n in (text_value(r[0]) for r in names) if index.may_view(n))


def _only(names: list[str] | None, params: Params) -> list[str]:
    """The ``WHERE`` terms that keep a search to ``names`` (none for ``None``: every model)."""
    if names is None:
        return []
    return [f"v.model_name IN {params.many(names)}" if names else "1 = 0"]


def search_versions_in(
    db: Database,
    filter: str | Node | None = None,
    *,
    model_name: str | None = None,
    order_by: str | list[str] | None = None,
    limit: int = 100,
    page_token: str | None = None,
    only_models: list[str] | None = None,
) -> SearchPage[ModelMetadata]:
    """:func:`search_versions` on ``db`` (what the command line's read-only path calls);
    ``only_models``: only versions of these models (``None``: any)."""
    node = _filter_node(filter)
    keys = parse_order_by(order_by) or DEFAULT_ORDER
    limit = _check_limit(limit)
    wanted = (field_names(node) if node is not None else []) + [k.field for k in keys]
    resolved = _resolve(db, list(dict.fromkeys(wanted)))
    fingerprint = _fingerprint(unparse(node) if node else None, model_name, [(k.field, k.descending) for k in keys])
    query = _Query(db, resolved, node, keys, model_name, only_models)
    last = None
    if page_token:
        last = _decode_token(db, page_token, fingerprint, query.size)
        if query.segmented and (type(last[0]) is not int or last[0] not in SEGMENTS):
            raise FilterError("page_token is not a token this search returned: bad segment")
    rows: list[tuple[list[Any], list[Any]]] = []  # (record columns, order values)
    for segment in query.segments(last):
        rows += query.run(segment, last, limit + 1 - len(rows))
        if len(rows) > limit:
            break
    page = rows[:limit]
    n = 1 + len(BOUND_COLUMNS)
    records = [bound_record(*r[:n], strict=False) for r, _ in page]
    _attach_lifecycle(db, records, [r[n] for r, _ in page])
    token = _encode_token(fingerprint, page[-1][1]) if len(rows) > limit else None
    return SearchPage(records, token)


class _Query:
    """The statements of one search: a single one, or one per segment of the first key's
    order (:data:`~modelkeep.search.compile.SEGMENTS`) when that key is an unbounded field."""

    def __init__(
        self,
        db: Database,
        resolved: dict[str, Resolved],
        node: Node | None,
        keys: list[OrderKey],
        model_name: str | None,
        only_models: list[str] | None = None,
    ) -> None:
        self.db, self.resolved, self.node, self.keys, self.model_name = db, resolved, node, keys, model_name
        self.only_models = only_models
        probe = Compiler(db.dialect, resolved, Params(), db.schema)
        self.segmented = probe.segmented(keys, node)
        self.size = len(probe.order(keys, node, SEGMENT_NUMBERS if self.segmented else None)[1])

    def segments(self, last: list[Any] | None) -> list[int | None]:
        """The segments still to visit after the row whose order values are ``last``."""
        if not self.segmented:
            return [None]
        first = last[0] if last is not None else SEGMENTS[0]
        return [s for s in SEGMENTS if s >= first]

    def run(self, segment: int | None, last: list[Any] | None, limit: int) -> list[tuple[list[Any], list[Any]]]:
        """Up to ``limit`` rows of ``segment`` after ``last``: (record columns, all order values)."""
        params = Params()
        compiler = Compiler(self.db.dialect, self.resolved, params, self.db.schema)
        source, parts = compiler.order(self.keys, self.node, segment)
        fixed = compiler.fixed
        conds = ["v.deleted_at IS NULL", *compiler.conds]
        if self.model_name is not None:
            conds.append(f"v.model_name = {params.bind(self.model_name)}")
        conds += _only(self.only_models, params)
        if self.node is not None:
            conds.append(compiler.where(self.node))
        moving = [i for i in range(len(parts)) if i not in fixed]
        if last is not None and (segment is None or last[0] == segment):
            conds.append(after([parts[i] for i in moving], [last[i] for i in moving], params))
        columns = ", ".join(f"{parts[i][0]} AS k{i}" for i in moving)
        where = " AND ".join(conds)
        order = order_clause([parts[i] for i in moving], compiler.sort_as)
        if self.db.dialect == "postgresql":
            # The page's ids first, then their records: PostgreSQL otherwise carries every
            # candidate's record (~1 KB) through the joins and the sort that only the page
            # needs, and may memoize each one (bench/README.md, CLI cold start: the CLI's page
            # statement 13.4 -> 9.7 ms median; bench/search.py at 100,000 versions, 142 -> 19 ms
            # for one query). The outer order is the inner's, on the same values (the last is
            # the unique id).
            outer = order_clause([(f"p.k{i}", parts[i][1]) for i in moving])
            sql = (
                f"SELECT v.record, {_BOUND}, v.description, {', '.join(f'p.k{i}' for i in moving)}"
                f" FROM {self.db.table(VERSIONS)} AS v JOIN (SELECT v.id AS page_id, {columns} FROM {source}"
                f" WHERE {where} ORDER BY {order} LIMIT {params.bind(limit)}) AS p ON v.id = p.page_id"
                f" ORDER BY {outer}"
            )
        else:
            sql = (
                f"SELECT v.record, {_BOUND}, v.description, {columns} FROM {source} WHERE {where}"
                f" ORDER BY {order} LIMIT {params.bind(limit)}"
            )
        n = 2 + len(BOUND_COLUMNS)
        out = []
        for row in self.db.rows(sql, params.values):
            values = iter(row[n:])
            out.append((list(row[:n]), [fixed[i] if i in fixed else next(values) for i in range(len(parts))]))
        return out


def _attach_lifecycle(db: Database, records: list[ModelMetadata], descriptions: list[str | None]) -> None:
    """Give each record its aliases, tags and description (fields of ModelMetadata since schema 2)."""
    if not records:
        return
    model_names = sorted({r.model_name for r in records})
    wanted = {(r.model_name, r.version) for r in records}
    found_aliases: dict[tuple[str, str], list[str]] = {}
    alias_params, tag_params = Params(), Params()
    alias_sql = (
        f"SELECT model_name, alias, version FROM {db.table(ALIASES)}"
        f" WHERE model_name IN {alias_params.many(model_names)} ORDER BY alias"
    )
    tag_sql = (
        f"SELECT model_name, version, key, value FROM {db.table(TAGS)}"
        f" WHERE model_name IN {tag_params.many(model_names)}"
        f" AND version IN {tag_params.many(sorted({v for _, v in wanted}))} ORDER BY key"
    )
    alias_rows, tag_rows = db.many([(alias_sql, alias_params.values), (tag_sql, tag_params.values)])
    for mn, alias, version in alias_rows:
        if (mn, text_value(version)) in wanted:
            found_aliases.setdefault((mn, text_value(version)), []).append(text_value(alias))
    found_tags: dict[tuple[str, str], dict[str, str]] = {}
    for mn, version, key, value in tag_rows:
        if (mn, text_value(version)) in wanted:
            found_tags.setdefault((mn, text_value(version)), {})[text_value(key)] = text_value(value)
    for record, description in zip(records, descriptions, strict=True):
        ident = (record.model_name, record.version)
        record.aliases = found_aliases.get(ident, [])
        record.tags = found_tags.get(ident, {})
        record.description = description


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
    with connected(index) as db:
        params = Params()
        compiler = Compiler(db.dialect, _resolve(db, field_names(node) if node is not None else []), params, db.schema)
        name = compiler.text("v.model_name")
        conds = ["v.deleted_at IS NULL", *_only(_visible_models(index, db), params)]
        if node is not None:
            conds.append(compiler.where(node))
        fingerprint = _fingerprint("models", unparse(node) if node else None)
        if page_token:
            conds.append(f"{name} > {params.bind(_decode_token(db, page_token, fingerprint, 1)[0])}")
        sql = (
            f"SELECT v.model_name FROM {db.table(VERSIONS)} AS v WHERE {' AND '.join(conds)}"
            f" GROUP BY v.model_name ORDER BY {name} LIMIT {params.bind(limit + 1)}"
        )
        found = [r[0] for r in db.rows(sql, params.values)]
    page = found[:limit]
    summaries = {s.name: s for s in index.summaries() if s.name in set(page)}
    token = _encode_token(fingerprint, [page[-1]]) if len(found) > limit else None
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
    values = scalar_fields(record.metadata)
    for key in (metric, metric[8:] if metric.startswith("metrics.") else None):
        if key is not None and key in values:
            return values[key]
    return None


def metric_history(index: SqlIndex, model_name: str, metric: str, limit: int = 2000) -> list[tuple[str, float | None]]:
    """(version, value) of the newest ``limit`` live versions of ``model_name``, oldest first.

    The value is the version's number for the custom field ``metric`` (booleans as
    1/0), or ``None`` when it has none. Reads two columns per version (the version
    row and one field row), never the records: what a chart of many versions needs.
    """
    limit = _check_limit(limit)
    if not index.may_view(model_name):
        return []  # as for a model with no versions
    with connected(index) as db:
        params = Params()
        sql = (
            f"SELECT v.version, f.num FROM {db.table(VERSIONS)} AS v"
            f" LEFT OUTER JOIN {db.table(FIELDS)} AS f ON f.version_id = v.id AND f.key = {params.bind(metric)}"
            f" WHERE v.model_name = {params.bind(model_name)} AND v.deleted_at IS NULL"
            f" ORDER BY v.parsed DESC, v.sort_key DESC, v.id ASC LIMIT {params.bind(limit)}"
        )
        rows = db.rows(sql, params.values)
    return [(text_value(version), None if num is None else float(num)) for version, num in reversed(rows)]


def matching_versions(index: SqlIndex, model_name: str, filter: str | Node | None) -> list[ModelMetadata]:
    """Every live version of ``model_name`` matching ``filter``, in version order (for compare)."""
    return list(iter_versions(index, filter, model_name=model_name, order_by="version"))


def version_matches(db: Database, filter: str | Node, model_name: str, version: str) -> bool:
    """Whether live ``version`` of ``model_name`` matches ``filter``: the ``WHERE`` of
    :func:`search_versions_in`, for one row (what promotion policies check, on the
    connection of the move's transaction)."""
    node = _filter_node(filter)
    if node is None:
        return True
    params = Params()
    compiler = Compiler(db.dialect, _resolve(db, field_names(node)), params, db.schema)
    conds = [
        "v.deleted_at IS NULL",
        f"v.model_name = {params.bind(model_name)}",
        f"v.version = {params.bind(version)}",
        compiler.where(node),
    ]
    sql = f"SELECT 1 FROM {db.table(VERSIONS)} AS v WHERE {' AND '.join(conds)}"
    return bool(db.rows(sql, params.values))
