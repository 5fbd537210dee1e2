"""The one place importers (MLflow, bundles) touch the lifecycle API: aliases, tags, descriptions.

``ModelPersistence.set_alias`` / ``set_tag`` / ``set_description`` (and their getters) arrive with
the lifecycle tables. Until a registry has them, :func:`apply_lifecycle` logs one line and does
nothing, and the importers still report what they would have applied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("modelkeep")


@dataclass
class Lifecycle:
    """A model's aliases, tags and descriptions, as an importer brings them in.

    ``aliases`` maps alias -> version; ``version_tags`` and ``version_descriptions`` are keyed
    by version (modelkeep version strings).
    """

    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    version_tags: dict[str, dict[str, str]] = field(default_factory=dict)
    version_descriptions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "tags": dict(self.tags),
            "aliases": dict(self.aliases),
            "version_tags": {v: dict(t) for v, t in self.version_tags.items()},
            "version_descriptions": dict(self.version_descriptions),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lifecycle:
        return cls(
            description=data.get("description"),
            tags={str(k): str(v) for k, v in (data.get("tags") or {}).items()},
            aliases={str(k): str(v) for k, v in (data.get("aliases") or {}).items()},
            version_tags={
                str(v): {str(k): str(x) for k, x in t.items()} for v, t in (data.get("version_tags") or {}).items()
            },
            version_descriptions={str(k): str(v) for k, v in (data.get("version_descriptions") or {}).items()},
        )


def supported(persistence: Any) -> bool:
    """Whether ``persistence`` has the lifecycle API (aliases, tags, descriptions)."""
    return callable(getattr(persistence, "set_alias", None))


def alias_moves(
    persistence: Any,
    model_name: str,
    lifecycle: Lifecycle,
    versions: set[str],
    current: dict[str, str] | None = None,
) -> dict[str, tuple[str | None, str]]:
    """``alias -> (current version or None, version)`` for each alias ``lifecycle`` would set
    to another version than the registry's (only aliases naming one of ``versions``), or than
    ``current`` when given (the aliases before an import)."""
    wanted = {a: v for a, v in lifecycle.aliases.items() if v in versions}
    if not wanted:
        return {}
    if current is None:
        current = persistence.get_aliases(model_name) if supported(persistence) else {}
    return {a: (current.get(a), v) for a, v in sorted(wanted.items()) if current.get(a) != v}


def apply_lifecycle(
    persistence: Any, model_name: str, lifecycle: Lifecycle, versions: set[str], *, with_aliases: bool = True
) -> bool:
    """Set ``lifecycle`` on ``model_name`` through the lifecycle API; returns whether it was applied.

    Only values that differ from the registry's current ones are written (a re-run adds no
    history entries), and version-level items only for ``versions`` that exist in the registry.
    Aliases are moved only with ``with_aliases`` (see :func:`alias_moves` for what would move).
    Without the lifecycle API, logs one line and returns ``False``.
    """
    if not supported(persistence):
        logger.info(
            "%s: this registry has no lifecycle API (set_alias/set_tag/set_description) yet; "
            "aliases, tags and descriptions are listed in the report but not applied",
            model_name,
        )
        return False
    current_tags = persistence.get_tags(model_name)
    for key, value in lifecycle.tags.items():
        if current_tags.get(key) != value:
            persistence.set_tag(model_name, key, value)
    if lifecycle.description and _description(persistence, model_name, None) != lifecycle.description:
        persistence.set_description(model_name, lifecycle.description)
    for version in sorted(versions):
        tags = lifecycle.version_tags.get(version, {})
        current = persistence.get_tags(model_name, version=version) if tags else {}
        for key, value in tags.items():
            if current.get(key) != value:
                persistence.set_tag(model_name, key, value, version=version)
        text = lifecycle.version_descriptions.get(version)
        if text and _description(persistence, model_name, version) != text:
            persistence.set_description(model_name, text, version=version)
    if with_aliases:
        for alias, (_old, version) in alias_moves(persistence, model_name, lifecycle, versions).items():
            persistence.set_alias(model_name, alias, version)
    return True


def read_lifecycle(persistence: Any, model_name: str, versions: list[str]) -> Lifecycle:
    """The lifecycle state of ``model_name`` (empty without the lifecycle API)."""
    if not supported(persistence):
        return Lifecycle()
    out = Lifecycle(
        description=_description(persistence, model_name, None),
        tags=dict(persistence.get_tags(model_name)),
        aliases={a: v for a, v in persistence.get_aliases(model_name).items() if v in versions},
    )
    for version in versions:
        tags = dict(persistence.get_tags(model_name, version=version))
        if tags:
            out.version_tags[version] = tags
        text = _description(persistence, model_name, version)
        if text:
            out.version_descriptions[version] = text
    return out


def read_history(persistence: Any, model_name: str) -> list[dict[str, Any]]:
    """The model's history entries as dicts (``[]`` without the lifecycle API)."""
    history = getattr(persistence, "history", None)
    if not callable(history):
        return []
    import dataclasses

    from .metadata import to_json_safe

    out = []
    for entry in history(model_name):
        to_dict = getattr(entry, "to_dict", None)
        if callable(to_dict):
            data = to_dict()
        elif dataclasses.is_dataclass(entry) and not isinstance(entry, type):
            data = dataclasses.asdict(entry)
        else:
            data = dict(vars(entry))
        out.append(to_json_safe(data, "history"))
    return out


def _description(persistence: Any, model_name: str, version: str | None) -> str | None:
    """The current description of a model (``version=None``) or version, if the API exposes it."""
    getter = getattr(persistence, "get_description", None)
    if callable(getter):
        value = getter(model_name, version=version)
        return None if value is None else str(value)
    if version is not None:
        record = persistence.get_metadata(model_name, version)
        return getattr(record, "description", None) if record is not None else None
    return None
