"""The registry server's API over raw HTTP and through the client (non-transfer routes)."""

from __future__ import annotations

import httpx

from tests._http_server import HttpServer


def test_server_process_answers_as_the_admin(http_server: HttpServer) -> None:
    info = http_server.client().server_info()
    assert info["server"] == "modelkeep"
    assert info["user"] == {"name": "admin", "role": "admin"}


def test_no_token_is_refused_with_a_json_401(http_server: HttpServer) -> None:
    response = httpx.get(http_server.url + "/api/v1/models")
    assert response.status_code == 401
    assert response.json()["error"]["class"] == "AuthenticationError"


def test_server_on_postgresql_and_s3(http_server_pg_s3: HttpServer) -> None:
    client = http_server_pg_s3.client()
    assert client.list_models() == []
    assert client.server_info()["user"]["role"] == "admin"


def test_any_registry(any_registry: object) -> None:
    assert any_registry.list_models() == []  # type: ignore[attr-defined]
