"""Content-addressed blobs: large buffers stored once under their SHA-256.

Layout: ``<models_dir>/.blobs/<first two hex digits>/<sha256>`` (see
:mod:`modelkeep.layout`). A blob is immutable once written (atomically, through
the store's :meth:`~modelkeep.storage.ArtifactStore.write_many`), so versions
that share an array share its bytes, and loads can memory-map blobs safely.

A remote store's blobs go through the local cache of remote artifacts
(:mod:`modelkeep.storage.cache`), which is content-addressed by SHA-256 like the blobs
themselves: a blob read from the store (and checked) or written by a save becomes an entry,
and a later load reads the entry, hashing it again before it is used (a cache folder is
treated like a store someone else may write: an entry that fails its check is removed and
the blob is read from the store). Bytes read from a store that cannot map them are always
checked, memory-mapped load or not: only pages mapped from a local store skip the hash here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .errors import IntegrityError, ModelKeepError
from .layout import BLOB_DIR, blob_key
from .storage import ArtifactStore, check_digest

if TYPE_CHECKING:
    from .storage.cache import ArtifactCache

#: Threads that hash and read blobs (CPU-bound; hashlib releases the GIL).
WORKERS = max(2, min(8, (os.cpu_count() or 2)))

__all__ = ["BLOB_DIR", "WORKERS", "BlobStore", "blob_key", "sha256_of"]


def sha256_of(view: memoryview) -> str:
    return hashlib.sha256(view).hexdigest()


class BlobStore:
    """Put, check and open blobs in an :class:`ArtifactStore` (through ``cache``, the local
    cache of a remote store's artifacts, when given)."""

    def __init__(self, store: ArtifactStore, cache: ArtifactCache | None = None) -> None:
        self.store = store
        self.cache = cache

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
        for sha, view in blobs.items():
            self._keep(sha, view)  # the first load after the save reads the local disk
        return sum(v.nbytes for v in blobs.values())

    def read(self, sha: str, size: int, *, verify: bool = True, mmap: bool = False) -> Any:
        """A blob's bytes (a read-only memory map with ``mmap=True`` where the store can map).

        With ``mmap=True`` only the size of a blob mapped from a local store is checked here:
        the mapped pages are raw array data, which cannot run code; ``verify()`` re-hashes them.
        Bytes that are read (a remote store's, a cache entry's) are always hashed.
        """
        if self.cache is not None:
            cached = self._read_cached(sha, size, mmap)
            if cached is not None:
                return cached
        mapped = self._map(sha, size, verify=verify) if mmap else None
        if mapped is not None:
            return mapped
        data = self.store.read_exact(blob_key(sha), size)
        if verify or mmap:  # not mapped: these bytes came over the wire or into private memory
            self._check(sha, memoryview(data))
        self._keep(sha, memoryview(data))
        return data  # writable, so loaded arrays are writable like joblib's

    def _map(self, sha: str, size: int, *, verify: bool) -> Any:
        """``sha``'s blob mapped from the store, its size checked (and its bytes with ``verify``);
        ``None`` when the store cannot map."""
        mapped = self.store.map(blob_key(sha))
        if mapped is not None:
            if len(mapped) != size:
                raise IntegrityError(f"blob {sha[:12]} has {len(mapped)} bytes, recorded {size}")
            if verify:
                self._check(sha, memoryview(mapped))
        return mapped

    def _read_cached(self, sha: str, size: int, mmap: bool) -> Any:
        """``sha``'s bytes from the cache, checked (``None``: not cached, or the entry failed
        its check and was removed)."""
        assert self.cache is not None
        entry = self.cache.lookup(sha)
        if entry is None:
            return None
        try:
            data = self.cache.store.map(entry) if mmap else None
            if data is None:
                data = self.cache.store.read_exact(entry, size)
            if len(data) != size:
                raise IntegrityError(f"blob {sha[:12]} has {len(data)} bytes, recorded {size}")
            self._check(sha, memoryview(data))
        except (OSError, ModelKeepError) as exc:
            self.cache.discard(sha, str(exc))  # a tampered or truncated entry: read the store
            return None
        return data

    def _keep(self, sha: str, view: memoryview) -> None:
        """Add a blob whose bytes were hashed to ``sha`` to the cache (best effort)."""
        if self.cache is None or view.nbytes > self.cache.max_bytes:
            return
        pending = self.cache.begin_entry()
        if pending is not None:
            pending.write(view)
            pending.admit(sha, view.nbytes)

    def read_many(self, digests: Sequence[tuple[str, int]], *, verify: bool = True, mmap: bool = False) -> list[Any]:
        """Every blob, read (and verified) in parallel.

        Blobs mapped from a local store without a hash are mapped on this thread: a map is two
        system calls, less than starting the pool's threads would cost."""
        if mmap and not verify and self.cache is None:
            mapped = [self._map(sha, size, verify=False) for sha, size in digests]
            if all(m is not None for m in mapped):
                return mapped
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
