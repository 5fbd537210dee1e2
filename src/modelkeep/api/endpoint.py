"""How a route of the API is declared and answered: :class:`Endpoint`, JSON in and out.

Shared by :mod:`.routes` (which builds the Starlette routes and the OpenAPI document from the
endpoints) and :mod:`.transfers` (whose endpoints :mod:`.routes` includes), so neither imports
the other back.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

Handler = Callable[[Request], Awaitable[Response]]

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
