"""Loads checked with BLAKE3, array payloads read into their own memory or mapped, and the
record of already-checked files that lets a memory-mapped load skip re-hashing.

Each guarantee is attacked with real bytes: flipped skeleton, padding and array bytes,
forged payload ranges, a file changed in place after it was checked, a file replaced by rename.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelkeep import IntegrityError, ModelPersistence, SerializationError
from modelkeep.layout import sidecar_bytes, sidecar_key
from modelkeep.metadata import ArtifactInfo
from modelkeep.storage import verified
from modelkeep.storage.hashing import BLAKE3_KEY, PAYLOAD_MIN, Expected

from .test_tampering import artifact_path

BIG = PAYLOAD_MIN // 8 * 4  # float64 elements: 4x the smallest payload


def arrays() -> dict[str, Any]:
    rng = np.random.default_rng(7)
    return {
        "c": rng.random(BIG),
        "fortran": np.asfortranarray(rng.random((BIG // 64, 64))),
        "big_endian": rng.random(BIG).astype(">f8"),
        "structured": np.zeros(BIG // 2, dtype=[("a", "<i4"), ("b", "<f8")]),
        "flags": rng.random(BIG * 8) > 0.5,
        "small": np.arange(10),
        "objects": np.array(["x", None, 3], dtype=object),
        "nested": [rng.random(BIG // 2), {"deep": rng.random(BIG).astype(np.float32)}],
        "empty": np.empty((0, 5)),
    }


def assert_same(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list):
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        # a normal load converts to native byte order, as joblib does; a mapped one cannot
        assert a.dtype.newbyteorder("=") == b.dtype.newbyteorder("=") and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))


@pytest.fixture
def p(tmp_path: Path) -> Any:
    with ModelPersistence(tmp_path / "models", compress=False) as persistence:
        yield persistence


def test_payload_ranges_are_recorded_for_large_arrays_only(p: ModelPersistence) -> None:
    rec = p.save_version(arrays(), "m")
    assert rec.artifact is not None
    digests = rec.artifact.extra[BLAKE3_KEY]
    assert digests["sha256"] == rec.artifact.sha256
    # c, fortran, big_endian, structured, flags, nested[0], nested deep: 7 payloads; small/objects/empty stay parsed
    assert len(digests["ranges"]) == 7
    data = artifact_path(p, "m", rec.version).read_bytes()
    for start, data_start, end in digests["ranges"]:
        assert start < data_start <= start + 17 and data_start % 16 == 0 and end <= len(data)
    inside = b"".join(data[s:e] for s, _, e in digests["ranges"])
    outside, pos = b"", 0
    for s, _, e in digests["ranges"]:
        outside, pos = outside + data[pos:s], e
    outside += data[pos:]
    from blake3 import blake3

    assert blake3(inside).hexdigest() == digests["payload"]
    assert blake3(outside).hexdigest() == digests["skeleton"]
    assert hashlib.sha256(data).hexdigest() == rec.artifact.sha256


@pytest.mark.parametrize("compress", [True, ("zlib", 3)])
def test_compressed_artifacts_have_one_digest(tmp_path: Path, compress: Any) -> None:
    with ModelPersistence(tmp_path / "models", compress=compress) as p:
        rec = p.save_version(arrays(), "m")
        assert rec.artifact is not None
        assert set(rec.artifact.extra[BLAKE3_KEY]) == {"sha256", "skeleton"}
        assert_same(p.load("m"), arrays())


def test_a_normal_load_gives_each_array_its_own_writable_memory(p: ModelPersistence) -> None:
    p.save(arrays(), "m")
    loaded = p.load("m")
    assert_same(loaded, arrays())
    for name in ("c", "fortran", "big_endian", "flags"):
        a = loaded[name]
        assert a.flags.writeable and not isinstance(a, np.memmap)
        assert a.dtype.isnative or name != "big_endian"
        a[...] = 0  # writable
    assert loaded["fortran"].flags.f_contiguous
    # each array's memory is its own: about its own size, not the whole artifact's
    base = loaded["c"].base
    while getattr(base, "base", None) is not None:
        base = base.base
    assert len(memoryview(base)) < 2 * loaded["c"].nbytes


@pytest.mark.parametrize("mode", ["r", "c"])
def test_a_mapped_load_maps_the_payloads(p: ModelPersistence, mode: str) -> None:
    p.save(arrays(), "m", "1.0.0")
    before = artifact_path(p, "m", "1.0.0").read_bytes()
    loaded = p.load("m", "1.0.0", mmap_mode=mode)
    assert_same(loaded, arrays())
    big = loaded["c"]
    assert isinstance(big, np.memmap)
    if mode == "r":
        assert not big.flags.writeable
    else:
        big[:] = -1.0  # copy-on-write: the file never changes
    assert artifact_path(p, "m", "1.0.0").read_bytes() == before


def test_a_remote_store_reads_payloads_the_same_way(tmp_path: Path) -> None:
    url = f"memory://mk-{uuid.uuid4().hex}"
    with ModelPersistence(url, registry_path=tmp_path, compress=False, cache_max_bytes=0) as p:  # read the store
        p.save(arrays(), "m", "1.0.0")
        assert_same(p.load("m", "1.0.0"), arrays())
        key = p.get_version("m", "1.0.0").artifact.key  # type: ignore[union-attr]
        data = bytearray(p.store.read_bytes(key))
        ranges = p.get_version("m", "1.0.0").artifact.extra[BLAKE3_KEY]["ranges"]  # type: ignore[union-attr]
        data[ranges[0][2] - 1] ^= 1
        p.store.fs.pipe_file(p.store.full_path(key), bytes(data))
        with pytest.raises(IntegrityError, match="integrity check failed"):
            p.load("m", "1.0.0")


@pytest.mark.parametrize("where", ["skeleton", "padding", "payload"])
@pytest.mark.parametrize("mmap_mode", [None, "r"])
def test_a_flipped_byte_anywhere_is_caught(p: ModelPersistence, where: str, mmap_mode: str | None) -> None:
    rec = p.save_version(arrays(), "m", "1.0.0")
    start, data_start, end = rec.artifact.extra[BLAKE3_KEY]["ranges"][1]  # type: ignore[union-attr]
    offset = {"skeleton": start - 3, "padding": start, "payload": (data_start + end) // 2}[where]
    flip(artifact_path(p, "m", "1.0.0"), offset)
    with pytest.raises(IntegrityError, match="integrity check failed"):
        p.load("m", "1.0.0", mmap_mode=mmap_mode)


def forge(p: ModelPersistence, name: str, version: str, **blake3: Any) -> None:
    """An attacker who can write the index (no key): rewrite the recorded BLAKE3 fields."""
    rec = p.get_version(name, version)
    art = rec.artifact
    assert art is not None
    extra = {**art.extra, BLAKE3_KEY: {**art.extra[BLAKE3_KEY], **blake3}}
    forged = dataclasses.replace(
        rec, artifact=ArtifactInfo(art.key, art.format, art.compression, art.size, art.sha256, extra), signature=None
    )
    p.index.put(forged)
    p.store.write_bytes(sidecar_key(name, version), sidecar_bytes(forged))


@pytest.mark.parametrize(
    "ranges",
    [
        [[0, 10, 10**12]],  # past the end
        [[100, 90, 200]],  # data before the start
        [[100, 116, 300], [200, 216, 400]],  # overlapping
    ],
)
@pytest.mark.parametrize("mmap_mode", [None, "r"])
def test_forged_ranges_that_do_not_fit_are_refused(p: ModelPersistence, ranges: Any, mmap_mode: str | None) -> None:
    p.save(arrays(), "m", "1.0.0")
    forge(p, "m", "1.0.0", ranges=ranges)
    with pytest.raises(IntegrityError, match="payload ranges"):
        p.load("m", "1.0.0", mmap_mode=mmap_mode)


def test_a_range_moved_onto_pickle_opcodes_never_lets_unchecked_bytes_be_parsed(p: ModelPersistence) -> None:
    """Ranges decide where bytes go, never whether they are checked: bytes moved out of the
    parsed buffer leave zeros there, and a pickle never reads a zero opcode as code."""
    rec = p.save_version(arrays(), "m", "1.0.0")
    assert rec.artifact is not None
    data = artifact_path(p, "m", "1.0.0").read_bytes()
    rng = [[2, 16, 64]]  # the pickle's first opcodes, declared a payload
    from blake3 import blake3

    forge(
        p,
        "m",
        "1.0.0",
        ranges=rng,
        payload=blake3(data[2:64]).hexdigest(),
        skeleton=blake3(data[:2] + data[64:]).hexdigest(),
    )
    for mmap_mode in (None, "r"):
        with pytest.raises(SerializationError, match="cannot deserialize"):
            p.load("m", "1.0.0", mmap_mode=mmap_mode)


def test_a_record_whose_sha256_was_rewritten_alone_checks_the_sha256(p: ModelPersistence) -> None:
    rec = p.save_version({"w": np.arange(10.0)}, "m", "1.0.0")
    assert rec.artifact is not None
    assert Expected.of(rec.artifact.sha256, rec.artifact.size, rec.artifact.extra).fast
    assert not Expected.of("0" * 64, rec.artifact.size, rec.artifact.extra).fast


# -- the record of checked files ------------------------------------------------------------------


def age(path: Path, seconds: float) -> None:
    """Make ``path``'s change time ``seconds`` old, the only way a process can: wait."""
    changed = os.stat(path).st_ctime_ns
    while time.time_ns() - changed < seconds * 1e9:
        time.sleep(0.05)


def hashed_payloads(p: ModelPersistence, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Whether a mapped load hashed the payload bytes (the spy sees the hasher it makes, and
    the hasher is only fed when the file is not known)."""
    fed: list[int] = []
    real = verified.new_hash

    class Spy:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def update(self, data: Any) -> None:
            fed.append(len(data))
            self.inner.update(data)

        def hexdigest(self) -> str:
            return str(self.inner.hexdigest())

    def spy(algorithm: str, *, threads: bool = False) -> Any:
        h = real(algorithm, threads=threads)
        return Spy(h) if threads else h

    with monkeypatch.context() as m:
        m.setattr(verified, "new_hash", spy)
        p.load("m", "1.0.0", mmap_mode="r")
    return bool(fed)


def test_an_unchanged_checked_file_is_mapped_without_rehashing(
    p: ModelPersistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    p.save(arrays(), "m", "1.0.0")
    age(artifact_path(p, "m", "1.0.0"), 1.2)
    assert hashed_payloads(p, monkeypatch)  # first check: hashed, then remembered
    assert not hashed_payloads(p, monkeypatch)  # unchanged since: not hashed again
    assert_same(p.load("m", "1.0.0", mmap_mode="r"), arrays())


def test_a_file_changed_just_before_its_check_is_not_remembered(tmp_path: Path) -> None:
    """Timestamps are only as fine as the clock tick: a check made within a second of the file's
    last change could miss a change in the same tick, so it is not remembered."""
    f = tmp_path / "artifact"
    f.write_bytes(b"bytes")
    st = os.stat(f)
    checked = verified.CheckedFiles(tmp_path / "checked")
    checked.remember(st, "digest", st.st_ctime_ns + 100_000_000)  # checked 0.1 s after the change
    assert not checked.known(st, "digest")
    checked.remember(st, "digest", st.st_ctime_ns + 2_000_000_000)
    assert checked.known(st, "digest")
    assert not checked.known(st, "another digest")


def test_a_file_changed_in_place_after_its_check_is_hashed_again(p: ModelPersistence) -> None:
    p.save(arrays(), "m", "1.0.0")
    path = artifact_path(p, "m", "1.0.0")
    age(path, 1.2)
    p.load("m", "1.0.0", mmap_mode="r")  # remembered
    rec = p.get_version("m", "1.0.0")
    _, data_start, end = rec.artifact.extra[BLAKE3_KEY]["ranges"][0]  # type: ignore[union-attr]
    st = os.stat(path)
    with open(path, "r+b") as fh:  # in place: same inode, size and (restored) mtime
        os.chmod(path, 0o644)
        fh.seek((data_start + end) // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 1]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(IntegrityError, match="integrity check failed"):
        p.load("m", "1.0.0", mmap_mode="r")


def test_a_file_replaced_by_rename_is_hashed_again(p: ModelPersistence) -> None:
    p.save(arrays(), "m", "1.0.0")
    path = artifact_path(p, "m", "1.0.0")
    age(path, 1.2)
    p.load("m", "1.0.0", mmap_mode="r")
    data = bytearray(path.read_bytes())
    _, data_start, _end = p.get_version("m", "1.0.0").artifact.extra[BLAKE3_KEY]["ranges"][0]  # type: ignore[union-attr]
    data[data_start] ^= 1
    other = path.with_name("swap")
    other.write_bytes(bytes(data))
    os.replace(other, path)
    with pytest.raises(IntegrityError, match="integrity check failed"):
        p.load("m", "1.0.0", mmap_mode="r")


def test_the_record_of_checked_files_lives_with_the_user_not_the_store(
    p: ModelPersistence, private_config_dir: Path
) -> None:
    p.save(arrays(), "m", "1.0.0")
    age(artifact_path(p, "m", "1.0.0"), 1.2)
    p.load("m", "1.0.0", mmap_mode="r")
    entries = list((private_config_dir / "checked").iterdir())
    assert len(entries) == 1
    assert not any("checked" in k for k in p.store.list_keys())


# -- verify checks what a load checks --------------------------------------------------------------


def test_verify_checks_the_blake3_digests_a_load_uses(p: ModelPersistence) -> None:
    p.save(arrays(), "m", "1.0.0")
    assert p.verify().ok  # SHA-256, skeleton and payload digests all recomputed from one stream
    forge(p, "m", "1.0.0", payload="0" * 64)
    report = p.verify()
    assert [x.key for x in report.of_kind("corrupt")] == [p.get_version("m", "1.0.0").artifact.key]  # type: ignore[union-attr]
    with pytest.raises(IntegrityError, match="integrity check failed"):
        p.load("m", "1.0.0")


# -- the hashing writer: both ways of hashing give the same digests --------------------------------


@pytest.mark.parametrize("trailing", [False, True])
def test_the_hashing_writer_digests_what_it_wrote(tmp_path: Path, trailing: bool) -> None:
    """Random writes, some marked as payloads, through a writer that queues what it is given
    or one that maps the written file back: digests equal a direct hash of the bytes."""
    from blake3 import blake3

    from modelkeep.storage.hashing import HashingWriter
    from modelkeep.storage.local import durable_write

    rng = np.random.default_rng(3)
    path = tmp_path / "staged"
    expected_ranges = []
    with durable_write(str(path)) as raw:
        w = HashingWriter(raw, reread_fd=raw.fileno() if trailing else None)
        for _ in range(40):
            if rng.random() < 0.3:
                n = int(rng.integers(PAYLOAD_MIN, 3 * PAYLOAD_MIN))
                start = w.size
                with w.payload(n) as marked:
                    assert marked
                    w.write(b"\xff" * int(rng.integers(1, 17)))  # padding, as joblib writes it
                    w.write(rng.bytes(n))
                expected_ranges.append([start, w.size - n, w.size])
            else:
                w.write(bytearray(rng.bytes(int(rng.integers(1, 3 << 20)))))  # mutable: reused by callers
    record = w.blake3_record()
    sha = w.hexdigest()
    w.close()
    data = path.read_bytes()
    assert sha == hashlib.sha256(data).hexdigest() and record is not None
    assert record["ranges"] == expected_ranges
    inside = b"".join(data[s:e] for s, _, e in expected_ranges)
    outside, pos = b"", 0
    for s, _, e in expected_ranges:
        outside, pos = outside + data[pos:s], e
    assert record["payload"] == blake3(inside).hexdigest()
    assert record["skeleton"] == blake3(outside + data[pos:]).hexdigest()


def test_a_save_that_fails_midway_stops_its_hashing_and_leaves_nothing(p: ModelPersistence) -> None:
    class Unpicklable:
        def __reduce__(self) -> Any:
            raise RuntimeError("cannot pickle this")

    with pytest.raises(SerializationError, match="cannot pickle this"):
        p.save({"big": np.zeros(4 << 20), "bad": Unpicklable()}, "m")
    assert p.store.list_keys(".tmp") == []
    assert p.list_models() == []
