"""Transfers to and from S3 (moto on loopback): truncated downloads, parallel parts, commits
under S3's single-copy limit, and abandoned multipart uploads (issue 27, part 1).

Sizes stay at a few MiB with small parts: moto keeps every object in memory.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import delete

from modelkeep import ModelPersistence
from modelkeep.errors import ClaimLostError, ConfigError, IntegrityError, StorageError
from modelkeep.index import claims as claims_module
from modelkeep.index.claims import list_claims
from modelkeep.index.schema import claims as claims_table
from modelkeep.storage import S3Store, verified
from modelkeep.storage import s3 as s3_module
from tests.s3_server import FaultProxy, S3Bucket, s3_options

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.s3


def _proxied(bucket: S3Bucket, proxy: FaultProxy, tmp_path: Path, **kwargs: Any) -> ModelPersistence:
    p = ModelPersistence(
        models_dir=bucket.url(),
        registry_url=f"sqlite:///{tmp_path / 'registry.db'}",
        storage_options=s3_options(proxy.endpoint_url),
        **kwargs,
    )
    p.ensure_registry()
    return p


def _model(n_bytes: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {"weights": rng.integers(0, 1 << 62, size=n_bytes // 8, dtype=np.int64), "seed": seed}


@pytest.mark.parametrize("cut", [0, 100, 3 * MiB + 5])
def test_truncated_download_is_a_storage_error_and_frees_its_buffers(
    cut: int, s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GET whose body stops early (the server promised more bytes) is one StorageError,
    not a BufferError from the verified-read path, and leaves no buffer mapped (the cache is
    off here: the load reads the store straight into private memory)."""
    p = _proxied(s3_bucket, fault_proxy, tmp_path, cache_max_bytes=0)
    model = _model(6 * MiB)
    rec = p.save_version(model, "m", compress=False)
    assert rec.artifact is not None
    key = rec.artifact.key
    fault_proxy.truncate = lambda m, path: cut if m == "GET" and key in path else None
    made: list[Any] = []
    original = verified.private_buffer

    def recorded(size: int, *, dense: bool = True) -> Any:
        made.append(original(size, dense=dense))
        return made[-1]

    monkeypatch.setattr(verified, "private_buffer", recorded)
    for _ in range(3):
        with pytest.raises(StorageError) as info:
            p.load("m", rec.version)
        assert "\n" not in str(info.value)
        assert "BufferError" not in repr(info.value.__cause__)
    assert fault_proxy.injected  # the fault really happened
    assert made and all(buf.closed for buf in made)  # unmapped at once, not left to the collector
    fault_proxy.truncate = lambda m, path: None
    loaded = p.load("m", rec.version)
    assert np.array_equal(loaded["weights"], model["weights"])
    p.close()


def test_truncated_download_into_the_cache_leaves_nothing(
    s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    from modelkeep.storage.cache import cache_dir

    saver = _proxied(s3_bucket, fault_proxy, tmp_path, cache_max_bytes=0)  # a save fills the cache
    rec = saver.save_version(_model(6 * MiB), "m", compress=False)
    saver.close()
    p = _proxied(s3_bucket, fault_proxy, tmp_path)
    assert rec.artifact is not None
    key = rec.artifact.key
    fault_proxy.truncate = lambda m, path: 1000 if m == "GET" and key in path else None
    with pytest.raises(StorageError, match="cannot read"):
        p.load("m", rec.version)
    assert not (cache_dir() / "tmp").exists() or list((cache_dir() / "tmp").iterdir()) == []
    assert not (cache_dir() / "sha256" / rec.artifact.sha256[:2] / rec.artifact.sha256).exists()
    p.close()


# -- parallel transfers -------------------------------------------------------------------------
def _part_kind(method: str, path: str) -> str:
    if method == "PUT" and "partNumber=" in path:
        return "part"
    if method == "GET" and "/m/" in path:
        return "get"
    return method


def _slow_parts(method: str, path: str) -> float:
    return 0.05 if _part_kind(method, path) in ("part", "get") else 0.0


def test_parts_go_up_in_parallel_within_the_memory_bound(
    s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """Several parts are on the wire at once, never more than max_concurrency, and the bytes
    written but not yet received stay under (max_concurrency + 1) parts."""
    p = _proxied(s3_bucket, fault_proxy, tmp_path, max_concurrency=3, part_size="5MiB")
    assert isinstance(p.store, S3Store) and (p.store.max_concurrency, p.store.part_size) == (3, 5 * MiB)
    fault_proxy.kind, fault_proxy.delay = _part_kind, _slow_parts
    received = 0
    ahead: list[int] = []
    written = 0

    def advance(n: int) -> None:
        nonlocal written
        written += n

    def watch(method: str, path: str) -> None:
        nonlocal received
        if _part_kind(method, path) == "part":
            ahead.append(written - received)
            received += 5 * MiB
        return None

    fault_proxy.fault = watch  # type: ignore[assignment]
    data = np.random.default_rng(1).bytes(26 * MiB)
    with p.store.staged() as st:
        with st.open(advance) as w:
            for i in range(0, len(data), MiB):
                w.write(data[i : i + MiB])
        st.commit("m/1.0.0/m.joblib")
    assert fault_proxy.peak["part"] == 3  # parallel, and never more than allowed
    assert ahead and max(ahead) <= 4 * 5 * MiB + MiB
    assert s3_bucket.pending_uploads() == []
    stored = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="models/m/1.0.0/m.joblib")["Body"].read()
    assert stored == data and hashlib.sha256(data).hexdigest() == st.sha256
    p.close()


def test_save_and_load_through_parallel_ranged_gets(
    s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    p = _proxied(s3_bucket, fault_proxy, tmp_path, max_concurrency=4, part_size="5MiB", cache_max_bytes=0)
    assert isinstance(p.store, S3Store)
    p.store.read_chunk = 2 * MiB
    model = _model(12 * MiB, seed=2)
    rec = p.save_version(model, "m", compress=False)
    fault_proxy.kind, fault_proxy.delay = _part_kind, _slow_parts
    fault_proxy.requests.clear()
    loaded = p.load("m", rec.version)
    assert np.array_equal(loaded["weights"], model["weights"])
    gets = [path for m, path in fault_proxy.requests if _part_kind(m, path) == "get"]
    assert len(gets) == 7  # ceil((12 MiB + header + 1 probe byte) / 2 MiB), each byte fetched once
    assert 2 <= fault_proxy.peak["get"] <= 4
    p.close()


@pytest.mark.parametrize("cache_max_bytes", [0, None], ids=["direct", "through-the-cache"])
def test_a_replaced_object_is_refused_before_it_is_parsed(
    cache_max_bytes: int | None, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    """Bytes swapped under the key (same length, or longer) fail the digest or the probe byte,
    whether the load reads the store directly or downloads into the cache."""
    options: dict[str, Any] = {
        "models_dir": s3_bucket.url(),
        "registry_url": f"sqlite:///{tmp_path / 'registry.db'}",
        "storage_options": s3_bucket.storage_options,
        "part_size": "5MiB",
    }
    with ModelPersistence(**options, cache_max_bytes=0) as saver:  # a save would fill the cache
        rec = saver.save_version(_model(11 * MiB, seed=3), "m", compress=False)
    p = ModelPersistence(**options, cache_max_bytes=cache_max_bytes)
    assert rec.artifact is not None
    key = f"models/{rec.artifact.key}"
    original = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=key)["Body"].read()
    flipped = bytearray(original)
    flipped[-100] ^= 1
    for tampered in (bytes(flipped), original + b"\x00"):
        s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=key, Body=tampered)
        with pytest.raises(IntegrityError):
            p.load("m", rec.version)
    p.close()


def test_transfer_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODELKEEP_MAX_CONCURRENCY", "3")
    monkeypatch.setenv("MODELKEEP_PART_SIZE", "6MiB")
    kwargs: dict[str, Any] = {
        "models_dir": s3_bucket.url(),
        "registry_url": f"sqlite:///{tmp_path / 'registry.db'}",
        "storage_options": s3_bucket.storage_options,
    }
    with ModelPersistence(**kwargs) as p:
        assert isinstance(p.store, S3Store)
        assert (p.store.max_concurrency, p.store.part_size) == (3, 6 * MiB)
    with ModelPersistence(**kwargs, max_concurrency=5) as p:
        assert isinstance(p.store, S3Store) and p.store.max_concurrency == 5
    monkeypatch.setenv("MODELKEEP_PART_SIZE", "1MiB")
    with pytest.raises(ConfigError, match="part_size must be at least 5 MiB"):
        ModelPersistence(**kwargs)
    monkeypatch.setenv("MODELKEEP_PART_SIZE", "8MiB")
    monkeypatch.setenv("MODELKEEP_MAX_CONCURRENCY", "0")
    with pytest.raises(ConfigError, match="MODELKEEP_MAX_CONCURRENCY"):
        ModelPersistence(**kwargs)


# -- committing under S3's single-copy limit ----------------------------------------------------
def _is_part_copy(method: str, path: str) -> bool:
    return method == "PUT" and "partNumber=" in path and "/m/" in path


@pytest.mark.parametrize("lowered", [True, False], ids=["part-copy", "single-copy-refused"])
def test_commit_over_the_single_copy_limit(
    lowered: bool, s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumable save stages its bytes and commits them by a server-side copy. The proxy
    refuses a single CopyObject above 6 MiB, as S3 does above 5 GiB. With the limit lowered to
    match, a 14 MiB artifact commits as parallel UploadPartCopy parts; without, the commit
    fails cleanly: nothing under the final key, no upload left open."""
    fault_proxy.copy_limit = 6 * MiB
    if lowered:
        monkeypatch.setattr(s3_module, "COPY_LIMIT", 6 * MiB)
        monkeypatch.setattr(s3_module, "COPY_PART_SIZE", 5 * MiB)
    p = _proxied(s3_bucket, fault_proxy, tmp_path, part_size="5MiB")
    model = _model(14 * MiB, seed=4)
    if not lowered:
        with pytest.raises(StorageError, match=r"cannot commit .*larger than the maximum allowable size"):
            p.save_version(model, "m", compress=False, resume=True)
        assert [k for k in s3_bucket.object_keys() if not k.startswith("models/.tmp/")] == []
        assert s3_bucket.pending_uploads() == []
        return
    rec = p.save_version(model, "m", compress=False, resume=True)
    copies = [path for m, path in fault_proxy.requests if _is_part_copy(m, path)]
    assert len(copies) == 3  # 5 + 5 + 4 MiB, copied server-side
    assert not any(status == 400 for _, _, status in fault_proxy.injected)
    assert s3_bucket.pending_uploads() == []
    assert np.array_equal(p.load("m", rec.version)["weights"], model["weights"])


def test_a_failed_part_copy_aborts_the_upload(
    s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "COPY_LIMIT", 6 * MiB)
    monkeypatch.setattr(s3_module, "COPY_PART_SIZE", 5 * MiB)
    p = _proxied(s3_bucket, fault_proxy, tmp_path, part_size="5MiB")
    fault_proxy.fault = lambda m, path: 500 if _is_part_copy(m, path) and "partNumber=2" in path else None
    with pytest.raises(StorageError, match="cannot commit"):
        p.save_version(_model(14 * MiB, seed=5), "m", compress=False, resume=True)
    assert fault_proxy.injected
    assert s3_bucket.pending_uploads() == []
    assert [k for k in s3_bucket.object_keys() if "/1.0.0/" in k and k.endswith(".joblib")] == []
    assert p.list_versions("m") == []


# -- uploads straight to the final key (issue 27: no second copy) --------------------------------
def test_a_save_over_the_single_copy_limit_copies_nothing(
    s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """A save uploads straight to its final key under the version's claim: the proxy refuses
    any single CopyObject above 6 MiB (S3's 5 GiB limit, lowered) and COPY_LIMIT is not
    lowered to match, yet a 14 MiB artifact commits, with no copy and nothing staged."""
    fault_proxy.copy_limit = 6 * MiB
    p = _proxied(s3_bucket, fault_proxy, tmp_path, part_size="5MiB")
    model = _model(14 * MiB, seed=6)
    rec = p.save_version(model, "m", compress=False)
    assert rec.artifact is not None and rec.artifact.key == "m/1.0.0/m_v1.0.0.joblib"  # the seed's layout
    assert fault_proxy.copies == []
    assert not [path for _m, path in fault_proxy.requests if "/.tmp/" in path]
    parts = [path for m, path in fault_proxy.requests if m == "PUT" and "partNumber=" in path]
    # a multipart upload (joblib's one 14 MiB chunk makes a part of its own, not three 5 MiB ones)
    assert len(parts) >= 2 and all("/m/1.0.0/m_v1.0.0.joblib" in path for path in parts)
    assert s3_bucket.pending_uploads() == []
    assert np.array_equal(p.load("m", rec.version)["weights"], model["weights"])
    over = p.save_version(_model(14 * MiB, seed=7), "m", rec.version, compress=False, overwrite=True)
    assert over.artifact is not None and over.artifact.key.startswith("m/1.0.0/m_v1.0.0.r")  # a new revision key
    assert fault_proxy.copies == []
    assert [k for k in s3_bucket.object_keys() if k.endswith(".joblib")] == [f"models/{over.artifact.key}"]
    assert p.verify().ok
    p.close()


def test_a_failed_direct_upload_leaves_nothing(s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path) -> None:
    """A part refused by the server: the multipart upload is aborted, no object, no version,
    no claim left; the next save of the same version goes through."""
    p = _proxied(s3_bucket, fault_proxy, tmp_path, part_size="5MiB")
    fault_proxy.fault = lambda m, path: 500 if m == "PUT" and "partNumber=2" in path else None
    with pytest.raises(StorageError, match="cannot upload"):
        p.save_version(_model(14 * MiB, seed=8), "m", "1.0.0", compress=False)
    assert fault_proxy.injected
    assert s3_bucket.pending_uploads() == [] and s3_bucket.object_keys() == []
    assert p.list_versions("m") == [] and list_claims(p.index) == []
    fault_proxy.fault = lambda _m, _p: None
    assert p.save_version({"ok": 1}, "m", "1.0.0").version == "1.0.0"
    p.close()


def test_an_object_already_under_the_key_is_never_replaced(
    s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """A crash leftover under the seed's key makes the save take a revision key; an object
    that appears under the key while the save uploads (a writer whose claim was taken over)
    is not overwritten: the completion is conditional, the save fails and registers nothing."""
    p = _proxied(s3_bucket, fault_proxy, tmp_path, part_size="5MiB")
    leftover = "models/m/1.0.0/m_v1.0.0.joblib"
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=leftover, Body=b"left by a crash")
    rec = p.save_version(_model(7 * MiB, seed=9), "m", "1.0.0", compress=False)
    assert rec.artifact is not None and rec.artifact.key.startswith("m/1.0.0/m_v1.0.0.r")
    body = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=leftover)["Body"].read()
    assert body == b"left by a crash"

    intruder = "models/m/2.0.0/m_v2.0.0.joblib"

    def sneak_in(method: str, path: str) -> None:
        if method == "PUT" and "partNumber=1" in path and "/2.0.0/" in path:
            s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=intruder, Body=b"another writer's bytes")
        return None

    fault_proxy.fault = sneak_in  # type: ignore[assignment]
    with pytest.raises(StorageError, match="an object appeared under that key"):
        p.save_version(_model(7 * MiB, seed=10), "m", "2.0.0", compress=False)
    # the failed attempt may remove the unreferenced object under its claim (gc would), but never replaced it
    there = [k for k in s3_bucket.object_keys() if "/2.0.0/" in k]
    bodies = [s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=k)["Body"].read() for k in there]
    assert bodies in ([], [b"another writer's bytes"])
    assert p.list_versions("m") == ["1.0.0"] and s3_bucket.pending_uploads() == []
    p.close()


def test_an_upload_sends_whole_bytes_uncopied_and_copies_buffers_the_caller_may_reuse(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    """A write of a whole ``bytes`` object of one to four parts ends a part and, when nothing is
    gathered before it, is sent as it is; a mutable buffer (a ``bytearray``, an array's memory)
    is copied before ``write`` returns, so the caller changing it afterwards changes nothing
    uploaded. No part but the last is shorter than ``part_size``; the object is what was written."""
    p = ModelPersistence(
        models_dir=s3_bucket.url(),
        registry_url=f"sqlite:///{tmp_path / 'registry.db'}",
        storage_options=s3_bucket.storage_options,
        part_size="5MiB",
        max_concurrency=2,
    )
    store = p.store
    assert isinstance(store, S3Store)
    calls = _spy_calls(store)
    rng = np.random.default_rng(3)
    reused = bytearray(rng.bytes(3 * MiB))
    array = rng.integers(0, 255, size=6 * MiB, dtype=np.uint8)
    writes: list[Any] = [b"head", rng.bytes(12 * MiB), rng.bytes(7 * MiB), reused, memoryview(array), rng.bytes(1000)]
    expected = b"".join(bytes(w) for w in writes)
    upload = store.begin_direct("m/1/x.bin")
    peak = 0
    for data in writes:
        upload.write(data)
        peak = max(peak, upload._in_flight_bytes)
    reused[:] = bytes(len(reused))  # the caller reuses its buffers once write() returned
    array[:] = 0
    upload.complete()
    stored = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="models/m/1/x.bin")["Body"].read()
    assert stored == expected
    sizes = [kw["size"] for m, kw in calls if m == "upload_part"]
    # the head and the 12 MiB together, the 7 MiB as it is, then 5 MiB parts of the copied buffers
    assert sizes == [4 + 12 * MiB, 7 * MiB, 5 * MiB, 4 * MiB + 1000]
    assert peak <= max(2 * 5 * MiB, max(sizes))  # parts' worth of bytes in flight, or one long part
    assert s3_bucket.pending_uploads() == []
    p.close()


#: Uploads two 12 MiB ``bytes`` as two parts, in a process of its own (moto runs in the tests'
#: process), and prints the peak of the memory Python allocated meanwhile.
TRACED_UPLOAD = r"""
import json, sys, tracemalloc
import numpy as np
from modelkeep import ModelPersistence
spec = json.loads(sys.argv[1])
p = ModelPersistence(models_dir=spec["url"], registry_url=spec["registry"], storage_options=spec["options"],
                     part_size="5MiB", max_concurrency=2)
rng = np.random.default_rng(4)
warm = p.store.begin_direct("m/0/x.bin")  # the client, its models and connections: made before tracing
warm.write(rng.bytes(6 << 20))
warm.complete()
chunks = [rng.bytes(12 << 20), rng.bytes(12 << 20)]
upload = p.store.begin_direct("m/1/x.bin")
tracemalloc.start()
for chunk in chunks:
    upload.write(chunk)
upload.send_all()
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
upload.complete()
print(json.dumps({"peak": peak, "sent": upload.sent}))
"""


def test_a_whole_bytes_part_is_not_copied_on_its_way_to_the_socket(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """A part sent as the caller's ``bytes`` stays uncopied down to aiohttp, which reads it in
    slices: ``BytesIO.getbuffer`` (aiohttp asks it for the body's length) would copy all of it
    first. The memory Python allocates while 24 MiB go up as two 12 MiB parts stays far below one part."""
    spec = {
        "url": s3_bucket.url(),
        "registry": f"sqlite:///{tmp_path / 'registry.db'}",
        "options": s3_bucket.storage_options,
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", TRACED_UPLOAD, json.dumps(spec)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["sent"] == 2
    assert result["peak"] < 6 * MiB, f"{result['peak'] / MiB:.1f} MiB allocated: a part was copied"
    stored = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="models/m/1/x.bin")["Body"].read()
    rng = np.random.default_rng(4)
    rng.bytes(6 * MiB)
    assert stored == rng.bytes(12 * MiB) + rng.bytes(12 * MiB)
    assert s3_bucket.pending_uploads() == []


def test_a_part_answered_late_does_not_hold_back_the_parts_after_it(
    s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """A store answers parts out of order: a new part goes up as soon as any of the
    ``max_concurrency`` slots is free, not when the oldest part is answered. The proxy holds part
    1 until part 6 has reached it; with 2 slots, that happens only if parts 3 to 6 went up while
    part 1 was held (waiting for the oldest part would leave part 1 held until its wait ran out)."""
    p = _proxied(s3_bucket, fault_proxy, tmp_path, part_size="5MiB", max_concurrency=2, cache_max_bytes=0)
    assert isinstance(p.store, S3Store)
    last_arrived = threading.Event()
    released: list[bool] = []

    def hold_first(method: str, path: str) -> float:
        number = re.search(r"partNumber=(\d+)", path) if _part_kind(method, path) == "part" else None
        if number is not None and number.group(1) == "1":
            released.append(last_arrived.wait(30))
        elif number is not None and number.group(1) == "6":
            last_arrived.set()
        return 0.0

    fault_proxy.delay = hold_first
    data = np.random.default_rng(9).bytes(30 * MiB - 100)
    upload = p.store.begin_direct("m/1/x.bin")
    upload.write(bytearray(data))  # copied into 5 MiB parts: 6 parts, the last one sent by complete()
    upload.complete()
    assert released == [True]  # part 1 was let through by part 6's arrival, not by its wait running out
    stored = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="models/m/1/x.bin")["Body"].read()
    assert stored == data
    p.close()


def _crc32(data: bytes) -> str:
    """A CRC32 as S3 writes it: base64 of the big-endian 4 bytes."""
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode("ascii")


def _spy_calls(store: S3Store) -> list[tuple[str, dict[str, Any]]]:
    """Record every S3 call ``store`` makes (method and arguments but the body), calls still made."""
    calls: list[tuple[str, dict[str, Any]]] = []
    call = store.call

    def recording(method: str, **kwargs: Any) -> Any:
        recorded = {k: v for k, v in kwargs.items() if k != "Body"}
        if "Body" in kwargs:  # a part is a file object (see ParallelUpload), a PUT bytes
            body = kwargs["Body"]
            recorded["size"] = len(body.getvalue()) if isinstance(body, io.BytesIO) else len(body)
        calls.append((method, recorded))
        return call(method, **kwargs)

    store.call = recording  # type: ignore[method-assign]
    return calls


def test_a_save_declares_crc32_and_completes_with_each_parts_checksum(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """As boto3's upload_file does: the upload declares CRC32 when it starts, so the store keeps a
    composite checksum of the parts (instead of hashing the whole object again when it completes),
    and the completion lists each part's CRC32 as the store answered it."""
    p = ModelPersistence(
        models_dir=s3_bucket.url(),
        registry_url=f"sqlite:///{tmp_path / 'registry.db'}",
        storage_options=s3_bucket.storage_options,
        part_size="5MiB",
        max_concurrency=2,
        cache_max_bytes=0,
    )
    assert isinstance(p.store, S3Store) and p.store.upload_checksum == "CRC32"
    calls = _spy_calls(p.store)
    model = _model(12 * MiB, seed=21)
    rec = p.save_version(model, "m", compress=False)
    assert rec.artifact is not None
    started = [kw for m, kw in calls if m == "create_multipart_upload"]
    assert [kw.get("ChecksumAlgorithm") for kw in started] == ["CRC32"]
    sent = [kw for m, kw in calls if m == "upload_part"]
    assert len(sent) >= 2 and all(kw["ChecksumAlgorithm"] == "CRC32" for kw in sent)
    assert all(kw["size"] >= 5 * MiB for kw in sent[:-1])  # none shorter than part_size but the last
    (done,) = [kw for m, kw in calls if m == "complete_multipart_upload"]
    listed = done["MultipartUpload"]["Parts"]
    key = f"models/{rec.artifact.key}"
    stored = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=key)["Body"].read()
    starts = list(itertools.accumulate([kw["size"] for kw in sorted(sent, key=lambda kw: kw["PartNumber"])], initial=0))
    parts = [stored[a:b] for a, b in itertools.pairwise(starts)]
    assert starts[-1] == len(stored)
    assert [part["ChecksumCRC32"] for part in listed] == [_crc32(b) for b in parts]
    head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=key, ChecksumMode="ENABLED")
    composite = _crc32(b"".join(zlib.crc32(b).to_bytes(4, "big") for b in parts))  # the CRC32 of the parts' CRC32s
    assert head["ChecksumCRC32"].split("-")[0] == composite
    assert np.array_equal(p.load("m", rec.version)["weights"], model["weights"])
    p.close()


def _configured(bucket: S3Bucket, tmp_path: Path, config: dict[str, Any], **kwargs: Any) -> ModelPersistence:
    """A registry on ``bucket`` whose botocore client gets ``config`` too; 5 MiB parts, no cache."""
    options = bucket.storage_options
    options["config_kwargs"] = {**options["config_kwargs"], **config}
    return ModelPersistence(
        models_dir=bucket.url(),
        registry_url=f"sqlite:///{tmp_path / 'registry.db'}",
        storage_options=options,
        part_size="5MiB",
        cache_max_bytes=0,
        **kwargs,
    )


def test_a_client_that_sends_checksums_only_when_required_declares_none(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """Stores that reject checksums are used with ``request_checksum_calculation="when_required"``:
    then no upload declares one and the completion lists none, as with boto3."""
    p = _configured(s3_bucket, tmp_path, {"request_checksum_calculation": "when_required"})
    assert isinstance(p.store, S3Store) and p.store.upload_checksum is None
    calls = _spy_calls(p.store)
    model = _model(11 * MiB, seed=22)
    rec = p.save_version(model, "m", compress=False)
    declared = [kw.get("ChecksumAlgorithm") for m, kw in calls if m in ("create_multipart_upload", "upload_part")]
    assert len(declared) >= 3 and declared == [None] * len(declared)
    (done,) = [kw for m, kw in calls if m == "complete_multipart_upload"]
    assert all(set(part) == {"PartNumber", "ETag"} for part in done["MultipartUpload"]["Parts"])
    assert np.array_equal(p.load("m", rec.version)["weights"], model["weights"])
    p.close()


def _signed_payloads(store: S3Store) -> list[tuple[str, str]]:
    """Record (operation, ``X-Amz-Content-SHA256``) of every request s3fs's client sends."""
    sent: list[tuple[str, str]] = []

    def record(request: Any, event_name: str, **_: Any) -> None:
        sha = request.headers.get("X-Amz-Content-SHA256", b"")
        sent.append((event_name.rsplit(".", 1)[-1], sha.decode() if isinstance(sha, bytes) else sha))

    async def hook() -> None:
        await store.fs.set_session()
        client = await store.fs.get_s3(store.bucket_key("x")[0])
        client.meta.events.register("before-send.s3", record, unique_id="test-signed-payloads")

    store.submit(hook()).result()
    return sent


@pytest.mark.parametrize("explicit", [None, True], ids=["default", "payload-signing-asked-for"])
def test_parts_are_not_hashed_again_for_their_signature(
    s3_bucket: S3Bucket, tmp_path: Path, explicit: bool | None
) -> None:
    """Over plain HTTP botocore signs a request with the SHA-256 of its body. A save's parts are
    signed ``UNSIGNED-PAYLOAD`` instead (as botocore does over HTTPS): the save already hashes
    every byte, records the digests, and a load checks them. Every other request (the small
    artifact's PUT, the completion) keeps its payload's SHA-256, and so do parts when the client's
    config asks for payload signing."""
    config = {} if explicit is None else {"s3": {"payload_signing_enabled": explicit}}
    p = _configured(s3_bucket, tmp_path, config, max_concurrency=2)
    assert isinstance(p.store, S3Store)
    p.save_version({"x": 1}, "small")  # one PUT
    sent = _signed_payloads(p.store)
    model = _model(12 * MiB, seed=23)
    rec = p.save_version(model, "m", compress=False)
    parts = [sha for op, sha in sent if op == "UploadPart"]
    assert len(parts) >= 2
    if explicit:
        assert all(re.fullmatch("[0-9a-f]{64}", sha) for sha in parts)
    else:
        assert set(parts) == {"UNSIGNED-PAYLOAD"}
    others = [(op, sha) for op, sha in sent if op != "UploadPart"]
    assert others and all(sha != "UNSIGNED-PAYLOAD" for _, sha in others)
    assert np.array_equal(p.load("m", rec.version)["weights"], model["weights"])
    sent.clear()
    p.save_version({"x": 2}, "small")
    assert [op for op, sha in sent if op == "PutObject" and re.fullmatch("[0-9a-f]{64}", sha)]
    p.close()


@pytest.mark.parametrize("renewing", [True, False], ids=["renewed", "lease-runs-out"])
def test_an_upload_longer_than_the_lease_keeps_its_claim_by_renewing_it(
    renewing: bool, s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease is lowered to 2 s and each of the 4 parts takes 1 s, one at a time: the upload
    outlives two leases. The heartbeat's renewals (every 0.1 s, so one may come 1.9 s late on a
    busy machine) keep the claim and the save commits; without them the writer stops before
    completing: no object, no upload left open, no version."""
    monkeypatch.setattr(claims_module, "CLAIM_LEASE_SECONDS", 2.0)
    monkeypatch.setattr(claims_module, "CLAIM_RENEW_SECONDS", 0.1 if renewing else 3600.0)
    p = _proxied(s3_bucket, fault_proxy, tmp_path, part_size="5MiB", max_concurrency=1)
    fault_proxy.kind = _part_kind
    fault_proxy.delay = lambda m, path: 1.0 if _part_kind(m, path) == "part" else 0.0
    model = _model(16 * MiB, seed=11)
    if renewing:
        rec = p.save_version(model, "m", compress=False)
        assert np.array_equal(p.load("m", rec.version)["weights"], model["weights"])
        assert fault_proxy.copies == [] and list_claims(p.index) == []
    else:
        with pytest.raises(ClaimLostError, match="without renewing"):
            p.save_version(model, "m", compress=False)
        assert p.list_versions("m") == [] and s3_bucket.object_keys() == []
    assert s3_bucket.pending_uploads() == []
    p.close()


def test_a_claim_taken_over_mid_upload_never_becomes_visible(
    s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """A's claim is released while its parts go up (as gc does with a stale claim) and B saves
    the same version: A stops before its upload completes, and B's version stays whole."""
    p = _proxied(s3_bucket, fault_proxy, tmp_path, part_size="5MiB")
    other = ModelPersistence(
        models_dir=s3_bucket.url(),
        registry_url=f"sqlite:///{tmp_path / 'registry.db'}",
        storage_options=s3_bucket.storage_options,  # straight to moto, not through the proxy
    )
    b_records: list[Any] = []

    def take_over(method: str, path: str) -> None:
        if method == "PUT" and "partNumber=2" in path and not b_records:
            with p.index._write() as conn:
                conn.execute(delete(claims_table))
            b_records.append(other.save_version({"writer": "B"}, "fenced", "1.0.0"))
        return None

    fault_proxy.fault = take_over  # type: ignore[assignment]
    with pytest.raises(ClaimLostError, match="released"):
        p.save_version(_model(14 * MiB, seed=12), "fenced", "1.0.0", compress=False)
    assert b_records and p.list_versions("fenced") == ["1.0.0"]
    assert p.load("fenced", "1.0.0") == {"writer": "B"}
    assert s3_bucket.pending_uploads() == []  # A's upload was aborted, never completed
    assert [k for k in s3_bucket.object_keys() if k.endswith(".joblib")] == [f"models/{b_records[0].artifact.key}"]
    assert p.verify().ok, p.verify().to_dict()
    other.close()
    p.close()


# -- abandoned uploads ------------------------------------------------------------------------
SAVER = """
import json, sys
import numpy as np
from modelkeep import ModelPersistence
spec = json.loads(sys.argv[1])
p = ModelPersistence(models_dir=spec["url"], registry_url=spec["registry"], storage_options=spec["options"],
                     part_size="5MiB", max_concurrency=2)
p.save_version({"w": np.random.default_rng(0).bytes(40 << 20)}, "m", compress=False)
print("finished")
"""


def test_gc_aborts_the_upload_a_killed_save_left_open(
    s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """SIGKILL in the middle of a multipart upload leaves it open on S3 (billed, invisible in
    listings). gc keeps it while it may still be a save in progress, then aborts it and
    reports its bytes; an upload outside the registry's prefix is not touched."""
    p = _proxied(s3_bucket, fault_proxy, tmp_path)
    p.save_version({"x": 1}, "other")  # the registry exists
    parts_seen = threading.Event()
    seen = 0

    def slow_parts(method: str, path: str) -> float:
        nonlocal seen
        if _part_kind(method, path) == "part":
            seen += 1
            if seen >= 2:
                parts_seen.set()
            return 0.5
        return 0.0

    fault_proxy.kind, fault_proxy.delay = _part_kind, slow_parts
    spec = {
        "url": s3_bucket.url(),
        "registry": f"sqlite:///{tmp_path / 'registry.db'}",
        "options": s3_options(fault_proxy.endpoint_url),
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    saver = subprocess.Popen([sys.executable, "-c", SAVER, json.dumps(spec)], env=env, stdout=subprocess.PIPE)
    try:
        assert parts_seen.wait(120), "the save never started uploading parts"
        time.sleep(0.6)  # some parts have landed
    finally:
        saver.send_signal(signal.SIGKILL)
        saver.wait(30)
    assert saver.returncode == -signal.SIGKILL
    fault_proxy.delay = lambda _m, _p: 0.0
    outside = s3_bucket.client.create_multipart_upload(Bucket=s3_bucket.name, Key="elsewhere/big.bin")["UploadId"]
    left = [k for k in s3_bucket.pending_uploads() if k.startswith("models/")]
    assert left == ["models/m/1.0.0/m_v1.0.0.joblib"]  # uploaded straight to its final key, never completed
    assert p.list_versions("m") == []

    young = p.gc()  # default min_age: an hour; the upload may still be someone's save
    assert not [i for i in young.removed if "upload" in i.key]
    assert [i for i in young.kept if "upload" in i.key]
    dry = p.gc(dry_run=True, min_age_seconds=0)
    assert [i for i in dry.removed if "upload" in i.key] and len(s3_bucket.pending_uploads()) == 2
    report = p.gc(min_age_seconds=0)
    aborted = [i for i in report.removed if "upload" in i.key]
    assert len(aborted) == 1 and aborted[0].size >= 5 * MiB and report.bytes_freed >= aborted[0].size
    assert report.ok
    assert s3_bucket.pending_uploads() == ["elsewhere/big.bin"]
    s3_bucket.client.abort_multipart_upload(Bucket=s3_bucket.name, Key="elsewhere/big.bin", UploadId=outside)
    assert p.save_version({"w": b"after"}, "m").version == "1.0.0"  # the killed save's claim is gone
    assert p.load("m", "1.0.0") == {"w": b"after"} and p.verify().ok
    p.close()


RESUMER = """
import json, sys
import numpy as np
from modelkeep import ModelPersistence
spec = json.loads(sys.argv[1])
p = ModelPersistence(models_dir=spec["url"], registry_url=spec["registry"], storage_options=spec["options"],
                     part_size="5MiB", max_concurrency=2)
rec = p.save_version({"w": np.random.default_rng(7).bytes(40 << 20)}, "big", compress=False, resume=True)
print(rec.version)
"""


def test_a_save_killed_mid_upload_resumes_without_sending_its_parts_again(
    s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """SIGKILL after a few parts of a resumable save; the next save with resume=True sends
    only the parts that are missing, and the version loads back whole."""
    p = _proxied(s3_bucket, fault_proxy, tmp_path)
    p.save_version({"x": 1}, "other")
    landed = threading.Event()
    parts: list[str] = []

    def slow_parts(method: str, path: str) -> float:
        if _part_kind(method, path) == "part":
            parts.append(path)
            if len(parts) >= 4:
                landed.set()
            return 0.3
        return 0.0

    fault_proxy.kind, fault_proxy.delay = _part_kind, slow_parts
    spec = {
        "url": s3_bucket.url(),
        "registry": f"sqlite:///{tmp_path / 'registry.db'}",
        "options": s3_options(fault_proxy.endpoint_url),
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    saver = subprocess.Popen([sys.executable, "-c", RESUMER, json.dumps(spec)], env=env, stdout=subprocess.PIPE)
    try:
        assert landed.wait(120), "the save never started uploading parts"
        time.sleep(0.5)
    finally:
        saver.send_signal(signal.SIGKILL)
        saver.wait(30)
    assert saver.returncode == -signal.SIGKILL
    pending = [k for k in s3_bucket.pending_uploads() if k.startswith("models/.tmp/resume-")]
    assert len(pending) == 1
    before = len(parts)
    fault_proxy.delay = lambda _m, _p: 0.0
    done = subprocess.run(
        [sys.executable, "-c", RESUMER, json.dumps(spec)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    resent = len(parts) - before
    assert resent < 8  # 40 MiB in 5 MiB parts: the parts the killed save uploaded were not sent again
    assert s3_bucket.pending_uploads() == []
    loaded = p.load("big", done.stdout.strip())
    assert loaded["w"] == np.random.default_rng(7).bytes(40 << 20)
    assert [k for k in s3_bucket.object_keys() if "/.tmp/" in k] == []
    p.close()
