"""The API's small requests over kept ``http.client`` connections, without ``httpx``'s per-request cost.

Every JSON call of :class:`~modelkeep.api.client.HttpRegistry`, and its one-request saves and
loads, sends one bounded body and reads one whole answer. Through ``httpx`` such a request costs
about 0.6 ms of Python more than the same exchange through the standard library's
``http.client`` (``httpx``'s client layer and httpcore's pool, measured against a Starlette
server on loopback: ~0.9 ms against ~0.3 ms), which is a good part of what a small operation
through a server adds to the same operation done directly (`bench/http_registry.py`).

:class:`QuickHttp` sends those requests with ``http.client`` on kept-alive connections and
answers an ``httpx.Response``, so that the rest of the client (decoding, errors) reads it as
before. A failure raises the ``httpx`` exception that the same failure raises through ``httpx``
(:class:`httpx.ConnectError`, :class:`httpx.ConnectTimeout`, :class:`httpx.ReadTimeout`,
:class:`httpx.RemoteProtocolError`...), and the client's handling of those is unchanged. What
``httpx``'s transport does for these requests is done here too:

- the same TLS context (``httpx.create_ssl_context()``: certifi's roots, or ``SSL_CERT_FILE`` /
  ``SSL_CERT_DIR``), with the host name checked;
- no redirect is followed, and no proxy is used (the client's transport never used the
  environment's proxies either);
- an idle connection is let go after :data:`~modelkeep.api.wire.KEEPALIVE_SECONDS`, and one the
  server has closed (its socket reads as ready) is not reused;
- a request in :data:`~modelkeep.api.wire.RESENDABLE` is sent once more on a new connection when
  a kept-alive connection was dropped without an answer; a write is never sent twice;
- the connect timeout applies to connecting, the read timeout to every send and read.

Streamed transfers (large uploads and downloads, bundles) still go through ``httpx``.
"""

from __future__ import annotations

import http.client
import json as _json
import os
import select
import ssl
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from .wire import KEEPALIVE_SECONDS, RESENDABLE

__all__ = ["QuickHttp"]

#: Headers the client's ``httpx.Client`` adds by default and these requests leave out or replace.
_DROPPED = frozenset({"accept-encoding", "connection", "host", "content-length", "content-type", "transfer-encoding"})


class QuickHttp:
    """Small requests to the server at ``base_url`` (its API prefix included), beside the
    ``httpx.Client`` ``beside`` that streams: they are sent with its headers as they are at the
    time (a sign-in changes them there), its timeouts, and its event hooks called as it calls
    them (with the request before it is sent, and the whole response)."""

    def __init__(self, base_url: str, beside: httpx.Client) -> None:
        timeout = beside.timeout
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._origin = self.base_url[: len(self.base_url) - len(self._prefix)]
        self._beside = beside
        self._connect_timeout = timeout.connect
        self._read_timeout = timeout.read
        self._ssl: ssl.SSLContext | None = _ssl_context() if self._https else None
        self._idle: list[tuple[float, http.client.HTTPConnection]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()

    # -- connections ------------------------------------------------------------------------
    def _connect(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._connect_timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._connect_timeout)
        try:
            conn.connect()
        except TimeoutError as exc:
            conn.close()
            raise httpx.ConnectTimeout(str(exc) or "timed out connecting") from exc
        except (OSError, http.client.HTTPException) as exc:  # refused, unreachable, a TLS failure
            conn.close()
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        assert conn.sock is not None
        conn.sock.settimeout(self._read_timeout)
        return conn

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        """A live idle connection (``True``: it was kept) or a new one (``False``)."""
        now = time.monotonic()
        if self._pid != os.getpid():  # a forked child: its parent's connections are not its own
            self._forget_parents()
        while True:
            with self._lock:
                if self._closed:
                    raise httpx.ConnectError("the client was closed")
                if not self._idle:
                    break
                since, conn = self._idle.pop()
            if now - since < KEEPALIVE_SECONDS and not _readable(conn):
                return conn, True
            conn.close()  # let go, or closed by the server (a readable idle socket has hit EOF)
        return self._connect(), False

    def _forget_parents(self) -> None:
        """In a child forked with kept connections: leave them to the parent (a request sent on one
        would mix its answer with the parent's) and keep connections anew. Closing the child's
        copies of their sockets sends nothing: the parent's stay open."""
        self._lock = threading.Lock()  # the parent's may have been held by another thread at the fork
        parents, self._idle = self._idle, []
        self._pid = os.getpid()
        for _, conn in parents:
            conn.close()

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append((time.monotonic(), conn))
                return
        conn.close()

    def close(self) -> None:
        """Close every kept connection; later requests raise :class:`httpx.ConnectError`."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for _, conn in idle:
            conn.close()

    # -- requests ---------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send ``method path`` (``path`` percent-encoded, after the API prefix) and read the
        whole answer; the arguments mean what they mean to ``httpx.Client.request``."""
        target = self._prefix + path
        if params:
            query = str(httpx.QueryParams(params))
            if query:
                target += "?" + query
        sent = {k: v for k, v in self._beside.headers.items() if k.lower() not in _DROPPED}
        sent["Accept-Encoding"] = "identity"
        if json is not None:
            content = _json.dumps(json, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
            sent["Content-Type"] = "application/json"
        if content is not None:
            if not isinstance(content, bytes):
                raise TypeError(f"a quick request's body is bytes, not {type(content).__name__}")
            sent["Content-Length"] = str(len(content))
        elif method not in ("GET", "HEAD", "OPTIONS"):
            sent["Content-Length"] = "0"
        if headers:
            sent.update(headers)
        request = httpx.Request(method, self._origin + target, headers=sent)
        hooks = self._beside.event_hooks
        for hook in hooks["request"]:
            hook(request)
        resent = False
        while True:
            conn, kept = self._take()
            try:
                conn.request(method, target, body=content, headers=sent)
                answer = conn.getresponse()
                data = answer.read()
            except TimeoutError as exc:
                conn.close()
                raise httpx.ReadTimeout(str(exc) or "timed out", request=request) from exc
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if kept and not resent and method in RESENDABLE:  # dropped as it was reused: once more
                    resent = True
                    continue
                raise httpx.RemoteProtocolError(
                    f"the server closed the connection without an answer ({exc})", request=request
                ) from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
            except BaseException:
                conn.close()
                raise
            if answer.will_close:
                conn.close()
            else:
                self._give_back(conn)
            response = httpx.Response(answer.status, headers=answer.getheaders(), content=data, request=request)
            for hook in hooks["response"]:
                hook(response)
            return response


def _readable(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle connection's socket has something to read: for a kept-alive connection
    that means the server closed it (or broke the protocol), so it must not be reused."""
    sock = conn.sock
    if sock is None:
        return True
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    poller = select.poll()  # not select(): a process may hold more than 1,024 files
    try:
        poller.register(sock, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def _ssl_context() -> ssl.SSLContext:
    """The TLS context ``httpx`` gives a client that verifies (certifi's roots, or the
    environment's ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``): public from httpx 0.28, private before."""
    make = getattr(httpx, "create_ssl_context", None)
    if make is None:  # pragma: no cover - httpx < 0.28
        from httpx import _config

        make = _config.create_ssl_context
    context: ssl.SSLContext = make()
    return context
