"""The rough edges a new user hit (issue 14), each pinned by a test."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelkeep import (
    ArtifactNotFoundError,
    ConfigError,
    MmapIgnoredWarning,
    ModelNotFoundError,
    ModelPersistence,
    SerializationError,
    VersionNotFoundError,
)
from modelkeep.config import load_settings


def test_zstd_artifact_reads_without_modelkeep_as_the_readme_says(local_persistence: ModelPersistence) -> None:
    import joblib
    import zstandard

    path = local_persistence.save({"w": np.arange(10.0)}, "m")
    assert local_persistence.get_version("m").artifact.compression.startswith("zstd")  # type: ignore[union-attr]
    with open(path, "rb") as f:  # the README's snippet
        model = joblib.load(io.BytesIO(zstandard.ZstdDecompressor().stream_reader(f).read()))
    np.testing.assert_array_equal(model["w"], np.arange(10.0))


@pytest.mark.parametrize("n", [10, 40_000, 200_000])  # 80 B, 320 KB (past codecs.SMALL_STREAM), 1.6 MB
def test_zstd_artifact_is_one_standard_frame_whatever_its_size(local_persistence: ModelPersistence, n: int) -> None:
    """A small stream is compressed in one call and a large one by zstd's worker threads: both
    are a single standard frame that zstd alone decodes, and both load."""
    import joblib
    import zstandard

    rng = np.random.default_rng(n)
    model = {"w": rng.integers(0, 50, n), "name": "m" * (n % 7)}
    path = local_persistence.save(model, "m")
    data = Path(path).read_bytes()
    params = zstandard.get_frame_parameters(data)
    assert params.content_size in (
        zstandard.CONTENTSIZE_UNKNOWN,
        len(zstandard.ZstdDecompressor().stream_reader(data).read()),
    )
    plain = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=False).read()
    assert joblib.load(io.BytesIO(plain))["w"].tolist() == model["w"].tolist()
    loaded = local_persistence.load("m")
    np.testing.assert_array_equal(loaded["w"], model["w"])
    assert loaded["name"] == model["name"]


@pytest.mark.parametrize("mode", ["r+", "w+", "x", "R", ""])
def test_invalid_mmap_mode_is_always_a_config_error(tmp_path: Path, mode: str) -> None:
    with ModelPersistence(models_dir=tmp_path / "m", compress=False) as p:
        for fmt in ("joblib", "pickle", "native"):
            p.save_version({"w": np.zeros(4)}, fmt, serialization_format=fmt, compress=False)
            with pytest.raises(ConfigError, match="mmap_mode must be"):
                p.load(fmt, mmap_mode=mode)
        with pytest.raises(ConfigError):  # checked before looking the model up
            p.load("missing-model", mmap_mode=mode)


@pytest.mark.parametrize(
    ("fmt", "compress", "reason"),
    [("joblib", True, "compressed"), ("pickle", True, "compressed"), ("pickle", False, "cannot be memory-mapped")],
)
def test_mmap_on_an_artifact_that_cannot_be_mapped_warns(tmp_path: Path, fmt: str, compress: bool, reason: str) -> None:
    with ModelPersistence(models_dir=tmp_path / "m") as p:
        p.save_version({"w": np.arange(5.0)}, "m", serialization_format=fmt, compress=compress)
        with pytest.warns(MmapIgnoredWarning, match=reason):
            loaded = p.load("m", mmap_mode="r")
        np.testing.assert_array_equal(loaded["w"], np.arange(5.0))


@pytest.mark.parametrize("fmt", ["joblib", "native"])
def test_mmap_that_maps_does_not_warn(tmp_path: Path, fmt: str) -> None:
    with ModelPersistence(models_dir=tmp_path / "m", serialization_format=fmt, compress=False) as p:
        p.save({"w": np.arange(10_000.0)}, "m")
        with warnings.catch_warnings():
            warnings.simplefilter("error", MmapIgnoredWarning)
            for mode in ("r", "c"):
                loaded = p.load("m", mmap_mode=mode)
                np.testing.assert_array_equal(loaded["w"], np.arange(10_000.0))


def test_arima_maps_copy_on_write_when_read_only_fails(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from statsmodels.tsa.arima.model import ARIMA

    # 10,000 points: its arrays are large enough (64 KiB) to be mapped rather than read.
    fitted = ARIMA(np.cumsum(np.random.default_rng(1).normal(size=10_000)), order=(1, 0, 0)).fit()
    with ModelPersistence(models_dir=tmp_path / "m", compress=False) as p:
        p.save(fitted, "arima")
        with caplog.at_level("WARNING", logger="modelkeep"):
            loaded = p.load("arima", mmap_mode="r")
    np.testing.assert_array_equal(loaded.forecast(3), fitted.forecast(3))
    assert "copy-on-write" in caplog.text


@pytest.mark.parametrize(
    ("content", "what"),
    [(b'{"accuracy": 123}\n', "a JSON document"), (b"hello, this is a note\n", "a text file"), (b"", "empty")],
)
def test_import_of_a_non_model_file_says_what_the_file_is(
    local_persistence: ModelPersistence, tmp_path: Path, content: bytes, what: str
) -> None:
    path = tmp_path / "metrics.json"
    path.write_bytes(content)
    with pytest.raises(SerializationError, match=f"{what}.*expected a model written with pickle.dump or joblib.dump"):
        local_persistence.import_file(path, "m")
    assert local_persistence.list_versions("m") == []


def test_cli_save_of_a_json_file_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text('{"accuracy": 123}')
    proc = subprocess.run(
        [sys.executable, "-m", "modelkeep", "--models-dir", "m", "save", "--model-name", "x",
         "--model-file", "metrics.json"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "Error: cannot read a model from 'metrics.json': it is a JSON document, not a model file; "
        "expected a model written with pickle.dump or joblib.dump (.pkl or .joblib)"
    ]


def test_import_file_on_a_missing_path_raises_the_modelkeep_error(
    local_persistence: ModelPersistence, tmp_path: Path
) -> None:
    with pytest.raises(ArtifactNotFoundError, match="Model file not found") as err:
        local_persistence.import_file(tmp_path / "nope.pkl", "m")
    assert isinstance(err.value, FileNotFoundError)
    good = tmp_path / "ok.pkl"
    good.write_bytes(pickle.dumps({"a": 1}))
    assert local_persistence.import_file(good, "m").version == "1.0.0"


def test_after_a_release_candidate_comes_the_release(persistence: ModelPersistence) -> None:
    persistence.save({"a": 1}, "m", "2.0.0-rc1")
    assert persistence.save_version({"a": 2}, "m").version == "2.0.0"
    assert persistence.save_version({"a": 3}, "m").version == "2.0.1"


def test_not_found_errors_list_versions_and_suggest_names(persistence: ModelPersistence) -> None:
    for v in ("1.0.0", "1.0.1", "1.1.0"):
        persistence.save({"v": v}, "churn", v)
    with pytest.raises(
        VersionNotFoundError, match=r"existing versions: 1\.0\.0, 1\.0\.1, 1\.1\.0 \(did you mean '1\.1\.0'"
    ):
        persistence.load("churn", "1.1.1")
    with pytest.raises(ModelNotFoundError, match="did you mean 'churn'"):
        persistence.load("chrun")
    with pytest.raises(ModelNotFoundError) as err:
        persistence.load("zzzzzz")
    assert "did you mean" not in str(err.value)


def test_bad_compress_variable_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODELKEEP_COMPRESS", "snappy")
    with pytest.raises(ConfigError, match=r"^invalid value for MODELKEEP_COMPRESS .*unknown joblib codec 'snappy'"):
        load_settings()
    monkeypatch.delenv("MODELKEEP_COMPRESS")
    (tmp_path / "config.yaml").write_text("persistence:\n  compress: snappy\n")
    with pytest.raises(ConfigError, match="persistence") as err:
        load_settings()
    assert "MODELKEEP_COMPRESS" not in str(err.value)  # from the file: named by its key


def test_manager_methods_are_documented() -> None:
    from modelkeep import ModelPersistenceManager

    public = [n for n in vars(ModelPersistenceManager) if not n.startswith("_")]
    assert public and all(getattr(ModelPersistenceManager, n).__doc__ for n in public), public
    docs = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    assert all(f"`{n}(" in docs for n in public)


def test_info_on_a_pipeline_keeps_one_line_per_row(tmp_path: Path, iris_data: Any) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = iris_data
    pipe = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=300, C=0.5))]).fit(X, y)
    with ModelPersistence(models_dir=tmp_path / "models") as p:
        p.save(pipe, "pipe")
        steps = p.get_version("pipe").metadata["model_params"]["steps"]
    assert "\n" not in str(steps)
    out = subprocess.run(
        [sys.executable, "-m", "modelkeep", "--models-dir", "models", "info", "--model-name", "pipe"],
        cwd=tmp_path, capture_output=True, text=True, check=True, env={**_env(), "COLUMNS": "400"},
    ).stdout  # fmt: skip
    rows = [line for line in out.splitlines() if "steps" in line]
    assert len(rows) == 1 and "LogisticRegression" in rows[0] and "StandardScaler" in rows[0]


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_docs_name_the_real_blob_path() -> None:
    formats = (Path(__file__).resolve().parents[1] / "docs" / "formats.md").read_text()
    assert ".blobs/<sha256>`" not in formats and ".blobs/<sha[:2]>/<sha>" in formats


def test_a_class_from_main_warns_at_save(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(
        "import warnings\n"
        "from modelkeep import ModelPersistence\n"
        "class Model:\n"
        "    pass\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    ModelPersistence(models_dir='models').save(Model(), 'm')\n"
        "print([str(w.message) for w in caught])\n"
    )
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "__main__.Model" in out.stdout and "other programs cannot load it" in out.stdout


def test_export_file_to_a_bare_file_name_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, classifier: Any
) -> None:
    """``modelkeep load --output churn.joblib`` writes into the current folder (a bare name has no parent)."""
    from modelkeep import ModelPersistence

    monkeypatch.chdir(tmp_path)
    with ModelPersistence(models_dir=tmp_path / "models") as p:
        p.save(classifier, "churn", "1.0.0")
        written = p.export_file("churn", "1.0.0", "churn.joblib")
    assert (tmp_path / "churn.joblib").is_file()
    assert str(written) == "churn.joblib"
