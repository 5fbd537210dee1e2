"""Filter AST -> SQL text with bound parameters, identical in meaning on SQLite and PostgreSQL.

Semantics (also in the README):

* A comparison is true only when the version has the field, the stored value
  has the literal's type (number or string) and the comparison holds; otherwise
  it is false, never NULL. ``NOT``, ``AND`` and ``OR`` are plain two-valued logic,
  so ``NOT accuracy > 0.9`` includes versions without ``accuracy``.
* Numbers (ints, floats, booleans as 1/0) compare as double precision, so
  ``1 = 1.0``. Strings compare by code point (PostgreSQL uses ``COLLATE "C"``).
* ``LIKE``: ``%`` any text, ``_`` one character, ``\\`` escapes; case-sensitive.
  ``ILIKE`` folds ASCII letters only. Both match strings only.
* Order: a custom field sorts numbers first, then strings, then versions without
  it (last in both directions). Ties are broken by creation order (oldest first).

Every value reaches the database as a bound parameter: the SQL is text with
``:pN`` placeholders (see :class:`Params`), which runs unchanged through SQLAlchemy's
``text()`` (the library) and through the standard ``sqlite3`` module (the command
line's read-only path), so both answer every filter from this one compiler. It
imports no SQLAlchemy. The versions table is always ``v``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import FilterError
from ..index.names import ALIASES, FIELDS, TAGS, VERSIONS
from ..versions import sort_key
from .grammar import And, Compare, In, IsNull, Leaf, Node, Not, Or, OrderKey, Value

_OPS = ("=", "!=", "<", "<=", ">", ">=")
#: Built-in fields stored in their own columns of the versions table ``v``: (column, "text" or "number").
COLUMNS: dict[str, tuple[str, str]] = {
    "model_name": ("v.model_name", "text"),
    "model_type": ("v.model_type", "text"),
    "format": ("v.format", "text"),
    "created_at": ("v.created_at", "text"),
    "size": ("v.size", "number"),
}
BUILTINS = (*COLUMNS, "version", "alias")
_ASCII_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ASCII_FOLD = str.maketrans(_ASCII_UPPER, _ASCII_UPPER.lower())

#: One order part: (SQL expression, descending).
Part = tuple[str, bool]

#: The segments of a custom field's order, in order: versions whose value is a number,
#: then a string, then versions without the field. A search ordered by an unbounded
#: field runs one statement per segment (until the page is full), each walked in the
#: order of an index (``(key, num, version_id)`` for numbers) and stopped at the limit,
#: instead of sorting every version by a computed rank.
SEGMENT_NUMBERS, SEGMENT_STRINGS, SEGMENT_MISSING = SEGMENTS = (0, 1, 2)


@dataclass(frozen=True)
class Resolved:
    """What a field name in a filter refers to: ``kind`` is column, version, alias, tag or field."""

    kind: str
    key: str


@dataclass
class Params:
    """The bound parameters of one statement: :meth:`bind` returns the placeholder of a value."""

    values: dict[str, Any] = field(default_factory=dict)

    def bind(self, value: Any) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return ":" + name

    def many(self, values: list[Any] | tuple[Any, ...]) -> str:
        """``(:p1, :p2, ...)`` for an ``IN`` list."""
        return "(" + ", ".join(self.bind(v) for v in values) + ")"


def table(name: str, schema: str | None) -> str:
    """A table name, qualified with its PostgreSQL schema when there is one."""
    return name if schema is None else '"' + schema.replace('"', '""') + '".' + name


def resolve_name(name: str, exists_in: Callable[[str, str], bool]) -> Resolved:
    """Map a filter's field name to what it refers to; :class:`FilterError` if unknown.

    ``exists_in(kind, key)`` says whether some version has that custom field
    (``kind="field"``) or tag (``kind="tag"``).
    """
    if name in COLUMNS:
        return Resolved("column", name)
    if name in ("version", "alias"):
        return Resolved(name, name)
    if name.startswith("tags.") and len(name) > 5:
        if exists_in("tag", name[5:]):
            return Resolved("tag", name[5:])
        raise FilterError(f"unknown field {name!r}: no version has the tag {name[5:]!r}")
    candidates = [name]
    if name.startswith("metrics.") and len(name) > 8:
        candidates.append(name[8:])
    for key in candidates:
        if exists_in("field", key):
            return Resolved("field", key)
    hint = ""
    if name.startswith("params.") and "__" in name:
        hint = (
            "; a pipeline's step parameters of versions saved before modelkeep 0.2 become "
            "searchable after `modelkeep backfill-params` (ModelPersistence.backfill_params())"
        )
    raise FilterError(
        f"unknown field {name!r}: no version has it; use a metric or custom field given at save, "
        f"params.<name>, tags.<key>, or one of {', '.join(BUILTINS)}{hint}"
    )


def field_names(node: Node) -> list[str]:
    """Every field name a filter mentions, in order of first appearance."""
    if isinstance(node, (Compare, In, IsNull)):
        return [node.field]
    items = (node.item,) if isinstance(node, Not) else node.items
    out: list[str] = []
    for item in items:
        out += [n for n in field_names(item) if n not in out]
    return out


class Compiler:
    """Turns filters and order keys into SQL text for one dialect, given resolved field names.

    Values go to ``params``; ``schema`` is the PostgreSQL schema of the tables (``None``:
    the search path).
    """

    def __init__(self, dialect: str, resolved: dict[str, Resolved], params: Params, schema: str | None = None) -> None:
        self.postgres = dialect == "postgresql"
        self.resolved = resolved
        self.params = params
        self.schema = schema
        # The filter condition that ``order`` turned into its driving join (see there).
        self._driving: Compare | None = None
        #: After :meth:`order` with a ``segment``: conditions the segment adds to the WHERE
        #: clause, and the order parts that are one constant in it (index -> value).
        self.conds: list[str] = []
        self.fixed: dict[int, Any] = {}
        #: ORDER BY spellings of parts that sort exactly as a plain column does (see :func:`order_clause`).
        self.sort_as: dict[str, str] = {}
        # SQLite, in a segment walked along an index: custom-field conditions become
        # correlated probes of this version id instead of ``v.id IN (...)`` lists, which
        # SQLite would otherwise build in full (and drive the join from) before the walk.
        self._probe: str | None = None

    # -- helpers -------------------------------------------------------------------
    def table(self, name: str) -> str:
        return table(name, self.schema)

    def text(self, expr: str) -> str:
        """``expr`` compared by code point on both databases."""
        return f'{expr} COLLATE "C"' if self.postgres else expr

    def like(self, expr: str, pattern: str, fold: bool) -> str:
        parts = _pattern_parts(pattern.translate(_ASCII_FOLD) if fold else pattern)
        bind = self.params.bind
        if self.postgres:
            if fold:
                expr = f"translate({expr}, {bind(_ASCII_UPPER)}, {bind(_ASCII_UPPER.lower())})"
            return f"{self.text(expr)} LIKE {bind(_render_like(parts))} ESCAPE '\\'"
        if fold:
            expr = f"lower({expr})"  # SQLite's lower() folds ASCII letters only
        return f"{expr} GLOB {bind(_render_glob(parts))}"

    def compare_text(self, expr: str, op: str, value: str) -> str:
        if op in ("LIKE", "ILIKE"):
            return self.like(expr, value, op == "ILIKE")
        return f"{self.text(expr)} {op} {self.params.bind(value)}"

    def _in(self, expr: str, values: list[Any] | tuple[Any, ...]) -> str:
        return f"{expr} IN {self.params.many(values)}" if values else "1 = 0"

    # -- filters -------------------------------------------------------------------
    def where(self, node: Node) -> str:
        if isinstance(node, And):
            return "(" + " AND ".join(self.where(i) for i in node.items) + ")"
        if isinstance(node, Or):
            return "(" + " OR ".join(self.where(i) for i in node.items) + ")"
        if isinstance(node, Not):
            return f"NOT ({self.where(node.item)})"
        target = self.resolved[node.field]
        method: Callable[[Leaf, str], str] = getattr(self, "_" + target.kind)
        return method(node, target.key)

    def _column(self, node: Leaf, key: str) -> str:
        col, kind = COLUMNS[key]
        if isinstance(node, IsNull):
            return f"{col} IS NOT NULL" if node.negated else f"{col} IS NULL"
        values = node.values if isinstance(node, In) else (node.value,)
        _check_types(node.field, kind, values, node)
        if isinstance(node, In):
            return self._in(self.text(col), values) if kind == "text" else self._in(col, [_number(x) for x in values])
        assert isinstance(node, Compare)
        if kind == "text":
            return self.compare_text(col, node.op, str(node.value))
        return f"{col} {node.op} {self.params.bind(_number(node.value))}"

    def _version(self, node: Leaf, key: str) -> str:
        if isinstance(node, IsNull):
            return "v.version IS NOT NULL" if node.negated else "v.version IS NULL"
        values = node.values if isinstance(node, In) else (node.value,)
        _check_types("version", "text", values, node)
        if isinstance(node, In):
            return self._in(self.text("v.version"), values)
        assert isinstance(node, Compare)
        if node.op in ("=", "!=", "LIKE", "ILIKE"):
            return self.compare_text("v.version", node.op, str(node.value))
        bound = sort_key(str(node.value))
        if bound is None:
            raise FilterError(
                f'version {node.op} {node.value!r}: ordering needs a version such as "1.10.0" (N.N.N[-pre])'
            )
        if node.op in (">", ">="):
            return f"(v.parsed IS TRUE AND v.sort_key {node.op} {self.params.bind(bound)})"
        return f"(v.parsed IS FALSE OR v.sort_key {node.op} {self.params.bind(bound)})"

    def _related(self, node: Leaf, table_name: str, value_col: str, key_cond: str) -> str:
        """EXISTS over rows of ``table_name`` (as ``r``) belonging to the version (tags, aliases)."""
        link = f"r.model_name = v.model_name AND r.version = v.version{key_cond}"
        source = f"SELECT 1 FROM {self.table(table_name)} AS r WHERE {link}"
        if isinstance(node, IsNull):
            return f"EXISTS ({source})" if node.negated else f"NOT (EXISTS ({source}))"
        values = node.values if isinstance(node, In) else (node.value,)
        _check_types(node.field, "text", values, node)
        if isinstance(node, In):
            cond = self._in(self.text(value_col), values)
        else:
            assert isinstance(node, Compare)
            cond = self.compare_text(value_col, node.op, str(node.value))
        return f"EXISTS ({source} AND {cond})"

    def _tag(self, node: Leaf, key: str) -> str:
        return self._related(node, TAGS, "r.value", f" AND r.key = {self.params.bind(key)}")

    def _alias(self, node: Leaf, key: str) -> str:
        return self._related(node, ALIASES, "r.alias", "")

    def _field(self, node: Leaf, key: str) -> str:
        if node is self._driving:
            assert isinstance(node, Compare)
            return f"order_0.num {node.op} {self.params.bind(_number(node.value))}"
        probe = f"f.version_id = {self._probe} AND " if self._probe is not None else ""
        matching = f"SELECT f.version_id FROM {self.table(FIELDS)} AS f WHERE {probe}f.key = {self.params.bind(key)}"
        if self._probe is not None:  # a correlated probe of the primary key (see ``order``)
            if isinstance(node, IsNull):
                return f"EXISTS ({matching})" if node.negated else f"NOT (EXISTS ({matching}))"
            return f"EXISTS ({matching} AND {self._field_condition(node)})"
        if isinstance(node, IsNull):
            return f"v.id IN ({matching})" if node.negated else f"v.id NOT IN ({matching})"
        return f"v.id IN ({matching} AND {self._field_condition(node)})"

    def _field_condition(self, node: Compare | In) -> str:
        """The condition on one field row ``f`` for a comparison or ``IN`` list."""
        if isinstance(node, In):
            numbers = [_number(x) for x in node.values if not isinstance(x, str)]
            strings = [x for x in node.values if isinstance(x, str)]
            conds = ([self._in("f.num", numbers)] if numbers else []) + (
                [self._in(self.text("f.str"), strings)] if strings else []
            )
            return f"({' OR '.join(conds)})"
        if isinstance(node.value, str):
            return self.compare_text("f.str", node.op, node.value)
        if node.op in ("LIKE", "ILIKE"):
            raise FilterError(f"{node.field} {node.op} needs a quoted pattern")  # pragma: no cover - parser
        return f"f.num {node.op} {self.params.bind(_number(node.value))}"

    # -- ordering ------------------------------------------------------------------
    def segmented(self, keys: list[OrderKey], node: Node | None) -> bool:
        """Whether :meth:`order` must run as three segments: the first key is a custom
        field that the filter does not require to be a number (see :data:`SEGMENTS`)."""
        first = self.resolved[keys[0].field] if keys else None
        return first is not None and first.kind == "field" and _numeric_condition(node, keys[0].field) is None

    def order(
        self, keys: list[OrderKey], node: Node | None = None, segment: int | None = None
    ) -> tuple[str, list[Part]]:
        """The versions table ``v`` with what ``keys`` need joined; and (expression, descending) pairs.

        The last pair is always the version's unique id, so the order is total.

        When the first key is a custom field that the filter (``node``) requires to be
        a number (``accuracy > 0.9 AND ...``), every match has a numeric value, so the
        order is just that number: the query is then driven by the field's index in
        order and stops after ``limit`` rows. Call :meth:`where` after this.

        Otherwise, when the first key is a custom field, the caller passes ``segment``
        (see :meth:`segmented`): one statement per segment of that key's order, each
        of which an index walks in order (:data:`SEGMENTS`). The parts keep the shape
        of the whole order (so a page token is the same in every segment); those that
        are constant in the segment are in :attr:`fixed`, its conditions in :attr:`conds`.
        """
        source = f"{self.table(VERSIONS)} AS v"
        parts: list[Part] = []
        first = self.resolved[keys[0].field] if keys else None
        leaf = _numeric_condition(node, keys[0].field) if keys and first and first.kind == "field" else None
        id_expr = "v.id"
        if leaf is not None and first is not None:
            source += (
                f" JOIN {self.table(FIELDS)} AS order_0"
                f" ON order_0.version_id = v.id AND order_0.key = {self.params.bind(first.key)}"
            )
            self._driving = leaf
            parts.append(("order_0.num", keys[0].descending))
            keys = keys[1:]
            id_expr = "order_0.version_id"
        elif segment is not None and first is not None and first.kind == "field":
            source, id_expr = self._segment(source, first.key, keys[0].descending, segment, parts)
            keys = keys[1:]
        for i, key in enumerate(keys, start=1 if parts else 0):
            target = self.resolved[key.field]
            desc = key.descending
            alias = f"order_{i}"
            if target.kind == "column":
                col, kind = COLUMNS[target.key]
                parts.append((self.text(col) if kind == "text" else col, desc))
            elif target.kind == "version":
                parsed = "CASE WHEN v.parsed IS TRUE THEN 1 ELSE 0 END"
                sort = f"coalesce(v.sort_key, {self.params.bind(b'')})"
                parts += [(parsed, desc), (sort, desc)]
                # parsed is never NULL and sort_key is NULL exactly when parsed is false (index/common.py's
                # record_row), so the bare columns sort alike, and on them ORDER BY walks
                # ix_modelkeep_versions_order instead of sorting every version of the model.
                self.sort_as.update({parsed: "v.parsed", sort: "v.sort_key"})
            elif target.kind == "field":
                source += (
                    f" LEFT OUTER JOIN {self.table(FIELDS)} AS {alias}"
                    f" ON {alias}.version_id = v.id AND {alias}.key = {self.params.bind(target.key)}"
                )
                rank = f"CASE WHEN {alias}.num IS NOT NULL THEN 0 WHEN {alias}.str IS NOT NULL THEN 1 ELSE 2 END"
                parts += [
                    (rank, False),
                    (f"coalesce({alias}.num, 0.0)", desc),
                    (self.text(f"coalesce({alias}.str, '')"), desc),
                ]
            elif target.kind == "tag":
                source += (
                    f" LEFT OUTER JOIN {self.table(TAGS)} AS {alias}"
                    f" ON {alias}.model_name = v.model_name AND {alias}.version = v.version"
                    f" AND {alias}.key = {self.params.bind(target.key)}"
                )
                parts += [
                    (f"CASE WHEN {alias}.value IS NOT NULL THEN 0 ELSE 1 END", False),
                    (self.text(f"coalesce({alias}.value, '')"), desc),
                ]
            else:
                raise FilterError(f"cannot order by {key.field!r}: a version may have several aliases")
        parts.append((id_expr, False))
        return source, parts

    def _segment(self, source: str, key: str, desc: bool, segment: int, parts: list[Part]) -> tuple[str, str]:
        """Join and order for one segment of a custom field's order; returns (source, id expression).

        The three parts of the field's order are (rank, number, string); in segment
        ``s`` the rank is ``s`` and the parts that segment lacks are constants.
        """
        k = self.params.bind(key)
        if segment == SEGMENT_MISSING:
            self.conds.append(
                f"NOT EXISTS (SELECT 1 FROM {self.table(FIELDS)} AS f WHERE f.version_id = v.id AND f.key = {k})"
            )
            self.fixed.update({0: SEGMENT_MISSING, 1: 0.0, 2: ""})
            parts += [("NULL", False), ("NULL", desc), ("NULL", desc)]
            return source, "v.id"
        source += f" JOIN {self.table(FIELDS)} AS order_0 ON order_0.version_id = v.id AND order_0.key = {k}"
        if not self.postgres:  # PostgreSQL plans IN and EXISTS alike, from its statistics
            self._probe = "order_0.version_id"
        if segment == SEGMENT_NUMBERS:
            self.conds.append("order_0.num IS NOT NULL")
            self.fixed.update({0: SEGMENT_NUMBERS, 2: ""})
            parts += [("NULL", False), ("order_0.num", desc), ("NULL", desc)]
        else:
            self.conds.append("order_0.str IS NOT NULL")
            self.fixed.update({0: SEGMENT_STRINGS, 1: 0.0})
            parts += [("NULL", False), ("NULL", desc), (self.text("order_0.str"), desc)]
        return source, "order_0.version_id"


def _numeric_condition(node: Node | None, name: str) -> Compare | None:
    """A top-level ``name <op> <number>`` condition of ``node``, if it has one."""
    items = node.items if isinstance(node, And) else (node,) if node is not None else ()
    for item in items:
        if isinstance(item, Compare) and item.field == name and item.op in _OPS and not isinstance(item.value, str):
            return item
    return None


def after(parts: list[Part], last: list[Any], params: Params) -> str:
    """Rows strictly after the row whose order values were ``last`` (keyset pagination)."""
    bound = [params.bind(value) for value in last]
    ors = []
    for i, (expr, desc) in enumerate(parts):
        step = [f"{parts[j][0]} = {bound[j]}" for j in range(i)] + [f"{expr} {'<' if desc else '>'} {bound[i]}"]
        ors.append("(" + " AND ".join(step) + ")")
    return "(" + " OR ".join(ors) + ")"


def order_clause(parts: list[Part], sort_as: dict[str, str] | None = None) -> str:
    """The ``ORDER BY`` list of ``parts``, each spelled as ``sort_as`` says when it has an
    equivalent that an index can deliver in order (:attr:`Compiler.sort_as`)."""
    spell = sort_as or {}
    return ", ".join(f"{spell.get(expr, expr)} {'DESC' if desc else 'ASC'}" for expr, desc in parts)


def _number(value: Value) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    assert not isinstance(value, str)
    return float(value)


def _check_types(field: str, kind: str, values: tuple[Value, ...], node: Leaf) -> None:
    if isinstance(node, Compare) and node.op in ("LIKE", "ILIKE") and kind != "text":
        raise FilterError(f"{field} {node.op}: {field} is a number; LIKE and ILIKE match text")
    for value in values:
        if kind == "text" and not isinstance(value, str):
            raise FilterError(f"{field} holds text: compare it with a quoted string, not {value!r}")
        if kind == "number" and isinstance(value, str):
            raise FilterError(f"{field} is a number: compare it with a number, not {value!r}")


def _pattern_parts(pattern: str) -> list[tuple[str, str]]:
    """A LIKE pattern as ("any"|"one"|"lit", char) parts; a backslash escapes the next character."""
    parts: list[tuple[str, str]] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            parts.append(("lit", pattern[i + 1]))
            i += 2
            continue
        parts.append(("any", "") if ch == "%" else ("one", "") if ch == "_" else ("lit", ch))
        i += 1
    return parts


def _render_like(parts: list[tuple[str, str]]) -> str:
    out = []
    for kind, ch in parts:
        if kind == "any":
            out.append("%")
        elif kind == "one":
            out.append("_")
        else:
            out.append("\\" + ch if ch in "%_\\" else ch)
    return "".join(out)


def _render_glob(parts: list[tuple[str, str]]) -> str:
    out = []
    for kind, ch in parts:
        if kind == "any":
            out.append("*")
        elif kind == "one":
            out.append("?")
        else:
            out.append(f"[{ch}]" if ch in "*?[" else ch)
    return "".join(out)
