"""One webhook POST: the body, its HMAC-SHA256 signature, and the request (standard library).

Headers, in the style of GitHub's webhooks:

* ``X-Modelkeep-Event``: the event name (``alias.moved``);
* ``X-Modelkeep-Delivery``: the delivery id, the same on every retry (de-duplicate on it);
* ``X-Modelkeep-Signature-256``: ``sha256=`` and the hex HMAC-SHA256 of the raw body, keyed
  with the webhook's secret (check it with :func:`verify_signature` before trusting the body).

Redirects are not followed (a 3xx is a failed attempt), and only ``http`` and ``https`` URLs
are contacted: a URL comes from the index, which may be hostile.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from .._version import __version__
from ..errors import ConfigError

SIGNATURE_HEADER = "X-Modelkeep-Signature-256"
DELIVERY_HEADER = "X-Modelkeep-Delivery"
EVENT_HEADER = "X-Modelkeep-Event"
#: A secret file must hold at least this many bytes (after stripping whitespace) ...
MIN_SECRET = 16
#: ... and at most this many: a larger file is not a secret (and is not read whole).
MAX_SECRET = 4096
#: Characters of a receiver's error text kept in the delivery log.
MAX_ERROR = 300


def check_url(url: str) -> str:
    """``url`` if it is an absolute ``http``/``https`` URL, else :class:`ConfigError`."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"webhook URL {url!r} must be an http:// or https:// URL with a host")
    return url


def read_secret(path: str) -> bytes:
    """The HMAC key in the file at ``path`` (surrounding whitespace stripped).

    Refused with :class:`ConfigError`: anything but a regular file, a file larger than
    :data:`MAX_SECRET` bytes, or a secret shorter than :data:`MIN_SECRET` bytes.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ConfigError(f"cannot read the webhook secret file {path!r}: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"the webhook secret file {path!r} is not a regular file")
        if info.st_size > MAX_SECRET:
            raise ConfigError(f"the webhook secret file {path!r} is larger than {MAX_SECRET} bytes")
        data = os.read(fd, MAX_SECRET + 1).strip()
    finally:
        os.close(fd)
    if len(data) < MIN_SECRET:
        raise ConfigError(
            f"the webhook secret in {path!r} is shorter than {MIN_SECRET} bytes "
            "(make one with: python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return data


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Modelkeep-Signature-256`` value of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the right signature of ``body`` (constant-time; for receivers)."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


def body_of(event: dict[str, Any], delivery_id: str, webhook_id: int) -> bytes:
    """The JSON body of a delivery: the event, plus its ``delivery`` id and ``webhook`` id (so
    that the signature covers the id a receiver de-duplicates on)."""
    payload = {**event, "delivery": delivery_id, "webhook": webhook_id}
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class Outcome:
    """How one POST ended: ``ok`` for a 2xx answer; ``code`` is the HTTP status, if any."""

    ok: bool
    code: int | None
    error: str | None
    duration_ms: float


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx answer becomes an HTTPError: a failed attempt


_OPENER = urllib.request.build_opener(_NoRedirects)


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> Outcome:
    """POST ``body`` to ``url`` and wait at most ``timeout`` seconds for each network step."""
    started = time.perf_counter()
    request = urllib.request.Request(check_url(url), data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("User-Agent", f"modelkeep-webhooks/{__version__}")
    for name, value in headers.items():
        request.add_header(name, value)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read(65536)
            code = int(response.status)
        error = None if 200 <= code < 300 else f"HTTP {code}"
    except urllib.error.HTTPError as exc:
        code, error = int(exc.code), f"HTTP {exc.code} {exc.reason}"
        exc.close()
    except (OSError, ValueError) as exc:  # refused, reset, timeout, DNS, bad URL
        reason = getattr(exc, "reason", None) or exc
        code, error = None, f"{type(exc).__name__}: {reason}"
    ms = (time.perf_counter() - started) * 1000
    return Outcome(ok=error is None, code=code, error=None if error is None else error[:MAX_ERROR], duration_ms=ms)


def headers_for(event: str, delivery_id: str, signature: str) -> dict[str, str]:
    """The three modelkeep headers of a delivery."""
    return {EVENT_HEADER: event, DELIVERY_HEADER: delivery_id, SIGNATURE_HEADER: signature}
