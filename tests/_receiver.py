"""A real webhook receiver on loopback for the webhook tests: ``http.server`` in a thread that
records every POST (headers, raw body), and can be taken down and brought back on its port."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    """One POST as it arrived."""

    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))

    def signed_by(self, secret: bytes) -> bool:
        """Whether the signature header is the HMAC-SHA256 of the raw body under ``secret``
        (computed here, independently of modelkeep's own code)."""
        expected = "sha256=" + hmac.new(secret, self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.headers.get("X-Modelkeep-Signature-256", ""))


class Receiver:
    """Records POSTs; ``answer(received) -> status`` decides each reply (200 by default)."""

    def __init__(self, answer: Callable[[Received], int] | None = None) -> None:
        self.received: list[Received] = []
        self.answer = answer or (lambda _r: 200)
        self.lock = threading.Lock()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        """Listen (again) on the same port."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                got = Received({k: v for k, v in self.headers.items()}, body)
                with receiver.lock:
                    receiver.received.append(got)
                status = receiver.answer(got)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender is gone (killed mid-delivery)

            def log_message(self, *_args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop listening: connections are refused until :meth:`start`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r.event for r in self.received]

    def unique(self) -> list[dict[str, Any]]:
        """Received events de-duplicated by delivery id (first arrival kept), in arrival order."""
        seen: set[str] = set()
        out = []
        with self.lock:
            items = list(self.received)
        for r in items:
            delivery = r.headers["X-Modelkeep-Delivery"]
            if delivery not in seen:
                seen.add(delivery)
                out.append(r.event)
        return out


def wait_for(check: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``check`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
