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

import dataclasses
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._version import __version__
from ..errors import (
    AuthenticationError,
    ModelKeepError,
    PermissionDeniedError,
    RequestError,
    ServerError,
    StorageError,
    UploadTooLargeError,
)
from ..identity import Identity, acting_as
from ..index.lifecycle import MAX_TAG_KEY
from ..users import USER_NAME_RE
from ..versions import MAX_NAME_LENGTH, MAX_VERSION_LENGTH, NAME_RE, VERSION_RE
from .wire import (
    API_PREFIX,
    LATEST,
    PROTOCOL,
    PROTOCOL_HEADER,
    error_body,
    move_check_to_wire,
    policy_to_wire,
    record_to_wire,
    status_for,
)

logger = logging.getLogger("modelkeep")
Handler = Callable[[Request], Awaitable[Response]]
#: Who sent a request (``None``: a sign-in free server); raises HTTPException or AuthenticationError.
Identify = Callable[[Request], Awaitable[Identity | None]]

# Declared in .endpoint, which .transfers shares without importing this module back.
from .endpoint import MAX_JSON_BODY, Body, Endpoint, Query, json_response, read_json  # noqa: E402,F401


def error_response(exc: ModelKeepError) -> JSONResponse:
    """A library error as the API's JSON error."""
    return JSONResponse(error_body(exc), status_code=status_for(exc))


def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """What a request that failed with anything but a library error gets: a JSON
    :class:`~modelkeep.errors.ServerError` (500), or a :class:`~modelkeep.errors.StorageError`
    (503) for the server's own operating-system errors, naming an incident id; the traceback
    goes to the server's log under that id, and nothing of it (paths, SQL, values) to the client."""
    incident = secrets.token_hex(6)
    logger.error("incident %s: %s %s failed", incident, request.method, request.url.path, exc_info=exc)
    if isinstance(exc, OSError):
        error: ModelKeepError = StorageError(
            f"the server's storage failed ({type(exc).__name__}); its log has the details under incident {incident}"
        )
    else:
        error = ServerError(
            f"internal error in modelkeep {__version__} on the server ({type(exc).__name__}), not in the request: "
            f"please report it with the server's log of incident {incident}"
        )
    return error_response(error)


class Api:
    """The handlers of one server, bound to one registry (``persistence``); ``max_upload_bytes``
    caps every streamed request body (uploads, blobs, bundles; ``None``: no cap). ``bearer(request)``
    is the API token a request is signed in by alone, if so: the routes marked ``hinted`` then
    check it in the same worker thread as their work (:mod:`.token_hints`)."""

    def __init__(
        self,
        persistence: Any,
        identify: Identify,
        *,
        max_upload_bytes: int | None = None,
        bearer: Callable[[Request], str | None] | None = None,
    ) -> None:
        from .token_hints import TokenHints

        self.p = persistence
        self.identify = identify
        self.max_upload_bytes = max_upload_bytes
        self.bearer = bearer
        self.hints = TokenHints(lambda token: self.p.users.token_identity(token))

    async def call(self, request: Request, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a library call in a worker thread, as the request's identity (its token checked
        there first when the identity so far is a hint)."""
        who: Identity | None = getattr(request.state, "user", None)
        hinted: str | None = getattr(request.state, "hinted_token", None)

        def run() -> Any:
            with acting_as(who if hinted is None else self.hints.check(hinted)):
                return fn(*args, **kwargs)

        return await run_in_threadpool(run)

    def guarded(self, handler: Handler, *, hinted: bool = False) -> Handler:
        """``handler`` behind the identity check, with every failure answered as a JSON error
        (``hinted``: from a token's recent check, checked again by :meth:`call`; see :mod:`.token_hints`)."""

        async def wrapper(request: Request) -> Response:
            try:
                check_protocol(request)
                token = self.bearer(request) if hinted and self.bearer is not None else None
                hint = None if token is None else self.hints.get(token)
                if hint is not None:
                    request.state.user, request.state.via, request.state.hinted_token = hint, "token", token
                else:
                    request.state.user = await self.identify(request)
                    if token is not None and getattr(request.state, "via", None) == "token":
                        self.hints.put(token, request.state.user)
                # A browser session's cookie rides along on cross-site requests; a custom header
                # cannot be sent cross-site without a CORS preflight, which this server refuses.
                by_session = getattr(request.state, "via", None) == "session"
                if by_session and request.method != "GET" and PROTOCOL_HEADER.lower() not in request.headers:
                    raise PermissionDeniedError(
                        f"a change through the API with a browser session needs the {PROTOCOL_HEADER} header"
                    )
                return await handler(request)
            except ModelKeepError as exc:
                return error_response(exc)
            except HTTPException as exc:  # the status it chose (411, 413...), with an error class
                return JSONResponse(error_body(_from_http(exc)), status_code=exc.status_code)
            except ClientDisconnect:
                raise  # nobody to answer
            except Exception as exc:  # a bug (or the server's own disk): logged here, never the client's fault
                return unexpected_error(request, exc)

        return wrapper

    # -- endpoints: the server and the registry -------------------------------------------------
    async def about(self, request: Request) -> Response:
        who: Identity | None = getattr(request.state, "user", None)
        return json_response(
            {
                "server": "modelkeep",
                "version": __version__,
                "protocol": PROTOCOL,
                "user": None if who is None else {"name": who.name, "role": who.role},
                "max_upload_bytes": self.max_upload_bytes,
            }
        )

    async def list_models(self, request: Request) -> Response:
        return json_response({"models": await self.call(request, self.p.list_models)})

    async def model_summaries(self, request: Request) -> Response:
        found = await self.call(request, self.p.model_summaries)
        return json_response({"models": [s.to_dict() for s in found]})

    async def all_aliases(self, request: Request) -> Response:
        return json_response({"aliases": await self.call(request, self.p.all_aliases)})

    async def history(self, request: Request) -> Response:
        q = Query(request)
        actions = q.text("actions")
        entries = await self.call(
            request,
            self.p.history,
            q.text("model"),
            alias=q.text("alias"),
            since=q.text("since"),
            until=q.text("until"),
            limit=q.integer("limit"),
            actions=None if actions is None else tuple(a for a in actions.split(",") if a),
        )
        return json_response({"history": [e.to_dict() for e in entries]})

    async def verify(self, request: Request) -> Response:
        body = Body(await read_json(request))
        report = await self.call(request, self.p.verify, body.text("model_name"))
        return json_response({"report": report.to_dict()})

    # -- search ------------------------------------------------------------------------------
    async def search_versions(self, request: Request) -> Response:
        body = Body(await read_json(request))
        order_by = body.get("order_by")
        if order_by is not None and not isinstance(order_by, str) and not _str_list(order_by):
            raise RequestError("'order_by' must be text or a list of text")
        page = await self.call(
            request,
            self.p.search_versions,
            body.text("filter"),
            model_name=body.text("model_name"),
            order_by=order_by,
            limit=body.integer("limit", 100),
            page_token=body.text("page_token"),
        )
        items = [record_to_wire(r) for r in page.items]
        return json_response({"items": items, "next_page_token": page.next_page_token})

    async def search_models(self, request: Request) -> Response:
        body = Body(await read_json(request))
        page = await self.call(
            request,
            self.p.search_models,
            body.text("filter"),
            limit=body.integer("limit", 100),
            page_token=body.text("page_token"),
        )
        return json_response({"items": [s.to_dict() for s in page.items], "next_page_token": page.next_page_token})

    # -- one model ---------------------------------------------------------------------------
    async def list_versions(self, request: Request) -> Response:
        name = request.path_params["name"]
        return json_response({"versions": await self.call(request, self.p.list_versions, name)})

    async def list_version_records(self, request: Request) -> Response:
        found = await self.call(request, self.p.list_version_records, request.path_params["name"])
        return json_response({"records": [record_to_wire(r) for r in found]})

    async def get_version(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params["version"]
        record = await self.call(
            request,
            self.p.get_version,
            name,
            None if version == LATEST else version,
            alias=Query(request).text("alias"),
        )
        return json_response({"record": record_to_wire(record)})

    async def compare_records(self, request: Request) -> Response:
        body = Body(await read_json(request))
        versions = body.get("versions")
        if versions is not None and not _str_list(versions):
            raise RequestError("'versions' must be a list of text")
        records = await self.call(
            request, self.p._comparison_records, request.path_params["name"], versions, body.text("filter")
        )
        return json_response({"records": [record_to_wire(r) for r in records]})

    async def best_version(self, request: Request) -> Response:
        q = Query(request)
        record = await self.call(
            request,
            self.p.best_version,
            request.path_params["name"],
            q.required("metric"),
            q.text("mode") or "max",
            q.text("filter"),
        )
        return json_response({"record": record_to_wire(record)})

    async def metric_history(self, request: Request) -> Response:
        name, metric = request.path_params["name"], request.path_params["metric"]
        points = await self.call(
            request, self.p.metric_history, name, metric, limit=Query(request).integer("limit") or 2000
        )
        return json_response({"points": [list(p) for p in points]})

    # -- lifecycle ---------------------------------------------------------------------------
    async def get_aliases(self, request: Request) -> Response:
        return json_response({"aliases": await self.call(request, self.p.get_aliases, request.path_params["name"])})

    async def set_alias(self, request: Request) -> Response:
        name, alias = request.path_params["name"], request.path_params["alias"]
        body = Body(await read_json(request))
        version, expected = body.required("version"), body.text("expected")
        await self.call(request, self.p.set_alias, name, alias, version, expected=expected)
        return json_response({"ok": True})

    async def delete_alias(self, request: Request) -> Response:
        name, alias = request.path_params["name"], request.path_params["alias"]
        was = await self.call(request, self.p.delete_alias, name, alias, expected=Query(request).text("expected"))
        return json_response({"version": was})

    async def alias_history(self, request: Request) -> Response:
        name, alias = request.path_params["name"], request.path_params["alias"]
        entries = await self.call(request, self.p.alias_history, name, alias)
        return json_response({"history": [e.to_dict() for e in entries]})

    async def alias_at(self, request: Request) -> Response:
        name, alias = request.path_params["name"], request.path_params["alias"]
        found = await self.call(request, self.p.alias_at, name, alias, Query(request).required("when"))
        return json_response({"version": found})

    async def check_alias_move(self, request: Request) -> Response:
        name, alias = request.path_params["name"], request.path_params["alias"]
        check = await self.call(request, self.p.check_alias_move, name, alias, Query(request).required("version"))
        return json_response({"check": move_check_to_wire(check)})

    async def get_tags(self, request: Request) -> Response:
        name, version = request.path_params["name"], Query(request).text("version")
        return json_response({"tags": await self.call(request, self.p.get_tags, name, version=version)})

    async def set_tag(self, request: Request) -> Response:
        name, key = request.path_params["name"], request.path_params["key"]
        body = Body(await read_json(request))
        value = body.get("value")
        if not isinstance(value, str):
            raise RequestError("'value' must be text")
        await self.call(request, self.p.set_tag, name, key, value, version=body.text("version"))
        return json_response({"ok": True})

    async def delete_tag(self, request: Request) -> Response:
        name, key = request.path_params["name"], request.path_params["key"]
        await self.call(request, self.p.delete_tag, name, key, version=Query(request).text("version"))
        return json_response({"ok": True})

    async def get_description(self, request: Request) -> Response:
        name, version = request.path_params["name"], Query(request).text("version")
        return json_response({"description": await self.call(request, self.p.get_description, name, version=version)})

    async def set_description(self, request: Request) -> Response:
        body = Body(await read_json(request))
        text = body.get("text")
        if text is not None and not isinstance(text, str):
            raise RequestError("'text' must be text or null")
        name, version = request.path_params["name"], body.text("version")
        await self.call(request, self.p.set_description, name, text, version=version)
        return json_response({"ok": True})

    # -- the trash ---------------------------------------------------------------------------
    async def delete(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params["version"]
        await self.call(request, self.p.delete, name, version, force=Query(request).flag("force"))
        return json_response({"ok": True})

    async def restore(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params["version"]
        await self.call(request, self.p.restore, name, version)
        return json_response({"ok": True})

    async def list_trash(self, request: Request) -> Response:
        found = await self.call(request, self.p.list_trash, Query(request).text("model"))
        return json_response({"trash": [list(row) for row in found]})

    async def purge(self, request: Request) -> Response:
        body = Body(await read_json(request))
        older_than = body.get("older_than")
        if older_than is not None and (isinstance(older_than, bool) or not isinstance(older_than, (str, int, float))):
            raise RequestError("'older_than' must be text such as '30d' or a number of seconds")
        found = await self.call(
            request, self.p.purge, body.text("model_name"), body.text("version"), older_than=older_than
        )
        return json_response({"purged": [list(row) for row in found]})

    async def prune(self, request: Request) -> Response:
        body = Body(await read_json(request))
        keep = body.integer("keep_last")
        if keep is None:
            raise RequestError("'keep_last' is required")
        found = await self.call(request, self.p.prune, request.path_params["name"], keep, dry_run=body.flag("dry_run"))
        return json_response({"versions": found})

    # -- promotion policies and approvals ----------------------------------------------------
    async def policies(self, request: Request) -> Response:
        found = await self.call(request, self.p.policies, Query(request).text("model"))
        return json_response({"policies": [policy_to_wire(p) for p in found]})

    async def set_policy(self, request: Request) -> Response:
        body = Body(await read_json(request))
        signers = body.get("require_signature")
        allowed = body.get("allowed")
        if signers is not None and not (_str_list(signers) and all("-----BEGIN" in k for k in signers)):
            # PEM text only: a file name would be read on the server's disk
            raise RequestError("'require_signature' must be a list of PEM public keys")
        if allowed is not None and not _str_list(allowed):
            raise RequestError("'allowed' must be a list of text")
        policy = await self.call(
            request,
            self.p.set_policy,
            body.required("model"),
            body.required("alias"),
            filter=body.text("filter"),
            require_signature=signers,
            require_input_signature=body.flag("require_input_signature"),
            approvals=body.integer("approvals", 0),
            allowed=allowed,
        )
        return json_response({"policy": policy_to_wire(policy)})

    async def remove_policy(self, request: Request) -> Response:
        model, alias = request.path_params["model"], request.path_params["alias"]
        return json_response({"policy": policy_to_wire(await self.call(request, self.p.remove_policy, model, alias))})

    async def approve(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params["version"]
        alias = Body(await read_json(request)).required("alias")
        return json_response({"approval": await self.call(request, self.p.approve, name, version, alias)})

    async def approvals(self, request: Request) -> Response:
        q = Query(request)
        found = await self.call(
            request, self.p.approvals, request.path_params["name"], q.text("version"), alias=q.text("alias")
        )
        return json_response({"approvals": found})

    # -- users and tokens (admins only) ------------------------------------------------------
    async def _admin(self, request: Request, what: str) -> Any:
        """The registry's user store, once the caller is known to be an admin."""
        who: Identity | None = getattr(request.state, "user", None)
        self.p.access.require(who, "admin", what)
        return self.p.users

    async def list_users(self, request: Request) -> Response:
        users = await self._admin(request, "list users")
        rows = await self.call(request, users.list)
        out = []
        for row in rows:
            tokens = await self.call(request, users.tokens, row.name)
            out.append(
                {
                    "name": row.name,
                    "role": row.role,
                    "password": bool(row.password_hash),
                    "tokens": len(tokens),
                    "created_at": row.created_at,
                    "updated_at": row.updated_at,
                }
            )
        return json_response({"users": out})

    async def add_user(self, request: Request) -> Response:
        users = await self._admin(request, "manage users")
        body = Body(await read_json(request))
        await self.call(request, users.add, body.required("name"), body.text("password"), body.text("role") or "viewer")
        return json_response({"ok": True}, status=201)

    async def remove_user(self, request: Request) -> Response:
        users = await self._admin(request, "manage users")
        _not_yourself(request, "remove")
        await self.call(request, users.remove, request.path_params["user"])
        return json_response({"ok": True})

    async def set_role(self, request: Request) -> Response:
        users = await self._admin(request, "manage users")
        role = Body(await read_json(request)).required("role")
        if role != "admin":
            _not_yourself(request, "demote")
        await self.call(request, users.set_role, request.path_params["user"], role)
        return json_response({"ok": True})

    async def set_password(self, request: Request) -> Response:
        users = await self._admin(request, "manage users")
        password = Body(await read_json(request)).required("password")
        await self.call(request, users.set_password, request.path_params["user"], password)
        return json_response({"ok": True})

    async def new_token(self, request: Request) -> Response:
        users = await self._admin(request, "manage users")
        body = Body(await read_json(request))
        expires = body.data.get("expires_in")
        if expires is not None and (isinstance(expires, bool) or not isinstance(expires, (int, float))):
            raise RequestError("'expires_in' must be a number of seconds, or null")
        token = await self.call(
            request, users.new_token, request.path_params["user"], body.text("label") or "", expires_in=expires
        )
        return json_response({"token": token}, status=201)

    async def list_tokens(self, request: Request) -> Response:
        users = await self._admin(request, "manage users")
        found = await self.call(request, users.tokens, request.path_params["user"])
        return json_response({"tokens": [dataclasses.asdict(t) for t in found]})

    async def revoke_tokens(self, request: Request) -> Response:
        users = await self._admin(request, "manage users")
        return json_response({"revoked": await self.call(request, users.revoke_tokens, request.path_params["user"])})

    async def revoke_token(self, request: Request) -> Response:
        users = await self._admin(request, "manage users")
        user, token_id = request.path_params["user"], request.path_params["token_id"]
        await self.call(request, users.revoke_token, user, token_id)
        return json_response({"ok": True})

    async def list_grants(self, request: Request) -> Response:
        users = await self._admin(request, "manage users")
        found = await self.call(request, users.grants, request.path_params["user"])
        return json_response({"grants": [{"glob": glob, "role": role} for glob, role in found]})

    async def grant(self, request: Request) -> Response:
        users = await self._admin(request, "manage users")
        body = Body(await read_json(request))
        await self.call(request, users.grant, request.path_params["user"], body.required("glob"), body.required("role"))
        return json_response({"ok": True})

    async def revoke_grant(self, request: Request) -> Response:
        users = await self._admin(request, "manage users")
        glob = Query(request).text("glob")
        if not glob:
            raise RequestError("say which grant to remove: ?glob=PATTERN")
        await self.call(request, users.revoke_grant, request.path_params["user"], glob)
        return json_response({"ok": True})

    def endpoints(self) -> list[Endpoint]:
        """Every route of the API: these, and the transfers of :mod:`modelkeep.api.transfers`."""
        from .admin_routes import admin_endpoints
        from .bundle_routes import bundle_endpoints
        from .signing_routes import signing_endpoints
        from .transfers import transfer_endpoints
        from .webhook_routes import webhook_endpoints

        m, v, a = "/models/{name}", "/models/{name}/versions/{version}", "/models/{name}/aliases/{alias}"
        return [
            *transfer_endpoints(self),
            *signing_endpoints(self),
            *bundle_endpoints(self),
            *admin_endpoints(self),
            *webhook_endpoints(self),
            Endpoint("GET", "/", self.about, "The server, its protocol version, and who you are"),
            Endpoint("GET", "/models", self.list_models, "Names of the models you may see", hinted=True),
            Endpoint(
                "GET",
                "/summaries",
                self.model_summaries,
                "Each model with its version count and latest version",
                hinted=True,
            ),
            Endpoint("GET", "/aliases", self.all_aliases, "Every alias of every model", hinted=True),
            Endpoint(
                "GET",
                "/history",
                self.history,
                "The audit log (?model, alias, since, until, limit, actions)",
                query=("model", "alias", "since", "until", "limit:integer", "actions"),
                hinted=True,
            ),
            Endpoint(
                "POST",
                "/verify",
                self.verify,
                "Re-hash artifacts on the server and report problems",
                body=("model_name",),
            ),
            Endpoint(
                "POST",
                "/search/versions",
                self.search_versions,
                "Live versions matching a filter, a page",
                body=("filter", "model_name", "order_by:any", "limit:integer", "page_token"),
                hinted=True,
            ),
            Endpoint(
                "POST",
                "/search/models",
                self.search_models,
                "Models with a version matching a filter",
                body=("filter", "limit:integer", "page_token"),
                hinted=True,
            ),
            Endpoint("GET", "/trash", self.list_trash, "Versions in the trash (?model)", query=("model",), hinted=True),
            Endpoint(
                "POST",
                "/purge",
                self.purge,
                "Delete trashed versions for good",
                body=("model_name", "version", "older_than:any"),
            ),
            Endpoint("GET", "/policies", self.policies, "Promotion policies (?model)", query=("model",), hinted=True),
            Endpoint(
                "PUT",
                "/policies",
                self.set_policy,
                "Set the policy for moving an alias (admin)",
                body=(
                    "model!",
                    "alias!",
                    "filter",
                    "require_signature:array",
                    "require_input_signature:boolean",
                    "approvals:integer",
                    "allowed:array",
                ),
            ),
            Endpoint(
                "DELETE", "/policies/{model:path}/{alias}", self.remove_policy, "Remove a promotion policy (admin)"
            ),
            Endpoint("GET", m + "/versions", self.list_versions, "A model's live versions, oldest first", hinted=True),
            Endpoint(
                "GET",
                m + "/records",
                self.list_version_records,
                "Every live version's record, oldest first",
                hinted=True,
            ),
            Endpoint(
                "GET",
                v,
                self.get_version,
                "One version's record ('latest' allowed; ?alias)",
                query=("alias",),
                hinted=True,
            ),
            Endpoint(
                "DELETE", v, self.delete, "Move a version to the trash (?force)", query=("force:boolean",), hinted=True
            ),
            Endpoint("POST", v + "/restore", self.restore, "Bring a version back from the trash", hinted=True),
            Endpoint(
                "POST", v + "/approvals", self.approve, "Approve a version for an alias", body=("alias!",), hinted=True
            ),
            Endpoint(
                "GET",
                m + "/approvals",
                self.approvals,
                "Approvals of a model (?version, alias)",
                query=("version", "alias"),
                hinted=True,
            ),
            Endpoint(
                "POST",
                m + "/prune",
                self.prune,
                "Trash all but the newest versions",
                body=("keep_last:integer!", "dry_run:boolean"),
            ),
            Endpoint(
                "POST",
                m + "/compare",
                self.compare_records,
                "The records compare_versions compares",
                body=("versions:array", "filter"),
                hinted=True,
            ),
            Endpoint(
                "GET",
                m + "/best",
                self.best_version,
                "The best version by a metric (?metric, mode, filter)",
                query=("metric!", "mode", "filter"),
                hinted=True,
            ),
            Endpoint(
                "GET",
                m + "/metrics/{metric:path}",
                self.metric_history,
                "A metric over the newest versions",
                query=("limit:integer",),
                hinted=True,
            ),
            Endpoint("GET", m + "/aliases", self.get_aliases, "A model's aliases", hinted=True),
            Endpoint(
                "PUT",
                a,
                self.set_alias,
                "Point an alias at a version (compare-and-set with 'expected')",
                body=("version!", "expected"),
                hinted=True,
            ),
            Endpoint("DELETE", a, self.delete_alias, "Remove an alias (?expected)", query=("expected",), hinted=True),
            Endpoint("GET", a + "/history", self.alias_history, "Where an alias has pointed", hinted=True),
            Endpoint(
                "GET",
                a + "/at",
                self.alias_at,
                "Where an alias pointed at a time (?when)",
                query=("when!",),
                hinted=True,
            ),
            Endpoint(
                "GET",
                a + "/check",
                self.check_alias_move,
                "Whether a move would pass its policies (?version)",
                query=("version!",),
                hinted=True,
            ),
            Endpoint(
                "GET",
                m + "/tags",
                self.get_tags,
                "Tags of a model or version (?version)",
                query=("version",),
                hinted=True,
            ),
            Endpoint("PUT", m + "/tags/{key:path}", self.set_tag, "Set a tag", body=("value!", "version"), hinted=True),
            Endpoint(
                "DELETE",
                m + "/tags/{key:path}",
                self.delete_tag,
                "Remove a tag (?version)",
                query=("version",),
                hinted=True,
            ),
            Endpoint(
                "GET",
                m + "/description",
                self.get_description,
                "A model's or version's description",
                query=("version",),
                hinted=True,
            ),
            Endpoint(
                "PUT",
                m + "/description",
                self.set_description,
                "Set or clear a description",
                body=("text", "version"),
                hinted=True,
            ),
            Endpoint("GET", "/users", self.list_users, "Users and their roles (admin)"),
            Endpoint(
                "POST",
                "/users",
                self.add_user,
                "Add a user (admin)",
                body=("name!", "password", "role"),
                success=(201,),
            ),
            Endpoint("DELETE", "/users/{user}", self.remove_user, "Remove a user and their tokens (admin)"),
            Endpoint("PUT", "/users/{user}/role", self.set_role, "Change a user's role (admin)", body=("role!",)),
            Endpoint(
                "PUT", "/users/{user}/password", self.set_password, "Set a user's password (admin)", body=("password!",)
            ),
            Endpoint(
                "POST",
                "/users/{user}/tokens",
                self.new_token,
                "Make an API token for a user (admin)",
                body=("label", "expires_in:number"),
                success=(201,),
            ),
            Endpoint("GET", "/users/{user}/tokens", self.list_tokens, "A user's tokens: id, label, dates (admin)"),
            Endpoint("DELETE", "/users/{user}/tokens", self.revoke_tokens, "Revoke every token of a user (admin)"),
            Endpoint(
                "DELETE",
                "/users/{user}/tokens/{token_id:path}",
                self.revoke_token,
                "Revoke one token by its id (admin)",
            ),
            Endpoint("GET", "/users/{user}/grants", self.list_grants, "A user's roles on model globs (admin)"),
            Endpoint(
                "PUT",
                "/users/{user}/grants",
                self.grant,
                "Give a user a role on a model glob (admin)",
                body=("glob!", "role!"),
            ),
            Endpoint(
                "DELETE",
                "/users/{user}/grants",
                self.revoke_grant,
                "Take back a user's grant (?glob=) (admin)",
                query=("glob!",),
            ),
        ]


def _not_yourself(request: Request, what: str) -> None:
    """Refuse an admin removing or demoting themselves, as the UI does: the last admin would lock
    every admin out of the server, which only its host could undo."""
    who: Identity | None = getattr(request.state, "user", None)
    if who is not None and who.name == request.path_params["user"]:
        raise PermissionDeniedError(
            f"{who.name} may not {what} themselves through the server: another admin can, "
            "or 'modelkeep users' on the server's host"
        )


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def check_protocol(request: Request) -> None:
    """Refuse a client that speaks a newer protocol than this server (it would misread answers)."""
    sent = request.headers.get(PROTOCOL_HEADER)
    if sent is None:
        return
    try:
        version = int(sent)
    except ValueError:
        raise RequestError(f"{PROTOCOL_HEADER} must be a number, got {sent[:40]!r}") from None
    if version > PROTOCOL:
        raise RequestError(
            f"this client speaks protocol {version}, but the server ({__version__}) only {PROTOCOL}: upgrade the server"
        )


def route_error(request: Request, exc: HTTPException) -> JSONResponse | None:
    """The JSON answer to a request under ``/api/`` that reached no route of the API (404), or a
    route without that method (405, with its ``Allow`` header); ``None`` for any other path
    (the UI's pages answer those). A client then raises :class:`~modelkeep.errors.RequestError`
    naming the route, never the error of a missing model, and never reads an HTML page."""
    path = request.url.path
    routed = request.scope.get("endpoint") is not None  # a route's own 404 (a UI page's) is its business
    if not path.startswith("/api/") or not (exc.status_code == 405 or (exc.status_code == 404 and not routed)):
        return None
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not a method of {path} (it takes {allowed or 'none'})"
    elif path.startswith(API_PREFIX + "/api/"):
        message = f"no API route {path}: the registry URL is the server's root, without {API_PREFIX}"
    else:
        message = (
            f"this server (modelkeep {__version__}, protocol {PROTOCOL}) has no API route {request.method} {path}: "
            f"see {API_PREFIX}/openapi.json"
        )
    response = JSONResponse(error_body(RequestError(message)), status_code=exc.status_code)
    response.headers.update(exc.headers or {})
    return response


def _from_http(exc: HTTPException) -> ModelKeepError:
    detail = str(exc.detail)
    if exc.status_code == 401:
        return AuthenticationError(detail)
    if exc.status_code == 403:
        return PermissionDeniedError(detail)
    if exc.status_code == 413:
        return UploadTooLargeError(detail)
    return RequestError(detail)  # a 400 or 411: something in the request


#: What each path parameter takes (the library's name rules; what a regular expression cannot say,
#: such as "no '..'" or "an alias does not look like a version", is still a 400).
def _matching(rule: re.Pattern[str], max_length: int | None = None) -> dict[str, Any]:
    """A string schema for the library's own name rule (``rule`` must match whole)."""
    schema: dict[str, Any] = {"type": "string", "pattern": f"^{rule.pattern}$"}
    return schema if max_length is None else {**schema, "maxLength": max_length}


_NAME = _matching(NAME_RE, MAX_NAME_LENGTH)
_VERSION = _matching(VERSION_RE, MAX_VERSION_LENGTH)
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "name": _NAME,
    "model": _NAME,
    "version": _VERSION,
    "alias": _VERSION,
    "user": _matching(USER_NAME_RE),
    "sha": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    "key": {"type": "string", "pattern": r"\S", "maxLength": MAX_TAG_KEY},  # a tag key: any text, not blank
    "webhook": {"type": "integer"},
}
_TYPES = {"integer": "integer", "number": "number", "boolean": "boolean", "object": "object", "array": "array"}
#: The body of every error answer.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["class", "message", "cli"],
            "properties": {
                "class": {"type": "string", "description": "the modelkeep.errors class a client raises"},
                "message": {"type": "string"},
                "cli": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        }
    },
}


def _member(spec: str) -> tuple[str, dict[str, Any], bool]:
    """``"limit:integer"`` -> ``("limit", {"type": "integer"}, False)``; a ``!`` marks it required."""
    name, _, kind = spec.partition(":")
    required = name.endswith("!") or kind.endswith("!")
    name, kind = name.rstrip("!"), kind.rstrip("!")
    schema: dict[str, Any] = {} if kind == "any" else {"type": _TYPES.get(kind, "string")}
    return name, schema, required


def _success_schema(media: str) -> dict[str, Any]:
    return {"schema": {"type": "object"}} if media == "application/json" else {}


def documented_path(path: str) -> str:
    """A route's path as OpenAPI templates it: ``/tags/{key:path}`` (Starlette's convertor, which
    lets the value hold ``/``) is ``/tags/{key}``."""
    return re.sub(r"{(\w+):\w+}", r"{\1}", path)


def openapi(endpoints: list[Endpoint]) -> dict[str, Any]:
    """The OpenAPI 3.1 document describing ``endpoints``."""
    paths: dict[str, dict[str, Any]] = {}
    error = {
        "description": "An error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    for ep in endpoints:
        template = documented_path(ep.path)
        params: list[dict[str, Any]] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": PATH_PARAMETERS.get(name, {"type": "string"}),
            }
            for name in re.findall(r"{(\w+)}", template)
        ]
        for where, specs in (("query", ep.query), ("header", ep.headers)):
            for spec in specs:
                name, schema, required = _member(spec)
                params.append({"name": name, "in": where, "required": required, "schema": schema})
        operation: dict[str, Any] = {
            "summary": ep.summary,
            "operationId": ep.handler.__name__,
            "parameters": params,
            "responses": {
                **{
                    str(status): {
                        "description": "Success",
                        "content": {media: _success_schema(media) for media in ep.returns},
                    }
                    for status in ep.success
                },
                "default": error,
            },
        }
        if ep.body is not None:
            members = [_member(spec) for spec in ep.body]
            body: dict[str, Any] = {"type": "object", "properties": {name: schema for name, schema, _ in members}}
            if any(required for *_, required in members):
                body["required"] = [name for name, _, required in members if required]
            operation["requestBody"] = {
                "required": bool(body.get("required")),
                "content": {"application/json": {"schema": body}},
            }
        elif ep.stream is not None:
            operation["requestBody"] = {"required": True, "content": {ep.stream: {}}}
        paths.setdefault(API_PREFIX + template, {})[ep.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "modelkeep registry API", "version": __version__},
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": ERROR_SCHEMA},
        },
        "security": [{"token": []}],
        "paths": paths,
    }


def api_routes(api: Api) -> list[Route]:
    """The Starlette routes of ``api``, plus ``/api/v1/openapi.json`` (served without sign-in)."""
    endpoints = api.endpoints()
    document = json.dumps(openapi(endpoints)).encode()  # rendered once: it never changes

    async def schema(_request: Request) -> Response:
        return Response(document, media_type="application/json")

    # One route per path, whatever its methods: a 405 then names them all in its Allow header
    # (with a route per method, only the first route's).
    by_path: dict[str, dict[str, Handler]] = {}
    for ep in endpoints:
        by_path.setdefault(ep.path, {})[ep.method] = api.guarded(ep.handler, hinted=ep.hinted)
    routes = [Route(API_PREFIX + "/openapi.json", schema, methods=["GET"])]
    for path, handlers in by_path.items():
        route = Route(API_PREFIX + path, _by_method(handlers), methods=list(handlers))
        if ":path}" in path:
            # A {...:path} value is any text (a tag key may hold a newline): its ".*" must match
            # "\n" too, or "a\nb" reaches no route and "a\n" the route with "" (before "$").
            route.path_regex = re.compile(route.path_regex.pattern, re.DOTALL)
        routes.append(route)
    return routes


def _by_method(handlers: dict[str, Handler]) -> Handler:
    """The handler of a path that answers each method with its own (``HEAD`` with ``GET``'s)."""

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return endpoint
