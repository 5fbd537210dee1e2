"""Search conformance suite: the same data and the same answers on SQLite and PostgreSQL.

Covers ties, versions without a field (NULL), mixed int and float, numbers vs strings,
version ordering, aliases and tags, trashed versions, keyset pagination, and values that
try SQL injection. A property test compares every answer with a plain Python evaluation
of the filter (the oracle below) over the same small data set.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, insert, inspect, update

from modelkeep import FilterError, ModelNotFoundError, ModelPersistence
from modelkeep.index.schema import aliases, tags, versions
from modelkeep.search.grammar import And, Compare, In, IsNull, Node, Not, Or, OrderKey, unparse
from modelkeep.versions import sort_key

#: Also run through a registry server (conftest.pytest_generate_tests).
ALSO_OVER_HTTP = True

INJECTION = "x'); DROP TABLE modelkeep_versions; --"

# (model, version, custom fields) in save order; the position is the creation order.
DATA: list[tuple[str, str, dict[str, Any]]] = [
    ("churn", "1.0.0", {"accuracy": 0.9, "dataset": "v7", "model_params": {"max_depth": 5}}),
    ("churn", "1.2.0", {"accuracy": 1, "loss": 0.3, "dataset": "v7", "model_params": {"max_depth": 10}}),
    ("churn", "1.10.0", {"accuracy": 0.95, "dataset": "v6", "metrics": {"auc": 0.91}}),
    ("churn", "1.9.0", {"accuracy": 0.95, "dataset": "v7", "model_params": {"max_depth": 10}}),
    ("churn", "2.0.0-rc1", {"dataset": "V7", "note": 'it\'s "quoted" 100%'}),
    ("churn", "alpha", {"accuracy": "n/a", "dataset": "v7_b"}),
    ("churn", "3.0.0", {"accuracy": 0.99, "dataset": "v7"}),  # trashed below
    ("fraud", "1.0.0", {"accuracy": 0.9, "auc": 0.7, "flag": True}),
    ("fraud", "1.1.0", {"accuracy": 0.5, "auc": 0.7, "flag": False, "note": INJECTION}),
]
TRASHED = {("churn", "3.0.0")}
TAGS = {("churn", "1.2.0"): {"stage": "prod", "dataset": "v7"}, ("fraud", "1.1.0"): {"stage": "dev"}}
ALIASES = {("churn", "production"): "1.2.0", ("churn", "champion"): "1.2.0", ("fraud", "staging"): "1.0.0"}


def add_tag(p: ModelPersistence, model_name: str, version: str, key: str, value: str) -> None:
    """Tag rows written with SQLAlchemy Core (the lifecycle API replaces this after the merge)."""
    with p.index.engine.begin() as conn:
        conn.execute(insert(tags).values(model_name=model_name, version=version, key=key, value=value))


def add_alias(p: ModelPersistence, model_name: str, alias: str, version: str) -> None:
    with p.index.engine.begin() as conn:
        conn.execute(
            insert(aliases).values(model_name=model_name, alias=alias, version=version, updated_at="2026-01-01")
        )


def trash(p: ModelPersistence, model_name: str, version: str) -> None:
    with p.index.engine.begin() as conn:
        conn.execute(
            update(versions)
            .where(versions.c.model_name == model_name, versions.c.version == version)
            .values(deleted_at="2026-01-02T00:00:00+00:00")
        )


@dataclass
class Row:
    """One live version as the oracle sees it."""

    seq: int
    builtins: dict[str, Any]
    fields: dict[str, float | str]
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)

    @property
    def ident(self) -> tuple[str, str]:
        return (self.builtins["model_name"], self.builtins["version"])


def _flatten(out: dict[str, float | str], prefix: str, value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(out, f"{prefix}.{k}" if prefix else k, v)
    elif isinstance(value, (bool, int, float)):
        out[prefix] = float(value)
    elif isinstance(value, str):
        out[prefix] = value


def fill(p: ModelPersistence) -> list[Row]:
    rows = []
    for seq, (name, version, custom) in enumerate(DATA):
        p.save({"weights": [seq]}, name, version, **custom)
    for (name, version), kv in TAGS.items():
        for key, value in kv.items():
            add_tag(p, name, version, key, value)
    for (name, alias), version in ALIASES.items():
        add_alias(p, name, alias, version)
    for name, version in TRASHED:
        trash(p, name, version)
    for seq, (name, version, custom) in enumerate(DATA):
        if (name, version) in TRASHED:
            continue
        rec = p.get_version(name, version)
        assert rec.artifact is not None
        flat: dict[str, float | str] = {}
        for key, value in custom.items():
            _flatten(flat, "params" if key == "model_params" else key, value)
        rows.append(
            Row(
                seq,
                {
                    "model_name": name,
                    "version": version,
                    "model_type": rec.model_type,
                    "format": rec.artifact.format,
                    "size": rec.artifact.size,
                    "created_at": rec.created_at,
                },
                flat,
                TAGS.get((name, version), {}),
                sorted(a for (n, a), v in ALIASES.items() if n == name and v == version),
            )
        )
    return rows


@pytest.fixture
def registry(persistence: ModelPersistence) -> Iterator[tuple[ModelPersistence, list[Row]]]:
    yield persistence, fill(persistence)


def found(p: ModelPersistence, filter: str | Node | None, **kwargs: Any) -> list[tuple[str, str]]:
    return [(r.model_name, r.version) for r in p.search_versions(filter, limit=1000, **kwargs).items]


# -- the oracle ----------------------------------------------------------------------
def _like(value: str, pattern: str, fold: bool) -> bool:
    regex = ""
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            regex += re.escape(pattern[i + 1])
            i += 2
            continue
        regex += ".*" if ch == "%" else "." if ch == "_" else re.escape(ch)
        i += 1
    if fold:
        table = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
        value, regex = value.translate(table), regex.translate(table)
    return re.fullmatch(regex, value, re.DOTALL) is not None


def _holds(op: str, a: Any, b: Any) -> bool:
    if op in ("LIKE", "ILIKE"):
        return isinstance(a, str) and _like(a, b, op == "ILIKE")
    return bool({"=": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op])


def _same_type(stored: Any, literal: Any) -> tuple[bool, Any]:
    if isinstance(literal, str):
        return isinstance(stored, str), literal
    return isinstance(stored, float), float(literal)


def _values(row: Row, name: str) -> tuple[str, list[Any]]:
    """(kind, stored values) of a field for one row: kind is scalar, version or multi."""
    if name in row.builtins and name != "version":
        return "scalar", [row.builtins[name]]
    if name == "version":
        return "version", [row.builtins["version"]]
    if name == "alias":
        return "multi", row.aliases
    if name.startswith("tags."):
        return "multi", [row.tags[name[5:]]] if name[5:] in row.tags else []
    key = name if name in FIELD_KEYS or not name.startswith("metrics.") else name[8:]
    return "multi", [row.fields[key]] if key in row.fields else []


def oracle(node: Node, row: Row) -> bool:
    if isinstance(node, And):
        return all(oracle(i, row) for i in node.items)
    if isinstance(node, Or):
        return any(oracle(i, row) for i in node.items)
    if isinstance(node, Not):
        return not oracle(node.item, row)
    kind, stored = _values(row, node.field)
    if isinstance(node, IsNull):
        return bool(stored) == node.negated
    literals = node.values if isinstance(node, In) else (node.value,)
    op = "=" if isinstance(node, In) else node.op
    if kind == "version" and op in ("<", "<=", ">", ">="):
        mine, bound = sort_key(stored[0]), sort_key(str(literals[0]))
        return _holds(op, (mine is not None, mine or b""), (True, bound))
    for value in stored:
        plain = float(value) if isinstance(value, int) else value
        for literal in literals:
            ok, lit = _same_type(plain, literal)
            if ok and _holds(op, plain, lit):
                return True
    return False


def _order_value(row: Row, key: OrderKey) -> list[tuple[Any, bool]]:
    kind, stored = _values(row, key.field)
    if kind == "version":
        k = sort_key(stored[0])
        return [(k is not None, key.descending), (k or b"", key.descending)]
    if kind == "scalar":
        return [(stored[0], key.descending)]
    if not stored:
        return [(2, False), (0.0, key.descending), ("", key.descending)]
    value = stored[0]
    if isinstance(value, str):
        return [(1, False), (0.0, key.descending), (value, key.descending)]
    return [(0, False), (float(value), key.descending), ("", key.descending)]


def oracle_order(rows: list[Row], keys: list[OrderKey]) -> list[Row]:
    keys = keys or [OrderKey("model_name"), OrderKey("version")]

    def cmp(a: Row, b: Row) -> int:
        for (x, desc), (y, _) in zip(
            [c for k in keys for c in _order_value(a, k)] + [(a.seq, False)],
            [c for k in keys for c in _order_value(b, k)] + [(b.seq, False)],
            strict=True,
        ):
            if x != y:
                return (1 if x > y else -1) * (-1 if desc else 1)
        return 0

    return sorted(rows, key=functools.cmp_to_key(cmp))


# -- conformance: explicit cases -----------------------------------------------------
def test_numbers_ints_and_floats_compare_alike(registry: tuple[ModelPersistence, list[Row]]) -> None:
    p, _ = registry
    assert found(p, "accuracy = 1.0") == [("churn", "1.2.0")]
    assert found(p, "accuracy >= 0.95", order_by="-accuracy") == [
        ("churn", "1.2.0"),
        ("churn", "1.10.0"),  # tie with 1.9.0 at 0.95: the older one first
        ("churn", "1.9.0"),
    ]
    assert found(p, "flag = TRUE") == [("fraud", "1.0.0")]


def test_a_missing_field_is_null_and_never_compares(registry: tuple[ModelPersistence, list[Row]]) -> None:
    p, _ = registry
    assert found(p, "accuracy IS NULL") == [("churn", "2.0.0-rc1")]
    assert ("churn", "2.0.0-rc1") not in found(p, "accuracy != 0.5")
    assert ("churn", "2.0.0-rc1") in found(p, "NOT accuracy = 0.5")
    # Missing values sort last in both directions; numbers before strings.
    for order in ("accuracy", "-accuracy"):
        assert found(p, "model_name = 'churn'", order_by=order)[-2:] == [("churn", "alpha"), ("churn", "2.0.0-rc1")]


def test_strings_and_numbers_never_equal(registry: tuple[ModelPersistence, list[Row]]) -> None:
    p, _ = registry
    assert found(p, 'accuracy = "n/a"') == [("churn", "alpha")]
    assert found(p, 'accuracy = "0.9"') == []
    assert found(p, 'accuracy IN (0.5, "n/a")') == [("churn", "alpha"), ("fraud", "1.1.0")]


def test_version_ordering_is_semantic(registry: tuple[ModelPersistence, list[Row]]) -> None:
    p, _ = registry
    assert found(p, 'model_name = "churn" AND version >= "1.9.0"') == [
        ("churn", "1.9.0"),
        ("churn", "1.10.0"),
        ("churn", "2.0.0-rc1"),
    ]
    assert found(p, 'model_name = "churn" AND version < "1.2"') == [("churn", "alpha"), ("churn", "1.0.0")]
    assert [v for _, v in found(p, None, model_name="churn", order_by="-version")] == [
        "2.0.0-rc1",
        "1.10.0",
        "1.9.0",
        "1.2.0",
        "1.0.0",
        "alpha",
    ]
    with pytest.raises(FilterError, match="ordering needs a version"):
        found(p, 'version > "alpha"')


def test_tags_aliases_params_and_nested_fields(registry: tuple[ModelPersistence, list[Row]]) -> None:
    p, _ = registry
    assert found(p, 'tags.stage = "prod"') == [("churn", "1.2.0")]
    assert found(p, "tags.stage IS NULL", model_name="fraud") == [("fraud", "1.0.0")]
    assert found(p, 'alias = "production"') == [("churn", "1.2.0")]
    assert found(p, "alias IS NOT NULL") == [("churn", "1.2.0"), ("fraud", "1.0.0")]
    assert found(p, "params.max_depth <= 5") == [("churn", "1.0.0")]
    assert found(p, "metrics.auc > 0.9") == [("churn", "1.10.0")]
    assert found(p, "metrics.auc < 0.9") == []  # a stored "metrics.auc" key wins over "auc"
    assert found(p, "metrics.accuracy = 0.5") == [("fraud", "1.1.0")]  # metrics.X falls back to X
    page = p.search_versions('alias = "production"')
    assert page.items[0].aliases == ["champion", "production"]  # type: ignore[attr-defined]
    assert page.items[0].tags == {"dataset": "v7", "stage": "prod"}  # type: ignore[attr-defined]


def test_like_is_case_sensitive_and_ilike_folds_ascii(registry: tuple[ModelPersistence, list[Row]]) -> None:
    p, _ = registry
    assert found(p, 'dataset LIKE "v7%"') == [
        ("churn", "alpha"),
        ("churn", "1.0.0"),
        ("churn", "1.2.0"),
        ("churn", "1.9.0"),
    ]
    assert found(p, 'dataset ILIKE "V7"') == [
        ("churn", "1.0.0"),
        ("churn", "1.2.0"),
        ("churn", "1.9.0"),
        ("churn", "2.0.0-rc1"),
    ]
    assert found(p, r'dataset LIKE "v7\_%"') == [("churn", "alpha")]
    assert found(p, r'note LIKE "%100\%"') == [("churn", "2.0.0-rc1")]


def test_trashed_versions_are_never_found(registry: tuple[ModelPersistence, list[Row]]) -> None:
    p, _ = registry
    assert found(p, "accuracy > 0.98") == [("churn", "1.2.0")]
    assert p.best_version("churn", "accuracy").version == "1.2.0"


def test_best_version_and_search_models(registry: tuple[ModelPersistence, list[Row]]) -> None:
    p, _ = registry
    assert p.best_version("churn", "accuracy", filter='dataset = "v7"').version == "1.2.0"
    assert p.best_version("churn", "accuracy", "min").version == "1.0.0"
    assert p.best_version("churn", "accuracy", filter="accuracy < 1").version == "1.10.0"  # tie: oldest
    with pytest.raises(ModelNotFoundError, match="numeric 'loss'"):
        p.best_version("fraud", "loss")
    assert [s.name for s in p.search_models("flag = TRUE").items] == ["fraud"]
    first = p.search_models(None, limit=1)
    assert [s.name for s in first.items] == ["churn"]
    second = p.search_models(None, limit=1, page_token=first.next_page_token)
    assert [s.name for s in second.items] == ["fraud"] and second.next_page_token is None


def test_compare_accepts_a_filter(registry: tuple[ModelPersistence, list[Row]]) -> None:
    p, _ = registry
    frame = p.compare_versions("churn", filter='dataset = "v7"')
    assert list(frame["version"]) == ["1.0.0", "1.2.0", "1.9.0"]
    assert list(p.compare_versions("churn", ["1.0.0", "1.10.0"], filter="accuracy > 0.9")["version"]) == ["1.10.0"]


def test_unknown_fields_and_bad_filters_are_errors(registry: tuple[ModelPersistence, list[Row]]) -> None:
    p, _ = registry
    with pytest.raises(FilterError, match="unknown field 'acuracy'"):
        found(p, "acuracy > 0.9")
    with pytest.raises(FilterError, match=r"unknown field 'tags\.nope'"):
        found(p, 'tags.nope = "x"')
    with pytest.raises(FilterError, match="position 11: expected a value") as err:
        found(p, "accuracy > AND")
    assert err.value.position == 11
    with pytest.raises(FilterError, match="holds text"):
        found(p, "model_name = 1")
    with pytest.raises(FilterError, match="page_token"):
        p.search_versions("accuracy > 0", page_token="garbage")


def test_pages_visit_every_match_once_even_when_rows_arrive(registry: tuple[ModelPersistence, list[Row]]) -> None:
    p, _ = registry
    expected = found(p, "accuracy >= 0", order_by="-accuracy")
    seen: list[tuple[str, str]] = []
    page = p.search_versions("accuracy >= 0", order_by="-accuracy", limit=2)
    seen += [(r.model_name, r.version) for r in page.items]
    first_token = page.next_page_token
    p.save({"late": 1}, "churn", "9.0.0", accuracy=0.95)  # a new tie, inserted mid-way
    while page.next_page_token:
        page = p.search_versions("accuracy >= 0", order_by="-accuracy", limit=2, page_token=page.next_page_token)
        seen += [(r.model_name, r.version) for r in page.items]
    assert len(seen) == len(set(seen))
    assert set(expected) <= set(seen) <= set(expected) | {("churn", "9.0.0")}
    with pytest.raises(FilterError, match="different search"):
        p.search_versions("accuracy >= 1", order_by="-accuracy", limit=2, page_token=first_token)


def test_values_are_bound_not_spliced(registry: tuple[ModelPersistence, list[Row]]) -> None:
    p, _ = registry
    statements: list[str] = []

    def capture(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(p.index.engine, "before_cursor_execute", capture)
    quoted = INJECTION.replace("\\", "\\\\").replace('"', '\\"')
    try:
        assert found(p, f'note = "{quoted}"') == [("fraud", "1.1.0")]
        assert found(p, "note = '" + INJECTION.replace("'", "\\'") + "'") == [("fraud", "1.1.0")]
        assert found(p, 'note LIKE "%DROP TABLE%" OR tags.stage = "\'; DELETE FROM modelkeep_tags; --"') == [
            ("fraud", "1.1.0")
        ]
        with pytest.raises(FilterError, match="unknown field"):
            found(p, "`x'; DROP TABLE modelkeep_versions; --` = 1")
    finally:
        event.remove(p.index.engine, "before_cursor_execute", capture)
    assert statements and not any("DROP" in s or "DELETE" in s for s in statements)
    assert "modelkeep_versions" in inspect(p.index.engine).get_table_names(schema=p.index.schema)
    assert len(found(p, None)) == len(DATA) - len(TRASHED)


# -- property: SQL answers == the Python oracle ----------------------------------------
FIELD_KEYS = {"accuracy", "loss", "dataset", "note", "auc", "flag", "metrics.auc", "params.max_depth"}
CUSTOM = ["accuracy", "metrics.accuracy", "loss", "dataset", "note", "auc", "metrics.auc", "flag", "params.max_depth"]
TEXT = ["model_name", "model_type", "format", "created_at", "tags.stage", "tags.dataset", "alias"]
STRINGS = ["v7", "V7", "v6", "v7_b", "prod", "dev", "n/a", "churn", "fraud", "dict", "joblib", "production", "2026", ""]
PATTERNS = ["v%", "%7", "V_", "%", "_", "v7\\_%", "%b", "%'%", "CH%", "%100\\%"]
NUMBERS = [0, 0.3, 0.5, 0.7, 0.9, 0.95, 1, 1.0, 5, 10, -1, 1e9]
VERSIONS = ["1.0.0", "1.2", "1.9.0", "1.10.0", "2.0.0-rc1", "2.0.0", "0.1"]
ORDERABLE = [*CUSTOM, "model_name", "model_type", "created_at", "size", "version", "tags.stage"]

numbers = st.sampled_from(NUMBERS) | st.booleans()
strings = st.sampled_from(STRINGS)


def _leaf(name: str) -> st.SearchStrategy[Node]:
    ops = st.sampled_from(["=", "!=", "<", "<=", ">", ">="])
    null = st.builds(IsNull, st.just(name), st.booleans())
    if name == "version":
        return (
            st.builds(Compare, st.just(name), ops, st.sampled_from(VERSIONS))
            | st.builds(In, st.just(name), st.lists(st.sampled_from(VERSIONS), min_size=1, max_size=3).map(tuple))
            | st.builds(Compare, st.just(name), st.sampled_from(["LIKE", "ILIKE"]), st.sampled_from(PATTERNS))
            | null
        )
    values = numbers if name == "size" else strings if name in TEXT else numbers | strings
    out = st.builds(Compare, st.just(name), ops, values) | null
    out |= st.builds(In, st.just(name), st.lists(values, min_size=1, max_size=3).map(tuple))
    if name != "size":
        out |= st.builds(Compare, st.just(name), st.sampled_from(["LIKE", "ILIKE"]), st.sampled_from(PATTERNS))
    return out


leaves = st.sampled_from([*CUSTOM, *TEXT, "size", "version"]).flatmap(_leaf)
filters = st.recursive(
    leaves,
    lambda inner: (
        st.builds(Not, inner)
        | st.lists(inner, min_size=2, max_size=3).map(lambda xs: And(tuple(xs)))
        | st.lists(inner, min_size=2, max_size=3).map(lambda xs: Or(tuple(xs)))
    ),
    max_leaves=6,
)
orders = st.lists(st.builds(OrderKey, st.sampled_from(ORDERABLE), st.booleans()), max_size=2)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(node=filters, keys=orders, page_size=st.integers(1, 4), as_text=st.booleans())
def test_sql_matches_the_python_oracle(
    registry: tuple[ModelPersistence, list[Row]], node: Node, keys: list[OrderKey], page_size: int, as_text: bool
) -> None:
    p, rows = registry
    expected = [r.ident for r in oracle_order([r for r in rows if oracle(node, r)], keys)]
    order_by = [f"`{k.field}` {'DESC' if k.descending else 'ASC'}" for k in keys] or None
    got: list[tuple[str, str]] = []
    token = None
    while True:
        page = p.search_versions(
            unparse(node) if as_text else node, order_by=order_by, limit=page_size, page_token=token
        )
        got += [(r.model_name, r.version) for r in page.items]
        token = page.next_page_token
        if token is None:
            break
    assert got == expected, unparse(node)


def test_oracle_is_not_trivial() -> None:
    # Guard against an oracle that agrees with everything by saying nothing.
    row = Row(0, {"model_name": "m", "version": "1.0.0"}, {"accuracy": 0.9})
    assert oracle(Compare("accuracy", ">", 0.5), row) and not oracle(Compare("accuracy", "<", 0.5), row)
    assert not math.isnan(0.0)


# -- CLI ------------------------------------------------------------------------------
def _cli(models_dir: Any, *args: str) -> Any:
    from click.testing import CliRunner

    from modelkeep.cli import cli

    return CliRunner().invoke(cli, ["--models-dir", str(models_dir), *args])


def test_cli_search_and_compare_filter(tmp_path: Any) -> None:
    p = ModelPersistence(tmp_path / "models")
    fill(p)
    p.close()
    result = _cli(tmp_path / "models", "search", 'accuracy > 0.9 AND dataset = "v7"', "--json")
    assert result.exit_code == 0, result.output
    import json

    data = json.loads(result.output)
    assert [(i["model_name"], i["version"], i["accuracy"]) for i in data["items"]] == [
        ("churn", "1.2.0", 1.0),
        ("churn", "1.9.0", 0.95),
    ]
    assert data["items"][0]["aliases"] == ["champion", "production"]
    paged = _cli(
        tmp_path / "models",
        "search",
        "accuracy >= 0",
        "--order-by",
        "-accuracy",
        "--limit",
        "1",
        "--json",
    )
    assert json.loads(paged.output)["next_page_token"]
    table = _cli(tmp_path / "models", "search", "flag = TRUE", "--order-by", "accuracy DESC")
    assert table.exit_code == 0 and "fraud" in table.output and "churn" not in table.output
    compare = _cli(tmp_path / "models", "compare", "--model-name", "churn", "--filter", "accuracy > 0.94", "--json")
    assert [r["version"] for r in json.loads(compare.output)] == ["1.2.0", "1.9.0", "1.10.0"]


def test_cli_bad_filter_is_one_line_without_traceback(tmp_path: Any) -> None:
    p = ModelPersistence(tmp_path / "models")
    p.save({"w": 1}, "churn", accuracy=0.5)
    p.close()
    result = _cli(tmp_path / "models", "search", "accuracy >> 1")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: invalid filter at position 10: expected a value (a number, a quoted string, TRUE or FALSE), found '>'"
    ]
    assert "Traceback" not in result.output
