"""A real ``modelkeep server`` for tests, and the "direct" vs "http" registry parameter.

* :func:`running_server` starts ``python -m modelkeep --config CFG server`` in a subprocess (a real
  process, so a test can kill it mid-request) on a loopback port, over a registry described by
  :class:`ServerSide` (SQLite + local folder, or PostgreSQL + S3). Before it starts, an ``admin``
  user and a token are made directly in the registry. It yields a :class:`HttpServer`: the URL,
  the admin token, the server-side settings (``server.direct()`` opens the same registry without
  HTTP) and helpers for more users and clients. ``in_process=True`` runs uvicorn in a thread
  instead (much faster to start; for suites that never kill the server).
* Fixtures: ``http_server`` (SQLite + folder, subprocess), ``http_server_pg_s3`` (PostgreSQL +
  moto S3, subprocess), and ``registry_kind`` / ``any_registry``: a registry used directly or
  through an in-process server, so a suite can run against both by asking for ``any_registry``.

Registered in ``conftest.py`` (``pytest_plugins``), so every test module can ask for these fixtures.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from modelkeep import ModelPersistence

#: The user every test server is started with, and the role the token carries.
ADMIN = "admin"
#: Seconds a server may take to answer its first request.
START_TIMEOUT = 60.0
#: Variables of the test process that would make the server a client of itself.
CLIENT_VARIABLES = ("MODELKEEP_REGISTRY_URL", "MODELKEEP_TOKEN", "MODELKEEP_MODELS_DIR")


@dataclass
class ServerSide:
    """What the server opens: a registry on ``models_dir``, with these index and store options."""

    models_dir: str
    registry_url: str | None = None
    index_schema: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        """Keyword arguments for a direct :class:`ModelPersistence` on this registry."""
        out: dict[str, Any] = {"models_dir": self.models_dir}
        if self.registry_url:
            out["registry_url"] = self.registry_url
        if self.index_schema:
            out["index_schema"] = self.index_schema
        if self.storage_options:
            out["storage_options"] = self.storage_options
        return out

    def config(self) -> dict[str, Any]:
        """The server's config file (the schema goes in the PostgreSQL URL: the CLI has no option for it)."""
        persistence: dict[str, Any] = {"models_dir": self.models_dir}
        if self.registry_url:
            url = self.registry_url
            if self.index_schema:
                url += ("&" if "?" in url else "?") + f"options=-csearch_path%3D{self.index_schema}"
            persistence["registry_url"] = url
        if self.storage_options:
            persistence["storage_options"] = self.storage_options
        return {"persistence": persistence}


def stop_process(process: subprocess.Popen[Any]) -> None:
    """Stop ``process`` if it still runs: SIGTERM, then SIGKILL after 15 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@dataclass
class HttpServer:
    """A running server: ``url``, the admin's ``token``, and the registry behind it (``side``)."""

    url: str
    token: str
    side: ServerSide
    process: subprocess.Popen[bytes] | None = None
    _stop: Any = None
    #: In-process servers: the very registry object the server calls (its engine, its store).
    served: ModelPersistence | None = None

    def direct(self, **kwargs: Any) -> ModelPersistence:
        """The server's registry opened without HTTP (as the server opens it)."""
        return ModelPersistence(**{**self.side.options(), **kwargs})

    def client(self, token: str | None = None, **kwargs: Any) -> Any:
        """An :class:`~modelkeep.api.client.HttpRegistry` for this server (the admin's token by default)."""
        from modelkeep.api.client import HttpRegistry

        return HttpRegistry(self.url, token=self.token if token is None else token, **kwargs)

    def add_user(self, name: str, role: str) -> str:
        """A new user ``name`` with ``role``, and a token for them."""
        with self.direct() as p:
            p.users.add(name, None, role)
            return p.users.new_token(name, "tests")

    def kill(self) -> None:
        """Kill the server process at once (SIGKILL): what a crash looks like to clients."""
        if self.process is None:
            raise RuntimeError("an in-process server cannot be killed; start it with in_process=False")
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """Stop the server gracefully (idempotent)."""
        if self._stop is not None:
            self._stop()
            self._stop = None


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen[bytes] | None, log: Path | None) -> None:
    import httpx

    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            text = log.read_text(errors="replace") if log is not None else ""
            raise RuntimeError(f"modelkeep server exited with {process.returncode}:\n{text}")
        try:
            if httpx.get(url + "/api/v1/openapi.json", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"modelkeep server at {url} did not answer within {START_TIMEOUT} s")


def prepare(side: ServerSide) -> str:
    """Create the registry if needed, with an ``admin`` user; return the admin's new token."""
    with ModelPersistence(**side.options()) as p:
        p.ensure_registry()
        if p.users.get(ADMIN) is None:
            p.users.add(ADMIN, None, "admin")
        return p.users.new_token(ADMIN, "tests")


@contextlib.contextmanager
def running_server(
    side: ServerSide,
    workdir: Path,
    *,
    in_process: bool = False,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Iterator[HttpServer]:
    """A ``modelkeep server`` on ``side``'s registry, stopped on exit (see the module docstring).

    ``args`` are extra ``modelkeep server`` options; ``env`` extra variables of the server process.
    """
    token = prepare(side)
    if in_process:
        with _in_process(side, token) as server:
            yield server
        return
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "server.json"  # JSON is YAML
    config.write_text(json.dumps(side.config()))
    child_env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARIABLES}
    child_env.update(env or {})
    for attempt in range(3):
        port = free_port()
        log = workdir / f"server-{port}.log"
        cmd = [sys.executable, "-m", "modelkeep", "--config", str(config), "server", "--port", str(port), *args]
        with log.open("wb") as out:
            process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env, cwd=workdir)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, process, log)
        except RuntimeError:
            process.kill()
            process.wait(timeout=30)
            if attempt == 2 or "address already in use" not in log.read_text(errors="replace").lower():
                raise
            continue

        def stop(process: subprocess.Popen[bytes] = process) -> None:
            stop_process(process)

        server = HttpServer(url, token, side, process, stop)
        try:
            yield server
        finally:
            server.stop()
        return


@contextlib.contextmanager
def _in_process(side: ServerSide, token: str) -> Iterator[HttpServer]:
    import uvicorn

    from modelkeep.ui.app import create_app

    persistence = ModelPersistence(**side.options())
    app = create_app(persistence, anonymous=False)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the in-process modelkeep server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=30)
        persistence.close()

    running = HttpServer(f"http://127.0.0.1:{port}", token, side, None, stop, persistence)
    try:
        yield running
    finally:
        running.stop()


@dataclass(frozen=True)
class StoredObject:
    """An object in a remote store (the ``http-pg-s3`` server's bucket), standing where the
    suites expect the :class:`~pathlib.Path` a local registry's ``save()`` returns: it answers
    ``exists()`` / ``read_bytes()`` from the bucket itself."""

    store: Any = field(repr=False)
    key: str

    def exists(self) -> bool:
        """The object is in the bucket, or (for a folder, such as ``.parent``) something under it is."""
        return bool(self.store.exists(self.key)) or self.is_dir()

    def is_file(self) -> bool:
        return bool(self.store.exists(self.key))

    def is_dir(self) -> bool:
        return any(key != self.key for key in self.store.list_keys(self.key))

    @property
    def parent(self) -> StoredObject:
        return StoredObject(self.store, self.key.rsplit("/", 1)[0] if "/" in self.key else "")

    def read_bytes(self) -> bytes:
        return bytes(self.store.read_bytes(self.key))

    def write_bytes(self, data: bytes) -> None:
        """Replace the object in the bucket (what a test that damages an artifact does)."""
        self.store.write_bytes(self.key, data)

    def unlink(self) -> None:
        self.store.delete(self.key)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return str(self.store.location(self.key))


class OverHttp:
    """A registry used through a server, as a suite written for ``ModelPersistence`` uses it.

    Every attribute the HTTP client has comes from the client (so it runs over HTTP); the rest
    (``save``/``load`` until the client has them, ``store``, ...) from the server's registry
    the server itself uses (in process). ``.client`` and ``.direct`` are both reachable.
    """

    def __init__(self, server: HttpServer, client: Any, direct: ModelPersistence) -> None:
        self.server, self.client, self.direct = server, client, direct
        #: Set by :func:`over_http_pg_s3`: how the client's transfers went.
        self.counts: TransferCounts | None = None

    #: What the client refuses (it runs on the server's host): the suites use the registry itself.
    SERVER_SIDE = frozenset({"index"})

    def __getattr__(self, name: str) -> Any:
        client = self.__dict__["client"]
        if name not in self.SERVER_SIDE and (hasattr(type(client), name) or name in vars(client)):
            return getattr(client, name)
        return getattr(self.__dict__["direct"], name)

    def save(self, model: Any, model_name: str, version: str | None = None, **kwargs: Any) -> Any:
        """The client's save; what it returns is the artifact's download URL, so the suites get
        the file the server's store holds instead (this server runs on this machine)."""
        url = self.client.save(model, model_name, version, **kwargs)
        saved = url.split("/versions/")[1].split("/")[0]
        record = self.client.get_version(model_name, unquote(saved))
        location = self.direct.store.location(record.artifact.key)
        return location if isinstance(location, Path) else StoredObject(self.direct.store, record.artifact.key)

    def close(self) -> None:
        self.client.close()
        self.direct.close()

    def __enter__(self) -> OverHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OverHttp({self.server.url})"


@contextlib.contextmanager
def over_http(side: ServerSide, workdir: Path) -> Iterator[OverHttp]:
    """An in-process server on ``side``'s registry, used as :class:`OverHttp` (the admin's token)."""
    with running_server(side, workdir, in_process=True) as server:
        assert server.served is not None
        registry = OverHttp(server, server.client(), server.served)
        try:
            yield registry
        finally:
            registry.client.close()  # the served registry is closed with the server


@dataclass
class TransferCounts:
    """How a client's artifact transfers went, from the server's answers (see :func:`count_transfers`)."""

    #: ``POST /uploads/presigned`` answered with a plan: the bytes went straight to the bucket.
    presigned_uploads: int = 0
    #: ``POST /uploads`` answered: the bytes streamed through the server.
    streamed_uploads: int = 0
    #: An artifact ``GET`` answered with a redirect to a presigned URL.
    presigned_downloads: int = 0
    #: An artifact ``GET`` answered with the bytes themselves.
    streamed_downloads: int = 0


def count_transfers(client: Any) -> TransferCounts:
    """Count ``client``'s uploads and artifact downloads by how the server answered them."""
    from modelkeep.api.transfers import BUNDLE_TYPE

    counts = TransferCounts()

    def seen(response: Any) -> None:
        method, path = response.request.method, response.request.url.path
        if response.status_code >= 400:
            return
        if method == "POST" and path.endswith("/uploads/presigned"):
            counts.presigned_uploads += 1
        elif method == "POST" and path.endswith("/uploads"):
            counts.streamed_uploads += 1
        elif method == "GET" and path.endswith("/load"):  # a one-request load: bytes from the server?
            if response.headers.get("content-type", "").startswith(BUNDLE_TYPE):
                counts.streamed_downloads += 1
        elif method == "GET" and path.endswith("/artifact"):
            if response.status_code in (302, 303, 307, 308):
                counts.presigned_downloads += 1
            else:
                counts.streamed_downloads += 1

    client.event_hooks["response"].append(seen)
    return counts


#: The artifact size from which the ``http-pg-s3`` variant transfers through presigned URLs: every
#: artifact (the defaults, 8 MiB, would leave the suites' small models streaming through the server).
PRESIGNED_FROM = 1


@contextlib.contextmanager
def over_http_pg_s3(index_target: Any, request: pytest.FixtureRequest, workdir: Path) -> Iterator[OverHttp]:
    """An in-process server on ``index_target`` (PostgreSQL, its own schema) and a fresh moto S3
    bucket, with presigned uploads and downloads from :data:`PRESIGNED_FROM` bytes, used as
    :class:`OverHttp`. On exit it checks that no artifact went through the server instead of the
    bucket (``.counts`` says how they went), so the variant cannot quietly stream."""
    from modelkeep.api import client_transfers, transfers

    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setattr(client_transfers, "PRESIGNED_MIN", PRESIGNED_FROM)
    monkeypatch.setattr(transfers, "PRESIGNED_GET_MIN", PRESIGNED_FROM)
    bucket = request.getfixturevalue("s3_bucket")
    side = ServerSide(bucket.url(), index_target.url, index_target.schema, bucket.storage_options)
    with over_http(side, workdir) as registry:
        registry.counts = count_transfers(registry.client)
        yield registry
        counts = registry.counts
    assert counts.streamed_uploads == 0, f"uploads streamed through the server, not presigned: {counts}"
    assert counts.streamed_downloads == 0, f"downloads streamed through the server, not presigned: {counts}"


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[HttpServer]:
    """A ``modelkeep server`` process on a fresh SQLite + local-folder registry."""
    with running_server(ServerSide(str(tmp_path / "server-models")), tmp_path / "server") as server:
        yield server


@pytest.fixture
def http_server_pg_s3(tmp_path: Path, s3_bucket: Any) -> Iterator[HttpServer]:
    """A ``modelkeep server`` process on PostgreSQL (a private schema) + a moto S3 bucket."""
    from tests.conftest import PG_URL, postgres_schema

    with postgres_schema() as schema:
        assert PG_URL is not None
        side = ServerSide(s3_bucket.url(), PG_URL, schema, s3_bucket.storage_options)
        with running_server(side, tmp_path / "server") as server:
            yield server


@pytest.fixture(params=["direct", "http"])
def registry_kind(request: pytest.FixtureRequest) -> str:
    """``"direct"`` (a local registry) or ``"http"`` (the same kind of registry behind a server)."""
    return str(request.param)


@pytest.fixture
def any_registry(registry_kind: str, tmp_path: Path) -> Iterator[Any]:
    """A fresh SQLite + folder registry, used directly or through an in-process server (admin token)."""
    side = ServerSide(str(tmp_path / "models"))
    if registry_kind == "direct":
        p = ModelPersistence(**side.options())
        p.ensure_registry()
        yield p
        p.close()
        return
    with over_http(side, tmp_path / "server") as registry:
        yield registry
