"""The artifact store interface: bytes under keys, written atomically, read verified.

:class:`ArtifactStore` is the small base class every backend implements (see
:mod:`.local` and :mod:`.remote`); :func:`modelkeep.storage.open_store` picks the
backend once, from the URL scheme. Writes are atomic: bytes are *staged* first
under ``.tmp/`` (hashed as they stream), then *committed* under their final
key, so no reader ever sees a partial file under a final key. A crash leaves at
most a staged file, which ``gc`` removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import re
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from ..errors import ArtifactNotFoundError, IntegrityError
from ..layout import TMP_DIR, check_key
from .hashing import (
    Advance,
    Expected,
    HashingWriter,
    SplitHash,
    VerifiedArtifact,
    check_digest,
    hashing_sink,
    no_advance,
)
from .verified import CheckedFiles, ChunkReader, ReadInto, read_artifact

logger = logging.getLogger("modelkeep")

#: Threads that write many small immutable files (blobs) at once: mostly waiting on I/O.
IO_WORKERS = 8


#: S3's smallest multipart part (all but the last); here, not in s3.py, so that checking a
#: ``part_size`` setting does not import the S3 backend.
MIN_PART_SIZE = 5 << 20

#: Bytes written to a wrapped staged file (:attr:`StagedArtifact.wrap`) that may wait to be hashed:
#: they are held in memory until then, not re-read from the file.
WRAPPED_PENDING = 16 << 20

#: Staged keys of resumable saves (:meth:`ArtifactStore.stage` with ``resume``).
RESUMABLE_PREFIX = f"{TMP_DIR}/resume-"
_STAGED = re.compile(r"[0-9a-f]{1,16}-[0-9a-f]{32}\.part")


def staged_at(key: str) -> float | None:
    """When the staged key ``key`` was named (seconds since the epoch, from :meth:`ArtifactStore.stage`),
    or ``None`` for another name. It bounds the age of an upload whose store does not say when it began."""
    name = key.rsplit("/", 1)[-1]
    if not _STAGED.fullmatch(name):
        return None
    return int(name.split("-", 1)[0], 16) / 1e9


class StagedArtifact:
    """Bytes written under a temporary key, waiting to be committed or discarded."""

    def __init__(self, store: ArtifactStore, tmp_key: str) -> None:
        self.store = store
        self.tmp_key = tmp_key
        self.sha256 = ""
        self.size = 0
        #: The BLAKE3 digests a load checks (see :mod:`.hashing`); ``None`` until written.
        self.blake3: dict[str, Any] | None = None
        self.committed = False
        #: Also gets every byte written, in order (a save fills the local cache with it).
        self.tee: Callable[[memoryview], None] | None = None
        #: Wraps the store's file in one that takes every byte written but may keep only some of
        #: them in the file (a client's save that sends its parts to a bucket as it serializes);
        #: the bytes are then hashed as they are written, not read back from the file.
        self.wrap: Callable[[BinaryIO], BinaryIO] | None = None
        #: Waits for the written bytes to be durable (a local store ``fsync``'s them on a helper
        #: thread: :meth:`ArtifactStore.open_staged_write`); :meth:`commit` calls them first.
        self._synced: list[Callable[[], None]] = []

    @contextlib.contextmanager
    def open(self, advance: Advance = no_advance) -> Iterator[HashingWriter]:
        """Open the staged file for writing; on success it is flushed and made durable (on a
        local disk by a helper thread: :meth:`commit` waits for it before the move).

        The digests are read once the file is written, while ``fsync`` waits for the disk."""
        writer = None
        try:
            with self._open_raw() as raw:
                reread = self.store.reread_fd(raw) if self.wrap is None else None
                if self.wrap is not None:
                    raw = self.wrap(raw)
                if self.tee is not None:
                    raw = _Tee(raw, self.tee)  # type: ignore[assignment]
                writer = HashingWriter(
                    raw,
                    advance,
                    reread_fd=reread,
                    writeback=self.store.syncs_writes,
                    max_pending=WRAPPED_PENDING if self.wrap is not None else 128 << 20,
                )
                yield writer
                writer.done_writing()  # hashing that needs the whole file runs during the fsync
            self.sha256, self.size, self.blake3 = writer.hexdigest(), writer.size, writer.blake3_record()
        finally:
            if writer is not None:
                writer.close()

    def _open_raw(self) -> contextlib.AbstractContextManager[BinaryIO]:
        return self.store.open_staged_write(self.tmp_key, self._synced)

    def commit(self, key: str) -> None:
        """Move the staged bytes to ``key`` atomically, replacing what was there, once they are
        durable (never a moved file whose bytes a power cut could lose)."""
        while self._synced:
            self._synced[0]()
            self._synced.pop(0)
        self.store.move(self.tmp_key, key)
        self.committed = True

    def drop_duplicate(self) -> None:
        """The staged bytes were not needed (identical bytes are already stored): remove them,
        off the caller's path where the backend can (:meth:`ArtifactStore.delete_soon`)."""
        if not self.committed:
            self.committed = True  # nothing left for discard()
            self.store.delete_soon(self.tmp_key, self.size)

    def discard(self) -> None:
        """Remove the staged bytes unless committed; best effort (``gc`` removes leftovers)."""
        if self.committed:
            return
        if self.store.unreachable:  # it would wait out the same timeouts again; gc removes leftovers
            logger.debug("not removing %s: the store did not answer", self.store.display_path(self.tmp_key))
            return
        try:
            self.store.delete(self.tmp_key, missing_ok=True)
        except Exception as exc:  # never hide the error that made us discard; gc removes leftovers
            logger.debug("could not remove staged file %s: %s", self.store.display_path(self.tmp_key), exc)


class _Tee(io.RawIOBase):
    """Writes to ``raw`` and hands the same bytes to ``copy``."""

    def __init__(self, raw: BinaryIO, copy: Callable[[memoryview], None]) -> None:
        super().__init__()
        self._raw, self._copy = raw, copy

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = self._raw.write(view)
        self._copy(view[:n] if n is not None else view)
        return view.nbytes if n is None else n

    def flush(self) -> None:
        self._raw.flush()


class PendingUpload(Protocol):
    """An upload to a final key that stays invisible until :meth:`complete` (see
    :meth:`ArtifactStore.begin_direct`)."""

    def write(self, data: Any) -> int: ...

    def send_all(self) -> None:
        """Send every byte written so far; the object still does not appear."""

    def complete(self) -> None:
        """Make the object appear whole, unless one is already under the key (then an error)."""

    def abort(self) -> None:
        """Throw the upload away (nothing appears); idempotent, best effort."""


class DirectArtifact(StagedArtifact):
    """Bytes uploaded straight to their final key under a version's claim (stores with
    :attr:`ArtifactStore.direct_uploads`). Writing sends the bytes, but nothing is visible
    under the key until :meth:`commit`, which first runs ``before_complete`` (the claim's
    check), then completes the upload, never over an object already there. No copy follows.
    :meth:`discard` aborts an upload that was not committed."""

    def __init__(self, store: ArtifactStore, key: str, before_complete: Callable[[], None]) -> None:
        super().__init__(store, key)
        self.before_complete = before_complete
        self._upload: PendingUpload | None = None

    @contextlib.contextmanager
    def _open_raw(self) -> Iterator[BinaryIO]:
        upload = self._upload = self.store.begin_direct(self.tmp_key)
        try:
            yield upload  # type: ignore[misc]
            with self.store.translated("upload", self.tmp_key):
                upload.send_all()
        except BaseException:
            upload.abort()
            raise

    def commit(self, key: str) -> None:
        if key != self.tmp_key or self._upload is None:
            raise ValueError(f"{key!r} is not where these bytes were uploaded ({self.tmp_key!r})")
        self.before_complete()
        with self.store.translated("write", key):
            self._upload.complete()
        self.committed = True

    def drop_duplicate(self) -> None:
        self.discard()
        self.committed = True

    def discard(self) -> None:
        if not self.committed and self._upload is not None:
            self._upload.abort()


class InlineArtifact(StagedArtifact):
    """Checked bytes held in memory (a small artifact a registry server received whole), put
    straight at their final key by :meth:`commit`, under the version's claim, as a
    :class:`DirectArtifact`'s are: nothing staged, no copy, never over an object already
    there (stores with :attr:`ArtifactStore.direct_uploads`). When an object is there (a
    leftover of a crashed save that ``gc`` has not removed yet), :meth:`commit` raises and
    :attr:`collided` is set; the failed attempt's clean-up removes the leftover."""

    def __init__(self, store: ArtifactStore, data: bytes | memoryview, sha256: str) -> None:
        super().__init__(store, "")
        self._data = data
        self.size, self.sha256 = len(data), sha256
        #: Whether :meth:`commit` found an object under its key.
        self.collided = False

    def commit(self, key: str) -> None:
        upload = self.store.begin_direct(key)
        try:
            upload.write(self._data)
            with self.store.translated("write", key):
                upload.complete()
        except BaseException:
            upload.abort()
            with contextlib.suppress(Exception):  # only on this failure path: no check on the way in
                self.collided = self.store.exists(key)
            raise
        self.tmp_key, self.committed = key, True

    def drop_duplicate(self) -> None:
        self.committed = True  # nothing was stored

    def discard(self) -> None:
        """Nothing to remove: the bytes reach the store only in :meth:`commit`, whole or not at all."""


class ArtifactStore(ABC):
    """Keys (``name/version/file``) mapped to files under one root.

    Subclasses implement the primitives marked abstract; everything else
    (staging, small writes, verified reads) is built on them here, once.
    """

    #: The root as the backend names it (an absolute path, or ``bucket/prefix``).
    root: str
    #: The root as a user names it (a path, or ``s3://bucket/prefix``).
    url: str
    #: Whether other machines see the same files (then the index must be shared too).
    shared: bool = True
    #: Set when a remote call timed out or could not connect (cleanup then stops trying).
    unreachable: bool = False
    #: Whether an interrupted upload can be continued (:meth:`stage` with ``resume``).
    resumable_uploads: bool = False
    #: Whether a save can upload straight to its final key (:meth:`stage_direct`): the bytes
    #: stay invisible until the upload completes, so no staged copy is needed (S3).
    direct_uploads: bool = False

    # -- naming -----------------------------------------------------------------
    def full_path(self, key: str) -> str:
        """The filesystem path (local) or object path (remote) of ``key``; a key that would
        leave the store raises :class:`~modelkeep.errors.UnsafeKeyError` (see :func:`check_key`)."""
        return f"{self.root}/{check_key(key)}"

    def display_path(self, key: str) -> str:
        """A path a person can paste: a local path, or a URL for object stores."""
        return f"{self.url}/{key}"

    def local_path(self, key: str) -> Path | None:
        """The local file behind ``key``, or ``None`` for remote stores."""
        return None

    def location(self, key: str = "") -> str | Path:
        """Where ``key`` (default: the root) lives, as ``save()`` returns it: a
        :class:`~pathlib.Path` for local stores, the URL string (``s3://...``) for remote ones."""
        return self.display_path(key) if key else self.url

    def not_found(self, key: str) -> ArtifactNotFoundError:
        """The error for a missing ``key``, in the seed's wording."""
        return ArtifactNotFoundError(f"Model file not found: {self.display_path(key)}")

    # -- writing: primitives ------------------------------------------------------
    @abstractmethod
    def open_write(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """A raw file for writing ``key``; made durable when the block exits cleanly,
        thrown away (never completed) when it raises. Callers write staged keys only."""

    @abstractmethod
    def move(self, src_key: str, dst_key: str) -> None:
        """Make ``src_key``'s bytes appear whole under ``dst_key``, then drop ``src_key``."""

    #: Whether :meth:`open_write` ``fsync``'s what it wrote: then hashing a staged file starts its
    #: write-back as it goes (:func:`.hashing.start_writeback`), for that ``fsync`` to find it written.
    syncs_writes = False

    def open_staged_write(
        self, key: str, synced: list[Callable[[], None]]
    ) -> contextlib.AbstractContextManager[BinaryIO]:
        """:meth:`open_write` for a :class:`StagedArtifact`'s bytes. A store may make them durable
        after the block, in the background, and append to ``synced`` a callable that waits for
        that (and raises its error): :meth:`StagedArtifact.commit` calls it before the move."""
        return self.open_write(key)

    def reread_fd(self, raw: BinaryIO) -> int | None:
        """A descriptor that reads back what is written to ``raw`` (from :meth:`open_write`), so
        hashing can trail the writer through the page cache; ``None`` if the backend has none."""
        return None

    def link(self, src_key: str, dst_key: str) -> bool:
        """Make ``dst_key`` share ``src_key``'s bytes without copying; ``False`` if the
        backend cannot (then the caller writes the bytes)."""
        return False

    # -- writing: built on the primitives ------------------------------------------
    def stage(self, resume: str | None = None) -> StagedArtifact:
        """A new staged artifact under ``.tmp/``; commit or discard it. With ``resume`` (a name
        for what is being saved), the key is always the same for that name, so a store that can
        (S3) continues an upload an earlier, interrupted attempt left open (see :mod:`.s3`)."""
        if resume is not None and self.resumable_uploads:
            digest = hashlib.sha256(resume.encode("utf-8")).hexdigest()[:32]
            return StagedArtifact(self, f"{RESUMABLE_PREFIX}{digest}.part")
        return StagedArtifact(self, f"{TMP_DIR}/{time.time_ns():x}-{uuid.uuid4().hex}.part")

    def stage_direct(self, key: str, before_complete: Callable[[], None]) -> DirectArtifact:
        """An upload straight to ``key`` (see :class:`DirectArtifact`); only for stores with
        :attr:`direct_uploads`, and only under the claim of ``key``'s version."""
        if not self.direct_uploads:
            raise NotImplementedError(f"{type(self).__name__} cannot upload straight to a final key")
        return DirectArtifact(self, key, before_complete)

    def begin_direct(self, key: str) -> PendingUpload:
        """An upload to ``key`` that stays invisible until completed (stores with
        :attr:`direct_uploads` only; see :class:`DirectArtifact`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot upload straight to a final key")

    @contextlib.contextmanager
    def translated(self, action: str, key: str) -> Iterator[None]:
        """Turn a backend's failures into modelkeep errors (remote stores override it)."""
        yield

    @contextlib.contextmanager
    def staged(self, resume: str | None = None) -> Iterator[StagedArtifact]:
        """Context manager around :meth:`stage` that discards on any exit unless committed."""
        st = self.stage(resume)
        try:
            yield st
        finally:
            st.discard()

    def write_bytes(self, key: str, data: bytes | memoryview) -> None:
        """Write a small file atomically (staged, durable, then moved into place)."""
        with self.staged() as st:
            with st.open() as w:
                w.write(data)
            st.commit(key)

    @contextlib.contextmanager
    def one_folder_sync(self, waiters: list[Callable[[], None]] | None = None) -> Iterator[None]:
        """Files moved into place in this block (by this thread) are made durable together when
        it exits cleanly: a local disk ``fsync``'s each folder they went to once, instead of once
        per file. Until then a power cut may undo the moves, so nothing may reference the files
        before the block ends. Object stores have nothing to sync.

        With ``waiters`` (a list), the folders are ``fsync``'ed on a helper thread from the
        block's clean exit on, and a callable that waits for that is appended to the list: the
        caller calls it before anything may reference the files (a save: just before its row's
        COMMIT, so the row's statements run while the disk syncs the folder)."""
        yield

    def delete_soon(self, key: str, size: int) -> None:
        """Delete ``key`` (a staged file nobody references); backends may do it in the background,
        as unlinking a large file costs milliseconds per 100 MB. A leftover is ``gc``'s."""
        try:
            self.delete(key, missing_ok=True)
        except Exception as exc:
            logger.debug("could not remove staged file %s: %s", self.display_path(key), exc)

    def write_new(self, key: str, data: bytes) -> None:
        """Write a small immutable file under a key nobody else uses (an event file): a
        single durable write, no rename. Backends without a cheaper way use :meth:`write_bytes`."""
        self.write_bytes(key, data)

    def write_many(self, items: Mapping[str, memoryview]) -> None:
        """Write immutable files (content-addressed blobs) atomically, in parallel."""
        if len(items) <= 1:
            for key, data in items.items():
                self.write_bytes(key, data)
            return
        with ThreadPoolExecutor(IO_WORKERS) as pool:
            list(pool.map(lambda kv: self.write_bytes(*kv), items.items()))

    # -- reading: primitives -------------------------------------------------------
    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """Open ``key`` for reading; :class:`ArtifactNotFoundError` when missing."""

    @abstractmethod
    def stream(self, key: str) -> contextlib.AbstractContextManager[Iterator[bytes]]:
        """Iterate over ``key``'s bytes in chunks without holding the whole file."""

    def map(self, key: str) -> Any | None:
        """A read-only memory map of ``key``, or ``None`` when the backend cannot map."""
        return None

    @contextlib.contextmanager
    def open_mapped(
        self, key: str, expected: Expected, checked: CheckedFiles | None = None
    ) -> Iterator[VerifiedArtifact | None]:
        """For a memory-mapped load: the artifact's skeleton in private memory and the open
        file to map its payloads from, after checking both (see :func:`.verified.check_mapped`);
        ``None`` if the backend has no local files or the record has no payload ranges."""
        yield None

    # -- reading: built on the primitives -------------------------------------------
    def read_bytes(self, key: str) -> bytes:
        with self.open_read(key) as f:
            return f.read()

    def read_verified(self, key: str, sha256: str, advance: Advance = no_advance) -> bytes:
        """``key``'s bytes, read once, after checking that they hash to ``sha256``.

        The bytes returned are the bytes hashed: deserialize from them, never
        from a second read of the store.
        """
        chunks: list[bytes] = []
        w = hashing_sink(advance)
        with self.stream(key) as parts:
            for chunk in parts:
                w.write(chunk)
                chunks.append(chunk)
        check_digest(self.display_path(key), sha256, w.hexdigest())
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @contextlib.contextmanager
    def open_artifact(
        self, key: str, expected: Expected | str, advance: Advance = no_advance
    ) -> Iterator[VerifiedArtifact]:
        """``key``'s bytes in private memory after checking them against ``expected`` (a
        record's digests, or a SHA-256), payload ranges in buffers of their own: see
        :func:`.verified.read_artifact`. The store is read once; deserialize from what this
        yields, which no one else can change."""
        if isinstance(expected, str):
            expected = Expected(expected)
        where = self.display_path(key)
        with self._source(key, expected) as (readinto, size, more):
            out = read_artifact(readinto, size, expected, where, advance)
            if more():
                out.file.close()
                raise IntegrityError(f"integrity check failed for {where}: it is longer than recorded")
        try:
            yield out
        finally:
            out.file.close()

    @contextlib.contextmanager
    def _source(self, key: str, expected: Expected) -> Iterator[tuple[ReadInto, int, Callable[[], bool]]]:
        """For :meth:`open_artifact`: ``readinto`` over ``key``'s bytes, their size, and a
        call that says whether bytes remain after that size."""
        size = expected.size if expected.size is not None else self.size(key)
        with self.stream(key) as chunks:
            reader = ChunkReader(chunks)
            yield reader.readinto, size, lambda: bool(reader.readinto(memoryview(bytearray(1))))

    @contextlib.contextmanager
    def open_verified(self, key: str, sha256: str, advance: Advance = no_advance) -> Iterator[IO[bytes]]:
        """``key``'s bytes in a private in-memory file, positioned at 0, after checking that
        they hash to ``sha256``; deserialize from this file, which holds exactly the bytes that
        were hashed and which no one else can change."""
        with self.open_artifact(key, sha256, advance) as verified:
            yield verified.file

    def read_exact(self, key: str, size: int) -> bytearray:
        """``key``'s bytes in one writable buffer, read once; :class:`IntegrityError`
        unless the file has exactly ``size`` bytes."""
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        with self.open_read(key) as f:
            while got < size:
                n = f.readinto(view[got:])  # type: ignore[attr-defined]
                if not n:
                    break
                got += n
            extra = f.read(1)
        if got != size or extra:
            raise IntegrityError(f"{self.display_path(key)} does not have the recorded {size} bytes")
        return buf

    def verify(self, key: str, expected: Expected | str) -> None:
        """Raise :class:`IntegrityError` (or :class:`ArtifactNotFoundError`) unless ``key``
        matches its SHA-256 and, when recorded, its BLAKE3 digests (what a load checks)."""
        if isinstance(expected, str):
            expected = Expected(expected)
        w = hashing_sink()
        split = SplitHash(expected.ranges) if expected.fast else None
        with self.stream(key) as chunks:
            for chunk in chunks:
                w.write(chunk)
                if split is not None:
                    split.update(chunk)
        where = self.display_path(key)
        check_digest(where, expected.sha256, w.hexdigest())
        if split is not None:
            check_digest(where, str(expected.skeleton), split.skeleton.hexdigest())
            if expected.ranges:
                check_digest(where, str(expected.payload), split.payload.hexdigest())

    # -- housekeeping ----------------------------------------------------------------
    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether a file is stored under ``key``."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Size in bytes of ``key``; :class:`ArtifactNotFoundError` when missing."""

    @abstractmethod
    def age_seconds(self, key: str, now: float) -> float | None:
        """Seconds since ``key`` was last written, or ``None`` when the store cannot tell."""

    @abstractmethod
    def delete(self, key: str, *, missing_ok: bool = False) -> None:
        """Remove ``key``; :class:`ArtifactNotFoundError` when missing unless ``missing_ok``."""

    @abstractmethod
    def list_keys(self, prefix: str = "") -> list[str]:
        """Every file key under ``prefix`` (recursively), relative to the root, sorted."""

    def touch(self, key: str) -> None:
        """Mark ``key`` as just used, so ``gc``'s age rule keeps it (where the store can)."""
        return None

    def remove_empty_dirs(self, key_prefix: str) -> None:
        """Remove ``key_prefix`` and its parent while they are empty (stores with directories)."""
        return None
