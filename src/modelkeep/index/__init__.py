"""The registry index: which versions exist, and where their artifacts are.

The names below load SQLAlchemy, so they are imported on first use: the command
line's read-only path (:mod:`.readonly`, :mod:`.names`) lives in this package too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .sql import Reservation, SqlIndex, normalize_url


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import sql

        return getattr(sql, name)
    raise AttributeError(f"module 'modelkeep.index' has no attribute {name!r}")


__all__ = ["Reservation", "SqlIndex", "normalize_url"]
