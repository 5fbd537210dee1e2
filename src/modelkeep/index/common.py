"""Small pieces shared by the index modules: version order, the reconnect retry, errors, rows."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Connection, delete
from sqlalchemy.exc import DBAPIError

from ..errors import ConnectionLostError, VersionNotFoundError
from ..metadata import ModelMetadata
from ..versions import sort_key
from .schema import blob_refs, versions

logger = logging.getLogger("modelkeep")
_P = ParamSpec("_P")
_T = TypeVar("_T")

#: Ascending version order: unparsed versions first (by creation), then by ``sort_key``.
ORDER_ASC = (versions.c.parsed.asc(), versions.c.sort_key.asc(), versions.c.id.asc())
#: The reverse: the first row is "latest".
ORDER_DESC = (versions.c.parsed.desc(), versions.c.sort_key.desc(), versions.c.id.desc())


#: Pauses before the retries of a read or write transaction whose connection dropped
#: (a failover or restart can drop a new connection too).
RETRY_PAUSES = (0.0, 0.2, 1.0)


def retry_on_disconnect(method: Callable[_P, _T]) -> Callable[_P, _T]:
    """Run ``method`` (a read, or one whole write transaction) again, up to :data:`RETRY_PAUSES`
    more times, when its connection dropped before anything was committed."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        for pause in RETRY_PAUSES:
            try:
                return method(*args, **kwargs)
            except ConnectionLostError as exc:
                logger.warning("%s; retrying on a new connection", exc)
                time.sleep(pause)
        return method(*args, **kwargs)

    return wrapper


#: SQLSTATEs of a connection that is gone: class 08, and the server shutting the session down.
_LOST_STATES = ("57P01", "57P02", "57P03")


def connection_lost(exc: DBAPIError) -> bool:
    """True when ``exc`` means the connection died (invalidated by SQLAlchemy, or a server-side termination)."""
    state = getattr(exc.orig, "sqlstate", None) or ""
    return bool(exc.connection_invalidated) or state.startswith("08") or state in _LOST_STATES


def trashed_error(model_name: str, version: str) -> VersionNotFoundError:
    """The error for using a version that is in the trash."""
    return VersionNotFoundError(f"model '{model_name}' version '{version}' is in the trash; restore it to use it again")


def drop_blob_refs(conn: Connection, model_name: str, version: str) -> None:
    """Remove the blob references of one version."""
    conn.execute(delete(blob_refs).where(blob_refs.c.model_name == model_name, blob_refs.c.version == version))


def record_row(record: ModelMetadata) -> dict[str, Any]:
    """The ``modelkeep_versions`` column values of ``record``."""
    art = record.artifact
    if art is None:
        raise ValueError("a record needs its artifact before it is indexed")
    key = sort_key(record.version)
    return {
        "model_name": record.model_name,
        "version": record.version,
        "parsed": key is not None,
        "sort_key": key,
        "model_type": record.model_type[:256],
        "artifact_key": art.key,
        "format": art.format,
        "compression": art.compression,
        "size": art.size,
        "sha256": art.sha256,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "record": json.dumps(record.to_dict(), separators=(",", ":")),  # keeps the caller's field order
    }
