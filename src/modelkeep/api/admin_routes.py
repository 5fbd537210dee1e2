"""Server routes for the jobs that scan or rebuild the server's own registry (admins only).

The client half is :mod:`modelkeep.api.client_admin`; each job runs on the server, as the
request's identity, and answers the report the command line prints:

* ``POST /admin/gc`` ``{dry_run, min_age_seconds, purge_deleted_older_than}``: garbage
  collection (:meth:`ModelPersistence.gc`), answering ``{"report": GcReport.to_dict()}``.
* ``POST /admin/reindex``: rebuild the index from the sidecar files
  (:meth:`ModelPersistence.reindex`), answering ``{"versions": count}``.
* ``POST /events/dispatch`` ``{timeout, backoff, max_backoff, max_attempts, lease}``: one pass
  of the webhook dispatcher on the server (the deliveries leave from the server, as ever),
  answering ``{"busy": bool}``; ``modelkeep events dispatch`` against a server calls it in a loop.

* ``POST /admin/backfill-params`` ``{model_name, version, fields, expect}``: record the deep
  parameters of one version saved before 0.2, as captured by the client. ``modelkeep
  backfill-params`` against a server loads each old version on the client (with the client's
  keys and allow-list: a server never unpickles) and sends what it captured; the server takes
  only what a backfill could have produced (:func:`modelkeep.params_backfill.rewrite_from_client`).
  An empty body only checks that the caller is an admin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import RequestError
from .endpoint import Body, Endpoint, json_response, read_json

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from .routes import Api

#: The dispatcher settings a client may choose for one pass (``poll`` stays on the client), with
#: the range each must fall in: a pass runs in one of the server's worker threads, so an admin's
#: typo (a timeout of a day) must not hold it, and the lower bounds are the command line's.
PASS_SETTINGS: dict[str, tuple[float, float]] = {
    "timeout": (0.1, 60.0),
    "backoff": (0.0, 86_400.0),
    "max_backoff": (0.0, 7 * 86_400.0),
    "max_attempts": (1, 1_000),
    "lease": (0.5, 3_600.0),
}


def require_admin(api: Api, request: Request, what: str) -> None:
    """Refuse ``what`` unless the request's identity is an admin (anyone on a sign-in free server)."""
    api.p.access.require(getattr(request.state, "user", None), "admin", what)


class AdminRoutes:
    """The handlers of :func:`admin_endpoints`, bound to one :class:`~modelkeep.api.routes.Api`."""

    def __init__(self, api: Api) -> None:
        self.api = api

    async def gc(self, request: Request) -> Response:
        """Collect garbage in the server's store and answer the report."""
        require_admin(self.api, request, "collect garbage")
        body = Body(await read_json(request))
        min_age = body.get("min_age_seconds", 3600.0)
        if isinstance(min_age, bool) or not isinstance(min_age, (int, float)) or min_age < 0:
            raise RequestError("'min_age_seconds' must be a number of seconds, 0 or more")
        older = body.get("purge_deleted_older_than")
        if older is not None and (isinstance(older, bool) or not isinstance(older, (str, int, float))):
            raise RequestError("'purge_deleted_older_than' must be text such as '30d' or a number of seconds")
        report = await self.api.call(
            request,
            self.api.p.gc,
            dry_run=body.flag("dry_run"),
            min_age_seconds=float(min_age),
            purge_deleted_older_than=older,
        )
        return json_response({"report": report.to_dict()})

    async def reindex(self, request: Request) -> Response:
        """Rebuild the server's index from its sidecar files; answer how many versions it holds."""
        require_admin(self.api, request, "rebuild the index")
        return json_response({"versions": await self.api.call(request, self.api.p.reindex)})

    async def dispatch(self, request: Request) -> Response:
        """One pass of the webhook dispatcher on the server."""
        require_admin(self.api, request, "dispatch webhook events")
        settings = dispatch_settings(Body(await read_json(request)))
        return json_response({"busy": await self.api.call(request, self._dispatch_once, settings)})

    async def backfill_params(self, request: Request) -> Response:
        """Record the deep parameters a client captured from its own load of one version (an empty
        body only checks that the caller may: the client asks before it loads anything)."""
        require_admin(self.api, request, "rewrite recorded parameters")
        body = Body(await read_json(request))
        if not body.data:
            return json_response({})
        from ..params_backfill import rewrite_from_client

        name, version = body.required("model_name"), body.required("version")
        fields, expect = body.get("fields"), body.get("expect")
        await self.api.call(request, rewrite_from_client, self.api.p, name, version, fields, expect)
        return json_response({})

    def _dispatch_once(self, settings: Any) -> bool:
        dispatcher = self.api.p.webhooks.dispatcher(settings)
        try:
            return bool(dispatcher.run_once())
        finally:
            dispatcher.release()  # the next pass may be another request, another dispatcher


def dispatch_settings(body: Body) -> Any:
    """The :class:`~modelkeep.webhooks.settings.DispatchSettings` a dispatch request asks for."""
    from ..webhooks.settings import DispatchSettings

    chosen: dict[str, Any] = {}
    for key, (low, high) in PASS_SETTINGS.items():
        value = body.get(key)
        if value is None:
            continue
        whole = key == "max_attempts"
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or not low <= value <= high:
            kind = "a whole number" if whole else "a number of seconds"
            raise RequestError(f"{key!r} must be {kind} from {low:g} to {high:g}")
        chosen[key] = int(value) if whole else float(value)
    return DispatchSettings(**chosen)


def admin_endpoints(api: Api) -> list[Endpoint]:
    """The routes of garbage collection, reindexing and webhook dispatch (admins only)."""
    s = AdminRoutes(api)
    return [
        Endpoint(
            "POST",
            "/admin/gc",
            s.gc,
            "Collect garbage in the server's store; the report (admin)",
            body=("min_age_seconds:number", "purge_deleted_older_than:any", "dry_run:boolean"),
        ),
        Endpoint("POST", "/admin/reindex", s.reindex, "Rebuild the index from the sidecar files (admin)"),
        Endpoint(
            "POST",
            "/events/dispatch",
            s.dispatch,
            "One pass of the server's webhook dispatcher (admin)",
            body=tuple(f"{key}:{'integer' if key == 'max_attempts' else 'number'}" for key in PASS_SETTINGS),
        ),
        Endpoint(
            "POST",
            "/admin/backfill-params",
            s.backfill_params,
            "Record the deep parameters a client captured from its own load of one version: model_name and "
            "version, or an empty body to ask whether the caller may (admin)",
            body=("model_name", "version", "fields:any", "expect:any"),
        ),
    ]
