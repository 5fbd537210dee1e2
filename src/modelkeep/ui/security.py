"""Cross-site request forgery protection for the UI's state-changing requests.

Double-submit with a keyed token: each browser gets a random ``mk_csrf`` cookie
(``SameSite=Strict``, ``HttpOnly``), and every form carries
``HMAC(server_secret, cookie)``. A POST is accepted only when the form's token
matches the cookie it came with, and when its ``Origin`` (if sent) is this
server. Another site can make a browser send the cookie, but it can neither
read it nor compute the token, so a forged POST is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

COOKIE = "mk_csrf"
FIELD = "csrf_token"


class CsrfGuard:
    """Issues and checks the tokens of one running server (the secret lives in memory only)."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    @staticmethod
    def new_cookie() -> str:
        return secrets.token_urlsafe(32)

    def token_for(self, cookie: str) -> str:
        """The form token that goes with ``cookie``."""
        return hmac.new(self._secret, cookie.encode(), hashlib.sha256).hexdigest()

    def check(self, cookie: str | None, token: str | None, origin: str | None, host: str | None) -> str | None:
        """``None`` when the request may change state, otherwise why it may not."""
        if origin and origin != "null" and host and urlsplit(origin).netloc != host:
            return f"cross-site request from {origin} refused"
        if not cookie or not token:
            return "missing CSRF token: reload the page and try again"
        if not hmac.compare_digest(self.token_for(cookie), token):
            return "invalid CSRF token: reload the page and try again"
        return None
