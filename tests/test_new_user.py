"""What a new user trips over (issue 23), tested from the user's side.

Each test does what a person would: set an environment variable, mistype a folder, run
``doctor``, share a model with a custom class with a colleague, import from MLflow, pipe
``info`` into a file. The per-user config folder is private to each test (conftest).
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from click.testing import CliRunner

from modelkeep import (
    AliasNotFoundError,
    ConfigError,
    InvalidNameError,
    ModelPersistence,
    RegistryNotFoundError,
    SerializationError,
    UnsafeModelError,
    VersionInUseError,
)
from modelkeep.cli import cli
from modelkeep.cli_search import search
from modelkeep.index.sql import SqlIndex

from .conftest import IndexTarget

SRC = str(Path(__file__).resolve().parents[1] / "src")
MLFLOW_DATA = Path(__file__).resolve().parent / "data" / "mlflow"

CLIP_SCALER = textwrap.dedent(
    """
    import numpy as np
    from sklearn.base import BaseEstimator, TransformerMixin

    class ClipScaler(BaseEstimator, TransformerMixin):
        def __init__(self, hi=1.0):
            self.hi = hi

        def fit(self, X, y=None):
            self.max_ = float(np.abs(np.asarray(X)).max())
            return self

        def transform(self, X):
            return np.clip(np.asarray(X) / self.max_, -self.hi, self.hi)
    """
)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def child_env(config_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a separate program: this checkout's modelkeep, only; its own user when asked."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELKEEP_") or k == "MODELKEEP_CONFIG_DIR"}
    env["PYTHONPATH"] = SRC
    if config_dir is not None:
        env["MODELKEEP_CONFIG_DIR"] = str(config_dir)
    env.update(extra)
    return env


def sh(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def modelkeep_command() -> list[str]:
    """The installed ``modelkeep`` console script (not ``python -m``, whose sys.path differs)."""
    script = shutil.which("modelkeep")
    assert script is not None, "the modelkeep console script is not installed"
    return [script]


# -- settings: MODELKEEP_* variables mean the same in the library as in the CLI ----------------------------


def test_environment_variables_configure_the_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODELKEEP_MODELS_DIR", str(tmp_path / "env_models"))
    monkeypatch.setenv("MODELKEEP_REGISTRY_PATH", str(tmp_path / "env_index"))
    monkeypatch.setenv("MODELKEEP_SERIALIZATION_FORMAT", "pickle")
    monkeypatch.setenv("MODELKEEP_COMPRESS", "false")
    monkeypatch.setenv("MODELKEEP_TRUSTED_TYPES", "mytransformers.ClipScaler, other.Thing")
    with ModelPersistence() as p:
        assert p.models_dir == tmp_path / "env_models"
        assert p.format.name == "pickle" and p.compression is None
        assert p.trusted_types == ["mytransformers.ClipScaler", "other.Thing"]
        path = p.save({"a": 1}, "m")
    assert path == tmp_path / "env_models" / "m" / "1.0.0" / "m_v1.0.0.pkl"
    assert (tmp_path / "env_index" / "registry.db").is_file()
    with ModelPersistence(tmp_path / "explicit", trusted_types=["mine.Extra"]) as p:
        assert p.models_dir == tmp_path / "explicit"  # an argument wins over the variable
        assert p.trusted_types == ["mytransformers.ClipScaler", "other.Thing", "mine.Extra"]  # adds, as --trust does
    # The CLI reads the same variables: it finds the version the library saved.
    listed = invoke("list", "--json")
    assert listed.exit_code == 0, listed.output
    assert [m["name"] for m in json.loads(listed.output)] == ["m"]


def test_a_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELKEEP_COMPRESS", "brotli-max")
    with pytest.raises(ConfigError, match="MODELKEEP_COMPRESS"):
        ModelPersistence(tmp_path / "m")


def test_trusted_types_variable_lets_a_colleague_load_a_custom_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mytransformers.py").write_text(CLIP_SCALER)
    saved = sh(
        [sys.executable, "-c", "from modelkeep import ModelPersistence; from mytransformers import ClipScaler; "
         "ModelPersistence('models').save(ClipScaler().fit([[1.0, -4.0]]), 'scaler')"],
        tmp_path,
        child_env(tmp_path / "alice"),
    )  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UnsafeModelError, match=r"mytransformers\.ClipScaler"):
        ModelPersistence(tmp_path / "models").load("scaler")
    monkeypatch.setenv("MODELKEEP_TRUSTED_TYPES", "mytransformers.ClipScaler")
    scaler = ModelPersistence(tmp_path / "models").load("scaler")
    assert scaler.max_ == 4.0


# -- reading never creates a registry -----------------------------------------------------------------------


def test_reading_a_mistyped_folder_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    typo = tmp_path / "regsitry"
    p = ModelPersistence(models_dir=typo)
    reads = {
        "load": lambda: p.load("churn"),
        "load alias": lambda: p.load("churn@production"),
        "list_models": p.list_models,
        "list_versions": lambda: p.list_versions("churn"),
        "get_metadata": lambda: p.get_metadata("churn"),
        "get_aliases": lambda: p.get_aliases("churn"),
        "history": lambda: p.history("churn"),
        "compare_versions": lambda: p.compare_versions("churn"),
        "search_versions": lambda: p.search_versions("accuracy > 0.5"),
        "model_summaries": p.model_summaries,
        "verify": p.verify,
    }
    for what, read in reads.items():
        with pytest.raises(RegistryNotFoundError) as info:
            read()
        assert str(typo) in str(info.value), what
        assert isinstance(info.value, FileNotFoundError)
    assert not typo.exists()
    for command in (["list"], ["info", "--model-name", "churn"], ["search"], ["load", "--model-name", "churn",
                    "--output", str(tmp_path / "out.joblib")], ["compare", "--model-name", "churn"]):  # fmt: skip
        result = invoke("--models-dir", str(typo), *command)
        assert result.exit_code == 1, (command, result.output)
        assert str(typo) in result.output and "--models-dir" in result.output, command
    assert not typo.exists()
    p.save({"a": 1}, "churn")  # only a save creates it
    assert (typo / "registry.db").is_file()
    assert p.load("churn") == {"a": 1}


def test_reading_an_empty_database_creates_no_tables(index_target: IndexTarget, tmp_path: Path) -> None:
    """On PostgreSQL (and an explicit SQLite URL) "missing" means modelkeep's tables do not exist."""
    p = ModelPersistence(tmp_path / "models", registry_url=index_target.url, index_schema=index_target.schema)
    with pytest.raises(RegistryNotFoundError, match="save a model first"):
        p.list_models()
    with pytest.raises(RegistryNotFoundError):
        ModelPersistence(
            tmp_path / "models", registry_url=index_target.url, index_schema=index_target.schema, create=False
        )
    if index_target.kind == "sqlite":
        assert not (tmp_path / "registry.db").exists()
    else:
        from sqlalchemy import create_engine, inspect

        engine = create_engine(index_target.url.replace("postgresql://", "postgresql+psycopg://", 1))
        assert inspect(engine).get_table_names(schema=index_target.schema) == []
        engine.dispose()
    p.save({"a": 1}, "m")
    assert p.list_models() == ["m"]
    p.close()


# -- doctor --------------------------------------------------------------------------------------------------


def test_doctor_reports_the_per_user_key_and_creates_nothing(tmp_path: Path, private_config_dir: Path) -> None:
    missing = tmp_path / "nonexistent" / "x"
    result = invoke("--models-dir", str(missing), "doctor", "--json")
    checks = {c["check"]: c for c in json.loads(result.output)["checks"]}
    assert "does not exist yet" in checks["store"]["detail"] and checks["store"]["ok"]
    assert "per-user ECDSA key" in checks["signing key"]["detail"]
    assert "not created yet" in checks["signing key"]["detail"]
    assert "not set" not in checks["signing key"]["detail"]
    assert not (tmp_path / "nonexistent").exists()
    assert not (private_config_dir / "signing_key.pem").exists()  # doctor never makes the key either

    with ModelPersistence(tmp_path / "models") as p:
        p.save({"a": 1}, "m")  # the first save makes the per-user key and signs with it
        signer = p.signature_status("m").fingerprint
    assert signer is not None
    shutil.rmtree(tmp_path / "models" / ".tmp", ignore_errors=True)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "models").rglob("*"))
    text = invoke("--models-dir", str(tmp_path / "models"), "doctor").output
    assert f"per-user ECDSA key {private_config_dir / 'signing_key.pem'}" in text
    assert signer[:16] in text
    after = sorted(p.relative_to(tmp_path) for p in (tmp_path / "models").rglob("*"))
    assert after == before  # the probe and its folder are gone


# -- save_version takes save's arguments ---------------------------------------------------------------------


def test_save_version_takes_the_same_keyword_arguments_as_save(local_persistence: ModelPersistence) -> None:
    record = local_persistence.save_version({"w": 1}, "cancer", algo="svc", accuracy=0.9)
    assert record.metadata["algo"] == "svc" and record.metadata["accuracy"] == 0.9
    merged = local_persistence.save_version({"w": 2}, "cancer", metadata={"algo": "old", "seed": 1}, algo="svc")
    assert merged.metadata["algo"] == "svc" and merged.metadata["seed"] == 1
    path = local_persistence.save({"w": 3}, "cancer", algo="svc")
    assert local_persistence.get_version("cancer").metadata["algo"] == "svc"
    assert Path(path).is_file()


# -- aliases -------------------------------------------------------------------------------------------------


def test_an_unknown_alias_suggests_the_close_one(persistence: ModelPersistence) -> None:
    persistence.save({"w": 1}, "cancer")
    persistence.set_alias("cancer", "production", "1.0.0")
    persistence.set_alias("cancer", "staging", "1.0.0")
    with pytest.raises(AliasNotFoundError) as info:
        persistence.load("cancer@prod")
    assert "did you mean 'production'?" in str(info.value)
    assert "its aliases: production, staging" in str(info.value)
    with pytest.raises(AliasNotFoundError, match=r"did you mean 'production'.*case-sensitive"):
        persistence.load("cancer@Production")
    with pytest.raises(AliasNotFoundError, match="did you mean 'staging'"):
        persistence.delete_alias("cancer", "stagging")


def test_an_alias_differing_only_in_case_is_refused(persistence: ModelPersistence) -> None:
    persistence.save({"w": 1}, "cancer")
    persistence.save({"w": 2}, "cancer")
    persistence.set_alias("cancer", "production", "1.0.0")
    with pytest.raises(InvalidNameError, match=r"already has the alias 'production'.*only in case"):
        persistence.set_alias("cancer", "Production", "1.0.1")
    persistence.set_alias("cancer", "production", "1.0.1")  # moving the alias itself is fine
    assert persistence.get_aliases("cancer") == {"production": "1.0.1"}


# -- the CLI speaks CLI, the library speaks Python -----------------------------------------------------------


def test_errors_use_each_interface_spelling(tmp_path: Path) -> None:
    models = tmp_path / "models"
    with ModelPersistence(models) as p:
        p.save({"w": 1}, "churn")
        p.set_alias("churn", "production", "1.0.0")
        with pytest.raises(VersionInUseError) as in_use:
            p.delete("churn", "1.0.0")
    assert "force=True" in str(in_use.value)
    cli_delete = invoke("--models-dir", str(models), "delete", "--model-name", "churn", "--version", "1.0.0")
    assert cli_delete.exit_code == 1 and "--force" in cli_delete.output and "force=True" not in cli_delete.output

    hostile = tmp_path / "hostile.pkl"
    hostile.write_bytes(pickle.dumps(Path("x")))  # pathlib is not on the allow-list
    with pytest.raises(UnsafeModelError) as unsafe, ModelPersistence(models) as p:
        p.import_file(hostile, "imported")
    assert "trust_file=True" in str(unsafe.value) and "trusted_types" in str(unsafe.value)
    cli_save = invoke("--models-dir", str(models), "save", "--model-name", "imported", "--model-file", str(hostile))
    assert cli_save.exit_code == 1
    assert "--trust-file" in cli_save.output and "--trust" in cli_save.output
    assert "trust_file=True" not in cli_save.output and "ModelPersistence(" not in cli_save.output


def test_compare_columns_search_help_and_limits_match_the_library(tmp_path: Path) -> None:
    models = tmp_path / "models"
    with ModelPersistence(models) as p:
        p.save({"w": 1}, "churn", accuracy=0.8)
        p.set_tag("churn", "reviewed", "yes", version="1.0.0")
        assert [r.version for r in p.search_versions("tags.reviewed = 'yes'").items] == ["1.0.0"]
        library_default = inspect.signature(p.search_versions).parameters["limit"].default
    compared = invoke("--models-dir", str(models), "compare", "--model-name", "churn", "--json")
    assert compared.exit_code == 0, compared.output
    assert json.loads(compared.output)[0]["tags.reviewed"] == "yes"  # the name a filter uses
    usage = CliRunner().invoke(cli, ["search", "--help"]).output
    assert "[FILTER]" in usage
    limit = next(o for o in search.params if o.name == "limit")
    assert limit.default == library_default == 100


# -- custom classes: the colleague's view ------------------------------------------------------------------


@pytest.fixture
def shared_model(tmp_path: Path) -> Path:
    """A project folder with mytransformers.py, where alice saved a model using ClipScaler."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "mytransformers.py").write_text(CLIP_SCALER)
    saved = sh(
        [sys.executable, "-c", "from modelkeep import ModelPersistence; from mytransformers import ClipScaler; "
         "ModelPersistence('models').save(ClipScaler().fit([[1.0, -4.0]]), 'scaler')"],
        project,
        child_env(tmp_path / "alice"),
    )  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    return project


def test_the_cli_imports_the_users_module_from_the_working_directory(shared_model: Path, tmp_path: Path) -> None:
    alice = child_env(tmp_path / "alice")
    out = shared_model / "out.joblib"
    loaded = sh([*modelkeep_command(), "load", "--model-name", "scaler", "--output", str(out)], shared_model, alice)
    assert loaded.returncode == 0, loaded.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    args = ["--models-dir", str(shared_model / "models")]
    load = ["load", "--model-name", "scaler", "--output", "o.joblib"]
    failed = sh([*modelkeep_command(), *args, *load], elsewhere, alice)
    assert failed.returncode == 1
    assert "No module named 'mytransformers'" in failed.stderr and "--path" in failed.stderr
    assert "Traceback" not in failed.stderr
    with_path = sh([*modelkeep_command(), "--path", str(shared_model), *args, *load], elsewhere, alice)
    assert with_path.returncode == 0, with_path.stderr


def test_a_colleague_gets_the_signer_and_two_fixes_to_paste(shared_model: Path, tmp_path: Path) -> None:
    bob = child_env(tmp_path / "bob")
    load = [*modelkeep_command(), "load", "--model-name", "scaler", "--output", "out.joblib", "--force"]
    refused = sh(load, shared_model, bob)
    assert refused.returncode == 1
    alice_key = sh(
        [sys.executable, "-c", "from modelkeep import keys; print(keys.user_key(create=False).fingerprint)"],
        shared_model,
        child_env(tmp_path / "alice"),
    )
    fingerprint = alice_key.stdout.strip()
    assert len(fingerprint) == 64, alice_key.stderr
    assert fingerprint in refused.stderr  # who signed it
    assert "modelkeep keys export-public --out" in refused.stderr and "modelkeep keys trust" in refused.stderr
    assert "--trust mytransformers.ClipScaler" in refused.stderr
    assert "trusted_types=" not in refused.stderr
    # Fix 1: trust the class.
    assert (
        sh([*modelkeep_command(), "--trust", "mytransformers.ClipScaler", *load[1:]], shared_model, bob).returncode == 0
    )
    # Fix 2: trust alice's key, exactly as the message says.
    exported = sh([*modelkeep_command(), "keys", "export-public", "--out", str(tmp_path / "alice.pub")],
                  shared_model, child_env(tmp_path / "alice"))  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    trusted = sh([*modelkeep_command(), "keys", "trust", str(tmp_path / "alice.pub")], shared_model, bob)
    assert trusted.returncode == 0, trusted.stderr
    assert sh(load, shared_model, bob).returncode == 0
    # The library says the same in Python.
    script = (
        "from modelkeep import ModelPersistence\n"
        "try:\n    ModelPersistence('models').load('scaler')\nexcept Exception as e:\n    print(e)\n"
    )
    carol = sh([sys.executable, "-c", script], shared_model, child_env(tmp_path / "carol"))
    assert 'trusted_types=["mytransformers.ClipScaler"]' in carol.stdout and fingerprint in carol.stdout


def test_a_class_from_main_says_what_to_do(tmp_path: Path) -> None:
    env = child_env(tmp_path / "alice")
    saver = tmp_path / "train.py"
    saver.write_text(
        CLIP_SCALER + "\nfrom modelkeep import ModelPersistence\n"
        "ModelPersistence('models').save(ClipScaler().fit([[2.0]]), 'scaler')\n"
    )
    saved = sh([sys.executable, str(saver)], tmp_path, env)
    assert saved.returncode == 0, saved.stderr
    assert "__main__" in saved.stderr and "importable module" in saved.stderr  # warned at save time
    loader = tmp_path / "serve.py"
    loader.write_text(
        "from modelkeep import ModelPersistence\ntry:\n    ModelPersistence('models').load('scaler')\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n"
    )
    loaded = sh([sys.executable, str(loader)], tmp_path, env)
    assert loaded.stdout.startswith(SerializationError.__name__), loaded.stdout + loaded.stderr
    assert "module '__main__' has no attribute 'ClipScaler'" in loaded.stdout
    assert "move the class into a module" in loaded.stdout and "before loading" in loaded.stdout


# -- MLflow import: a dry run checks what the import checks ----------------------------------------------------

BLOCK_SKOPS = (
    "import sys; sys.modules['skops'] = None; sys.modules['skops.io'] = None; from modelkeep.cli import main; main()"
)


def _mlflow_store(tmp_path: Path) -> str:
    shutil.copytree(MLFLOW_DATA / "sqlite", tmp_path / "mlflow")
    return f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"


def _outcome(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "imported": sorted((v["model_name"], v["mlflow_version"]) for v in report["imported"]),
        "refused": sorted((n, v) for n, v, _ in report["refused"]),
        "failed": sorted((n, v) for n, v, _ in report["failed"]),
    }


def test_a_dry_run_reports_what_the_import_then_does(tmp_path: Path) -> None:
    uri = _mlflow_store(tmp_path)
    # The attacker's file: a pickle that runs a command. Plain pickle runs it...
    marker = tmp_path / "pwned"
    payload = (
        b"cposix\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    )  # os.system("touch <marker>"), as a hostile MLflow store would hold it
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
                   input=payload, check=True, timeout=60)  # fmt: skip
    assert marker.exists()
    marker.unlink()
    victim = next((tmp_path / "mlflow").rglob("m-56e5bd024bb946138b3a3593e9c6fe8d")) / "artifacts" / "model.pkl"
    victim.write_bytes(payload)
    # ...and without the skops package installed:
    env = child_env(tmp_path / "user")
    base = [sys.executable, "-c", BLOCK_SKOPS, "--models-dir", str(tmp_path / "models")]
    dry = sh([*base, "import-mlflow", "--tracking-uri", uri, "--dry-run", "--json"], tmp_path, env)
    assert not (tmp_path / "models").exists()  # a dry run creates no registry
    real = sh([*base, "import-mlflow", "--tracking-uri", uri, "--json"], tmp_path, env)
    assert dry.returncode == real.returncode == 1, dry.stderr + real.stderr
    dry_report, real_report = json.loads(dry.stdout), json.loads(real.stdout)
    assert _outcome(dry_report) == _outcome(real_report)
    assert _outcome(real_report)["refused"] == [("churn", 2)]  # a security verdict
    assert _outcome(real_report)["failed"] == [("churn", 3)]  # a missing package, not a verdict
    assert 'pip install "modelkeep[skops]"' in real_report["failed"][0][2]
    assert not marker.exists()


def test_a_skops_forest_from_mlflow_loads_like_the_joblib_one(tmp_path: Path, persistence: ModelPersistence) -> None:
    import skops.io
    from sklearn.ensemble import RandomForestClassifier

    from modelkeep.mlflow_import import import_mlflow

    X = np.random.default_rng(0).normal(size=(60, 4))
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, X[:, 0] > 0)
    uri = _mlflow_store(tmp_path)
    target = next((tmp_path / "mlflow").rglob("m-fad9e2574ee04971aac5e7a1d1154f3a")) / "artifacts" / "model.skops"
    skops.io.dump(forest, target)
    assert "sklearn.tree._tree.Tree" in skops.io.get_untrusted_types(file=target)  # skops alone would refuse it
    report = import_mlflow(persistence, uri, models=["churn"])
    assert report.refused == [] and report.failed == [], report
    loaded = persistence.load("churn", "3")
    np.testing.assert_array_equal(loaded.predict(X), forest.predict(X))
    persistence.save_version(forest, "forest", serialization_format="skops")  # the same from modelkeep's own skops
    np.testing.assert_array_equal(persistence.load("forest").predict(X), forest.predict(X))


# -- output -------------------------------------------------------------------------------------------------


def test_piped_info_is_plain_text_at_a_sane_width(tmp_path: Path) -> None:
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(40, 30)), columns=[f"feature number {i}" for i in range(30)])
    with ModelPersistence(tmp_path / "models") as p:
        p.save(LogisticRegression(max_iter=50).fit(X, X.iloc[:, 0] > 0), "wide", input_example=X.head())
    result = invoke("--models-dir", str(tmp_path / "models"), "info", "--model-name", "wide")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines and all(len(line) <= 100 or " " not in line.split(None, 1)[1] for line in lines)  # or one long path
    assert all(line == line.rstrip() for line in lines)
    assert result.output.count("feature number 17") == 1  # each column named once
    assert "\x1b[" not in result.output


def test_load_output_follows_the_stored_compression(tmp_path: Path) -> None:
    from sklearn.ensemble import RandomForestClassifier

    X = np.random.default_rng(0).normal(size=(200, 8))
    forest = RandomForestClassifier(n_estimators=20, random_state=0).fit(X, X[:, 0] > 0)
    models = tmp_path / "models"
    with ModelPersistence(models) as p:
        record = p.save_version(forest, "forest")
    assert record.artifact is not None and record.artifact.compression is not None
    out = tmp_path / "forest.joblib"
    result = invoke("--models-dir", str(models), "load", "--model-name", "forest", "--output", str(out))
    assert result.exit_code == 0, result.output
    assert "compressed with" in result.output
    uncompressed = tmp_path / "plain.joblib"
    joblib.dump(forest, uncompressed)
    assert out.stat().st_size < uncompressed.stat().st_size / 2
    np.testing.assert_array_equal(joblib.load(out).predict(X), forest.predict(X))  # plain joblib reads it
    pkl = invoke("--models-dir", str(models), "load", "--model-name", "forest", "--output", str(tmp_path / "f.pkl"))
    assert "uncompressed: a .pkl file is a plain pickle" in pkl.output and ".pkl.gz" in pkl.output


def test_an_existing_empty_registry_reads_as_empty(tmp_path: Path) -> None:
    """An index a tool created (tables, no versions) is a registry: reads answer, nothing is missing."""
    SqlIndex(f"sqlite:///{tmp_path / 'registry.db'}").close()
    with ModelPersistence(tmp_path) as p:
        assert p.list_models() == []
