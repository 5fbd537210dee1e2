"""The API's small requests over kept ``http.client`` connections, without ``httpx``.

Every JSON call of :class:`~modelkeep.api.client.HttpRegistry`, and its one-request saves and
loads, sends one bounded body and reads one whole answer. Through ``httpx`` such a request costs
about 0.6 ms of Python more than the same exchange through the standard library's
``http.client`` (``httpx``'s client layer and httpcore's pool, measured against a Starlette
server on loopback: ~0.9 ms against ~0.3 ms), which is a good part of what a small operation
through a server adds to the same operation done directly (`bench/http_registry.py`); and
importing ``httpx`` and building its client (httpcore, a TLS context from certifi's bundle)
costs a CLI command against a server more than the rest of its start-up.

:class:`QuickHttp` sends those requests with ``http.client`` on kept-alive connections and
answers a :class:`QuickResponse`, which reads as an ``httpx.Response`` where the client reads
one (``status_code``, ``headers``, ``content``, ``json()``, ``text``, ``request.method``,
``request.url.path``). A request that gets no answer raises a :class:`TransportError`, a
:class:`Timeout` when a timeout ran out; the client reports it as it reports ``httpx``'s. What
``httpx``'s transport does for these requests is done here too:

- the TLS context ``httpx`` builds (certifi's roots, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``),
  with the host name checked;
- no redirect is followed, and no proxy is used (the client's ``httpx`` transport never used
  the environment's proxies either);
- an idle connection is let go after :data:`KEEPALIVE_SECONDS`, and one the
  server has closed (its socket reads as ready) is not reused;
- a request in :data:`RESENDABLE` is sent once more on a new connection when
  a kept-alive connection was dropped without an answer; a write is never sent twice;
- the connect timeout applies to connecting, the read timeout to every send and read;
- the query is encoded as ``httpx.QueryParams`` encodes it, and a JSON body as ``httpx`` does.

Streamed transfers (large uploads and downloads, bundles) still go through ``httpx``, imported
only then.
"""

from __future__ import annotations

import http.client
import json as _json
import os
import select
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import urlencode, urlsplit

__all__ = [
    "KEEPALIVE_SECONDS",
    "RESENDABLE",
    "ConnectError",
    "QuickHttp",
    "QuickResponse",
    "RemoteProtocolError",
    "Timeout",
    "TransportError",
]

#: Requests a client sends once more when the server dropped a kept-alive connection without
#: answering (a server closes an idle connection whenever it likes, and a client may reuse it at
#: that moment): sending them again changes nothing.
RESENDABLE = frozenset({"GET", "HEAD", "OPTIONS"})
#: How long a client keeps an idle connection to the server: less than the server's keep-alive
#: (uvicorn's 5 s), so the client lets it go before the server closes it.
KEEPALIVE_SECONDS = 4.0
#: Headers set here per request, whatever the client's headers say.
_OWN = frozenset({"accept-encoding", "connection", "host", "content-length", "content-type", "transfer-encoding"})


class TransportError(Exception):
    """A request that got no answer: the server could not be reached, dropped the connection,
    or broke the protocol."""


class ConnectError(TransportError):
    """The server could not be reached (refused, unreachable, a failed TLS handshake)."""


class Timeout(TransportError):
    """The connect or the read timeout ran out."""


class RemoteProtocolError(TransportError):
    """The server closed the connection without an answer."""


class QuickURL(NamedTuple):
    """The parts of a request's URL its readers use (as ``httpx.URL``'s: ``query`` is bytes)."""

    path: str
    query: bytes
    full: str

    def __str__(self) -> str:
        return self.full


class QuickRequest(NamedTuple):
    """The method and URL of a sent request."""

    method: str
    url: QuickURL


class QuickResponse:
    """A whole answer: ``status_code``, ``headers`` (case-insensitive ``get`` and ``[]``),
    ``content``, ``json()``, ``text`` and the ``request`` it answers."""

    def __init__(self, status_code: int, headers: http.client.HTTPMessage, content: bytes, request: QuickRequest):
        self.status_code = status_code
        self.headers = headers
        self.content = content
        self.request = request

    def json(self) -> Any:
        return _json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def raise_for_status(self) -> QuickResponse:
        """This response; an error naming the status when it is 400 or above."""
        if self.status_code >= 400:
            raise TransportError(f"HTTP {self.status_code} for {self.request.method} {self.request.url}")
        return self


Hook = Callable[[Any], None]


def query_string(params: Any) -> str:
    """``params`` (a mapping, or pairs) as ``str(httpx.QueryParams(params))`` gives it: a list or
    tuple value repeats its key, ``True``/``False`` read ``true``/``false``, ``None`` is empty."""
    pairs = []
    for key, value in params.items() if hasattr(params, "items") else params:
        for item in value if isinstance(value, (list, tuple)) else (value,):
            text = "true" if item is True else "false" if item is False else "" if item is None else str(item)
            pairs.append((str(key), text))
    return urlencode(pairs)


class QuickHttp:
    """Small requests to the server at ``base_url`` (its API prefix included), with the headers
    ``headers`` holds at the time (the client's dict: a sign-in changes it there). ``event_hooks``
    are called as ``httpx`` calls its own: each ``"request"`` hook with the request before it is
    sent, each ``"response"`` hook with the whole response."""

    def __init__(
        self, base_url: str, headers: dict[str, str], *, connect_timeout: float | None, read_timeout: float | None
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.headers = headers
        self.event_hooks: dict[str, list[Hook]] = {"request": [], "response": []}
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._origin = self.base_url[: len(self.base_url) - len(self._prefix)]
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._ssl: ssl.SSLContext | None = None
        self._idle: list[tuple[float, http.client.HTTPConnection]] = []
        # A client dropped without close() (common in scripts) closes its kept sockets when it is
        # collected, not at the interpreter's exit with a ResourceWarning each.
        weakref.finalize(self, _close_idle, self._idle)
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()

    # -- connections ------------------------------------------------------------------------
    def _connect(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        try:
            if self._https:
                if self._ssl is None:
                    self._ssl = ssl_context()
                conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._connect_timeout, context=self._ssl
                )
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self._connect_timeout)
        except (OSError, ValueError) as exc:  # the trusted roots do not load
            raise ConnectError(str(exc) or type(exc).__name__) from exc
        try:
            conn.connect()
        except TimeoutError as exc:
            conn.close()
            raise Timeout(str(exc) or "timed out connecting") from exc
        except (OSError, http.client.HTTPException) as exc:  # refused, unreachable, a TLS failure
            conn.close()
            raise ConnectError(str(exc) or type(exc).__name__) from exc
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
                    raise ConnectError("the client was closed")
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
        self._pid = os.getpid()
        _close_idle(self._idle)

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append((time.monotonic(), conn))
                return
        conn.close()

    def close(self) -> None:
        """Close every kept connection; later requests raise :class:`ConnectError`."""
        with self._lock:
            self._closed = True
            idle = self._idle[:]
            self._idle.clear()
        _close_idle(idle)

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
    ) -> QuickResponse:
        """Send ``method path`` (``path`` percent-encoded, after the API prefix) and read the
        whole answer; the arguments mean what they mean to ``httpx.Client.request``."""
        target = self._prefix + path
        query = query_string(params) if params else ""
        if query:
            target += "?" + query
        sent = {k: v for k, v in self.headers.items() if k.lower() not in _OWN}
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
        request = QuickRequest(method, QuickURL(self._prefix + path, query.encode("ascii"), self._origin + target))
        for hook in self.event_hooks["request"]:
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
                raise Timeout(str(exc) or "timed out") from exc
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if kept and not resent and method in RESENDABLE:  # dropped as it was reused: once more
                    resent = True
                    continue
                raise RemoteProtocolError(f"the server closed the connection without an answer ({exc})") from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise TransportError(str(exc) or type(exc).__name__) from exc
            except BaseException:
                conn.close()
                raise
            if answer.will_close:
                conn.close()
            else:
                self._give_back(conn)
            response = QuickResponse(answer.status, answer.headers, data, request)
            for hook in self.event_hooks["response"]:
                hook(response)
            return response


def _close_idle(idle: list[tuple[float, http.client.HTTPConnection]]) -> None:
    """Close the connections of ``idle`` and empty it (the client's own list at collection or
    in a forked child, a copy taken under the lock at ``close()``)."""
    for _, conn in idle:
        conn.close()
    idle.clear()


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


def ssl_context() -> ssl.SSLContext:
    """The TLS context ``httpx`` builds for a client that verifies: the roots of
    ``SSL_CERT_FILE``, else of ``SSL_CERT_DIR``, else certifi's (``httpx._config.create_ssl_context``)."""
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    import certifi

    return ssl.create_default_context(cafile=certifi.where())
