"""Schemathesis against the server's own OpenAPI document: every route, as a viewer, with
derandomized examples generated from the document (path parameters, query parameters, headers
and JSON bodies, valid and not). Each answer must be no 5xx (a bug), and must be what the
document says: a documented status, a documented media type, a body matching its schema (the
``Error`` schema for every error).

As a viewer, nothing changes the registry (every change is refused), so the examples and their
answers are the same on every run. ``-n 0`` takes about 20 s on a loaded machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from modelkeep import ModelPersistence
from modelkeep.api.wire import API_PREFIX

from ._http_server import HttpServer, ServerSide, running_server

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# A bundle is sent as bytes, like an artifact (the server refuses the generated ones as bundles).
schemathesis.serializer.alias("application/x-tar", "application/octet-stream")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HttpServer, str]]:
    """A server (in process) on a registry with versions, an alias, a tag and a trashed version;
    and a viewer's token."""
    tmp: Path = tmp_path_factory.mktemp("schema-fuzz")
    side = ServerSide(str(tmp / "served"))
    with ModelPersistence(**side.options()) as p:
        p.save({"w": 1}, "churn", "1.0.0", accuracy=0.9)
        p.save({"w": 2}, "churn", "1.0.1", accuracy=0.95)
        p.save({"w": 3}, "churn", "1.0.2", accuracy=0.8)
        p.set_alias("churn", "production", "1.0.1")
        p.set_tag("churn", "team", "risk")
        p.delete("churn", "1.0.2")
    with running_server(side, tmp / "server", in_process=True) as server:
        yield server, server.add_user("vic", "viewer")


@pytest.fixture(scope="module")
def api_schema(served: tuple[HttpServer, str]) -> Any:
    server, _ = served
    return schemathesis.openapi.from_url(server.url + API_PREFIX + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=8,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_route_answers_as_the_document_says(case: Any, served: tuple[HttpServer, str]) -> None:
    _, viewer = served
    response = case.call(headers={"Authorization": f"Bearer {viewer}"}, timeout=60)
    case.validate_response(response, checks=CHECKS)
