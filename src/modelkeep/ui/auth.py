"""Who is at the other end of a UI request: the Host allow-list, sessions, tokens, SSO headers.

* :class:`HostGate` (ASGI middleware) answers 400 to a request whose ``Host`` is not
  on the allow-list (loopback names, the bound address, ``--allowed-host``). That is
  what stops DNS rebinding: a page on ``attacker.example`` that re-resolves its name
  to 127.0.0.1 still sends ``Host: attacker.example``.
* :class:`Sessions` keeps signed-in sessions in the server's memory: the browser
  holds a random 256-bit id in an ``HttpOnly``, ``SameSite=Strict`` cookie
  (``Secure`` over TLS). A session ends on sign-out, after :data:`IDLE` without a
  request, after :data:`LONGEST`, when the server restarts, and when the user's
  password changes or the user is removed. A made-up or altered cookie matches no
  session.
* :class:`SignInLimiter` refuses sign-in attempts after :data:`MAX_FAILURES` wrong
  passwords for one user name or from one address within :data:`WINDOW` seconds.
* :class:`AuthSettings` says how users are identified: ``local`` accounts (password
  sign-in, or ``Authorization: Bearer`` API tokens), a trusted SSO ``proxy`` header,
  or ``none`` (no users configured, loopback only).
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Receive, Scope, Send

#: Names a browser on this machine uses for a loopback server.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
#: Session cookie name.
SESSION_COOKIE = "mk_session"
#: A session unused this long (seconds) is signed out.
IDLE = 8 * 3600
#: No session lasts longer than this (seconds).
LONGEST = 24 * 3600
#: Wrong passwords allowed per user name, and per client address, within :data:`WINDOW`.
MAX_FAILURES = 5
WINDOW = 300.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def host_name(header: str) -> str:
    """The name part of a ``Host`` header, lower case: ``[::1]:8765`` -> ``::1``, ``a.b:80`` -> ``a.b``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostGate:
    """ASGI middleware: 400 for any request whose ``Host`` is not allowed."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str], what: str = "modelkeep UI") -> None:
        self.app = app
        self.allowed = frozenset(h.strip("[]").lower() for h in allowed)
        self.what = what

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        raw = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        if host_name(raw) in self.allowed:
            await self.app(scope, receive, send)
            return
        text = (
            f"Invalid Host header {raw!r}: this {self.what} answers only to "
            f"{', '.join(sorted(self.allowed))}. If that is the name you use, restart it with "
            f"--allowed-host {host_name(raw) or 'NAME'}."
        )
        media, body = b"text/plain; charset=utf-8", (text + "\n").encode()
        if str(scope.get("path", "")).startswith("/api/"):  # a client: the API's JSON error, with its class
            from ..api.wire import error_body
            from ..errors import ConfigError

            media, body = b"application/json", json.dumps(error_body(ConfigError(text))).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [(b"content-type", media), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


@dataclass
class AuthSettings:
    """How the UI identifies people (built by ``modelkeep ui`` from its options)."""

    #: ``local`` (accounts in the index), ``proxy`` (trusted SSO header) or ``none`` (no sign-in).
    mode: str = "local"
    #: Header an SSO proxy puts the signed-in user's name in (``proxy`` mode).
    user_header: str = "X-Forwarded-User"
    #: Addresses (or networks) of the proxies whose header is believed.
    trusted_proxies: tuple[Network, ...] = ()
    #: Role of a proxy user who has no account in the index.
    proxy_role: str = "viewer"
    #: ``Host`` names the UI answers to, besides the loopback ones.
    allowed_hosts: tuple[str, ...] = ()
    #: Mark cookies ``Secure`` even over plain HTTP (a TLS proxy is in front).
    secure_cookies: bool = False

    @staticmethod
    def networks(addresses: Iterable[str]) -> tuple[Network, ...]:
        """``["127.0.0.1", "10.0.0.0/8"]`` as networks (ValueError on a typo)."""
        return tuple(ipaddress.ip_network(a.strip(), strict=False) for a in addresses if a.strip())

    def from_trusted_proxy(self, client: str | None) -> bool:
        if not client:
            return False
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return False
        return any(address in net for net in self.trusted_proxies)


@dataclass
class Session:
    """One signed-in browser."""

    user: str
    #: The user's password hash when they signed in: a changed password ends the session.
    password_hash: str | None
    created: float
    seen: float


@dataclass
class Sessions:
    """Signed-in sessions, in this server's memory (a restart signs everyone out)."""

    _by_id: dict[str, Session] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, user: str, password_hash: str | None) -> str:
        """A new session id for ``user`` (a fresh one at every sign-in: no session fixation)."""
        sid = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._prune(now)
            self._by_id[sid] = Session(user, password_hash, now, now)
        return sid

    def get(self, sid: str | None) -> Session | None:
        """The live session of ``sid`` (and it counts as used), or ``None``."""
        if not sid:
            return None
        now = time.monotonic()
        with self._lock:
            found = self._by_id.get(sid)
            if found is None:
                return None
            if now - found.seen > IDLE or now - found.created > LONGEST:
                del self._by_id[sid]
                return None
            found.seen = now
            return found

    def end(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)

    def _prune(self, now: float) -> None:
        stale = [k for k, s in self._by_id.items() if now - s.seen > IDLE or now - s.created > LONGEST]
        for key in stale:
            del self._by_id[key]


class SignInLimiter:
    """At most :data:`MAX_FAILURES` wrong passwords per user name and per address per :data:`WINDOW`."""

    def __init__(self, max_failures: int = MAX_FAILURES, window: float = WINDOW) -> None:
        self.max_failures, self.window = max_failures, window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and now - times[0] > self.window:
            times.popleft()
        return times

    def wait(self, user: str, client: str) -> float:
        """Seconds before another attempt for ``user`` from ``client`` is allowed (0: now)."""
        now = time.monotonic()
        with self._lock:
            worst = 0.0
            for key in (f"user:{user.lower()}", f"addr:{client}"):
                times = self._recent(key, now)
                if len(times) >= self.max_failures:
                    worst = max(worst, self.window - (now - times[0]))
            return worst

    def failed(self, user: str, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._failures) > 10_000:  # many made-up names: forget the ones that expired
                for key in list(self._failures):
                    if not self._recent(key, now):
                        del self._failures[key]
            for key in (f"user:{user.lower()}", f"addr:{client}"):
                self._recent(key, now).append(now)

    def succeeded(self, user: str) -> None:
        with self._lock:
            self._failures.pop(f"user:{user.lower()}", None)
