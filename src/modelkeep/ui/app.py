"""The UI's ASGI application: routes, handlers and error pages (Starlette + Jinja2).

Every page reads through the library (:class:`~modelkeep.ModelPersistence`)
and every action calls one library method, so the audit log, compare-and-set
and the trash behave exactly as they do from Python and the CLI. Library
calls block (database, storage), so they run in Starlette's thread pool.
"""

from __future__ import annotations

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
from ..errors import FilterError, ModelKeepError, VersionInUseError
from ..lifecycle import ALIAS_ACTIONS
from ..metadata import ModelMetadata
from ..registry import ModelPersistence
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
#: Rows of alias moves shown on a model page (the newest, filtered in SQL).
TIMELINE_ROWS = 50


class _Pages:
    """The handlers of one app, bound to one registry."""

    def __init__(self, persistence: ModelPersistence, *, read_only: bool, page_size: int) -> None:
        self.p = persistence
        self.read_only = read_only
        self.page_size = page_size
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
        context.update(
            read_only=self.read_only,
            csrf_field=FIELD,
            csrf_token=self.guard.token_for(cookie),
            message=request.query_params.get("msg"),
            registry=str(self.p.models_dir),
        )
        response = self.templates.TemplateResponse(request, template, context, status_code=status)
        if COOKIE not in request.cookies:
            response.set_cookie(COOKIE, cookie, httponly=True, samesite="strict")
        return response

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await run_in_threadpool(fn, *args, **kwargs)

    async def form(self, request: Request) -> dict[str, str]:
        """The POSTed form, after the read-only and CSRF checks."""
        if self.read_only:
            raise HTTPException(403, "this UI is read-only (started with --read-only)")
        data = await request.form()
        fields = {k: str(v) for k, v in data.items()}
        why = self.guard.check(
            request.cookies.get(COOKIE), fields.get(FIELD), request.headers.get("origin"), request.headers.get("host")
        )
        if why:
            raise HTTPException(403, why)
        return fields

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
        summaries = await self.call(self.p.model_summaries)
        aliases = {s.name: await self.call(self.p.get_aliases, s.name) for s in summaries}
        return self.render(request, "models.html", summaries=summaries, aliases=aliases, query="")

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
            description=await self.call(self.p.get_description, name),
        )

    async def chart(self, request: Request) -> Response:
        name = request.path_params["name"]
        metric = request.query_params.get("metric", "")
        page = await self.call(self.p.search_versions, None, model_name=name, order_by=["-version"], limit=CHART_POINTS)
        records = list(reversed(page.items))
        aliases = await self.call(self.p.get_aliases, name)
        return JSONResponse(chart_series(records, metric, aliases))

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

    # -- actions --------------------------------------------------------------
    async def set_alias(self, request: Request) -> Response:
        name = request.path_params["name"]
        form = await self.form(request)
        alias, version = form.get("alias", "").strip(), form.get("version", "").strip()
        expected = form.get("expected", "").strip() or None
        await self.call(self.p.set_alias, name, alias, version, expected=expected)
        return self.back(form.get("next") or f"/models/{quote(name)}", f"{alias} -> {version}")

    async def delete_alias(self, request: Request) -> Response:
        name = request.path_params["name"]
        form = await self.form(request)
        alias = form.get("alias", "")
        await self.call(self.p.delete_alias, name, alias)
        return self.back(form.get("next") or f"/models/{quote(name)}", f"alias {alias} removed")

    async def set_tag(self, request: Request) -> Response:
        name = request.path_params["name"]
        form = await self.form(request)
        key, value = form.get("key", "").strip(), form.get("value", "")
        version = form.get("version") or None
        if form.get("remove"):
            await self.call(self.p.delete_tag, name, key, version=version)
            msg = f"tag {key} removed"
        else:
            await self.call(self.p.set_tag, name, key, value, version=version)
            msg = f"tag {key} = {value}"
        return self.back(form.get("next") or f"/models/{quote(name)}", msg)

    async def describe(self, request: Request) -> Response:
        name = request.path_params["name"]
        form = await self.form(request)
        await self.call(self.p.set_description, name, form.get("text", ""), version=form.get("version") or None)
        return self.back(form.get("next") or f"/models/{quote(name)}", "description saved")

    async def trash(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params["version"]
        form = await self.form(request)
        try:
            await self.call(self.p.delete, name, version, force=bool(form.get("force")))
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
        await self.call(self.p.restore, name, version)
        return self.back(f"/models/{quote(name)}/versions/{quote(version)}", f"version {version} restored")

    # -- errors ---------------------------------------------------------------
    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return self.render(request, "error.html", status=exc.status_code, code=exc.status_code, detail=exc.detail)

    async def library_error(self, request: Request, exc: Exception) -> Response:
        code = 404 if isinstance(exc, KeyError) else 409 if _is_conflict(exc) else 400
        detail = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        return self.render(request, "error.html", status=code, code=code, detail=str(detail))


def _is_conflict(exc: Exception) -> bool:
    return "conflict" in type(exc).__name__.lower() or isinstance(exc, FileExistsError)


def _registry_url(p: ModelPersistence) -> str | None:
    url = p.index.safe_url
    return None if url.startswith("sqlite") else url


def _timed(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Adds a ``Server-Timing`` header: how long the server spent on the request."""

    async def wrapper(request: Request) -> Response:
        started = time.perf_counter()
        response = await handler(request)
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
        return response

    return wrapper


def create_app(persistence: ModelPersistence, *, read_only: bool = False, page_size: int = PAGE_SIZE) -> Starlette:
    """The UI for ``persistence``'s registry as an ASGI app (serve it with uvicorn)."""
    pages = _Pages(persistence, read_only=read_only, page_size=page_size)
    get, post = ["GET"], ["POST"]
    routes = [
        Route("/", _timed(pages.models), methods=get),
        Route("/history", _timed(pages.history), methods=get),
        Route("/models/{name}", _timed(pages.model), methods=get),
        Route("/models/{name}/compare", _timed(pages.compare), methods=get),
        Route("/models/{name}/versions/{version}", _timed(pages.version), methods=get),
        Route("/api/models/{name}/chart", _timed(pages.chart), methods=get),
        Route("/models/{name}/aliases", pages.set_alias, methods=post),
        Route("/models/{name}/aliases/delete", pages.delete_alias, methods=post),
        Route("/models/{name}/tags", pages.set_tag, methods=post),
        Route("/models/{name}/description", pages.describe, methods=post),
        Route("/models/{name}/versions/{version}/delete", pages.trash, methods=post),
        Route("/models/{name}/versions/{version}/restore", pages.restore, methods=post),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: pages.http_error, ModelKeepError: pages.library_error},
    )
