"""``modelkeep copy`` when either registry is behind a server: model by model through bundles.

Neither side's index or store is reachable from here, so the copy goes the way a person would
carry it: the source writes each model's bundle (its live versions, their signatures and
history, checked by the reading side's keys), and the destination imports it (checked again,
byte for byte, before anything is registered; versions it holds with the same bytes are skipped;
aliases come along, as with a local copy). Conflicts (a version the destination holds with other
bytes) are looked for first, across every model, so that nothing is copied when there is one.
Unlike a local copy, versions in the source's trash stay behind, and ``overwrite`` is refused.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .bundle import is_remote
from .copying import CopyReport
from .errors import ConfigError, VersionExistsError
from .versions import validate_model_name

__all__ = ["SOURCE_SERVER_VARIABLES", "copy_through_bundles", "is_remote", "open_destination"]

#: What names the source when it is a registry server, left out of a destination given by its folder.
SOURCE_SERVER_VARIABLES = ("MODELKEEP_REGISTRY_URL", "MODELKEEP_TOKEN", "MODELKEEP_USER")


def open_destination(
    config: str | os.PathLike[str] | None, models_dir: str | None, registry_url: str | None, progress: Any = None
) -> Any:
    """The destination registry of ``modelkeep copy``. ``MODELKEEP_REGISTRY_URL`` naming a
    registry server names the *source* (and ``MODELKEEP_TOKEN`` is for it): a destination given by
    its folder alone (``--to-models-dir``) is that folder's own registry, not the source's server again."""
    from .config import load_settings
    from .registry import ModelPersistence

    server = os.environ.get("MODELKEEP_REGISTRY_URL", "")
    masked: dict[str, str] = {}
    if registry_url is None and config is None and server.lower().startswith(("http://", "https://")):
        masked = {k: os.environ.pop(k) for k in SOURCE_SERVER_VARIABLES if k in os.environ}
    try:
        settings = load_settings(config, models_dir=models_dir, registry_url=registry_url)
        return ModelPersistence.from_settings(settings, progress=progress)
    finally:
        os.environ.update(masked)


def copy_through_bundles(
    source: Any, dest: Any, *, models: Iterable[str] | None = None, overwrite: bool = False
) -> CopyReport:
    """Copy every live version of ``models`` (default: all) from ``source`` to ``dest``, either
    of them a registry server (see the module docstring)."""
    if overwrite:
        raise ConfigError(
            "overwrite is not available when either registry is behind a server: "
            "delete the conflicting versions in the destination first"
        )
    names = source.list_models() if models is None else [validate_model_name(m) for m in models]
    dest.ensure_registry()  # a copy is a save: it may create the destination registry
    sizes: dict[tuple[str, str], int] = {}
    conflicts: list[str] = []
    for name in names:
        held = {r.version: r for r in _records(dest, name)}
        for record in source.list_version_records(name):
            art, there = record.artifact, held.get(record.version)
            sizes[(name, record.version)] = art.size if art is not None else 0
            if there is not None and (there.artifact is None or art is None or there.artifact.sha256 != art.sha256):
                conflicts.append(f"{name} {record.version}")
    if conflicts:
        shown = ", ".join(conflicts[:10]) + (f" and {len(conflicts) - 10} more" if len(conflicts) > 10 else "")
        raise VersionExistsError(
            f"{len(conflicts)} version(s) already exist in the destination with different bytes: {shown}; "
            "nothing was copied"
        )
    report = CopyReport()
    with tempfile.TemporaryDirectory(prefix="modelkeep-copy-") as folder:
        for name in names:
            bundle = Path(folder) / f"{name}.mkb"
            source.export_bundle(name, bundle)
            done = dest.import_bundle(bundle, with_aliases=True)
            bundle.unlink()
            report.copied += done.imported
            report.skipped += done.skipped
            report.bytes_copied += sum(sizes.get(v, 0) for v in done.imported)
    return report


def _records(registry: Any, name: str) -> list[Any]:
    """``name``'s live version records in ``registry`` (none when it has no such model)."""
    try:
        return list(registry.list_version_records(name))
    except KeyError:  # ModelNotFoundError; a registry not created yet says so as a KeyError too
        return []
