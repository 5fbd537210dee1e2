"""``import_mlflow``: bring every registered model and version of an MLflow store into modelkeep."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import _lifecycle
from ..errors import (
    ArtifactNotFoundError,
    BackendUnavailableError,
    IntegrityError,
    InvalidNameError,
    MetadataError,
    SerializationError,
)
from ..versions import validate_model_name
from .locate import model_folder
from .mlmodel import PICKLE_FORMATS, MlModel, archive, load_skops, read_mlmodel
from .source import MlflowStore, SourceModel, SourceVersion

if TYPE_CHECKING:
    from ..metadata import ModelMetadata
    from ..registry import Advance, ModelPersistence, ProgressFactory

logger = logging.getLogger("modelkeep")

#: Metadata keys the importer writes; a metric of the same name stays under ``mlflow.metrics`` only.
RESERVED_KEYS = frozenset({"model_params", "params", "signature", "mlflow"})


@dataclass
class ImportedVersion:
    """One version brought in (or, with ``dry_run``, that would be)."""

    model_name: str
    mlflow_version: int
    version: str
    kind: str
    """``"native"`` (loaded and saved as a model) or ``"mlflow-folder"`` (kept as an archive)."""
    flavor: str
    serialization_format: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class ImportReport:
    """What :func:`import_mlflow` did. ``skipped``, ``refused`` and ``failed`` hold
    ``(name, mlflow_version, reason)``: ``refused`` is the safe-loading policy's verdict (or a
    file that cannot be read), ``failed`` a version this installation cannot read (a missing
    optional package, named with the extra to install)."""

    imported: list[ImportedVersion] = field(default_factory=list)
    skipped: list[tuple[str, int, str]] = field(default_factory=list)
    refused: list[tuple[str, int, str]] = field(default_factory=list)
    failed: list[tuple[str, int, str]] = field(default_factory=list)
    lifecycle: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per model: the description, tags, aliases (alias -> modelkeep version), version tags and
    version descriptions found in MLflow."""
    lifecycle_applied: bool = False
    """Whether they were set in the registry (needs the lifecycle API)."""
    dry_run: bool = False

    @property
    def archived(self) -> list[ImportedVersion]:
        """Versions kept as their MLflow model folder (flavors modelkeep does not load)."""
        return [v for v in self.imported if v.kind == "mlflow-folder"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "imported": [v.to_dict() for v in self.imported],
            "skipped": [list(s) for s in self.skipped],
            "refused": [list(r) for r in self.refused],
            "failed": [list(f) for f in self.failed],
            "lifecycle": self.lifecycle,
            "lifecycle_applied": self.lifecycle_applied,
        }

    def __str__(self) -> str:
        verb = "would import" if self.dry_run else "imported"
        lines = [
            f"{verb} {len(self.imported)} version(s) ({len(self.archived)} as MLflow model folders), "
            f"skipped {len(self.skipped)}, refused {len(self.refused)}"
            + (f", failed {len(self.failed)}" if self.failed else "")
        ]
        for v in self.imported:
            how = "as its MLflow model folder" if v.kind == "mlflow-folder" else v.serialization_format or v.flavor
            lines.append(f"  {verb} {v.model_name} {v.mlflow_version} -> {v.version} ({how})")
        lines += [f"  skipped {n} {v}: {why}" for n, v, why in self.skipped]
        lines += [f"  refused {n} {v}: {why}" for n, v, why in self.refused]
        lines += [f"  failed {n} {v}: {why}" for n, v, why in self.failed]
        return "\n".join(lines)


def open_store(tracking_uri: str) -> MlflowStore:
    """The reader for ``tracking_uri``: a database URL, a ``file:`` URI or a plain ``mlruns`` path."""
    from .file_reader import FileStore, file_store_root

    folder = file_store_root(tracking_uri)
    if folder is not None:
        return FileStore(folder)
    if tracking_uri.startswith(("sqlite:", "postgresql:", "postgresql+", "postgres:", "mysql")):
        from .sql_reader import SqlStore

        return SqlStore(tracking_uri)
    from ..errors import ConfigError

    raise ConfigError(
        f"unsupported MLflow tracking URI {tracking_uri!r}: use sqlite:///..., postgresql://... "
        "or the path of an mlruns folder (the importer reads the store directly, not a tracking server)"
    )


@contextlib.contextmanager
def _no_progress(_description: str, _total: int | None) -> Iterator[Advance]:
    yield lambda _n: None


def import_mlflow(
    persistence: ModelPersistence,
    tracking_uri: str,
    *,
    models: Iterable[str] | None = None,
    dry_run: bool = False,
    renumber: bool = False,
    artifacts_dir: str | os.PathLike[str] | None = None,
    progress: ProgressFactory | None = None,
) -> ImportReport:
    """Import the registered models of the MLflow store at ``tracking_uri`` into ``persistence``.

    Reads the store directly (``sqlite:///mlflow.db``, ``postgresql://...``, or an ``mlruns``
    folder); neither MLflow nor a tracking server is needed. Every version except soft-deleted
    ones (``Deleted_Internal``) is imported with its original version number (``renumber``
    maps ``N`` to ``N.0.0``) and creation time, the source run's latest metrics (top-level
    metadata, as ``save(..., accuracy=...)`` stores them) and params (``metadata["params"]``),
    the ``MLmodel`` signature (``metadata["signature"]``) and where it came from
    (``metadata["mlflow"]``). sklearn models are loaded under the safe-loading policy and saved
    in the registry's format; other flavors are kept as their MLflow model folder (format
    ``archive``). A file refused by the policy is listed in ``refused`` and nothing of it is
    stored. Versions already imported are skipped, so running it again imports only what is
    new. Aliases, tags and descriptions are applied when the registry has the lifecycle API,
    and always listed in the report. ``progress(description, total)`` gets one ``advance(1)``
    per version.

    MLflow records absolute artifact paths. When one no longer exists (the store was moved),
    its tail is looked for under ``artifacts_dir`` (default: the folder of the SQLite file, or
    the folder holding ``mlruns``), e.g. for a PostgreSQL store whose artifacts were copied.

    Artifacts are read only from inside the store's artifact root: ``artifacts_dir`` when
    given, else the ``mlruns`` folder of a file store or the folder of a SQLite file (a
    PostgreSQL store needs ``artifacts_dir``). A ``source``, ``storage_location``, run
    ``artifact_uri`` or logged-model location that resolves elsewhere (symbolic links
    followed) is refused, naming the path: the store's writer cannot make the import copy
    a folder from anywhere on this machine.
    """
    store = open_store(tracking_uri)
    if artifacts_dir is not None:
        store.base = store.artifact_root = Path(artifacts_dir).resolve()
    report = ImportReport(dry_run=dry_run)
    try:
        wanted = None if models is None else set(models)
        selected = [m for m in store.models() if wanted is None or m.name in wanted]
        missing = sorted((wanted or set()) - {m.name for m in selected})
        if missing:
            from ..errors import ModelNotFoundError

            raise ModelNotFoundError(f"no registered model named {', '.join(map(repr, missing))} in {tracking_uri}")
        total = sum(len(m.versions) for m in selected)
        with (progress or _no_progress)(f"importing {total} MLflow version(s)", total) as advance:
            for model in selected:
                _import_model(persistence, store, model, report, renumber=renumber, advance=advance)
    finally:
        store.close()
    logger.info("import-mlflow from %s: %s", tracking_uri, str(report).splitlines()[0])
    return report


def mapped_version(number: int, renumber: bool) -> str:
    """The modelkeep version of MLflow version ``number``: ``"3"``, or ``"3.0.0"`` with ``renumber``."""
    return f"{number}.0.0" if renumber else str(number)


def _import_model(
    persistence: ModelPersistence,
    store: MlflowStore,
    model: SourceModel,
    report: ImportReport,
    *,
    renumber: bool,
    advance: Advance,
) -> None:
    name = model.name
    try:
        validate_model_name(name)
    except InvalidNameError as exc:
        for version in model.versions:
            report.refused.append((name, version.version, f"the name cannot be used in modelkeep: {exc}"))
            advance(1)
        return
    present: set[str] = set()
    for version in model.versions:
        target = mapped_version(version.version, renumber)
        try:
            if version.deleted:
                report.skipped.append((name, version.version, "soft-deleted in MLflow (Deleted_Internal)"))
                continue
            existing = _existing(persistence, name, target)
            if existing is not None:
                if _imported_from(existing, version):
                    report.skipped.append((name, version.version, f"already imported as {target}"))
                    present.add(target)
                else:
                    report.refused.append(
                        (name, version.version, f"modelkeep already has {name} {target}, not imported from MLflow")
                    )
                continue
            imported = _import_version(persistence, store, version, target, dry_run=report.dry_run)
            report.imported.append(imported)
            present.add(target)
        except BackendUnavailableError as exc:  # not a verdict on the file: this installation lacks a package
            report.failed.append((name, version.version, str(exc)))
        except (ArtifactNotFoundError, MetadataError, SerializationError, IntegrityError) as exc:
            # A file the safe-loading policy refuses (UnsafeModelError is an IntegrityError),
            # or one that cannot be read: nothing of this version was stored.
            report.refused.append((name, version.version, str(exc)))
        finally:
            advance(1)
    lifecycle = _lifecycle.Lifecycle(
        description=model.description,
        tags=dict(model.tags),
        aliases={a: mapped_version(v, renumber) for a, v in sorted(model.aliases.items())},
        version_tags={mapped_version(v.version, renumber): dict(v.tags) for v in model.versions if v.tags},
        version_descriptions={
            mapped_version(v.version, renumber): v.description for v in model.versions if v.description
        },
    )
    report.lifecycle[name] = lifecycle.to_dict()
    if not report.dry_run and present:
        report.lifecycle_applied = _lifecycle.apply_lifecycle(persistence, name, lifecycle, present)


def _existing(persistence: ModelPersistence, name: str, version: str) -> ModelMetadata | None:
    """The registry's record of ``name`` ``version``; ``None`` in a registry not created yet
    (a dry run into a new registry creates nothing)."""
    from ..errors import RegistryNotFoundError

    try:
        return persistence.get_metadata(name, version)
    except RegistryNotFoundError:
        return None


def _imported_from(record: ModelMetadata, version: SourceVersion) -> bool:
    origin = record.metadata.get("mlflow")
    return (
        isinstance(origin, dict)
        and origin.get("name") == version.model_name
        and origin.get("version") == (version.version)
    )


def _import_version(
    persistence: ModelPersistence, store: MlflowStore, version: SourceVersion, target: str, *, dry_run: bool
) -> ImportedVersion:
    folder = model_folder(store, version)
    mlmodel = read_mlmodel(folder)
    kind = "native" if mlmodel.native else "mlflow-folder"
    result = ImportedVersion(
        version.model_name, version.version, target, kind, mlmodel.flavor, mlmodel.serialization_format
    )
    # A dry run reads each file exactly as the import does (the safe-loading policy, the
    # format's package), so what it promises is what the import does; only the save is left out.
    if kind == "native" and mlmodel.serialization_format in PICKLE_FORMATS:
        model = persistence.read_file(mlmodel.model_file())
        fmt = None
    elif kind == "native":
        model = load_skops(mlmodel.model_file(), persistence.trusted_types)
        fmt = None
    else:
        model = archive(mlmodel)
        fmt = "archive"
    if dry_run:
        return result
    name = version.model_name
    metadata = _metadata(store, version, mlmodel)
    persistence.save_version(
        model, name, target, serialization_format=fmt, metadata=metadata, created_at=_iso(version.created_ms)
    )
    if kind != "native":
        logger.info("%s %s: flavor %s kept as its MLflow model folder", name, version.version, mlmodel.flavor)
    return result


def _metadata(store: MlflowStore, version: SourceVersion, mlmodel: MlModel) -> dict[str, Any]:
    run = store.run(version.run_id) if version.run_id else None
    metrics = dict(run.metrics) if run else {}
    metadata: dict[str, Any] = {k: v for k, v in metrics.items() if k not in RESERVED_KEYS}
    metadata["params"] = dict(run.params) if run else {}
    if mlmodel.signature is not None:
        metadata["signature"] = mlmodel.signature
    metadata["mlflow"] = {
        "name": version.model_name,
        "version": version.version,
        "source": version.source,
        "run_id": version.run_id,
        "model_id": mlmodel.model_id or version.model_id,
        "flavor": mlmodel.flavor,
        "flavors": sorted(mlmodel.flavors),
        "serialization_format": mlmodel.serialization_format,
        "mlflow_version": mlmodel.mlflow_version,
        "stage": version.stage,
        "created_at": _iso(version.created_ms),
        "description": version.description,
        "tags": dict(version.tags),
        "metrics": metrics,
    }
    return metadata


def _iso(millis: int | None) -> str | None:
    if millis is None:
        return None
    return dt.datetime.fromtimestamp(int(millis) / 1000, tz=dt.timezone.utc).isoformat()
