"""S3 on loopback for tests: a moto server, a fresh bucket per test, and a fault proxy.

Registered from ``conftest.py`` with ``pytest_plugins = ["tests.s3_server"]``.

* ``moto_endpoint`` (session): a ``ThreadedMotoServer`` on ``127.0.0.1`` and a
  free port; dummy AWS credentials are put in the environment (and any real
  AWS config is hidden) for the whole session.
* ``s3_bucket``: an empty bucket with a unique name, emptied and removed after
  the test. ``s3_bucket.url`` / ``.storage_options`` go straight into
  ``ModelPersistence(models_dir=..., storage_options=...)``.
* ``fault_proxy``: an HTTP proxy in front of moto that can answer chosen
  requests with an S3 ``5xx`` error instead of forwarding them, cut a body short,
  hold requests, count how many are in flight at once, and refuse a single
  ``CopyObject`` above a size limit (S3's is 5 GiB; tests lower it).
"""

from __future__ import annotations

import http.client
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "modelkeep-test",
    "AWS_SECRET_ACCESS_KEY": "modelkeep-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
#: Fail fast in tests: botocore retries a failed request at most once.
FAST_RETRIES = {"retries": {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 5, "read_timeout": 30}


def s3_options(endpoint_url: str, **extra: Any) -> dict[str, Any]:
    """``storage_options`` for s3fs against ``endpoint_url``."""
    return {"client_kwargs": {"endpoint_url": endpoint_url}, "config_kwargs": dict(FAST_RETRIES), **extra}


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """The URL of a moto S3 server on loopback, running for the whole session."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

    saved = {k: os.environ.get(k) for k in [*AWS_ENV, "AWS_PROFILE", "AWS_SESSION_TOKEN"]}
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.update(AWS_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class S3Bucket:
    """An empty bucket on the moto server."""

    name: str
    endpoint_url: str
    client: Any = field(repr=False)

    @property
    def storage_options(self) -> dict[str, Any]:
        return s3_options(self.endpoint_url)

    def url(self, prefix: str = "models") -> str:
        return f"s3://{self.name}/{prefix}" if prefix else f"s3://{self.name}"

    def object_keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket, straight from the server."""
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(out)

    def pending_uploads(self) -> list[str]:
        """Keys of multipart uploads started but neither completed nor aborted."""
        res = self.client.list_multipart_uploads(Bucket=self.name)
        return sorted(u["Key"] for u in res.get("Uploads", []))


def _client(endpoint_url: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")


@pytest.fixture
def s3_bucket(moto_endpoint: str) -> Iterator[S3Bucket]:
    """A fresh, empty bucket; emptied and deleted after the test (moto keeps data in memory)."""
    client = _client(moto_endpoint)
    name = f"mk-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    bucket = S3Bucket(name, moto_endpoint, client)
    yield bucket
    for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
        client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    for key in bucket.object_keys():
        client.delete_object(Bucket=name, Key=key)
    client.delete_bucket(Bucket=name)


#: ``fault(method, path_and_query) -> HTTP status to answer with, 0 to drop the connection, None to forward``
Fault = Callable[[str, str], "int | None"]


class FaultProxy:
    """A loopback HTTP proxy to moto that answers requests chosen by ``fault`` with an S3 error.

    Set :attr:`fault` at any time; :attr:`requests` records ``(method, path)``
    of everything seen and :attr:`injected` what was answered with an error.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.fault: Fault = lambda _method, _path: None
        #: ``truncate(method, path) -> bytes of the body to send before the connection drops, or None``
        self.truncate: Callable[[str, str], int | None] = lambda _method, _path: None
        #: ``delay(method, path) -> seconds to hold the request before forwarding it``
        self.delay: Callable[[str, str], float] = lambda _method, _path: 0.0
        #: ``refuse(method, path, headers, body) -> (status, S3 error code, message) or None``:
        #: answer as S3 would where moto is lenient (moto checks neither checksums nor expiry)
        self.refuse: Callable[[str, str, dict[str, str], bytes], tuple[int, str, str] | None] = (
            lambda _method, _path, _headers, _body: None
        )
        #: refuse a single ``CopyObject`` of a source larger than this, as S3 does above 5 GiB
        self.copy_limit: int | None = None
        #: requests being answered now, and the most seen at once, per ``kind(method, path)``
        self.kind: Callable[[str, str], str] = lambda method, _path: method
        self.active: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.requests: list[tuple[str, str]] = []
        #: paths of the server-side copies asked for (``CopyObject`` and ``UploadPartCopy``)
        self.copies: list[str] = []
        self.injected: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                return None

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(data)
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                kind = proxy.kind(self.command, self.path)
                with proxy._lock:
                    proxy.active[kind] = proxy.active.get(kind, 0) + 1
                    proxy.peak[kind] = max(proxy.peak.get(kind, 0), proxy.active[kind])
                try:
                    self._answer()
                finally:
                    with proxy._lock:
                        proxy.active[kind] -= 1

            def _error(self, status: int, code: str, message: str) -> None:
                payload = (
                    f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                    f"<Message>{message}</Message></Error>"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _too_big_to_copy(self) -> bool:
                source = self.headers.get("x-amz-copy-source")
                if proxy.copy_limit is None or not source or "partNumber=" in self.path:
                    return False
                up = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                try:
                    up.request("HEAD", "/" + source.lstrip("/").split("?", 1)[0])
                    size = int(up.getresponse().getheader("Content-Length") or 0)
                finally:
                    up.close()
                return size > proxy.copy_limit

            def _answer(self) -> None:
                body = self._body()
                time.sleep(proxy.delay(self.command, self.path))
                with proxy._lock:
                    proxy.requests.append((self.command, self.path))
                    if self.headers.get("x-amz-copy-source"):
                        proxy.copies.append(self.path)
                    status = proxy.fault(self.command, self.path)
                    if status is not None:
                        proxy.injected.append((self.command, self.path, status))
                refused = (
                    None if status is not None else proxy.refuse(self.command, self.path, dict(self.headers), body)
                )
                if refused is not None:
                    with proxy._lock:
                        proxy.injected.append((self.command, self.path, refused[0]))
                    self._error(*refused)
                    return
                if status is None and self._too_big_to_copy():
                    with proxy._lock:
                        proxy.injected.append((self.command, self.path, 400))
                    payload = (
                        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidRequest</Code>'
                        b"<Message>The specified copy source is larger than the maximum allowable size "
                        b"for a copy source</Message></Error>"
                    )
                    self.send_response(400)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if status == 0:  # as if the server died: no answer, the connection just closes
                    self.close_connection = True
                    return
                if status is not None:
                    payload = (
                        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
                        b"<Message>injected by the test</Message></Error>"
                    )
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                up = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
                headers["Content-Length"] = str(len(body))
                up.request(self.command, self.path, body=body, headers=headers)
                resp = up.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in {"transfer-encoding", "content-length", "connection", "server", "date"}:
                        self.send_header(k, v)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                cut = proxy.truncate(self.command, self.path) if self.command != "HEAD" else None
                if cut is not None:  # promise the whole body, send part of it, hang up
                    with proxy._lock:
                        proxy.injected.append((self.command, self.path, -cut))
                    self.wfile.write(data[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                elif self.command != "HEAD":
                    self.wfile.write(data)
                up.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def fault_proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    """A :class:`FaultProxy` in front of the session's moto server."""
    proxy = FaultProxy(moto_endpoint).start()
    yield proxy
    proxy.stop()
