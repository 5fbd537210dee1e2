"""Search the registry: a small filter language compiled to SQL (see the README's "Search")."""

from __future__ import annotations

from .api import (
    SearchPage,
    best_version,
    iter_versions,
    matching_versions,
    metric_history,
    search_models,
    search_versions,
)
from .grammar import OrderKey, parse_filter, parse_order_by, unparse

__all__ = [
    "OrderKey",
    "SearchPage",
    "best_version",
    "metric_history",
    "iter_versions",
    "matching_versions",
    "parse_filter",
    "parse_order_by",
    "search_models",
    "search_versions",
    "unparse",
]
