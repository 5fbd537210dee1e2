"""MLflow baseline: a private virtual environment (bench/.venv-mlflow) and a subprocess worker.

MLflow is not a project dependency. The venv is created with ``python -m venv``
and ``pip install mlflow scikit-learn`` on the first run and reused afterwards.
If anything fails, the result says so and carries no numbers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import BENCH_DIR, TMP_ROOT, Settings, log

VENV = BENCH_DIR / ".venv-mlflow"
WORKER = BENCH_DIR / "mlflow_worker.py"
INSTALL_LOG = TMP_ROOT / "mlflow-install.log"


def _venv_python() -> Path:
    return VENV / "bin" / "python"


def _usable() -> bool:
    """True when the venv exists and imports both mlflow and scikit-learn."""
    if not _venv_python().exists():
        return False
    probe = subprocess.run([str(_venv_python()), "-c", "import mlflow, sklearn"], capture_output=True)
    return probe.returncode == 0


def ensure_venv() -> str | None:
    """Create and fill the MLflow venv if needed; returns an error text on failure."""
    if _usable():
        return None
    log("mlflow: creating bench/.venv-mlflow (pip install mlflow scikit-learn; takes a few minutes)")
    TMP_ROOT.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", str(VENV)],
        [str(_venv_python()), "-m", "pip", "install", "--quiet", "mlflow", "scikit-learn"],
    ]
    with open(INSTALL_LOG, "w") as log_file:
        for step in steps:
            try:
                code = subprocess.run(step, stdout=log_file, stderr=subprocess.STDOUT, timeout=1200).returncode
            except subprocess.TimeoutExpired:
                return f"`{' '.join(step[-3:])}` timed out (log: {INSTALL_LOG})"
            if code != 0:
                return f"`{' '.join(step[-3:])}` exited {code} (log: {INSTALL_LOG})"
    return None if _usable() else "the venv was created but `import mlflow, sklearn` fails"


def _worker_command(settings: Settings) -> list[str]:
    return [
        str(_venv_python()), str(WORKER), "--tmp", str(TMP_ROOT),
        "--small-repeats", str(settings.mlflow_small_repeats),
        "--large-repeats", str(settings.mlflow_large_repeats),
        "--forest-mb", str(settings.forest_target_mb),
    ]  # fmt: skip


def run(settings: Settings) -> dict[str, Any]:
    """MLflow timings as reported by the worker, or ``{"error": ...}``."""
    error = ensure_venv()
    if error is not None:
        return {"error": f"MLflow install failed: {error}"}
    log("mlflow: measuring in its venv")
    try:
        proc = subprocess.run(_worker_command(settings), capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return {"error": "the MLflow worker timed out after 900 s"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        return {"error": f"the MLflow worker exited {proc.returncode}: {' | '.join(tail)[:500]}"}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": f"the MLflow worker printed no JSON: {proc.stdout[-300:]!r}"}
