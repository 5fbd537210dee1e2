"""Roles and protected aliases in the library and the CLI, not only in the UI.

With an identity (an API token, ``identity=``), ``set_alias``, ``delete_alias``,
``delete(force=True)``, ``purge`` and the tag/description calls check the role;
without one the library behaves as before. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from modelkeep import AuthenticationError, ModelPersistence, PermissionDeniedError
from modelkeep.identity import AccessPolicy, Identity, acting_as

from ._cli_in_process import run_cli


@pytest.fixture
def reg(persistence: ModelPersistence) -> ModelPersistence:
    for v in ("1.0.0", "1.1.0", "1.2.0"):
        persistence.save({"v": v}, "churn", v)
    persistence.set_alias("churn", "production", "1.0.0")
    return persistence


def test_without_an_identity_nothing_changes(reg: ModelPersistence) -> None:
    reg.set_alias("churn", "production", "1.1.0")
    reg.delete("churn", "1.1.0", force=True)
    assert reg.purge("churn", "1.1.0") == [("churn", "1.1.0")]


def test_editor_token_moves_other_aliases_but_not_protected_ones(reg: ModelPersistence) -> None:
    reg.users.add("eddie", None, "editor")
    token = reg.users.new_token("eddie")
    with ModelPersistence(
        models_dir=reg.models_dir, registry_url=reg.index.url, index_schema=reg.index.schema, token=token
    ) as eddie:
        assert eddie.identity == Identity("eddie", "editor")
        eddie.set_alias("churn", "staging", "1.1.0")
        eddie.set_tag("churn", "owner", "eddie")
        for attempt in (
            lambda: eddie.set_alias("churn", "production", "1.1.0"),
            lambda: eddie.delete_alias("churn", "production"),
            lambda: eddie.delete("churn", "1.0.0", force=True),  # would remove production with it
        ):
            with pytest.raises(PermissionDeniedError, match="alias 'production' is protected"):
                attempt()
        eddie.save({"v": "1.3.0"}, "churn", "1.3.0")  # an editor saves, and the history says who
        assert eddie.history("churn", limit=1)[0].actor == "eddie"
        eddie.delete("churn", "1.2.0")
        with pytest.raises(PermissionDeniedError, match="needs the admin role"):
            eddie.purge("churn", "1.2.0")
    assert reg.get_aliases("churn") == {"production": "1.0.0", "staging": "1.1.0"}
    assert [(e.actor, e.action) for e in reg.history("churn", limit=4)] == [
        ("eddie", "alias_set"),
        ("eddie", "tag_set"),
        ("eddie", "save"),
        ("eddie", "delete"),
    ]


def test_named_users_and_configured_aliases(reg: ModelPersistence) -> None:
    reg.access = AccessPolicy.build(["production", "champion"], ["rel-eng"])
    with acting_as(Identity("rel-eng", "editor")):
        reg.set_alias("churn", "production", "1.1.0")
    with acting_as(Identity("eddie", "editor")), pytest.raises(PermissionDeniedError, match="rel-eng"):
        reg.set_alias("churn", "champion", "1.1.0")
    with acting_as(Identity("vera", "viewer")):
        with pytest.raises(PermissionDeniedError, match="needs the writer role"):
            reg.set_tag("churn", "k", "v")
        with pytest.raises(PermissionDeniedError, match="may not save versions"):
            reg.save({"v": 2}, "churn", "2.0.0")
    assert "2.0.0" not in reg.list_versions("churn")
    with acting_as(Identity("ada", "admin")):
        reg.set_alias("churn", "champion", "1.2.0")
    assert reg.history("churn", limit=1)[0].actor == "ada"


def test_unknown_token_or_another_users_token_is_refused(
    reg: ModelPersistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg.users.add("ann", None, "admin")
    token = reg.users.new_token("ann")
    with pytest.raises(AuthenticationError, match="unknown or revoked"):
        reg.sign_in("mkt_" + "A" * 43)
    monkeypatch.setenv("MODELKEEP_USER", "bob")
    with pytest.raises(AuthenticationError, match="belongs to another user"):
        ModelPersistence(
            models_dir=reg.models_dir, registry_url=reg.index.url, index_schema=reg.index.schema, token=token
        )


def test_cli_users_and_token(
    local_persistence: ModelPersistence, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_persistence.save({"a": 1}, "m", "1.0.0")
    local_persistence.close()
    models_dir = str(local_persistence.models_dir)

    def run(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli("--models-dir", models_dir, *args, stdin=stdin, env=env)  # in process: the CLI's answers

    assert run("users", "add", "ann", "--role", "admin", "--password-stdin", stdin="long-enough-1\n").returncode == 0
    assert run("users", "add", "bob", "--role", "editor", "--no-password").returncode == 0
    short = run("users", "add", "cy", "--password-stdin", stdin="short\n")
    assert short.returncode == 1 and "at least 8 characters" in short.stderr
    listed = run("users", "list").stdout
    assert "ann\tadmin\tpassword" in listed and "bob\tmaintainer\tno password" in listed and "$argon2" not in listed
    token = run("users", "token", "bob").stdout.strip()
    assert token.startswith("mkt_")
    as_bob = {"MODELKEEP_TOKEN": token}
    refused = run("alias", "set", "--model-name", "m", "--alias", "production", "--version", "1.0.0", env=as_bob)
    assert refused.returncode == 1 and "protected" in refused.stderr and "Traceback" not in refused.stderr
    assert (
        run("alias", "set", "--model-name", "m", "--alias", "staging", "--version", "1.0.0", env=as_bob).returncode == 0
    )
    assert run("alias", "set", "--model-name", "m", "--alias", "production", "--version", "1.0.0").returncode == 0
    kept = run("alias", "rm", "--model-name", "m", "--alias", "production", env=as_bob)
    assert kept.returncode == 1 and "protected" in kept.stderr and "Traceback" not in kept.stderr
    assert "production" in run("alias", "list", "--model-name", "m").stdout
    removed = run("alias", "rm", "--model-name", "m", "--alias", "staging", env=as_bob)
    assert removed.returncode == 0 and "pointed at 1.0.0" in removed.stdout + removed.stderr
    no_admin = run("users", "remove", "ann", env=as_bob)
    assert no_admin.returncode == 1 and "needs the admin role" in no_admin.stderr
    assert run("users", "remove", "bob").returncode == 0
    gone = run("alias", "list", "--model-name", "m", env=as_bob)
    assert gone.returncode == 1 and "unknown or revoked API token" in gone.stderr
