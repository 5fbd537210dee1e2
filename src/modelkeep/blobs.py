"""Content-addressed blobs: large buffers stored once under their SHA-256.

Layout: ``<models_dir>/.blobs/<first two hex digits>/<sha256>`` (see
:mod:`modelkeep.layout`). A blob is immutable once written (atomically, through
the store's :meth:`~modelkeep.storage.ArtifactStore.write_many`), so versions
that share an array share its bytes, and loads can memory-map blobs safely.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .errors import IntegrityError
from .layout import BLOB_DIR, blob_key
from .storage import ArtifactStore, check_digest

#: Threads that hash and read blobs (CPU-bound; hashlib releases the GIL).
WORKERS = max(2, min(8, (os.cpu_count() or 2)))

__all__ = ["BLOB_DIR", "WORKERS", "BlobStore", "blob_key", "sha256_of"]


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
                    self.store.touch(key)  # a reused blob is young again, so gc's age rule keeps it
                    continue
            except OSError:
                pass
            out.append(sha)
        return out

    def put_many(self, blobs: dict[str, memoryview]) -> int:
        """Write the given ``{sha256: bytes}`` blobs in parallel; returns bytes written."""
        if not blobs:
            return 0
        self.store.write_many({blob_key(sha): view for sha, view in blobs.items()})
        return sum(v.nbytes for v in blobs.values())

    def read(self, sha: str, size: int, *, verify: bool = True, mmap: bool = False) -> Any:
        """A blob's bytes (a read-only memory map with ``mmap=True`` where the store can map).

        With ``mmap=True`` only the blob's size is checked here: the mapped pages
        are raw array data, which cannot run code; ``verify()`` re-hashes them.
        """
        key = blob_key(sha)
        mapped = self.store.map(key) if mmap else None
        if mapped is not None:
            if len(mapped) != size:
                raise IntegrityError(f"blob {sha[:12]} has {len(mapped)} bytes, recorded {size}")
            if verify:
                self._check(sha, memoryview(mapped))
            return mapped
        data = self.store.read_exact(key, size)
        if verify:
            self._check(sha, memoryview(data))
        return data  # writable, so loaded arrays are writable like joblib's

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
