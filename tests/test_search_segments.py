"""Search at scale: the segmented sort, the chart's narrow read, the models page's query count.

A sort on a custom field the filter does not bound runs one statement per segment
(numbers, strings, versions without the field); these tests check its answers and
pages against a brute-force evaluation in Python, on SQLite and PostgreSQL (the
``persistence`` fixture), and that the statements have the shape the planner can
walk along an index. Query counts are behaviour, counted with SQLAlchemy events.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, update
from starlette.testclient import TestClient

from modelkeep import ModelPersistence
from modelkeep.errors import FilterError
from modelkeep.index.schema import versions
from modelkeep.ui import create_app

#: (version, custom fields): ``score`` is a number (with ties), a string, a boolean or missing.
DATA: list[tuple[str, dict[str, Any]]] = [
    ("1.0.0", {"score": 0.5, "other": 1}),
    ("1.1.0", {"score": "b", "other": 2}),
    ("1.2.0", {"other": 3}),
    ("1.3.0", {"score": 0.5, "other": 4}),
    ("1.4.0", {"score": 0.9}),
    ("1.5.0", {"score": "a", "other": 5}),
    ("1.6.0", {"score": -2, "other": 6}),
    ("1.7.0", {"other": 7}),
    ("1.8.0", {"score": True, "other": 8}),
    ("1.9.0", {"score": "b"}),
    ("1.10.0", {"score": 0.9, "other": 9}),
    ("nightly", {"score": 0.1, "other": 10}),
]
TRASHED = "1.3.0"
#: Filters that do not bound ``score``, and what each keeps (brute force).
FILTERS: dict[str | None, Any] = {
    None: lambda f: True,
    "other > 3": lambda f: isinstance(f.get("other"), int) and f["other"] > 3,
    "other IS NULL": lambda f: "other" not in f,
    'score != "b"': lambda f: isinstance(f.get("score"), str) and f["score"] != "b",  # strings only
    "other IN (1, 2, 9) OR score IS NULL": lambda f: f.get("other") in (1, 2, 9) or "score" not in f,
}


@pytest.fixture
def registry(persistence: ModelPersistence) -> Iterator[ModelPersistence]:
    for version, custom in DATA:
        persistence.save({"v": version}, "m", version, **custom)
    with persistence.index.engine.begin() as conn:
        conn.execute(
            update(versions)
            .where(versions.c.model_name == "m", versions.c.version == TRASHED)
            .values(deleted_at="2026-01-02T00:00:00+00:00")
        )
    yield persistence


def _rank(custom: dict[str, Any], desc: bool) -> tuple[Any, ...]:
    """The documented order of one field: numbers, then strings, then missing; ``desc`` flips values only."""
    value = custom.get("score")
    if value is None:
        return (2, 0.0, "")
    if isinstance(value, str):
        return (1, 0.0, value)
    return (0, float(value), "")


def brute_force(filter: str | None, desc: bool) -> list[str]:
    rows = [(seq, v, c) for seq, (v, c) in enumerate(DATA) if v != TRASHED and FILTERS[filter](c)]

    def cmp(a: tuple[int, str, dict[str, Any]], b: tuple[int, str, dict[str, Any]]) -> int:
        ra, rb = _rank(a[2], desc), _rank(b[2], desc)
        if ra[0] != rb[0]:
            return -1 if ra[0] < rb[0] else 1
        for x, y in zip(ra[1:], rb[1:], strict=True):
            if x != y:
                return (-1 if x < y else 1) * (-1 if desc else 1)
        return -1 if a[0] < b[0] else 1 if a[0] > b[0] else 0

    return [v for _, v, _ in sorted(rows, key=functools.cmp_to_key(cmp))]


def paged(p: ModelPersistence, filter: str | None, order_by: str, size: int) -> list[str]:
    got: list[str] = []
    token = None
    while True:
        page = p.search_versions(filter, model_name="m", order_by=order_by, limit=size, page_token=token)
        got += [r.version for r in page.items]
        token = page.next_page_token
        if token is None:
            return got


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(filter=st.sampled_from(list(FILTERS)), desc=st.booleans(), size=st.integers(1, 5))
def test_segmented_sort_and_pages_equal_brute_force(
    registry: ModelPersistence, filter: str | None, desc: bool, size: int
) -> None:
    expected = brute_force(filter, desc)
    assert paged(registry, filter, ("-" if desc else "") + "score", size) == expected


def test_every_segment_boundary_is_crossed_by_pages(registry: ModelPersistence) -> None:
    expected = brute_force(None, True)
    # numbers (0.9 ties first, oldest first), then strings, then versions without score
    numbers = ["1.8.0", "1.4.0", "1.10.0", "1.0.0", "nightly", "1.6.0"]  # True is 1; ties oldest first
    assert expected == [*numbers, "1.1.0", "1.9.0", "1.5.0", "1.2.0", "1.7.0"]
    for size in (1, 2, 3, 6, 10, 11, 100):
        assert paged(registry, None, "-score", size) == expected


def _statements(p: ModelPersistence, filter: str | None, order_by: str) -> list[tuple[str, Any]]:
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if "SELECT v.record" in statement:
            seen.append((statement, parameters))

    event.listen(p.index.engine, "before_cursor_execute", capture)
    try:
        p.search_versions(filter, order_by=order_by, limit=2)
    finally:
        event.remove(p.index.engine, "before_cursor_execute", capture)
    return seen


def test_a_full_first_page_runs_only_the_numbers_segment_in_index_order(registry: ModelPersistence) -> None:
    statements = _statements(registry, "other > 3", "-score")
    assert len(statements) == 1  # the page filled up inside the first segment
    ((sql, params),) = statements
    assert "order_0.num IS NOT NULL" in sql and "CASE WHEN" not in sql
    assert "ORDER BY order_0.num DESC, order_0.version_id ASC" in sql
    if registry.index.dialect == "sqlite":
        # the filter is a correlated probe, and the plan walks the (key, num) index: no full sort
        assert "v.id IN (" not in sql
        with registry.index.engine.connect() as conn:
            plan = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)]
        assert any("ix_modelkeep_fields_key_num" in step and "order_0" in step for step in plan), plan
        assert "USE TEMP B-TREE FOR ORDER BY" not in plan, plan


def test_a_forged_page_token_segment_is_refused(registry: ModelPersistence) -> None:
    token = registry.search_versions(None, order_by="-score", limit=2).next_page_token
    assert token is not None
    data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for forged in (7, "0", None, 1.5, True):
        data["k"][0] = forged
        bad = base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
        with pytest.raises(FilterError, match="page_token"):
            registry.search_versions(None, order_by="-score", limit=2, page_token=bad)


def test_metric_history_is_the_newest_versions_in_version_order(registry: ModelPersistence) -> None:
    live = [r for r in registry.search_versions(None, model_name="m", order_by="-version", limit=100).items]
    expected = [(r.version, _number(r.metadata.get("score"))) for r in reversed(live)]
    assert registry.metric_history("m", "score") == expected
    assert registry.metric_history("m", "score", limit=3) == expected[-3:]
    assert expected[0] == ("nightly", 0.1)  # a version that does not parse sorts first
    assert ("1.1.0", None) in expected and ("1.8.0", 1.0) in expected
    assert all(version != TRASHED for version, _ in expected)
    with pytest.raises(FilterError, match="limit"):
        registry.metric_history("m", "score", limit=0)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def _queries_for_models_page(p: ModelPersistence) -> int:
    count = [0]

    def tally(*args: Any) -> None:
        count[0] += 1

    with TestClient(create_app(p), base_url="http://127.0.0.1") as client:
        assert client.get("/").status_code == 200  # warm: the first request may read settings
        event.listen(p.index.engine, "before_cursor_execute", tally)
        try:
            page = client.get("/")
        finally:
            event.remove(p.index.engine, "before_cursor_execute", tally)
    assert page.status_code == 200
    assert "production → 1" in page.text
    return count[0]


def test_the_models_page_runs_the_same_queries_for_5_and_50_models(persistence: ModelPersistence) -> None:
    counts: dict[int, int] = {}
    for start, n in ((0, 5), (5, 50)):
        for i in range(start, n):
            persistence.save({"i": i}, f"model-{i:02d}", "1.0.0", accuracy=i / 100)
            persistence.set_alias(f"model-{i:02d}", "production", "1.0.0")
        counts[n] = _queries_for_models_page(persistence)
    assert counts[5] == counts[50], counts
    assert counts[5] <= 6, counts
