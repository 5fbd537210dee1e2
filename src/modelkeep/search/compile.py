"""Filter AST -> SQLAlchemy Core, identical in meaning on SQLite and PostgreSQL.

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

Every value reaches the database as a bound parameter.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    LargeBinary,
    and_,
    case,
    exists,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)

from ..errors import FilterError
from ..index.schema import aliases, fields, tags, versions
from ..versions import sort_key
from .grammar import And, Compare, In, IsNull, Leaf, Node, Not, Or, OrderKey, Value

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
#: Built-in fields stored in their own columns: (column, "text" or "number").
COLUMNS: dict[str, tuple[Any, str]] = {
    "model_name": (versions.c.model_name, "text"),
    "model_type": (versions.c.model_type, "text"),
    "format": (versions.c.format, "text"),
    "created_at": (versions.c.created_at, "text"),
    "size": (versions.c.size, "number"),
}
BUILTINS = (*COLUMNS, "version", "alias")
_ASCII_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ASCII_FOLD = str.maketrans(_ASCII_UPPER, _ASCII_UPPER.lower())


@dataclass(frozen=True)
class Resolved:
    """What a field name in a filter refers to: ``kind`` is column, version, alias, tag or field."""

    kind: str
    key: str


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
    raise FilterError(
        f"unknown field {name!r}: no version has it; use a metric or custom field given at save, "
        f"params.<name>, tags.<key>, or one of {', '.join(BUILTINS)}"
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
    """Turns filters and order keys into SQL for one dialect, given resolved field names."""

    def __init__(self, dialect: str, resolved: dict[str, Resolved]) -> None:
        self.postgres = dialect == "postgresql"
        self.resolved = resolved
        # The filter condition that ``order`` turned into its driving join (see there).
        self._driving: tuple[Compare, Any] | None = None

    # -- helpers -------------------------------------------------------------------
    def text(self, expr: Any) -> Any:
        """``expr`` compared by code point on both databases."""
        return expr.collate("C") if self.postgres else expr

    def like(self, expr: Any, pattern: str, fold: bool) -> ColumnElement[bool]:
        parts = _pattern_parts(pattern.translate(_ASCII_FOLD) if fold else pattern)
        if self.postgres:
            if fold:
                expr = func.translate(expr, _ASCII_UPPER, _ASCII_UPPER.lower())
            return self.text(expr).like(_render_like(parts), escape="\\")
        if fold:
            expr = func.lower(expr)  # SQLite's lower() folds ASCII letters only
        return expr.op("GLOB")(_render_glob(parts))

    def compare_text(self, expr: Any, op: str, value: str) -> ColumnElement[bool]:
        if op in ("LIKE", "ILIKE"):
            return self.like(expr, value, op == "ILIKE")
        return _OPS[op](self.text(expr), value)

    # -- filters -------------------------------------------------------------------
    def where(self, node: Node) -> ColumnElement[bool]:
        if isinstance(node, And):
            return and_(*(self.where(i) for i in node.items))
        if isinstance(node, Or):
            return or_(*(self.where(i) for i in node.items))
        if isinstance(node, Not):
            return not_(self.where(node.item))
        target = self.resolved[node.field]
        method: Callable[[Leaf, str], ColumnElement[bool]] = getattr(self, "_" + target.kind)
        return method(node, target.key)

    def _column(self, node: Leaf, key: str) -> ColumnElement[bool]:
        col, kind = COLUMNS[key]
        if isinstance(node, IsNull):
            return col.isnot(None) if node.negated else col.is_(None)
        values = node.values if isinstance(node, In) else (node.value,)
        _check_types(node.field, kind, values, node)
        if isinstance(node, In):
            return self.text(col).in_(values) if kind == "text" else col.in_([_number(x) for x in values])
        assert isinstance(node, Compare)
        if kind == "text":
            return self.compare_text(col, node.op, str(node.value))
        return _OPS[node.op](col, _number(node.value))

    def _version(self, node: Leaf, key: str) -> ColumnElement[bool]:
        v = versions.c
        if isinstance(node, IsNull):
            return v.version.isnot(None) if node.negated else v.version.is_(None)
        values = node.values if isinstance(node, In) else (node.value,)
        _check_types("version", "text", values, node)
        if isinstance(node, In):
            return self.text(v.version).in_(values)
        assert isinstance(node, Compare)
        if node.op in ("=", "!=", "LIKE", "ILIKE"):
            return self.compare_text(v.version, node.op, str(node.value))
        bound = sort_key(str(node.value))
        if bound is None:
            raise FilterError(
                f'version {node.op} {node.value!r}: ordering needs a version such as "1.10.0" (N.N.N[-pre])'
            )
        if node.op in (">", ">="):
            return and_(v.parsed.is_(True), _OPS[node.op](v.sort_key, bound))
        return or_(v.parsed.is_(False), _OPS[node.op](v.sort_key, bound))

    def _related(self, node: Leaf, table: Any, value_col: Any, key_cond: Any) -> ColumnElement[bool]:
        """EXISTS over rows of ``table`` belonging to the version (tags, aliases)."""
        link = and_(table.c.model_name == versions.c.model_name, table.c.version == versions.c.version, key_cond)
        if isinstance(node, IsNull):
            found = exists().where(link)
            return found if node.negated else ~found
        values = node.values if isinstance(node, In) else (node.value,)
        _check_types(node.field, "text", values, node)
        if isinstance(node, In):
            cond = self.text(value_col).in_(values)
        else:
            assert isinstance(node, Compare)
            cond = self.compare_text(value_col, node.op, str(node.value))
        return exists().where(link, cond)

    def _tag(self, node: Leaf, key: str) -> ColumnElement[bool]:
        return self._related(node, tags, tags.c.value, tags.c.key == key)

    def _alias(self, node: Leaf, key: str) -> ColumnElement[bool]:
        return self._related(node, aliases, aliases.c.alias, true())

    def _field(self, node: Leaf, key: str) -> ColumnElement[bool]:
        if self._driving is not None and node is self._driving[0]:
            assert isinstance(node, Compare)
            return _OPS[node.op](self._driving[1].c.num, _number(node.value))
        f = fields.c
        matching = select(f.version_id).where(f.key == key)
        if isinstance(node, IsNull):
            found = versions.c.id.in_(matching)
            return found if node.negated else ~found
        if isinstance(node, In):
            numbers = [_number(x) for x in node.values if not isinstance(x, str)]
            strings = [x for x in node.values if isinstance(x, str)]
            conds = ([f.num.in_(numbers)] if numbers else []) + ([self.text(f.str).in_(strings)] if strings else [])
            return versions.c.id.in_(matching.where(or_(*conds)))
        assert isinstance(node, Compare)
        if isinstance(node.value, str):
            cond = self.compare_text(f.str, node.op, node.value)
        elif node.op in ("LIKE", "ILIKE"):
            raise FilterError(f"{node.field} {node.op} needs a quoted pattern")  # pragma: no cover - parser
        else:
            cond = _OPS[node.op](f.num, _number(node.value))
        return versions.c.id.in_(matching.where(cond))

    # -- ordering ------------------------------------------------------------------
    def order(
        self, keys: list[OrderKey], source: FromClause, node: Node | None = None
    ) -> tuple[FromClause, list[tuple[Any, bool]]]:
        """Join what ``keys`` need onto ``source``; return it with (expression, descending) pairs.

        The last pair is always the version's unique id, so the order is total.

        When the first key is a custom field that the filter (``node``) requires to be
        a number (``accuracy > 0.9 AND ...``), every match has a numeric value, so the
        order is just that number: the query is then driven by the field's index in
        order and stops after ``limit`` rows. Call :meth:`where` after this.
        """
        parts: list[tuple[Any, bool]] = []
        first = self.resolved[keys[0].field] if keys else None
        leaf = _numeric_condition(node, keys[0].field) if keys and first and first.kind == "field" else None
        if leaf is not None and first is not None:
            drive = fields.alias("order_0")
            source = source.join(drive, and_(drive.c.version_id == versions.c.id, drive.c.key == first.key))
            self._driving = (leaf, drive)
            parts.append((drive.c.num, keys[0].descending))
            keys = keys[1:]
        for i, key in enumerate(keys, start=1 if leaf is not None else 0):
            target = self.resolved[key.field]
            desc = key.descending
            if target.kind == "column":
                col, kind = COLUMNS[target.key]
                parts.append((self.text(col) if kind == "text" else col, desc))
            elif target.kind == "version":
                parts += [
                    (case((versions.c.parsed.is_(True), 1), else_=0), desc),
                    (func.coalesce(versions.c.sort_key, literal(b"", LargeBinary)), desc),
                ]
            elif target.kind == "field":
                fo = fields.alias(f"order_{i}")
                source = source.outerjoin(fo, and_(fo.c.version_id == versions.c.id, fo.c.key == target.key))
                rank = case((fo.c.num.isnot(None), 0), (fo.c.str.isnot(None), 1), else_=2)
                parts += [
                    (rank, False),
                    (func.coalesce(fo.c.num, 0.0), desc),
                    (self.text(func.coalesce(fo.c.str, "")), desc),
                ]
            elif target.kind == "tag":
                to = tags.alias(f"order_{i}")
                source = source.outerjoin(
                    to,
                    and_(
                        to.c.model_name == versions.c.model_name,
                        to.c.version == versions.c.version,
                        to.c.key == target.key,
                    ),
                )
                parts += [
                    (case((to.c.value.isnot(None), 0), else_=1), False),
                    (self.text(func.coalesce(to.c.value, "")), desc),
                ]
            else:
                raise FilterError(f"cannot order by {key.field!r}: a version may have several aliases")
        parts.append((self._driving[1].c.version_id if self._driving else versions.c.id, False))
        return source, parts


def _numeric_condition(node: Node | None, name: str) -> Compare | None:
    """A top-level ``name <op> <number>`` condition of ``node``, if it has one."""
    items = node.items if isinstance(node, And) else (node,) if node is not None else ()
    for item in items:
        if isinstance(item, Compare) and item.field == name and item.op in _OPS and not isinstance(item.value, str):
            return item
    return None


def after(parts: list[tuple[Any, bool]], last: list[Any]) -> ColumnElement[bool]:
    """Rows strictly after the row whose order values were ``last`` (keyset pagination)."""
    ors = []
    for i, (expr, desc) in enumerate(parts):
        step = expr < last[i] if desc else expr > last[i]
        ors.append(and_(*(parts[j][0] == last[j] for j in range(i)), step))
    return or_(*ors)


def _number(value: Value) -> float | int:
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
