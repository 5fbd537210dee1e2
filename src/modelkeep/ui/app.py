"""The UI's ASGI application: routes, handlers and error pages (Starlette + Jinja2).

Every page reads through the library (:class:`~modelkeep.ModelPersistence`)
and every action calls one library method, so the audit log, compare-and-set
and the trash behave exactly as they do from Python and the CLI. Library
calls block (database, storage), so they run in Starlette's thread pool.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from .. import environment
from ..errors import (
    AliasConflictError,
    AuthenticationError,
    FilterError,
    ModelKeepError,
    PermissionDeniedError,
    PolicyError,
    VersionInUseError,
)
from ..identity import REGISTRY_ROLES, Identity, acting_as
from ..lifecycle import ALIAS_ACTIONS
from ..metadata import ModelMetadata
from ..registry import ModelPersistence
from .auth import LOOPBACK_HOSTS, SESSION_COOKIE, AuthSettings, HostGate, Sessions, SignInLimiter
from .security import COOKIE, FIELD, CsrfGuard
from .views import (
    SEARCH_EXAMPLES,
    breakable,
    cell,
    chart_series,
    comparison_rows,
    history_diff,
    human_size,
    is_scalar,
    lineage_view,
    load_snippet,
    metric_names,
    numeric_metrics,
    search_hint,
    short_type,
    signature_view,
    small_multiples,
    time_html,
)

HERE = Path(__file__).parent
#: Versions per page of a model's table.
PAGE_SIZE = 50
#: At most this many (newest) versions are plotted on a model's chart.
CHART_POINTS = 2000
#: Models per page of the models page (by name; "next" continues after the last one shown).
MODELS_PAGE = 200
#: Rows of alias moves shown on a model page (the newest, filtered in SQL).
TIMELINE_ROWS = 50
#: Deliveries the webhooks page shows (the newest), each with its attempts.
DELIVERY_ROWS = 50


class _SignInNeeded(Exception):
    """The request carries no identity, and this UI needs one."""


class _Pages:
    """The handlers of one app, bound to one registry."""

    def __init__(
        self,
        persistence: ModelPersistence,
        *,
        read_only: bool,
        page_size: int,
        auth: AuthSettings,
        anonymous: bool,
    ) -> None:
        self.p = persistence
        self.read_only = read_only
        self.page_size = page_size
        self.auth = auth
        #: Whether a ``local`` UI with no users configured serves everyone (``serve`` allows it on loopback).
        self.anonymous = anonymous
        self.sessions = Sessions()
        self.limiter = SignInLimiter()
        self.guard = CsrfGuard()
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.filters["cell"] = cell
        self.templates.env.filters["size"] = human_size
        self.templates.env.filters["q"] = lambda s: quote(str(s), safe="")
        self.templates.env.filters["when"] = time_html
        self.templates.env.filters["diff"] = history_diff
        self.templates.env.filters["short_type"] = short_type
        self.templates.env.filters["breakable"] = breakable

    # -- plumbing -------------------------------------------------------------
    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        cookie = request.cookies.get(COOKIE) or self.guard.new_cookie()
        who: Identity | None = getattr(request.state, "user", None)
        context.update(
            # A viewer (with no grant to write anything) sees the pages as a read-only UI: no forms.
            read_only=self.read_only or (who is not None and not who.may_somewhere("writer")),
            user=who,
            signin_free=getattr(request.state, "signin_free", False),
            auth_mode=self.auth.mode,
            csrf_field=FIELD,
            csrf_token=self.guard.token_for(cookie),
            message=request.query_params.get("msg"),
            registry=str(self.p.models_dir),
        )
        response = self.templates.TemplateResponse(request, template, context, status_code=status)
        if COOKIE not in request.cookies:
            response.set_cookie(COOKIE, cookie, httponly=True, samesite="strict", secure=self.secure(request))
        return response

    def secure(self, request: Request) -> bool:
        """Whether cookies get the ``Secure`` flag: served over TLS, or told a TLS proxy is in front."""
        return request.url.scheme == "https" or self.auth.secure_cookies

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await run_in_threadpool(fn, *args, **kwargs)

    async def act(self, request: Request, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call a library method that changes something, as the signed-in user (role checks, history)."""
        who: Identity | None = getattr(request.state, "user", None)

        def run() -> Any:
            with acting_as(who):
                return fn(*args, **kwargs)

        return await run_in_threadpool(run)

    async def form(self, request: Request) -> dict[str, str]:
        """The POSTed form, after the read-only, role and CSRF checks."""
        if self.read_only:
            raise HTTPException(403, "this UI is read-only (started with --read-only)")
        who: Identity | None = getattr(request.state, "user", None)
        if who is not None and not who.may_somewhere("writer"):
            raise HTTPException(403, f"{who.name} is a {who.role}: viewers cannot change anything")
        data = await request.form()
        fields = {k: str(v) for k, v in data.items()}
        if getattr(request.state, "via", None) == "token":
            return fields  # a bearer token is not sent by browsers on their own: no CSRF to guard
        self.check_csrf(request, fields)
        return fields

    def check_csrf(self, request: Request, fields: dict[str, str]) -> None:
        why = self.guard.check(
            request.cookies.get(COOKIE), fields.get(FIELD), request.headers.get("origin"), request.headers.get("host")
        )
        if why:
            raise HTTPException(403, why)

    # -- identity -------------------------------------------------------------
    async def identify(self, request: Request) -> Identity | None:
        """Who sent ``request``: ``None`` when this UI is sign-in free; else raises (401/403 or sign-in)."""
        if self.auth.mode == "none":
            request.state.signin_free = True
            return None
        if self.auth.mode == "proxy":
            return await self._from_proxy(request)
        header = request.headers.get("authorization")
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise HTTPException(401, "only 'Authorization: Bearer <API token>' is understood")
            try:
                who = await self.call(self.p.users.token_identity, token.strip())
            except AuthenticationError as exc:
                raise HTTPException(401, str(exc)) from None
            if session is not None and session.user != who.name:
                raise HTTPException(401, "the API token belongs to another user than the one signed in")
            request.state.via = "token"
            return who
        if session is not None:
            found = await self.call(self.p.users.get, session.user)
            if found is not None and found.password_hash == session.password_hash:
                request.state.via = "session"
                return await self.call(self.p.users.identity_of, found)
            self.sessions.end(request.cookies.get(SESSION_COOKIE))  # removed, or password changed
        if self.anonymous and await self.call(self.p.users.count) == 0:
            request.state.signin_free = True
            return None
        raise _SignInNeeded()

    def bearer_alone(self, request: Request) -> str | None:
        """The API token of a request that :meth:`identify` would know by that token alone (local
        accounts, a bearer token, no session cookie), else ``None``."""
        if self.auth.mode != "local" or SESSION_COOKIE in request.cookies:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    async def _from_proxy(self, request: Request) -> Identity:
        client = request.client.host if request.client else None
        if not self.auth.from_trusted_proxy(client):
            raise HTTPException(403, f"this UI accepts requests only through its sign-in proxy; {client} is not one")
        name = request.headers.get(self.auth.user_header, "").strip()
        if not name or len(name) > 128:
            raise HTTPException(401, f"the sign-in proxy sent no user name in {self.auth.user_header}")
        request.state.via = "proxy"
        return await self.call(self.p.users.identity, name) or Identity(name, self.auth.proxy_role)

    def gate(
        self, handler: Callable[[Request], Awaitable[Response]], *, timed: bool = True
    ) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` behind the identity check; a GET without one goes to the sign-in page."""

        async def wrapper(request: Request) -> Response:
            started = time.perf_counter()
            try:
                request.state.user = await self.identify(request)
            except _SignInNeeded:
                if request.method == "GET" and not request.url.path.startswith("/api/"):
                    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    return RedirectResponse(f"/signin?{urlencode({'next': target})}", status_code=303)
                raise HTTPException(401, "sign in first (or send 'Authorization: Bearer <API token>')") from None
            # The whole request reads as the signed-in user (worker threads inherit the context),
            # so the models they may not view are missing from every page, as in the library.
            with acting_as(request.state.user):
                response = await handler(request)
            if timed:
                response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
            return response

        return wrapper

    # -- sign-in --------------------------------------------------------------
    async def signin_page(self, request: Request, *, status: int = 200, error: str | None = None) -> Response:
        next_page = _local_path(request.query_params.get("next") or "/")
        if self.auth.mode != "local":
            return RedirectResponse(next_page, status_code=303)
        return self.render(
            request,
            "signin.html",
            status=status,
            next_page=next_page,
            error=error,
            name=request.query_params.get("user"),
        )

    async def signin(self, request: Request) -> Response:
        if self.auth.mode != "local":
            raise HTTPException(404, "sign-in is done by the SSO proxy in front of this UI")
        data = await request.form()
        fields = {k: str(v) for k, v in data.items()}
        self.check_csrf(request, fields)
        name, password = fields.get("username", "").strip(), fields.get("password", "")
        next_page = _local_path(fields.get("next") or "/")
        client = request.client.host if request.client else "?"
        wait = self.limiter.wait(name, client)
        if wait > 0:
            response = self.render(
                request,
                "signin.html",
                status=429,
                next_page=next_page,
                name=name,
                error=f"Too many wrong passwords: try again in {math.ceil(wait)} seconds.",
            )
            response.headers["Retry-After"] = str(math.ceil(wait))
            return response
        try:
            row = await self.call(self.p.users.check_password, name, password)
        except AuthenticationError as exc:
            self.limiter.failed(name, client)
            return self.render(request, "signin.html", status=401, next_page=next_page, name=name, error=str(exc))
        self.limiter.succeeded(name)
        self.sessions.end(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse(next_page, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            self.sessions.start(row.name, row.password_hash),
            httponly=True,
            samesite="strict",
            secure=self.secure(request),
        )
        return response

    async def signout(self, request: Request) -> Response:
        data = await request.form()
        self.check_csrf(request, {k: str(v) for k, v in data.items()})
        self.sessions.end(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/signin?msg=signed+out" if self.auth.mode == "local" else "/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict", secure=self.secure(request))
        return response

    @staticmethod
    def back(to: str, msg: str) -> RedirectResponse:
        sep = "&" if "?" in to else "?"
        return RedirectResponse(f"{to}{sep}{urlencode({'msg': msg})}", status_code=303)

    # -- pages ----------------------------------------------------------------
    async def models(self, request: Request) -> Response:
        query = request.query_params.get("q", "").strip()
        if query:
            try:
                page = await self.call(self.p.search_versions, query, limit=self.page_size)
            except FilterError as exc:
                return await self.search_error(request, query, exc)
            return self.render(
                request,
                "search.html",
                query=query,
                records=page.items,
                metrics=metric_names(page.items),
                more=page.next_page_token is not None,
            )
        # One page of models by name (keyset: ?after=<last name shown>), so the page runs the same
        # two statements and reads the same few index entries per model however many there are.
        after = request.query_params.get("after") or None
        summaries = await self.call(self.p.model_summaries, limit=MODELS_PAGE + 1, after=after)
        more = len(summaries) > MODELS_PAGE
        summaries = summaries[:MODELS_PAGE]
        every = await self.call(self.p.all_aliases, [s.name for s in summaries])  # one query
        aliases = {s.name: every.get(s.name, {}) for s in summaries}
        return self.render(
            request,
            "models.html",
            summaries=summaries,
            aliases=aliases,
            query="",
            after=after,
            next_after=summaries[-1].name if more else None,
        )

    async def search_error(self, request: Request, query: str, exc: FilterError) -> Response:
        """The search page again, with the query kept, the problem marked and a suggestion."""
        recent = await self.call(self.p.search_versions, None, limit=200)
        fields = [*metric_names(recent.items), *{f"tags.{k}": None for r in recent.items for k in r.tags}]
        hint, fixed = search_hint(query, str(exc), fields)
        return self.render(
            request,
            "search.html",
            status=400,
            query=query,
            error=str(exc),
            position=exc.position,
            hint=hint,
            fixed=fixed,
            examples=SEARCH_EXAMPLES,
            records=[],
            metrics=[],
            more=False,
        )

    async def model(self, request: Request) -> Response:
        name = request.path_params["name"]
        order = request.query_params.get("order", "-version")
        token = request.query_params.get("page") or None
        page = await self.call(
            self.p.search_versions, None, model_name=name, order_by=[order], limit=self.page_size, page_token=token
        )
        if not page.items and token is None:
            await self.call(self.p.get_version, name)  # raises the library's not-found error (404)
        aliases = await self.call(self.p.get_aliases, name)
        entries = await self.call(self.p.history, name, limit=TIMELINE_ROWS, actions=ALIAS_ACTIONS)
        moves = list(reversed(entries))  # newest first
        trashed = await self.call(self.p.list_trash, name)
        return self.render(
            request,
            "model.html",
            name=name,
            records=page.items,
            metrics=metric_names(page.items),
            chart_metrics=numeric_metrics(page.items),
            chart_points=f"{CHART_POINTS:,}",
            order=order,
            next_page=page.next_page_token,
            aliases=aliases,
            moves=moves,
            trashed=trashed,
            model_tags=await self.call(self.p.get_tags, name),
            aliases_seen=json.dumps(aliases),
            description=await self.call(self.p.get_description, name),
        )

    async def chart(self, request: Request) -> Response:
        name = request.path_params["name"]
        metric = request.query_params.get("metric", "")
        points = await self.call(self.p.metric_history, name, metric, limit=CHART_POINTS)
        aliases = await self.call(self.p.get_aliases, name)
        return JSONResponse(chart_series(points, metric, aliases))

    async def version(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params["version"]
        record: ModelMetadata = await self.call(self.p.get_version, name, version)
        scalars = {k: v for k, v in record.metadata.items() if k != "model_params" and is_scalar(v)}
        nested = {k: v for k, v in record.metadata.items() if k != "model_params" and not is_scalar(v)}
        all_aliases = await self.call(self.p.get_aliases, name)
        return self.render(
            request,
            "version.html",
            name=name,
            record=record,
            scalars=scalars,
            nested=nested,
            params=record.metadata.get("model_params") or {},
            env_diffs=environment.differences(record.environment),
            signature=await self.call(self.p.signature_status, name, record.version),
            input_signature=signature_view(record.input_signature),
            lineage=lineage_view(record.lineage),
            snippet=load_snippet(record, str(self.p.models_dir), _registry_url(self.p)),
            all_aliases=all_aliases,
            aliases_seen=json.dumps(all_aliases),
            approvals=await self.call(self.p.approvals, name, record.version),
        )

    async def compare(self, request: Request) -> Response:
        name = request.path_params["name"]
        chosen = [v for v in request.query_params.getlist("v") if v]
        if len(chosen) < 2:
            raise HTTPException(400, "pick two or more versions to compare")
        records = [await self.call(self.p.get_version, name, v) for v in chosen]
        rows = comparison_rows(records)
        numeric = numeric_metrics(records)
        return self.render(
            request,
            "compare.html",
            name=name,
            records=records,
            rows=rows,
            diff_only=request.query_params.get("diff") == "1",
            multiples=small_multiples(records, numeric),
        )

    async def history(self, request: Request) -> Response:
        params = request.query_params
        model = params.get("model") or None
        alias = params.get("alias") or None
        since = params.get("since") or None
        until = params.get("until") or None
        entries = await self.call(self.p.history, model, alias=alias, since=since, until=until, limit=500)
        entries = list(reversed(entries))  # newest first
        return self.render(
            request,
            "history.html",
            entries=entries,
            model=model or "",
            alias=alias or "",
            since=since or "",
            until=until or "",
        )

    # -- users (admins) -------------------------------------------------------
    def require_admin(self, request: Request) -> Identity:
        who: Identity | None = getattr(request.state, "user", None)
        if who is None:
            raise HTTPException(
                403, "no users are configured: add the first one with 'modelkeep users add NAME --role admin'"
            )
        if not who.at_least("admin"):
            raise HTTPException(
                403, f"{who.name} is {'an' if who.role[0] in 'aeiou' else 'a'} {who.role}: only admins manage users"
            )
        return who

    async def users_page(self, request: Request) -> Response:
        self.require_admin(request)
        rows = await self.call(self.p.users.list)
        tokens = {r.name: len(await self.call(self.p.users.tokens, r.name)) for r in rows}
        return self.render(request, "users.html", rows=rows, tokens=tokens, roles=REGISTRY_ROLES)

    async def webhooks_page(self, request: Request) -> Response:
        """The webhooks and their delivery log, newest first (admins only: URLs and receivers'
        errors can say more than a viewer should see)."""
        self.require_admin(request)
        hooks = await self.call(self.p.webhooks.list)
        log = await self.call(self.p.webhooks.deliveries, None, limit=DELIVERY_ROWS)
        return self.render(request, "webhooks.html", hooks=hooks, deliveries=log)

    async def users_change(self, request: Request) -> Response:
        """Add a user, change a role, revoke tokens or remove a user (an admin, never themselves)."""
        who = self.require_admin(request)
        form = await self.form(request)
        action, name = request.path_params["action"], form.get("name", "").strip()
        if name == who.name and action in ("role", "remove"):
            raise HTTPException(403, "you cannot demote or remove yourself here: another admin, or the CLI, can")
        users = self.p.users
        if action == "add":
            await self.call(users.add, name, form.get("password") or None, form.get("role", "viewer"))
            msg = f"added {form.get('role', 'viewer')} {name}"
        elif action == "role":
            await self.call(users.set_role, name, form.get("role", ""))
            msg = f"{name} is now {form.get('role')}"
        elif action == "revoke":
            msg = f"revoked {await self.call(users.revoke_tokens, name)} token(s) of {name}"
        elif action == "remove":
            await self.call(users.remove, name)
            msg = f"removed {name}"
        else:
            raise HTTPException(404, f"no user action {action!r}")
        return self.back("/users", msg)

    # -- actions --------------------------------------------------------------
    async def set_alias(self, request: Request) -> Response:
        name = request.path_params["name"]
        form = await self.form(request)
        alias, version = form.get("alias", "").strip(), form.get("version", "").strip()
        expected = _expected(form, alias)
        try:
            await self.act(request, self.p.set_alias, name, alias, version, expected=expected)
        except AliasConflictError as exc:
            return await self.conflict(request, name, alias, version, expected, form, exc)
        except PolicyError as exc:
            return self.render(
                request,
                "policy_refused.html",
                status=403,
                name=name,
                alias=alias,
                version=version,
                failures=exc.failures,
                detail=str(exc),
                next_page=_local_path(form.get("next") or f"/models/{quote(name)}"),
            )
        return self.back(_local_path(form.get("next") or f"/models/{quote(name)}"), f"{alias} -> {version}")

    async def approve(self, request: Request) -> Response:
        """Approve this version for an alias, as the signed-in user (a maintainer or admin)."""
        name, version = request.path_params["name"], request.path_params["version"]
        form = await self.form(request)
        alias = form.get("alias", "").strip()
        row = await self.act(request, self.p.approve, name, version, alias)
        back = f"/models/{quote(name)}/versions/{quote(version)}"
        return self.back(back, f"{row['user']} approved version {version} for {alias}")

    async def delete_alias(self, request: Request) -> Response:
        name = request.path_params["name"]
        form = await self.form(request)
        alias = form.get("alias", "")
        expected = _expected(form, alias) or None
        try:
            await self.act(request, self.p.delete_alias, name, alias, expected=expected)
        except AliasConflictError as exc:
            return await self.conflict(request, name, alias, None, expected, form, exc)
        return self.back(_local_path(form.get("next") or f"/models/{quote(name)}"), f"alias {alias} removed")

    async def conflict(
        self,
        request: Request,
        name: str,
        alias: str,
        version: str | None,
        expected: str | None,
        form: dict[str, str],
        exc: Exception,
    ) -> Response:
        """409: the alias moved since the page was drawn. Show both targets and offer to retry."""
        current = (await self.call(self.p.get_aliases, name)).get(alias)
        return self.render(
            request,
            "conflict.html",
            status=409,
            name=name,
            alias=alias,
            wanted=version,
            seen=expected or None,
            current=current,
            retry_seen=json.dumps({alias: current} if current else {}),
            next_page=_local_path(form.get("next") or f"/models/{quote(name)}"),
            detail=str(exc),
        )

    async def set_tag(self, request: Request) -> Response:
        name = request.path_params["name"]
        form = await self.form(request)
        key, value = form.get("key", "").strip(), form.get("value", "")
        version = form.get("version") or None
        if form.get("remove"):
            await self.act(request, self.p.delete_tag, name, key, version=version)
            msg = f"tag {key} removed"
        else:
            await self.act(request, self.p.set_tag, name, key, value, version=version)
            msg = f"tag {key} = {value}"
        return self.back(_local_path(form.get("next") or f"/models/{quote(name)}"), msg)

    async def describe(self, request: Request) -> Response:
        name = request.path_params["name"]
        form = await self.form(request)
        await self.act(request, self.p.set_description, name, form.get("text", ""), version=form.get("version") or None)
        return self.back(_local_path(form.get("next") or f"/models/{quote(name)}"), "description saved")

    async def trash(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params["version"]
        form = await self.form(request)
        try:
            await self.act(request, self.p.delete, name, version, force=bool(form.get("force")))
        except VersionInUseError as exc:
            record = await self.call(self.p.get_version, name, version)
            others = await self.call(self.p.list_versions, name)
            return self.render(
                request,
                "trash_confirm.html",
                status=409,
                name=name,
                version=version,
                detail=str(exc),
                pointing=sorted(getattr(record, "aliases", []) or []),
                targets=[v for v in reversed(others) if v != version][:50],
            )
        return self.back(f"/models/{quote(name)}", f"version {version} moved to the trash")

    async def restore(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params["version"]
        await self.form(request)
        await self.act(request, self.p.restore, name, version)
        return self.back(f"/models/{quote(name)}/versions/{quote(version)}", f"version {version} restored")

    # -- errors ---------------------------------------------------------------
    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        from ..api.routes import route_error

        answer = route_error(request, exc)  # under /api/: JSON, for clients
        if answer is not None:
            return answer
        page = self.render(request, "error.html", status=exc.status_code, code=exc.status_code, detail=exc.detail)
        page.headers.update(exc.headers or {})  # a 405's Allow
        return page

    async def library_error(self, request: Request, exc: Exception) -> Response:
        code = (
            404
            if isinstance(exc, KeyError)
            else 409
            if _is_conflict(exc)
            else 401
            if isinstance(exc, AuthenticationError)
            else 403
            if isinstance(exc, PermissionDeniedError)
            else 400
        )
        detail = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        return self.render(request, "error.html", status=code, code=code, detail=str(detail))


def _expected(form: dict[str, str], alias: str) -> str | None:
    """Where the page showed ``alias`` pointing when it was drawn (``""``: nowhere), from the
    form's ``seen`` field (every alias of the model, as JSON); else an explicit ``expected``
    field (API clients); else ``None``: no compare-and-set."""
    seen = form.get("seen")
    if seen is not None:
        try:
            drawn = json.loads(seen)
        except ValueError:
            raise HTTPException(400, "the form's 'seen' field is not JSON: reload the page") from None
        if not isinstance(drawn, dict):
            raise HTTPException(400, "the form's 'seen' field is not a JSON object: reload the page")
        return str(drawn.get(alias) or "")
    return form.get("expected", "").strip() or None


def _local_path(target: str) -> str:
    """``target`` if it is a path on this server, else ``/`` (no open redirects)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target or any(ord(c) < 32 for c in target):
        return "/"
    return target


def _is_conflict(exc: Exception) -> bool:
    return "conflict" in type(exc).__name__.lower() or isinstance(exc, FileExistsError)


def _registry_url(p: ModelPersistence) -> str | None:
    url = p.index.safe_url
    return None if url.startswith("sqlite") else url


def create_app(
    persistence: ModelPersistence,
    *,
    read_only: bool = False,
    page_size: int = PAGE_SIZE,
    auth: AuthSettings | None = None,
    anonymous: bool = True,
    max_upload_bytes: int | None = None,
) -> Starlette:
    """The UI for ``persistence``'s registry as an ASGI app (serve it with uvicorn).

    ``auth`` says how people are identified (local accounts by default). With
    ``anonymous``, a UI with ``local`` accounts and no users configured serves
    everyone without sign-in (``serve`` allows that only on loopback). Requests
    whose ``Host`` is not a loopback name or one of ``auth.allowed_hosts`` get a 400.
    ``max_upload_bytes`` caps the API's streamed request bodies (HTTP 413 above it; ``None``: no cap).
    """
    auth = auth or AuthSettings()
    pages = _Pages(persistence, read_only=read_only, page_size=page_size, auth=auth, anonymous=anonymous)
    get, post = ["GET"], ["POST"]
    gate = pages.gate

    async def identify_api(request: Request) -> Identity | None:
        try:
            return await pages.identify(request)
        except _SignInNeeded:
            raise AuthenticationError("send 'Authorization: Bearer <API token>' (modelkeep users token NAME)") from None

    from ..api.routes import Api, api_routes

    routes = [
        *api_routes(Api(persistence, identify_api, max_upload_bytes=max_upload_bytes, bearer=pages.bearer_alone)),
        Route("/", gate(pages.models), methods=get),
        Route("/history", gate(pages.history), methods=get),
        Route("/models/{name}", gate(pages.model), methods=get),
        Route("/models/{name}/compare", gate(pages.compare), methods=get),
        Route("/models/{name}/versions/{version}", gate(pages.version), methods=get),
        Route("/api/models/{name}/chart", gate(pages.chart), methods=get),
        Route("/models/{name}/aliases", gate(pages.set_alias, timed=False), methods=post),
        Route("/models/{name}/aliases/delete", gate(pages.delete_alias, timed=False), methods=post),
        Route("/models/{name}/tags", gate(pages.set_tag, timed=False), methods=post),
        Route("/models/{name}/description", gate(pages.describe, timed=False), methods=post),
        Route("/models/{name}/versions/{version}/delete", gate(pages.trash, timed=False), methods=post),
        Route("/models/{name}/versions/{version}/restore", gate(pages.restore, timed=False), methods=post),
        Route("/models/{name}/versions/{version}/approve", gate(pages.approve, timed=False), methods=post),
        Route("/users", gate(pages.users_page), methods=get),
        Route("/webhooks", gate(pages.webhooks_page), methods=get),
        Route("/users/{action}", gate(pages.users_change, timed=False), methods=post),
        Route("/signin", pages.signin_page, methods=get),
        Route("/signin", pages.signin, methods=post),
        Route("/signout", pages.signout, methods=post),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: pages.http_error, ModelKeepError: pages.library_error},
    )
    app.add_middleware(HostGate, allowed=(*LOOPBACK_HOSTS, *auth.allowed_hosts))
    return app
