"""Content-addressed blobs: large buffers stored once under their SHA-256.

Layout: ``<models_dir>/.blobs/<first two hex digits>/<sha256>``. A blob is
immutable once written (staged, fsync'ed, renamed), so versions that share an
array share its bytes, and loads can memory-map blobs safely.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .errors import IntegrityError, StorageError
from .storage import TMP_DIR, ArtifactStore, _fsync_dir, check_digest

BLOB_DIR = ".blobs"
#: Threads that hash and read blobs (CPU-bound; hashlib releases the GIL).
WORKERS = max(2, min(8, (os.cpu_count() or 2)))
#: Threads that write blobs: mostly waiting on fsync, so more than the cores.
IO_WORKERS = 8


def blob_key(sha256: str) -> str:
    """The store key of a blob."""
    return f"{BLOB_DIR}/{sha256[:2]}/{sha256}"


def sha256_of(view: memoryview) -> str:
    return hashlib.sha256(view).hexdigest()


class BlobStore:
    """Put, check and open blobs in an :class:`ArtifactStore`."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    def hash_all(self, views: Sequence[memoryview]) -> list[str]:
        """SHA-256 of every buffer, hashed in parallel."""
        if len(views) <= 1:
            return [sha256_of(v) for v in views]
        with ThreadPoolExecutor(WORKERS) as pool:
            return list(pool.map(sha256_of, views))

    def missing(self, digests: Iterable[tuple[str, int]]) -> list[str]:
        """Digests whose blob is absent or has the wrong size (to be written)."""
        out = []
        for sha, size in digests:
            key = blob_key(sha)
            try:
                if self.store.size(key) == size:
                    if self.store.is_local:  # a reused blob is young again, so gc's age rule keeps it
                        os.utime(self.store.full_path(key))
                    continue
            except OSError:
                pass
            out.append(sha)
        return out

    def put_many(self, blobs: dict[str, memoryview]) -> int:
        """Write the given ``{sha256: bytes}`` blobs in parallel; returns bytes written."""
        if not blobs:
            return 0
        items = list(blobs.items())
        if len(items) == 1:
            self._put(*items[0])
        else:
            with ThreadPoolExecutor(IO_WORKERS) as pool:
                list(pool.map(lambda kv: self._put(*kv), items))
        if self.store.is_local:
            for parent in {os.path.dirname(self.store.full_path(blob_key(sha))) for sha in blobs}:
                _fsync_dir(parent)
        return sum(v.nbytes for v in blobs.values())

    def _put(self, sha: str, view: memoryview) -> None:
        key = blob_key(sha)
        if not self.store.is_local:
            self.store.fs.pipe_file(self.store.full_path(key), bytes(view))  # object PUTs are atomic
            return
        final = self.store.full_path(key)
        tmp = self.store.full_path(f"{TMP_DIR}/{uuid.uuid4().hex}.blob")
        try:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.makedirs(os.path.dirname(tmp), exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            try:
                mv = view.cast("B")
                written = 0
                while written < mv.nbytes:
                    written += os.write(fd, mv[written : written + (64 << 20)])
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StorageError(exc.errno, f"cannot write blob {sha[:12]}: {exc.strerror or exc}") from exc

    def read(self, sha: str, size: int, *, verify: bool = True, mmap: bool = False) -> Any:
        """A blob's bytes (a read-only ``mmap`` with ``mmap=True``, local stores only)."""
        key = blob_key(sha)
        if mmap and self.store.is_local:
            import mmap as _mmap

            try:
                with open(self.store.full_path(key), "rb") as f:
                    if size == 0:
                        return b""
                    mapped = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ)
            except FileNotFoundError as exc:
                raise self.store.not_found(key) from exc
            if len(mapped) != size:
                raise IntegrityError(f"blob {sha[:12]} has {len(mapped)} bytes, recorded {size}")
            if verify:
                self._check(sha, memoryview(mapped))
            return mapped
        data = self._read_into(key, size)
        if verify:
            self._check(sha, memoryview(data))
        return data  # writable, so loaded arrays are writable like joblib's

    def _read_into(self, key: str, size: int) -> bytearray:
        """The blob's bytes in one writable buffer, read once (no intermediate copy)."""
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        with self.store.open_read(key) as f:
            while got < size:
                n = f.readinto(view[got:])  # type: ignore[attr-defined]
                if not n:
                    break
                got += n
            extra = f.read(1)
        if got != size or extra:
            raise IntegrityError(f"blob {key.rsplit('/', 1)[-1][:12]} does not have the recorded {size} bytes")
        return buf

    def read_many(self, digests: Sequence[tuple[str, int]], *, verify: bool = True, mmap: bool = False) -> list[Any]:
        """Every blob, read (and verified) in parallel."""
        if len(digests) <= 1:
            return [self.read(sha, size, verify=verify, mmap=mmap) for sha, size in digests]
        with ThreadPoolExecutor(WORKERS) as pool:
            return list(pool.map(lambda d: self.read(d[0], d[1], verify=verify, mmap=mmap), digests))

    @staticmethod
    def _check(sha: str, view: memoryview) -> None:
        check_digest(f"blob {sha[:16]}...", sha, sha256_of(view))

    def delete(self, sha: str) -> None:
        self.store.delete(blob_key(sha), missing_ok=True)

    def delete_many(self, digests: Iterable[str]) -> None:
        for sha in digests:
            self.delete(sha)

    def list(self) -> list[str]:
        """Every blob digest present in the store."""
        return [key.rsplit("/", 1)[-1] for key in self.store.list_keys(BLOB_DIR)]
