"""The native format: out-of-band buffers as shared, content-addressed blobs."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import RandomForestRegressor

from modelkeep import IntegrityError, ModelPersistence
from modelkeep.layout import BLOB_DIR, blob_key

from .conftest import IndexTarget


@pytest.fixture(scope="module")
def forest_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((1500, 10)), rng.random(1500)


def _forest(data: tuple[np.ndarray, np.ndarray], n: int) -> RandomForestRegressor:
    X, y = data
    return RandomForestRegressor(n_estimators=n, random_state=0).fit(X, y)


@pytest.fixture
def native(index_target: IndexTarget, tmp_path: Path):  # type: ignore[no-untyped-def]
    p = index_target.persistence(tmp_path / "models", serialization_format="native")
    yield p
    p.close()


def _blob_files(root: Path) -> set[str]:
    return {p.name for p in (root / BLOB_DIR).rglob("*") if p.is_file()}


def test_round_trip_predicts_identically(native: ModelPersistence, forest_data) -> None:  # type: ignore[no-untyped-def]
    model = _forest(forest_data, 5)
    native.save(model, "rf")
    loaded = native.load("rf")
    assert np.array_equal(loaded.predict(forest_data[0]), model.predict(forest_data[0]))


def test_identical_model_writes_no_new_blob_bytes(native: ModelPersistence, forest_data) -> None:  # type: ignore[no-untyped-def]
    model = _forest(forest_data, 5)
    first = native.save_version(model, "rf")
    before = _blob_files(Path(native.store.root))
    second = native.save_version(model, "rf")
    assert first.artifact is not None and second.artifact is not None
    assert first.artifact.extra["blob_bytes_written"] > 0
    assert second.artifact.extra["blob_bytes_written"] == 0
    assert _blob_files(Path(native.store.root)) == before


def test_grown_forest_stores_only_new_trees(native: ModelPersistence, forest_data) -> None:  # type: ignore[no-untyped-def]
    X, y = forest_data
    model = RandomForestRegressor(n_estimators=10, random_state=0, warm_start=True).fit(X, y)
    first = native.save_version(model, "rf")
    model.n_estimators = 12
    model.fit(X, y)
    second = native.save_version(model, "rf")
    assert first.artifact is not None and second.artifact is not None
    old_blobs = {sha for sha, _ in first.artifact.extra["blobs"]}
    new_blobs = {sha for sha, _ in second.artifact.extra["blobs"]}
    assert old_blobs < new_blobs  # every old tree's arrays are reused
    new_bytes = sum(size for sha, size in second.artifact.extra["blobs"] if sha not in old_blobs)
    assert second.artifact.extra["blob_bytes_written"] == new_bytes
    assert new_bytes < first.artifact.extra["blob_bytes_written"] / 3


def test_delete_keeps_shared_blobs_until_last_reference(native: ModelPersistence, forest_data) -> None:  # type: ignore[no-untyped-def]
    model = _forest(forest_data, 3)
    native.save(model, "a")
    native.save(model, "b")
    root = Path(native.store.root)
    shared = _blob_files(root)
    native.delete("a", "1.0.0")
    native.purge("a", "1.0.0")
    assert _blob_files(root) == shared
    assert np.array_equal(native.load("b").predict(forest_data[0]), model.predict(forest_data[0]))
    native.delete("b", "1.0.0")
    assert _blob_files(root) == shared, "a trashed version keeps its blobs"
    native.purge("b", "1.0.0")
    assert _blob_files(root) == set()


def test_corrupted_blob_is_refused(native: ModelPersistence, forest_data) -> None:  # type: ignore[no-untyped-def]
    record = native.save_version(_forest(forest_data, 3), "rf")
    assert record.artifact is not None
    sha, _ = record.artifact.extra["blobs"][0]
    path = Path(native.store.full_path(blob_key(sha)))
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="blob"):
        native.load("rf")


def test_mmap_load_maps_blobs_read_only(native: ModelPersistence) -> None:
    arrays = {f"a{i}": np.arange(100_000, dtype=np.float64) * i for i in range(4)}
    native.save(arrays, "arrays")
    loaded = native.load("arrays", mmap_mode="r")
    for name, arr in arrays.items():
        assert np.array_equal(loaded[name], arr)
        assert not loaded[name].flags.writeable  # backed by the read-only map, not a copy
    writable = native.load("arrays")
    assert writable["a1"].flags.writeable


def test_mmap_load_refuses_a_blob_of_the_wrong_size(native: ModelPersistence) -> None:
    """The blobs of a mapped load are mapped on the caller's thread: each one's size is still
    checked against the record before anything is unpickled over it."""
    arrays = {f"a{i}": np.arange(50_000, dtype=np.float64) * i for i in range(3)}
    record = native.save_version(arrays, "arrays")
    assert record.artifact is not None
    sha, size = record.artifact.extra["blobs"][-1]
    path = Path(native.store.full_path(blob_key(sha)))
    path.chmod(0o644)
    with path.open("ab") as fh:
        fh.write(b"\0" * 8)  # one more float than recorded
    with pytest.raises(IntegrityError, match=f"{size} bytes|recorded {size}"):
        native.load("arrays", mmap_mode="r")


def test_loadable_from_files_without_the_index(native: ModelPersistence) -> None:
    arrays = {"w": np.linspace(0, 1, 50_000), "b": np.ones(3)}
    path = native.save(arrays, "plain")
    root = Path(native.store.root)
    meta = json.loads(path.with_name("plain_v1.0.0_metadata.json").read_text())
    blobs = [(root / BLOB_DIR / sha[:2] / sha).read_bytes() for sha, _size in meta["artifact"]["extra"]["blobs"]]
    loaded = pickle.loads(path.read_bytes(), buffers=blobs)
    assert np.array_equal(loaded["w"], arrays["w"]) and np.array_equal(loaded["b"], arrays["b"])


def test_native_refuses_a_compression_codec(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="native format"):
        ModelPersistence(tmp_path, serialization_format="native", compress=("zlib", 3))


def test_identical_joblib_saves_share_one_file(local_persistence: ModelPersistence, classifier) -> None:  # type: ignore[no-untyped-def]
    a = local_persistence.save(classifier, "m")
    b = local_persistence.save(classifier, "m")
    assert a != b and a.stat().st_ino == b.stat().st_ino
    local_persistence.delete("m", "1.0.0")
    local_persistence.purge("m", "1.0.0")
    assert not a.exists() and b.exists()
    assert local_persistence.load("m").predict([[1, 2, 3, 4]]).shape == (1,)
