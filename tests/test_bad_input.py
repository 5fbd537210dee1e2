"""Bad names, versions and metadata; duplicates; unpicklable models; a full disk.

Every refusal must leave the registry exactly as it was: no version, no file.
"""

from __future__ import annotations

import errno
import json
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelkeep import (
    InvalidNameError,
    MetadataError,
    ModelPersistence,
    SerializationError,
    StorageError,
    VersionExistsError,
)
from modelkeep.index.sql import Reservation
from modelkeep.metadata import to_json_safe
from modelkeep.storage import ArtifactStore, HashingWriter, StagedArtifact
from modelkeep.storage.local import LocalStore
from modelkeep.versions import validate_model_name, validate_version

from .conftest import IndexTarget

HYPOTHESIS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its content (the SQLite index aside: checked through the API)."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.name.startswith("registry.db")
    }


def artifact_files(p: ModelPersistence) -> list[str]:
    """Keys of files in version folders (not staged temp files, not the index)."""
    return [k for k in p.store.list_keys() if k.count("/") == 2 and not k.startswith(".")]


# -- names and versions -------------------------------------------------------------------------

BAD_NAMES = [
    "../x",
    "..",
    ".",
    "a/../../b",
    "/abs",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "C:\\x",
    "a\x00b",
    "",
    " ",
    "\t\n",
    "x" * 129,
    "con",
    "CON",
    "nul.txt",
    "com1",
    "latest",
    "registry.db",
    ".hidden",
    "-flag",
    "name with space",
    "ünïcode",
]
BAD_VERSIONS = ["../1", "1/2", "..", ".1", "/1", "", "  ", "1\x00", "v" * 65, "latest", "1 0", "1\\0", "-1"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_model_names_are_refused_and_nothing_is_written(persistence: ModelPersistence, name: str) -> None:
    root = Path(persistence.store.root).parent
    before = snapshot(root)
    with pytest.raises(ValueError) as info:
        persistence.save({"w": 1}, name, "1.0.0")
    assert isinstance(info.value, InvalidNameError)
    for call in (persistence.load, persistence.list_versions, persistence.get_metadata):
        with pytest.raises(InvalidNameError):
            call(name)
    assert snapshot(root) == before
    assert persistence.list_models() == []


@pytest.mark.parametrize("version", BAD_VERSIONS, ids=repr)
def test_bad_versions_are_refused_and_nothing_is_written(persistence: ModelPersistence, version: str) -> None:
    root = Path(persistence.store.root).parent
    before = snapshot(root)
    with pytest.raises(InvalidNameError):
        persistence.save({"w": 1}, "model", version)
    with pytest.raises(InvalidNameError):
        persistence.load("model", version)
    assert snapshot(root) == before
    assert persistence.list_models() == []


def test_an_absolute_name_cannot_escape_the_store(tmp_path: Path) -> None:
    target = tmp_path / "outside"
    with ModelPersistence(tmp_path / "models") as p, pytest.raises(InvalidNameError):
        p.save({"w": 1}, str(target))
    assert not target.exists()


NAMES = st.one_of(
    st.text(max_size=140),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,140}", fullmatch=True),
    st.sampled_from(BAD_NAMES),
    st.builds(lambda a, b: f"{a}{b}", st.sampled_from(["../", "/", "..", "a/", "\x00", " "]), st.text(max_size=10)),
)


@HYPOTHESIS
@given(name=NAMES, version=st.one_of(st.none(), NAMES))
def test_any_name_and_version_is_stored_inside_the_store_or_refused_without_a_trace(
    local_persistence: ModelPersistence, name: str, version: str | None
) -> None:
    p = local_persistence
    root = Path(p.store.root)
    before = snapshot(root.parent)
    models_before = p.list_models()
    try:
        path = p.save({"name": name}, name, version, overwrite=True)
    except ValueError as exc:
        assert isinstance(exc, InvalidNameError), exc
        assert snapshot(root.parent) == before
        assert p.list_models() == models_before
        return
    # Accepted: then it is a plain, safe file name, and the artifact sits inside the store.
    assert validate_model_name(name) == name
    assert path.resolve().is_relative_to(root.resolve())
    assert path.parent.parent.name == name
    assert p.load(name, path.parent.name) == {"name": name}
    if version is not None:
        assert validate_version(version) == version


# -- metadata -------------------------------------------------------------------------------------


class Opaque:
    """Something JSON cannot hold."""


LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.datetimes(),
    st.dates(),
    st.builds(np.float32, st.floats(width=32, allow_nan=True)),
    st.builds(np.int64, st.integers(-(2**63), 2**63 - 1)),
    st.builds(np.bool_, st.booleans()),
    st.builds(lambda xs: np.array(xs), st.lists(st.floats(allow_nan=True), max_size=5)),
    st.builds(Opaque),
    st.binary(max_size=4),
    st.complex_numbers(allow_nan=False),
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(), st.builds(Opaque)), inner, max_size=4),
    ),
    max_leaves=12,
)


@HYPOTHESIS
@given(value=VALUES)
def test_metadata_is_converted_to_plain_json_or_refused_without_a_trace(
    local_persistence: ModelPersistence, value: Any
) -> None:
    p = local_persistence
    root = Path(p.store.root)
    before = snapshot(root)
    versions_before = p.list_versions("meta")
    try:
        expected = to_json_safe({"field": value})
    except MetadataError:
        with pytest.raises(MetadataError):
            p.save_version({"w": 1}, "meta", metadata={"field": value})
        assert snapshot(root) == before
        assert p.list_versions("meta") == versions_before
        return
    rec = p.save_version({"w": 1}, "meta", metadata={"field": value})
    json.dumps(expected, allow_nan=False)  # strictly JSON: no NaN, no objects
    assert rec.metadata["field"] == expected["field"]
    assert p.get_version("meta", rec.version).metadata["field"] == expected["field"]
    sidecar = json.loads((root / "meta" / rec.version / f"meta_v{rec.version}_metadata.json").read_text())
    assert sidecar["metadata"]["field"] == expected["field"]


def test_documented_metadata_conversions(persistence: ModelPersistence) -> None:
    import datetime as dt

    rec = persistence.save_version(
        {"w": 1},
        "meta",
        metadata={
            "acc": np.float64(0.9),
            "n": np.int32(3),
            "curve": np.array([1.0, np.nan]),
            "missing": math.nan,
            "when": dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc),
            "labels": ("a", "b"),
            "ids": {2: "two"},
        },
    )
    assert rec.metadata == {
        "acc": 0.9,
        "n": 3,
        "curve": [1.0, None],
        "missing": None,
        "when": "2024-05-01T12:00:00+00:00",
        "labels": ["a", "b"],
        "ids": {"2": "two"},
    }


@pytest.mark.parametrize("bad", [Opaque(), b"bytes", {"k": {1j}}, {("tuple", "key"): 1}, np.zeros(10_001)])
def test_metadata_json_cannot_hold_is_refused_and_nothing_is_written(persistence: ModelPersistence, bad: Any) -> None:
    root = Path(persistence.store.root)
    before = snapshot(root)
    with pytest.raises(MetadataError, match="field"):
        persistence.save({"w": 1}, "meta", field=bad)
    assert snapshot(root) == before
    assert persistence.list_versions("meta") == []


# -- duplicate versions -----------------------------------------------------------------------------


def test_an_existing_version_is_refused_without_overwrite(persistence: ModelPersistence) -> None:
    path = persistence.save({"v": "original"}, "m", "1.0.0")
    original = path.read_bytes()
    rec = persistence.get_version("m", "1.0.0")
    with pytest.raises(VersionExistsError, match="overwrite=True"):
        persistence.save({"v": "impostor"}, "m", "1.0.0")
    assert path.read_bytes() == original
    assert persistence.get_version("m", "1.0.0") == rec
    assert persistence.load("m", "1.0.0") == {"v": "original"}
    assert persistence.verify().ok


def test_overwrite_replaces_the_artifact_and_leaves_nothing_behind(persistence: ModelPersistence) -> None:
    old_path = persistence.save({"v": "old"}, "m", "1.0.0")
    new_path = persistence.save({"v": "new"}, "m", "1.0.0", overwrite=True)
    assert persistence.load("m", "1.0.0") == {"v": "new"}
    assert not old_path.exists()
    assert new_path.exists()
    assert len(artifact_files(persistence)) == 2  # the new artifact and its sidecar
    newer_path = persistence.save({"v": "newer"}, "m", "1.0.0", overwrite=True)
    assert persistence.load("m", "1.0.0") == {"v": "newer"}
    assert not new_path.exists() and newer_path.exists()
    assert persistence.list_versions("m") == ["1.0.0"]
    assert persistence.verify().ok


FAIL_AT = ["sidecar", "commit", "index"]


def _fail_at(monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    """Make one step of the next save fail, as a full disk or a lost database would."""
    if step == "sidecar":
        for cls in (ArtifactStore, LocalStore):  # a local store writes small files its own way
            original = cls.write_bytes

            def write_bytes(self: ArtifactStore, key: str, data: bytes, original: Any = original) -> None:
                if key.endswith("_metadata.json"):
                    raise StorageError(errno.ENOSPC, "No space left on device")
                original(self, key, data)

            monkeypatch.setattr(cls, "write_bytes", write_bytes)
    elif step == "commit":
        original_commit = StagedArtifact.commit

        def commit(self: StagedArtifact, key: str) -> None:
            if not key.endswith("_metadata.json"):
                raise StorageError(errno.EIO, "I/O error")
            original_commit(self, key)

        monkeypatch.setattr(StagedArtifact, "commit", commit)
    else:

        def put(self: Reservation, record: Any) -> None:
            raise StorageError("registry database error: connection lost")

        monkeypatch.setattr(Reservation, "put", put)


@pytest.mark.parametrize("step", FAIL_AT)
def test_a_failed_overwrite_keeps_the_original_intact(
    persistence: ModelPersistence, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    path = persistence.save({"v": "original"}, "m", "1.0.0")
    original = path.read_bytes()
    rec = persistence.get_version("m", "1.0.0")
    _fail_at(monkeypatch, step)
    with pytest.raises(StorageError):
        persistence.save({"v": "replacement"}, "m", "1.0.0", overwrite=True)
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert persistence.get_version("m", "1.0.0") == rec
    assert persistence.load("m", "1.0.0") == {"v": "original"}
    report = persistence.verify()
    assert report.ok, report.to_dict()  # no leftovers, and the sidecar still matches


@pytest.mark.parametrize("step", FAIL_AT)
def test_a_failed_new_version_registers_nothing_and_leaves_no_file(
    persistence: ModelPersistence, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    persistence.save({"v": 0}, "m")
    root = Path(persistence.store.root)
    before = snapshot(root)
    _fail_at(monkeypatch, step)
    with pytest.raises(StorageError):
        persistence.save({"v": 1}, "m")
    monkeypatch.undo()
    assert persistence.list_versions("m") == ["1.0.0"]
    assert snapshot(root) == before
    assert persistence.save_version({"v": 1}, "m").version == "1.0.1"


# -- unpicklable models ---------------------------------------------------------------------------


def _lambda() -> Any:
    return lambda x: x


UNPICKLABLE = {
    "lambda": _lambda,
    "open-file": lambda: open(__file__),  # noqa: SIM115 - the open file is the test subject
    "lock": threading.Lock,
    "generator": lambda: (i for i in range(3)),
}


@pytest.mark.parametrize("fmt", ["joblib", "pickle", "skops"])
@pytest.mark.parametrize("kind", sorted(UNPICKLABLE))
def test_unpicklable_models_raise_serialization_error_and_leave_nothing(tmp_path: Path, fmt: str, kind: str) -> None:
    obj = UNPICKLABLE[kind]()
    with ModelPersistence(tmp_path / "models", serialization_format=fmt) as p:
        p.save({"ok": True}, "m", "1.0.0")
        before = snapshot(tmp_path)
        try:
            with pytest.raises(SerializationError, match=fmt):
                p.save({"model": obj}, "m")
        finally:
            if hasattr(obj, "close"):
                obj.close()
        assert p.list_versions("m") == ["1.0.0"]
        assert snapshot(tmp_path) == before
        assert p.store.list_keys(".tmp") == []
        assert p.verify().ok


# -- out of disk space ------------------------------------------------------------------------------


def _disk_with(monkeypatch: pytest.MonkeyPatch, free_bytes: int) -> None:
    """Every write through modelkeep's hashing writer, and every small file a local store writes
    (a sidecar), draws on ``free_bytes``; then ENOSPC."""
    left = {"bytes": free_bytes}
    original = HashingWriter.write
    original_small = LocalStore.write_bytes

    def draw(n: int) -> None:
        if n > left["bytes"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        left["bytes"] -= n

    def write(self: HashingWriter, data: Any) -> int:
        draw(memoryview(data).nbytes)
        return original(self, data)

    def write_bytes(self: LocalStore, key: str, data: bytes | memoryview) -> None:
        try:
            draw(memoryview(data).nbytes)
        except OSError as exc:
            raise StorageError(exc.errno, exc.strerror) from exc  # as LocalStore.write_bytes reports it
        original_small(self, key, data)

    monkeypatch.setattr(HashingWriter, "write", write)
    monkeypatch.setattr(LocalStore, "write_bytes", write_bytes)


@pytest.mark.parametrize("where", ["artifact", "sidecar"])
@pytest.mark.parametrize("fmt", ["joblib", "pickle"])
def test_running_out_of_disk_space_is_a_clear_error_and_changes_nothing(
    index_target: IndexTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, fmt: str
) -> None:
    big = {"w": np.random.default_rng(0).normal(size=200_000)}
    with index_target.persistence(tmp_path / "models", serialization_format=fmt) as p:
        p.save({"v": "earlier"}, "m", "1.0.0")
        root = Path(p.store.root)
        before = snapshot(root)
        art = p.save_version(big, "probe").artifact
        assert art is not None
        size = art.size
        p.delete("probe", "1.0.0")
        before = snapshot(root)
        _disk_with(monkeypatch, size // 2 if where == "artifact" else size + 100)
        with pytest.raises(StorageError) as info:
            p.save(big, "m")
        monkeypatch.undo()
        assert isinstance(info.value, OSError)
        assert info.value.errno == errno.ENOSPC
        assert "No space left on device" in str(info.value)
        assert p.list_versions("m") == ["1.0.0"]
        assert p.load("m", "1.0.0") == {"v": "earlier"}
        assert snapshot(root) == before
        assert p.store.list_keys(".tmp") == []
        assert p.verify().ok
