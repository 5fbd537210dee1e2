"""The search filter language: tokenizer, recursive-descent parser, AST and printer.

Grammar (keywords are case-insensitive)::

    filter     := or_expr
    or_expr    := and_expr ("OR" and_expr)*
    and_expr   := not_expr ("AND" not_expr)*
    not_expr   := "NOT" not_expr | "(" or_expr ")" | condition
    condition  := field op value
                | field ("LIKE" | "ILIKE") string
                | field "IN" "(" value ("," value)* ")"
                | field "IS" ["NOT"] "NULL"
    op         := "=" | "!=" | "<" | "<=" | ">" | ">="
    value      := number | string | "TRUE" | "FALSE"
    field      := name ("." name)* | `any text`
    string     := "..." | '...'          (backslash escapes the quote and itself)
    number     := [-+]digits[.digits][e[-+]digits]

``order_by`` is a comma-separated list (or a Python list) of ``field``,
``-field``, ``field ASC`` or ``field DESC``.

Errors raise :class:`~modelkeep.errors.FilterError` with the 0-based position
and what was expected there. Which field names exist is checked later, against
the registry (see :mod:`modelkeep.search.compile`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import FilterError

Value = float | int | str | bool
COMPARISONS = ("=", "!=", "<", "<=", ">", ">=")
PATTERN_OPS = ("LIKE", "ILIKE")
KEYWORDS = frozenset({"AND", "OR", "NOT", "IN", "IS", "NULL", "LIKE", "ILIKE", "TRUE", "FALSE", "ASC", "DESC"})
MAX_FILTER_LENGTH = 10_000
MAX_DEPTH = 50


# -- AST ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Compare:
    """``field op value`` where ``op`` is one of :data:`COMPARISONS`, ``LIKE`` or ``ILIKE``."""

    field: str
    op: str
    value: Value


@dataclass(frozen=True)
class In:
    """``field IN (values...)``."""

    field: str
    values: tuple[Value, ...]


@dataclass(frozen=True)
class IsNull:
    """``field IS NULL`` (``negated``: ``IS NOT NULL``)."""

    field: str
    negated: bool = False


@dataclass(frozen=True)
class Not:
    item: Node


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


Leaf = Compare | In | IsNull
Node = Compare | In | IsNull | Not | And | Or


@dataclass(frozen=True)
class OrderKey:
    """One ``order_by`` entry."""

    field: str
    descending: bool = False


# -- tokens ------------------------------------------------------------------------
@dataclass(frozen=True)
class Token:
    kind: str  # "name", "quoted_name", "string", "number", "op", "(", ")", ",", "keyword", "end"
    text: str
    pos: int
    value: Value | None = None


_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
_SPACE = re.compile(r"\s+")


def _describe(tok: Token) -> str:
    return "the end of the filter" if tok.kind == "end" else repr(tok.text)


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens; :class:`FilterError` on a character that starts none."""
    if not isinstance(text, str):
        raise FilterError(f"a filter must be a string, not {type(text).__name__}", 0)
    if len(text) > MAX_FILTER_LENGTH:
        raise FilterError(f"the filter is longer than {MAX_FILTER_LENGTH} characters", MAX_FILTER_LENGTH)
    out: list[Token] = []
    i = 0
    while i < len(text):
        m = _SPACE.match(text, i)
        if m:
            i = m.end()
            continue
        ch = text[i]
        if ch in "\"'":
            value, end = _read_quoted(text, i, ch, "string")
            out.append(Token("string", text[i:end], i, value))
            i = end
        elif ch == "`":
            value, end = _read_quoted(text, i, "`", "quoted field name")
            if not value:
                raise FilterError(f"empty field name at position {i}: expected a name between the backquotes", i)
            out.append(Token("quoted_name", text[i:end], i, value))
            i = end
        elif ch in "(),":
            out.append(Token(ch, ch, i))
            i += 1
        elif text.startswith(("<=", ">=", "!=", "<>"), i):
            op = "!=" if text[i : i + 2] == "<>" else text[i : i + 2]
            out.append(Token("op", op, i))
            i += 2
        elif ch in "=<>":
            out.append(Token("op", ch, i))
            i += 1
        elif (m := _NUMBER.match(text, i)) and not (ch in "+-" and not m.group(1)):
            number = _number(m.group(0), i)
            out.append(Token("number", m.group(0), i, number))
            i = m.end()
        elif m := _NAME.match(text, i):
            word = m.group(0)
            if word.upper() in KEYWORDS:
                out.append(Token("keyword", word.upper(), i))
            else:
                out.append(Token("name", word, i, word))
            i = m.end()
        else:
            raise FilterError(
                f"unexpected character {ch!r} at position {i}: expected a field, a value, an operator or a parenthesis",
                i,
            )
    out.append(Token("end", "", len(text)))
    return out


def _number(text: str, pos: int) -> float | int:
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    value = float(text)
    if not math.isfinite(value):
        raise FilterError(f"number {text!r} at position {pos} is out of range", pos)
    return value


def _read_quoted(text: str, start: int, quote: str, what: str) -> tuple[str, int]:
    chars: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in (quote, "\\"):
            chars.append(text[i + 1])
            i += 2
        elif ch == quote:
            return "".join(chars), i + 1
        else:
            chars.append(ch)
            i += 1
    raise FilterError(f"unterminated {what} starting at position {start}: expected a closing {quote}", start)


# -- parser ------------------------------------------------------------------------
class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def fail(self, expected: str) -> FilterError:
        tok = self.tok
        message = f"invalid filter at position {tok.pos}: expected {expected}, found {_describe(tok)}"
        return FilterError(message, tok.pos)

    def keyword(self, *words: str) -> str | None:
        if self.tok.kind == "keyword" and self.tok.text in words:
            self.i += 1
            return self.tokens[self.i - 1].text
        return None

    def expect(self, kind: str, expected: str) -> Token:
        if self.tok.kind != kind:
            raise self.fail(expected)
        self.i += 1
        return self.tokens[self.i - 1]

    def parse(self) -> Node:
        node = self.or_expr()
        if self.tok.kind != "end":
            raise self.fail("AND, OR or the end of the filter")
        return node

    def or_expr(self) -> Node:
        items = [self.and_expr()]
        while self.keyword("OR"):
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_expr(self) -> Node:
        items = [self.not_expr()]
        while self.keyword("AND"):
            items.append(self.not_expr())
        return items[0] if len(items) == 1 else And(tuple(items))

    def not_expr(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"less nesting (at most {MAX_DEPTH} levels of NOT and parentheses)")
        try:
            if self.keyword("NOT"):
                return Not(self.not_expr())
            if self.tok.kind == "(":
                self.i += 1
                node = self.or_expr()
                self.expect(")", "')' or AND/OR")
                return node
            return self.condition()
        finally:
            self.depth -= 1

    def field(self) -> str:
        tok = self.tok
        if tok.kind not in ("name", "quoted_name"):
            raise self.fail("a field name (such as accuracy, params.max_depth or tags.dataset)")
        self.i += 1
        return str(tok.value)

    def value(self) -> Value:
        tok = self.tok
        if tok.kind in ("string", "number"):
            self.i += 1
            assert tok.value is not None
            return tok.value
        if self.keyword("TRUE"):
            return True
        if self.keyword("FALSE"):
            return False
        raise self.fail("a value (a number, a quoted string, TRUE or FALSE)")

    def condition(self) -> Node:
        name = self.field()
        if self.tok.kind == "op":
            op = self.tok.text
            self.i += 1
            return Compare(name, op, self.value())
        pattern_op = self.keyword(*PATTERN_OPS)
        if pattern_op:
            if self.tok.kind != "string":
                raise self.fail(f"a quoted pattern after {pattern_op} (% matches any text, _ one character)")
            self.i += 1
            return Compare(name, pattern_op, str(self.tokens[self.i - 1].value))
        if self.keyword("IN"):
            self.expect("(", "'(' after IN")
            values = [self.value()]
            while self.tok.kind == ",":
                self.i += 1
                values.append(self.value())
            self.expect(")", "',' or ')' to close the IN list")
            return In(name, tuple(values))
        if self.keyword("IS"):
            negated = self.keyword("NOT") is not None
            if not self.keyword("NULL"):
                raise self.fail("NULL after IS" + (" NOT" if negated else "") + "")
            return IsNull(name, negated)
        raise self.fail("an operator (=, !=, <, <=, >, >=, LIKE, ILIKE, IN, IS NULL)")


def parse_filter(text: str) -> Node:
    """Parse a filter string into its AST; :class:`FilterError` if it is malformed."""
    if isinstance(text, str) and not text.strip():
        raise FilterError("the filter is empty: expected a condition such as accuracy > 0.9", 0)
    return _Parser(text).parse()


def parse_order_by(spec: str | list[str] | tuple[str, ...] | None) -> list[OrderKey]:
    """Parse ``"-accuracy, version"`` or ``["accuracy DESC", "version"]`` into order keys."""
    if spec is None:
        return []
    parts: list[str] = []
    for item in [spec] if isinstance(spec, str) else list(spec):
        if not isinstance(item, str):
            raise FilterError(f"order_by entries must be strings, not {type(item).__name__}", 0)
        parts.extend(item.split(",") if "`" not in item else [item])
    keys: list[OrderKey] = []
    for part in parts:
        text = part.strip()
        descending = text.startswith("-")
        body = text[1:].lstrip() if descending else text
        tokens = tokenize(body)
        if tokens[0].kind not in ("name", "quoted_name"):
            raise FilterError(
                f"order_by {part.strip()!r}: expected a field name, optionally prefixed by - or followed by ASC/DESC",
                tokens[0].pos,
            )
        direction = tokens[1]
        rest = 2
        if direction.kind == "keyword" and direction.text in ("ASC", "DESC") and not descending:
            descending = direction.text == "DESC"
        else:
            rest = 1
        if tokens[rest].kind != "end":
            raise FilterError(
                f"order_by {part.strip()!r}: expected ASC, DESC or the end after the field name, "
                f"found {_describe(tokens[rest])}",
                tokens[rest].pos,
            )
        keys.append(OrderKey(str(tokens[0].value), descending))
    return keys


# -- printer -----------------------------------------------------------------------
def _quote_name(name: str) -> str:
    if _NAME.fullmatch(name) and name.upper() not in KEYWORDS:
        return name
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def format_value(value: Value) -> str:
    """A literal as the filter language writes it."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unparse(node: Node) -> str:
    """The filter text for ``node``; ``parse_filter(unparse(node)) == node``."""
    if isinstance(node, Compare):
        return f"{_quote_name(node.field)} {node.op} {format_value(node.value)}"
    if isinstance(node, In):
        return f"{_quote_name(node.field)} IN ({', '.join(format_value(v) for v in node.values)})"
    if isinstance(node, IsNull):
        return f"{_quote_name(node.field)} IS {'NOT ' if node.negated else ''}NULL"
    if isinstance(node, Not):
        inner = unparse(node.item)
        return f"NOT ({inner})" if isinstance(node.item, (And, Or)) else f"NOT {inner}"
    joiner = " AND " if isinstance(node, And) else " OR "
    return joiner.join(f"({unparse(i)})" if isinstance(i, (And, Or)) else unparse(i) for i in node.items)
