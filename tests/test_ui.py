"""The web UI through Starlette's test client: every page, every action, errors, read-only and CSRF.

Runs on SQLite and PostgreSQL (the ``persistence`` fixture); the browser tests
in ``test_ui_browser.py`` click through the same pages in a real Chromium.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from modelkeep import ModelPersistence
from modelkeep.ui import create_app, is_loopback
from modelkeep.ui.security import COOKIE, FIELD
from modelkeep.ui.views import chart_series, comparison_rows, metric_names


@pytest.fixture
def registry(persistence: ModelPersistence, classifier: Any) -> ModelPersistence:
    for i, acc in enumerate([0.81, 0.86, 0.9]):
        persistence.save(classifier, "churn", f"1.{i}.0", accuracy=acc, f1=acc - 0.05, dataset="v7")
    persistence.save(classifier, "fraud", accuracy=0.7)
    persistence.set_alias("churn", "production", "1.1.0")
    persistence.set_tag("churn", "team", "growth", version="1.1.0")
    return persistence


@pytest.fixture
def client(registry: ModelPersistence) -> Iterator[TestClient]:
    with TestClient(create_app(registry), base_url="http://127.0.0.1:8765") as c:
        yield c


def _token(client: TestClient, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200
    found = re.search(rf'name="{FIELD}" value="([0-9a-f]+)"', page.text)
    assert found, "the page has no CSRF token"
    return found.group(1)


def test_models_page_lists_models_with_counts_latest_and_aliases(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert "churn" in page.text and "fraud" in page.text
    row = re.search(r"<tr>\s*<td><a href=\"/models/churn\">churn</a></td>(.*?)</tr>", page.text, re.S)
    assert row is not None
    assert ">3<" in row.group(1)  # version count
    assert "1.2.0" in row.group(1)  # latest
    assert "production → 1.1.0" in row.group(1)


def test_search_box_uses_the_filter_grammar(client: TestClient) -> None:
    page = client.get("/", params={"q": 'accuracy >= 0.86 AND model_name = "churn"'})
    assert page.status_code == 200
    assert "1.1.0" in page.text and "1.2.0" in page.text
    assert "1.0.0" not in page.text
    bad = client.get("/", params={"q": "accuracy >"})
    assert bad.status_code == 400
    assert "Traceback" not in bad.text


def test_model_page_has_metric_columns_aliases_tags_and_timeline(client: TestClient) -> None:
    page = client.get("/models/churn")
    assert page.status_code == 200
    for text in ("accuracy", "f1", "production", "team=growth", 'id="chart"', "Alias moves"):
        assert text in page.text
    # Newest version first by default; the timeline shows the alias being set.
    assert page.text.index('data-version="1.2.0"') < page.text.index('data-version="1.0.0"')
    timeline = page.text[page.text.index('id="alias-timeline"') :]
    assert "production" in timeline


def test_model_page_sorts_by_any_column_and_pages_on_the_server(registry: ModelPersistence) -> None:
    with TestClient(create_app(registry, read_only=True), base_url="http://127.0.0.1") as small:
        app = small.app
        assert app is not None
    from modelkeep.ui.app import create_app as build

    with TestClient(build(registry, page_size=2), base_url="http://127.0.0.1") as c:
        first = c.get("/models/churn", params={"order": "accuracy"})
        order = re.findall(r'data-version="([^"]+)"', first.text)
        assert order == ["1.0.0", "1.1.0"]
        link = re.search(r'id="next-page" href="([^"]+)"', first.text)
        assert link is not None
        second = c.get("/models/churn" + link.group(1).replace("&amp;", "&"))
        assert re.findall(r'data-version="([^"]+)"', second.text) == ["1.2.0"]
        assert 'id="next-page"' not in second.text
        desc = c.get("/models/churn", params={"order": "-accuracy"})
        assert re.findall(r'data-version="([^"]+)"', desc.text) == ["1.2.0", "1.1.0"]


def test_chart_endpoint_returns_the_metric_with_aliased_versions_marked(client: TestClient) -> None:
    data = client.get("/api/models/churn/chart", params={"metric": "accuracy"}).json()
    assert data["labels"] == ["1.0.0", "1.1.0", "1.2.0"]
    assert data["values"] == [0.81, 0.86, 0.9]
    assert data["marked"] == [{"x": 1, "version": "1.1.0", "aliases": ["production"], "value": 0.86}]


def test_version_page_shows_everything_about_a_version(client: TestClient, registry: ModelPersistence) -> None:
    page = client.get("/models/churn/versions/1.1.0")
    assert page.status_code == 200
    record = registry.get_metadata("churn", "1.1.0")
    assert record is not None and record.artifact is not None
    for text in (
        "accuracy",
        "0.86",
        "dataset",
        "team",
        "growth",
        "production",
        record.artifact.sha256,
        record.artifact.format,
        "Environment",
        "persistence.load(&#39;churn&#39;, &#39;1.1.0&#39;)",
        "max_iter",  # a model parameter
    ):
        assert text in page.text, text


def test_compare_page_lines_up_versions_and_marks_differences(client: TestClient) -> None:
    page = client.get("/models/churn/compare", params=[("v", "1.0.0"), ("v", "1.2.0")])
    assert page.status_code == 200
    assert '<tr class="differs"><th>accuracy</th><td>0.81</td><td>0.9</td></tr>' in page.text.replace("\n", "")
    assert '<tr class="same"><th>dataset</th>' in page.text.replace("\n", "")
    assert 'id="compare-data"' in page.text
    diff_only = client.get("/models/churn/compare", params=[("v", "1.0.0"), ("v", "1.2.0"), ("diff", "1")])
    assert re.search(r'<tr class="same"[^>]*hidden>', diff_only.text)
    assert client.get("/models/churn/compare", params=[("v", "1.0.0")]).status_code == 400


def test_history_page_is_filterable(client: TestClient) -> None:
    everything = client.get("/history")
    assert "alias" in everything.text and "fraud" in everything.text
    churn = client.get("/history", params={"model": "churn", "alias": "production"})
    assert churn.status_code == 200
    assert "production" in churn.text
    assert "/models/fraud" not in churn.text


@pytest.mark.parametrize(
    "path",
    [
        "/models/nope",
        "/models/churn/versions/9.9.9",
        "/models/nope/versions/1.0.0",
        "/nowhere",
        "/models/churn/compare?v=1.0.0&v=7.7.7",
    ],
)
def test_unknown_things_get_a_404_page_not_a_stack_trace(client: TestClient, path: str) -> None:
    page = client.get(path)
    assert page.status_code == 404
    assert "Not found" in page.text
    assert "Traceback" not in page.text


def test_alias_actions_go_through_the_library_with_compare_and_set(
    client: TestClient, registry: ModelPersistence
) -> None:
    token = _token(client, "/models/churn")
    moved = client.post(
        "/models/churn/aliases",
        data={FIELD: token, "alias": "production", "version": "1.2.0", "expected": "1.1.0"},
        follow_redirects=False,
    )
    assert moved.status_code == 303
    assert registry.get_aliases("churn")["production"] == "1.2.0"
    stale = client.post(
        "/models/churn/aliases", data={FIELD: token, "alias": "production", "version": "1.0.0", "expected": "1.1.0"}
    )
    assert stale.status_code == 409
    assert registry.get_aliases("churn")["production"] == "1.2.0"
    removed = client.post("/models/churn/aliases/delete", data={FIELD: token, "alias": "production"})
    assert removed.status_code == 200  # followed the redirect back to the model page
    assert "production" not in registry.get_aliases("churn")
    actions = [e.action for e in registry.history("churn")]
    assert any("alias" in a for a in actions)


def test_tag_description_trash_and_restore_actions(client: TestClient, registry: ModelPersistence) -> None:
    token = _token(client, "/models/churn/versions/1.0.0")
    client.post("/models/churn/tags", data={FIELD: token, "key": "stage", "value": "dev", "version": "1.0.0"})
    assert registry.get_tags("churn", version="1.0.0") == {"stage": "dev"}
    client.post("/models/churn/tags", data={FIELD: token, "key": "stage", "version": "1.0.0", "remove": "1"})
    assert registry.get_tags("churn", version="1.0.0") == {}
    client.post("/models/churn/description", data={FIELD: token, "text": "first try", "version": "1.0.0"})
    record = registry.get_metadata("churn", "1.0.0")
    assert record is not None and record.description == "first try"
    client.post("/models/churn/versions/1.0.0/delete", data={FIELD: token})
    assert "1.0.0" not in registry.list_versions("churn")
    client.post("/models/churn/versions/1.0.0/restore", data={FIELD: token})
    assert "1.0.0" in registry.list_versions("churn")


def test_forged_cross_site_posts_are_refused(client: TestClient, registry: ModelPersistence) -> None:
    token = _token(client, "/models/churn")
    no_token = client.post("/models/churn/aliases", data={"alias": "production", "version": "1.0.0"})
    assert no_token.status_code == 403
    wrong = client.post("/models/churn/aliases", data={FIELD: "0" * 64, "alias": "production", "version": "1.0.0"})
    assert wrong.status_code == 403
    cross = client.post(
        "/models/churn/aliases",
        data={FIELD: token, "alias": "production", "version": "1.0.0"},
        headers={"Origin": "http://evil.example"},
    )
    assert cross.status_code == 403
    # A browser on another site has no cookie of ours to pair with a token.
    fresh = TestClient(client.app, base_url="http://127.0.0.1:8765")
    stolen = fresh.post("/models/churn/aliases", data={FIELD: token, "alias": "production", "version": "1.0.0"})
    assert stolen.status_code == 403
    assert registry.get_aliases("churn")["production"] == "1.1.0"
    assert client.cookies.get(COOKIE)


def test_read_only_mode_shows_no_forms_and_refuses_actions(registry: ModelPersistence) -> None:
    with TestClient(create_app(registry, read_only=True), base_url="http://127.0.0.1") as c:
        page = c.get("/models/churn")
        assert page.status_code == 200
        assert "alias-form" not in page.text and "read-only" in page.text
        refused = c.post("/models/churn/aliases", data={"alias": "production", "version": "1.0.0"})
        assert refused.status_code == 403
    assert registry.get_aliases("churn")["production"] == "1.1.0"


def test_pages_escape_what_users_wrote(client: TestClient, registry: ModelPersistence) -> None:
    registry.set_tag("churn", "note", "<script>alert(1)</script>", version="1.2.0")
    page = client.get("/models/churn/versions/1.2.0")
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;" in page.text


def test_view_helpers(registry: ModelPersistence) -> None:
    records = registry.list_version_records("churn")
    assert metric_names(records)[:2] == ["accuracy", "f1"]
    series = chart_series(records, "missing", {})
    assert series["values"] == [None, None, None]
    rows = {r.field: r for r in comparison_rows(records)}
    assert rows["accuracy"].differs and not rows["dataset"].differs


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")
