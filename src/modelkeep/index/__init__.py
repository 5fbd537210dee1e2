"""The registry index: which versions exist, and where their artifacts are."""

from __future__ import annotations

from .sql import Reservation, SqlIndex, normalize_url

__all__ = ["Reservation", "SqlIndex", "normalize_url"]
