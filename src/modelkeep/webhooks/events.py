"""The public event names: what each history action is called when it leaves the registry.

Every row of the history (``modelkeep_history``) is one event. :data:`EVENT_OF_ACTION` is the
one table that names them; :func:`event_from_row` turns a history row into the JSON-able dict
that :meth:`ModelPersistence.events`, ``modelkeep events watch`` and webhook deliveries carry.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

from ..index.rows import history_entry

#: History action -> public event name. ``alias_set`` is ``alias.set`` when the alias is new
#: and ``alias.moved`` when it pointed somewhere before (see :func:`event_type`). An action
#: missing here (a newer release's) is published as ``history.<action>``.
EVENT_OF_ACTION: dict[str, str] = {
    "save": "version.created",
    "overwrite": "version.overwritten",
    "describe": "version.described",
    "delete": "version.trashed",
    "restore": "version.restored",
    "purge": "version.purged",
    "backfill_params": "version.params_backfilled",
    "alias_set": "alias.set",
    "alias_delete": "alias.removed",
    "alias_resign": "alias.resigned",
    "tag_set": "tag.set",
    "tag_delete": "tag.removed",
    "reindex": "registry.reindexed",
    "policy_set": "policy.set",
    "policy_delete": "policy.removed",
    "approve": "approval.added",
    "import": "bundle.imported",
    # Users, tokens and grants (model ``_users``, see modelkeep.index.audit.USERS_LOG):
    "user_add": "user.added",
    "user_remove": "user.removed",
    "user_role": "user.role_changed",
    "user_password": "user.password_set",
    "token_new": "token.created",
    "token_revoke": "token.revoked",
    "grant": "grant.set",
    "grant_revoke": "grant.removed",
}
ALIAS_MOVED = "alias.moved"
#: Every name an event can have (besides ``history.<action>`` for unknown actions), sorted.
EVENT_TYPES: tuple[str, ...] = tuple(sorted({*EVENT_OF_ACTION.values(), ALIAS_MOVED}))
#: The event ``modelkeep webhooks test`` sends.
PING = "ping"


def event_type(action: str, before: Any) -> str:
    """The public name of a history row with ``action`` (and its ``before`` value)."""
    if action == "alias_set" and before is not None:
        return ALIAS_MOVED
    return EVENT_OF_ACTION.get(action, f"history.{action}")


def event_from_row(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A ``modelkeep_history`` row as an event dict: ``id`` (the history id), ``type``,
    ``action``, ``model``, ``version``, ``alias``, ``key``, ``before``, ``after``, ``actor``,
    ``at``, and ``signature`` (of a signed alias move or removal, else ``None``).

    A damaged row (a value that is not JSON) still becomes an event, with ``damaged`` saying why.
    """
    entry = history_entry(row)
    signature = row.get("signature")
    out: dict[str, Any] = {
        "id": entry.id,
        "type": event_type(entry.action, entry.before),
        "action": entry.action,
        "model": entry.model_name,
        "version": entry.version,
        "alias": entry.alias,
        "key": entry.key,
        "before": entry.before,
        "after": entry.after,
        "actor": entry.actor,
        "at": entry.at,
        "signature": signature if isinstance(signature, str) else None,
    }
    if entry.damaged:
        out["damaged"] = entry.damaged
    return out


def parse_patterns(text: str | Iterable[str]) -> tuple[str, ...]:
    """``"alias.*,version.created"`` (or a list of such) as a tuple of patterns; each must match
    at least one known event name (or be ``*`` / ``history.*``), so a typo is an error."""
    items = text.split(",") if isinstance(text, str) else [p for part in text for p in str(part).split(",")]
    patterns = tuple(dict.fromkeys(p.strip() for p in items if p.strip()))
    if not patterns:
        raise ValueError("no event patterns given (for example 'alias.*,version.created')")
    for pattern in patterns:
        if not (pattern.startswith("history.") or any(fnmatch.fnmatchcase(t, pattern) for t in EVENT_TYPES)):
            raise ValueError(f"event pattern {pattern!r} matches no event (known: {', '.join(EVENT_TYPES)})")
    return patterns


def matches(patterns: Iterable[str] | None, event: str) -> bool:
    """Whether ``event`` matches one of ``patterns`` (shell globs; ``None``: everything)."""
    return patterns is None or any(fnmatch.fnmatchcase(event, p) for p in patterns)
