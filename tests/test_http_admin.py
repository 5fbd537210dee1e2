# ruff: noqa: F811  (the server fixture is imported from test_http_api and taken by name)
"""The admin routes of a registry server (issue 28): gc, reindex, webhooks, event dispatch, sent
as raw HTTP, the way anyone who can reach the port would send them; and ``copy`` with a server on
either side.

Only an admin gets through; a viewer, a writer, a maintainer and a stranger are refused before
anything happens (no webhook added, no secret written on the server's disk). A webhook's URL is
checked on the server as a local ``add`` checks it, its secret comes from the client and is
never shown again, and its deliveries leave from the server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from modelkeep import ModelPersistence
from modelkeep.api.webhook_routes import secrets_dir
from modelkeep.api.wire import API_PREFIX
from modelkeep.copy_through import copy_through_bundles
from modelkeep.errors import ConfigError, VersionExistsError
from tests._http_server import HttpServer
from tests._receiver import Receiver, wait_for
from tests.test_http_api import bearer, server  # noqa: F401  (the fixture: a filled registry's server, in process)

SECRET = "a secret of the webhook, 32 bytes"

#: Every admin route, with a body that would succeed for an admin.
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/admin/gc", {"dry_run": True}),
    ("POST", "/admin/reindex", None),
    ("POST", "/admin/backfill-params", {}),
    ("POST", "/events/dispatch", {}),
    ("GET", "/webhooks", None),
    ("POST", "/webhooks", {"url": "http://127.0.0.1:9/hook", "events": "*", "secret": SECRET}),
    ("DELETE", "/webhooks/1", None),
    ("POST", "/webhooks/1/test", {"timeout": 1}),
    ("GET", "/deliveries", None),
    ("POST", "/deliveries/x/redeliver", None),
]


def call(server: HttpServer, token: str | None, method: str, path: str, body: Any = None) -> httpx.Response:
    headers = bearer(token) if token else {}
    return httpx.request(method, server.url + API_PREFIX + path, json=body, headers=headers, timeout=30)


def test_every_admin_route_refuses_each_role_below_admin_and_strangers(server: HttpServer) -> None:
    tokens = {role: server.add_user(f"{role}-user", role) for role in ("viewer", "writer", "maintainer")}
    for method, path, body in ROUTES:
        for role, token in tokens.items():
            answer = call(server, token, method, path, body)
            assert answer.status_code == 403, (role, method, path, answer.text)
            assert answer.json()["error"]["class"] == "PermissionDeniedError"
            assert "admin" in answer.json()["error"]["message"]
        for stranger in (None, "mkt_not-a-token"):
            assert call(server, stranger, method, path, body).status_code == 401, (method, path)
    with server.direct() as p:
        assert p.webhooks.list() == []
    assert not secrets_dir().exists() or not any(secrets_dir().iterdir())


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/hook",
        "gopher://127.0.0.1:70/_POST",
        "http:///no-host",
        "javascript:alert(1)",
        "/relative/hook",
    ],
)
def test_a_hostile_webhook_url_is_refused_on_the_server(server: HttpServer, url: str) -> None:
    answer = call(server, server.token, "POST", "/webhooks", {"url": url, "events": "*", "secret": SECRET})
    assert answer.status_code == 400 and answer.json()["error"]["class"] == "ConfigError", answer.text
    assert "must be an http:// or https:// URL" in answer.json()["error"]["message"]
    with server.direct() as p:
        assert p.webhooks.list() == []
    assert not secrets_dir().exists() or not any(secrets_dir().iterdir())


def test_a_path_on_the_servers_disk_is_never_taken_as_the_secret(server: HttpServer, tmp_path: Path) -> None:
    on_server = tmp_path / "server-file"
    on_server.write_text("something only the server's host should read\n")
    body = {"url": "http://127.0.0.1:9/hook", "events": "*", "secret_file": str(on_server)}
    answer = call(server, server.token, "POST", "/webhooks", body)
    assert answer.status_code == 400 and "'secret' is required" in answer.json()["error"]["message"]
    short = call(server, server.token, "POST", "/webhooks", {**body, "secret": "short"})
    assert short.status_code == 400 and "16" in short.json()["error"]["message"]
    with server.direct() as p:
        assert p.webhooks.list() == []


def test_an_admin_runs_webhooks_through_the_server(server: HttpServer, tmp_path: Path) -> None:
    receiver = Receiver()
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"\xff" * 32)
    with server.client() as admin, pytest.raises(ConfigError, match="must be text"):
        admin.webhooks.add(receiver.url, events="*", secret_file=secret_file)
    secret_file.write_text(SECRET + "\n")
    with server.client() as admin:
        hook = admin.webhooks.add(receiver.url, events="alias.*", secret_file=secret_file, model="churn*")
        listed = call(server, server.token, "GET", "/webhooks")
        assert SECRET not in listed.text and str(secrets_dir()) not in listed.text
        assert listed.json()["webhooks"][0]["secret_file"] is None
        [row] = admin.webhooks.list()
        assert (row.id, row.url, row.events, row.model_glob) == (hook, receiver.url, "alias.*", "churn*")
        # the ping is POSTed by the server, signed with the secret the client sent
        outcome = admin.webhooks.test(hook, timeout=5)
        assert outcome.ok and outcome.code == 200
        assert receiver.received[-1].signed_by(SECRET.encode())
        admin.set_alias("churn", "staging", "1.0.0")
        dispatcher = admin.webhooks.dispatcher()
        wait_for(lambda: not dispatcher.run_once() and "alias.set" in [e["type"] for e in receiver.events()])
        [delivery] = admin.webhooks.deliveries(hook, status="delivered")
        assert delivery.event == "alias.set" and delivery.model == "churn"
        admin.webhooks.redeliver(delivery.delivery_id)
        assert admin.webhooks.deliveries(hook)[0].status == "pending"
        with server.direct() as p:  # the server keeps the secret in a file only its user reads
            kept = Path(p.webhooks.get(hook).secret_file)
        assert kept.parent == secrets_dir() and kept.stat().st_mode & 0o077 == 0
        assert kept.read_text().strip() == SECRET
        admin.webhooks.remove(hook)
        assert admin.webhooks.list() == [] and not kept.exists()
        with pytest.raises(KeyError, match="no webhook 7"):
            admin.webhooks.test(7)
    receiver.stop()


def test_the_openapi_document_lists_the_admin_routes(server: HttpServer) -> None:
    paths = httpx.get(server.url + API_PREFIX + "/openapi.json", timeout=30).json()["paths"]
    for method, path, _body in ROUTES:
        generic = path.replace("/1", "/{webhook}").replace("/x/", "/{delivery}/")
        assert "admin)" in paths[API_PREFIX + generic][method.lower()]["summary"], (method, path)


def test_gc_and_reindex_run_on_the_server_and_answer_its_report(server: HttpServer) -> None:
    with server.direct() as p:
        p.delete("fraud", "1")
        stray = Path(server.side.models_dir) / "churn" / "1.0.0" / "left-over.bin"
        stray.write_bytes(b"x" * 10)
        versions = len([r for m in p.list_models() for r in p.list_version_records(m)]) + len(p.list_trash())
    with server.client() as admin:
        report = admin.gc(dry_run=True, min_age_seconds=0, purge_deleted_older_than=0)
        assert report.dry_run and ("fraud", "1") in report.purged
        assert any(item.key.endswith("left-over.bin") for item in report.removed) and stray.exists()
        report = admin.gc(min_age_seconds=0)
        assert report.ok and not stray.exists()
        assert admin.reindex() == versions  # live and trashed: every version with its sidecar


def test_copy_into_and_out_of_a_server(server: HttpServer, tmp_path: Path) -> None:
    local = ModelPersistence(tmp_path / "local")
    local.save({"w": 1}, "spam", "1")
    local.save({"w": 2}, "spam", "2")
    local.set_alias("spam", "production", "2")
    with server.client() as remote:
        into = copy_through_bundles(local, remote)
        assert into.copied == [("spam", "1"), ("spam", "2")] and into.bytes_copied > 0
        assert remote.get_aliases("spam") == {"production": "2"}
        assert copy_through_bundles(local, remote).skipped == [("spam", "1"), ("spam", "2")]
        back = ModelPersistence(tmp_path / "back")
        out = copy_through_bundles(remote, back, models=["churn", "spam"])
        assert ("churn", "1.0.1") in out.copied and back.load("spam", "2") == {"w": 2}
        assert back.get_aliases("churn") == remote.get_aliases("churn")
        # a conflict anywhere: nothing copied; overwrite is not on offer through a server
        local.save({"w": 3}, "churn", "1.0.0")
        with pytest.raises(VersionExistsError, match=r"churn 1\.0\.0"):
            copy_through_bundles(local, remote)
        with pytest.raises(ConfigError, match="overwrite"):
            copy_through_bundles(local, remote, overwrite=True)
        assert remote.list_versions("churn") == ["1.0.0", "1.0.1"]


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ('{"timeout": 86400}', "'timeout' must be a number of seconds from 0.1 to 60"),
        ('{"timeout": 0}', "'timeout' must be a number of seconds from 0.1 to 60"),
        ('{"lease": 1e12}', "'lease' must be a number of seconds from 0.5 to 3600"),
        ('{"max_attempts": 1000000}', "'max_attempts' must be a whole number from 1 to 1000"),
        ('{"max_attempts": 2.5}', "'max_attempts' must be a whole number from 1 to 1000"),
        ('{"backoff": -1}', "'backoff' must be a number of seconds from 0 to 86400"),
        ('{"timeout": "10"}', "'timeout' must be a number of seconds from 0.1 to 60"),
        ('{"timeout": NaN}', "NaN is not a JSON number"),
        ('{"lease": Infinity}', "Infinity is not a JSON number"),
        ('{"max_backoff": 1e400}', "1e400 is too large for a number here"),
    ],
)
def test_a_dispatch_pass_refuses_settings_out_of_range_before_it_runs(server: HttpServer, raw: str, says: str) -> None:
    """One pass runs in a worker thread of the server: an admin's day-long timeout, a NaN (which
    passes every ``< 0`` check) or a number JSON cannot hold is refused, naming the setting."""
    answer = httpx.post(
        server.url + API_PREFIX + "/events/dispatch",
        content=raw,
        headers={**bearer(server.token), "Content-Type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == 400, answer.text
    assert says in answer.text


def test_a_dispatch_pass_takes_settings_within_range(server: HttpServer) -> None:
    body = {"timeout": 60, "backoff": 0, "max_backoff": 604800, "max_attempts": 1, "lease": 0.5}
    answer = call(server, server.token, "POST", "/events/dispatch", body)
    assert answer.status_code == 200 and answer.json() == {"busy": False}, answer.text
