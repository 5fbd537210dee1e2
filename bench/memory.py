"""Peak memory (RSS) of save and load, each measured in a fresh subprocess by memory_probe.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import BENCH_DIR, Settings, log, scratch_dir, subprocess_env

METHODS = ("joblib", "pickle", "modelkeep", "modelkeep-native")
PROBE = BENCH_DIR / "memory_probe.py"


def _probe(case: str, method: str, workload: str, root: Path, settings: Settings) -> dict[str, Any]:
    """Run one probe subprocess and return its JSON, or an error record."""
    command = [
        sys.executable, str(PROBE), case, method, workload, str(root),
        "--forest-mb", str(settings.forest_target_mb), "--arrays-mb", str(settings.arrays_mb),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=600)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"error": f"exit {proc.returncode}: {tail[0][:300]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _method_pair(method: str, workload: str, settings: Settings) -> dict[str, Any]:
    """Save then load with one method, in two fresh processes sharing one directory."""
    with scratch_dir(f"memory-{method}-{workload}") as root:
        saved = _probe("save", method, workload, root, settings)
        loaded = _probe("load", method, workload, root, settings) if "error" not in saved else saved
    return {"save": saved, "load": loaded}


def run(settings: Settings, modelkeep: Any, model_bytes: dict[str, int]) -> dict[str, Any]:
    """Memory figures per workload and method; ``model_bytes`` gives each workload's pickled size."""
    methods = METHODS if modelkeep is not None else METHODS[:2]
    out: dict[str, Any] = {}
    for workload, size in model_bytes.items():
        log(f"memory: {workload}")
        out[workload] = {"model_bytes": size}
        for method in methods:
            out[workload][method] = _method_pair(method, workload, settings)
    return out
