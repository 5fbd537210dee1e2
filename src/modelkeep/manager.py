"""``ModelPersistenceManager``: a ``ModelPersistence`` configured from YAML and env."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Settings, load_settings
from .metadata import ModelMetadata

if TYPE_CHECKING:
    import pandas as pd

    from .registry import ModelPersistence


class ModelPersistenceManager:
    """A :class:`~modelkeep.registry.ModelPersistence` configured from a YAML file and the environment.

    ``config_path`` is the YAML config file (``logging`` and ``persistence``
    sections; see docs/configuration.md). ``None`` reads ``./config.yaml`` if present. ``MODELKEEP_*``
    environment variables and keyword ``overrides`` win over the file.
    """

    def __init__(self, config_path: str | os.PathLike[str] | None = None, **overrides: Any) -> None:
        self.config_path = Path(config_path) if config_path is not None else None
        self.settings: Settings = load_settings(config_path, **overrides)
        self.settings.apply_logging()
        from .registry import ModelPersistence

        self.persistence: ModelPersistence = ModelPersistence.from_settings(self.settings)

    def save_model(self, model: Any, model_name: str, version: str | None = None, **metadata: Any) -> str | Path:
        """Save ``model``; see :meth:`ModelPersistence.save`."""
        return self.persistence.save(model, model_name, version, **metadata)

    def load_model(self, model_name: str, version: str | None = None, return_metadata: bool = False) -> Any:
        """Load a version (latest by default); see :meth:`ModelPersistence.load`."""
        return self.persistence.load(model_name, version, return_metadata)

    def get_model_metadata(self, model_name: str, version: str | None = None) -> ModelMetadata | None:
        """A version's metadata, or ``None``."""
        return self.persistence.get_metadata(model_name, version)

    def list_models(self) -> list[str]:
        """Names of all models with at least one version, sorted; see :meth:`ModelPersistence.list_models`."""
        return self.persistence.list_models()

    def list_versions(self, model_name: str) -> list[str]:
        """A model's versions in ascending version order (``[]`` for an unknown model)."""
        return self.persistence.list_versions(model_name)

    def compare_versions(self, model_name: str, versions: list[str] | None = None) -> pd.DataFrame:
        """A DataFrame with one row per version (all, or ``versions``) and a column per metric."""
        return self.persistence.compare_versions(model_name, versions)

    def delete_model(self, model_name: str, version: str) -> None:
        """Delete one version; see :meth:`ModelPersistence.delete`."""
        self.persistence.delete(model_name, version)

    def close(self) -> None:
        """Release database connections and the log file this manager opened."""
        self.persistence.close()
        self.settings.release_logging()
