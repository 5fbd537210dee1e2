"""The local-disk backend: ``fsync`` + ``rename`` + directory ``fsync``, hard links for dedup."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from .._workers import ProcessWorker
from ..errors import StorageError, UnsafeKeyError
from ..layout import TMP_DIR, check_key
from .base import IO_WORKERS, ArtifactStore
from .hashing import CHUNK, Advance, Expected, VerifiedArtifact, check_digest, no_advance
from .verified import CheckedFiles, ReadInto, check_mapped

#: Largest single ``os.write`` when writing a blob.
WRITE_SLICE = 64 << 20
#: Unreferenced staged files at least this large are unlinked on a helper thread.
BACKGROUND_UNLINK_MIN = 8 << 20


#: Unlinks of large unreferenced files (:meth:`LocalStore.delete_soon`), which may be long.
_unlinker = ProcessWorker("modelkeep-unlink")
#: ``fsync`` of folders for :meth:`LocalStore.one_folder_sync` with waiters, apart from the unlinks.
_syncer = ProcessWorker("modelkeep-sync")


def _fsync_dirs(folders: Iterable[str]) -> None:
    for folder in folders:
        fsync_dir(folder)


def _fsync_closing(fd: int, path: str) -> None:
    """``fsync`` and close ``fd`` (a staged file's, on the helper thread)."""
    try:
        os.fsync(fd)
    except OSError as exc:
        raise _storage_error(exc, f"cannot write {path}") from exc
    finally:
        os.close(fd)


def wait_for_background_unlinks() -> None:
    """Block until the unlinks :meth:`LocalStore.delete_soon` handed to the helper thread are done."""
    _unlinker.drain()


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class LocalStore(ArtifactStore):
    """Files under a local folder. A commit is ``fsync`` of the file, ``rename`` over the
    final name, then ``fsync`` of the directory, so a power cut leaves the old file or
    the new one, never a mix."""

    shared = False
    syncs_writes = True

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.url = self.root
        self._batch = threading.local()  # folders whose fsync one_folder_sync() put off

    @contextlib.contextmanager
    def one_folder_sync(self, waiters: list[Callable[[], None]] | None = None) -> Iterator[None]:
        if getattr(self._batch, "folders", None) is not None:  # nested: the outer block syncs
            yield
            return
        folders: dict[str, None] = {}
        self._batch.folders = folders
        try:
            yield
        finally:
            self._batch.folders = None
        # only on a clean exit: a failed save's files are removed anyway
        if waiters is not None and folders:
            waiters.append(_syncer.pool().submit(_fsync_dirs, list(folders)).result)
            return
        _fsync_dirs(folders)

    def _replace(self, src: str, dst: str) -> None:
        """``durable_replace``, or, inside :meth:`one_folder_sync`, the rename alone (the block
        ``fsync``'s the folder when it ends)."""
        folders = getattr(self._batch, "folders", None)
        durable_replace(src, dst, sync_dir=folders is None)
        if folders is not None:
            folders[os.path.dirname(dst) or "."] = None

    def full_path(self, key: str) -> str:
        """The path of ``key`` under the root. Keys that leave the root, and symbolic links
        anywhere below it, raise :class:`UnsafeKeyError`: a store written by someone else
        must not make modelkeep read, write or delete outside it."""
        current = self.root
        for part in check_key(key).split("/"):
            current = os.path.join(current, part)
            if os.path.islink(current):
                raise UnsafeKeyError(
                    f"refusing {current}: it is a symbolic link inside the store, and modelkeep does not follow links"
                )
        return current

    def display_path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/")) if key else self.root

    def local_path(self, key: str) -> Path | None:
        return Path(self.full_path(key))

    def location(self, key: str = "") -> str | Path:
        return Path(self.full_path(key) if key else self.root)

    # -- writing ---------------------------------------------------------------
    def open_write(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        return self._open_write(key, None)

    def open_staged_write(
        self, key: str, synced: list[Callable[[], None]]
    ) -> contextlib.AbstractContextManager[BinaryIO]:
        """The file's ``fsync`` runs on a helper thread from the block's clean exit on (the
        hashing threads' last reads and the claim go on meanwhile); ``synced`` gets its waiter,
        which raises :class:`StorageError` when it failed. A store that does not sync its writes
        (:attr:`syncs_writes` false: a client's scratch folder) writes as :meth:`open_write` does."""
        if not self.syncs_writes:
            return self.open_write(key)
        return self._open_write(key, synced)

    @contextlib.contextmanager
    def _open_write(self, key: str, synced: list[Callable[[], None]] | None) -> Iterator[BinaryIO]:
        path = self.full_path(key)
        try:
            with durable_write(path, sync=synced is None) as f:
                yield f
                if synced is not None:  # a descriptor of its own: the block closes this one
                    synced.append(_syncer.pool().submit(_fsync_closing, os.dup(f.fileno()), path).result)
        except StorageError:
            raise
        except OSError as exc:
            raise _storage_error(exc, f"cannot write {path}") from exc

    def reread_fd(self, raw: BinaryIO) -> int | None:
        return raw.fileno()  # durable_write opens read-write

    def move(self, src_key: str, dst_key: str) -> None:
        dst = self.full_path(dst_key)
        try:
            self._replace(self.full_path(src_key), dst)
        except OSError as exc:
            raise _storage_error(exc, f"cannot move artifact into {dst}") from exc

    def delete_soon(self, key: str, size: int) -> None:
        """Unlink a large unreferenced staged file on a helper thread (freeing 100 MB of
        blocks and cached pages takes ~20 ms); pending unlinks finish before the interpreter
        exits, and a process killed first leaves the file in ``.tmp/`` for ``gc``."""
        if size < BACKGROUND_UNLINK_MIN:
            super().delete_soon(key, size)
            return
        path = self.full_path(key)
        _unlinker.pool().submit(_unlink_quietly, path)

    def link(self, src_key: str, dst_key: str) -> bool:
        """Make ``dst_key`` a hard link to ``src_key`` (dedup: identical bytes are stored once)."""
        tmp = self.full_path(f"{TMP_DIR}/{uuid.uuid4().hex}.link")
        try:
            os.makedirs(os.path.dirname(tmp), exist_ok=True)
            os.link(self.full_path(src_key), tmp)
            self._replace(tmp, self.full_path(dst_key))
            return True
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return False

    def write_many(self, items: Mapping[str, memoryview]) -> None:
        """Write read-only files in parallel, each ``fsync``'ed and renamed into place; each
        directory is ``fsync``'ed once at the end."""
        if len(items) == 1:
            self._write_immutable(*next(iter(items.items())))
        elif items:
            with ThreadPoolExecutor(IO_WORKERS) as pool:
                list(pool.map(lambda kv: self._write_immutable(*kv), items.items()))
        for parent in {os.path.dirname(self.full_path(key)) for key in items}:
            fsync_dir(parent)

    def write_bytes(self, key: str, data: bytes | memoryview) -> None:
        """Write a small file atomically: a staged file ``fsync``'ed, then renamed over ``key``
        (the folder synced at once, or by the enclosing :meth:`one_folder_sync`). The same steps
        as :meth:`ArtifactStore.write_bytes` without its digests, which nobody reads for a sidecar
        (their writer and its threads were ~0.3 ms of a small save)."""
        tmp_key = self.stage().tmp_key
        tmp = self.full_path(tmp_key)
        try:
            with durable_write(tmp) as f:
                view, written = memoryview(data).cast("B"), 0
                while written < view.nbytes:  # an unbuffered write may be short
                    written += f.write(view[written : written + WRITE_SLICE]) or 0
            self.move(tmp_key, key)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise _storage_error(exc, f"cannot write {self.display_path(key)}") from exc
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def write_new(self, key: str, data: bytes) -> None:
        """Create ``key`` (which must not exist): no temporary file, no rename, no ``fsync``.
        The file outlives a crash of the process (it is in the page cache before the index
        commits the row that names it); a power cut may lose it or cut it short, and then
        ``gc`` rewrites it from that row, as ``verify`` reports. The index row is what a save
        or a lifecycle change waits for; the event file is the store's copy of it."""
        path = self.full_path(key)
        try:
            with durable_write(path, mode=0o444, sync=False) as f:
                f.write(data)
        except OSError as exc:
            raise _storage_error(exc, f"cannot write {path}") from exc

    def _write_immutable(self, key: str, data: memoryview) -> None:
        final = self.full_path(key)
        tmp = self.full_path(f"{TMP_DIR}/{uuid.uuid4().hex}.blob")
        try:
            with durable_write(tmp, mode=0o444) as f:
                mv = memoryview(data).cast("B")
                written = 0
                while written < mv.nbytes:
                    written += f.write(mv[written : written + WRITE_SLICE]) or 0
            durable_replace(tmp, final, sync_dir=False)  # write_many syncs each directory once
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise _storage_error(exc, f"cannot write {final}") from exc

    # -- reading ---------------------------------------------------------------
    def open_read(self, key: str) -> BinaryIO:
        try:
            return open(self.full_path(key), "rb")
        except FileNotFoundError as exc:
            raise self.not_found(key) from exc

    @contextlib.contextmanager
    def stream(self, key: str) -> Iterator[Iterator[bytes]]:
        with self.open_read(key) as f:
            yield iter(lambda: f.read(CHUNK), b"")

    def read_verified(self, key: str, sha256: str, advance: Advance = no_advance) -> bytes:
        with self.open_read(key) as f:
            data = f.read()  # one allocation of the file's size
        check_digest(self.display_path(key), sha256, hashlib.sha256(data).hexdigest())
        advance(len(data))
        return data

    @contextlib.contextmanager
    def _source(self, key: str, expected: Expected) -> Iterator[tuple[ReadInto, int, Callable[[], bool]]]:
        """Read straight from the file into the private buffers; its size is the file's own."""
        with self.open_read(key) as f:
            yield f.readinto, os.fstat(f.fileno()).st_size, lambda: bool(f.read(1))  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def open_mapped(
        self, key: str, expected: Expected, checked: CheckedFiles | None = None
    ) -> Iterator[VerifiedArtifact | None]:
        with self.open_read(key) as f:
            out = check_mapped(f, expected, self.display_path(key), checked)
            try:
                yield out
            finally:
                if out is not None:
                    out.file.close()

    def map(self, key: str) -> Any | None:
        import mmap

        try:
            with open(self.full_path(key), "rb") as f:
                if os.fstat(f.fileno()).st_size == 0:
                    return b""
                return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError as exc:
            raise self.not_found(key) from exc

    # -- housekeeping ----------------------------------------------------------
    def exists(self, key: str) -> bool:
        return os.path.exists(self.full_path(key))

    def size(self, key: str) -> int:
        try:
            return os.path.getsize(self.full_path(key))
        except FileNotFoundError as exc:
            raise self.not_found(key) from exc

    def age_seconds(self, key: str, now: float) -> float | None:
        try:
            return now - os.stat(self.full_path(key)).st_mtime
        except FileNotFoundError:
            return None

    def delete(self, key: str, *, missing_ok: bool = False) -> None:
        try:
            os.unlink(self.full_path(key))
        except FileNotFoundError:
            if not missing_ok:
                raise self.not_found(key) from None

    def list_keys(self, prefix: str = "") -> list[str]:
        base = self.full_path(prefix).rstrip("/") if prefix else self.root
        out: list[str] = []
        for dirpath, _dirs, files in os.walk(base):
            rel = os.path.relpath(dirpath, self.root)
            for name in files:
                out.append(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
        return sorted(out)

    def touch(self, key: str) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.full_path(key))

    def remove_empty_dirs(self, key_prefix: str) -> None:
        path = self.full_path(key_prefix)
        for _ in range(2):
            try:
                os.rmdir(path)
            except OSError:
                return
            path = os.path.dirname(path)


@contextlib.contextmanager
def durable_write(path: str, *, mode: int = 0o666, sync: bool = True) -> Iterator[BinaryIO]:
    """A new file at ``path`` (which must not exist), ``fsync``'ed when the block exits cleanly
    (unless ``sync`` is false: then it outlives a crash of the process, not a power cut)."""
    # Opened read-write (new files get their access from this call, whatever ``mode`` says), so the
    # hashing threads can read the written bytes back through the same descriptor.
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:  # the folder is usually there: made only when missing (three system calls fewer per file)
        fd = os.open(path, flags, mode)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, flags, mode)
    with open(fd, "wb", buffering=0) as f:
        yield f
        if sync:
            os.fsync(f.fileno())


def durable_replace(src: str, dst: str, *, sync_dir: bool = True) -> None:
    """Rename ``src`` over ``dst`` (atomic), then make the rename durable."""
    parent = os.path.dirname(dst) or "."  # a bare file name lives in the working directory
    try:  # the folder is made only when missing (a missing ``src`` fails again below)
        os.replace(src, dst)
    except FileNotFoundError:
        os.makedirs(parent, exist_ok=True)
        os.replace(src, dst)
    if sync_dir:
        fsync_dir(parent)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Write a local file outside any store atomically: a hidden temporary file beside
    ``path`` is written, ``fsync``'ed and renamed over it; on error ``path`` is untouched."""
    final = os.fspath(path)
    tmp = os.path.join(os.path.dirname(final) or ".", f".{os.path.basename(final)}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with durable_write(tmp) as f:
            yield f
        durable_replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def fsync_dir(path: str) -> None:
    """Make a rename in ``path`` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _storage_error(exc: OSError, message: str) -> StorageError:
    return StorageError(exc.errno, f"{message}: {exc.strerror or exc}")
