"""Helpful not-found messages: what exists, and which names are close (difflib)."""

from __future__ import annotations

import difflib

#: At most this many existing versions are listed in a message.
MAX_LISTED = 10


def did_you_mean(word: str, candidates: list[str]) -> str:
    """`` (did you mean 'a' or 'b'?)`` for close matches, else ``""``."""
    close = difflib.get_close_matches(word, candidates, n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def versions_hint(version: str, versions: list[str]) -> str:
    """``; existing versions: 1.0.0, 1.0.1 (did you mean '1.0.1'?)``."""
    if not versions:
        return ""
    shown = versions[-MAX_LISTED:]
    more = f" and {len(versions) - len(shown)} older" if len(versions) > len(shown) else ""
    return f"; existing versions: {', '.join(shown)}{more}{did_you_mean(version, versions)}"
