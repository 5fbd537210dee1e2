"""What fuzzing the registry server's API (schemathesis, against its own OpenAPI document) and
running its commands as a new user found: numbers too large for the index answered with 500,
HTML pages for API paths that match no route, a server's own bug that reached the client as a
storage error, and a wrong registry URL reported as a missing model with an HTML page quoted.

Every test talks to a real server over real HTTP (``tests/_http_server.py``, in process).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelkeep import ModelPersistence
from modelkeep.api.wire import API_PREFIX
from modelkeep.errors import InvalidNameError, WebhookNotFoundError
from modelkeep.lifecycle import parse_age

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


def error_of(response: httpx.Response) -> dict[str, str]:
    assert response.headers["content-type"].startswith("application/json"), response.text[:200]
    error: dict[str, str] = response.json()["error"]
    return error


# -- numbers out of the index's range: a 400 (or what they mean), never a 500 ----------------------


def test_numbers_too_large_for_the_index_are_refused_or_mean_everything(server: HttpServer) -> None:
    # A limit beyond any row count is every row (SQLite could not bind it: 500 before).
    history = call(server, "GET", f"/history?model=churn&limit={HUGE}")
    assert history.status_code == 200 and [e["action"] for e in history.json()["history"]] == ["save", "save", "delete"]
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


# -- the library's errors ------------------------------------------------------------------------


def test_a_library_error_is_still_the_librarys_class(server: HttpServer) -> None:
    # Through the client too: the library's class, which no answer for a server's bug may replace.
    with server.client() as client, pytest.raises(WebhookNotFoundError):
        client.webhooks.remove(HUGE)
