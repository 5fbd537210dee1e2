"""A large local save starts its staged file's write-back while it writes (storage/hashing.py)."""

from __future__ import annotations

import hashlib
import mmap
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from modelkeep import ModelPersistence
from modelkeep.storage import hashing
from modelkeep.storage.hashing import HashingWriter
from modelkeep.storage.local import durable_write


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range(2) is Linux's")
def test_the_write_back_call_is_found_and_accepted_by_the_kernel(tmp_path: Path) -> None:
    call = hashing._sync_file_range()
    assert call is not None
    path = tmp_path / "f"
    path.write_bytes(b"x" * (3 * mmap.PAGESIZE))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert call(fd, 0, 2 * mmap.PAGESIZE, hashing._SYNC_FILE_RANGE_WRITE) == 0
        hashing.start_writeback(fd, 0, 3 * mmap.PAGESIZE)
        hashing.start_writeback(fd, 5, 5)  # an empty range: nothing asked
    finally:
        os.close(fd)
    assert path.read_bytes() == b"x" * (3 * mmap.PAGESIZE)


@pytest.mark.parametrize("writeback", [True, False])
def test_the_trailing_hash_starts_the_write_back_of_whole_written_pages_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writeback: bool
) -> None:
    """With ``writeback``, every range handed to the kernel follows the last, starts and ends
    on a page boundary (a partly written page is left to the writer) and lies inside what was
    written; without it (a file no one will ``fsync``), none is. The digests are those of the
    file's bytes either way."""
    asked: list[tuple[int, int]] = []
    real = hashing.start_writeback

    def recording(fd: int, start: int, end: int) -> None:  # the real call, seen
        asked.append((start, end))
        real(fd, start, end)

    monkeypatch.setattr(hashing, "start_writeback", recording)
    rng = np.random.default_rng(7)
    path = tmp_path / "staged"
    with durable_write(str(path)) as raw:
        w = HashingWriter(raw, reread_fd=raw.fileno(), writeback=writeback)
        for _ in range(12):
            w.write(rng.bytes(int(rng.integers(1, 4 << 20))))  # odd sizes: pages left half written
            w.write(b"tail" * int(rng.integers(1, 100)))
        w.done_writing()
    sha = w.hexdigest()
    w.close()
    data = path.read_bytes()
    assert sha == hashlib.sha256(data).hexdigest()
    if not writeback:
        assert asked == []
        return
    assert asked, "a file of several chunks had no write-back started"
    pos = 0
    for start, end in asked:
        assert start == pos and end > start
        assert start % mmap.PAGESIZE == 0 and end % mmap.PAGESIZE == 0
        pos = end
    assert pos <= len(data)


def test_a_large_save_with_write_back_loads_and_verifies(persistence: ModelPersistence) -> None:
    """A 40 MB model over every index backend: saved twice (the second staged copy is hashed,
    then dropped for a link to the first), both versions load equal and verify."""
    model = {"w": np.arange(5 << 20, dtype=np.float64), "b": np.ones(3, dtype=np.float32)}
    for version in ("1.0.0", "1.0.1"):
        record = persistence.save_version(model, "m", version, compress=False)
        assert record.artifact is not None and record.artifact.compression is None
    for version in ("1.0.0", "1.0.1"):
        loaded = persistence.load("m", version)
        assert np.array_equal(loaded["w"], model["w"]) and np.array_equal(loaded["b"], model["b"])
    assert persistence.verify().ok
