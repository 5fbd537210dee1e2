"""Connect and read timeouts for the shared services (S3 and PostgreSQL), so nothing hangs.

Defaults: :data:`CONNECT_TIMEOUT` seconds to connect, :data:`READ_TIMEOUT` seconds
waiting for an answer. Configured with ``persistence.connect_timeout`` /
``persistence.read_timeout`` (``MODELKEEP_CONNECT_TIMEOUT`` / ``MODELKEEP_READ_TIMEOUT``);
settings given explicitly in ``storage_options`` or the database URL win.

S3 (s3fs/botocore): ``config_kwargs`` gets ``connect_timeout``, ``read_timeout`` and
at most :data:`S3_ATTEMPTS` attempts per request; s3fs's own retry loop is limited to
one pass, and botocore's ``Expect: 100-continue`` header is dropped (aiohttp waits for
the ``100 Continue`` answer with no timeout at all). PostgreSQL (libpq):
``connect_timeout``, and ``tcp_user_timeout`` plus TCP keepalives for a server that
stops answering mid-session.
"""

from __future__ import annotations

import copy
import math
from typing import Any

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 10.0
#: Attempts per S3 request (botocore "standard" retry mode): one retry.
S3_ATTEMPTS = 2
S3_PROTOCOLS = ("s3", "s3a")
SETTINGS_HINT = "persistence.connect_timeout / read_timeout, MODELKEEP_CONNECT_TIMEOUT / MODELKEEP_READ_TIMEOUT"


def s3_storage_options(
    url: str, options: dict[str, Any] | None, connect_timeout: float, read_timeout: float
) -> dict[str, Any] | None:
    """``options`` with timeouts and bounded retries added for an ``s3://`` URL (others unchanged)."""
    if url.split("://", 1)[0] not in S3_PROTOCOLS:
        return options
    out = copy.deepcopy(options or {})
    config = out.setdefault("config_kwargs", {})
    config.setdefault("connect_timeout", connect_timeout)
    config.setdefault("read_timeout", read_timeout)
    config.setdefault("retries", {"total_max_attempts": S3_ATTEMPTS, "mode": "standard"})
    if "session" not in out:
        out["session"] = _session_without_expect_header()
    return out


def _drop_expect(request: Any, **_kwargs: Any) -> None:
    if "Expect" in request.headers:
        del request.headers["Expect"]


def _session_without_expect_header() -> Any:
    from aiobotocore.session import AioSession

    session = AioSession()
    session.register("request-created.s3", _drop_expect)
    return session


def tune_s3_filesystem(fs: Any) -> None:
    """One pass of s3fs's own retry loop: botocore already retries, and a hang must end."""
    if getattr(fs, "retries", None) == 5:  # s3fs's default, not a caller's choice
        fs.retries = 1


def postgres_connect_args(url_query: dict[str, Any], connect_timeout: float, read_timeout: float) -> dict[str, Any]:
    """libpq parameters for the timeouts, except those the URL already sets."""
    wanted: dict[str, Any] = {
        "connect_timeout": max(2, math.ceil(connect_timeout)),
        "tcp_user_timeout": int(read_timeout * 1000),
        "keepalives": 1,
        "keepalives_idle": max(1, math.ceil(read_timeout)),
        "keepalives_interval": max(1, math.ceil(read_timeout / 3)),
        "keepalives_count": 3,
    }
    return {k: v for k, v in wanted.items() if k not in url_query}


def describe(connect_timeout: float, read_timeout: float) -> str:
    """The hint appended to timeout errors: the values and where to set them."""
    return f"(connect timeout {connect_timeout:g} s, read timeout {read_timeout:g} s; set {SETTINGS_HINT})"
