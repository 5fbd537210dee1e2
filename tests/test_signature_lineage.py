"""Input signatures, input checks and lineage: captured at save, stored in the record on
SQLite and PostgreSQL, shown by ``info``, and checked at load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelkeep import InputSchemaError, ModelPersistence, VersionNotFoundError, lineage
from modelkeep.input_signature import check, infer
from modelkeep.lineage import fingerprint, git_state


@pytest.fixture(scope="module")
def frame() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    X = pd.DataFrame(
        {
            "age": pd.array(rng.integers(18, 90, 60), dtype="Int64"),
            "member": pd.array(rng.random(60) > 0.5, dtype="boolean"),
            "city": pd.array(rng.choice(["a", "b"], 60), dtype="string"),
            "income": rng.normal(size=60),
        }
    )
    y = (X["income"] > 0).to_numpy().astype(int)
    return X, y


@pytest.fixture(scope="module")
def fitted(frame: tuple[pd.DataFrame, np.ndarray]) -> Any:
    from sklearn.linear_model import LogisticRegression

    X, y = frame
    return LogisticRegression().fit(X[["age", "income"]].astype(float), y)


def test_signature_captured_from_the_model_alone(persistence: ModelPersistence, fitted: Any) -> None:
    rec = persistence.save_version(fitted, "m")
    sig = persistence.get_version("m").input_signature
    assert sig == rec.input_signature
    assert sig is not None
    assert sig["feature_names"] == ["age", "income"]
    assert sig["n_features"] == 2 and sig["classes"] == [0, 1] and sig["source"] == "model"


def test_nullable_example_keeps_its_dtypes_and_round_trips(
    persistence: ModelPersistence, fitted: Any, frame: tuple[pd.DataFrame, np.ndarray]
) -> None:
    X, _ = frame
    persistence.save(fitted, "m", input_example=X[["age", "income"]])
    sig = persistence.get_version("m").input_signature
    assert sig is not None
    assert [(c["name"], c["dtype"]) for c in sig["columns"]] == [("age", "Int64"), ("income", "float64")]
    assert sig["shape"] == [None, 2]

    whole = persistence.save_version({"any": "object"}, "frame-model", input_example=X)
    assert [c["dtype"] for c in whole.input_signature["columns"]] == ["Int64", "boolean", "string", "float64"]  # type: ignore[index]


def test_check_input_reports_missing_extra_reordered_and_unsafe_casts(
    persistence: ModelPersistence, frame: tuple[pd.DataFrame, np.ndarray]
) -> None:
    X, _ = frame
    persistence.save({"model": 1}, "m", input_example=X)
    assert persistence.check_input("m", None, X).ok

    reordered = persistence.check_input("m", "1.0.0", X[["income", "age", "member", "city"]])
    assert reordered.ok and reordered.reordered
    assert reordered.expected_columns == ["age", "member", "city", "income"]

    bad = X.drop(columns=["city"]).assign(extra=1.0, age=X["age"].astype("float64"))
    result = persistence.check_input("m", "1.0.0", bad)
    assert not result.ok
    assert result.missing == ["city"] and result.extra == ["extra"]
    assert [(p.column, p.expected, p.got) for p in result.dtype_problems] == [("age", "Int64", "float64")]
    assert result.to_dict()["dtype_problems"][0]["reason"]

    with pytest.raises(InputSchemaError) as err:
        persistence.load("m", validate=bad)
    assert err.value.result.missing == ["city"]
    assert persistence.load("m", validate=X) == {"model": 1}


@pytest.mark.parametrize(
    ("expected", "got", "has_missing", "safe"),
    [
        ("int64", "Int64", False, True),  # a nullable column without NA fits plain ints
        ("int64", "Int64", True, False),  # ...but not when it holds missing values
        ("Int64", "int64", False, True),
        ("bool", "boolean", True, False),
        ("boolean", "bool", False, True),
        ("float64", "Int64", True, True),  # NA becomes NaN
        ("string", "object", False, True),
        ("string", "int64", False, False),
        ("int32", "int64", False, False),
        ("float64", "float32", False, True),
    ],
)
def test_nullable_and_numpy_casts(expected: str, got: str, has_missing: bool, safe: bool) -> None:
    values: dict[str, Any] = {
        "Int64": pd.array([1, None if has_missing else 2], dtype="Int64"),
        "boolean": pd.array([True, None if has_missing else False], dtype="boolean"),
        "object": np.array(["a", "b"], dtype=object),
    }
    column = values[got] if got in values else np.array([1, 2]).astype(got)
    result = check({"columns": [{"name": "c", "dtype": expected, "nullable": False}]}, pd.DataFrame({"c": column}))
    assert result.ok is safe, result


def test_array_and_tensor_examples() -> None:
    sig = infer(object(), np.zeros((5, 3), dtype=np.float32))
    assert sig == {"shape": [None, 3], "dtype": "float32", "n_features": 3, "source": "example"}
    assert check(sig, np.zeros((2, 4), dtype=np.float32)).n_features == (3, 4)
    assert not check(sig, np.zeros((2, 3), dtype=np.float64)).ok  # float64 -> float32 loses precision
    assert check(sig, np.zeros((2, 3), dtype=np.float32)).ok
    torch = pytest.importorskip("torch")
    tsig = infer(object(), torch.zeros(4, 2, dtype=torch.float64))
    assert tsig is not None and tsig["dtype"] == "float64" and tsig["shape"] == [None, 2]


def test_framework_equivalents_are_captured() -> None:
    import lightgbm as lgb
    import xgboost as xgb

    from tests._framework_models import data

    X, y = data()
    booster = xgb.train({"max_depth": 2}, xgb.DMatrix(X, label=y), num_boost_round=2)
    assert infer(booster)["feature_names"] == list(X.columns)  # type: ignore[index]
    lbooster = lgb.train({"verbose": -1, "num_leaves": 3}, lgb.Dataset(X, label=y), num_boost_round=2)
    assert infer(lbooster)["n_features"] == 4  # type: ignore[index]


def test_lineage_round_trips_and_parent_must_exist(
    persistence: ModelPersistence, frame: tuple[pd.DataFrame, np.ndarray]
) -> None:
    X, y = frame
    first = persistence.save_version({"v": 1}, "m", training_data=X, training_target=y)
    assert first.lineage is not None
    data = first.lineage["training_data"]
    assert data["shape"] == [60, 4] and [c["name"] for c in data["columns"]] == list(X.columns)
    assert data["sha256"] == fingerprint(X.copy())["sha256"]
    assert first.lineage["training_target"]["shape"] == [60]

    second = persistence.save_version({"v": 2}, "m", parent="1.0.0")
    assert second.lineage is not None and second.lineage["parent"] == {"model_name": "m", "version": "1.0.0"}
    stored = persistence.get_version("m", "1.0.1")
    assert stored.lineage == second.lineage
    assert persistence.get_version("m", "1.0.0").lineage == first.lineage

    persistence.save({"v": 3}, "other", parent="m:1.0.1")
    assert persistence.get_version("other").lineage["parent"]["model_name"] == "m"  # type: ignore[index]
    with pytest.raises(VersionNotFoundError):
        persistence.save({"v": 4}, "m", parent="9.9.9")
    assert persistence.list_versions("m") == ["1.0.0", "1.0.1"]


def test_fingerprint_sees_values_names_dtypes_and_nulls(frame: tuple[pd.DataFrame, np.ndarray]) -> None:
    X, _ = frame
    base = fingerprint(X)["sha256"]
    changed = X.copy()
    changed.loc[0, "income"] += 1e-9
    renamed = X.rename(columns={"income": "revenue"})
    nulled = X.copy()
    nulled.loc[0, "age"] = pd.NA
    retyped = X.assign(age=X["age"].astype("float64"))
    digests = {fingerprint(d)["sha256"] for d in (changed, renamed, nulled, retyped, X[X.columns[::-1]])}
    assert base not in digests and len(digests) == 5
    arr = np.arange(12.0).reshape(3, 4)
    assert fingerprint(arr)["sha256"] == fingerprint(np.asfortranarray(arr))["sha256"]  # same content
    assert fingerprint(arr)["sha256"] != fingerprint(arr.reshape(4, 3))["sha256"]  # another shape


def test_git_commit_and_dirty_flag_are_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q", "-b", "main")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (repo / "train.py").write_text("print(1)\n")
    git("add", "train.py")
    git("commit", "-qm", "first")
    commit = git("rev-parse", "HEAD")
    monkeypatch.chdir(repo)
    assert git_state() == {"commit": commit, "dirty": False, "branch": "main"}
    with ModelPersistence(models_dir=tmp_path / "models") as p:  # outside the repo's tree: models dir unseen
        clean = p.save_version({"a": 1}, "m")
        (repo / "train.py").write_text("print(2)\n")
        dirty = p.save_version({"a": 2}, "m")
    assert clean.lineage == {"git": {"commit": commit, "dirty": False, "branch": "main"}}
    assert dirty.lineage is not None and dirty.lineage["git"]["dirty"] is True
    monkeypatch.chdir(tmp_path)
    assert git_state() is None


def test_the_git_state_joined_after_the_claim_only_fills_the_git_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frame: tuple[pd.DataFrame, np.ndarray]
) -> None:
    """A local save reads git while the version is claimed (saving.with_git): the lineage is
    captured once, and the record gets the same lineage, in the same key order, as one capture
    with the git state would make."""
    git = _repo_with_one_commit(tmp_path / "repo")
    monkeypatch.chdir(tmp_path / "repo")
    X, y = frame
    captures: list[dict[str, Any]] = []
    real_capture = lineage.capture

    def counted(**parts: Any) -> Any:
        captures.append(parts)
        return real_capture(**parts)

    monkeypatch.setattr(lineage, "capture", counted)
    with ModelPersistence(models_dir=tmp_path / "models") as p:
        p.save_version({"v": 1}, "m")
        captures.clear()
        rec = p.save_version({"v": 2}, "m", training_data=X, training_target=y, parent="1.0.0")
        stored = p.get_version("m", rec.version)
    assert len(captures) == 1 and captures[0]["git"] is None  # captured once, git joined later
    state = {"commit": git("rev-parse", "HEAD"), "dirty": False, "branch": "main"}
    expected = real_capture(
        data_fingerprint=fingerprint(X), target_fingerprint=fingerprint(y), parent=("m", "1.0.0"), git=state
    )
    assert expected is not None and list(expected) == ["training_data", "training_target", "git", "parent"]
    for record in (rec.lineage, stored.lineage):
        assert record == expected and list(record) == list(expected)
    assert lineage.with_git(None, state) == real_capture(git=state)
    assert lineage.with_git({"parent": expected["parent"]}, None) == {"parent": expected["parent"]}


def _kept(folder: Path) -> bool:
    """Whether a reusable git status of ``folder`` is kept."""
    return isinstance(lineage._snapshots.get(str(folder)), lineage._GitSnapshot)


def _repo_with_one_commit(repo: Path) -> Callable[..., str]:
    repo.mkdir()

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q", "-b", "main")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (repo / "train.py").write_text("print(1)\n")
    (repo / "pkg").mkdir()
    (repo / "pkg" / "util.py").write_text("X = 1\n")
    git("add", "train.py", "pkg/util.py")
    git("commit", "-qm", "first")
    return git


def test_git_state_is_reused_only_while_nothing_it_depends_on_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save reuses the last ``git status`` while no tracked file, ref, index or config shows a
    new stat; every change a user makes between two saves is still seen, and ``git`` runs again."""
    git = _repo_with_one_commit(tmp_path / "repo")
    repo = tmp_path / "repo"
    monkeypatch.setattr(lineage, "RACY_NS", 0)  # files written by this test count as settled
    runs: list[str] = []
    real_run = subprocess.run

    def counting_run(args: Any, *rest: Any, **options: Any) -> Any:
        if list(args[:2]) == ["git", "--no-optional-locks"]:
            runs.append(args[2])
        return real_run(args, *rest, **options)

    monkeypatch.setattr(lineage.subprocess, "run", counting_run)
    monkeypatch.chdir(repo / "pkg")  # a save from a subfolder sees the whole work tree
    first = git("rev-parse", "HEAD")
    with ModelPersistence(models_dir=tmp_path / "models") as p:

        def saved_git() -> dict[str, Any]:
            rec = p.save_version({"a": len(runs)}, "m")
            assert rec.lineage is not None
            return dict(rec.lineage["git"])

        assert saved_git() == {"commit": first, "dirty": False, "branch": "main"}
        assert "status" in runs
        runs.clear()
        assert saved_git() == {"commit": first, "dirty": False, "branch": "main"}
        assert runs == []  # nothing changed: no git process

        (repo / "train.py").write_text("print(2)\n")  # same size
        assert saved_git()["dirty"] is True
        assert "status" in runs
        runs.clear()
        assert saved_git()["dirty"] is True and runs == []

        old = (repo / "train.py").stat()
        (repo / "train.py").write_text("print(1)\n")  # back to the committed bytes
        os.utime(repo / "train.py", ns=(old.st_atime_ns, old.st_mtime_ns))  # same size, same mtime
        assert saved_git()["dirty"] is False  # its ctime moved: git is asked again

        (repo / "pkg" / "util.py").unlink()  # a removed tracked file
        assert saved_git()["dirty"] is True
        git("checkout", "-q", "--", "pkg/util.py")
        assert saved_git()["dirty"] is False

        (repo / "pkg" / "util.py").chmod(0o755)  # a mode change git tracks
        assert saved_git()["dirty"] is True
        (repo / "pkg" / "util.py").chmod(0o644)
        assert saved_git()["dirty"] is False

        (repo / "new.py").write_text("Y = 2\n")
        git("add", "new.py")  # staged only: the index changed
        assert saved_git()["dirty"] is True
        git("commit", "-qm", "second")  # the branch ref moved
        second = git("rev-parse", "HEAD")
        assert saved_git() == {"commit": second, "dirty": False, "branch": "main"}

        git("checkout", "-q", "-b", "other")  # HEAD names another branch
        assert saved_git() == {"commit": second, "dirty": False, "branch": "other"}
        git("checkout", "-q", "--detach")
        assert saved_git() == {"commit": second, "dirty": False, "branch": None}
        runs.clear()
        assert saved_git() == {"commit": second, "dirty": False, "branch": None} and runs == []


def test_a_kept_git_status_is_checked_after_the_model_is_serialized(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check of a kept status runs once the model is serialized, on the helper thread while
    the staged file is fsync'ed (lineage.PendingGit): a file edited while the model was being
    pickled is seen as dirty, and the save's own thread does not make the check."""
    _repo_with_one_commit(tmp_path / "repo")
    repo = tmp_path / "repo"
    monkeypatch.setattr(lineage, "RACY_NS", 0)  # files written by this test count as settled
    monkeypatch.chdir(repo)
    checked_on: list[str] = []
    real_reused = lineage._reused

    def reused(where: Path) -> Any:
        checked_on.append(threading.current_thread().name)
        return real_reused(where)

    monkeypatch.setattr(lineage, "_reused", reused)

    class EditedWhilePickled:
        def __reduce__(self) -> Any:
            (repo / "train.py").write_text("print(2)\n")  # same size, during serialization
            return (dict, ())

    with ModelPersistence(models_dir=tmp_path / "models") as p:
        p.save_version({"a": 0}, "m")  # reads git and keeps its status
        assert _kept(repo)
        rec = p.save_version({"a": EditedWhilePickled()}, "m", serialization_format="pickle")
    assert rec.lineage is not None and rec.lineage["git"]["dirty"] is True
    assert checked_on and all(name.startswith("modelkeep-git") for name in checked_on), checked_on


def test_git_state_read_while_files_are_fresh_is_not_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file changed within the file system's timestamp granularity may change again without
    its stat showing it, so a status read right after a change is not kept ("racy git")."""
    git = _repo_with_one_commit(tmp_path / "repo")
    monkeypatch.chdir(tmp_path / "repo")
    commit = git("rev-parse", "HEAD")
    assert git_state() == {"commit": commit, "dirty": False, "branch": "main"}
    assert not _kept(tmp_path / "repo")  # the commit was made just now
    monkeypatch.setattr(lineage, "RACY_NS", 0)
    assert git_state() == {"commit": commit, "dirty": False, "branch": "main"}
    assert not _kept(tmp_path / "repo")  # for 2 s after such a read, git is asked alone
    monkeypatch.setitem(lineage._snapshots, str(tmp_path / "repo"), 0.0)  # ... and then
    assert git_state() == {"commit": commit, "dirty": False, "branch": "main"}
    assert _kept(tmp_path / "repo")


def test_git_state_is_not_reused_with_a_submodule_or_git_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A submodule's changes do not show in the stat of the superproject's files, and ``GIT_*``
    variables may point git elsewhere: both are asked ``git status`` at every save."""
    git = _repo_with_one_commit(tmp_path / "repo")
    sub = _repo_with_one_commit(tmp_path / "sub")
    git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(tmp_path / "sub"), "sub")
    git("commit", "-qm", "with a submodule")
    monkeypatch.setattr(lineage, "RACY_NS", 0)
    monkeypatch.chdir(tmp_path / "repo")
    assert git_state()["dirty"] is False  # type: ignore[index]
    assert not _kept(tmp_path / "repo")
    (tmp_path / "repo" / "sub" / "train.py").write_text("print(3)\n")
    runs: list[str] = []
    real_run = subprocess.run

    def counting_run(args: Any, *rest: Any, **options: Any) -> Any:
        runs.append(args[2])
        return real_run(args, *rest, **options)

    with monkeypatch.context() as m:
        m.setattr(lineage.subprocess, "run", counting_run)
        assert git_state()["dirty"] is True  # type: ignore[index]
    assert runs == ["status"]  # git alone: not the listing of a snapshot that would not be kept
    del sub

    plain = tmp_path / "plain"
    _repo_with_one_commit(plain)
    monkeypatch.chdir(plain)
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "other-index"))
    assert git_state()["dirty"] is True  # type: ignore[index]  # an empty index: every file removed
    assert not _kept(plain)


def test_info_shows_signature_and_lineage(tmp_path: Path, fitted: Any, frame: tuple[pd.DataFrame, np.ndarray]) -> None:
    X, y = frame
    with ModelPersistence(models_dir=tmp_path / "models") as p:
        p.save(fitted, "m", training_data=X, training_target=y)
    args = [sys.executable, "-m", "modelkeep", "--models-dir", str(tmp_path / "models"), "info", "--model-name", "m"]
    out = subprocess.run([*args, "--json"], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    record = json.loads(out)
    assert record["input_signature"]["feature_names"] == ["age", "income"]
    assert record["lineage"]["training_data"]["shape"] == [60, 4]
    table = subprocess.run(args, capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert "Input signature" in table and "Lineage" in table and "training_data" in table
