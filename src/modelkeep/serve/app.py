"""The prediction server as a Starlette ASGI app (:func:`create_app`)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..lifecycle import split_reference
from ..ui.auth import LOOPBACK_HOSTS, HostGate
from ..versions import parse_version
from .batching import Batcher
from .bodies import BadInput, jsonable, parse
from .bodies import check as check_body
from .live import Behind, LiveModel, Loaded
from .metrics import CONTENT_TYPE, Metrics

if TYPE_CHECKING:
    from ..registry import ModelPersistence

logger = logging.getLogger("modelkeep.serve")

#: Largest request body accepted by default (bytes).
MAX_BODY = 16 * 1024 * 1024


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenCheck:
    """Bearer tokens: those of a token file, and the registry users' API tokens."""

    def __init__(self, persistence: ModelPersistence, tokens: Iterable[str], *, users: bool) -> None:
        self.p = persistence
        self.digests = [_digest(t) for t in tokens]
        self.users = users

    def why_not(self, header: str | None) -> str | None:
        """``None`` when ``header`` carries an accepted token, else why it does not."""
        if header is None:
            return "this server needs 'Authorization: Bearer <token>'"
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return "only 'Authorization: Bearer <token>' is understood"
        got = _digest(token)
        if any(hmac.compare_digest(got, d) for d in self.digests):
            return None
        if self.users:
            from ..errors import AuthenticationError

            try:
                self.p.users.check_token(token)
                return None
            except AuthenticationError:
                pass
        return "unknown or revoked token"


class _Server:
    def __init__(
        self,
        live: LiveModel,
        metrics: Metrics,
        *,
        poll: float,
        max_body: int,
        methods: tuple[str, ...],
        tokens: TokenCheck | None,
        batcher: Batcher | None,
    ) -> None:
        self.live = live
        self.metrics = metrics
        self.poll = poll
        self.max_body = max_body
        self.methods = methods
        self.tokens = tokens
        self.batcher = batcher
        self._started = False
        self._start_lock = threading.Lock()

    def claim_start(self) -> bool:
        """True for the one caller that should load the first version."""
        with self._start_lock:
            first, self._started = not self._started, True
            return first

    async def start_now(self) -> None:
        """Load the first version before accepting requests (the app's lifespan: with pre-forked
        workers, a worker takes connections only once it can answer them), then follow the alias."""
        if self.claim_start():
            await run_in_threadpool(self.live.start)
            self.live.follow(self.poll)

    def ensure_started(self) -> None:
        """Where no lifespan ran (an app mounted in another): load on a background thread, then follow."""
        if not self.claim_start():
            return

        def first() -> None:
            self.live.start()
            self.live.follow(self.poll)

        threading.Thread(target=first, name="modelkeep-serve-start", daemon=True).start()

    # -- plumbing -----------------------------------------------------------------
    def endpoint(
        self, name: str, fn: Callable[[Request], Awaitable[Response]], *, open_: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            self.ensure_started()
            started = time.perf_counter()
            if not open_ and self.tokens is not None:
                why = await run_in_threadpool(self.tokens.why_not, request.headers.get("authorization"))
                response: Response = (
                    JSONResponse({"error": why}, 401, headers={"WWW-Authenticate": "Bearer"}) if why else None  # type: ignore[assignment]
                )
            else:
                response = None  # type: ignore[assignment]
            if response is None:
                try:
                    response = await fn(request)
                except BadInput as exc:
                    response = JSONResponse(exc.detail, exc.status)
            status = str(response.status_code)
            self.metrics.requests.labels(name, status).inc()
            if response.status_code >= 400:
                self.metrics.errors.labels(name, status).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - started)
            return response

        return handler

    async def body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        too_big = f"the body is larger than this server's limit of {self.max_body} bytes (--max-body)"
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise BadInput(400, too_big, max_body=self.max_body)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise BadInput(400, too_big, max_body=self.max_body)
            chunks.append(chunk)
        return b"".join(chunks)

    # -- endpoints ----------------------------------------------------------------
    async def invocations(self, request: Request) -> Response:
        return await self._predict(request, "predict")

    async def predict(self, request: Request) -> Response:
        method = request.query_params.get("method", "predict")
        if method not in self.methods:
            raise BadInput(
                400,
                f"method {method!r} is not allowed on this server; allowed: {', '.join(self.methods)} "
                f"(start it with --method {method} to allow it)",
            )
        return await self._predict(request, method)

    async def _predict(self, request: Request, method: str) -> Response:
        loaded = self.live.current
        if loaded is None:
            return JSONResponse({"error": "no model is loaded yet", "detail": self.live.error}, 503)
        fn = getattr(loaded.model, method, None)
        if not callable(fn) or method.startswith("_"):
            raise BadInput(400, f"the model ({type(loaded.model).__name__}) has no method {method!r}")
        raw = await self.body(request)
        content_type = request.headers.get("content-type", "application/json")
        signature = loaded.record.input_signature

        def prepare() -> Any:
            return check_body(parse(raw, content_type, signature), signature)

        def run(X: Any) -> Any:
            return fn(X)

        try:
            if self.batcher is not None:
                X = await run_in_threadpool(prepare)
                key = (id(loaded), method, tuple(X.columns) if hasattr(X, "columns") else getattr(X, "shape", ())[1:])
                out = await self.batcher.submit(key, run, X)
            else:

                def both() -> tuple[Any, Any]:
                    X = prepare()
                    return X, run(X)

                X, out = await run_in_threadpool(both)
            predictions = jsonable(out)
        except BadInput:
            raise
        except Exception as exc:
            logger.exception("%s of version %s failed", method, loaded.record.version)
            return JSONResponse(
                {"error": f"the model raised {type(exc).__name__}: {exc}", "version": loaded.record.version}, 500
            )
        self.metrics.rows.inc(len(X))
        return JSONResponse({"predictions": predictions}, headers={"X-Model-Version": loaded.record.version})

    async def health(self, request: Request) -> Response:
        loaded, behind = self.live.current, self.live.behind
        if loaded is None:
            return JSONResponse(
                {"status": "loading" if self.live.error is None else "failed", "error": self.live.error}, 503
            )
        out: dict[str, Any] = {"status": "behind" if behind else "ok", "version": loaded.record.version}
        if behind:
            out["behind"] = {"version": behind.version, "since": _iso(behind.since)}
            # /health needs no token; why a version failed (paths, signers) is for those who have one.
            shown = self.tokens is None or not await run_in_threadpool(
                self.tokens.why_not, request.headers.get("authorization")
            )
            if shown:
                out["behind"]["reason"] = behind.reason
        return JSONResponse(out)

    async def model(self, request: Request) -> Response:
        loaded, behind = self.live.current, self.live.behind
        if loaded is None:
            return JSONResponse({"error": "no model is loaded yet", "detail": self.live.error}, 503)
        record, verdict = loaded.record, loaded.verdict
        return JSONResponse(
            {
                "name": record.model_name,
                "version": record.version,
                "alias": self.live.alias,
                "sha256": record.artifact.sha256 if record.artifact else None,
                "format": record.artifact.format if record.artifact else None,
                "signature": {"status": verdict.status, "signer": verdict.signer, "reason": verdict.reason},
                "loaded_since": _iso(loaded.since),
                "reloads": self.live.reloads,
                "last_reload": _iso(self.live.last_reload),
                "behind": None if behind is None else {"version": behind.version, "reason": behind.reason},
                "methods": list(self.methods),
                "input_signature": record.input_signature,
            }
        )

    async def metrics_page(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)


def create_app(
    persistence: ModelPersistence,
    reference: str,
    *,
    poll: float = 5.0,
    max_body: int = MAX_BODY,
    require_signatures: bool = False,
    methods: Iterable[str] = ("predict",),
    token_file_tokens: Iterable[str] = (),
    require_tokens: bool = False,
    user_tokens: bool = True,
    allowed_hosts: Iterable[str] = (),
    batch_max_rows: int | None = None,
    batch_wait_ms: float = 2.0,
    mmap: bool = True,
    metrics_dir: str | None = None,
) -> Starlette:
    """A prediction server for ``reference`` (``"churn@production"``, ``"churn@3"``, ``"churn"``) as an ASGI app.

    ``@alias`` is followed: polled every ``poll`` seconds and swapped when it moves (see
    :mod:`modelkeep.serve.live`); a version number, or none (latest at start), is pinned.
    ``require_tokens`` asks every request but ``/health`` for a bearer token from
    ``token_file_tokens`` or (with ``user_tokens``) a registry user's API token. Requests
    whose ``Host`` is not a loopback name or one of ``allowed_hosts`` get a 400.
    ``batch_max_rows`` turns on batching (requests merged for up to ``batch_wait_ms``).
    ``metrics_dir`` is the folder the workers of one server share their metrics in
    (prometheus_client's multiprocess mode; ``PROMETHEUS_MULTIPROC_DIR`` must name it before
    ``prometheus_client`` is imported), so ``/metrics`` reports them all.
    """
    name, version, alias = parse_reference(reference)
    metrics = Metrics(metrics_dir)

    def swapped(new: Loaded, old: Loaded | None) -> None:
        metrics.serving(new.record.model_name, new.record.version, old.record.version if old else None)
        metrics.behind.set(0)
        if old is not None:
            metrics.reloads.set(live.reloads)
            metrics.last_reload.set(new.since)

    def failed(behind: Behind) -> None:
        metrics.behind.set(1)
        metrics.reload_failures.inc()

    live = LiveModel(
        persistence,
        name,
        version=version,
        alias=alias,
        require_signatures=require_signatures,
        mmap=mmap,
        on_swap=swapped,
        on_failure=failed,
    )
    tokens = TokenCheck(persistence, token_file_tokens, users=user_tokens) if require_tokens else None
    batcher = Batcher(batch_max_rows, batch_wait_ms / 1000) if batch_max_rows else None
    server = _Server(
        live, metrics, poll=poll, max_body=max_body, methods=tuple(methods), tokens=tokens, batcher=batcher
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await server.start_now()
        yield
        live.stop()
        metrics.close()

    ep = server.endpoint
    routes = [
        Route("/invocations", ep("invocations", server.invocations), methods=["POST"]),
        Route("/predict", ep("predict", server.predict), methods=["POST"]),
        Route("/health", ep("health", server.health, open_=True), methods=["GET"]),
        Route("/ping", ep("health", server.health, open_=True), methods=["GET"]),
        Route("/model", ep("model", server.model), methods=["GET"]),
        Route("/metrics", ep("metrics", server.metrics_page), methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(HostGate, allowed=(*LOOPBACK_HOSTS, *allowed_hosts), what="modelkeep server")
    app.state.live = live
    app.state.metrics = metrics
    return app


def parse_reference(reference: str) -> tuple[str, str | None, str | None]:
    """``churn@production`` -> an alias to follow; ``churn@3`` / ``churn@v2`` -> a pinned version
    (aliases never look like versions)."""
    name, _, tail = reference.partition("@")
    if not tail:
        return split_reference(name, None, None)
    if tail == "latest" or parse_version(tail) is not None:
        return split_reference(name, None if tail == "latest" else tail, None)
    return split_reference(name, None, tail)
