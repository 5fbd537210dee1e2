"""The models page at scale: a bounded set of statements whatever the number of models, paged by
name, with counts and latest versions that agree with the versions themselves (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from starlette.testclient import TestClient

from modelkeep import ModelPersistence
from modelkeep.errors import FilterError
from modelkeep.ui import create_app
from modelkeep.ui.app import MODELS_PAGE


class StatementCounter:
    """Counts the SQL statements an engine runs while it is attached."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement)


def _add_models(p: ModelPersistence, first: int, last: int) -> None:
    """Models ``m0000``..: one small version each, saved through the bulk path."""
    p.save_many(
        [{"model": {"w": [i, i + 1]}, "model_name": f"m{i:04d}", "accuracy": i / 1000} for i in range(first, last)]
    )


def _statements_for(p: ModelPersistence, client: TestClient, path: str) -> list[str]:
    counter = StatementCounter()
    event.listen(p.index.engine, "before_cursor_execute", counter)
    try:
        response = client.get(path)
    finally:
        event.remove(p.index.engine, "before_cursor_execute", counter)
    assert response.status_code == 200, response.text
    return counter.statements


@pytest.fixture
def client(persistence: ModelPersistence) -> Iterator[TestClient]:
    with TestClient(create_app(persistence), base_url="http://127.0.0.1") as c:
        yield c


def test_models_page_runs_the_same_statements_for_3_and_300_models(
    persistence: ModelPersistence, client: TestClient
) -> None:
    _add_models(persistence, 0, 3)
    client.get("/")  # warm-up: the first request may read settings once
    few = _statements_for(persistence, client, "/")
    _add_models(persistence, 3, 300)
    many = _statements_for(persistence, client, "/")
    assert len(few) == len(many), (few, many)
    assert len(many) <= 10
    # Every statement is the same text: the number of models changes parameters, not queries.
    assert few == many
    # 300 models: one full page and a link to the rest, which holds the other 100.
    first = client.get("/").text
    assert first.count('<td><a href="/models/m') == MODELS_PAGE
    assert 'href="/?after=m0199"' in first
    rest = _statements_for(persistence, client, "/?after=m0199")
    assert len(rest) == len(many)
    second = client.get("/?after=m0199").text
    assert second.count('<td><a href="/models/m') == 300 - MODELS_PAGE
    assert 'id="next-page"' not in second


def test_summaries_count_live_versions_and_name_the_latest(persistence: ModelPersistence) -> None:
    p = persistence
    for version in ("1.0.0", "1.2.0", "1.10.0", "1.3.0"):
        p.save({"v": version}, "churn", version, accuracy=0.5)
    p.save({"v": 1}, "fraud", "2.0.0")
    p.save({"v": 1}, "gone", "1.0.0")
    p.delete("churn", "1.10.0")  # to the trash: neither counted nor latest
    p.delete("gone", "1.0.0")  # a model with only trashed versions is not listed
    summaries = p.model_summaries()
    assert [(s.name, s.version_count, s.latest_version) for s in summaries] == [
        ("churn", 3, "1.3.0"),
        ("fraud", 1, "2.0.0"),
    ]
    assert summaries[0].updated_at == max(r.updated_at for r in p.list_version_records("churn"))
    assert [s.name for s in p.model_summaries(limit=1)] == ["churn"]
    assert [s.name for s in p.model_summaries(after="churn")] == ["fraud"]
    assert p.model_summaries(after="fraud") == []
    with pytest.raises(FilterError, match="limit must be a positive integer"):
        p.model_summaries(limit=0)


def test_a_copied_registry_lists_every_model(persistence: ModelPersistence, tmp_path: Path) -> None:
    """Copies write no history row of their own, yet every copied model gets its models row."""
    from modelkeep.copying import copy_registry

    persistence.save_many([{"model": {"w": i}, "model_name": f"m{i}"} for i in range(3)])
    dest = ModelPersistence(models_dir=tmp_path / "copy")
    dest.ensure_registry()
    copy_registry(persistence, dest)
    assert [(s.name, s.version_count) for s in dest.model_summaries()] == [("m0", 1), ("m1", 1), ("m2", 1)]
    dest.reindex()
    assert [s.name for s in dest.model_summaries()] == ["m0", "m1", "m2"]
    dest.close()


@pytest.mark.parametrize("order", ["-version", "version"])
def test_version_order_pages_walk_every_version_once(persistence: ModelPersistence, order: str) -> None:
    """The model page's version order (sorted on the bare columns so an index delivers it) keeps
    unparsed versions (no sort key) in their place and pages through each version once."""
    names = ["1.0.0", "nightly-b", "2.0.0", "nightly-a", "1.10.0", "1.2.0", "nightly-c"]
    persistence.save_many([{"model": {"v": v}, "model_name": "churn", "version": v} for v in names])
    ascending = persistence.list_versions("churn")  # unparsed first, in the order saved; then by version
    unparsed = ["nightly-b", "nightly-a", "nightly-c"]
    assert ascending == [*unparsed, "1.0.0", "1.2.0", "1.10.0", "2.0.0"]
    # Newest first: the parsed versions from the highest; unparsed ones keep the order they were saved in.
    expected = ascending if order == "version" else ["2.0.0", "1.10.0", "1.2.0", "1.0.0", *unparsed]
    seen: list[str] = []
    token = None
    while True:
        page = persistence.search_versions(None, model_name="churn", order_by=[order], limit=2, page_token=token)
        seen += [r.version for r in page.items]
        token = page.next_page_token
        if token is None:
            break
    assert seen == expected
    assert set(seen) == set(names) and len(seen) == len(names)
