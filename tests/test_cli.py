"""The command line, run through its real entry points.

Most tests use click's ``CliRunner`` on ``modelkeep.cli.cli``; a few run the
installed ``modelkeep`` script and ``python -m modelkeep`` in a subprocess.
Every test gets its own models directory under ``tmp_path``.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pytest
from click.testing import CliRunner, Result
from sklearn.linear_model import LogisticRegression

import modelkeep
import modelkeep.cli
from modelkeep._progress import ProgressBar
from modelkeep.cli import cli

SRC_DIR = Path(modelkeep.__file__).resolve().parent.parent
HEAVY_MODULES = ("pandas", "sklearn", "numpy", "sqlalchemy", "joblib", "rich", "pydantic", "psycopg", "psycopg2")

Run = Callable[..., Result]


# -- fixtures -----------------------------------------------------------------


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MODELKEEP_* variables and no ./config.yaml leak in from outside."""
    for var in list(os.environ):
        if var.startswith("MODELKEEP_") and var != "MODELKEEP_CONFIG_DIR":  # that one is the test's own
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def training_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(0)
    X = rng.randn(20, 3)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    return X, y


@pytest.fixture(scope="module")
def trained(training_data: tuple[np.ndarray, np.ndarray]) -> LogisticRegression:
    X, y = training_data
    return LogisticRegression().fit(X, y)


@pytest.fixture
def model_file(tmp_path: Path, trained: LogisticRegression) -> Path:
    path = tmp_path / "model.joblib"
    joblib.dump(trained, path)
    return path


@pytest.fixture
def pickle_file(tmp_path: Path, trained: LogisticRegression) -> Path:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(trained))
    return path


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def run(models_dir: Path) -> Run:
    """Invoke the CLI on the test's models dir; ``input`` feeds stdin."""

    def invoke(*args: str, input: str | None = None, global_args: tuple[str, ...] = ()) -> Result:
        return CliRunner().invoke(cli, ["--models-dir", str(models_dir), *global_args, *args], input=input)

    return invoke


def write_metadata(tmp_path: Path, accuracy: float, **extra: object) -> Path:
    path = tmp_path / f"meta_{accuracy}.json"
    path.write_text(json.dumps({"accuracy": accuracy, "f1_score": accuracy - 0.05, **extra}))
    return path


def save(run: Run, model_file: Path, name: str = "clf", version: str | None = "1.0.0", *extra: str) -> dict:
    """Save through the CLI with --json and return the parsed record."""
    args = ["save", "--model-name", name, "--model-file", str(model_file), "--json", *extra]
    if version is not None:
        args += ["--version", version]
    result = run(*args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_user_error(result: Result, *fragments: str) -> None:
    """Exit 1, exactly one ``Error: ...`` line on stderr naming the problem, no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), (fragment, lines[0])
    assert "Traceback" not in result.output


# -- help and version ---------------------------------------------------------


def test_help_lists_every_command(run: Run) -> None:
    result = run("--help")
    assert result.exit_code == 0
    for command in ("save", "load", "list", "info", "compare", "delete"):
        assert command in result.stdout
    for option in ("--config", "--models-dir", "--registry-url", "--verbose", "--quiet", "--version"):
        assert option in result.stdout


def test_save_help_explains_the_allow_list_and_trust_file(run: Run) -> None:
    result = run("save", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split()).lower()
    assert "allow-list" in text and "--trust-file" in text and "only for a file you wrote yourself" in text


def test_version_flag_prints_package_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"modelkeep {modelkeep.__version__}"


# -- save ---------------------------------------------------------------------


def test_save_prints_version_and_path(run: Run, model_file: Path, models_dir: Path) -> None:
    result = run("save", "--model-name", "clf", "--version", "1.0.0", "--model-file", str(model_file))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Saved clf version 1.0.0 to ")
    path = Path(result.stdout.strip().split(" to ", 1)[1])
    assert path.is_file()
    assert models_dir.resolve() in path.parents


def test_save_json_records_metadata_and_real_digest(run: Run, model_file: Path, tmp_path: Path) -> None:
    meta = write_metadata(tmp_path, 0.9, dataset_version="v2")
    result = run(
        "save", "--model-name", "clf", "--version", "1.0.0", "--model-file", str(model_file),
        "--metadata", str(meta), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    record = json.loads(result.stdout)
    assert record["model_name"] == "clf"
    assert record["version"] == "1.0.0"
    assert record["model_type"] == "LogisticRegression"
    assert record["metadata"]["accuracy"] == 0.9
    assert record["metadata"]["dataset_version"] == "v2"
    stored = Path(record["path"]).read_bytes()
    assert record["artifact"]["sha256"] == hashlib.sha256(stored).hexdigest()
    assert record["artifact"]["size"] == len(stored)


def test_save_without_version_allocates_next_patch(run: Run, model_file: Path) -> None:
    assert save(run, model_file, version=None)["version"] == "1.0.0"
    assert save(run, model_file, version=None)["version"] == "1.0.1"


def test_save_pickle_file_with_format_and_no_compress(run: Run, pickle_file: Path) -> None:
    record = save(run, pickle_file, "clf", "1.0.0", "--format", "pickle", "--no-compress")
    assert record["artifact"]["format"] == "pickle"
    assert not record["artifact"]["compression"]
    compressed = save(run, pickle_file, "clf", "1.0.1", "--format", "joblib", "--compress")
    assert compressed["artifact"]["format"] == "joblib"
    assert compressed["artifact"]["compression"]


def test_save_existing_version_needs_overwrite(run: Run, model_file: Path, tmp_path: Path) -> None:
    save(run, model_file)
    args = ("save", "--model-name", "clf", "--version", "1.0.0", "--model-file", str(model_file))
    assert_user_error(run(*args), "1.0.0")
    meta = write_metadata(tmp_path, 0.99)
    result = run(*args, "--overwrite", "--metadata", str(meta))
    assert result.exit_code == 0, result.output
    info = json.loads(run("info", "--model-name", "clf", "--version", "1.0.0", "--json").stdout)
    assert info["metadata"]["accuracy"] == 0.99


# -- load ---------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".joblib", ".pkl"])
def test_load_writes_a_working_model(
    run: Run,
    model_file: Path,
    tmp_path: Path,
    trained: LogisticRegression,
    training_data: tuple[np.ndarray, np.ndarray],
    suffix: str,
) -> None:
    save(run, model_file)
    output = tmp_path / f"out{suffix}"
    result = run("load", "--model-name", "clf", "--version", "1.0.0", "--output", str(output))
    assert result.exit_code == 0, result.output
    assert "clf version 1.0.0" in result.stdout
    loaded = pickle.loads(output.read_bytes()) if suffix == ".pkl" else joblib.load(output)
    X, _ = training_data
    np.testing.assert_array_equal(loaded.predict_proba(X), trained.predict_proba(X))


def test_load_defaults_to_latest_version(run: Run, model_file: Path, tmp_path: Path) -> None:
    save(run, model_file, version="1.9.0")
    save(run, model_file, version="1.10.0")
    result = run("load", "--model-name", "clf", "--output", str(tmp_path / "latest.joblib"))
    assert result.exit_code == 0, result.output
    assert "version 1.10.0" in result.stdout


def test_load_never_overwrites_without_force(run: Run, model_file: Path, tmp_path: Path) -> None:
    save(run, model_file)
    output = tmp_path / "exists.pkl"
    output.write_bytes(b"keep me")
    assert_user_error(run("load", "--model-name", "clf", "--output", str(output)), "exists")
    assert output.read_bytes() == b"keep me"
    result = run("load", "--model-name", "clf", "--output", str(output), "--force")
    assert result.exit_code == 0, result.output
    assert output.read_bytes() != b"keep me"
    assert type(pickle.loads(output.read_bytes())).__name__ == "LogisticRegression"


def test_quiet_load_prints_nothing(run: Run, model_file: Path, tmp_path: Path) -> None:
    save(run, model_file)
    result = run("load", "--model-name", "clf", "--output", str(tmp_path / "q.pkl"), global_args=("--quiet",))
    assert result.exit_code == 0, result.output
    assert result.output == ""
    assert (tmp_path / "q.pkl").is_file()


# -- list ---------------------------------------------------------------------


def test_list_without_a_registry_is_an_error_and_creates_nothing(run: Run, models_dir: Path) -> None:
    result = run("list")
    assert result.exit_code == 1
    assert "no modelkeep registry" in result.stderr and "registry.db not found" in result.stderr
    assert not models_dir.exists()  # a mistyped --models-dir must not start a new registry


def test_list_empty_registry(run: Run, model_file: Path) -> None:
    save(run, model_file)
    assert run("delete", "--model-name", "clf", "--version", "1.0.0", "--yes").exit_code == 0
    result = run("list")
    assert result.exit_code == 0, result.output
    assert "No models registered" in result.stdout
    result = run("list", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []


def test_list_models_with_counts_and_latest(run: Run, model_file: Path) -> None:
    for version in ("1.0.0", "1.2.0", "1.10.0"):
        save(run, model_file, "alpha", version)
    save(run, model_file, "beta", "0.1.0")
    result = run("list", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["alpha"]["version_count"] == 3
    assert rows["alpha"]["latest_version"] == "1.10.0"
    assert rows["beta"]["version_count"] == 1
    table = run("list").stdout
    lines = {line.split()[0]: line.split() for line in table.splitlines() if line.strip()}
    assert lines["alpha"][1:3] == ["3", "1.10.0"]
    assert lines["beta"][1:3] == ["1", "0.1.0"]


def test_list_versions_of_one_model(run: Run, model_file: Path) -> None:
    first = save(run, model_file, "clf", "1.0.0")
    save(run, model_file, "clf", "2.0.0")
    result = run("list", "--model-name", "clf", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["version"] for r in rows] == ["1.0.0", "2.0.0"]
    assert rows[0]["created_at"] == first["created_at"]
    assert rows[0]["size"] == first["artifact"]["size"]
    table = run("list", "--model-name", "clf").stdout
    assert "Version" in table and "Created" in table and "Size" in table
    assert table.index("1.0.0") < table.index("2.0.0")


# -- info ---------------------------------------------------------------------


def test_info_shows_metadata_artifact_and_environment(run: Run, model_file: Path, tmp_path: Path) -> None:
    record = save(run, model_file, "clf", "1.0.0", "--metadata", str(write_metadata(tmp_path, 0.875)))
    result = run("info", "--model-name", "clf", "--version", "1.0.0")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("LogisticRegression", "accuracy", "0.875", "model_params.C", "sha256", record["artifact"]["sha256"]):
        assert text in out, text
    assert record["artifact"]["format"] in out
    assert record["environment"]["python"] in out


def test_info_json_defaults_to_latest(run: Run, model_file: Path) -> None:
    save(run, model_file, "clf", "1.0.0")
    save(run, model_file, "clf", "1.1.0")
    result = run("info", "--model-name", "clf", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    data = json.loads(result.stdout)
    assert data["version"] == "1.1.0"
    assert {"artifact", "environment", "metadata", "path"} <= data.keys()


# -- compare ------------------------------------------------------------------


@pytest.fixture
def three_versions(run: Run, model_file: Path, tmp_path: Path) -> None:
    for version, accuracy in (("1.0.0", 0.7), ("1.1.0", 0.8), ("2.0.0", 0.9)):
        save(run, model_file, "clf", version, "--metadata", str(write_metadata(tmp_path, accuracy)))


@pytest.mark.usefixtures("three_versions")
def test_compare_selected_versions_and_metrics_json(run: Run) -> None:
    result = run("compare", "--model-name", "clf", "--versions", "1.0.0,2.0.0", "--metrics", "accuracy", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert json.loads(result.stdout) == [
        {"version": "1.0.0", "accuracy": 0.7},
        {"version": "2.0.0", "accuracy": 0.9},
    ]


@pytest.mark.usefixtures("three_versions")
def test_compare_table(run: Run) -> None:
    result = run("compare", "--model-name", "clf", "--metrics", "accuracy,f1_score")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()]
    assert rows[0] == ["version", "accuracy", "f1_score"]
    assert ["1.1.0", "0.8", "0.75"] in rows
    all_columns = run("compare", "--model-name", "clf", "--json")
    assert all_columns.exit_code == 0, all_columns.output
    data = json.loads(all_columns.stdout)
    assert [row["version"] for row in data] == ["1.0.0", "1.1.0", "2.0.0"]
    assert all("accuracy" in row for row in data)


@pytest.mark.usefixtures("three_versions")
def test_compare_unknown_metric_is_named(run: Run) -> None:
    assert_user_error(run("compare", "--model-name", "clf", "--metrics", "accuracy,roc_auc"), "roc_auc")


@pytest.mark.usefixtures("three_versions")
def test_compare_unknown_version(run: Run) -> None:
    assert_user_error(run("compare", "--model-name", "clf", "--versions", "1.0.0,9.9.9"), "9.9.9")


# -- delete -------------------------------------------------------------------


def versions_of(run: Run, name: str = "clf") -> list[str]:
    result = run("list", "--model-name", name, "--json")
    if result.exit_code != 0:
        return []
    return [row["version"] for row in json.loads(result.stdout)]


def test_delete_with_yes_still_works(run: Run, model_file: Path) -> None:
    save(run, model_file, "clf", "1.0.0")
    save(run, model_file, "clf", "2.0.0")
    result = run("delete", "--model-name", "clf", "--version", "1.0.0", "--yes")
    assert result.exit_code == 0, result.output
    assert "Deleted clf version 1.0.0" in result.stdout and "trash" in result.stdout
    assert versions_of(run) == ["2.0.0"]


def test_seed_delete_command_runs_in_a_script_without_prompt(models_dir: Path, model_file: Path, run: Run) -> None:
    """The seed's ``modelkeep delete --model-name my_model --version 1.0.0``, no --yes, stdin not a terminal."""
    save(run, model_file, "my_model", "1.0.0")
    proc = run_module("--models-dir", str(models_dir), "delete", "--model-name", "my_model", "--version", "1.0.0")
    assert proc.returncode == 0, proc.stderr
    assert versions_of(run, "my_model") == []
    restored = run("restore", "--model-name", "my_model", "--version", "1.0.0")
    assert restored.exit_code == 0, restored.output
    assert versions_of(run, "my_model") == ["1.0.0"]


def test_delete_unknown_version_fails(run: Run, model_file: Path) -> None:
    save(run, model_file)
    assert_user_error(run("delete", "--model-name", "clf", "--version", "3.0.0"), "3.0.0")
    assert versions_of(run) == ["1.0.0"]


# -- errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("info", "--model-name", "missing"), "missing"),
        (("load", "--model-name", "missing", "--output", "x.pkl"), "missing"),
        (("list", "--model-name", "missing"), "missing"),
        (("compare", "--model-name", "missing"), "missing"),
        (("delete", "--model-name", "missing", "--version", "1.0.0", "--yes"), "missing"),
    ],
)
def test_unknown_model(run: Run, model_file: Path, args: tuple[str, ...], fragment: str) -> None:
    save(run, model_file)  # the registry exists; only the model is unknown
    assert_user_error(run(*args), fragment)


@pytest.mark.parametrize(
    "args",
    [
        ("info", "--model-name", "clf", "--version", "9.9.9"),
        ("load", "--model-name", "clf", "--version", "9.9.9", "--output", "x.pkl"),
        ("delete", "--model-name", "clf", "--version", "9.9.9", "--yes"),
    ],
)
def test_unknown_version(run: Run, model_file: Path, args: tuple[str, ...]) -> None:
    save(run, model_file)
    assert_user_error(run(*args), "9.9.9")
    assert versions_of(run) == ["1.0.0"]


@pytest.mark.parametrize("name", ["../evil", "has space", "con"])
def test_bad_model_name(run: Run, model_file: Path, models_dir: Path, name: str) -> None:
    result = run("save", "--model-name", name, "--version", "1.0.0", "--model-file", str(model_file))
    assert_user_error(result, "model name")
    assert not (models_dir.parent / "evil").exists()


def test_bad_version_string(run: Run, model_file: Path) -> None:
    result = run("save", "--model-name", "clf", "--version", "../1", "--model-file", str(model_file))
    assert_user_error(result, "version")


def test_missing_model_file(run: Run, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pkl"
    assert_user_error(run("save", "--model-name", "clf", "--model-file", str(missing)), "nope.pkl")


def test_bad_metadata_json(run: Run, model_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"accuracy": 0.9,')
    result = run("save", "--model-name", "clf", "--model-file", str(model_file), "--metadata", str(bad))
    assert_user_error(result, "bad.json", "invalid json")
    assert versions_of(run) == []


def test_metadata_must_be_an_object(run: Run, model_file: Path, tmp_path: Path) -> None:
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    result = run("save", "--model-name", "clf", "--model-file", str(model_file), "--metadata", str(listed))
    assert_user_error(result, "json object")


def test_missing_metadata_file(run: Run, model_file: Path) -> None:
    result = run("save", "--model-name", "clf", "--model-file", str(model_file), "--metadata", "absent.json")
    assert_user_error(result, "absent.json")


@pytest.mark.parametrize(
    "args",
    [
        ("info",),  # missing --model-name
        ("save", "--model-name", "clf"),  # missing --model-file
        ("save", "--model-name", "clf", "--model-file", "m.pkl", "--format", "onnx"),
        ("load", "--model-name", "clf"),  # missing --output
        ("delete", "--model-name", "clf"),  # missing --version
        ("frobnicate",),
        ("list", "--bogus"),
        ("compare", "--model-name", "clf", "--metrics", ","),
    ],
)
def test_usage_errors_exit_2(run: Run, args: tuple[str, ...]) -> None:
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert "Error" in result.stderr
    assert result.stdout == ""


def test_corrupted_artifact_fails_integrity_check(run: Run, model_file: Path, tmp_path: Path) -> None:
    save(run, model_file)
    info = run("info", "--model-name", "clf", "--json")
    artifact = Path(json.loads(info.stdout)["path"])
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    output = tmp_path / "out.pkl"
    result = run("load", "--model-name", "clf", "--output", str(output))
    assert_user_error(result, "clf")
    assert any(word in result.stderr.lower() for word in ("integrity", "sha-256", "sha256", "digest", "corrupt"))
    assert not output.exists()


def test_verbose_logs_library_messages(run: Run, model_file: Path) -> None:
    args = ("save", "--model-name", "clf", "--version", "1.0.0", "--model-file", str(model_file))
    verbose = run(*args, global_args=("--verbose",))
    assert verbose.exit_code == 0, verbose.output
    assert "saved clf version 1.0.0" in verbose.stderr
    quiet = run(*args, "--overwrite")  # later runs in the same process log nothing
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == ""


def test_verbose_adds_traceback(run: Run) -> None:
    result = run("info", "--model-name", "missing", global_args=("--verbose",))
    assert result.exit_code == 1
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")


def test_a_bug_is_shown_as_a_bug(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception that is not a library or OS error is a bug in modelkeep: the user sees the
    traceback and a request to report it, and exit status 70, not a plain ``Error:`` line."""
    import modelkeep.config

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(modelkeep.config, "load_settings", broken)
    result = run("list")
    assert result.exit_code == 70, result.output
    assert "Traceback" in result.stderr and "RuntimeError: boom" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: internal error in modelkeep") and "please report" in last
    assert last.endswith("RuntimeError: boom second line")


def test_library_errors_use_cli_spelling(run: Run, model_file: Path, tmp_path: Path) -> None:
    """Remedies name the flags (--overwrite, --force), not the API's keyword arguments."""
    args = ("save", "--model-name", "clf", "--version", "1.0.0", "--model-file", str(model_file))
    assert run(*args).exit_code == 0
    again = run(*args)
    assert_user_error(again, "--overwrite")
    assert "overwrite=True" not in again.stderr
    out = tmp_path / "exported.joblib"
    out.write_bytes(b"keep me")
    exported = run("load", "--model-name", "clf", "--output", str(out))
    assert_user_error(exported, "--force")
    assert "force=True" not in exported.stderr and out.read_bytes() == b"keep me"


# -- configuration ------------------------------------------------------------


def test_config_file_sets_models_dir(model_file: Path, tmp_path: Path) -> None:
    config = tmp_path / "custom.yaml"
    store = tmp_path / "from_config"
    config.write_text(f"persistence:\n  models_dir: {store}\n  serialization_format: pickle\n")
    runner = CliRunner()
    args = ["--config", str(config), "save", "--model-name", "clf", "--model-file", str(model_file), "--json"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["artifact"]["format"] == "pickle"
    assert store.resolve() in Path(record["path"]).parents
    # --models-dir overrides the config file: the other folder has no registry
    other = runner.invoke(cli, ["--config", str(config), "--models-dir", str(tmp_path / "other"), "list", "--json"])
    assert other.exit_code == 1 and str(tmp_path / "other") in other.stderr


def test_registry_url_selects_the_index(run: Run, model_file: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    result = run("save", "--model-name", "clf", "--model-file", str(model_file), global_args=("--registry-url", url))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "elsewhere.db").is_file()
    listed = run("list", "--json", global_args=("--registry-url", url))
    assert [row["name"] for row in json.loads(listed.stdout)] == ["clf"]


# -- progress -----------------------------------------------------------------


def _terminal_console(buffer: io.StringIO) -> object:
    from rich.console import Console

    return Console(file=buffer, force_terminal=True, width=100)


def test_progress_bar_draws_for_large_artifacts() -> None:
    buffer = io.StringIO()
    bar = ProgressBar(enabled=True, threshold=1000, console=_terminal_console(buffer))
    with bar("Writing clf 1.0.0", 4000) as advance:
        for _ in range(4):
            advance(1000)
    assert "Writing clf 1.0.0" in buffer.getvalue()


def test_progress_bar_of_unknown_size_starts_past_threshold() -> None:
    buffer = io.StringIO()
    bar = ProgressBar(enabled=True, threshold=1000, console=_terminal_console(buffer))
    with bar("small", None) as advance:
        advance(999)
    assert buffer.getvalue() == ""
    with bar("streaming", None) as advance:
        advance(600)
        advance(600)
    assert "streaming" in buffer.getvalue()


@pytest.mark.parametrize(("enabled", "total"), [(True, 999), (False, 10**9)])
def test_progress_bar_silent_when_small_or_disabled(enabled: bool, total: int) -> None:
    buffer = io.StringIO()
    bar = ProgressBar(enabled=enabled, threshold=1000, console=_terminal_console(buffer))
    with bar("x", total) as advance:
        advance(total)
    assert buffer.getvalue() == ""


def test_large_save_without_terminal_draws_no_progress(run: Run, tmp_path: Path, trained: LogisticRegression) -> None:
    big = LogisticRegression().set_params(C=trained.C)
    big.__dict__.update(trained.__dict__)
    big.ballast_ = np.random.RandomState(1).randn(9 * 1024 * 1024 // 8 + 1)  # > 8 MiB, incompressible
    path = tmp_path / "big.joblib"
    joblib.dump(big, path)
    result = run("save", "--model-name", "big", "--model-file", str(path), "--no-compress")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    loaded = run("load", "--model-name", "big", "--output", str(tmp_path / "big_out.joblib"))
    assert loaded.exit_code == 0, loaded.output
    assert loaded.stderr == ""


# -- real entry points in a subprocess ----------------------------------------


def _subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELKEEP_") or k == "MODELKEEP_CONFIG_DIR"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC_DIR), env.get("PYTHONPATH")]))
    return env


def _run_python(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def run_module(*args: str, python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return _run_python(*python_flags, "-m", "modelkeep", *args)


def test_installed_console_script(model_file: Path, models_dir: Path) -> None:
    script = Path(sysconfig.get_path("scripts")) / "modelkeep"
    assert script.is_file(), f"{script} missing: run `pip install -e .`"
    base = [str(script), "--models-dir", str(models_dir)]
    saved = subprocess.run(
        [*base, "save", "--model-name", "clf", "--model-file", str(model_file), "--json"],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert saved.returncode == 0, saved.stderr
    assert json.loads(saved.stdout)["version"] == "1.0.0"
    missing = subprocess.run(
        [*base, "info", "--model-name", "nope"], capture_output=True, text=True, env=_subprocess_env(), timeout=120
    )
    assert missing.returncode == 1
    assert missing.stderr.startswith("Error: ") and len(missing.stderr.strip().splitlines()) == 1


def test_python_dash_m(model_file: Path, models_dir: Path) -> None:
    saved = run_module("--models-dir", str(models_dir), "save", "--model-name", "clf", "--model-file", str(model_file))
    assert saved.returncode == 0, saved.stderr
    listed = run_module("--models-dir", str(models_dir), "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr == ""
    assert json.loads(listed.stdout)[0]["name"] == "clf"
    usage = run_module("--models-dir", str(models_dir), "info")
    assert usage.returncode == 2
    assert "Usage: modelkeep info" in usage.stderr


def test_help_imports_no_heavy_module() -> None:
    proc = run_module("--help", python_flags=("-X", "importtime"))
    assert proc.returncode == 0, proc.stderr
    assert "Usage: modelkeep" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    heavy = sorted(m for m in imported if m.split(".")[0] in HEAVY_MODULES)
    assert heavy == [], f"--help imported heavy modules: {heavy[:10]}"


#: Runs the CLI on argv in a fresh interpreter, then prints the command modules it imported.
_COMMAND_MODULES = """
import sys
from modelkeep.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(sorted(m for m in sys.modules if m.startswith("modelkeep.cli_")), file=sys.stderr)
"""


#: The modules of the commands cli.py imports when they are named.
_LAZY_MODULES = {f"modelkeep.{module}" for module, _ in modelkeep.cli.LAZY_COMMANDS.values()}


def _command_modules(*args: str) -> set[str]:
    proc = _run_python("-c", _COMMAND_MODULES, *args)
    assert proc.returncode == 0 and "Usage: modelkeep" in proc.stdout, proc.stderr
    return _LAZY_MODULES & set(ast.literal_eval(proc.stderr.strip().splitlines()[-1]))


def test_a_command_imports_only_its_own_module() -> None:
    """Commands defined outside cli.py are imported when named: a read command runs none of them."""
    assert _command_modules("list", "--help") == set()
    assert _command_modules("alias", "--help") == {"modelkeep.cli_lifecycle"}
    assert _command_modules("--help") == _LAZY_MODULES  # --help shows every command's help: it imports them all


def test_a_mistyped_command_is_answered_with_the_close_names() -> None:
    proc = run_module("serch")
    assert proc.returncode == 2
    assert "No such command 'serch'" in proc.stderr and "'search'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# -- copy ---------------------------------------------------------------------


def test_copy_to_another_registry_keeps_digests(run: Run, model_file: Path, tmp_path: Path) -> None:
    first = save(run, model_file, version="1.0.0")
    save(run, model_file, "other", "2.0.0")
    dest = tmp_path / "team"
    result = run("copy", "--to-models-dir", str(dest), "--model-name", "clf", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["copied"] == [["clf", "1.0.0"]] and report["skipped"] == []
    copied = CliRunner().invoke(cli, ["--models-dir", str(dest), "info", "--model-name", "clf", "--json"])
    assert copied.exit_code == 0, copied.output
    assert json.loads(copied.stdout)["artifact"]["sha256"] == first["artifact"]["sha256"]
    again = run("copy", "--to-models-dir", str(dest), "--json")
    assert json.loads(again.stdout)["skipped"] == [["clf", "1.0.0"]]
    assert json.loads(again.stdout)["copied"] == [["other", "2.0.0"]]


def test_copy_needs_a_destination(run: Run, model_file: Path) -> None:
    save(run, model_file)
    result = run("copy")
    assert result.exit_code == 2
    assert "destination" in result.stderr


# -- verify / gc / reindex ------------------------------------------------------


def test_verify_clean_then_corrupt(run: Run, model_file: Path) -> None:
    record = save(run, model_file)
    ok = run("verify", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["ok"] is True
    path = Path(record["path"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    bad = run("verify", "--json")
    assert bad.exit_code == 1
    report = json.loads(bad.stdout)
    assert report["ok"] is False
    assert report["counts"] == {"corrupt": 1}
    assert report["problems"][0]["version"] == "1.0.0"
    people = run("verify")
    assert people.exit_code == 1 and "1 problem" in people.stdout


def test_gc_dry_run_then_remove(run: Run, model_file: Path, models_dir: Path) -> None:
    save(run, model_file)
    leftover = models_dir / ".tmp" / "dead.part"
    leftover.parent.mkdir(exist_ok=True)
    leftover.write_bytes(b"x" * 10)
    dry = run("gc", "--dry-run", "--min-age", "0", "--json")
    assert dry.exit_code == 0, dry.output
    assert [item["key"] for item in json.loads(dry.stdout)["removed"]] == [".tmp/dead.part"]
    assert leftover.exists()
    young = run("gc", "--json")  # default min age: an hour, so the fresh file is kept
    assert json.loads(young.stdout)["removed"] == [] and leftover.exists()
    real = run("gc", "--min-age", "0")
    assert real.exit_code == 0 and "removed 1 file" in real.stdout
    assert not leftover.exists()


def test_reindex_rebuilds_a_lost_index(run: Run, model_file: Path, models_dir: Path) -> None:
    save(run, model_file, version="1.0.0")
    save(run, model_file, version="1.1.0")
    for f in models_dir.glob("registry.db*"):
        f.unlink()
    assert run("reindex").exit_code == 1  # no terminal and no --yes: refuse
    result = run("reindex", "--yes")
    assert result.exit_code == 0, result.output
    assert "Reindexed 2 version(s)" in result.stdout
    listed = run("list", "--model-name", "clf", "--json")
    assert [row["version"] for row in json.loads(listed.stdout)] == ["1.0.0", "1.1.0"]
