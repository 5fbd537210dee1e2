"""What the importer reads from an MLflow store: plain records, no I/O.

Both readers (:mod:`.sql_reader` for ``sqlite:///``/``postgresql://`` stores and
:mod:`.file_reader` for ``./mlruns`` folders) produce these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

#: MLflow's ``current_stage`` of a soft-deleted version (never imported).
DELETED_STAGE = "Deleted_Internal"


@dataclass
class SourceVersion:
    """One registered model version as MLflow stores it."""

    model_name: str
    version: int
    created_ms: int | None
    description: str | None
    source: str | None
    storage_location: str | None
    run_id: str | None
    stage: str
    tags: dict[str, str] = field(default_factory=dict)
    model_id: str | None = None

    @property
    def deleted(self) -> bool:
        return self.stage == DELETED_STAGE


@dataclass
class SourceModel:
    """One registered model with its versions (soft-deleted ones included, marked)."""

    name: str
    description: str | None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, int] = field(default_factory=dict)
    versions: list[SourceVersion] = field(default_factory=list)


@dataclass
class SourceRun:
    """The run a version came from: its latest metric values, its params, where its artifacts are."""

    run_id: str
    artifact_uri: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


class MlflowStore(Protocol):
    """A readable MLflow tracking + registry store."""

    #: The folder artifact paths are relocated under when the recorded absolute path is gone.
    base: Path | None
    #: The only folder artifacts are read from (``None``: none, until ``--artifacts-dir`` names one).
    artifact_root: Path | None

    def models(self) -> list[SourceModel]:
        """Every registered model, sorted by name, versions ascending."""
        ...

    def run(self, run_id: str) -> SourceRun | None:
        """The run, or ``None`` if the store does not have it."""
        ...

    def logged_model_location(self, model_id: str) -> str | None:
        """The artifact location of an MLflow 3 logged model (``models:/m-<id>``)."""
        ...

    def close(self) -> None: ...
