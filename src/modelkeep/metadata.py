"""Plain records describing a stored model version. No I/O happens here."""

from __future__ import annotations

import contextvars
import datetime as _dt
import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from .errors import FormatVersionError, MetadataError

if TYPE_CHECKING:
    from .environment import EnvironmentDiff

#: Version of the sidecar JSON layout written next to every artifact.
SIDECAR_SCHEMA = 1
#: ids of the containers being converted right now, to catch circular references.
_active: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar("modelkeep_json_path", default=frozenset())
#: Metadata arrays larger than this are refused rather than inflating the index.
MAX_ARRAY_ELEMENTS = 10_000


def utc_now() -> str:
    """The current time as an ISO-8601 string in UTC."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


@dataclass(frozen=True)
class ArtifactInfo:
    """Where and how one version's artifact is stored.

    ``key`` is relative to the store root (``name/version/name_vversion.joblib``);
    ``sha256`` is the digest of the stored bytes, computed while they were written.
    """

    key: str
    format: str
    compression: str | None
    size: int
    sha256: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "format": self.format,
            "compression": self.compression,
            "size": self.size,
            "sha256": self.sha256,
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArtifactInfo:
        return cls(
            key=data["key"],
            format=data["format"],
            compression=data.get("compression"),
            size=int(data["size"]),
            sha256=data["sha256"],
            extra=dict(data.get("extra") or {}),
        )


@dataclass
class ModelMetadata:
    """Everything modelkeep knows about one model version.

    ``metadata`` holds ``model_params`` (from ``get_params(deep=True)`` when the
    model has it, flat and bounded: see :mod:`modelkeep.params`) and every custom
    field passed to ``save``: metrics, dataset info, tags.

    ``aliases``, ``tags`` and ``description`` are the version's lifecycle state,
    read from the index when the record is read. They can change at any time, so
    they are not part of :meth:`to_dict` (the sidecar file and the signed manifest).
    """

    model_name: str
    model_type: str
    version: str
    created_at: str
    updated_at: str
    metadata: dict[str, Any] = field(default_factory=dict)
    artifact: ArtifactInfo | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    signature: str | None = None
    #: What the model expects as input (modelkeep.input_signature); ``None`` when unknown.
    input_signature: dict[str, Any] | None = None
    #: Where the model came from: training-data fingerprint, git commit, parent (modelkeep.lineage).
    lineage: dict[str, Any] | None = None
    aliases: list[str] = field(default_factory=list, compare=False)
    tags: dict[str, str] = field(default_factory=dict, compare=False)
    description: str | None = field(default=None, compare=False)
    #: Why the index row of this version could not be read (``None`` when it could): a
    #: placeholder that keeps one damaged row from failing a whole listing. It cannot be loaded.
    damaged: str | None = field(default=None, compare=False)

    def lifecycle_dict(self) -> dict[str, Any]:
        """The version's aliases, tags and description (not part of :meth:`to_dict`), and
        ``damaged`` when its index row could not be read."""
        out: dict[str, Any] = {"aliases": list(self.aliases), "tags": dict(self.tags), "description": self.description}
        if self.damaged is not None:
            out["damaged"] = self.damaged
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; the same layout as the sidecar ``*_metadata.json`` file."""
        out: dict[str, Any] = {
            "schema": SIDECAR_SCHEMA,
            "model_name": self.model_name,
            "model_type": self.model_type,
            "version": self.version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "metadata": self.metadata,
            "environment": self.environment,
        }
        if self.artifact is not None:
            out["artifact"] = self.artifact.to_dict()
        if self.signature is not None:
            out["signature"] = self.signature
        if self.input_signature is not None:
            out["input_signature"] = self.input_signature
        if self.lineage is not None:
            out["lineage"] = self.lineage
        return out

    def environment_diff(self) -> EnvironmentDiff:
        """How the running process differs from the environment this version was saved in."""
        from .environment import diff

        return diff(self.environment)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetadata:
        """Inverse of :meth:`to_dict`; unknown keys are ignored.

        Records from a newer modelkeep, whose ``schema`` is above
        :data:`SIDECAR_SCHEMA`, are refused with :class:`FormatVersionError`
        naming the release needed (its ``requires`` field); older ones load.
        """
        schema = data.get("schema", 1) if isinstance(data, dict) else 1
        if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
            raise MetadataError(f"not a modelkeep metadata record: bad schema {schema!r}")
        if schema > SIDECAR_SCHEMA:
            from ._version import __version__

            release = data.get("requires")
            remedy = f"upgrade to modelkeep {release} or later" if isinstance(release, str) else "upgrade modelkeep"
            raise FormatVersionError(
                f"the metadata record of {data.get('model_name')!r} {data.get('version')!r} uses schema {schema}, "
                f"but this modelkeep ({__version__}) reads up to schema {SIDECAR_SCHEMA}: {remedy}"
            )
        try:
            artifact = data.get("artifact")
            return cls(
                model_name=data["model_name"],
                model_type=data.get("model_type", ""),
                version=data["version"],
                created_at=data.get("created_at", ""),
                updated_at=data.get("updated_at", data.get("created_at", "")),
                metadata=dict(data.get("metadata") or {}),
                artifact=ArtifactInfo.from_dict(artifact) if artifact else None,
                environment=dict(data.get("environment") or {}),
                signature=data.get("signature"),
                input_signature=data.get("input_signature"),
                lineage=data.get("lineage"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MetadataError(f"not a modelkeep metadata record: missing or bad {exc}") from exc


def to_json_safe(value: Any, path: str = "metadata") -> Any:
    """Convert ``value`` to plain JSON types, or raise :class:`MetadataError`.

    Conversions: numpy scalars become Python numbers, numpy arrays (up to
    ``MAX_ARRAY_ELEMENTS`` elements) become lists, tuples and sets become lists,
    datetimes and dates become ISO-8601 strings, paths and enums become their
    string or value, and NaN or infinite floats become ``null``. Dict keys must
    be strings (ints, floats and bools are turned into strings). Anything else
    (bytes, arbitrary objects) is refused with the dotted path of the field.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        if id(value) in _active.get():
            raise MetadataError(f"{path} contains itself (a circular reference); metadata must be a tree")
        token = _active.set(_active.get() | {id(value)})
        try:
            return _container(value, path)
        finally:
            _active.reset(token)
    return _scalar(value, path)


def _container(value: Any, path: str) -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if isinstance(k, (bool, int, float)):
                k = str(k)
            if not isinstance(k, str):
                raise MetadataError(f"{path} has a key of type {type(k).__name__}; keys must be strings")
            if k in out:
                raise MetadataError(f"{path} has the key {k!r} twice once numbers are turned into strings")
            out[k] = to_json_safe(v, f"{path}.{k}")
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [to_json_safe(v, f"{path}[{i}]") for i, v in enumerate(items)]
    raise TypeError(f"not a container: {type(value).__name__}")  # pragma: no cover - callers check


def _scalar(value: Any, path: str) -> Any:
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Enum):
        return to_json_safe(value.value, path)
    if isinstance(value, PurePath):
        return str(value)
    module = type(value).__module__
    if module == "numpy":
        if hasattr(value, "shape") and getattr(value, "ndim", 0) > 0:
            if value.size > MAX_ARRAY_ELEMENTS:
                raise MetadataError(
                    f"{path} is a numpy array of {value.size} elements; "
                    f"metadata arrays may hold at most {MAX_ARRAY_ELEMENTS}"
                )
            return to_json_safe(value.tolist(), path)
        if hasattr(value, "item"):
            return to_json_safe(value.item(), path)
    if hasattr(value, "isoformat") and module.startswith("pandas"):
        return value.isoformat()
    raise MetadataError(
        f"{path} has type {type(value).__module__}.{type(value).__qualname__}, which cannot be stored as JSON metadata"
    )


@dataclass(frozen=True)
class ModelSummary:
    """One line of ``list``: a model, how many versions it has, and its latest."""

    name: str
    version_count: int
    latest_version: str
    updated_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version_count": self.version_count,
            "latest_version": self.latest_version,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class HistoryEntry:
    """One row of the registry's append-only audit log.

    ``action`` is one of ``save``, ``overwrite``, ``delete``, ``restore``, ``purge``,
    ``alias_set``, ``alias_delete``, ``tag_set``, ``tag_delete``, ``describe`` and
    ``reindex``. ``before`` and ``after`` are the changed value before and after
    (a version string for alias changes, a tag value, a description, or a small dict).
    ``at`` is an ISO-8601 UTC time; ``actor`` is ``MODELKEEP_USER`` or ``user@host``.
    """

    id: int
    at: str
    actor: str
    action: str
    model_name: str
    version: str | None = None
    alias: str | None = None
    key: str | None = None
    before: Any = None
    after: Any = None
    #: Why this row could not be read as written (a value that is not JSON, a field of the
    #: wrong type), or ``None``; the unreadable values are shown as text.
    damaged: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "model_name": self.model_name,
            "version": self.version,
            "alias": self.alias,
            "key": self.key,
            "before": self.before,
            "after": self.after,
        }
        if self.damaged is not None:
            out["damaged"] = self.damaged
        return out


#: The fields of a :class:`SaveItem`; any other key of a mapping item is custom metadata.
SAVE_ITEM_FIELDS = ("model", "model_name", "version", "metadata", "created_at")


@dataclass
class SaveItem:
    """One version for :meth:`ModelPersistence.save_many`: the object, its model's name, the
    version (``None``: the next patch version), custom metadata (metrics, dataset...) and,
    for importers, an ISO-8601 creation time to keep. A mapping with these keys works too,
    its other keys becoming metadata, as ``save``'s keyword arguments do."""

    model: Any
    model_name: str
    version: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: str | None = None

    @classmethod
    def of(cls, item: Any) -> SaveItem:
        """``item`` as a :class:`SaveItem` (a ``SaveItem`` or a mapping); :class:`MetadataError`
        names what is missing or wrong."""
        if isinstance(item, SaveItem):
            return item
        if not hasattr(item, "keys"):
            raise MetadataError(
                f"expected a SaveItem or a mapping with 'model' and 'model_name', got {type(item).__name__}"
            )
        values = dict(item)
        missing = [k for k in ("model", "model_name") if k not in values]
        if missing:
            raise MetadataError(f"missing {' and '.join(repr(k) for k in missing)}")
        extra = {k: v for k, v in values.items() if k not in SAVE_ITEM_FIELDS}
        given = values.get("metadata") or {}
        if not hasattr(given, "keys"):
            raise MetadataError(f"'metadata' must be a mapping, got {type(given).__name__}")
        return cls(
            model=values["model"],
            model_name=values["model_name"],
            version=values.get("version"),
            metadata={**dict(given), **extra},
            created_at=values.get("created_at"),
        )
