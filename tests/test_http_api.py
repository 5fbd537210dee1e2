"""The registry server's JSON API (everything but artifact transfers), over raw HTTP and through
:class:`~modelkeep.api.client.HttpRegistry`: who may do what, errors that come back as the same
classes, the OpenAPI document, the Host check, the history's users, and signature verdicts made
with the client's keys, never the server's.

Raw requests go through Starlette's test client or httpx; the client talks to a real server
(``tests/_http_server.py``: in process, or a ``modelkeep server`` process for the CLI and the
PostgreSQL + S3 backend).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from modelkeep import (
    AliasConflictError,
    AuthenticationError,
    ConfigError,
    FilterError,
    ModelNotFoundError,
    ModelPersistence,
    PermissionDeniedError,
    StorageError,
    VersionNotFoundError,
    keys,
)
from modelkeep.api.client import HttpRegistry
from modelkeep.api.routes import documented_path
from modelkeep.api.transfers import RECORD_LENGTH_HEADER
from modelkeep.api.wire import API_PREFIX, PROTOCOL, PROTOCOL_HEADER
from modelkeep.errors import InvalidNameError, RequestError, ServerOnlyError, UserNotFoundError
from modelkeep.identity import Identity
from modelkeep.ui import create_app
from modelkeep.ui.security import FIELD

from ._cli_in_process import run_cli as run_cli_in_process
from ._http_server import HttpServer, ServerSide, running_server
from .test_signing_keys import key_pair

BASE = "http://127.0.0.1:8766"
API = BASE + API_PREFIX


def fill(p: ModelPersistence) -> None:
    """``churn`` 1.0.0 (accuracy 0.90), 1.0.1 (0.95, production) and 1.0.2 (0.80, trashed)."""
    p.save({"w": 1}, "churn", "1.0.0", accuracy=0.90, dataset="v1")
    p.save({"w": 2}, "churn", "1.0.1", accuracy=0.95, dataset="v2")
    p.save({"w": 3}, "churn", "1.0.2", accuracy=0.80, dataset="v2")
    p.save({"f": 1}, "fraud", "1", auc=0.7)
    p.set_alias("churn", "production", "1.0.1")
    p.set_tag("churn", "team", "risk")
    p.delete("churn", "1.0.2")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ModelPersistence]:
    """A filled registry with an admin, an editor and a viewer (no passwords: tokens only)."""
    p = ModelPersistence(tmp_path / "models")
    fill(p)
    for name, role in (("ada", "admin"), ("ed", "editor"), ("vi", "viewer")):
        p.users.add(name, None, role)
    yield p
    p.close()


@pytest.fixture
def tokens(registry: ModelPersistence) -> dict[str, str]:
    return {name: registry.users.new_token(name, "tests") for name in ("ada", "ed", "vi")}


@pytest.fixture
def raw(registry: ModelPersistence) -> TestClient:
    """Raw HTTP to the server's app (what ``modelkeep server`` serves), without a socket."""
    return TestClient(create_app(registry, anonymous=False), base_url=BASE)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HttpServer]:
    """A server (in process) on a filled registry; its token is an admin's."""
    side = ServerSide(str(tmp_path / "served"))
    with ModelPersistence(**side.options()) as p:
        fill(p)
    with running_server(side, tmp_path / "server", in_process=True) as running:
        yield running


# -- who may do what ----------------------------------------------------------------------------


def test_no_token_is_a_json_401(raw: TestClient) -> None:
    response = raw.get(API + "/models")
    assert response.status_code == 401
    assert response.json()["error"]["class"] == "AuthenticationError"
    assert "Bearer" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "header",
    [
        "Bearer mkt_" + "A" * 43,  # well-formed, never issued
        "Bearer not-a-token",
        "Basic YWRhOmFkbWluLXBhc3M=",  # another scheme
        "Bearer ",
    ],
)
def test_forged_or_malformed_tokens_are_401(raw: TestClient, tokens: dict[str, str], header: str) -> None:
    response = raw.get(API + "/models", headers={"Authorization": header})
    assert response.status_code == 401, response.text
    assert response.json()["error"]["class"] == "AuthenticationError"


def test_a_token_with_one_character_changed_is_refused(raw: TestClient, tokens: dict[str, str]) -> None:
    real = tokens["ada"]
    forged = real[:-1] + ("A" if real[-1] != "A" else "B")
    assert raw.get(API + "/models", headers=bearer(real)).status_code == 200
    assert raw.get(API + "/models", headers=bearer(forged)).status_code == 401


def test_a_revoked_token_is_refused(raw: TestClient, tokens: dict[str, str]) -> None:
    assert raw.get(API + "/models", headers=bearer(tokens["ed"])).status_code == 200
    revoked = raw.delete(API + "/users/ed/tokens", headers=bearer(tokens["ada"]))
    assert revoked.json() == {"revoked": 1}
    response = raw.get(API + "/models", headers=bearer(tokens["ed"]))
    assert response.status_code == 401
    assert response.json()["error"]["class"] == "AuthenticationError"


def test_a_token_revoked_through_one_server_process_is_refused_at_once_by_another(tmp_path: Path) -> None:
    """Two server processes on one registry. A token one of them has just checked for saves and
    loads (the routes that reuse a recent check: modelkeep.api.token_hints) is refused there at
    once when an admin revokes it through the other; a user made a viewer there saves no more."""
    side = ServerSide(str(tmp_path / "models"))
    with running_server(side, tmp_path / "b") as b, running_server(side, tmp_path / "a", in_process=True) as a:
        ed, kim = b.add_user("ed", "writer"), b.add_user("kim", "writer")
        with b.client(token=ed) as ed_b, b.client(token=kim) as kim_b, a.client() as admin_a:
            for c, name in ((ed_b, "m"), (kim_b, "k")):
                for n in range(3):  # the first request checks the token; the others reuse that check
                    c.save_version({"n": n}, name)
                    assert c.load(name) == {"n": n}
            assert admin_a.users.revoke_tokens("ed") == 1
            admin_a.users.set_role("kim", "viewer")
            with pytest.raises(AuthenticationError):
                ed_b.load("m")
            with pytest.raises(AuthenticationError):
                ed_b.save_version({"n": 9}, "m")
            with pytest.raises(PermissionDeniedError):
                kim_b.save_version({"n": 9}, "k")
            assert kim_b.load("k") == {"n": 2}  # a viewer still reads
        with b.direct() as p:
            assert p.list_versions("m") == p.list_versions("k") == ["1.0.0", "1.0.1", "1.0.2"]


def test_reads_and_alias_moves_reuse_a_tokens_check_only_until_their_work_runs(
    raw: TestClient, registry: ModelPersistence, tokens: dict[str, str]
) -> None:
    """The reads and lifecycle changes take a token's recent check as a hint (one worker-thread hop,
    not two: modelkeep.api.token_hints) and check the token again in the thread of their work: a
    demotion, a removed grant or a revoked token counts from the very next request."""
    ed, admin = bearer(tokens["ed"]), bearer(tokens["ada"])
    registry.users.add("gus", None, "viewer")
    registry.users.grant("gus", "fraud", "editor")
    gus = bearer(registry.users.new_token("gus", "tests"))
    assert raw.put(API + "/models/churn/aliases/staging", headers=ed, json={"version": "1.0.0"}).status_code == 200
    assert raw.put(API + "/models/fraud/tags/x", headers=gus, json={"value": "1"}).status_code == 200
    assert raw.get(API + "/models/fraud/versions/latest", headers=gus).status_code == 200
    assert raw.put(API + "/users/ed/role", headers=admin, json={"role": "viewer"}).status_code == 200
    moved = raw.put(API + "/models/churn/aliases/staging", headers=ed, json={"version": "1.0.1"})
    assert moved.status_code == 403 and moved.json()["error"]["class"] == "PermissionDeniedError"
    assert raw.get(API + "/models/churn/aliases", headers=ed).json() == {
        "aliases": {"production": "1.0.1", "staging": "1.0.0"}
    }
    assert raw.delete(API + "/users/gus/grants", headers=admin, params={"glob": "fraud"}).status_code == 200
    tagged = raw.put(API + "/models/fraud/tags/x", headers=gus, json={"value": "2"})
    assert tagged.status_code == 403, tagged.text
    assert registry.get_tags("fraud") == {"x": "1"}
    assert raw.delete(API + "/users/ed/tokens", headers=admin).json() == {"revoked": 1}
    for method, path, body in (
        ("GET", "/models/churn/versions/latest", None),
        ("POST", "/search/versions", {"filter": "accuracy > 0"}),
        ("GET", "/models/churn/aliases/production/plan?version=1.0.0", None),
    ):
        response = raw.request(method, API + path, headers=ed, json=body)
        assert response.status_code == 401, (path, response.text)
        assert response.json()["error"]["class"] == "AuthenticationError"


#: The routes declared ``hinted`` (the reads and lifecycle changes whose handlers work only through
#: ``Api.call``, and the one-request save and load): a route joins only by a change here too.
HINTED = {
    "GET /models",
    "GET /summaries",
    "GET /aliases",
    "GET /history",
    "POST /search/versions",
    "POST /search/models",
    "GET /trash",
    "GET /policies",
    "GET /events",
    "GET /events/horizon",
    "POST /models/{name}/save",
    "GET /models/{name}/versions/{version}/load",
    "GET /models/{name}/aliases/{alias}/load",
    *(
        f"{method} /models/{{name}}{path}"
        for method, path in (
            ("GET", "/versions"),
            ("GET", "/records"),
            ("GET", "/versions/{version}"),
            ("DELETE", "/versions/{version}"),
            ("POST", "/versions/{version}/restore"),
            ("POST", "/versions/{version}/approvals"),
            ("GET", "/versions/{version}/removal-plan"),
            ("POST", "/versions/{version}/trash"),
            ("GET", "/versions/{version}/removals"),
            ("GET", "/approvals"),
            ("POST", "/compare"),
            ("GET", "/best"),
            ("GET", "/metrics/{metric:path}"),
            ("GET", "/aliases"),
            ("PUT", "/aliases/{alias}"),
            ("DELETE", "/aliases/{alias}"),
            ("GET", "/aliases/{alias}/history"),
            ("GET", "/aliases/{alias}/at"),
            ("GET", "/aliases/{alias}/check"),
            ("GET", "/aliases/{alias}/state"),
            ("GET", "/aliases/{alias}/plan"),
            ("POST", "/aliases/{alias}/signed"),
            ("GET", "/tags"),
            ("PUT", "/tags/{key:path}"),
            ("DELETE", "/tags/{key:path}"),
            ("GET", "/description"),
            ("PUT", "/description"),
        )
    ),
}


def test_no_admin_route_takes_a_hint() -> None:
    """The admin routes check the caller's role on the event loop, before their work's thread: a
    hint (a token's identity a moment ago) must never decide that. The routes that take one are
    these (each a route: a name here that none has fails too)."""
    from modelkeep.api.routes import Api

    async def nobody(_request: Any) -> None:
        return None

    api = Api(ModelPersistence.__new__(ModelPersistence), nobody)
    hinted = [e for e in api.endpoints() if e.hinted]
    assert {f"{e.method} {e.path}" for e in hinted} == HINTED
    assert not [f"{e.method} {e.path}" for e in hinted if "admin" in e.summary or e.path.startswith("/users")]


def test_a_removed_users_token_is_refused(raw: TestClient, tokens: dict[str, str]) -> None:
    assert raw.delete(API + "/users/vi", headers=bearer(tokens["ada"])).status_code == 200
    assert raw.get(API + "/models", headers=bearer(tokens["vi"])).status_code == 401


def test_a_viewer_reads_but_every_write_is_403(raw: TestClient, tokens: dict[str, str]) -> None:
    vi = bearer(tokens["vi"])
    assert raw.get(API + "/models", headers=vi).json() == {"models": ["churn", "fraud"]}
    writes = [
        ("PUT", "/models/churn/aliases/staging", {"version": "1.0.0"}),
        ("DELETE", "/models/churn/aliases/production", None),
        ("PUT", "/models/churn/tags/x", {"value": "y"}),
        ("PUT", "/models/churn/description", {"text": "mine"}),
        ("DELETE", "/models/churn/versions/1.0.0", None),
        ("POST", "/models/churn/versions/1.0.2/restore", None),
        ("POST", "/purge", {}),
        ("POST", "/models/churn/prune", {"keep_last": 1}),
        ("PUT", "/policies", {"model": "churn", "alias": "production", "approvals": 1}),
        ("POST", "/models/churn/versions/1.0.0/approvals", {"alias": "production"}),
        ("GET", "/users", None),
        ("POST", "/users", {"name": "mallory", "role": "admin"}),
        ("POST", "/users/vi/tokens", {}),
        ("PUT", "/users/vi/role", {"role": "admin"}),
    ]
    for method, path, body in writes:
        response = raw.request(method, API + path, headers=vi, json=body)
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["error"]["class"] in ("PermissionDeniedError", "PolicyError"), (method, path)
    assert raw.get(API + "/models/churn/aliases", headers=vi).json() == {"aliases": {"production": "1.0.1"}}
    assert raw.get(API + "/users/vi/tokens", headers=vi).status_code == 403  # not even their own list


def test_an_editor_moves_aliases_but_not_protected_ones_and_manages_no_users(
    raw: TestClient, tokens: dict[str, str]
) -> None:
    ed = bearer(tokens["ed"])
    assert raw.put(API + "/models/churn/aliases/staging", headers=ed, json={"version": "1.0.0"}).status_code == 200
    response = raw.put(API + "/models/churn/aliases/production", headers=ed, json={"version": "1.0.0"})
    assert response.status_code == 403 and "production" in response.json()["error"]["message"]
    assert raw.post(API + "/users", headers=ed, json={"name": "x", "role": "viewer"}).status_code == 403


def test_the_history_records_the_tokens_user(server: HttpServer) -> None:
    ed_token = server.add_user("eve", "editor")
    with server.client(ed_token) as eve:
        eve.set_tag("churn", "reviewed", "yes")
        eve.set_alias("churn", "staging", "1.0.0")
    rows = server.client().history("churn", actions=("tag_set", "alias_set"))
    assert [(r.actor, r.action, r.after) for r in rows[-2:]] == [
        ("eve", "tag_set", "yes"),
        ("eve", "alias_set", "1.0.0"),
    ]


# -- errors cross the wire as the same classes --------------------------------------------------


def test_unknown_model_is_404_model_not_found(raw: TestClient, tokens: dict[str, str]) -> None:
    response = raw.get(API + "/models/nope/versions/latest", headers=bearer(tokens["vi"]))
    assert response.status_code == 404
    assert response.json()["error"]["class"] == "ModelNotFoundError"
    response = raw.get(API + "/models/churn/versions/9.9.9", headers=bearer(tokens["vi"]))
    assert response.status_code == 404
    assert response.json()["error"]["class"] == "VersionNotFoundError"


def _raised(call: Any) -> BaseException:
    with pytest.raises(Exception) as info:
        call()
    return info.value


@pytest.mark.parametrize(
    "call",
    [
        lambda p: p.get_version("nope"),
        lambda p: p.get_version("churn", "9.9.9"),
        lambda p: p.get_version("churn", "1.0.2"),  # trashed
        lambda p: p.get_version("churn", alias="nowhere"),
        lambda p: p.set_alias("churn", "production", "1.0.0", expected="1.0.0"),  # compare-and-set lost
        lambda p: p.search_versions("accuracy >"),
        lambda p: p.search_versions("no_such_field = 1"),
        lambda p: p.restore("churn", "1.0.0"),  # not in the trash
        lambda p: p.set_alias("churn", "no spaces allowed", "1.0.0"),
        lambda p: p.list_version_records("nope"),
        lambda p: p.best_version("churn", "accuracy", "sideways"),
        lambda p: p.delete("churn", "1.0.1"),  # production points at it
        lambda p: p.purge(older_than="soon"),
    ],
)
def test_errors_are_the_classes_and_messages_a_local_registry_raises(server: HttpServer, call: Any) -> None:
    with server.direct() as local:
        expected = _raised(lambda: call(local))
    with server.client() as remote:
        got = _raised(lambda: call(remote))
    assert type(got) is type(expected)
    assert str(got) == str(expected)
    assert getattr(got, "cli_spelling", {}) == getattr(expected, "cli_spelling", {})


def test_error_classes_keep_their_builtin_bases(server: HttpServer) -> None:
    with server.client() as remote:
        with pytest.raises(KeyError):
            remote.get_version("churn", "9.9.9")
        with pytest.raises(VersionNotFoundError):
            remote.get_version("churn", "9.9.9")
        with pytest.raises(VersionNotFoundError, match="in the trash"):
            remote.get_version("churn", "1.0.2")
        with pytest.raises(VersionNotFoundError, match="not in the trash"):
            remote.restore("churn", "1.0.1")
        with pytest.raises(AliasConflictError):
            remote.set_alias("churn", "production", "1.0.0", expected="1.0.0")
        with pytest.raises(FilterError):
            remote.search_versions("accuracy >")
        with pytest.raises(ModelNotFoundError):
            remote.list_version_records("nope")
        assert remote.get_metadata("nope") is None


def test_a_malformed_request_names_the_problem(raw: TestClient, tokens: dict[str, str]) -> None:
    ada = bearer(tokens["ada"])
    cases = [
        ("PUT", "/models/churn/aliases/staging", {"version": 3}, "'version' must be text"),
        ("PUT", "/models/churn/aliases/staging", {}, "'version' is required"),
        ("POST", "/search/versions", {"limit": "ten"}, "'limit' must be an integer"),
        ("GET", "/models/churn/metrics/accuracy?limit=x", None, "'limit' must be an integer"),
        ("PUT", "/models/churn/tags/x", {"value": ["y"]}, "'value' must be text"),
        ("PUT", "/policies", {"model": "churn", "alias": "p", "require_signature": ["/etc/passwd"]}, "PEM"),
    ]
    for method, path, body, message in cases:
        response = raw.request(method, API + path, headers=ada, json=body)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["class"] == "RequestError"
        assert message in response.json()["error"]["message"]
    for body in (b"{not json", b"[1, 2]"):
        response = raw.put(API + "/models/churn/aliases/staging", headers=ada, content=body)
        assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]


def test_a_newer_client_protocol_is_refused(raw: TestClient, tokens: dict[str, str]) -> None:
    response = raw.get(API + "/models", headers={**bearer(tokens["vi"]), PROTOCOL_HEADER: str(PROTOCOL + 1)})
    assert response.status_code == 400 and "upgrade the server" in response.json()["error"]["message"]
    assert raw.get(API + "/models", headers={**bearer(tokens["vi"]), PROTOCOL_HEADER: str(PROTOCOL)}).is_success


# -- the document and the Host check ----------------------------------------------------------


def test_the_openapi_document_lists_every_route(raw: TestClient, registry: ModelPersistence) -> None:
    document = raw.get(API + "/openapi.json").json()  # served without sign-in
    assert document["openapi"].startswith("3.")
    listed = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    served = {
        (method, documented_path(route.path))
        for route in create_app(registry).routes
        if isinstance(route, Route) and route.path.startswith(API_PREFIX) and route.path != API_PREFIX + "/openapi.json"
        for method in (route.methods or set()) - {"HEAD"}
    }
    assert served and listed == served
    for path, ops in document["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        for op in ops.values():
            assert op["summary"] and {p["name"] for p in op["parameters"] if p["in"] == "path"} == names


def test_each_route_is_the_first_to_match_its_own_paths(registry: ModelPersistence) -> None:
    """A {...:path} parameter (a tag key, a metric, a token id, a policy's model, a delivery id)
    takes '/' and newlines: no such route may swallow another route's paths, nor be shadowed."""
    from starlette.routing import Match

    app = create_app(registry)
    checked = 0
    for route in app.routes:
        if not isinstance(route, Route) or not route.path.startswith(API_PREFIX):
            continue
        for text in ("x", "a/b", "a\nb/../c", ""):
            path = re.sub(r"{\w+}", "x", re.sub(r"{\w+:path}", text, route.path))
            for method in route.methods or ():
                scope = {"type": "http", "path": path, "method": method, "root_path": ""}
                first = next((r for r in app.routes if r.matches(scope)[0] == Match.FULL), None)
                assert first is route, (method, path, getattr(first, "path", first))
                checked += 1
    assert checked > 300


def test_requests_for_another_host_name_are_refused(raw: TestClient, tokens: dict[str, str]) -> None:
    # DNS rebinding: a page on evil.example resolving to this server's address.
    response = raw.get(API + "/models", headers={**bearer(tokens["vi"]), "Host": "evil.example"})
    assert response.status_code == 400
    assert raw.get(API + "/models", headers={**bearer(tokens["vi"]), "Host": "127.0.0.1:8766"}).status_code == 200


def test_a_browser_session_cannot_change_anything_without_the_protocol_header(registry: ModelPersistence) -> None:
    registry.users.set_password("ed", "editor-pass-1")
    browser = TestClient(create_app(registry, anonymous=False), base_url=BASE)
    page = browser.get("/signin")
    token = re.search(rf'name="{FIELD}" value="([0-9a-f]+)"', page.text)
    assert token is not None
    signed_in = browser.post(
        "/signin",
        data={FIELD: token.group(1), "username": "ed", "password": "editor-pass-1", "next": "/"},
        follow_redirects=False,
    )
    assert signed_in.status_code == 303
    # What a cross-site form can send: the cookie, a text/plain body that happens to be JSON.
    forged = browser.put(
        API + "/models/churn/aliases/staging", content=b'{"version": "1.0.0"}', headers={"Content-Type": "text/plain"}
    )
    assert forged.status_code == 403 and PROTOCOL_HEADER in forged.json()["error"]["message"]
    assert browser.post(API + "/purge", content=b"{}", headers={"Content-Type": "text/plain"}).status_code == 403
    assert "staging" not in registry.get_aliases("churn")
    assert browser.get(API + "/models").status_code == 200  # reading is fine
    ok = browser.put(API + "/models/churn/aliases/staging", json={"version": "1.0.0"}, headers={PROTOCOL_HEADER: "1"})
    assert ok.status_code == 200 and registry.get_aliases("churn")["staging"] == "1.0.0"


# -- the client: the library's methods over HTTP -------------------------------------------------


def test_reads_match_the_registry_itself(server: HttpServer) -> None:
    with server.direct() as local, server.client() as remote:
        assert remote.list_models() == local.list_models()
        assert remote.list_versions("churn") == local.list_versions("churn")
        assert remote.model_summaries() == local.model_summaries()
        assert remote.all_aliases() == local.all_aliases() == {"churn": {"production": "1.0.1"}}
        for mine, theirs in zip(remote.list_version_records("churn"), local.list_version_records("churn"), strict=True):
            assert mine == theirs
            assert (mine.aliases, mine.tags, mine.description) == (theirs.aliases, theirs.tags, theirs.description)
        record = remote.get_version("churn@production")
        assert record.version == "1.0.1" and record.aliases == ["production"]
        assert remote.resolve_version("churn", alias="production") == "1.0.1"
        assert remote.get_version("churn", "@production") == local.get_version("churn", "@production")
        pd.testing.assert_frame_equal(remote.compare_versions("churn"), local.compare_versions("churn"))
        pd.testing.assert_frame_equal(
            remote.compare_versions("churn", ["1.0.0", "@production"], params="all"),
            local.compare_versions("churn", ["1.0.0", "@production"], params="all"),
        )
        pd.testing.assert_frame_equal(
            remote.compare_versions("churn", filter="accuracy > 0.92"),
            local.compare_versions("churn", filter="accuracy > 0.92"),
        )
        assert remote.metric_history("churn", "accuracy") == local.metric_history("churn", "accuracy")
        assert remote.best_version("churn", "accuracy", "min").version == "1.0.0"
        page = remote.search_versions("dataset = 'v2'", order_by="-accuracy", limit=1)
        assert [r.version for r in page.items] == ["1.0.1"] and page.next_page_token is None
        models = remote.search_models("accuracy > 0.5")
        assert [m.name for m in models.items] == ["churn"]
        assert remote.list_trash() == local.list_trash()
        assert remote.history() == local.history()
        assert remote.alias_history("churn", "production") == local.alias_history("churn", "production")
        assert remote.alias_at("churn", "production", "2000-01-01T00:00:00+00:00") is None
        assert remote.get_tags("churn") == {"team": "risk"}
        report = remote.verify()
        assert report.ok and report.to_dict() == local.verify().to_dict()


def test_writes_through_the_client(server: HttpServer) -> None:
    with server.client() as p:
        p.set_alias("churn", "staging", "1.0.0")
        p.set_alias("churn", "staging", "1.0.1", expected="1.0.0")
        assert p.delete_alias("churn", "staging", expected="1.0.1") == "1.0.1"
        p.set_tag("churn", "stage", "prod", version="1.0.1")
        assert p.get_tags("churn", version="1.0.1") == {"stage": "prod"}
        p.delete_tag("churn", "stage", version="1.0.1")
        p.set_description("churn", "Churn model")
        p.set_description("churn", "first", version="1.0.0")
        assert (p.get_description("churn"), p.get_description("churn", version="1.0.0")) == ("Churn model", "first")
        p.set_description("churn", None)
        assert p.get_description("churn") is None
        p.restore("churn", "1.0.2")
        assert p.prune("churn", 1, dry_run=True) == ["1.0.0"]
        assert p.prune("churn", 1) == ["1.0.0"]
        assert [v for _, v, _ in p.list_trash("churn")] == ["1.0.0"]
        assert p.purge("churn", "1.0.0") == [("churn", "1.0.0")]
        assert p.list_versions("churn") == ["1.0.1", "1.0.2"]
    with server.direct() as local:
        assert local.list_versions("churn") == ["1.0.1", "1.0.2"]
        assert [r.actor for r in local.history(actions=("purge",))] == ["admin"]


def test_policies_and_approvals_through_the_client(server: HttpServer, tmp_path: Path) -> None:
    _, public = key_pair(tmp_path, "release")
    with server.client() as admin:
        policy = admin.set_policy("churn", "production", approvals=1, require_signature=[str(public)])
        assert policy.require_signature == {keys.load_public_key(public).fingerprint: public.read_text()}
        assert admin.policies("churn") == [policy]
        check = admin.check_alias_move("churn", "production", "1.0.0")
        assert not check.ok and sorted(c.split()[0] for c, _ in check.failures) == ["approvals", "require_signature"]
        assert admin.remove_policy("churn", "production").alias == "production"
        admin.set_policy("churn", "production", approvals=1)
    with server.client(server.add_user("bob", "editor")) as bob:
        approval = bob.approve("churn", "1.0.0", "production")
        assert approval["user"] == "bob"
        assert bob.approvals("churn", "1.0.0", alias="production") == [approval]
    with server.client() as admin:
        assert admin.check_alias_move("churn", "production", "1.0.0").ok
        admin.set_alias("churn", "production", "1.0.0")
        assert admin.get_aliases("churn") == {"production": "1.0.0"}


def test_users_and_tokens_through_the_client(server: HttpServer) -> None:
    with server.client() as admin:
        assert admin.identity is not None and (admin.identity.name, admin.identity.role) == ("admin", "admin")
        admin.users.add("carol", "carol-pass-1", "viewer")
        token = admin.users.new_token("carol", "laptop")
        spare = admin.users.new_token("carol", "ci", expires_in=3600)
        listed = admin.users.tokens("carol")
        assert [t.label for t in listed] == ["laptop", "ci"]
        assert listed[0].expires_at is None and listed[1].expires_at is not None
        row = admin.users.get("carol")
        assert row is not None and row.role == "viewer" and row.password_hash == "(set)"  # no hash leaves
        with pytest.raises(UserNotFoundError):
            admin.users.set_role("nobody", "admin")
    with server.client(token) as carol:
        with pytest.raises(PermissionDeniedError, match="needs the writer role"):
            carol.set_tag("churn", "x", "y")
        with pytest.raises(PermissionDeniedError, match="admin"):
            carol.users.list()
    with server.client() as admin:
        admin.users.grant("carol", "churn*", "writer")  # a writer on churn only
        assert admin.users.grants("carol") == [("churn*", "writer")]
    with server.client(token) as carol:
        carol.set_tag("churn", "x", "y")
        with pytest.raises(PermissionDeniedError, match="needs the writer role"):
            carol.set_tag("fraud", "x", "y")
    with server.client() as admin:
        admin.users.revoke_grant("carol", "churn*")
        admin.users.set_role("carol", "editor")  # the old name of maintainer
        assert admin.users.get("carol").role == "maintainer"  # type: ignore[union-attr]
        admin.users.revoke_token("carol", listed[1].token_id)
    with pytest.raises(AuthenticationError), server.client(spare) as carol:
        carol.list_models()
    with server.client(token) as carol:
        carol.set_tag("fraud", "x", "y")
    with server.client() as admin:
        assert admin.users.revoke_tokens("carol") == 1
    with pytest.raises(AuthenticationError), server.client(token) as carol:
        carol.list_models()


def test_sign_in_switches_the_token(server: HttpServer) -> None:
    token = server.add_user("dan", "viewer")
    with server.client("") as anonymous:
        with pytest.raises(AuthenticationError):
            anonymous.list_models()
        assert anonymous.sign_in(token).name == "dan"
        assert anonymous.list_models() == ["churn", "fraud"]
        with pytest.raises(AuthenticationError):
            anonymous.sign_in("mkt_" + "x" * 43)
        with pytest.raises(AuthenticationError):
            anonymous.sign_in(token, name="someone-else")
        assert anonymous.list_models() == ["churn", "fraud"]  # still dan


def test_what_only_the_server_host_does_is_a_clear_error(server: HttpServer) -> None:
    with server.client() as p:
        for call in (lambda: p.store, lambda: p.index):
            with pytest.raises(ServerOnlyError, match="run it on the server's host"):
                call()
        assert not hasattr(p, "store")  # an AttributeError too
        assert isinstance(_raised(lambda: p.store), ConfigError)
        with pytest.raises(ServerOnlyError, match="'save_many' is not available through a registry server"):
            p.save_many  # noqa: B018  # a local registry's method, not the client's
        typo = _raised(lambda: p.lsit_versions)  # not a local registry's name either: Python's own error
        assert type(typo) is AttributeError and "lsit_versions" in str(typo) and "server" not in str(typo)
        assert typo.name == "lsit_versions" and typo.obj is p  # what Python's "Did you mean" reads


def test_every_name_of_a_local_registry_the_client_lacks_is_server_only(tmp_path: Path) -> None:
    """:data:`LOCAL_ONLY` is exact: the public names a local registry has (its class's and those its
    instance sets) that the client lacks, so each is a ServerOnlyError and any other a typo's error."""
    from modelkeep.api.client import LOCAL_ONLY

    with ModelPersistence(tmp_path / "models") as local:
        local.save({"w": 1}, "m")
        names = {n for n in [*vars(local), *dir(ModelPersistence)] if not n.startswith("_")}
    assert names - set(dir(HttpRegistry)) == LOCAL_ONLY


def test_the_environment_names_the_server_and_the_token(server: HttpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    token = server.add_user("env", "viewer")
    monkeypatch.setenv("MODELKEEP_REGISTRY_URL", server.url)
    monkeypatch.setenv("MODELKEEP_TOKEN", token)
    with ModelPersistence() as p:
        assert isinstance(p, HttpRegistry)
        assert p.list_models() == ["churn", "fraud"] and p.identity == Identity("env", "viewer")
    with ModelPersistence(registry_url=server.url, token=server.token) as p:  # arguments win
        assert p.identity == Identity("admin", "admin")


def test_plain_http_to_a_network_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="use https"):
        HttpRegistry("http://models.example:8766", token="mkt_x")
    monkeypatch.setenv("MODELKEEP_REGISTRY_URL", "http://10.0.0.5:8766")
    with pytest.raises(ConfigError, match="MODELKEEP_ALLOW_INSECURE_HTTP"):
        ModelPersistence()


def test_an_unreachable_server_is_a_storage_error_naming_it() -> None:
    from ._http_server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(OSError, match=re.escape(url)), HttpRegistry(url, token="t", connect_timeout=2) as p:
        p.list_models()


# -- signatures are judged by the client's keys ------------------------------------------------------


def test_signature_status_uses_the_clients_trusted_keys_not_the_servers(tmp_path: Path) -> None:
    private, public = key_pair(tmp_path, "ci")
    side = ServerSide(str(tmp_path / "served"))
    with ModelPersistence(**side.options(), signing_key_file=str(private)) as writer:
        writer.save({"w": 1}, "m", "1.0.0")
    with running_server(side, tmp_path / "server", in_process=True) as server:
        with server.client(trusted_keys=[str(public)]) as trusting:
            verdict = trusting.signature_status("m")
            assert (verdict.status, verdict.name) == ("trusted", "ci")
        with server.client() as stranger:  # only its own per-user key
            assert stranger.signature_status("m").status == "untrusted"
        # A compromised server points the record at other bytes and keeps the signature:
        assert server.served is not None
        record = server.served.get_version("m")
        assert record.artifact is not None
        swapped = dataclasses.replace(record.artifact, sha256="0" * 64)
        server.served.index.put(dataclasses.replace(record, artifact=swapped))
        with server.client(trusted_keys=[str(public)]) as trusting:
            assert trusting.get_version("m").artifact.sha256 == "0" * 64  # type: ignore[union-attr]  # the lie arrives ...
            verdict = trusting.signature_status("m")
            assert verdict.status == "invalid" and not verdict.trusted  # ... and is caught here


# -- the server process and the command line -------------------------------------------------------


def run_cli(*args: str, url: str, token: str) -> subprocess.CompletedProcess[str]:
    """``modelkeep ARGS`` as a client of the server at ``url`` with ``token``, in this process (the
    server is the separate process; ``python -m modelkeep`` itself is run once, below)."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("MODELKEEP_REGISTRY")}
    return run_cli_in_process(*args, env={**env, "MODELKEEP_REGISTRY_URL": url, "MODELKEEP_TOKEN": token})


def test_the_cli_works_against_a_server_process(
    http_server: HttpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with http_server.direct() as p:
        fill(p)
    viewer = http_server.add_user("vic", "viewer")
    admin = http_server.token

    def ok(*args: str, token: str = admin) -> str:
        done = run_cli(*args, url=http_server.url, token=token)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def fails(*args: str, token: str = admin) -> str:
        done = run_cli(*args, url=http_server.url, token=token)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith("Error: ") and done.stderr.count("\n") == 1, done.stderr
        return done.stderr

    assert "churn" in ok("list") and "fraud" in ok("list")
    assert "1.0.1" in ok("info", "--model-name", "churn@production")
    assert "1.0.1" in ok("search", "accuracy > 0.92")
    ok("alias", "set", "--model-name", "churn", "--alias", "staging", "--version", "1.0.0")
    ok("tag", "set", "--model-name", "churn", "owner", "ada")
    assert "staging" in ok("alias", "list", "--model-name", "churn")
    history = ok("history", "--model-name", "churn")
    assert re.search(r"admin\s+alias_set", history) and re.search(r"admin\s+tag_set", history)
    assert "needs the maintainer role" in fails(
        "alias", "set", "--model-name", "churn", "--alias", "staging", "--version", "1.0.1", token=viewer
    )
    assert "vic" in ok("users", "list")
    assert ok("users", "token", "vic").startswith("mkt_")
    assert "admin role" in fails("users", "list", token=viewer)
    assert "admin role" in fails("backfill-params", token=viewer) and "checked 3 version(s)" in ok("backfill-params")
    assert "admin role" in fails("gc", token=viewer) and "removed 0 file(s)" in ok("gc")
    assert "admin role" in fails("webhooks", "list", token=viewer) and "No webhooks" in ok("webhooks", "list")
    assert "not a modelkeep API token" in fails("list", token="forged")
    assert "signed in as admin (admin)" in ok("doctor")
    # A config file naming the server works as the variables do (here with the viewer's token).
    (tmp_path / "client.yaml").write_text(f"persistence:\n  registry_url: {http_server.url}\n  token: {viewer}\n")
    done = subprocess.run(
        [sys.executable, "-m", "modelkeep", "--config", "client.yaml", "alias", "list", "--model-name", "churn"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={
            k: v
            for k, v in __import__("os").environ.items()
            if not k.startswith(("MODELKEEP_REGISTRY", "MODELKEEP_TOKEN"))
        },
    )
    assert done.returncode == 0 and "staging" in done.stdout, done.stderr


def test_the_server_refuses_a_network_address_with_no_users(tmp_path: Path) -> None:
    with ModelPersistence(tmp_path / "models") as p:
        p.save({"w": 1}, "m")
    done = subprocess.run(
        [sys.executable, "-m", "modelkeep", "--models-dir", str(tmp_path / "models"), "server", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "modelkeep users add NAME --role admin" in done.stderr


def test_a_server_on_postgresql_and_s3(http_server_pg_s3: HttpServer) -> None:
    with http_server_pg_s3.direct() as p:
        fill(p)
    with http_server_pg_s3.client() as remote, http_server_pg_s3.direct() as local:
        assert remote.list_models() == ["churn", "fraud"]
        assert remote.model_summaries() == local.model_summaries()
        remote.set_alias("churn", "staging", "1.0.0")
        assert local.get_aliases("churn") == {"production": "1.0.1", "staging": "1.0.0"}
        assert remote.verify().to_dict() == local.verify().to_dict()
        assert local.history(actions=("alias_set",))[-1].actor == "admin"


def test_raw_http_against_a_server_process(http_server: HttpServer) -> None:
    with httpx.Client(base_url=http_server.url + API_PREFIX) as raw:
        assert raw.get("/models").status_code == 401
        response = raw.get("/models/nope/versions/latest", headers=bearer(http_server.token))
        assert response.status_code == 404 and response.json()["error"]["class"] == "ModelNotFoundError"
        assert raw.get("/", headers=bearer(http_server.token)).json()["user"] == {"name": "admin", "role": "admin"}
    with pytest.raises(InvalidNameError), http_server.client() as remote:
        remote.set_alias("no such model!", "x", "1")
    with pytest.raises(RequestError), http_server.client() as remote:
        remote.request("PUT", "/models/m/aliases/x", json={"version": 1})


def test_the_server_also_answers_predictions_for_token_holders(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    side = ServerSide(str(tmp_path / "served"))
    with ModelPersistence(**side.options()) as p:
        p.save(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), "churn", "1.0.0")
        p.set_alias("churn", "production", "1.0.0")
    with running_server(side, tmp_path / "server", args=("--serve", "churn@production")) as server:
        viewer = server.add_user("viv", "viewer")
        with httpx.Client(base_url=server.url + "/serve/churn@production", timeout=60) as http:
            for _ in range(300):  # the first version loads in the background
                if http.get("/health").status_code == 200:
                    break
                time.sleep(0.1)
            assert http.post("/predict", json={"instances": [[0.0]]}).status_code == 401
            forged = http.post("/predict", json={"instances": [[0.0]]}, headers=bearer("mkt_" + "A" * 43))
            assert forged.status_code == 401
            answer = http.post("/predict", json={"instances": [[0.0], [1.0]]}, headers=bearer(viewer))
            assert answer.status_code == 200, answer.text
            assert answer.json()["predictions"] == [0, 1]
            assert http.get("/model", headers=bearer(viewer)).json()["version"] == "1.0.0"
        assert server.client().list_models() == ["churn"]  # the API beside it


def test_a_malformed_serve_reference_is_refused_before_starting(tmp_path: Path) -> None:
    with ModelPersistence(tmp_path / "models") as p:
        p.save({"w": 1}, "m")
    done = subprocess.run(
        [sys.executable, "-m", "modelkeep", "--models-dir", str(tmp_path / "models"), "server", "--serve", "bad name!"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and done.stderr.startswith("Error: ") and "Traceback" not in done.stderr


def test_a_killed_server_is_a_clear_error_and_changes_nothing(http_server: HttpServer) -> None:
    with http_server.direct() as p:
        fill(p)
    client = http_server.client()
    client.set_tag("churn", "before", "yes")
    http_server.kill()
    with pytest.raises(StorageError, match=re.escape(f"cannot reach the registry server {http_server.url}")):
        client.set_tag("churn", "after", "yes")
    with http_server.direct() as p:
        assert p.get_tags("churn") == {"team": "risk", "before": "yes"}


def test_a_writer_saves_but_never_deletes_through_the_server(server: HttpServer) -> None:
    token = server.add_user("wren", "writer")
    with server.client(token) as wren:
        saved = wren.save_version({"w": 1}, "churn", accuracy=0.95)
        wren.set_tag("churn", "owner", "wren", version=saved.version)
        refusals = [
            lambda: wren.save_version({"w": 2}, "churn", saved.version, overwrite=True),
            lambda: wren.delete("churn", saved.version),
            lambda: wren.set_alias("churn", "staging", saved.version),
            lambda: wren.purge("churn"),
        ]
        for refused in refusals:
            with pytest.raises(PermissionDeniedError):
                refused()
        assert wren.load("churn", saved.version) == {"w": 1}
    with server.direct() as p:
        assert p.get_version("churn", saved.version).artifact.sha256 == saved.artifact.sha256  # type: ignore[union-attr]
        assert saved.version in p.list_versions("churn")
        rows = [h for h in p.history("churn") if h.version == saved.version]
        assert rows and {h.actor for h in rows} == {"wren"}


def test_a_grant_holder_cannot_reach_artifacts_of_models_it_cannot_see(server: HttpServer) -> None:
    with server.direct() as p:
        p.users.add("gus", None, "none")
        p.users.grant("gus", "churn", "viewer")
        token = p.users.new_token("gus", "tests")
        fraud = p.get_version("fraud")
    with server.client(token) as gus:
        assert gus.list_models() == ["churn"]
        with pytest.raises(ModelNotFoundError):
            gus.load("fraud")
        assert gus.load("churn") is not None

    def get(path: str) -> httpx.Response:
        return httpx.get(server.url + API_PREFIX + path, headers=bearer(token))

    for path, status in (
        (f"/models/fraud/versions/{fraud.version}", 404),
        (f"/models/fraud/versions/{fraud.version}/artifact", 404),
        ("/models/fraud/versions", 200),  # a model with no versions lists none, locally too
    ):
        hidden, missing = get(path), get(path.replace("fraud", "fraux"))
        assert (path, hidden.status_code, missing.status_code) == (path, status, status)
        # An invisible model answers exactly as a missing one does: nothing says it exists.
        assert hidden.text == missing.text.replace("fraux", "fraud")


def test_a_viewer_cannot_put_bytes_in_the_store(
    raw: TestClient, tokens: dict[str, str], registry: ModelPersistence
) -> None:
    staging = Path(str(registry.models_dir)) / ".tmp"
    before = sorted(staging.rglob("*")) if staging.exists() else []
    body = b"\x80\x04K\x01." * 1000
    answers = [
        raw.post(API + "/uploads?model=churn", content=body, headers=bearer(tokens["vi"])),
        raw.post(API + "/uploads", content=body, headers=bearer(tokens["vi"])),
        raw.put(API + "/blobs/" + "ab" * 32, content=body, headers=bearer(tokens["vi"])),
    ]
    assert [a.status_code for a in answers] == [403, 403, 403]
    assert {a.json()["error"]["class"] for a in answers} == {"PermissionDeniedError"}
    assert (sorted(staging.rglob("*")) if staging.exists() else []) == before  # nothing was written


def test_a_load_through_an_alias_in_one_request_shows_nothing_of_a_model_the_user_cannot_see(
    raw: TestClient, registry: ModelPersistence
) -> None:
    """``GET .../aliases/{alias}/load`` hands out an artifact's bytes with the alias's state: a user
    granted one model gets nothing of another's (the answer of a model that does not exist), and its own."""
    registry.set_alias("fraud", "production", "1")
    registry.users.add("nel", None, "none")
    registry.users.grant("nel", "churn", "viewer")
    nel = bearer(registry.users.new_token("nel", "tests"))
    hidden = raw.get(API + "/models/fraud/aliases/production/load", headers=nel)
    missing = raw.get(API + "/models/nomodel/aliases/production/load", headers=nel)  # no such model
    assert hidden.status_code == missing.status_code == 404, hidden.text
    assert hidden.text.replace("fraud", "X") == missing.text.replace("nomodel", "X")  # as if it did not exist
    own = raw.get(API + "/models/churn/aliases/production/load", headers=nel)
    assert own.status_code == 200, own.text
    head = int(own.headers[RECORD_LENGTH_HEADER])  # the JSON, then the small artifact's bytes
    assert json.loads(own.content[:head])["record"]["version"] == "1.0.1" and len(own.content) > head
