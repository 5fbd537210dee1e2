"""What fuzzing the registry server's API (schemathesis, against its own OpenAPI document) and
running its commands as a new user found: numbers too large for the index answered with 500,
HTML pages (and partial Allow headers) for API paths that match no route, a server's own bug
that reached the client as a storage error, a wrong registry URL reported as a missing model with
an HTML page quoted, flags read with ``bool()``, a blob probe open to every token, a document
without parameters, bodies or 201s, an admin able to remove themselves, and unclear messages for
a missing token, a server that is down and a Host the server does not answer to.

The tests talk to a real server over real HTTP (``tests/_http_server.py``, in process), but for
the document's check against the handlers' source and a server that is down by design.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelkeep import ModelNotFoundError, ModelPersistence
from modelkeep.api.client import HttpRegistry
from modelkeep.api.wire import API_PREFIX
from modelkeep.errors import (
    ConfigError,
    InvalidNameError,
    PermissionDeniedError,
    RequestError,
    ServerError,
    WebhookNotFoundError,
)
from modelkeep.lifecycle import parse_age

from ._cli_in_process import run_cli
from ._http_server import HttpServer, ServerSide, running_server

#: Larger than any 64-bit integer: SQLite refuses to bind it, PostgreSQL has no column for it.
HUGE = 10**23


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HttpServer]:
    """A server (in process) on a registry with ``churn`` 1.0.0 and 1.0.1 (trashed)."""
    side = ServerSide(str(tmp_path / "served"))
    with ModelPersistence(**side.options()) as p:
        p.save({"w": 1}, "churn", "1.0.0", accuracy=0.9)
        p.save({"w": 2}, "churn", "1.0.1", accuracy=0.8)
        p.delete("churn", "1.0.1")
    with running_server(side, tmp_path / "server", in_process=True) as running:
        yield running


def call(server: HttpServer, method: str, path: str, **kwargs: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {server.token}"}
    return httpx.request(method, server.url + API_PREFIX + path, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


def allowed(response: httpx.Response) -> set[str]:
    """The methods a 405's ``Allow`` header names (in no fixed order)."""
    return {m.strip() for m in response.headers["allow"].split(",")}


def error_of(response: httpx.Response) -> dict[str, str]:
    assert response.headers["content-type"].startswith("application/json"), response.text[:200]
    error: dict[str, str] = response.json()["error"]
    return error


# -- numbers out of the index's range: a 400 (or what they mean), never a 500 ----------------------


def test_numbers_too_large_for_the_index_are_refused_or_mean_everything(server: HttpServer) -> None:
    # A limit beyond any row count is every row (SQLite could not bind it: 500 before).
    history = call(server, "GET", f"/history?model=churn&limit={HUGE}")
    assert history.status_code == 200 and [e["action"] for e in history.json()["history"]] == ["save", "save", "delete"]
    # Events after an id below every id are all of them (PostgreSQL could not compare it: 500).
    events = call(server, "GET", f"/events?model=churn&since=-{HUGE}")
    assert events.status_code == 200 and [e["action"] for e in events.json()["events"]] == ["save", "save", "delete"]
    assert call(server, "GET", f"/events?since={HUGE}").json()["events"] == []
    refused = [
        ("POST", "/purge", {"json": {"older_than": 1e308}}, 400, "InvalidNameError", "too large"),
        ("POST", "/users/admin/tokens", {"json": {"expires_in": 1e300}}, 400, "InvalidNameError", "too far"),
        ("POST", "/users/admin/tokens", {"json": {"expires_in": HUGE}}, 400, "InvalidNameError", "too far"),
        ("GET", "/history?since=0001-01-01T00:00:00%2B05:00", {}, 400, "InvalidNameError", "out of range"),
        ("DELETE", f"/webhooks/{HUGE}", {}, 404, "WebhookNotFoundError", f"no webhook {HUGE}"),
        ("POST", f"/webhooks/{HUGE}/test", {}, 404, "WebhookNotFoundError", f"no webhook {HUGE}"),
        ("GET", f"/deliveries?webhook={HUGE}", {}, 404, "WebhookNotFoundError", f"no webhook {HUGE}"),
    ]
    for method, path, kwargs, status, cls, message in refused:
        response = call(server, method, path, **kwargs)
        assert response.status_code == status, (path, response.text)
        assert error_of(response)["class"] == cls and message in error_of(response)["message"], (path, response.text)
    with server.direct() as p:  # nothing was purged, no token made
        assert p.list_trash("churn")[0][:2] == ("churn", "1.0.1")
        assert len(p.users.tokens("admin")) == 1


def test_an_age_older_than_the_calendar_selects_nothing(server: HttpServer) -> None:
    with pytest.raises(InvalidNameError, match="too large"):
        parse_age(f"{HUGE}d")
    # Ten million days fits a timedelta, but not "now" minus it: nothing in the trash is that old.
    assert server.client().purge(older_than="10000000d") == []
    with server.direct() as p:
        assert p.purge(older_than="10000000d") == [] and len(p.list_trash()) == 1


# -- paths under /api/ that match no route --------------------------------------------------------


def test_an_unknown_api_route_or_method_answers_json_with_allow(server: HttpServer) -> None:
    missing = call(server, "GET", "/no-such-route")
    assert missing.status_code == 404 and error_of(missing)["class"] == "RequestError"
    assert "no API route GET /api/v1/no-such-route" in error_of(missing)["message"]
    for method in ("POST", "TRACE"):
        wrong = call(server, method, "/models")
        assert wrong.status_code == 405 and allowed(wrong) == {"GET", "HEAD"}
        assert error_of(wrong)["class"] == "RequestError" and f"{method} is not a method" in error_of(wrong)["message"]
    # A path with several methods names them all, not only those of its first route.
    for path, methods in (
        ("/models/churn/aliases/x", {"PUT", "DELETE"}),
        ("/users/u/tokens", {"GET", "HEAD", "POST", "DELETE"}),
    ):
        assert allowed(call(server, "OPTIONS", path)) == methods
    assert call(server, "HEAD", "/models").status_code == 200
    # A client newer than the server, calling a route this one lacks: not a missing model.
    with server.client() as client, pytest.raises(RequestError, match="no API route") as raised:
        client.request("GET", "/models/churn/no-such-route")
    assert not isinstance(raised.value, ModelNotFoundError)
    # The UI's pages keep their HTML, and a 405 there says what is allowed too.
    page = httpx.post(server.url + "/history", timeout=30)
    assert page.status_code == 405 and allowed(page) == {"GET", "HEAD"} and "<html" in page.text


def test_a_wrong_registry_url_is_one_line_naming_the_fix(server: HttpServer) -> None:
    token = server.token
    with HttpRegistry(server.url + "/models", token=token) as wrong, pytest.raises(ConfigError) as raised:
        wrong.list_models()  # the UI's HTML 404 page, before: a ModelNotFoundError quoting it
    assert "did not answer like a modelkeep registry server (HTTP 404" in str(raised.value)
    assert "server's root" in str(raised.value) and "<" not in str(raised.value)
    with HttpRegistry(server.url + API_PREFIX, token=token) as doubled, pytest.raises(RequestError) as raised:
        doubled.list_models()
    assert f"the registry URL is the server's root, without {API_PREFIX}" in str(raised.value)
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("MODELKEEP_")}
    done = run_cli("list", env={**env, "MODELKEEP_REGISTRY_URL": server.url + "/x", "MODELKEEP_TOKEN": token})
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("Error: ") and "server's root" in done.stderr and "<" not in done.stderr


# -- a bug on the server -------------------------------------------------------------------------


def test_a_server_bug_is_a_server_error_with_an_incident_not_a_storage_error(
    server: HttpServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert server.served is not None

    def broken(*args: object, **kwargs: object) -> list[str]:
        raise ZeroDivisionError("secret detail from /srv/models")

    for name in ("list_models", "model_summaries"):  # the library's calls behind GET /models and 'modelkeep list'
        monkeypatch.setattr(server.served, name, broken)
    with caplog.at_level(logging.ERROR, logger="modelkeep"):
        response = call(server, "GET", "/models")
    assert response.status_code == 500 and error_of(response)["class"] == "ServerError"
    message = error_of(response)["message"]
    assert "internal error in modelkeep" in message and "ZeroDivisionError" in message
    assert "secret" not in response.text and "Traceback" not in response.text
    incident = message.rsplit("incident ", 1)[1]
    logged = [r for r in caplog.records if incident in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None  # the traceback, in the server's log
    with server.client() as client, pytest.raises(ServerError, match="incident"):
        client.list_models()
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("MODELKEEP_")}
    done = run_cli("list", env={**env, "MODELKEEP_REGISTRY_URL": server.url, "MODELKEEP_TOKEN": server.token})
    assert done.returncode == 70 and "Traceback" not in done.stderr  # a bug: exit 70, as locally
    assert done.stderr.startswith("Error: internal error in modelkeep") and done.stderr.count("\n") == 1


def test_a_library_error_is_still_the_librarys_class(server: HttpServer) -> None:
    # Through the client too: the library's class, which no answer for a server's bug may replace.
    with server.client() as client, pytest.raises(WebhookNotFoundError):
        client.webhooks.remove(HUGE)


# -- the store is shared: what it holds is no reader's business ---------------------------------


def test_only_a_user_who_may_upload_asks_which_blobs_the_store_holds(server: HttpServer) -> None:
    import hashlib

    data = b"weights of a model only admins see" * 100
    sha = hashlib.sha256(data).hexdigest()
    assert call(server, "PUT", f"/blobs/{sha}", content=data).status_code == 201  # the admin's upload
    with server.direct() as p:
        p.users.add("reader", None, "none")
        p.users.grant("reader", "churn", "viewer")
        reader = p.users.new_token("reader", "tests")
        writer = server.add_user("writer", "writer")
    probe = {"blobs": [[sha, len(data)], ["ab" * 32, 10]]}

    def ask(token: str) -> httpx.Response:
        url = server.url + API_PREFIX + "/blobs/missing"
        return httpx.post(url, json=probe, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    # Before, any token learned that someone had stored exactly these bytes.
    refused = ask(reader)
    assert refused.status_code == 403 and error_of(refused)["class"] == "PermissionDeniedError"
    assert sha not in refused.text
    answered = ask(writer)  # what a writer's save of a native-format model asks before uploading
    assert answered.status_code == 200 and answered.json()["missing"] == ["ab" * 32]


# -- what a request gets wrong is a RequestError, and a flag is a JSON boolean ------------------------


def test_a_malformed_transfer_names_the_request_error_class(server: HttpServer) -> None:
    # Raised as HTTP errors inside the transfers, these came back as a bare ModelKeepError.
    response = call(server, "POST", "/uploads?model=churn", content=b"bytes")
    assert response.status_code == 400 and error_of(response)["class"] == "RequestError"
    assert "X-Modelkeep-Expected" in error_of(response)["message"]
    response = call(server, "PUT", "/models/churn/aliases/staging", content=b"{not json")
    assert response.status_code == 400 and error_of(response)["class"] == "RequestError"


def test_a_flag_that_is_not_a_json_boolean_is_refused_before_anything_changes(server: HttpServer) -> None:
    with server.direct() as p:
        p.save({"w": 3}, "churn", "1.0.2")
    # bool(0) is False: {"dry_run": 0} pruned for real, and {"overwrite": "false"} overwrote.
    for value in (0, "false", {}):
        response = call(server, "POST", "/models/churn/prune", json={"keep_last": 0, "dry_run": value})
        assert response.status_code == 400 and error_of(response)["class"] == "RequestError", response.text
        assert "'dry_run' must be true or false" in error_of(response)["message"]
    for path, body in (
        ("/admin/gc", {"dry_run": 0}),
        ("/policies", {"model": "churn", "alias": "production", "require_input_signature": "no"}),
    ):
        assert call(server, "PUT" if path == "/policies" else "POST", path, json=body).status_code == 400
    with server.direct() as p:
        assert p.list_versions("churn") == ["1.0.0", "1.0.2"] and p.policies("churn") == []
    dry = call(server, "POST", "/models/churn/prune", json={"keep_last": 0, "dry_run": True})
    assert dry.status_code == 200 and sorted(dry.json()["versions"]) == ["1.0.0", "1.0.2"]
    # The client sends what a local registry takes (any truthy value) as a JSON boolean.
    with server.client() as client:
        assert sorted(client.prune("churn", 0, dry_run=1)) == ["1.0.0", "1.0.2"]  # type: ignore[arg-type]
        assert client.gc(dry_run=1).dry_run  # type: ignore[arg-type]
        client.save({"w": 4}, "churn", "1.0.0", overwrite=1)  # type: ignore[arg-type]
    with server.direct() as p:
        assert p.list_versions("churn") == ["1.0.0", "1.0.2"] and p.load("churn", "1.0.0") == {"w": 4}


# -- the OpenAPI document says what the routes answer -------------------------------------------


def test_the_openapi_document_declares_what_the_routes_answer(server: HttpServer) -> None:
    import hashlib

    document = httpx.get(server.url + API_PREFIX + "/openapi.json", timeout=30).json()
    assert "Error" in document["components"]["schemas"]

    def declared(method: str, path: str) -> dict[str, object]:
        operation: dict[str, object] = document["paths"][API_PREFIX + path][method.lower()]
        return operation

    data = b"blob bytes"
    sha = hashlib.sha256(data).hexdigest()
    cases = [  # (method, documented path, request path, request arguments)
        ("POST", "/users", "/users", {"json": {"name": "newbie", "role": "viewer"}}),
        ("POST", "/users/{user}/tokens", "/users/newbie/tokens", {"json": {"label": "x"}}),
        ("PUT", "/blobs/{sha}", f"/blobs/{sha}", {"content": data}),
        ("GET", "/models/{name}/versions/{version}", "/models/churn/versions/latest", {}),
        ("GET", "/models/{name}/versions/{version}/artifact", "/models/churn/versions/1.0.0/artifact", {}),
        ("GET", "/models/{name}/bundle", "/models/churn/bundle", {}),
        ("GET", "/models/{name}/versions/{version}", "/models/nope/versions/latest", {}),
    ]
    for method, documented, path, kwargs in cases:
        response = call(server, method, path, **kwargs)
        responses: dict[str, dict[str, dict[str, object]]] = declared(method, documented)["responses"]  # type: ignore[assignment]
        answer = responses.get(str(response.status_code)) or responses["default"]
        assert response.is_success == (str(response.status_code) in responses), (path, response.status_code)
        media = response.headers["content-type"].split(";")[0]
        assert media in answer["content"], (path, media, answer)
    # The parameters a route requires are declared required.
    best = declared("GET", "/models/{name}/best")["parameters"]
    assert {"name": "metric", "in": "query", "required": True, "schema": {"type": "string"}} in best  # type: ignore[operator]
    body = declared("PUT", "/models/{name}/aliases/{alias}")["requestBody"]
    assert body["content"]["application/json"]["schema"]["required"] == ["version"]  # type: ignore[index]
    # A tag key is any text that is not blank, of at most 256 characters, as the library takes it.
    key = declared("PUT", "/models/{name}/tags/{key}")["parameters"]
    key_schema = {"type": "string", "pattern": r"\S", "maxLength": 256}
    assert {"name": "key", "in": "path", "required": True, "schema": key_schema} in key  # type: ignore[operator]
    too_long = call(server, "PUT", "/models/churn/tags/" + "k" * 257, json={"value": "v"})
    assert too_long.status_code == 400 and "longer than 256 characters" in too_long.json()["error"]["message"]


def test_every_argument_a_handler_reads_by_name_is_in_the_document(tmp_path: Path) -> None:
    """The handlers' own reads (``q.text("model")``, ``body.get("dry_run")``, ...) against what
    their endpoint declares, so the document cannot fall behind a new argument. Reads in helpers
    the handler calls are not seen; the declared ones are checked by the test above for a sample."""
    import inspect
    import re

    from modelkeep.api.routes import Api

    with ModelPersistence(tmp_path / "models") as p:
        endpoints = Api(p, identify=None).endpoints()  # type: ignore[arg-type]
    # q.text("x"), body.get("x"), query_params.get("x"), Body(...).required("x"), flag(body, "x")
    read = re.compile(
        r"(?:\bq|\bbody|\bform|query_params|\))\.(?:text|required|integer|flag|get)\(\"(\w+)\"|flag\(\w+, \"(\w+)\"\)"
    )
    unread = {"content-length"}  # transport, not the API's
    seen: dict[tuple[str, str], set[str]] = {}
    for ep in endpoints:
        source = inspect.getsource(ep.handler)
        names = seen[ep.method, ep.path] = {a or b for a, b in read.findall(source)} - unread
        declared = {spec.split(":")[0].rstrip("!") for spec in (*ep.query, *ep.headers, *(ep.body or ()))}
        assert names <= declared, (ep.method, ep.path, names - declared)
    # The reads are found (a pattern that matched nothing would pass the loop above).
    assert seen["GET", "/history"] == {"model", "alias", "since", "until", "limit", "actions"}
    assert seen["POST", "/models/{name}/commit"] >= {"upload", "record"}
    assert seen["POST", "/models/{name}/prune"] == {"keep_last", "dry_run"}


# -- users, as the command line sees them through a server -----------------------------------------


def test_an_admin_cannot_remove_or_demote_themselves_through_the_server(server: HttpServer) -> None:
    # The UI refused it; the API did not, and the last admin could lock every admin out.
    with server.client() as admin:
        with pytest.raises(PermissionDeniedError, match="another admin can"):
            admin.users.remove("admin")
        with pytest.raises(PermissionDeniedError, match="another admin can"):
            admin.users.set_role("admin", "viewer")
        admin.users.set_role("admin", "admin")  # no change: nothing to refuse
        admin.users.add("other", None, "admin")
        other = admin.users.new_token("other", "tests")
    with server.direct() as p:
        assert p.users.get("admin") is not None and p.users.get("admin").role == "admin"  # type: ignore[union-attr]
    with server.client(other) as second:  # another admin can
        second.users.set_role("admin", "viewer")
        second.users.remove("admin")
    with server.direct() as p:
        assert p.users.get("admin") is None


def test_a_missing_token_says_to_set_modelkeep_token(server: HttpServer) -> None:
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("MODELKEEP_")}
    done = run_cli("list", env={**env, "MODELKEEP_REGISTRY_URL": server.url})
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "needs an API token: set MODELKEEP_TOKEN" in done.stderr and "modelkeep users token NAME" in done.stderr
    # With a token, the server's own word is kept (here: a revoked one).
    with server.direct() as p:
        p.users.revoke_tokens("admin")
    done = run_cli("list", env={**env, "MODELKEEP_REGISTRY_URL": server.url, "MODELKEEP_TOKEN": server.token})
    assert done.returncode == 1 and "unknown or revoked API token" in done.stderr


def test_a_server_that_is_down_is_one_line_saying_what_to_check(tmp_path: Path) -> None:
    from ._http_server import free_port

    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("MODELKEEP_")}
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    done = run_cli("list", env={**env, "MODELKEEP_REGISTRY_URL": url, "MODELKEEP_TOKEN": "mkt_x"})
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"cannot reach the registry server {url}" in done.stderr and "is it running" in done.stderr


def test_a_host_the_server_does_not_answer_to_is_a_config_error_for_clients(server: HttpServer) -> None:
    # A client reaching the server by a name missing from --allowed-host read a text/plain 400 as
    # "the server answered HTTP 400" (a StorageError); the API's answer is its JSON error now.
    headers = {"Authorization": f"Bearer {server.token}", "Host": "models.example"}
    refused = httpx.get(server.url + API_PREFIX + "/models", headers=headers, timeout=30)
    assert refused.status_code == 400 and error_of(refused)["class"] == "ConfigError"
    assert "--allowed-host models.example" in error_of(refused)["message"]
    page = httpx.get(server.url + "/", headers=headers, timeout=30)  # a browser still reads text
    assert page.status_code == 400 and page.headers["content-type"].startswith("text/plain")
    assert "--allowed-host models.example" in page.text
