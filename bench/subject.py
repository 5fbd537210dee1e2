"""Thin helpers around the modelkeep API under test, shared by the measurement groups."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any


def open_registry(modelkeep: Any, root: Path, **options: Any) -> Any:
    """A ``ModelPersistence`` whose models and index live under ``root``, created empty now:
    opening a registry creates nothing (a read of one that does not exist raises), and creating
    its index is not what a benchmark times."""
    registry = modelkeep.ModelPersistence(models_dir=str(root / "models"), **options)
    registry.ensure_registry()
    return registry


def artifact_size(registry: Any, name: str, version: str, saved: Path | None = None) -> int:
    """Bytes of the stored artifact of ``name``/``version``, from its metadata or the file."""
    record = registry.get_metadata(name, version)
    if record is not None and record.artifact is not None:
        return int(record.artifact.size)
    if saved is not None and Path(saved).is_file():
        return Path(saved).stat().st_size
    raise LookupError(f"cannot tell the artifact size of {name} {version}")


def artifact_compression(registry: Any, name: str, version: str) -> str | None:
    """The compression codec recorded for ``name``/``version``, if the metadata says."""
    record = registry.get_metadata(name, version)
    if record is None or record.artifact is None:
        return None
    return record.artifact.compression


def drop_version(registry: Any, name: str, version: str) -> None:
    """Delete a version for good if it exists; used between repetitions to keep the disk small."""
    with contextlib.suppress(KeyError):
        registry.delete(name, version)
        if hasattr(registry, "purge"):  # deletes go to the trash since the lifecycle release
            registry.purge(name, version)
