"""``verify``, ``gc`` and ``reindex`` through the API, on each index backend."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from modelkeep import ModelNotFoundError, ModelPersistence, RegistryNotFoundError
from modelkeep.layout import sidecar_key
from modelkeep.maintenance import CORRUPT, MISSING, ORPHANED, SIDECAR, SIGNATURE

from .conftest import IndexTarget


def local(p: ModelPersistence, key: str) -> Path:
    path = p.store.local_path(key)
    assert path is not None
    return path


def make_old(path: Path, seconds: float = 7200) -> None:
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


def all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def filled(persistence: ModelPersistence) -> ModelPersistence:
    persistence.save({"v": 1}, "a", "1.0.0")
    persistence.save({"v": 2}, "a", "1.0.1")
    persistence.save({"v": 3}, "b", "2.0.0")
    return persistence


# -- verify ---------------------------------------------------------------------------------------


def test_verify_passes_a_healthy_registry(filled: ModelPersistence) -> None:
    report = filled.verify()
    assert report.ok
    assert report.versions_checked == 3
    assert report.bytes_checked > 0
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True


def test_verify_reports_missing_corrupt_and_orphaned_entries(filled: ModelPersistence) -> None:
    p = filled
    missing = p.get_version("a", "1.0.0").artifact
    corrupt = p.get_version("a", "1.0.1").artifact
    assert missing is not None and corrupt is not None
    local(p, missing.key).unlink()
    path = local(p, corrupt.key)
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes() + b"\0")
    stray = local(p, "b/2.0.0/b_v2.0.0.old.joblib")
    stray.write_bytes(b"left over")
    temp = local(p, ".tmp/0123abcd.part")
    temp.parent.mkdir(exist_ok=True)
    temp.write_bytes(b"half a save")

    report = p.verify()
    assert not report.ok
    assert [(x.model_name, x.version, x.key) for x in report.of_kind(MISSING)] == [("a", "1.0.0", missing.key)]
    assert [(x.model_name, x.version, x.key) for x in report.of_kind(CORRUPT)] == [("a", "1.0.1", corrupt.key)]
    assert sorted(x.key for x in report.of_kind(ORPHANED)) == [".tmp/0123abcd.part", "b/2.0.0/b_v2.0.0.old.joblib"]
    counts = report.to_dict()["counts"]
    assert counts == {CORRUPT: 1, MISSING: 1, ORPHANED: 2}


def test_verify_reports_files_whose_index_entry_is_gone(filled: ModelPersistence) -> None:
    p = filled
    rec = p.index.delete("b", "2.0.0")  # the index forgets the version, its files stay
    assert rec.artifact is not None
    orphans = sorted(x.key for x in p.verify().of_kind(ORPHANED))
    assert orphans == sorted([rec.artifact.key, sidecar_key("b", "2.0.0")])


def test_verify_reports_missing_and_stale_sidecars(filled: ModelPersistence) -> None:
    p = filled
    local(p, sidecar_key("a", "1.0.0")).unlink()
    stale = local(p, sidecar_key("b", "2.0.0"))
    data = json.loads(stale.read_text())
    data["metadata"]["note"] = "edited by hand"
    stale.write_text(json.dumps(data))
    problems = {(x.model_name, x.version) for x in p.verify().of_kind(SIDECAR)}
    assert problems == {("a", "1.0.0"), ("b", "2.0.0")}


def test_verify_checks_signatures_with_a_key(index_target: IndexTarget, tmp_path: Path) -> None:
    with index_target.persistence(tmp_path / "models") as p:
        rec = p.save_version({"v": 1}, "m", "1.0.0")
        p.index.put(dataclasses.replace(rec, signature=None))  # as saved by 0.1 without a key
    with index_target.persistence(tmp_path / "models", signing_key="k") as p:
        p.save({"v": 2}, "m", "1.0.1")
        bad = p.verify().of_kind(SIGNATURE)
        assert [(x.version, "not signed" in x.detail) for x in bad] == [("1.0.0", True)]


def test_verify_one_model(filled: ModelPersistence) -> None:
    p = filled
    art = p.get_version("b", "2.0.0").artifact
    assert art is not None
    local(p, art.key).unlink()
    assert p.verify("a").ok
    assert p.verify("a").versions_checked == 2
    assert [x.kind for x in p.verify("b").problems] == [MISSING]
    with pytest.raises(ModelNotFoundError):
        p.verify("ghost")


# -- gc -----------------------------------------------------------------------------------------


def _plant_leftovers(p: ModelPersistence) -> list[str]:
    keys = [".tmp/aaaa.part", ".tmp/bbbb.link", "a/1.0.0/a_v1.0.0.r0123456789ab.joblib", "c/9.9.9/c_v9.9.9.joblib"]
    for key in keys:
        path = local(p, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"leftover " + key.encode())
    return keys


def test_gc_dry_run_reports_and_removes_nothing(filled: ModelPersistence) -> None:
    p = filled
    keys = _plant_leftovers(p)
    root = Path(p.store.root)
    before = all_files(root)
    report = p.gc(dry_run=True, min_age_seconds=0)
    assert report.dry_run
    assert sorted(x.key for x in report.removed) == sorted(keys)
    assert report.bytes_freed == sum(len(b"leftover " + k.encode()) for k in keys)
    assert all_files(root) == before
    assert json.loads(json.dumps(report.to_dict()))["removed"]


def test_gc_removes_leftovers_and_keeps_everything_in_use(filled: ModelPersistence) -> None:
    p = filled
    keys = _plant_leftovers(p)
    report = p.gc(min_age_seconds=0)
    assert report.ok
    assert sorted(x.key for x in report.removed) == sorted(keys)
    assert not any(local(p, k).exists() for k in keys)
    assert not local(p, "c").exists(), "gc leaves empty version folders behind"
    assert p.verify().ok
    assert [p.load("a", "1.0.0"), p.load("a", "1.0.1"), p.load("b", "2.0.0")] == [{"v": 1}, {"v": 2}, {"v": 3}]
    assert p.gc(min_age_seconds=0).removed == []


def test_gc_keeps_young_files_that_may_belong_to_a_save_in_progress(filled: ModelPersistence) -> None:
    p = filled
    keys = _plant_leftovers(p)
    old = keys[:2]
    for key in old:
        make_old(local(p, key))
    report = p.gc(min_age_seconds=3600)
    assert sorted(x.key for x in report.removed) == sorted(old)
    assert sorted(x.key for x in report.kept) == sorted(keys[2:])
    assert all(local(p, k).exists() for k in keys[2:])


def test_gc_never_touches_the_sqlite_index_beside_the_models(tmp_path: Path) -> None:
    with ModelPersistence(tmp_path / "models") as p:
        p.save({"v": 1}, "m")
        for name in ("registry.db", "registry.db-wal", "registry.db-shm"):
            if (tmp_path / "models" / name).exists():
                make_old(tmp_path / "models" / name)
        report = p.gc(min_age_seconds=0)
        assert report.removed == []
        assert (tmp_path / "models" / "registry.db").exists()
        assert p.load("m") == {"v": 1}


def test_gc_rewrites_a_stale_sidecar_from_the_index(filled: ModelPersistence) -> None:
    p = filled
    path = local(p, sidecar_key("a", "1.0.1"))
    data = json.loads(path.read_text())
    data["artifact"]["key"] = "a/1.0.1/a_v1.0.1.rdeadbeef0000.joblib"  # what a killed overwrite leaves
    path.write_text(json.dumps(data))
    assert p.gc(dry_run=True, min_age_seconds=0).repaired == [sidecar_key("a", "1.0.1")]
    assert p.verify().of_kind(SIDECAR)
    assert p.gc(min_age_seconds=0).repaired == [sidecar_key("a", "1.0.1")]
    assert p.verify().ok


def test_gc_removes_unused_blobs_and_keeps_shared_ones(persistence: ModelPersistence) -> None:
    p = persistence
    shared = np.arange(40_000, dtype=np.float64)
    p.save_version({"w": shared, "x": np.ones(30_000)}, "n", "1.0.0", serialization_format="native")
    p.save_version({"w": shared}, "n", "1.0.1", serialization_format="native")
    blobs = set(p.store.list_keys(".blobs"))
    assert len(blobs) == 2
    p.index.delete("n", "1.0.0")  # the index forgets 1.0.0; its blob of ones is now unused
    report = p.gc(min_age_seconds=0)
    removed_blobs = [x.key for x in report.removed if x.key.startswith(".blobs/")]
    assert len(removed_blobs) == 1
    assert set(p.store.list_keys(".blobs")) == blobs - set(removed_blobs)
    assert np.array_equal(p.load("n", "1.0.1")["w"], shared)
    assert p.verify().ok


def test_gc_and_verify_on_an_object_store(tmp_path: Path) -> None:
    import uuid

    url = f"memory://mk-{uuid.uuid4().hex}"
    with ModelPersistence(url, registry_path=tmp_path) as p:
        p.save({"v": 1}, "m", "1.0.0")
        p.store.fs.pipe_file(p.store.full_path(".tmp/crashed.part"), b"partial")
        p.store.fs.pipe_file(p.store.full_path("m/1.0.0/m_v1.0.0.stray.joblib"), b"stray")
        assert sorted(x.key for x in p.verify().of_kind(ORPHANED)) == [
            ".tmp/crashed.part",
            "m/1.0.0/m_v1.0.0.stray.joblib",
        ]
        assert len(p.gc(min_age_seconds=3600).kept) == 2  # just written: too young
        assert len(p.gc(min_age_seconds=0).removed) == 2
        assert p.verify().ok
        assert p.load("m", "1.0.0") == {"v": 1}


# -- reindex --------------------------------------------------------------------------------------


def test_reindex_rebuilds_a_lost_index(filled: ModelPersistence) -> None:
    p = filled
    before = sorted((r.to_dict()["model_name"], r.version, json.dumps(r.to_dict())) for r in p.index.iter_records())
    p.index.clear()
    assert p.list_models() == []
    assert p.reindex() == 3
    after = sorted((r.to_dict()["model_name"], r.version, json.dumps(r.to_dict())) for r in p.index.iter_records())
    assert after == before
    assert p.load("a") == {"v": 2}
    assert p.verify().ok


def test_reindex_after_moving_the_store(tmp_path: Path) -> None:
    with ModelPersistence(tmp_path / "old", signing_key="k") as p:
        p.save({"v": 1}, "m", "1.0.0")
        p.save({"v": 2}, "m", "1.0.1")
        p.save_version({"w": np.arange(50_000)}, "n", "1.0.0", serialization_format="native")
    shutil.copytree(tmp_path / "old", tmp_path / "new", ignore=shutil.ignore_patterns("registry.db*"))
    with ModelPersistence(tmp_path / "new", signing_key="k") as p:
        with pytest.raises(RegistryNotFoundError):  # no registry.db: reads say so, reindex rebuilds it
            p.list_models()
        assert p.reindex() == 3
        assert p.list_versions("m") == ["1.0.0", "1.0.1"]
        assert p.load("m") == {"v": 2}  # signatures still verify: keys are relative to the root
        assert np.array_equal(p.load("n")["w"], np.arange(50_000))
        assert p.gc(min_age_seconds=0).removed == []  # blob references were rebuilt too
        assert p.verify().ok


def test_reindex_skips_sidecars_it_cannot_trust(filled: ModelPersistence, caplog: pytest.LogCaptureFixture) -> None:
    p = filled
    art = p.get_version("a", "1.0.0").artifact
    assert art is not None
    local(p, art.key).unlink()  # a save killed before its artifact was moved into place
    moved = local(p, "b/3.0.0/b_v3.0.0_metadata.json")  # a sidecar copied into the wrong folder
    moved.parent.mkdir()
    shutil.copy(local(p, sidecar_key("b", "2.0.0")), moved)
    escaping = local(p, sidecar_key("a", "1.0.1"))
    data = json.loads(escaping.read_text())
    data["artifact"]["key"] = "../../etc/passwd"
    escaping.write_text(json.dumps(data))
    garbage = local(p, "c/1.0.0/c_v1.0.0_metadata.json")
    garbage.parent.mkdir(parents=True)
    garbage.write_text("{not json")

    assert p.reindex() == 1
    assert [(r.model_name, r.version) for r in p.index.iter_records()] == [("b", "2.0.0")]
    warnings = caplog.text
    for why in ("artifact is missing", "not the folder it is in", "outside its version folder", "not a valid"):
        assert why in warnings
