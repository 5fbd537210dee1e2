"""Find a registered version's MLflow model folder (the one holding ``MLmodel``) on disk.

Where MLflow says the folder is, in order: the version's ``storage_location``; its ``source``
(``models:/m-<id>`` -> the logged model's ``artifact_location``; ``runs:/<run_id>/<path>`` ->
the run's ``artifact_uri`` + path; anything else is a URI). Only local (``file:``) locations are
read. MLflow records absolute paths; when a store was moved and the recorded path is gone, the
same path is looked for under the store's folder, longest matching tail first.

Whoever wrote the store chooses every one of those locations, so a folder is used only when it
lies inside the store's artifact root (``MlflowStore.artifact_root``, or ``--artifacts-dir``)
once symbolic links are resolved; a location elsewhere is refused, naming it.
"""

from __future__ import annotations

import logging
import urllib.parse
from pathlib import Path, PurePosixPath

from ..errors import ArtifactNotFoundError, IntegrityError
from .file_reader import file_store_root
from .source import MlflowStore, SourceVersion

logger = logging.getLogger("modelkeep")


class UnsupportedLocation(ArtifactNotFoundError):
    """The artifact lives somewhere this importer does not read (``mlflow-artifacts:``, ``dbfs:``, ...)."""


class OutsideArtifactRoot(IntegrityError):
    """A location the MLflow store records lies outside its artifact root: refused, never read."""


def model_folder(store: MlflowStore, version: SourceVersion) -> Path:
    """The local folder of ``version``'s MLflow model, inside the store's artifact root (symbolic
    links resolved); raises :class:`ArtifactNotFoundError` or :class:`OutsideArtifactRoot`."""
    root = store.artifact_root.resolve() if store.artifact_root is not None else None
    tried: list[str] = []
    outside: list[Path] = []
    for uri in _candidates(store, version):
        tried.append(uri)
        for folder in _local(uri, store.base):
            real = folder.resolve()
            if root is None or not real.is_relative_to(root):
                if folder.exists():
                    outside.append(real)
                continue
            if (real / "MLmodel").is_file() and (real / "MLmodel").resolve().is_relative_to(root):
                return real
    where = f"{version.model_name} version {version.version}"
    if outside:
        allowed = f"the MLflow store's artifact root {str(root)!r}" if root else "no artifact root (none is known)"
        raise OutsideArtifactRoot(
            f"{where}: refused {str(outside[0])!r}: the store points there, but artifacts are read only from "
            f"{allowed}; if that folder is genuine, pass --artifacts-dir (artifacts_dir=) naming the folder "
            "that holds the store's artifacts"
        )
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


def _local(uri: str, base: Path | None) -> list[Path]:
    """Where ``uri`` may be on disk: the path it names, then (if that one is gone or not usable)
    the same path relocated under ``base``."""
    path = file_store_root(uri)
    if path is None:
        return []
    if not path.is_absolute() and base is not None:
        path = base / path
    if base is None:
        return [path]
    moved = relocate(path, base)
    return [path] if moved is None or moved == path else [path, moved]


def relocate(path: Path, base: Path) -> Path | None:
    """``path``'s longest tail that exists under ``base`` (for stores moved since they were written)."""
    parts = PurePosixPath(urllib.parse.unquote(path.as_posix())).parts[1:]
    for start in range(len(parts)):
        candidate = base.joinpath(*parts[start:])
        if candidate.exists():
            logger.debug("relocated %s to %s", path, candidate)
            return candidate
    return None
