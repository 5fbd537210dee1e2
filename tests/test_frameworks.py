"""Models from every major framework round-trip: saved here, loaded in a fresh process,
with identical predictions, in every format that applies (and with mmap_mode where it applies).

One subprocess per framework loads all of that framework's cases, to keep the runtime modest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelkeep import ModelPersistence
from tests import _framework_models as fm

ROOT = Path(__file__).resolve().parents[1]

#: (format, compress, mmap_mode at load): the pickle-based formats every object goes through.
PICKLING: list[tuple[str, Any, str | None]] = [
    ("joblib", True, None),
    ("joblib", False, "r"),
    ("pickle", True, None),
    ("pickle", False, None),
    ("native", False, "r"),
]
#: The format ``auto`` must pick (the framework's own, pickle-free format where there is one).
AUTO_PICK = {
    "xgb_classifier": "xgboost",
    "xgb_regressor": "xgboost",
    "xgb_booster": "xgboost",
    "lgb_booster": "lightgbm",
    "catboost_classifier": "catboost",
    "catboost_regressor": "catboost",
    "torch_state_dict": "torch",
    "keras_sequential": "keras",
}
#: Extra formats per case, beyond PICKLING and auto.
EXTRA = {"sklearn_pipeline": [("skops", True, None), ("skops", False, None)]}
#: Keras models are only stored in Keras's own format: see test_keras_pickle_formats_are_refused_at_save.
PICKLE_FREE_ONLY = {"keras_sequential"}


def _specs(case: str) -> list[tuple[str, Any, str | None]]:
    specs = [] if case in PICKLE_FREE_ONLY else list(PICKLING)
    specs.append(("auto", True, None))
    return specs + EXTRA.get(case, [])


def _run_fresh(models_dir: Path, cases: list[dict[str, Any]], tmp_path: Path) -> list[str]:
    todo = tmp_path / "cases.json"
    todo.write_text(json.dumps(cases))
    env = {**os.environ, "KERAS_BACKEND": "torch", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests._framework_models", str(models_dir), str(todo)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("framework", list(fm.BUILDERS))
def test_framework_models_round_trip_in_a_fresh_process(framework: str, tmp_path: Path) -> None:
    models = fm.BUILDERS[framework]()
    models_dir = tmp_path / "models"
    cases: list[dict[str, Any]] = []
    with ModelPersistence(models_dir=models_dir) as p:
        for case, model in models.items():
            expected = tmp_path / f"{case}.npz"
            np.savez(expected, *fm.predict(case, model))
            for i, (fmt, compress, mmap_mode) in enumerate(_specs(case)):
                name = f"{case}-{fmt}-{i}"
                rec = p.save_version(model, name, serialization_format=fmt, compress=compress)
                assert rec.artifact is not None
                if fmt == "auto":
                    assert rec.artifact.format == AUTO_PICK.get(case, "joblib"), case
                else:
                    assert rec.artifact.format == fmt
                cases.append({"name": name, "case": case, "expected": str(expected), "mmap_mode": mmap_mode})
    failures = _run_fresh(models_dir, cases, tmp_path)
    assert failures == []
