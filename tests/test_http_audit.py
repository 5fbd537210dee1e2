"""The audit of a registry server: user management through the server writes history rows with
the signed-in admin (never a password or a token), only admins read them or list users, tokens
and grants (raw HTTP as a viewer and a writer: 403), and a bundle import is recorded with who
imported it. The server runs in this process (tests/_http_server.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from modelkeep import ModelPersistence
from modelkeep.cli import cli
from modelkeep.index.audit import USER_ACTIONS, USERS_LOG

from ._http_server import HttpServer, ServerSide, running_server

SECRET = "correct horse battery staple"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HttpServer]:
    with running_server(ServerSide(str(tmp_path / "models")), tmp_path / "server", in_process=True) as srv:
        yield srv


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def manage_users(server: HttpServer) -> str:
    """Every user-management action through the server, as the admin; returns the token made."""
    with server.client() as c:
        c.users.add("dana", SECRET, "viewer")
        c.users.set_role("dana", "writer")
        c.users.set_password("dana", SECRET + "!")
        token = c.users.new_token("dana", "ci")
        token_id = c.users.tokens("dana")[0].token_id
        c.users.grant("dana", "churn*", "maintainer")
        c.users.revoke_grant("dana", "churn*")
        c.users.revoke_token("dana", token_id)
        c.users.remove("dana")
    return token


def test_user_management_through_the_server_is_in_the_history_with_the_admin(
    tmp_path: Path, server: HttpServer
) -> None:
    token = manage_users(server)
    with server.client() as c:
        rows = [e for e in c.history(USERS_LOG) if e.key == "dana"]  # the test server's admin came first
        assert [e.action for e in rows] == [
            "user_add",
            "user_role",
            "user_password",
            "token_new",
            "grant",
            "grant_revoke",
            "token_revoke",
            "user_remove",
        ]
        assert {e.actor for e in rows} == {"admin"} and {e.key for e in rows} == {"dana"}
        assert rows[1].before == "viewer" and rows[1].after == "writer"
        assert rows[3].after["label"] == "ci" and rows[3].after["token_id"] == rows[6].before["token_ids"][0]
        assert rows[4].after == {"glob": "churn*", "role": "maintainer"}
        assert [e.key for e in c.history(actions=("user_add",))] == ["admin", "dana"]  # in the whole log too
    # Neither the password, its hash, nor the token: not in the index, not in the store's event files.
    with server.direct() as d:
        everything = json.dumps([e.to_dict() for e in d.history()])
        stored = b"".join(p.read_bytes() for p in Path(server.side.models_dir).rglob("*.json"))
    for secret in (SECRET, token, "argon2"):
        assert secret not in everything and secret.encode() not in stored


def test_only_admins_read_the_user_log_and_the_user_listings(tmp_path: Path, server: HttpServer) -> None:
    manage_users(server)
    viewer, writer = server.add_user("vera", "viewer"), server.add_user("walt", "writer")
    maintainer = server.add_user("mo", "maintainer")
    for token in (viewer, writer, maintainer):
        for path in ("/users", "/users/vera/tokens", "/users/vera/grants", "/users/admin/tokens"):
            answer = httpx.get(f"{server.url}/api/v1{path}", headers=auth(token), timeout=30)
            assert answer.status_code == 403, (path, answer.text)
            assert answer.json()["error"]["class"] == "PermissionDeniedError"
        answer = httpx.post(f"{server.url}/api/v1/users", json={"name": "x"}, headers=auth(token), timeout=30)
        assert answer.status_code == 403
        log = httpx.get(f"{server.url}/api/v1/history", headers=auth(token), timeout=30).json()["history"]
        assert [e for e in log if e["model_name"] == USERS_LOG or e["action"] in USER_ACTIONS] == []
        only = httpx.get(
            f"{server.url}/api/v1/history", params={"model": USERS_LOG}, headers=auth(token), timeout=30
        ).json()["history"]
        assert only == []
    admin_log = httpx.get(f"{server.url}/api/v1/history", headers=auth(server.token), timeout=30).json()["history"]
    assert {e["action"] for e in admin_log if e["model_name"] == USERS_LOG} == set(USER_ACTIONS)
    users = httpx.get(f"{server.url}/api/v1/users", headers=auth(server.token), timeout=30).json()["users"]
    assert all("password_hash" not in u and not any("argon" in str(v) for v in u.values()) for u in users)


def test_the_cli_history_shows_the_user_log_to_admins(tmp_path: Path, server: HttpServer) -> None:
    manage_users(server)
    viewer = server.add_user("vera", "viewer")

    def run(token: str) -> list[dict[str, Any]]:
        config = tmp_path / f"{token[:8]}.json"
        config.write_text(json.dumps({"persistence": {"registry_url": server.url, "token": token}}))
        done = CliRunner().invoke(cli, ["--config", str(config), "history", "--model-name", USERS_LOG, "--json"])
        assert done.exit_code == 0, done.output
        return list(json.loads(done.output))

    assert [e["action"] for e in run(server.token) if e["key"] == "dana"][:2] == ["user_add", "user_role"]
    assert run(viewer) == []


def test_the_user_log_survives_a_reindex_and_stays_out_of_events_for_non_admins(tmp_path: Path) -> None:
    from modelkeep.identity import Identity

    with ModelPersistence(tmp_path / "models") as p:
        p.save({"w": 1}, "churn", "1.0.0")
        p.users.add("dana", None, "viewer")
        p.users.grant("dana", "churn*", "writer")
        assert p.reindex() == 1
        assert [e.action for e in p.history(USERS_LOG)] == ["user_add", "grant"]
        assert p.list_models() == ["churn"]  # the log is no model
        events = [e["type"] for e in p.events()]
        assert "user.added" in events and "grant.set" in events
    with ModelPersistence(tmp_path / "models", identity=Identity("vera", "viewer")) as viewer:
        assert all(e["model"] != USERS_LOG for e in viewer.events())
        assert viewer.history(USERS_LOG) == []


def test_a_bundle_import_is_recorded_with_who_imported_it(tmp_path: Path, server: HttpServer) -> None:
    with ModelPersistence(tmp_path / "source") as p:
        p.save({"w": 1}, "churn", "1.0.0")
        bundle = p.export_bundle("churn", tmp_path / "churn.mkb")
    writer = server.add_user("walt", "writer")
    with server.client(writer) as c:
        c.import_bundle(bundle)
        c.import_bundle(bundle)
        imports = c.history("churn", actions=("import",))
    assert [(e.actor, e.after["imported"], e.after["skipped"]) for e in imports] == [
        ("walt", ["1.0.0"], []),
        ("walt", [], ["1.0.0"]),
    ]


def test_the_history_page_shows_the_user_log_to_admins_without_a_model_link(server: HttpServer) -> None:
    manage_users(server)
    page = httpx.get(f"{server.url}/history", headers=auth(server.token), timeout=30)
    assert page.status_code == 200 and "user_role" in page.text
    assert 'href="/models/_users"' not in page.text
    viewer = server.add_user("vera", "viewer")
    assert "user_role" not in httpx.get(f"{server.url}/history", headers=auth(viewer), timeout=30).text
