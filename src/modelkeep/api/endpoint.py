"""How a route of the API is declared and answered: :class:`Endpoint`, JSON in and out.

Typed access to a request (:class:`Body`, :class:`Query`) is here too. Shared by :mod:`.routes`
(which builds the Starlette routes and the OpenAPI document from the endpoints) and by the modules
whose endpoints :mod:`.routes` includes (:mod:`.transfers`, :mod:`.signing_routes`,
:mod:`.bundle_routes`), so none of them imports :mod:`.routes` back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import RequestError

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
    #: The handler does its work only through :meth:`Api.call <modelkeep.api.routes.Api.call>`, which
    #: checks a token-signed request's token again in the work's thread: what comes before may use
    #: the identity the token had a moment ago (see :mod:`modelkeep.api.token_hints`). Declared by
    #: the reads and lifecycle changes, and the one-request save and load; never an admin route (it
    #: checks the role on the event loop, before its work's thread).
    hinted: bool = False
    #: The query parameters it reads, for the OpenAPI document: ``"name"`` (text, optional),
    #: ``"name!"`` (required), ``"name:integer"`` (or ``number``, ``boolean``).
    query: tuple[str, ...] = ()
    #: The request headers it reads (besides ``Authorization``), in the same spelling.
    headers: tuple[str, ...] = ()
    #: The members of the JSON object body it reads, in the same spelling (types also ``object``,
    #: ``array``, ``any``); ``None``: it reads no JSON body.
    body: tuple[str, ...] | None = None
    #: The media type of a body it streams instead (an artifact, a blob, a bundle).
    stream: str | None = None
    #: The statuses of its successful answers.
    success: tuple[int, ...] = (200,)
    #: The media types of its successful answers.
    returns: tuple[str, ...] = ("application/json",)


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
        data = json.loads(body, parse_constant=_not_json, parse_float=_finite)
    except ValueError as exc:
        why = f" ({exc})" if isinstance(exc, _NotANumber) else ""  # ours name the literal; the parser's, a position
        raise HTTPException(400, f"the request body is not JSON{why}") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "the request body must be a JSON object")
    return data


class _NotANumber(ValueError):
    """A number JSON cannot hold, refused while the body is read (its message names the literal)."""


def _not_json(literal: str) -> float:
    """``NaN`` and ``Infinity``: Python's reader takes them, JSON has no such numbers, and a
    NaN slips past every range check (``nan < 0`` is false)."""
    raise _NotANumber(f"{literal} is not a JSON number")


def _finite(text: str) -> float:
    """A JSON number as a float, refusing one too large for a float (``1e400`` reads as infinity)."""
    value = float(text)
    if not math.isfinite(value):
        raise _NotANumber(f"{text[:40]} is too large for a number here")
    return value


def flag(data: dict[str, Any], key: str) -> bool:
    """A JSON body's ``true``/``false`` member (absent or ``null``: false). Anything else is a
    :class:`RequestError`: ``bool("false")`` is true, and these flags overwrite and delete."""
    value = data.get(key)
    if value is None or isinstance(value, bool):
        return bool(value)
    raise RequestError(f"{key!r} must be true or false, got {type(value).__name__}")


class Body:
    """Typed access to a JSON request body; a wrong type is a clear :class:`RequestError`."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def text(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, str):
            raise RequestError(f"{key!r} must be text, got {type(value).__name__}")
        return value

    def required(self, key: str) -> str:
        value = self.text(key)
        if value is None:
            raise RequestError(f"{key!r} is required")
        return value

    def flag(self, key: str) -> bool:
        """``true``/``false`` (absent: false); see :func:`flag`."""
        return flag(self.data, key)

    def integer(self, key: str, default: int | None = None) -> Any:
        value = self.data.get(key, default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise RequestError(f"{key!r} must be an integer, got {type(value).__name__}")
        return value


class Query:
    """Typed access to a request's query string."""

    def __init__(self, request: Request) -> None:
        self.params = request.query_params

    def text(self, key: str) -> str | None:
        return self.params.get(key)

    def required(self, key: str) -> str:
        value = self.params.get(key)
        if value is None:
            raise RequestError(f"the query parameter {key!r} is required")
        return value

    def integer(self, key: str) -> int | None:
        value = self.params.get(key)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise RequestError(f"the query parameter {key!r} must be an integer, got {value!r}") from None

    def flag(self, key: str) -> bool:
        return (self.params.get(key) or "").lower() in ("1", "true", "yes")
