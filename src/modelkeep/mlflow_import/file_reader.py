"""Read an MLflow file store (``./mlruns``) from its YAML meta files, MLflow not needed.

Layout read::

    mlruns/models/<name>/meta.yaml                 registered model (description, timestamps)
    mlruns/models/<name>/tags/<key>                model tag (file content = value)
    mlruns/models/<name>/aliases/<alias>           alias (file content = version)
    mlruns/models/<name>/version-<n>/meta.yaml     version (source, run_id, current_stage, ...)
    mlruns/models/<name>/version-<n>/tags/<key>    version tag
    mlruns/<exp>/<run_id>/meta.yaml                run (artifact_uri)
    mlruns/<exp>/<run_id>/metrics/<key>            lines "timestamp value [step]"
    mlruns/<exp>/<run_id>/params/<key>             param (file content = value)
    mlruns/<exp>/models/<model_id>/meta.yaml       MLflow 3 logged model (artifact_location)
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .source import SourceModel, SourceRun, SourceVersion


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (symbolic links resolved) lies inside ``root`` (already resolved)."""
    return path.resolve().is_relative_to(root)


def _yaml(path: Path, root: Path) -> dict[str, Any]:
    if not _inside(path, root):
        raise ConfigError(f"MLflow meta file {str(path)!r} is a link to outside the store; refused")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read MLflow meta file {str(path)!r}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _values(folder: Path, root: Path) -> dict[str, str]:
    """Files in ``folder`` (tags, params, aliases) as ``name -> content``; keys may nest (``a/b``).
    A file that is a link to outside the store is left out: its content is never read."""
    if not folder.is_dir() or not _inside(folder, root):
        return {}
    return {
        path.relative_to(folder).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(folder.rglob("*"))
        if path.is_file() and _inside(path, root)
    }


class FileStore:
    """An MLflow ``mlruns`` folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ConfigError(f"MLflow store folder {str(self.root)!r} does not exist")
        if not (self.root / "models").is_dir() and not any(self.root.glob("*/meta.yaml")):
            raise ConfigError(f"{str(self.root)!r} is not an MLflow file store (no models/ and no experiments)")
        self.base: Path | None = self.root.parent
        #: A file store keeps its artifacts inside ``mlruns`` (MLflow's default artifact root).
        self.artifact_root: Path | None = self.root

    def close(self) -> None:
        return None

    def models(self) -> list[SourceModel]:
        registry = self.root / "models"
        out = []
        for folder in sorted(registry.iterdir()) if registry.is_dir() else []:
            if not (folder / "meta.yaml").is_file():
                continue
            meta = _yaml(folder / "meta.yaml", self.root)
            name = str(meta.get("name") or folder.name)
            aliases = {alias: int(v.strip()) for alias, v in _values(folder / "aliases", self.root).items()}
            versions = [
                self._version(name, vdir)
                for vdir in folder.iterdir()
                if vdir.name.startswith("version-") and (vdir / "meta.yaml").is_file()
            ]
            out.append(
                SourceModel(
                    name=name,
                    description=meta.get("description") or None,
                    tags=_values(folder / "tags", self.root),
                    aliases=aliases,
                    versions=sorted(versions, key=lambda v: v.version),
                )
            )
        return out

    def _version(self, name: str, folder: Path) -> SourceVersion:
        meta = _yaml(folder / "meta.yaml", self.root)
        return SourceVersion(
            model_name=name,
            version=int(meta.get("version") or folder.name.removeprefix("version-")),
            created_ms=meta.get("creation_timestamp"),
            description=meta.get("description") or None,
            source=meta.get("source"),
            storage_location=meta.get("storage_location"),
            run_id=meta.get("run_id") or None,
            stage=str(meta.get("current_stage") or "None"),
            tags=_values(folder / "tags", self.root),
            model_id=meta.get("model_id"),
        )

    def _find(self, pattern: str) -> Path | None:
        for path in sorted(self.root.glob(pattern)):
            if path.is_dir() and (path / "meta.yaml").is_file():
                return path
        return None

    def run(self, run_id: str) -> SourceRun | None:
        folder = self._find(f"*/{run_id}")
        if folder is None:
            return None
        meta = _yaml(folder / "meta.yaml", self.root)
        metrics: dict[str, float] = {}
        for key, text in _values(folder / "metrics", self.root).items():
            # Lines are "timestamp value [step ...]"; the latest is MLflow's max of (step, timestamp, value).
            ranks = [
                (int(parts[2]) if len(parts) >= 3 else 0, int(parts[0]), float(parts[1]))
                for parts in (line.split() for line in text.splitlines())
                if len(parts) >= 2
            ]
            if ranks:
                metrics[key] = max(ranks)[2]
        return SourceRun(run_id, meta.get("artifact_uri"), metrics, _values(folder / "params", self.root))

    def logged_model_location(self, model_id: str) -> str | None:
        folder = self._find(f"*/models/{model_id}")
        if folder is None:
            return None
        location = _yaml(folder / "meta.yaml", self.root).get("artifact_location")
        return None if location is None else str(location)


def file_store_root(uri: str) -> Path | None:
    """The folder a ``file:`` URI or plain path names, or ``None`` for other schemes."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and uri[1:3] in (":\\", ":/")):  # C:\ paths
        return Path(uri)
    return None
