"""What a model was saved with: Python, platform, and key package versions."""

from __future__ import annotations

import platform
import sys
from typing import Any

#: Packages recorded whenever they are imported (module name -> shown name).
TRACKED = {"numpy": "numpy", "sklearn": "scikit-learn", "joblib": "joblib"}


def _module_version(module: str) -> str | None:
    """The version of an importable module: its ``__version__`` if imported, else its
    distribution's (looked up under the distribution's name, e.g. scikit-learn)."""
    mod = sys.modules.get(module)
    version = getattr(mod, "__version__", None) if mod is not None else None
    if isinstance(version, str):
        return version
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    for dist in dict.fromkeys((TRACKED.get(module, module), module)):
        try:
            return dist_version(dist)
        except PackageNotFoundError:
            continue
    return None


def capture(model: Any) -> dict[str, Any]:
    """The environment a model is being saved in."""
    top = type(model).__module__.split(".", 1)[0]
    packages: dict[str, str] = {}
    for module in {top, *TRACKED} - {"builtins", "__main__"}:
        if module in sys.modules or module == top:
            v = _module_version(module)
            if v is not None:
                packages[TRACKED.get(module, module)] = v
    return {
        "python": platform.python_version(),
        "platform": f"{platform.system()}-{platform.machine()}",
        "packages": dict(sorted(packages.items())),
    }


def differences(recorded: dict[str, Any]) -> list[str]:
    """Human-readable differences between ``recorded`` and this process."""
    if not recorded:
        return []
    out: list[str] = []
    now_python = platform.python_version()
    if recorded.get("python") and recorded["python"] != now_python:
        out.append(f"python {recorded['python']} -> {now_python}")
    now_platform = f"{platform.system()}-{platform.machine()}"
    if recorded.get("platform") and recorded["platform"] != now_platform:
        out.append(f"platform {recorded['platform']} -> {now_platform}")
    reverse = {shown: module for module, shown in TRACKED.items()}
    for shown, then in (recorded.get("packages") or {}).items():
        now = _module_version(reverse.get(shown, shown))
        if now != then:
            out.append(f"{shown} {then} -> {now or 'not installed'}")
    return out
