"""One malformed index row degrades one entry, never a whole page, command or call.

Whoever can write the index can leave a row that is not what modelkeep wrote: a history
``before``/``after`` that is not JSON, a record that is not JSON or not an object, and, in
SQLite (which stores any type in any column), a number or a blob where text belongs. Each
test writes such rows straight into the SQLite or PostgreSQL index with raw SQL, then reads
through every API call, CLI command and UI page that shows history, aliases, tags or
records: the damaged row is reported as damaged (and ``verify`` lists it), the others read
as before.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from starlette.testclient import TestClient

from modelkeep import ModelKeepError, ModelPersistence
from modelkeep.cli import cli
from modelkeep.cli_readonly import ENV_SWITCH
from modelkeep.maintenance import DAMAGED
from modelkeep.ui import create_app


@dataclass
class Damaged:
    """A registry with damaged rows, and what was damaged."""

    p: ModelPersistence
    sqlite: bool
    models_dir: Path


def _raw(p: ModelPersistence, sql: str, **params: Any) -> None:
    """Raw SQL on the registry's own index (its engine maps the tables to the test's schema)."""
    with p.index.engine.begin() as conn:
        schema = conn.get_execution_options().get("schema_translate_map", {}).get(None)
        prefix = f'"{schema}".' if schema else ""
        conn.execute(text(sql.replace("{s}", prefix)), params)


def _fill(p: ModelPersistence) -> None:
    p.save({"w": 1}, "churn", "1.0.0", accuracy=0.8)
    p.save({"w": 2}, "churn", "2.0.0", accuracy=0.9)
    p.save({"w": 3}, "churn", "3.0.0", accuracy=0.7)
    p.save({"w": 4}, "fraud", "1.0.0", accuracy=0.5)
    p.set_alias("churn", "production", "2.0.0")
    p.set_alias("churn", "staging", "3.0.0")
    p.set_tag("churn", "stage", "prod", version="2.0.0")
    p.set_tag("churn", "owner", "ml-team")
    p.set_description("churn", "churn model")


def _damage(p: ModelPersistence, sqlite: bool) -> None:
    """What a writer of the index can leave: the same on both backends, plus wrong types on SQLite."""
    _raw(p, "UPDATE {s}modelkeep_history SET before = 'not json {' WHERE action = 'alias_set'")
    _raw(p, "UPDATE {s}modelkeep_history SET after = '[unclosed' WHERE action = 'describe'")
    _raw(p, "UPDATE {s}modelkeep_versions SET record = 'not json' WHERE model_name = 'churn' AND version = '1.0.0'")
    _raw(p, "UPDATE {s}modelkeep_versions SET record = '[1, 2]' WHERE model_name = 'fraud'")
    if sqlite:
        _raw(p, "UPDATE {s}modelkeep_history SET after = X'ff00fe' WHERE action = 'tag_set'")
        _raw(p, "UPDATE {s}modelkeep_history SET at = X'00ff' WHERE action = 'save' AND version = '3.0.0'")
        _raw(p, "UPDATE {s}modelkeep_tags SET value = X'ff70726f64' WHERE key = 'stage'")
        _raw(p, "UPDATE {s}modelkeep_tags SET value = CAST('ml-team' AS BLOB) WHERE key = 'owner'")
        _raw(p, "UPDATE {s}modelkeep_aliases SET version = CAST('3.0.0' AS BLOB) WHERE alias = 'staging'")


@pytest.fixture
def damaged(persistence: ModelPersistence, index_target: Any, tmp_path: Path) -> Iterator[Damaged]:
    _fill(persistence)
    sqlite = index_target.kind == "sqlite"
    _damage(persistence, sqlite)
    yield Damaged(persistence, sqlite, tmp_path / "models")


# -- the library ------------------------------------------------------------------------------
def test_history_reports_the_damaged_rows_and_reads_the_rest(damaged: Damaged) -> None:
    p = damaged.p
    for entries in (p.history("churn"), p.history(), p.history("churn", alias="production"), p.history(limit=3)):
        assert entries
        json.dumps([e.to_dict() for e in entries])  # everything is JSON-ready
    entries = p.history("churn")
    bad = {e.action: e for e in entries if e.damaged}
    assert "before is not JSON" in (bad["alias_set"].damaged or "")
    assert bad["alias_set"].before == "not json {"  # shown as the text that is there
    assert "after is not JSON" in (bad["describe"].damaged or "")
    good = [e for e in entries if not e.damaged]
    assert {e.action for e in good} >= {"save"}
    if damaged.sqlite:
        assert "after is not JSON" in (bad["tag_set"].damaged or "")
        assert any(e.damaged and "at is a bytes" in e.damaged for e in entries)


def test_records_aliases_and_tags_degrade_to_one_damaged_entry(damaged: Damaged) -> None:
    p = damaged.p
    records = p.list_version_records("churn")
    assert [r.version for r in records] == ["1.0.0", "2.0.0", "3.0.0"]
    broken = records[0]
    assert broken.damaged and "not readable" in broken.damaged and broken.artifact is None
    assert [r.damaged for r in records[1:]] == [None, None]
    assert records[1].metadata["accuracy"] == 0.9 and records[1].aliases == ["production"]
    assert p.get_metadata("churn", "1.0.0").damaged  # type: ignore[union-attr]
    [fraud] = p.list_version_records("fraud")
    assert fraud.damaged and fraud.model_name == "fraud" and fraud.version == "1.0.0"
    assert p.get_aliases("churn") == {"production": "2.0.0", "staging": "3.0.0"}
    tags, version_tags = p.get_tags("churn"), p.get_tags("churn", version="2.0.0")
    assert all(isinstance(v, str) for v in (*tags.values(), *version_tags.values()))
    if damaged.sqlite:
        assert tags == {"owner": "ml-team"} and version_tags == {"stage": "\ufffdprod"}
    page = p.search_versions("accuracy > 0.1")
    found = {(r.model_name, r.version): r for r in page.items}
    assert set(found) >= {("churn", "1.0.0"), ("churn", "2.0.0"), ("churn", "3.0.0")}  # its fields were indexed at save
    assert found["churn", "1.0.0"].damaged and not found["churn", "2.0.0"].damaged
    assert p.list_models() == ["churn", "fraud"]
    assert p.load("churn", "2.0.0") == {"w": 2}
    assert p.load("churn", alias="production") == {"w": 2}
    with pytest.raises(ModelKeepError, match=r"index row is damaged"):
        p.load("churn", "1.0.0")


def test_verify_lists_every_damaged_row(damaged: Damaged) -> None:
    report = damaged.p.verify()
    found = {(pr.key, pr.model_name) for pr in report.of_kind(DAMAGED)}
    assert ("index row of churn 1.0.0", "churn") in found and ("index row of fraud 1.0.0", "fraud") in found
    history_rows = [pr for pr in report.of_kind(DAMAGED) if pr.key.startswith("history row")]
    assert len(history_rows) >= 2 and all("not JSON" in pr.detail or "not text" in pr.detail for pr in history_rows)
    if damaged.sqlite:
        keys = {pr.key for pr in report.of_kind(DAMAGED)}
        assert {"tag stage", "tag owner", "alias staging"} <= keys
    assert not report.ok
    damaged.p.reindex()  # the remedy the messages name: records rebuilt from the sidecar files
    assert [r.damaged for r in damaged.p.list_version_records("churn")] == [None, None, None]
    assert damaged.p.load("churn", "1.0.0") == {"w": 1}
    assert not [pr for pr in damaged.p.verify().of_kind(DAMAGED) if pr.key.startswith("index row")]


# -- the command line (SQLite: the read-only shortcut and the library path) -------------------
CLI = [
    ["list"],
    ["list", "--json"],
    ["list", "--model-name", "churn"],
    ["list", "--model-name", "churn", "--json"],
    ["list", "--model-name", "fraud"],
    ["info", "--model-name", "churn", "--version", "1.0.0"],
    ["info", "--model-name", "churn", "--version", "1.0.0", "--json"],
    ["info", "--model-name", "churn@staging", "--json"],
    ["info", "--model-name", "fraud"],
    ["search", "--json"],
    ["search"],
    ["search", "accuracy > 0.1", "--order-by", "-accuracy"],
    ["history"],
    ["history", "--model-name", "churn", "--json"],
    ["history", "--alias", "production"],
]


@pytest.mark.parametrize("fast", [True, False], ids=["read-only shortcut", "library"])
@pytest.mark.parametrize("args", CLI, ids=" ".join)
def test_cli_commands_survive_damaged_rows(tmp_path: Path, args: list[str], fast: bool) -> None:
    models = tmp_path / "models"
    with ModelPersistence(models) as p:
        _fill(p)
        _damage(p, sqlite=True)
    result = CliRunner().invoke(cli, ["--models-dir", str(models), *args], env={ENV_SWITCH: "1" if fast else "0"})
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "Error" not in result.output
    if "--json" in args:
        json.loads(result.stdout)
    if args[0] in ("info", "history", "list") and ("1.0.0" in args or args[0] == "history" or "fraud" in args):
        assert "damaged" in result.stdout.lower()


def test_cli_verify_lists_damaged_rows(tmp_path: Path) -> None:
    models = tmp_path / "models"
    with ModelPersistence(models) as p:
        _fill(p)
        _damage(p, sqlite=True)
    result = CliRunner().invoke(cli, ["--models-dir", str(models), "verify", "--json"])
    assert result.exit_code == 1
    problems = json.loads(result.stdout)["problems"]
    assert {pr["key"] for pr in problems if pr["kind"] == "damaged"} >= {"index row of churn 1.0.0", "tag owner"}


# -- the web page ------------------------------------------------------------------------------
PAGES = [
    "/",
    "/?q=accuracy%20%3E%200.1",
    "/history",
    "/history?model=churn",
    "/models/churn",
    "/models/fraud",
    "/models/churn/versions/1.0.0",
    "/models/churn/versions/2.0.0",
    "/models/churn/versions/3.0.0",
    "/models/fraud/versions/1.0.0",
    "/models/churn/compare?v=1.0.0&v=2.0.0&v=3.0.0",
    "/api/models/churn/chart",
]


def test_ui_pages_survive_damaged_rows(damaged: Damaged) -> None:
    with TestClient(create_app(damaged.p), base_url="http://127.0.0.1:8765") as client:
        for page in PAGES:
            response = client.get(page)
            assert response.status_code == 200, (page, response.text[:2000])
        assert "damaged" in client.get("/history").text
        assert "damaged" in client.get("/models/churn/versions/1.0.0").text
        assert "damaged" in client.get("/models/churn").text
        assert "damaged" in client.get("/?q=accuracy%20%3E%200.1").text


@pytest.mark.postgres
def test_cli_commands_survive_damaged_rows_on_postgresql(tmp_path: Path, pg_schema: str) -> None:
    from tests.conftest import PG_URL

    url = f"{PG_URL}?options=-csearch_path%3D{pg_schema}"  # the libpq way to put the tables in a schema
    with ModelPersistence(tmp_path / "models", registry_url=url) as p:
        _fill(p)
        _damage(p, sqlite=False)
    base = ["--models-dir", str(tmp_path / "models"), "--registry-url", url]
    runner = CliRunner()
    for args in CLI:
        result = runner.invoke(cli, [*base, *args])
        assert result.exit_code == 0, (args, result.output)
        assert "Traceback" not in result.output
        if "--json" in args:
            json.loads(result.stdout)
    verify = runner.invoke(cli, [*base, "verify", "--json"])
    assert verify.exit_code == 1
    kinds = {(pr["kind"], pr["key"]) for pr in json.loads(verify.stdout)["problems"]}
    assert ("damaged", "index row of churn 1.0.0") in kinds
