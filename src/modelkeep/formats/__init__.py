"""Serialization formats, looked up by name and imported lazily."""

from __future__ import annotations

import importlib

from ..errors import ConfigError
from .base import Format

#: format name -> "module:Class", imported on first use.
FORMATS: dict[str, str] = {
    "joblib": "modelkeep.formats.joblib_format:JoblibFormat",
    "pickle": "modelkeep.formats.pickle_format:PickleFormat",
    "skops": "modelkeep.formats.skops_format:SkopsFormat",
    "native": "modelkeep.formats.native:NativeFormat",
    "archive": "modelkeep.formats.archive:ArchiveFormat",
    # Pickle-free: each framework's own model format (formats/frameworks.py).
    "auto": "modelkeep.formats.frameworks:AutoFormat",
    "xgboost": "modelkeep.formats.frameworks:XGBoostFormat",
    "lightgbm": "modelkeep.formats.frameworks:LightGBMFormat",
    "catboost": "modelkeep.formats.frameworks:CatBoostFormat",
    "torch": "modelkeep.formats.frameworks:TorchFormat",
    "keras": "modelkeep.formats.frameworks:KerasFormat",
}

_cache: dict[str, Format] = {}


def get_format(name: str) -> Format:
    """The :class:`Format` registered as ``name``; :class:`ConfigError` if unknown."""
    fmt = _cache.get(name)
    if fmt is not None:
        return fmt
    target = FORMATS.get(name)
    if target is None:
        allowed = ", ".join(repr(n) for n in FORMATS)
        raise ConfigError(f"unknown serialization_format {name!r}; allowed values: {allowed}")
    module, cls = target.split(":")
    try:
        fmt = getattr(importlib.import_module(module), cls)()
    except ImportError as exc:
        from ..errors import BackendUnavailableError

        raise BackendUnavailableError(
            f'the {name!r} format needs an optional package: {exc} (pip install "modelkeep[{name}]")'
        ) from exc
    _cache[name] = fmt
    return fmt


def format_for_suffix(filename: str) -> tuple[str, bool]:
    """Guess ``(format, compressed)`` from a file name, for ``export_file``."""
    lower = filename.lower()
    if lower.endswith((".pkl.gz", ".pickle.gz")):
        return "pickle", True
    if lower.endswith((".pkl", ".pickle")):
        return "pickle", False
    if lower.endswith(".joblib"):
        return "joblib", False
    if lower.endswith((".joblib.gz", ".joblib.z", ".joblib.zst")):
        return "joblib", True
    raise ConfigError(f"cannot tell the format from {filename!r}: use a .joblib, .pkl, .pickle or .pkl.gz file name")


__all__ = ["FORMATS", "Format", "format_for_suffix", "get_format"]
