"""Small pieces shared by the index modules: version order, the reconnect retry, errors."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from ..errors import ConnectionLostError, VersionNotFoundError
from .schema import versions

logger = logging.getLogger("modelkeep")
_P = ParamSpec("_P")
_T = TypeVar("_T")

#: Ascending version order: unparsed versions first (by creation), then by ``sort_key``.
ORDER_ASC = (versions.c.parsed.asc(), versions.c.sort_key.asc(), versions.c.id.asc())
#: The reverse: the first row is "latest".
ORDER_DESC = (versions.c.parsed.desc(), versions.c.sort_key.desc(), versions.c.id.desc())


def retry_on_disconnect(method: Callable[_P, _T]) -> Callable[_P, _T]:
    """Run ``method`` (a read, or one whole write transaction) again once if the connection dropped."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(*args, **kwargs)
        except ConnectionLostError as exc:
            logger.warning("%s; retrying once on a new connection", exc)
            return method(*args, **kwargs)

    return wrapper


def trashed_error(model_name: str, version: str) -> VersionNotFoundError:
    """The error for using a version that is in the trash."""
    return VersionNotFoundError(f"model '{model_name}' version '{version}' is in the trash; restore it to use it again")
