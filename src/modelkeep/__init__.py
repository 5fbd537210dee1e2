"""modelkeep: a fast, safe model registry for Python machine learning.

>>> from modelkeep import ModelPersistence
>>> persistence = ModelPersistence(models_dir="models")        # doctest: +SKIP
>>> persistence.save(model, "churn", accuracy=0.93)            # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    AliasConflictError,
    AliasNotFoundError,
    ArtifactNotFoundError,
    AuthenticationError,
    BackendUnavailableError,
    BatchItemError,
    ConfigError,
    FilterError,
    IncompatibleRegistryError,
    InputSchemaError,
    IntegrityError,
    InvalidNameError,
    MetadataError,
    ModelKeepError,
    ModelNotFoundError,
    PermissionDeniedError,
    PolicyError,
    RegistryNotFoundError,
    RollbackError,
    SerializationError,
    SignatureError,
    StorageError,
    UnsafeModelError,
    VersionExistsError,
    VersionInUseError,
    VersionNotFoundError,
    VersionTrashedError,
    WebhookNotFoundError,
)
from .metadata import ArtifactInfo, HistoryEntry, ModelMetadata, ModelSummary, SaveItem

if TYPE_CHECKING:
    from .environment import EnvironmentDiff, EnvironmentMismatchWarning
    from .freshness import RollbackWarning
    from .input_signature import InputCheck
    from .loading import MmapIgnoredWarning
    from .manager import ModelPersistenceManager
    from .registry import ModelPersistence

_LAZY = {
    "ModelPersistence": "registry",
    "ModelPersistenceManager": "manager",
    "InputCheck": "input_signature",
    "EnvironmentDiff": "environment",
    "EnvironmentMismatchWarning": "environment",
    "MmapIgnoredWarning": "loading",
    "RollbackWarning": "freshness",
}


def __getattr__(name: str) -> Any:
    # Imported on first use so that `import modelkeep` (and the CLI's --help)
    # does not pay for SQLAlchemy, fsspec and pydantic.
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'modelkeep' has no attribute {name!r}")


__all__ = [
    "AliasConflictError",
    "AliasNotFoundError",
    "ArtifactInfo",
    "ArtifactNotFoundError",
    "AuthenticationError",
    "BackendUnavailableError",
    "BatchItemError",
    "ConfigError",
    "HistoryEntry",
    "FilterError",
    "IncompatibleRegistryError",
    "EnvironmentDiff",
    "EnvironmentMismatchWarning",
    "InputCheck",
    "InputSchemaError",
    "IntegrityError",
    "InvalidNameError",
    "MetadataError",
    "MmapIgnoredWarning",
    "ModelKeepError",
    "ModelMetadata",
    "ModelNotFoundError",
    "ModelPersistence",
    "ModelPersistenceManager",
    "ModelSummary",
    "PermissionDeniedError",
    "PolicyError",
    "RegistryNotFoundError",
    "RollbackError",
    "RollbackWarning",
    "SaveItem",
    "SerializationError",
    "SignatureError",
    "StorageError",
    "UnsafeModelError",
    "VersionExistsError",
    "VersionInUseError",
    "VersionNotFoundError",
    "VersionTrashedError",
    "WebhookNotFoundError",
    "__version__",
]
