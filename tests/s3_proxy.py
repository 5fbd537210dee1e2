"""A loopback HTTP proxy in front of an S3 server (moto), for tests and benchmarks (no pytest).

:class:`FaultProxy` forwards requests and can answer chosen ones with an S3 ``5xx`` error, cut a
body short, hold requests, count how many are in flight at once, refuse a single ``CopyObject``
above a size limit, and (``refuse``) answer as S3 does where moto is lenient. :func:`s3_rules` is
that last part: S3's refusal of an expired presigned URL and of a body that does not hash to its
signed ``x-amz-checksum-sha256``, which moto takes.

``python -m tests.s3_proxy UPSTREAM [--enforce]`` runs one in its own process (benchmarks: the
proxy's hashing then does not share the measured process's interpreter lock) and prints its
endpoint URL on the first line of stdout; it serves until killed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

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
            # Headers and body go out in two writes: with Nagle's algorithm the body waits for the
            # client's delayed ACK of the headers (~40 ms per answer on Linux), which S3 does not add.
            disable_nagle_algorithm = True

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


def checksum_header(body: bytes) -> str:
    """The ``x-amz-checksum-sha256`` header value of ``body`` (base64 of its SHA-256)."""
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def s3_rules(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, str] | None:
    """S3's answers to a presigned request that moto lets through: an expired URL, and a body
    that does not hash to its signed ``x-amz-checksum-sha256`` (or a changed header)."""
    query = parse_qs(urlsplit(path).query)
    if "X-Amz-Date" not in query:
        return None
    signed = time.mktime(time.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")) - time.timezone
    if time.time() > signed + int(query["X-Amz-Expires"][0]):
        return 403, "AccessDenied", "Request has expired"
    header = {k.lower(): v for k, v in headers.items()}.get("x-amz-checksum-sha256")
    if "x-amz-checksum-sha256" in query["X-Amz-SignedHeaders"][0].split(";"):
        if header is None:
            return 403, "SignatureDoesNotMatch", "The request signature we calculated does not match"
        if header != checksum_header(body):
            return 400, "BadDigest", "The SHA256 you specified did not match the calculated checksum."
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A FaultProxy in front of an S3 server, until killed.")
    parser.add_argument("upstream", help="the S3 endpoint to forward to, e.g. http://127.0.0.1:5000")
    parser.add_argument("--enforce", action="store_true", help="refuse as S3 does (s3_rules)")
    args = parser.parse_args(argv)
    proxy = FaultProxy(args.upstream)
    if args.enforce:
        proxy.refuse = s3_rules
    proxy.start()
    print(proxy.endpoint_url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
