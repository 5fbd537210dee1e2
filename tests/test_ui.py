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
from modelkeep.ui.views import (
    ago,
    chart_series,
    comparison_rows,
    history_diff,
    lineage_view,
    lower_is_better,
    metric_names,
    signature_view,
    time_html,
)


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


def test_a_search_typo_is_shown_in_place_with_the_query_kept_and_a_suggestion(client: TestClient) -> None:
    bad = client.get("/", params={"q": "accuracy >"})
    assert bad.status_code == 400
    assert 'id="search-error"' in bad.text and "expected a value" in bad.text
    # The search box still holds the query, and a caret points at the problem.
    assert 'id="search" value="accuracy &gt;"' in bad.text
    assert re.search(r'<span class="caret" aria-hidden="true"> {10}\^</span>', bad.text)
    assert "accuracy%20%3E%200.9" in bad.text  # an example filter to click
    typo = client.get("/", params={"q": "acuracy > 0.8"})
    assert typo.status_code == 400
    assert "Did you mean accuracy?" in typo.text
    fixed = re.search(r'id="search-fixed" href="([^"]+)"', typo.text)
    assert fixed is not None
    assert client.get(fixed.group(1).replace("&amp;", "&")).status_code == 200


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
    flat = page.text.replace("\n", "")
    accuracy = re.search(r'<tr class="differs"><th scope="row">accuracy (.*?)</tr>', flat)
    assert accuracy is not None
    # 0.9 is the best accuracy (higher is better), highlighted; 0.81 is not.
    assert "<td>0.81</td>" in accuracy.group(1) and '<td class="best">0.9</td>' in accuracy.group(1)
    assert '<tr class="same"><th scope="row">dataset</th>' in flat
    assert 'id="small-multiples"' in page.text and 'data-metric="f1"' in page.text
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
    series = chart_series(registry.metric_history("churn", "missing"), "missing", {})
    assert series["values"] == [None, None, None]
    rows = {r.field: r for r in comparison_rows(records)}
    assert rows["accuracy"].differs and not rows["dataset"].differs


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")


def test_times_are_human_with_the_exact_time_in_datetime_and_title(
    client: TestClient, registry: ModelPersistence
) -> None:
    record = registry.get_version("churn", "1.1.0")
    for path in ("/", "/models/churn", "/models/churn/versions/1.1.0", "/history"):
        page = client.get(path)
        times = re.findall(r'<time datetime="([^"]+)" title="([^"]+)">([^<]+)</time>', page.text)
        assert times, path
        for exact, title, label in times:
            assert exact in title and "T" in exact and "T" not in label, (path, label)
    version = client.get("/models/churn/versions/1.1.0").text
    assert f'<time datetime="{record.created_at}"' in version.replace("+00:00", "+00:00")


def test_time_helpers() -> None:
    from datetime import datetime, timedelta, timezone

    now = datetime(2026, 12, 5, 14, 2, tzinfo=timezone.utc)
    assert ago(now - timedelta(hours=3), now) == "3 hours ago"
    assert ago(now - timedelta(seconds=5), now) == "just now"
    assert ago(now - timedelta(days=1), now) == "yesterday"
    assert ago(now - timedelta(days=30), now) == ""
    old = time_html("2026-11-01T09:15:30.123456+00:00", now)
    assert '<time datetime="2026-11-01T09:15:30.123456+00:00"' in old and ">2026-11-01 09:15</time>" in old
    assert ">3 hours ago</time>" in time_html((now - timedelta(hours=3)).isoformat(), now)
    assert time_html("not a time", now) == "not a time"
    assert time_html("<b>", now) == "&lt;b&gt;"


def test_version_page_shows_the_signature_as_a_table_and_lineage_as_a_card(
    client: TestClient, registry: ModelPersistence
) -> None:
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    frame = pd.DataFrame({"age": [30, 41, 52, 23], "region": pd.array([1, None, 2, 3], dtype="Int64")})
    model = LogisticRegression().fit(frame.fillna(0), [0, 1, 0, 1])
    registry.save(model, "churn", "1.3.0", input_example=frame, training_data=frame, parent="1.2.0", accuracy=0.7)
    page = client.get("/models/churn/versions/1.3.0").text
    table = page[page.index('id="input-signature"') : page.index("</table>", page.index('id="input-signature"'))]
    rows = re.findall(r'<tr><td class="mono">([^<]+)</td><td class="mono">([^<]+)</td><td>([^<]*)</td></tr>', table)
    assert rows == [("age", "int64", "no"), ("region", "Int64", "yes")]
    card = page[page.index('id="lineage"') :]
    assert "4 rows \u00d7 2 columns" in card
    record = registry.get_version("churn", "1.3.0")
    assert record.lineage is not None
    assert record.lineage["training_data"]["sha256"][:12] in card
    assert 'id="lineage-parent"><a class="mono" href="/models/churn/versions/1.2.0">1.2.0</a>' in card
    shown = re.sub(r'value="[^"]*"', "", page)  # hidden form fields may carry JSON; the page text may not
    assert '"training_data"' not in shown and "{&#34;" not in shown  # no raw JSON walls


def test_signature_and_lineage_views() -> None:
    sig = signature_view({"feature_names": ["a", "b"], "n_features": 2, "shape": [None, 2], "source": "model"})
    assert sig is not None
    assert [c["name"] for c in sig.columns] == ["a", "b"] and ("shape", "any \u00d7 2") in sig.facts
    assert signature_view(None) is None
    card = lineage_view({"git": {"commit": "0123456789abcdef", "dirty": True, "branch": "main"}})
    assert card is not None and card["git"] == {
        "commit": "0123456789abcdef",
        "short": "0123456789",
        "dirty": True,
        "branch": "main",
    }
    assert card["data"] is None and card["parent"] is None


def test_history_is_a_diff_not_json(client: TestClient, registry: ModelPersistence) -> None:
    registry.set_alias("churn", "production", "1.2.0", expected="1.1.0")
    page = client.get("/history", params={"model": "churn"}).text
    assert re.search(r"<del>1\.1\.0</del><span class=\"arrow\"[^>]*>→</span><ins>1\.2\.0</ins>", page)
    assert '<span class="mono">format</span>: <ins>' in page  # a save lists its fields, one per line
    shown = re.sub(r'value="[^"]*"', "", page)
    assert "{&#34;" not in shown and '{"' not in shown


def test_history_diff_helper() -> None:
    assert [(c.key, c.before, c.after, c.kind) for c in history_diff("1.0.0", "1.1.0")] == [
        ("", "1.0.0", "1.1.0", "changed")
    ]
    lines = history_diff({"a": 1, "b": 2}, {"b": 3, "c": 4})
    assert [(c.key, c.kind) for c in lines] == [("a", "removed"), ("b", "changed"), ("c", "added")]
    assert history_diff(None, None) == []


def test_best_value_direction_follows_the_metric_name() -> None:
    for name in ("val_loss", "rmse", "train_seconds", "latency_ms", "error_rate", "model-size"):
        assert lower_is_better(name), name
    for name in ("accuracy", "auc", "f1", "r2", "precision", "lossless_ratio"):
        assert not lower_is_better(name), name


def test_trashing_an_aliased_version_offers_moving_the_alias_or_forcing(
    client: TestClient, registry: ModelPersistence
) -> None:
    token = _token(client, "/models/churn/versions/1.1.0")
    confirm = client.post("/models/churn/versions/1.1.0/delete", data={FIELD: token})
    assert confirm.status_code == 409
    assert "1.1.0" in registry.list_versions("churn")
    assert 'id="move-first"' in confirm.text and 'id="force-form"' in confirm.text
    assert "force the delete" not in confirm.text
    # "Move the alias first": the form moves production with compare-and-set, then the trash works.
    move = re.search(r'action="/models/churn/aliases" class="move-alias">(.*?)</form>', confirm.text, re.S)
    assert move is not None
    assert 'name="expected" value="1.1.0"' in move.group(1) and "<option>1.2.0</option>" in move.group(1)
    moved = client.post(
        "/models/churn/aliases", data={FIELD: token, "alias": "production", "version": "1.2.0", "expected": "1.1.0"}
    )
    assert moved.status_code == 200 and registry.get_aliases("churn")["production"] == "1.2.0"
    assert client.post("/models/churn/versions/1.1.0/delete", data={FIELD: token}).status_code == 200
    assert "1.1.0" not in registry.list_versions("churn")
    # "Force": trashes the aliased version and removes the alias.
    forced = client.post("/models/churn/versions/1.2.0/delete", data={FIELD: token, "force": "1"})
    assert forced.status_code == 200
    assert "1.2.0" not in registry.list_versions("churn") and "production" not in registry.get_aliases("churn")


def test_tables_use_chips_and_labelled_fields(client: TestClient) -> None:
    model = client.get("/models/churn").text
    assert '<span class="chip alias production">production</span>' in model
    assert '<span class="chip tag" title="team=growth"><span class="k">team</span>=growth</span>' in model
    assert 'id="column-chooser" data-table="versions"' in model
    assert re.search(r'<th scope="col" data-col="accuracy"', model)
    form = model[model.index('id="alias-form"') : model.index("</form>", model.index('id="alias-form"'))]
    for name in ("alias", "version"):
        assert re.search(rf'<label class="field"><span>[^<]+</span><input name="{name}"', form), name
    assert 'title="LogisticRegression, saved as joblib"><span class="clip">LogisticRegression</span>' in model
