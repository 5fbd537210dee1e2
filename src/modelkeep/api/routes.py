"""The server side of the HTTP registry: JSON routes under ``/api/v1``.

:func:`api_routes` builds the routes for one registry. Every handler runs behind ``identify``
(the UI's: API tokens, sessions, the SSO header), then calls the library in a worker thread
inside :func:`modelkeep.identity.acting_as`, so the library's role checks, visibility rules and
history rows apply exactly as they do locally. A library error is answered with
:func:`modelkeep.api.wire.error_body` and :func:`modelkeep.api.wire.status_for`.

Each route is declared once, as an :class:`Endpoint` (method, path, handler, summary); the same
list builds the Starlette routes and the OpenAPI document served at ``/api/v1/openapi.json``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._version import __version__
from ..errors import AuthenticationError, ModelKeepError, PermissionDeniedError
from ..identity import Identity, acting_as
from .wire import API_PREFIX, PROTOCOL, error_body, status_for

Handler = Callable[[Request], Awaitable[Response]]
#: Who sent a request (``None``: a sign-in free server); raises HTTPException or AuthenticationError.
Identify = Callable[[Request], Awaitable[Identity | None]]

#: Largest JSON request body read into memory (uploads stream, and are not JSON).
MAX_JSON_BODY = 4 * 1024 * 1024


@dataclass(frozen=True)
class Endpoint:
    """One route of the API: ``path`` is relative to :data:`~modelkeep.api.wire.API_PREFIX`."""

    method: str
    path: str
    handler: Handler
    summary: str


def json_response(data: Any, status: int = 200) -> JSONResponse:
    """``data`` as a JSON response (records go through their ``to_dict`` first)."""
    return JSONResponse(data, status_code=status)


def error_response(exc: ModelKeepError) -> JSONResponse:
    """A library error as the API's JSON error."""
    return JSONResponse(error_body(exc), status_code=status_for(exc))


async def read_json(request: Request) -> dict[str, Any]:
    """The request's JSON object body (``{}`` when empty); a clear 400 when it is not one."""
    body = await request.body()
    if len(body) > MAX_JSON_BODY:
        raise HTTPException(413, f"a JSON body is limited to {MAX_JSON_BODY} bytes")
    if not body:
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        raise HTTPException(400, "the request body is not JSON") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "the request body must be a JSON object")
    return data


class Api:
    """The handlers of one server, bound to one registry (``persistence``)."""

    def __init__(self, persistence: Any, identify: Identify) -> None:
        self.p = persistence
        self.identify = identify

    async def call(self, request: Request, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a library call in a worker thread, as the request's identity."""
        who: Identity | None = getattr(request.state, "user", None)

        def run() -> Any:
            with acting_as(who):
                return fn(*args, **kwargs)

        return await run_in_threadpool(run)

    def guarded(self, handler: Handler) -> Handler:
        """``handler`` behind the identity check, with every failure answered as a JSON error."""

        async def wrapper(request: Request) -> Response:
            try:
                request.state.user = await self.identify(request)
                return await handler(request)
            except ModelKeepError as exc:
                return error_response(exc)
            except HTTPException as exc:
                return error_response(_from_http(exc))

        return wrapper

    # -- endpoints ------------------------------------------------------------
    async def about(self, request: Request) -> Response:
        who: Identity | None = getattr(request.state, "user", None)
        return json_response(
            {
                "server": "modelkeep",
                "version": __version__,
                "protocol": PROTOCOL,
                "user": None if who is None else {"name": who.name, "role": who.role},
            }
        )

    async def list_models(self, request: Request) -> Response:
        return json_response({"models": await self.call(request, self.p.list_models)})

    async def list_versions(self, request: Request) -> Response:
        name = request.path_params["name"]
        return json_response({"versions": await self.call(request, self.p.list_versions, name)})

    async def get_version(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params["version"]
        record = await self.call(request, self.p.get_version, name, None if version == "latest" else version)
        return json_response({"record": record.to_dict()})

    def endpoints(self) -> list[Endpoint]:
        """Every route of the API: these, and the transfers of :mod:`modelkeep.api.transfers`."""
        from .transfers import transfer_endpoints

        return [
            *transfer_endpoints(self),
            Endpoint("GET", "/", self.about, "The server, its protocol version, and who you are"),
            Endpoint("GET", "/models", self.list_models, "Names of the models you may see"),
            Endpoint("GET", "/models/{name}/versions", self.list_versions, "A model's live versions, oldest first"),
            Endpoint(
                "GET", "/models/{name}/versions/{version}", self.get_version, "One version's record ('latest' allowed)"
            ),
        ]


def _from_http(exc: HTTPException) -> ModelKeepError:
    detail = str(exc.detail)
    if exc.status_code == 401:
        return AuthenticationError(detail)
    if exc.status_code == 403:
        return PermissionDeniedError(detail)
    return ModelKeepError(detail)


def openapi(endpoints: list[Endpoint]) -> dict[str, Any]:
    """The OpenAPI 3.1 document describing ``endpoints``."""
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        params = [
            {"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
            for part in ep.path.split("/")
            if part.startswith("{") and part.endswith("}")
        ]
        paths.setdefault(API_PREFIX + ep.path, {})[ep.method.lower()] = {
            "summary": ep.summary,
            "operationId": ep.handler.__name__,
            "parameters": params,
            "responses": {
                "200": {"description": "Success"},
                "default": {"description": "An error: {'error': {'class', 'message', 'cli'}}"},
            },
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "modelkeep registry API", "version": __version__},
        "components": {"securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
        "security": [{"token": []}],
        "paths": paths,
    }


def api_routes(api: Api) -> list[Route]:
    """The Starlette routes of ``api``, plus ``/api/v1/openapi.json`` (served without sign-in)."""
    endpoints = api.endpoints()
    document = openapi(endpoints)

    async def schema(_request: Request) -> Response:
        return json_response(document)

    routes = [Route(API_PREFIX + "/openapi.json", schema, methods=["GET"])]
    routes += [Route(API_PREFIX + ep.path, api.guarded(ep.handler), methods=[ep.method]) for ep in endpoints]
    return routes
