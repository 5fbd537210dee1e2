"""What a model was saved with: Python, platform, and the versions of the packages it uses.

At save, every top-level package named by the artifact (the globals a pickle
references, the class a framework format rebuilds, the framework itself) is
recorded, beside numpy, scikit-learn and joblib when they are imported. So a
pipeline holding a DataFrame records pandas, and a state_dict records torch.

At load, :func:`diff` compares the record with the running process; the
registry reports the differences in one :class:`EnvironmentMismatchWarning`
whose ``.diff`` holds them as data.
"""

from __future__ import annotations

import functools
import platform
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: Packages recorded whenever they are imported (module name -> shown name).
TRACKED = {"numpy": "numpy", "sklearn": "scikit-learn", "joblib": "joblib"}
#: Top-level names that are not installable packages.
_NOT_PACKAGES = frozenset({"builtins", "__main__", "__builtin__", "copy_reg"})


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    from importlib.metadata import packages_distributions

    return dict(packages_distributions())


@functools.lru_cache(maxsize=256)
def _distribution_name(module: str) -> str | None:
    """The installed distribution that provides the top-level ``module`` (``sklearn`` ->
    ``scikit-learn``), or ``None`` for the standard library and unknown modules."""
    if module in TRACKED:
        return TRACKED[module]
    if module in _NOT_PACKAGES or module in sys.stdlib_module_names or module.startswith("_"):
        return None
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        dist_version(module)
        return module
    except PackageNotFoundError:
        pass
    found = _distributions().get(module)
    return found[0] if found else None


def _module_version(module: str) -> str | None:
    """The version of an importable module: its ``__version__`` if imported, else its
    distribution's (looked up under the distribution's name, e.g. scikit-learn)."""
    mod = sys.modules.get(module)
    version = getattr(mod, "__version__", None) if mod is not None else None
    if isinstance(version, str):
        return version
    for dist in dict.fromkeys((_distribution_name(module) or module, module)):
        found = _installed(dist)
        if found is not None:
            return found
    return None


def modules_of(extra: dict[str, Any] | None, format_name: str | None = None) -> set[str]:
    """Top-level modules an artifact names: its recorded globals (``module.name``), the
    class a framework format rebuilds (``module:Class``), and a framework format's package."""
    extra = extra or {}
    out: set[str] = set()
    for g in extra.get("globals") or []:
        out.add(str(g).split(".", 1)[0].split(":", 1)[0])
    if isinstance(extra.get("class"), str):
        out.add(extra["class"].split(".", 1)[0].split(":", 1)[0])
    if format_name in ("xgboost", "lightgbm", "catboost", "torch", "keras"):
        out.add(format_name)
        if format_name == "torch":
            out.add("safetensors")
    return out


def capture(model: Any, modules: Iterable[str] = ()) -> dict[str, Any]:
    """The environment a model is being saved in: Python, platform, and the version of
    every package in ``modules`` (see :func:`modules_of`), of the model's own package,
    and of numpy / scikit-learn / joblib when imported."""
    top = type(model).__module__.split(".", 1)[0]
    wanted = {top, *modules} | {m for m in TRACKED if m in sys.modules}
    packages: dict[str, str] = {}
    for module in wanted:
        shown = _distribution_name(module)
        if shown is None:
            continue
        v = _module_version(module)
        if v is not None:
            packages[shown] = v
    return {
        "python": platform.python_version(),
        "platform": f"{platform.system()}-{platform.machine()}",
        "packages": dict(sorted(packages.items())),
    }


@functools.lru_cache(maxsize=256)
def _installed(distribution: str) -> str | None:
    """The installed version of ``distribution``, read from its metadata once per process (a
    load compares it with the record every time: ~0.7 ms a lookup, for a package the process
    has not imported)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version(distribution)
    except PackageNotFoundError:
        return None


def _release(version: str | None) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in (version or "").split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


@dataclass(frozen=True)
class Change:
    """One difference: ``what`` (a package name, ``python`` or ``platform``), the value
    recorded at save, the running one (``None``: not installed), and how much it matters:
    ``"major"`` (or missing / another platform), ``"minor"``, or ``"patch"``."""

    what: str
    saved: str | None
    running: str | None
    level: str

    def __str__(self) -> str:
        return f"{self.what} {self.saved} -> {self.running or 'not installed'}"


@dataclass(frozen=True)
class EnvironmentDiff:
    """Differences between a recorded environment and the running one."""

    changes: list[Change] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changes)

    def __str__(self) -> str:
        return "; ".join(str(c) for c in self.changes)

    def to_dict(self) -> dict[str, Any]:
        return {c.what: {"saved": c.saved, "running": c.running, "level": c.level} for c in self.changes}

    @property
    def significant(self) -> list[Change]:
        """Changes of a major or minor version, a missing package, Python or the platform."""
        return [c for c in self.changes if c.level != "patch"]


class EnvironmentMismatchWarning(UserWarning):
    """Issued once per load when the model was saved under other versions; ``.diff`` has the data."""

    def __init__(self, message: str, diff: EnvironmentDiff) -> None:
        super().__init__(message)
        self.diff = diff


def _level(saved: str | None, running: str | None) -> str:
    if running is None or saved is None:
        return "major"
    a, b = _release(saved), _release(running)
    if a[:1] != b[:1]:
        return "major"
    if a[:2] != b[:2]:
        return "minor"
    return "patch"


def diff(recorded: dict[str, Any] | None) -> EnvironmentDiff:
    """How the running process differs from ``recorded`` (a ``ModelMetadata.environment``)."""
    if not recorded:
        return EnvironmentDiff()
    changes: list[Change] = []
    now_python = platform.python_version()
    if recorded.get("python") and recorded["python"] != now_python:
        changes.append(Change("python", recorded["python"], now_python, _level(recorded["python"], now_python)))
    now_platform = f"{platform.system()}-{platform.machine()}"
    if recorded.get("platform") and recorded["platform"] != now_platform:
        changes.append(Change("platform", recorded["platform"], now_platform, "major"))
    reverse = {shown: module for module, shown in TRACKED.items()}
    for shown, then in (recorded.get("packages") or {}).items():
        now = _module_version(reverse.get(shown, shown)) or _installed(shown)
        if now != then:
            changes.append(Change(shown, then, now, _level(then, now)))
    return EnvironmentDiff(changes)


def differences(recorded: dict[str, Any]) -> list[str]:
    """Human-readable differences between ``recorded`` and this process."""
    return [str(c) for c in diff(recorded).changes]


def report(record: Any) -> EnvironmentDiff:
    """Log and warn (one :class:`EnvironmentMismatchWarning`) when ``record`` (a
    ``ModelMetadata``) was saved in an environment that differs from this one."""
    import logging
    import warnings

    found = diff(record.environment)
    if found:
        message = f"model '{record.model_name}' version {record.version} was saved in a different environment: {found}"
        logging.getLogger("modelkeep").warning("%s", message)
        warnings.warn(EnvironmentMismatchWarning(message, found), stacklevel=3)
    return found
