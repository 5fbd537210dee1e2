"""The local cache of remote artifacts (issue 27): hits, misses, LRU eviction under four
processes, and a cache folder someone else wrote treated like a hostile store."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelkeep import ModelPersistence
from modelkeep.errors import IntegrityError, StorageError
from modelkeep.storage.cache import ArtifactCache, cache_dir
from tests.s3_server import FaultProxy, S3Bucket, s3_options

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.s3


def _registry(bucket: S3Bucket, tmp_path: Path, endpoint: str | None = None, **kwargs: Any) -> ModelPersistence:
    p = ModelPersistence(
        models_dir=bucket.url(),
        registry_url=f"sqlite:///{tmp_path / 'registry.db'}",
        storage_options=s3_options(endpoint) if endpoint else bucket.storage_options,
        **kwargs,
    )
    p.ensure_registry()
    return p


def _model(n_bytes: int, seed: int) -> dict[str, Any]:
    return {"weights": np.random.default_rng(seed).standard_normal(n_bytes // 8), "seed": seed}


def _artifact_gets(proxy: FaultProxy, key: str) -> int:
    return sum(1 for m, path in proxy.requests if m == "GET" and key in path)


def _load_in_a_new_process(bucket: S3Bucket, tmp_path: Path, proxy: FaultProxy, expression: str) -> str:
    """What ``expression`` (of the loaded model ``m``) prints in a new process loading model 'm'."""
    script = (
        "import sys, json; from modelkeep import ModelPersistence; "
        "p = ModelPersistence(models_dir=sys.argv[1], registry_url=sys.argv[2], "
        f"storage_options=json.loads(sys.argv[3])); m = p.load('m'); print({expression})"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, bucket.url(), f"sqlite:///{tmp_path / 'registry.db'}",
         json.dumps(s3_options(proxy.endpoint_url))],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return out.stdout


def _entry_path(sha256: str) -> Path:
    return cache_dir() / "sha256" / sha256[:2] / sha256


def _count_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every read-and-check of an artifact's bytes (verified.read_artifact), by where it read."""
    from modelkeep.storage import base

    seen: list[str] = []
    original = base.read_artifact

    def counted(readinto: Any, size: int, expected: Any, where: str, *args: Any) -> Any:
        seen.append(where.split("/models/", 1)[-1])
        return original(readinto, size, expected, where, *args)

    monkeypatch.setattr(base, "read_artifact", counted)
    monkeypatch.setattr(ArtifactCache, "fetch", lambda *_a, **_k: pytest.fail("downloaded into the cache, then read"))
    return seen


def test_a_save_fills_the_cache_and_its_first_load_reads_it(
    s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """A save to S3 writes the bytes it uploads into the cache too (admitted under the SHA-256
    it computed, once the version is committed): the first load makes no GET of the artifact.
    A save that fails admits nothing."""
    p = _registry(s3_bucket, tmp_path, fault_proxy.endpoint_url, part_size="5MiB")
    model = _model(7 * MiB, seed=21)
    rec = p.save_version(model, "m", compress=False)
    assert rec.artifact is not None
    entry = _entry_path(rec.artifact.sha256)
    assert entry.is_file() and oct(entry.stat().st_mode & 0o777) == oct(0o400)
    assert hashlib.sha256(entry.read_bytes()).hexdigest() == rec.artifact.sha256
    fault_proxy.requests.clear()
    assert np.array_equal(p.load("m", rec.version)["weights"], model["weights"])
    assert _artifact_gets(fault_proxy, rec.artifact.key) == 0
    small = p.save_version({"tiny": 1}, "t")  # one PUT, cached the same way
    assert small.artifact is not None and _entry_path(small.artifact.sha256).is_file()
    fault_proxy.fault = lambda m, path: 500 if m == "PUT" and "partNumber=2" in path else None
    with pytest.raises(StorageError):
        p.save_version(_model(12 * MiB, seed=22), "m", compress=False)
    assert len(ArtifactCache().entries()) == 2 and list((cache_dir() / "tmp").iterdir()) == []
    fault_proxy.fault = lambda _m, _p: None
    p.close()


def test_a_miss_downloads_once_then_every_load_reads_the_cache(
    s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    p = _registry(s3_bucket, tmp_path, fault_proxy.endpoint_url, cache_max_bytes=0)
    model = _model(2 * MiB, seed=1)
    rec = p.save_version(model, "m", compress=False)
    p.close()
    assert rec.artifact is not None
    key, sha = rec.artifact.key, rec.artifact.sha256
    assert not _entry_path(sha).exists()  # saved with the cache off
    p = _registry(s3_bucket, tmp_path, fault_proxy.endpoint_url)
    with pytest.MonkeyPatch.context() as patch:
        checks = _count_checks(patch)
        assert np.array_equal(p.load("m")["weights"], model["weights"])  # miss: downloaded and checked
    assert _entry_path(sha).is_file() and _artifact_gets(fault_proxy, key) >= 1
    assert checks == [key]  # read and hashed once: the entry is written from the checked bytes
    assert hashlib.sha256(_entry_path(sha).read_bytes()).hexdigest() == sha
    assert oct(_entry_path(sha).stat().st_mode & 0o777) == oct(0o400)
    fault_proxy.requests.clear()
    # another registry object (the cache is shared), with a memory-mapped load: no GET of the artifact
    q = _registry(s3_bucket, tmp_path, fault_proxy.endpoint_url)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mmap_mode ignored: it is on a remote store"
        mapped = q.load("m", mmap_mode="r")
    assert np.array_equal(mapped["weights"], model["weights"])
    assert _artifact_gets(fault_proxy, key) == 0
    # ... and from a new process
    out = _load_in_a_new_process(s3_bucket, tmp_path, fault_proxy, "float(m['weights'].sum())")
    assert float(out) == pytest.approx(float(model["weights"].sum()))
    assert _artifact_gets(fault_proxy, key) == 0
    p.close()
    q.close()


def test_cache_off_and_local_stores_never_cache(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    p = _registry(s3_bucket, tmp_path, cache_max_bytes=0)
    assert p.cache is None
    p.save_version(_model(MiB, seed=2), "m")
    p.load("m")
    assert not (cache_dir() / "sha256").exists()
    with ModelPersistence(models_dir=tmp_path / "local") as local:
        assert local.cache is None


# -- a hostile cache folder --------------------------------------------------------------------
def _tamper_in_place(path: Path) -> None:
    path.chmod(0o600)
    data = bytearray(path.read_bytes())
    data[-200] ^= 0xFF
    path.write_bytes(bytes(data))


def _swap_for_a_link(path: Path) -> None:
    elsewhere = path.parent.parent.parent / "elsewhere"
    elsewhere.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(elsewhere)


def _hard_link(path: Path) -> None:
    os.link(path, path.parent.parent.parent / "second-name")


@pytest.mark.parametrize(
    "attack", [_tamper_in_place, _swap_for_a_link, _hard_link], ids=["tampered", "link", "hardlink"]
)
def test_an_entry_changed_by_someone_else_is_refused(
    attack: Any, s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A tampered, linked or hard-linked entry is never parsed: the load reads the store
    (one more GET), the entry is replaced by checked bytes, and a warning says so."""
    p = _registry(s3_bucket, tmp_path, fault_proxy.endpoint_url)
    model = _model(2 * MiB, seed=3)
    rec = p.save_version(model, "m", compress=False)
    assert rec.artifact is not None
    p.load("m")
    entry = _entry_path(rec.artifact.sha256)
    attack(entry)
    fault_proxy.requests.clear()
    with caplog.at_level(logging.WARNING, logger="modelkeep"):
        for mmap_mode in (None, "r"):
            assert np.array_equal(p.load("m", mmap_mode=mmap_mode)["weights"], model["weights"])
    assert _artifact_gets(fault_proxy, rec.artifact.key) >= 1
    assert "cache entry" in caplog.text
    assert not entry.is_symlink() and hashlib.sha256(entry.read_bytes()).hexdigest() == rec.artifact.sha256
    p.close()


def test_a_cache_folder_others_can_write_is_not_used(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    cache_dir().mkdir(parents=True)
    cache_dir().chmod(0o777)
    p = _registry(s3_bucket, tmp_path)
    rec = p.save_version(_model(MiB, seed=4), "m")  # a save does not fill such a cache either
    assert rec.artifact is not None
    assert not _entry_path(rec.artifact.sha256).exists()
    p.load("m")
    assert not _entry_path(rec.artifact.sha256).exists()
    assert p.cache is not None and p.cache.lookup(rec.artifact.sha256) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_an_entry_owned_by_another_user_is_not_trusted(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    p = _registry(s3_bucket, tmp_path)
    rec = p.save_version(_model(MiB, seed=5), "m")
    assert rec.artifact is not None and p.cache is not None
    p.load("m")
    os.chown(_entry_path(rec.artifact.sha256), 4242, 4242)
    assert p.cache.lookup(rec.artifact.sha256) is None


# -- eviction ----------------------------------------------------------------------------------
def test_least_recently_used_entries_go_first(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    p = _registry(s3_bucket, tmp_path, cache_max_bytes=int(2.5 * MiB))
    shas = []
    for i in range(3):
        rec = p.save_version(_model(MiB, seed=10 + i), "m")
        assert rec.artifact is not None
        shas.append(rec.artifact.sha256)
    p.load("m", "1.0.0")
    p.load("m", "1.0.1")
    p.load("m", "1.0.0")  # 1.0.0 is now the most recently used
    p.load("m", "1.0.2")  # does not fit: 1.0.1 goes
    assert [_entry_path(s).exists() for s in shas] == [True, False, True]
    assert p.cache is not None and p.cache.info().bytes <= 2.5 * MiB
    too_big = p.save_version(_model(3 * MiB, seed=20), "big")
    p.load("big")  # larger than the whole cache: read from the store, nothing evicted
    assert too_big.artifact is not None and not _entry_path(too_big.artifact.sha256).exists()
    assert [_entry_path(s).exists() for s in shas] == [True, False, True]


WORKER = """
import json, sys, random
import numpy as np
from modelkeep import ModelPersistence
from modelkeep.errors import IntegrityError, StorageError
spec = json.loads(sys.argv[1])
p = ModelPersistence(models_dir=spec["url"], registry_url=spec["registry"], storage_options=spec["options"],
                     cache_max_bytes=spec["cap"])
rng = random.Random(spec["worker"])
versions = spec["versions"]
for _ in range(spec["loads"]):
    v = rng.choice(versions)
    m = p.load("m", v)
    assert m["seed"] == spec["seeds"][v], (v, m["seed"])
    assert float(m["weights"][0]) == spec["first"][v]
print("ok")
"""


def test_four_processes_share_the_cache_within_its_cap(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """Four processes load six versions at random through a cache that holds three: every
    load is right, the cap holds, and what remains are complete, checked entries."""
    cap = int(3.5 * MiB)
    p = _registry(s3_bucket, tmp_path, cache_max_bytes=0)  # the loads fill the cache, not the saves
    seeds, first = {}, {}
    for i in range(6):
        model = _model(MiB, seed=100 + i)
        rec = p.save_version(model, "m")
        seeds[rec.version], first[rec.version] = 100 + i, float(model["weights"][0])
    spec = {
        "url": s3_bucket.url(),
        "registry": f"sqlite:///{tmp_path / 'registry.db'}",
        "options": s3_bucket.storage_options,
        "cap": cap,
        "versions": sorted(seeds),
        "seeds": seeds,
        "first": first,
        "loads": 12,
    }
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps({**spec, "worker": w})],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(4)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        assert out.strip() == "ok"
    cache = ArtifactCache(max_bytes=cap)
    found = cache.info()
    assert 1 <= found.entries <= 3 and found.bytes <= cap
    for sha, _size, _used in cache.entries():
        assert hashlib.sha256(_entry_path(sha).read_bytes()).hexdigest() == sha
    assert list((cache_dir() / "tmp").iterdir()) == []


# -- the command line -------------------------------------------------------------------------
def test_cache_info_prune_clear(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    p = _registry(s3_bucket, tmp_path)
    for i in range(2):
        p.save_version(_model(MiB, seed=30 + i), "m")
        p.load("m")
    (cache_dir() / "sha256" / "zz").mkdir()  # odd things someone left there
    (cache_dir() / "sha256" / "zz" / "not-a-digest").write_bytes(b"x")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "modelkeep", "cache", *args], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    info = run("info")
    assert info.returncode == 0, info.stderr
    assert str(cache_dir()) in info.stdout and "entries: 2," in info.stdout and "cap 10.0 GiB" in info.stdout
    pruned = run("prune", "--max-bytes", "1.5MiB")
    assert pruned.returncode == 0 and "removed 2 file(s)" in pruned.stdout  # one entry and the odd file
    assert ArtifactCache().info().entries == 1
    bad = run("prune", "--max-bytes", "lots")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "--max-bytes" in bad.stderr
    cleared = run("clear")
    assert cleared.returncode == 0 and "removed 1 file(s)" in cleared.stdout
    assert ArtifactCache().info().entries == 0


# -- native-format blobs -------------------------------------------------------------------------
def _native_model(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {"a": rng.standard_normal(300_000), "b": rng.integers(0, 9, 200_000), "seed": seed}


def _blob_shas(rec: Any) -> list[str]:
    assert rec.artifact is not None
    return [sha for sha, _size in rec.artifact.extra["blobs"]]


def _blob_gets(proxy: FaultProxy) -> int:
    return _artifact_gets(proxy, "/.blobs/")


def _same(loaded: dict[str, Any], model: dict[str, Any]) -> bool:
    return all(np.array_equal(loaded[k], model[k]) for k in ("a", "b")) and loaded["seed"] == model["seed"]


def test_native_blobs_are_cached_like_artifacts(s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path) -> None:
    """The native format keeps arrays as content-addressed blobs: a save caches them, a miss
    downloads each once, and every later load (mapped or not, from another process) reads the
    cache and makes no GET of a blob."""
    p = _registry(s3_bucket, tmp_path, fault_proxy.endpoint_url, serialization_format="native", compress=False)
    model = _native_model(seed=31)
    rec = p.save_version(model, "m")
    shas = _blob_shas(rec)
    assert len(shas) == 2 and all(_entry_path(sha).is_file() for sha in shas)  # the save filled the cache
    fault_proxy.requests.clear()
    assert _same(p.load("m"), model) and _blob_gets(fault_proxy) == 0
    assert p.cache is not None
    p.cache.clear()
    assert _same(p.load("m"), model)  # a miss: each blob downloaded and checked once, then kept
    assert _blob_gets(fault_proxy) == 2
    assert all(hashlib.sha256(_entry_path(sha).read_bytes()).hexdigest() == sha for sha in shas)
    fault_proxy.requests.clear()
    assert _same(p.load("m", mmap_mode="r"), model)
    assert int(_load_in_a_new_process(s3_bucket, tmp_path, fault_proxy, "int(m['b'].sum())")) == int(model["b"].sum())
    assert _blob_gets(fault_proxy) == 0
    p.close()


@pytest.mark.parametrize(
    "attack", [_tamper_in_place, _swap_for_a_link, _hard_link], ids=["tampered", "link", "hardlink"]
)
def test_a_tampered_blob_entry_is_refused(
    attack: Any, s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A blob entry someone changed, linked or hard-linked is never handed to the unpickler,
    mapped or not: the blob is read from the store again and the entry replaced."""
    p = _registry(s3_bucket, tmp_path, fault_proxy.endpoint_url, serialization_format="native", compress=False)
    model = _native_model(seed=32)
    sha = _blob_shas(p.save_version(model, "m"))[0]
    with caplog.at_level(logging.WARNING, logger="modelkeep"):
        for mmap_mode in (None, "r"):
            (cache_dir() / "second-name").unlink(missing_ok=True)  # the hard link of the round before
            attack(_entry_path(sha))
            fault_proxy.requests.clear()
            assert _same(p.load("m", mmap_mode=mmap_mode), model)
            assert _blob_gets(fault_proxy) == 1  # the refused blob only
    assert "cache entry" in caplog.text
    entry = _entry_path(sha)
    assert not entry.is_symlink() and hashlib.sha256(entry.read_bytes()).hexdigest() == sha
    p.close()


@pytest.mark.parametrize("cache_max_bytes", [0, None], ids=["no-cache", "cache"])
def test_a_swapped_blob_in_the_bucket_is_refused_by_a_mapped_load(
    cache_max_bytes: int | None, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    """Pages mapped from a local store skip the blob hash; bytes downloaded from S3 for a load
    with ``mmap_mode`` never do: whoever can write the bucket cannot swap an array's bytes."""
    p = _registry(s3_bucket, tmp_path, serialization_format="native", compress=False, cache_max_bytes=cache_max_bytes)
    rec = p.save_version(_native_model(seed=33), "m")
    if p.cache is not None:
        p.cache.clear()
    assert rec.artifact is not None
    sha, size = rec.artifact.extra["blobs"][0]
    key = next(k for k in s3_bucket.object_keys() if k.endswith(sha))
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=key, Body=b"\x00" * int(size))  # same size
    for mmap_mode in ("r", None):
        with pytest.raises(IntegrityError):
            p.load("m", mmap_mode=mmap_mode)
    assert not _entry_path(sha).exists()  # nothing unchecked entered the cache
    p.close()
