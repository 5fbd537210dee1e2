# ruff: noqa: F811  (the CLI fixtures are imported from test_cli and taken by name as arguments)
"""The lifecycle commands through the real CLI: alias, tag, describe, history, restore, purge,
prune, and aliases and tags in list, info and compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import modelkeep.cli
import modelkeep.cli_context

from .test_cli import (  # noqa: F401  (the fixtures are used by name)
    Run,
    _isolated,
    assert_user_error,
    model_file,
    models_dir,
    run,
    save,
    trained,
    training_data,
    versions_of,
    write_metadata,
)


@pytest.fixture
def three(run: Run, model_file: Path, tmp_path: Path) -> None:
    for version, accuracy in (("1.0.0", 0.7), ("1.1.0", 0.8), ("2.0.0", 0.9)):
        save(run, model_file, "clf", version, "--metadata", str(write_metadata(tmp_path, accuracy)))


def ok(run: Run, *args: str) -> str:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.usefixtures("three")
def test_alias_set_list_history_rm(run: Run) -> None:
    assert "clf@production -> 1.0.0" in ok(
        run, "alias", "set", "--model-name", "clf", "--alias", "production", "--version", "1.0.0"
    )
    out = json.loads(
        ok(
            run,
            "alias",
            "set",
            "--model-name",
            "clf",
            "--alias",
            "production",
            "--version",
            "1.1.0",
            "--expected",
            "1.0.0",
            "--json",
        )
    )
    assert out == {"model_name": "clf", "alias": "production", "version": "1.1.0", "previous": "1.0.0"}
    conflict = run(
        "alias", "set", "--model-name", "clf", "--alias", "production", "--version", "2.0.0", "--expected", "1.0.0"
    )
    assert_user_error(conflict, "not '1.0.0' as expected")
    assert json.loads(ok(run, "alias", "list", "--model-name", "clf", "--json")) == {"production": "1.1.0"}
    moves = json.loads(ok(run, "alias", "history", "--model-name", "clf", "--alias", "production", "--json"))
    assert [(m["before"], m["after"]) for m in moves] == [(None, "1.0.0"), ("1.0.0", "1.1.0")]
    assert (
        ok(run, "alias", "history", "--model-name", "clf", "--alias", "production", "--at", "2999-01-01").strip()
        == "1.1.0"
    )
    assert_user_error(run("alias", "set", "--model-name", "clf", "--alias", "latest", "--version", "1.0.0"), "reserved")
    assert_user_error(
        run("alias", "set", "--model-name", "clf", "--alias", "2.0", "--version", "1.0.0"), "looks like a version"
    )
    ok(run, "alias", "rm", "--model-name", "clf", "--alias", "production")
    assert json.loads(ok(run, "alias", "list", "--model-name", "clf", "--json")) == {}
    assert_user_error(run("alias", "rm", "--model-name", "clf", "--alias", "production"), "no alias")


@pytest.mark.usefixtures("three")
def test_list_info_compare_show_aliases_and_tags(run: Run) -> None:
    ok(run, "alias", "set", "--model-name", "clf", "--alias", "production", "--version", "1.1.0")
    ok(run, "tag", "set", "--model-name", "clf", "--version", "1.1.0", "stage", "approved")
    ok(run, "tag", "set", "--model-name", "clf", "team", "risk")
    rows = json.loads(ok(run, "list", "--model-name", "clf", "--json"))
    assert [(r["version"], r["aliases"], r["tags"]) for r in rows] == [
        ("1.0.0", [], {}),
        ("1.1.0", ["production"], {"stage": "approved"}),
        ("2.0.0", [], {}),
    ]
    table = ok(run, "list", "--model-name", "clf")
    assert "production" in table and "stage=approved" in table
    info = json.loads(ok(run, "info", "--model-name", "clf@production", "--json"))
    assert (info["version"], info["aliases"], info["tags"]) == ("1.1.0", ["production"], {"stage": "approved"})
    assert "production" in ok(run, "info", "--model-name", "clf", "--version", "@production")
    compared = json.loads(ok(run, "compare", "--model-name", "clf", "--json"))
    assert [(r["version"], r["aliases"], r["tags.stage"]) for r in compared] == [
        ("1.0.0", "", None),
        ("1.1.0", "production", "approved"),
        ("2.0.0", "", None),
    ]
    assert json.loads(ok(run, "tag", "list", "--model-name", "clf", "--json")) == {"team": "risk"}
    assert json.loads(ok(run, "tag", "rm", "--model-name", "clf", "team", "--json")) == {}
    assert_user_error(run("tag", "rm", "--model-name", "clf", "team"), "no tag")


@pytest.mark.usefixtures("three")
def test_describe_and_history(run: Run) -> None:
    ok(run, "describe", "--model-name", "clf", "Predicts churn")
    ok(run, "describe", "--model-name", "clf", "--version", "2.0.0", "Retrained")
    assert ok(run, "describe", "--model-name", "clf").strip() == "Predicts churn"
    assert (
        json.loads(ok(run, "describe", "--model-name", "clf", "--version", "2.0.0", "--clear", "--json"))["description"]
        is None
    )
    entries = json.loads(ok(run, "history", "--model-name", "clf", "--json"))
    assert [e["action"] for e in entries] == ["save", "save", "save", "describe", "describe", "describe"]
    assert json.loads(ok(run, "history", "--limit", "1", "--json"))[0]["before"] == "Retrained"
    assert "describe" in ok(run, "history")


@pytest.mark.usefixtures("three")
def test_delete_restore_prune_purge(run: Run, models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ok(run, "alias", "set", "--model-name", "clf", "--alias", "production", "--version", "1.0.0")
    assert_user_error(run("delete", "--model-name", "clf", "--version", "1.0.0"), "production")
    assert json.loads(ok(run, "delete", "--model-name", "clf", "--version", "1.1.0", "--json"))["trashed"] is True
    ok(run, "restore", "--model-name", "clf", "--version", "1.1.0")
    assert_user_error(run("restore", "--model-name", "clf", "--version", "1.1.0"), "not in the trash")
    dry = json.loads(ok(run, "prune", "--model-name", "clf", "--keep-last", "1", "--dry-run", "--json"))
    assert dry["versions"] == ["1.1.0"] and versions_of(run) == ["1.0.0", "1.1.0", "2.0.0"]
    assert json.loads(ok(run, "prune", "--model-name", "clf", "--keep-last", "1", "--json"))["versions"] == ["1.1.0"]
    assert versions_of(run) == ["1.0.0", "2.0.0"]
    artifact = models_dir / "clf" / "1.1.0"
    assert artifact.exists()
    # purge asks; without a terminal it needs --yes
    assert_user_error(run("purge"), "--yes")
    assert json.loads(ok(run, "purge", "--dry-run", "--json"))["would_purge"] == [["clf", "1.1.0"]]
    monkeypatch.setattr(modelkeep.cli_context, "stdin_is_interactive", lambda: True)
    declined = run("purge", input="n\n")
    assert declined.exit_code == 1 and "Purge 1 version(s)" in declined.stderr
    assert artifact.exists()
    assert json.loads(ok(run, "purge", "--yes", "--json")) == {"purged": [["clf", "1.1.0"]]}
    assert not artifact.exists()
    assert_user_error(run("purge", "--model-name", "clf", "--version", "2.0.0", "--yes"), "not in the trash")
    ok(run, "delete", "--model-name", "clf", "--version", "1.0.0", "--force")
    report = json.loads(ok(run, "gc", "--purge-deleted-older-than", "0s", "--min-age", "0", "--json"))
    assert report["purged"] == [["clf", "1.0.0"]]
    assert_user_error(run("gc", "--purge-deleted-older-than", "soon"), "not understood")


def test_help_lists_the_lifecycle_commands(run: Run) -> None:
    out = ok(run, "--help")
    for command in ("alias", "tag", "describe", "history", "restore", "purge", "prune"):
        assert command in out
