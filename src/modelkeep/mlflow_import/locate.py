"""Find a registered version's MLflow model folder (the one holding ``MLmodel``) on disk.

Where MLflow says the folder is, in order: the version's ``storage_location``; its ``source``
(``models:/m-<id>`` -> the logged model's ``artifact_location``; ``runs:/<run_id>/<path>`` ->
the run's ``artifact_uri`` + path; anything else is a URI). Only local (``file:``) locations are
read. MLflow records absolute paths; when a store was moved and the recorded path is gone, the
same path is looked for under the store's folder, longest matching tail first.
"""

from __future__ import annotations

import logging
import urllib.parse
from pathlib import Path, PurePosixPath

from ..errors import ArtifactNotFoundError
from .file_reader import file_store_root
from .source import MlflowStore, SourceVersion

logger = logging.getLogger("modelkeep")


class UnsupportedLocation(ArtifactNotFoundError):
    """The artifact lives somewhere this importer does not read (``mlflow-artifacts:``, ``dbfs:``, ...)."""


def model_folder(store: MlflowStore, version: SourceVersion) -> Path:
    """The local folder of ``version``'s MLflow model; raises :class:`ArtifactNotFoundError`."""
    tried: list[str] = []
    for uri in _candidates(store, version):
        folder = _local(uri, store.base)
        tried.append(uri)
        if folder is not None and (folder / "MLmodel").is_file():
            return folder
    where = f"{version.model_name} version {version.version}"
    remote = [u for u in tried if file_store_root(u) is None]
    if remote and len(remote) == len(tried):
        raise UnsupportedLocation(
            f"{where}: its artifacts are at {remote[0]!r}, which is not a local path; "
            "download them (mlflow artifacts download) into a local store and import from there"
        )
    raise ArtifactNotFoundError(f"{where}: no MLmodel file found at {', '.join(map(repr, tried)) or 'any location'}")


def _candidates(store: MlflowStore, version: SourceVersion) -> list[str]:
    out: list[str] = []
    if version.storage_location:
        out.append(version.storage_location)
    source = version.source or ""
    if source.startswith("models:/m-") or version.model_id:
        model_id = version.model_id or source.removeprefix("models:/").split("/", 1)[0]
        location = store.logged_model_location(model_id)
        if location:
            out.append(location.rstrip("/") + "/artifacts")
            out.append(location)
    elif source.startswith("runs:/"):
        run_id, _, path = source.removeprefix("runs:/").partition("/")
        run = store.run(run_id)
        if run is not None and run.artifact_uri:
            out.append(run.artifact_uri.rstrip("/") + "/" + path)
    elif source:
        out.append(source)
    return list(dict.fromkeys(out))


def _local(uri: str, base: Path | None) -> Path | None:
    path = file_store_root(uri)
    if path is None:
        return None
    if not path.is_absolute() and base is not None:
        path = base / path
    if path.exists() or base is None:
        return path
    return relocate(path, base)


def relocate(path: Path, base: Path) -> Path | None:
    """``path``'s longest tail that exists under ``base`` (for stores moved since they were written)."""
    parts = PurePosixPath(urllib.parse.unquote(path.as_posix())).parts[1:]
    for start in range(len(parts)):
        candidate = base.joinpath(*parts[start:])
        if candidate.exists():
            logger.debug("relocated %s to %s", path, candidate)
            return candidate
    return None
