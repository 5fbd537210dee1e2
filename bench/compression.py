"""Compressed save: modelkeep's default ``compress=True`` codec against joblib's zlib level 3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from baselines import joblib_read, joblib_save
from common import Settings, compare_interleaved, error_text, log, scratch_dir
from subject import artifact_compression, artifact_size, drop_version, open_registry
from workloads import pickled_size

JOBLIB = "joblib zlib-3+fsync"
MK = "modelkeep compress=True"


def _version(i: int) -> str:
    """The modelkeep version written by repetition ``i``."""
    return str(i + 100)


def _joblib_path(root: Path, i: int) -> Path:
    return root / f"zlib3-{i}.joblib"


def _cases(obj: object, root: Path, registry: Any) -> dict[str, Any]:
    """Timed compressed-save callables."""
    cases: dict[str, Any] = {JOBLIB: lambda i: joblib_save(obj, _joblib_path(root, i), compress=("zlib", 3))}
    if registry is not None:
        cases[MK] = lambda i: registry.save(obj, "compressed", _version(i))
    return cases


def _clear(root: Path, registry: Any) -> Any:
    """A ``before`` hook removing the previous repetition's output."""

    def before(case: str, i: int) -> None:
        if case == MK:
            drop_version(registry, "compressed", _version(i - 1))
        else:
            _joblib_path(root, i - 1).unlink(missing_ok=True)

    return before


def _load_cases(root: Path, registry: Any, last: int) -> dict[str, Any]:
    """Timed loads of the compressed files written by the last save repetition."""
    cases: dict[str, Any] = {"joblib.load (zlib-3)": lambda i: joblib_read(_joblib_path(root, last))}
    if registry is not None:
        cases["modelkeep load (compress=True)"] = lambda i: registry.load("compressed", _version(last))
    return cases


def _sizes(root: Path, registry: Any, last: int) -> dict[str, Any]:
    """Stored sizes of both compressed artifacts, and the codec modelkeep recorded."""
    sizes: dict[str, Any] = {"joblib_bytes": _joblib_path(root, last).stat().st_size}
    if registry is not None:
        try:
            sizes["modelkeep_bytes"] = artifact_size(registry, "compressed", _version(last))
            sizes["modelkeep_codec"] = artifact_compression(registry, "compressed", _version(last))
        except Exception as exc:
            sizes["modelkeep_size_error"] = error_text(exc)
    return sizes


def _measure_one(label: str, obj: object, settings: Settings, modelkeep: Any) -> dict[str, Any]:
    """Compressed save time, size and load time for one object."""
    out: dict[str, Any] = {"model_bytes": pickled_size(obj)}
    repeats = settings.large_repeats
    with scratch_dir(f"compress-{label}") as root:
        registry = None
        if modelkeep is not None:
            try:
                registry = open_registry(modelkeep, root, compress=True)
            except Exception as exc:
                out["modelkeep_error"] = error_text(exc)
        log(f"compression {label}: save")
        out["save"] = compare_interleaved(_cases(obj, root, registry), repeats, before=_clear(root, registry))
        out.update(_sizes(root, registry, repeats - 1))
        log(f"compression {label}: load")
        out["load"] = compare_interleaved(_load_cases(root, registry, repeats - 1), repeats)
        if registry is not None:
            registry.close()
    return out


def run(settings: Settings, modelkeep: Any, objects: dict[str, Any]) -> dict[str, Any]:
    """Measure compressed save for each large workload."""
    return {label: _measure_one(label, obj, settings, modelkeep) for label, obj in objects.items()}
