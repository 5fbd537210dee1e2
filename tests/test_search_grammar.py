"""The filter parser: documented errors only, positions inside the text, exact round-trips."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelkeep import FilterError
from modelkeep.search.grammar import (
    And,
    Compare,
    In,
    IsNull,
    Node,
    Not,
    Or,
    OrderKey,
    parse_filter,
    parse_order_by,
    unparse,
)

TOKENS = ["accuracy", "tags.x", "`a b`", "AND", "OR", "NOT", "(", ")", ",", "=", "!=", "<", ">=", "IN", "IS", "NULL"]
TOKENS += ["LIKE", "ILIKE", "TRUE", "'s'", '"d"', "0.9", "-1", "1e3", "'", '"', "`", "\\", "!", "%", " ", "é"]


def _parses_or_explains(text: str) -> None:
    try:
        parse_filter(text)
    except FilterError as exc:
        assert exc.position is not None and 0 <= exc.position <= len(text)
        assert str(exc)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=60))
def test_random_text_only_raises_filter_error(text: str) -> None:
    _parses_or_explains(text)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=14).map(" ".join))
def test_token_soup_only_raises_filter_error(text: str) -> None:
    _parses_or_explains(text)


names = st.text(min_size=1, max_size=12) | st.sampled_from(["accuracy", "params.max_depth", "tags.data-set", "in"])
values = (
    st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
    | st.booleans()
)
leaves = (
    st.builds(Compare, names, st.sampled_from(["=", "!=", "<", "<=", ">", ">="]), values)
    | st.builds(Compare, names, st.sampled_from(["LIKE", "ILIKE"]), st.text(max_size=8))
    | st.builds(In, names, st.lists(values, min_size=1, max_size=4).map(tuple))
    | st.builds(IsNull, names, st.booleans())
)
trees = st.recursive(
    leaves,
    lambda inner: (
        st.builds(Not, inner)
        | st.lists(inner, min_size=2, max_size=3).map(lambda xs: And(tuple(xs)))
        | st.lists(inner, min_size=2, max_size=3).map(lambda xs: Or(tuple(xs)))
    ),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(trees)
def test_valid_trees_round_trip(node: Node) -> None:
    assert parse_filter(unparse(node)) == node


def test_precedence_and_case_insensitive_keywords() -> None:
    assert parse_filter("a = 1 or b = 2 and not c is null") == Or(
        (Compare("a", "=", 1), And((Compare("b", "=", 2), Not(IsNull("c")))))
    )
    assert parse_filter('x in (\'a\', "b\\"c", 2.5, true)') == In("x", ("a", 'b"c', 2.5, True))
    assert parse_filter("version >= '1.10.0'") == Compare("version", ">=", "1.10.0")


@pytest.mark.parametrize(
    ("text", "position", "expected"),
    [
        ("accuracy >", 10, "expected a value"),
        ("accuracy 0.9", 9, "expected an operator"),
        ("(a = 1", 6, "expected ')'"),
        ("a = 1 b = 2", 6, "expected AND, OR"),
        ("a IN 1", 5, "expected '('"),
        ("a IS 3", 5, "expected NULL"),
        ("a LIKE 3", 7, "expected a quoted pattern"),
        ("a = 'x", 4, "unterminated string"),
        ("= 1", 0, "expected a field name"),
        ("a ; 1", 2, "unexpected character ';'"),
        ("", 0, "empty"),
    ],
)
def test_errors_point_at_the_problem(text: str, position: int, expected: str) -> None:
    with pytest.raises(FilterError, match=re.escape(expected)) as err:
        parse_filter(text)
    assert err.value.position == position
    assert isinstance(err.value, ValueError)


def test_order_by_forms() -> None:
    assert parse_order_by("-accuracy, version") == [OrderKey("accuracy", True), OrderKey("version")]
    assert parse_order_by(["accuracy DESC", "size asc"]) == [OrderKey("accuracy", True), OrderKey("size")]
    assert parse_order_by("-`f1-score`") == [OrderKey("f1-score", True)]
    with pytest.raises(FilterError, match="expected ASC, DESC"):
        parse_order_by("accuracy sideways")
    with pytest.raises(FilterError, match="expected a field name"):
        parse_order_by("-")


def test_deep_nesting_is_refused_not_a_crash() -> None:
    with pytest.raises(FilterError, match="less nesting"):
        parse_filter("(" * 200 + "a = 1" + ")" * 200)
