"""Server routes for signatures that stay on the client: alias moves, re-signing, the event feed.

A registry server never signs for a client and a client never trusts the server's verdicts
(the client half is :mod:`modelkeep.api.client_signing`):

* **Checking an alias.** ``GET /models/{name}/aliases/{alias}/state`` answers what a local
  reader's check reads from the index: the alias row (version, move number, signature, from-version,
  time), the record it points at, and each later signed move the history records. The client
  judges them with its own trusted keys (:class:`modelkeep.freshness.Freshness`).
* **Moving an alias with the client's key.** ``GET .../plan?version=`` answers the event the move
  would be now (:meth:`ModelPersistence.plan_alias_move`) and the record of the version it moves
  to (its signed fields, without aliases, tags and description), read with the alias's state in
  one statement (:meth:`~modelkeep.index.lifecycle.Lifecycle.plan_move_with_record`);
  the client checks the event against that record and signs it, then
  ``POST .../signed`` ``{version, expected, event, signature, public_key}`` makes the move only if
  it is still exactly that event (:meth:`ModelPersistence.set_alias_signed`), else 409 and the
  client plans again. The private key never leaves the client.
* **Moving a version to the trash with the client's key**: ``GET .../versions/{version}/removal-plan``,
  then ``POST .../trash`` ``{force, event, signature, public_key}``, the same way; ``GET
  .../removals`` answers the signed removals a reader checks when "latest" went back.
* **Re-signing a version.** ``PUT /models/{name}/versions/{version}/signature`` ``{manifest,
  signature, public_key}`` stores a signature the client made, only if the manifest it signed is
  the one stored (:meth:`ModelPersistence.store_signature`).
* **The event feed.** ``GET /events?since=&model=&types=&limit=`` answers one page of
  :meth:`ModelPersistence.events` (read-only; a user sees the events of the models it may see).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from ..errors import RequestError
from .endpoint import Body, Endpoint, Query, json_response, read_json
from .wire import record_to_wire

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from .routes import Api

#: Most events one ``GET /events`` answers (the client asks again from the last id).
EVENTS_PAGE = 500


def state_to_wire(state: Any) -> dict[str, Any]:
    """An :class:`~modelkeep.index.lifecycle.AliasState` as JSON."""
    return {
        "version": state.version,
        "seq": state.seq,
        "signature": state.signature,
        "previous": state.previous,
        "at": state.at,
    }


def alias_state_of(p: Any, name: str, alias: str) -> tuple[dict[str, Any], Any]:
    """What a reader checks a load through ``alias`` with (the alias row, the record it points at,
    each later signed move), as JSON, and that record (run in a worker thread, as the caller)."""
    lifecycle = p.index.lifecycle
    state = lifecycle.alias_state(name, alias)  # an invisible model's alias: as if missing
    record = p.get_version(name, state.version)
    later = lifecycle.signed_moves_after(record.model_name, alias, state.seq or 0)
    found = {
        "state": state_to_wire(state),
        "record": record_to_wire(record),
        "later": [{"state": state_to_wire(s), "sha256": sha} for s, sha in later],
    }
    return found, record


class SigningRoutes:
    """The handlers of :func:`signing_endpoints`, bound to one :class:`~modelkeep.api.routes.Api`."""

    def __init__(self, api: Api) -> None:
        self.api = api

    async def alias_state(self, request: Request) -> Response:
        """What a reader checks a load through an alias with: the row, its record, later signed moves."""
        name, alias = request.path_params["name"], request.path_params["alias"]
        return json_response(await self.api.call(request, self._alias_state, name, alias))

    def _alias_state(self, name: str, alias: str) -> dict[str, Any]:
        return alias_state_of(self.api.p, name, alias)[0]

    async def plan_move(self, request: Request) -> Response:
        """The alias-move event the client signs (``?version=``, and ``?expected=`` to compare first),
        with the record of the version it moves to: the client checks the event against it (the
        bytes it names, its signature with the client's keys) without asking for it again."""
        name, alias = request.path_params["name"], request.path_params["alias"]
        q = Query(request)
        event, record = await self.api.call(request, self._plan, name, alias, q.required("version"), q.text("expected"))
        return json_response({"event": event, "record": record.to_dict()})  # its signed fields: no lifecycle

    def _plan(self, name: str, alias: str, version: str, expected: str | None) -> tuple[dict[str, Any], Any]:
        # One statement: the record, the alias's state (the ``expected`` check), hence the event;
        # the move checks all of it again under the model's lock.
        return self.api.p.index.lifecycle.plan_move_with_record(name, alias, version, expected=expected)

    async def move_signed(self, request: Request) -> Response:
        """Move an alias with the signature the client made of its planned event."""
        name, alias = request.path_params["name"], request.path_params["alias"]
        body = Body(await read_json(request))
        event = body.get("event")
        if not isinstance(event, dict):
            raise RequestError("'event' must be the planned move (a JSON object)")
        await self.api.call(
            request,
            self.api.p.set_alias_signed,
            name,
            alias,
            body.required("version"),
            event=event,
            signature=body.required("signature"),
            public_key=body.text("public_key"),
            expected=body.text("expected"),
        )
        return json_response({"ok": True})

    async def plan_removal(self, request: Request) -> Response:
        """The removal event the client signs before it moves a version to the trash."""
        name, version = request.path_params["name"], request.path_params["version"]
        return json_response({"event": await self.api.call(request, self.api.p.plan_removal, name, version)})

    async def trash_signed(self, request: Request) -> Response:
        """Move a version to the trash with the client's signature of its planned removal."""
        name, version = request.path_params["name"], request.path_params["version"]
        body = Body(await read_json(request))
        event = body.get("event")
        if not isinstance(event, dict):
            raise RequestError("'event' must be the planned removal (a JSON object)")
        await self.api.call(
            request,
            self.api.p.delete_signed,
            name,
            version,
            event=event,
            signature=body.required("signature"),
            public_key=body.text("public_key"),
            force=body.flag("force"),
        )
        return json_response({"ok": True})

    async def removals(self, request: Request) -> Response:
        """``[at, signature]`` of each signed removal of a version (trashed or not), newest first."""
        name, version = request.path_params["name"], request.path_params["version"]
        return json_response({"removals": await self.api.call(request, self._removals, name, version)})

    def _removals(self, name: str, version: str) -> list[list[str]]:
        from ..errors import no_versions
        from ..versions import validate_model_name, validate_version

        name, version = validate_model_name(name), validate_version(version)
        p = self.api.p
        if not p.index.may_view(name):
            raise no_versions(name)
        return [[at, signature] for at, signature in p.index.lifecycle.signed_removals(name, version)]

    async def store_signature(self, request: Request) -> Response:
        """Store a version's signature made by the client (admin), if it signed the stored manifest."""
        name, version = request.path_params["name"], request.path_params["version"]
        body = Body(await read_json(request))
        signed = body.get("manifest")
        if not isinstance(signed, dict):
            raise RequestError("'manifest' must be the manifest the signature covers (a JSON object)")
        await self.api.call(
            request,
            self.api.p.store_signature,
            name,
            version,
            manifest=signed,
            signature=body.required("signature"),
            public_key=body.text("public_key"),
        )
        return json_response({"ok": True})

    async def events(self, request: Request) -> Response:
        """One page of the event feed (``?since`` exclusive, ``model``, ``types``, ``limit``)."""
        q = Query(request)
        since, limit = q.integer("since"), q.integer("limit")
        limit = EVENTS_PAGE if limit is None else limit
        if limit < 1:
            raise RequestError("the query parameter 'limit' must be positive")
        page = await self.api.call(
            request, self._events, since, q.text("model"), q.text("types"), min(limit, EVENTS_PAGE)
        )
        return json_response({"events": page})

    async def event_horizon(self, request: Request) -> Response:
        """The largest committed event id (a watcher starts after it)."""
        return json_response({"since": await self.api.call(request, self.api.p.event_horizon)})

    def _events(self, since: int | None, model: str | None, types: str | None, limit: int) -> list[dict[str, Any]]:
        return list(itertools.islice(self.api.p.events(since, model, types), limit))


def signing_endpoints(api: Api) -> list[Endpoint]:
    """The routes of signed alias moves, re-signing and the event feed."""
    s = SigningRoutes(api)
    a, v = "/models/{name}/aliases/{alias}", "/models/{name}/versions/{version}"
    return [
        Endpoint(
            "GET", a + "/state", s.alias_state, "An alias's signed move, its record and later signed moves", hinted=True
        ),
        Endpoint(
            "GET",
            a + "/plan",
            s.plan_move,
            "The alias-move event a client signs (?version, expected)",
            query=("version!", "expected"),
            hinted=True,
        ),
        Endpoint(
            "POST",
            a + "/signed",
            s.move_signed,
            "Move an alias with the client's signature of its plan",
            body=("event:object!", "version!", "signature!", "public_key", "expected"),
            hinted=True,
        ),
        Endpoint(
            "PUT",
            v + "/signature",
            s.store_signature,
            "Store a version's signature made by the client (admin)",
            body=("manifest:object!", "signature!", "public_key"),
        ),
        Endpoint(
            "GET", v + "/removal-plan", s.plan_removal, "The removal event a client signs before a trash", hinted=True
        ),
        Endpoint(
            "POST",
            v + "/trash",
            s.trash_signed,
            "Move a version to the trash, signed by the client (?force)",
            body=("event:object!", "signature!", "public_key", "force:boolean"),
            hinted=True,
        ),
        Endpoint("GET", v + "/removals", s.removals, "The signed removals of a version, newest first", hinted=True),
        Endpoint(
            "GET",
            "/events",
            s.events,
            "A page of the event feed (?since, model, types, limit)",
            query=("since:integer", "model", "types", "limit:integer"),
            hinted=True,
        ),
        Endpoint(
            "GET", "/events/horizon", s.event_horizon, "The largest committed event id (watch from there)", hinted=True
        ),
    ]
