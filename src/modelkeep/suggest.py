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


def alias_hint(alias: str, aliases: list[str]) -> str:
    """`` (did you mean 'production'?); its aliases: production, staging`` for an unknown alias:
    the same name in another case, names it abbreviates or that are close, then what exists."""
    if not aliases:
        return "; it has no aliases"
    low = alias.lower()
    same_case = [a for a in aliases if a.lower() == low]
    if same_case:
        return f" (did you mean {same_case[0]!r}? alias names are case-sensitive)"
    prefixed = [a for a in aliases if a.lower().startswith(low) or low.startswith(a.lower())]
    close = difflib.get_close_matches(low, [a.lower() for a in aliases], n=3, cutoff=0.6)
    picks = list(dict.fromkeys([*prefixed, *(a for a in aliases if a.lower() in close)]))[:3]
    hint = " (did you mean " + " or ".join(repr(c) for c in picks) + "?)" if picks else ""
    shown = aliases[:MAX_LISTED]
    more = f" and {len(aliases) - len(shown)} more" if len(aliases) > len(shown) else ""
    return f"{hint}; its aliases: {', '.join(shown)}{more}"
