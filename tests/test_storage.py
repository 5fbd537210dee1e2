"""One conformance suite for ArtifactStore, run on a local folder, ``memory://`` and S3 (moto).

The S3-only tests at the end check what only an object store can get wrong:
multipart uploads while the bytes stream, ranged streaming reads, and
failures of the service (5xx, connection refused) surfacing as StorageError
with nothing left under a final key.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelkeep.blobs import BlobStore
from modelkeep.errors import ArtifactNotFoundError, IntegrityError, StorageError
from modelkeep.storage import TMP_DIR, ArtifactStore, LocalStore, ObjectStore, S3Store, open_store
from modelkeep.storage import remote as remote_storage
from tests.s3_server import FaultProxy, S3Bucket, s3_options

MiB = 1 << 20


@dataclass
class StoreCase:
    kind: str
    store: ArtifactStore
    pending_uploads: Callable[[], list[str]]


@pytest.fixture(params=["local", "memory", pytest.param("s3", marks=pytest.mark.s3)])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreCase]:
    """An empty store on each backend."""
    if request.param == "local":
        yield StoreCase("local", open_store(tmp_path / "store"), list)
    elif request.param == "memory":
        store = open_store(f"memory://mk-{uuid.uuid4().hex}")
        yield StoreCase("memory", store, list)
        if store.fs.exists(store.root):
            store.fs.rm(store.root, recursive=True)
    else:
        bucket: S3Bucket = request.getfixturevalue("s3_bucket")
        store = open_store(bucket.url(), bucket.storage_options)
        yield StoreCase("s3", store, bucket.pending_uploads)


def payload(n: int, seed: int = 0) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32) + b"x" * (n % 32)


def write_staged(store: ArtifactStore, key: str, data: bytes, step: int = MiB) -> tuple[str, int]:
    with store.staged() as st:
        with st.open() as w:
            for i in range(0, len(data), step):
                w.write(data[i : i + step])
        st.commit(key)
    return st.sha256, st.size


# -- writing ---------------------------------------------------------------------------
def test_write_bytes_then_read_exists_size(case: StoreCase) -> None:
    s = case.store
    s.write_bytes("m/1.0.0/meta.json", b'{"a": 1}')
    assert s.read_bytes("m/1.0.0/meta.json") == b'{"a": 1}'
    assert s.exists("m/1.0.0/meta.json")
    assert s.size("m/1.0.0/meta.json") == 8
    assert s.list_keys() == ["m/1.0.0/meta.json"]


def test_staged_commit_hashes_and_places_the_bytes(case: StoreCase) -> None:
    data = payload(3 * MiB + 17)
    sha, size = write_staged(case.store, "m/1.0.0/m.joblib", data)
    assert (sha, size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert case.store.read_bytes("m/1.0.0/m.joblib") == data
    assert case.store.list_keys() == ["m/1.0.0/m.joblib"]  # nothing left under .tmp/
    assert case.pending_uploads() == []


def test_commit_replaces_an_existing_key(case: StoreCase) -> None:
    write_staged(case.store, "k/file", b"old bytes")
    write_staged(case.store, "k/file", b"new bytes!")
    assert case.store.read_bytes("k/file") == b"new bytes!"
    assert case.store.list_keys() == ["k/file"]


def test_discarded_stage_leaves_nothing(case: StoreCase) -> None:
    st = case.store.stage()
    with st.open() as w:
        w.write(b"abc" * 1000)
    assert case.store.exists(st.tmp_key)
    st.discard()
    assert case.store.list_keys() == []


def test_failed_write_leaves_nothing_under_any_key(case: StoreCase) -> None:
    """A writer that dies mid-stream (after several upload parts on S3) leaves no object at all."""
    case.store.part_size = 5 * MiB  # S3's minimum part size: the failure comes after 2 uploaded parts
    data = payload(12 * MiB)
    with pytest.raises(RuntimeError, match="serializer died"), case.store.staged() as st, st.open() as w:
        for i in range(0, len(data), MiB):
            w.write(data[i : i + MiB])
        raise RuntimeError("serializer died")
    assert case.store.list_keys() == []
    assert not case.store.exists("m/1.0.0/m.joblib")
    assert case.pending_uploads() == []  # the multipart upload was aborted, not completed


def test_exception_before_commit_leaves_final_key_absent(case: StoreCase) -> None:
    with pytest.raises(KeyError), case.store.staged() as st:
        with st.open() as w:
            w.write(payload(MiB))
        raise KeyError("index refused")
    assert case.store.list_keys() == []


def test_progress_sees_every_byte(case: StoreCase) -> None:
    seen: list[int] = []
    with case.store.staged() as st:
        with st.open(seen.append) as w:
            w.write(b"a" * 1000)
            w.write(memoryview(b"b" * 24))
        st.commit("p/file")
    assert sum(seen) == 1024 == st.size


# -- reading ---------------------------------------------------------------------------
def test_read_verified_returns_the_bytes_it_hashed(case: StoreCase) -> None:
    data = payload(2 * MiB + 5, seed=1)
    sha, _ = write_staged(case.store, "v/file", data)
    advanced: list[int] = []
    assert case.store.read_verified("v/file", sha, advanced.append) == data
    assert sum(advanced) == len(data)
    advanced.clear()
    with case.store.open_verified("v/file", sha, advanced.append) as f:
        case.store.write_bytes("v/file", b"replaced after the check")
        assert f.read() == data  # the private copy that was hashed, not the store's new bytes
    case.store.write_bytes("v/file", data)
    assert sum(advanced) == len(data)
    case.store.verify("v/file", sha)
    assert b"".join(_chunks(case.store, "v/file")) == data


def _chunks(store: ArtifactStore, key: str) -> list[bytes]:
    with store.stream(key) as chunks:
        return list(chunks)


def test_digest_mismatch_is_refused(case: StoreCase) -> None:
    sha, _ = write_staged(case.store, "v/file", b"original bytes")
    case.store.write_bytes("v/file", b"tampered bytes")
    with pytest.raises(IntegrityError, match="integrity check failed"):
        case.store.verify("v/file", sha)
    with pytest.raises(IntegrityError):
        case.store.read_verified("v/file", sha)
    with pytest.raises(IntegrityError), case.store.open_verified("v/file", sha):
        pytest.fail("a tampered artifact must not be handed out")


def test_missing_key_errors(case: StoreCase) -> None:
    s = case.store
    assert not s.exists("nope/file")
    for call in (
        lambda: s.read_bytes("nope/file"),
        lambda: s.open_read("nope/file"),
        lambda: s.verify("nope/file", "0" * 64),
        lambda: s.size("nope/file"),
        lambda: s.delete("nope/file"),
        lambda: _chunks(s, "nope/file"),
        lambda: s.read_verified("nope/file", "0" * 64),
        lambda: s.read_exact("nope/file", 1),
        lambda: s.open_verified("nope/file", "0" * 64).__enter__(),
    ):
        with pytest.raises(ArtifactNotFoundError, match="not found") as info:
            call()
        assert isinstance(info.value, FileNotFoundError)
    s.delete("nope/file", missing_ok=True)


# -- housekeeping ----------------------------------------------------------------------
def test_list_and_delete(case: StoreCase) -> None:
    s = case.store
    for key in ["a/1/x.bin", "a/2/x.bin", "b/1/y.bin", "b/1/y_metadata.json"]:
        s.write_bytes(key, key.encode())
    assert s.list_keys() == ["a/1/x.bin", "a/2/x.bin", "b/1/y.bin", "b/1/y_metadata.json"]
    assert s.list_keys("b") == ["b/1/y.bin", "b/1/y_metadata.json"]
    assert s.list_keys("zzz") == []
    s.delete("a/1/x.bin")
    s.remove_empty_dirs("a/1")
    assert not s.exists("a/1/x.bin")
    assert s.list_keys("a") == ["a/2/x.bin"]
    if case.kind == "local":
        assert not (Path(s.root) / "a" / "1").exists()


def test_display_and_local_paths(case: StoreCase) -> None:
    s = case.store
    if case.kind == "local":
        assert s.local_path("m/f") == Path(s.root) / "m" / "f"
        assert s.display_path("m/f") == os.path.join(s.root, "m", "f")
    else:
        assert s.local_path("m/f") is None
        assert s.display_path("m/f").startswith(("s3://", "memory://")) and s.display_path("m/f").endswith("/m/f")
        assert isinstance(s, ObjectStore)


def test_file_url_is_a_local_store(tmp_path: Path) -> None:
    s = open_store(f"file://{tmp_path}/store")
    assert isinstance(s, LocalStore) and s.root == str(tmp_path / "store")
    write_staged(s, "m/f", b"bytes")
    assert (tmp_path / "store" / "m" / "f").read_bytes() == b"bytes"
    assert not (tmp_path / "store" / TMP_DIR).exists() or not any((tmp_path / "store" / TMP_DIR).iterdir())


# -- S3 only ---------------------------------------------------------------------------
def _proxied_store(bucket: S3Bucket, proxy: FaultProxy) -> ArtifactStore:
    return open_store(bucket.url(), s3_options(proxy.endpoint_url))


def _is_upload_part(method: str, path: str) -> bool:
    return method == "PUT" and "partNumber=" in path


@pytest.mark.s3
def test_large_upload_is_multipart_while_streaming(s3_bucket: S3Bucket, fault_proxy: FaultProxy) -> None:
    """Parts go up as the bytes are produced: the progress callback runs ahead of the upload
    by at most the parts allowed in flight, plus the one being filled."""
    store = _proxied_store(s3_bucket, fault_proxy)
    assert isinstance(store, S3Store)
    store.max_concurrency = 1
    advanced = 0
    at_first_part: list[int] = []

    def advance(n: int) -> None:
        nonlocal advanced
        advanced += n

    def watch(method: str, path: str) -> int | None:
        if _is_upload_part(method, path) and not at_first_part:
            at_first_part.append(advanced)
        return None

    fault_proxy.fault = watch
    data = payload(20 * MiB, seed=2)
    with store.staged() as st:
        with st.open(advance) as w:
            for i in range(0, len(data), MiB):
                w.write(data[i : i + MiB])
        st.commit("big/1.0.0/big.joblib")
    calls = fault_proxy.requests
    assert sum(_is_upload_part(m, p) for m, p in calls) == 3  # 8 + 8 + 4 MiB
    assert any(m == "POST" and p.endswith("?uploads") for m, p in calls)  # CreateMultipartUpload
    assert at_first_part and at_first_part[0] <= 2 * remote_storage.UPLOAD_PART_SIZE + MiB < len(data)
    assert s3_bucket.object_keys() == ["models/big/1.0.0/big.joblib"]
    assert s3_bucket.pending_uploads() == []


@pytest.mark.s3
def test_remote_verified_read_is_one_pass_of_ranged_gets(
    s3_bucket: S3Bucket, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A verified read fetches the object once, in ranged GETs, and returns the bytes it hashed."""
    monkeypatch.setattr(remote_storage, "READ_CHUNK", 2 * MiB)
    store = _proxied_store(s3_bucket, fault_proxy)
    data = payload(9 * MiB, seed=3)
    sha, _ = write_staged(store, "r/file", data)
    fault_proxy.requests.clear()
    assert store.read_verified("r/file", sha) == data
    gets = [p for m, p in fault_proxy.requests if m == "GET"]
    assert len(gets) == 5  # ceil(9 / 2) ranged GETs, no read-ahead, no second read
    with pytest.raises(IntegrityError):
        store.read_verified("r/file", "0" * 64)


@pytest.mark.s3
@pytest.mark.parametrize("part", [2, 3], ids=["mid-stream", "last part, on close"])
def test_server_errors_mid_upload_leave_nothing(part: int, s3_bucket: S3Bucket, fault_proxy: FaultProxy) -> None:
    """HTTP 500 on one part: StorageError, no object under any key, the upload aborted."""
    store = _proxied_store(s3_bucket, fault_proxy)
    store.part_size = 5 * MiB
    fault_proxy.fault = lambda m, p: 500 if _is_upload_part(m, p) and f"partNumber={part}" in p else None
    data = payload(12 * MiB, seed=4)
    with pytest.raises(StorageError, match=r"cannot (upload|write) .*injected by the test"), store.staged() as st:
        with st.open() as w:
            for i in range(0, len(data), MiB):
                w.write(data[i : i + MiB])
        st.commit("m/1.0.0/m.joblib")
    assert fault_proxy.injected and all(f"partNumber={part}" in p for _, p, _ in fault_proxy.injected)
    assert s3_bucket.object_keys() == []
    assert s3_bucket.pending_uploads() == []


@pytest.mark.s3
def test_server_error_on_commit_copy_keeps_final_key_absent(s3_bucket: S3Bucket, fault_proxy: FaultProxy) -> None:
    store = _proxied_store(s3_bucket, fault_proxy)
    fault_proxy.fault = lambda m, p: 503 if m == "PUT" and "/m/1.0.0/" in p else None  # CopyObject is a PUT
    with pytest.raises(StorageError, match="cannot commit"), store.staged() as st:
        with st.open() as w:
            w.write(b"model bytes")
        st.commit("m/1.0.0/m.joblib")
    assert s3_bucket.object_keys() == []  # the staged object was discarded too


@pytest.mark.s3
def test_unreachable_endpoint_is_a_storage_error(s3_bucket: S3Bucket) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nothing listens there
    options = s3_options(f"http://127.0.0.1:{port}")
    options["config_kwargs"]["retries"] = {"max_attempts": 1}
    store = open_store(s3_bucket.url(), options)
    with pytest.raises(StorageError, match=r"cannot write .*Could not connect"):
        store.write_bytes("m/f", b"x")
    with pytest.raises(StorageError, match="cannot check"):
        store.exists("m/f")
    blob = memoryview(payload(64 << 10))
    with pytest.raises(StorageError, match=r"cannot write .*\.blobs/"):  # blob writes too, not a raw ConnectionError
        BlobStore(store).put_many({"ab" * 32: blob})
    with pytest.raises(StorageError, match=r"cannot write"):
        BlobStore(store).put_many({"ab" * 32: blob, "cd" * 32: blob})
