"""The artifact store: bytes under keys, on any fsspec filesystem.

Writes are atomic. Bytes are *staged* first (hashed as they stream), then
committed under their final key: on a local disk by ``fsync`` + ``rename`` +
directory ``fsync``; on an object store by a server-side move, so no partial
object ever sits under a final key. A crash leaves at most a staged file under
``.tmp/``, which ``gc`` removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

from .errors import ArtifactNotFoundError, BackendUnavailableError, IntegrityError, StorageError

#: Staged files live here until committed; anything left is a crash leftover.
TMP_DIR = ".tmp"
CHUNK = 1 << 20

Advance = Callable[[int], None]


def _noop(_: int) -> None:
    return None


class HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts every byte on its way to ``raw``."""

    def __init__(self, raw: IO[bytes], advance: Advance = _noop) -> None:
        super().__init__()
        self._raw = raw
        self._sha = hashlib.sha256()
        self._advance = advance
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._sha.update(view)
        self._raw.write(view)
        n = view.nbytes
        self.size += n
        self._advance(n)
        return n

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def hash_stream(f: IO[bytes], advance: Advance = _noop) -> tuple[str, int]:
    """SHA-256 and length of everything left in ``f``."""
    sha = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    readinto = getattr(f, "readinto", None)
    while True:
        if readinto is not None:
            n = readinto(buf)
            if not n:
                break
            sha.update(view[:n])
        else:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            n = len(chunk)
            sha.update(chunk)
        size += n
        advance(n)
    return sha.hexdigest(), size


class StagedArtifact:
    """Bytes written under a temporary key, waiting to be committed or discarded."""

    def __init__(self, store: ArtifactStore, tmp_key: str) -> None:
        self.store = store
        self.tmp_key = tmp_key
        self.sha256 = ""
        self.size = 0
        self.committed = False

    @contextlib.contextmanager
    def open(self, advance: Advance = _noop) -> Iterator[HashingWriter]:
        """Open the staged file for writing; on success it is flushed and fsync'ed."""
        with self.store._open_write(self.tmp_key) as raw:
            writer = HashingWriter(raw, advance)
            yield writer
            self.sha256, self.size = writer.hexdigest(), writer.size

    def commit(self, key: str) -> None:
        """Move the staged bytes to ``key`` atomically, replacing what was there."""
        self.store._move(self.tmp_key, key)
        self.committed = True

    def discard(self) -> None:
        if not self.committed:
            self.store.delete(self.tmp_key, missing_ok=True)


class ArtifactStore:
    """Keys (``name/version/file``) mapped to files under one fsspec root URL."""

    def __init__(self, root: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> None:
        root_str = os.fspath(root)
        try:
            from fsspec.core import url_to_fs
        except ImportError as exc:  # pragma: no cover - fsspec is a base dependency
            raise BackendUnavailableError("fsspec is required: pip install fsspec") from exc
        try:
            self.fs, path = url_to_fs(root_str, **(storage_options or {}))
        except (ImportError, ValueError) as exc:
            scheme = root_str.split("://", 1)[0]
            raise BackendUnavailableError(
                f"cannot open models_dir {root_str!r}: {exc} (for s3:// install modelkeep[s3])"
                if scheme != root_str
                else f"cannot open models_dir {root_str!r}: {exc}"
            ) from exc
        protocol = self.fs.protocol
        protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
        self.is_local = "file" in protocols or "local" in protocols
        self.root = os.path.abspath(path) if self.is_local else path.rstrip("/")
        self.url = self.root if self.is_local else f"{protocols[0]}://{self.root}"

    # -- naming ---------------------------------------------------------------
    def full_path(self, key: str) -> str:
        """The filesystem path (local) or object path (remote) of ``key``."""
        return f"{self.root}/{key}"

    def display_path(self, key: str) -> str:
        """A path a person can paste: a local path, or a URL for object stores."""
        return self.full_path(key) if self.is_local else f"{self.url}/{key}"

    def local_path(self, key: str) -> Path | None:
        """The local file behind ``key``, or ``None`` for remote stores."""
        return Path(self.full_path(key)) if self.is_local else None

    # -- writing --------------------------------------------------------------
    def stage(self) -> StagedArtifact:
        """A new staged artifact under ``.tmp/``; commit or discard it."""
        return StagedArtifact(self, f"{TMP_DIR}/{uuid.uuid4().hex}.part")

    @contextlib.contextmanager
    def staged(self) -> Iterator[StagedArtifact]:
        """Context manager around :meth:`stage` that discards on any exit unless committed."""
        st = self.stage()
        try:
            yield st
        finally:
            st.discard()

    @contextlib.contextmanager
    def _open_write(self, key: str) -> Iterator[BinaryIO]:
        path = self.full_path(key)
        try:
            if self.is_local:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb", buffering=0) as f:
                    yield f
                    os.fsync(f.fileno())
            else:
                self.fs.makedirs(self.fs._parent(path), exist_ok=True)
                with self.fs.open(path, "wb") as f:
                    yield f
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise StorageError(exc.errno, f"cannot write {self.display_path(key)}: {exc.strerror or exc}") from exc

    def _move(self, src_key: str, dst_key: str) -> None:
        src, dst = self.full_path(src_key), self.full_path(dst_key)
        try:
            if self.is_local:
                parent = os.path.dirname(dst)
                os.makedirs(parent, exist_ok=True)
                os.replace(src, dst)
                _fsync_dir(parent)
            else:
                self.fs.mv(src, dst)
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot move artifact into {self.display_path(dst_key)}: {exc}") from exc

    def link(self, src_key: str, dst_key: str) -> bool:
        """Make ``dst_key`` share ``src_key``'s bytes (a hard link); ``False`` if not possible.

        Used for dedup: saving a model identical to a stored one adds no bytes.
        Object stores and filesystems without hard links return ``False``.
        """
        if not self.is_local:
            return False
        src, dst = self.full_path(src_key), self.full_path(dst_key)
        tmp = self.full_path(f"{TMP_DIR}/{uuid.uuid4().hex}.link")
        try:
            os.makedirs(os.path.dirname(tmp), exist_ok=True)
            os.link(src, tmp)
            parent = os.path.dirname(dst)
            os.makedirs(parent, exist_ok=True)
            os.replace(tmp, dst)
            _fsync_dir(parent)
            return True
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return False

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write a small file atomically (stage, fsync, rename)."""
        with self.staged() as st:
            with st.open() as w:
                w.write(data)
            st.commit(key)

    # -- reading --------------------------------------------------------------
    def open_read(self, key: str) -> BinaryIO:
        """Open ``key`` for reading; :class:`ArtifactNotFoundError` when missing."""
        path = self.full_path(key)
        try:
            if self.is_local:
                return open(path, "rb")
            return self.fs.open(path, "rb")
        except FileNotFoundError as exc:
            raise ArtifactNotFoundError(f"Model file not found: {self.display_path(key)}") from exc

    def read_bytes(self, key: str) -> bytes:
        with self.open_read(key) as f:
            return f.read()

    @contextlib.contextmanager
    def open_verified(self, key: str, sha256: str, advance: Advance = _noop) -> Iterator[BinaryIO]:
        """Yield ``key`` opened and positioned at 0, after checking its SHA-256.

        The digest is checked on the same open file that is then handed to the
        deserializer, so a file swapped in by rename after the check is not read.
        Remote objects are first spooled to a local temporary file.
        """
        with self.open_read(key) as f:
            if self.is_local:
                got, _ = hash_stream(f, advance)
                _check_digest(self.display_path(key), sha256, got)
                f.seek(0)
                yield f
                return
            import tempfile

            with tempfile.SpooledTemporaryFile(max_size=64 << 20) as spool:
                w = HashingWriter(spool, advance)
                while chunk := f.read(8 * CHUNK):
                    w.write(chunk)
                _check_digest(self.display_path(key), sha256, w.hexdigest())
                spool.seek(0)
                yield spool  # type: ignore[misc]

    def verify(self, key: str, sha256: str) -> None:
        """Raise :class:`IntegrityError` (or :class:`ArtifactNotFoundError`) unless ``key`` matches."""
        with self.open_read(key) as f:
            got, _ = hash_stream(f)
        _check_digest(self.display_path(key), sha256, got)

    # -- housekeeping ---------------------------------------------------------
    def exists(self, key: str) -> bool:
        path = self.full_path(key)
        return os.path.exists(path) if self.is_local else bool(self.fs.exists(path))

    def size(self, key: str) -> int:
        path = self.full_path(key)
        return os.path.getsize(path) if self.is_local else int(self.fs.size(path))

    def delete(self, key: str, *, missing_ok: bool = False) -> None:
        path = self.full_path(key)
        try:
            if self.is_local:
                os.unlink(path)
            else:
                self.fs.rm(path)
        except FileNotFoundError:
            if not missing_ok:
                raise ArtifactNotFoundError(f"Model file not found: {self.display_path(key)}") from None

    def remove_empty_dirs(self, key_prefix: str) -> None:
        """Remove ``key_prefix`` and its parent while they are empty (local stores only)."""
        if not self.is_local:
            return  # object stores have no directories to leave behind
        path = self.full_path(key_prefix)
        for _ in range(2):
            try:
                os.rmdir(path)
            except OSError:
                return
            path = os.path.dirname(path)

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every file key under ``prefix`` (recursively), relative to the root."""
        base = self.full_path(prefix).rstrip("/") if prefix else self.root
        if self.is_local:
            out: list[str] = []
            for dirpath, _dirs, files in os.walk(base):
                rel = os.path.relpath(dirpath, self.root)
                for name in files:
                    out.append(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
            return sorted(out)
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        strip = len(self.root) + 1
        return sorted(p[strip:] for p in found)


def _check_digest(where: str, expected: str, got: str) -> None:
    if got != expected:
        raise IntegrityError(
            f"integrity check failed for {where}: SHA-256 is {got[:16]}..., "
            f"recorded {expected[:16]}...; the artifact was changed after it was saved"
        )


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories
    finally:
        os.close(fd)
