"""examples/quickstart.py: the README's first command must work as documented."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from modelkeep import ModelPersistence

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


def _check_registry(models_dir: Path, expected_versions: list[str]) -> None:
    with ModelPersistence(models_dir=models_dir) as p:
        assert p.list_models() == ["iris_classifier"]
        assert p.list_versions("iris_classifier") == expected_versions
        records = p.list_version_records("iris_classifier")
        for rec in records:
            assert rec.model_type == "LogisticRegression"
            assert 0.0 <= rec.metadata["accuracy"] <= 1.0 and 0.0 <= rec.metadata["f1_score"] <= 1.0
            assert rec.metadata["training_samples"] == 105 and rec.metadata["dataset_version"] == "iris-v1"
        assert [r.metadata["model_params"]["C"] for r in records][-3:] == [0.01, 0.1, 1.0]


def test_quickstart_main_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``main(models_dir)`` saves three versions, compares them and loads the latest."""
    main = runpy.run_path(str(EXAMPLE))["main"]
    models_dir = tmp_path / "qs"
    main(str(models_dir))
    out = capsys.readouterr().out
    saved = re.findall(r"^saved (.+)$", out, flags=re.M)
    assert [Path(s) for s in saved] == [
        models_dir / "iris_classifier" / v / f"iris_classifier_v{v}.joblib" for v in ("1.0.0", "1.0.1", "1.0.2")
    ]
    assert all(Path(s).is_file() for s in saved)
    assert "models: ['iris_classifier']" in out
    assert "versions: ['1.0.0', '1.0.1', '1.0.2']" in out
    assert "loaded latest: version 1.0.2 (LogisticRegression" in out
    assert "predictions identical to the saved model" in out
    _check_registry(models_dir, ["1.0.0", "1.0.1", "1.0.2"])


def test_quickstart_second_run_adds_versions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = runpy.run_path(str(EXAMPLE))["main"]
    models_dir = tmp_path / "qs"
    main(str(models_dir))
    main(str(models_dir))
    out = capsys.readouterr().out
    assert "versions: ['1.0.0', '1.0.1', '1.0.2', '1.0.3', '1.0.4', '1.0.5']" in out
    assert "loaded latest: version 1.0.5" in out
    _check_registry(models_dir, [f"1.0.{i}" for i in range(6)])


def test_quickstart_script_as_documented(tmp_path: Path) -> None:
    """Run exactly as the README says: ``python examples/quickstart.py`` (default ./quickstart_models)."""
    result = subprocess.run([sys.executable, str(EXAMPLE)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "loaded latest: version 1.0.2" in result.stdout
    assert "comparison:" in result.stdout and "accuracy" in result.stdout
    _check_registry(tmp_path / "quickstart_models", ["1.0.0", "1.0.1", "1.0.2"])
