"""The quarantine: a version nobody trusted is loaded in a capped child process first.

Crafted LightGBM, xgboost and scikit-learn ``Tree`` versions must be refused with a message
naming the signal that killed the child. The structural checks (tests/test_native_loaders.py)
already refuse these files, so to show the quarantine *itself* catches a crash, its children
run with those checks switched off: a ``sitecustomize`` on ``PYTHONPATH`` (this test's only)
replaces them with no-ops in every child interpreter. The test process keeps its checks, so a
quarantine that let a crash through would end in the checks' refusal, failing the match below,
never in a crash of pytest.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelkeep import ModelPersistence, quarantine
from modelkeep.config import load_settings
from modelkeep.errors import ConfigError, UnsafeModelError
from tests._crafted import data, lightgbm_booster, plant, set_tree_field, ubj_with_count, xgboost_booster

lgb = pytest.importorskip("lightgbm")
xgb = pytest.importorskip("xgboost")

CHECKS_OFF = """
from modelkeep.formats import native_checks, state_checks

def _skip(*args, **kwargs):
    return None

for _name in ("check_lightgbm_model", "check_xgboost_model", "check_xgboost_serialized"):
    setattr(native_checks, _name, _skip)
state_checks.build_check_for(object)  # imports every check module, then the no-ops replace them all
for _key in list(state_checks._BUILD_CHECKS):
    state_checks.register_build(*_key)(_skip)
for _key in list(state_checks._CALL_CHECKS):
    state_checks.register_call(*_key)(_skip)
state_checks.check_loaded = _skip  # a final pass over the loaded graph, where there is one
"""


@pytest.fixture
def checks_off_in_children(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(CHECKS_OFF)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))


def _registry(tmp_path: Path, fmt: str = "auto", **kwargs: Any) -> ModelPersistence:
    return ModelPersistence(tmp_path / "models", serialization_format=fmt, compress=False, **kwargs)


def _artifact_bytes(p: ModelPersistence, name: str) -> bytes:
    art = p.get_version(name, "1.0.0").artifact
    assert art is not None
    return Path(str(p.store.local_path(art.key))).read_bytes()


def _refused(p: ModelPersistence, name: str) -> str:
    before = quarantine.children_started()
    with pytest.raises(UnsafeModelError) as info:
        p.load(name, "1.0.0")
    assert quarantine.children_started() == before + 1
    return str(info.value)


def test_an_honest_unsigned_version_loads_in_quarantine_and_predicts_the_same(tmp_path: Path) -> None:
    X, _ = data()
    booster = lightgbm_booster()
    with _registry(tmp_path) as p:
        p.save(booster, "lgb", "1.0.0")
        plant(p, "lgb", "1.0.0", booster.model_to_string().encode())  # the same bytes, unsigned
        before = quarantine.children_started()
        model = p.load("lgb", "1.0.0")
        assert quarantine.children_started() == before + 1
        np.testing.assert_array_equal(model.predict(X), booster.predict(X))
        report = quarantine.check_loadable(p, "lgb", "1.0.0")
        assert report is not None and report.predicted and report.predict_note is None


def test_own_signed_versions_skip_quarantine_and_never_or_always_override(tmp_path: Path) -> None:
    X, y = data()
    from sklearn.tree import DecisionTreeClassifier

    tree = DecisionTreeClassifier(max_depth=3).fit(X, y)
    with _registry(tmp_path, fmt="joblib") as p:
        p.save(tree, "tree", "1.0.0")
        before = quarantine.children_started()
        np.testing.assert_array_equal(p.load("tree", "1.0.0").predict(X), tree.predict(X))
        assert quarantine.children_started() == before  # signed by this user's own key: no child
        assert quarantine.check_loadable(p, "tree", "1.0.0") is None
        report = quarantine.check_loadable(p, "tree", "1.0.0", mode="always")  # a server testing anyway
        assert report is not None and report.predicted
        assert quarantine.children_started() == before + 1
        plant(p, "tree", "1.0.0", _artifact_bytes(p, "tree"))
    with _registry(tmp_path, fmt="joblib", quarantine="never") as p:
        p.load("tree", "1.0.0")
        assert quarantine.children_started() == before + 1  # unsigned, but quarantine is off


def test_a_crafted_lightgbm_version_is_refused_naming_the_signal(tmp_path: Path, checks_off_in_children: None) -> None:
    booster = lightgbm_booster()
    text = booster.model_to_string()
    with _registry(tmp_path) as p:
        for name, crafted in {
            "abort": set_tree_field(text, "num_cat", "2"),  # C++ exception inside OpenMP: SIGABRT
            "segv": set_tree_field(text, "split_feature", "90000000 1 0"),  # read far out of bounds
        }.items():
            p.save(booster, name, "1.0.0")
            plant(p, name, "1.0.0", crafted.encode())
        assert _refused(p, "abort").startswith(
            "refused to load: model 'abort' version '1.0.0' crashed a quarantined test load (SIGABRT"
        )
        assert "crashed a quarantined test load (SIGSEGV" in _refused(p, "segv")


def test_a_crafted_xgboost_version_is_refused_naming_the_signal(tmp_path: Path, checks_off_in_children: None) -> None:
    booster = xgboost_booster()
    with _registry(tmp_path) as p:
        p.save(booster, "xgb", "1.0.0")
        plant(p, "xgb", "1.0.0", ubj_with_count(bytes(booster.save_raw("ubj"))))
        assert "model 'xgb' version '1.0.0' crashed a quarantined test load (SIGSEGV" in _refused(p, "xgb")


def test_a_crafted_sklearn_tree_is_refused_when_its_smoke_predict_crashes(
    tmp_path: Path, checks_off_in_children: None
) -> None:
    """A planted ``DecisionTreeClassifier`` whose root points a million nodes past its array:
    it loads, and ``predict`` (run on an input built from the version's signature) segfaults."""
    import joblib
    from sklearn.tree import DecisionTreeClassifier

    X, y = data()
    tree = DecisionTreeClassifier(max_depth=3).fit(X, y)
    state = tree.tree_.__getstate__()
    nodes = state["nodes"].copy()
    nodes["left_child"][0] = nodes["right_child"][0] = 10**9
    state["nodes"] = nodes
    tree.tree_.__setstate__(state)  # sklearn checks dtypes and shapes, not indices
    path = tmp_path / "evil.joblib"
    joblib.dump(tree, path)
    with _registry(tmp_path, fmt="joblib") as p:
        p.save(DecisionTreeClassifier(max_depth=3).fit(X, y), "tree", "1.0.0")
        plant(p, "tree", "1.0.0", path.read_bytes())
        assert "model 'tree' version '1.0.0' crashed a quarantined test load (SIGSEGV" in _refused(p, "tree")


def test_a_load_that_hangs_is_stopped_at_the_timeout(tmp_path: Path, checks_off_in_children: None) -> None:
    booster = lightgbm_booster()
    with _registry(tmp_path, quarantine_timeout=5) as p:
        p.save(booster, "loop", "1.0.0")
        plant(p, "loop", "1.0.0", set_tree_field(booster.model_to_string(), "left_child", "0 -1 -3").encode())
        message = _refused(p, "loop")
    assert "did not finish a quarantined test load within 5 s (quarantine_timeout)" in message


def test_a_load_past_the_memory_cap_is_refused_naming_the_cap(tmp_path: Path) -> None:
    big = np.ones(8 << 20)  # 64 MiB of honest data, unsigned, under a 200 MiB cap (Python alone: ~115 MiB)
    with _registry(tmp_path, fmt="joblib", quarantine_memory_mb=200) as p:
        p.save(big, "big", "1.0.0")
        plant(p, "big", "1.0.0", _artifact_bytes(p, "big"))
        message = _refused(p, "big")
    assert "under its cap of 200 MiB (quarantine_memory_mb)" in message


def test_a_python_error_in_the_child_is_raised_as_the_same_modelkeep_error(tmp_path: Path) -> None:
    """Without a crash, the child's refusal comes back as is (here: the structural check's)."""
    booster = lightgbm_booster()
    with _registry(tmp_path) as p:
        p.save(booster, "lgb", "1.0.0")
        plant(p, "lgb", "1.0.0", set_tree_field(booster.model_to_string(), "num_cat", "2").encode())
        assert "tree 0 has no cat_boundaries" in _refused(p, "lgb")


def test_the_setting_comes_from_config_env_and_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELKEEP_QUARANTINE", "ALWAYS")
    monkeypatch.setenv("MODELKEEP_QUARANTINE_TIMEOUT", "30")
    options = load_settings().persistence_options()
    assert options["quarantine"] == "always" and options["quarantine_timeout"] == 30
    assert load_settings(quarantine="never").persistence_options()["quarantine"] == "never"
    monkeypatch.setenv("MODELKEEP_QUARANTINE", "sometimes")
    with pytest.raises(ConfigError, match="MODELKEEP_QUARANTINE"):
        load_settings()
    monkeypatch.delenv("MODELKEEP_QUARANTINE")
    with pytest.raises(ConfigError, match="quarantine must be one of"):
        ModelPersistence(tmp_path / "m", quarantine="sometimes")

    from click.testing import CliRunner

    from modelkeep.cli import cli

    models = tmp_path / "cli"
    with ModelPersistence(models, serialization_format="pickle", compress=False) as p:
        p.save({"w": [1, 2]}, "m", "1.0.0")
        plant(p, "m", "1.0.0", pickle.dumps({"w": [1, 2]}))
    before = quarantine.children_started()
    runner = CliRunner()
    out = tmp_path / "out.pkl"
    args = ["--models-dir", str(models), "--quarantine", "never", "load", "--model-name", "m", "--output", str(out)]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert quarantine.children_started() == before
    result = runner.invoke(
        cli, ["--models-dir", str(models), "load", "--model-name", "m", "--output", str(out), "--force"]
    )
    assert result.exit_code == 0, result.output
    assert quarantine.children_started() == before + 1


def test_without_memfd_the_child_reads_a_private_file_checked_by_its_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    X, y = data()
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit(X, y)
    with _registry(tmp_path, fmt="pickle") as p:
        p.save(model, "lr", "1.0.0")
        plant(p, "lr", "1.0.0", pickle.dumps(model))
        monkeypatch.delattr(os, "memfd_create")  # as on macOS
        before = quarantine.children_started()
        np.testing.assert_array_equal(p.load("lr", "1.0.0").predict(X), model.predict(X))
        assert quarantine.children_started() == before + 1


def test_an_unsigned_native_version_loads_its_blobs_in_quarantine(tmp_path: Path) -> None:
    arrays = {"w": np.arange(1 << 18, dtype=np.float64), "b": np.ones(1 << 17)}
    with _registry(tmp_path, fmt="native") as p:
        p.save(arrays, "arrays", "1.0.0")
        assert p.get_version("arrays", "1.0.0").artifact.extra["blobs"]  # type: ignore[union-attr]
        plant(p, "arrays", "1.0.0", _artifact_bytes(p, "arrays"))
        before = quarantine.children_started()
        loaded = p.load("arrays", "1.0.0")
        assert quarantine.children_started() == before + 1
        for key, value in arrays.items():
            np.testing.assert_array_equal(loaded[key], value)
