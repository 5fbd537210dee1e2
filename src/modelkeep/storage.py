"""The artifact store: bytes under keys, on any fsspec filesystem.

Writes are atomic. Bytes are *staged* first (hashed as they stream), then
committed under their final key: on a local disk by ``fsync`` + ``rename`` +
directory ``fsync``; on an object store by a server-side copy, so no partial
object ever sits under a final key. A crash leaves at most a staged file under
``.tmp/``, which ``gc`` removes.

Object stores (S3 through s3fs, GCS, Azure): staged bytes go up as a multipart
upload in parts of :data:`UPLOAD_PART_SIZE` while they are produced, so the
progress bar tracks the upload and memory stays at about one part. A failed
write aborts its multipart upload, which S3 never shows under any key. The
commit is a server-side ``CopyObject`` (no bytes pass through the client) plus
a delete of the staged object. Small files (sidecars) are one ``PUT``, which
object stores apply atomically. Reads stream in ranged ``GET``s of
:data:`READ_CHUNK` into a spool file while being hashed. Every failure of the
remote service surfaces as :class:`StorageError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, BinaryIO

from . import timeouts
from .errors import ArtifactNotFoundError, BackendUnavailableError, IntegrityError, ModelKeepError, StorageError

logger = logging.getLogger("modelkeep")

#: Staged files live here until committed; anything left is a crash leftover.
TMP_DIR = ".tmp"
CHUNK = 1 << 20
#: Part size of multipart uploads to object stores (S3's minimum is 5 MiB).
#: Parts double every 1,000 parts, so S3's 10,000-part limit is never reached.
UPLOAD_PART_SIZE = 8 << 20
#: Size of each ranged GET when streaming an object from a remote store.
READ_CHUNK = 8 << 20
#: Remote objects being verified are spooled in memory up to this size, then on disk.
SPOOL_MAX_BYTES = 64 << 20
#: Filesystems where one upload is all-or-nothing and a copy happens server-side.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"})

Advance = Callable[[int], None]


def _noop(_: int) -> None:
    return None


class HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts every byte on its way to ``raw``."""

    #: Immutable chunks at least this large are hashed on a helper thread while
    #: the next one is written, so hashing overlaps the disk write.
    OVERLAP_MIN = 64 << 10
    #: At most this many chunks wait for the hasher (bounds the extra memory).
    MAX_PENDING = 4

    def __init__(self, raw: IO[bytes], advance: Advance = _noop) -> None:
        super().__init__()
        self._raw = raw
        self._sha = hashlib.sha256()
        self._advance = advance
        self._hasher: ThreadPoolExecutor | None = None
        self._pending: deque[Future[None]] = deque()
        self.size = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        # joblib asks for the position to align arrays for memory-mapping.
        return self.size

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = view.nbytes
        if isinstance(data, bytes) and n >= self.OVERLAP_MIN:
            if self._hasher is None:
                self._hasher = ThreadPoolExecutor(1, thread_name_prefix="modelkeep-sha256")
            while len(self._pending) >= self.MAX_PENDING:
                self._pending.popleft().result()
            self._pending.append(self._hasher.submit(self._sha.update, view))
        else:
            # Mutable buffers may be reused by the caller once write() returns: hash now,
            # after whatever is queued so the digest keeps the byte order.
            self._drain()
            self._sha.update(view)
        written = 0
        while written < n:  # raw (unbuffered) writes may be partial
            written += self._raw.write(view[written:]) or 0
        self.size += n
        self._advance(n)
        return n

    def _drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def hexdigest(self) -> str:
        self._drain()
        return self._sha.hexdigest()

    def close(self) -> None:
        self._drain()
        if self._hasher is not None:
            self._hasher.shutdown()
            self._hasher = None
        super().close()


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
            try:
                yield writer
                self.sha256, self.size = writer.hexdigest(), writer.size
            finally:
                writer.close()

    def commit(self, key: str) -> None:
        """Move the staged bytes to ``key`` atomically, replacing what was there."""
        self.store._move(self.tmp_key, key)
        self.committed = True

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


class ArtifactStore:
    """Keys (``name/version/file``) mapped to files under one fsspec root URL."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        storage_options: dict[str, Any] | None = None,
        *,
        connect_timeout: float = timeouts.CONNECT_TIMEOUT,
        read_timeout: float = timeouts.READ_TIMEOUT,
    ) -> None:
        root_str = os.fspath(root)
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        #: set when a remote call timed out or could not connect (cleanup then stops trying)
        self.unreachable = False
        storage_options = timeouts.s3_storage_options(root_str, storage_options, connect_timeout, read_timeout)
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
        if set(protocols) & set(timeouts.S3_PROTOCOLS):
            timeouts.tune_s3_filesystem(self.fs)
        self.is_local = "file" in protocols or "local" in protocols
        #: uploads are atomic and copies server-side (S3, GCS, Azure, memory)
        self.is_object_store = not self.is_local and bool(OBJECT_STORES.intersection(protocols))
        self.part_size = UPLOAD_PART_SIZE
        self.root = os.path.abspath(path) if self.is_local else path.rstrip("/")
        self.url = self.root if self.is_local else f"{protocols[0]}://{self.root}"

    # -- naming ---------------------------------------------------------------
    def full_path(self, key: str) -> str:
        """The filesystem path (local) or object path (remote) of ``key``."""
        return f"{self.root}/{key}"

    def display_path(self, key: str) -> str:
        """A path a person can paste: a local path, or a URL for object stores."""
        return self.full_path(key) if self.is_local else f"{self.url}/{key}"

    def not_found(self, key: str) -> ArtifactNotFoundError:
        """The error for a missing ``key``, in the seed's wording."""
        return ArtifactNotFoundError(f"Model file not found: {self.display_path(key)}")

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
                with self._remote("write", key):
                    if not self.is_object_store:
                        self.fs.makedirs(self.fs._parent(path), exist_ok=True)
                    f = self.fs.open(path, "wb", block_size=self.part_size)
                try:
                    yield _RemoteWriter(f, self, key)  # type: ignore[misc]
                except BaseException:
                    _abort_upload(f)  # never complete a partial upload
                    raise
                try:
                    with self._remote("write", key):
                        f.close()  # uploads the last part and completes the object
                except BaseException:
                    _abort_upload(f)
                    raise
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
            elif self.is_object_store:
                with self._remote("commit", dst_key):
                    self.fs.cp_file(src, dst)  # server-side copy; the object appears whole
                try:
                    self.fs.rm_file(src)
                except Exception as exc:  # the artifact is in place; gc removes the leftover
                    logger.warning("could not remove staged file %s: %s", self.display_path(src_key), exc)
            else:
                with self._remote("commit", dst_key):
                    self.fs.mv(src, dst)
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
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
        """Write a small file atomically (stage, fsync, rename; one ``PUT`` on object stores)."""
        if self.is_object_store and len(data) < self.part_size:
            with self._remote("write", key):
                self.fs.pipe_file(self.full_path(key), bytes(data))  # a single PUT is all-or-nothing
            return
        with self.staged() as st:
            with st.open() as w:
                w.write(data)
            st.commit(key)

    # -- reading --------------------------------------------------------------
    def open_read(self, key: str) -> BinaryIO:
        """Open ``key`` for reading; :class:`ArtifactNotFoundError` when missing."""
        path = self.full_path(key)
        if not self.is_local:
            with self._remote("read", key):
                self.fs.invalidate_cache()  # another process may have written it since we listed
                return self.fs.open(path, "rb")
        try:
            return open(path, "rb")
        except FileNotFoundError as exc:
            raise self.not_found(key) from exc

    @contextlib.contextmanager
    def stream(self, key: str) -> Iterator[Iterator[bytes]]:
        """Iterate over ``key``'s bytes in chunks without holding the whole file.

        Local files are read in :data:`CHUNK` pieces; remote objects arrive as
        ranged GETs of :data:`READ_CHUNK` each, with no read-ahead cache.
        """
        if self.is_local:
            with self.open_read(key) as f:
                yield iter(lambda: f.read(CHUNK), b"")
            return
        with self._remote("read", key):
            self.fs.invalidate_cache()
            f = self.fs.open(self.full_path(key), "rb", block_size=READ_CHUNK, cache_type="none")

        def chunks() -> Iterator[bytes]:
            while True:
                with self._remote("read", key):
                    chunk = f.read(READ_CHUNK)
                if not chunk:
                    return
                yield chunk

        with f:
            yield chunks()

    def read_bytes(self, key: str) -> bytes:
        with self.open_read(key) as f:
            return f.read()

    @contextlib.contextmanager
    def open_verified(self, key: str, sha256: str, advance: Advance = _noop) -> Iterator[BinaryIO]:
        """Yield ``key`` opened and positioned at 0, after checking its SHA-256.

        The digest is checked on the same open file that is then handed to the
        deserializer, so a file swapped in by rename after the check is not read.
        Remote objects are streamed (ranged GETs) into a local spool file while
        hashed: memory holds at most :data:`SPOOL_MAX_BYTES` plus one chunk;
        larger objects spill to a temporary file on disk.
        """
        if self.is_local:
            with self.open_read(key) as f:
                got, _ = hash_stream(f, advance)
                check_digest(self.display_path(key), sha256, got)
                f.seek(0)
                yield f
            return
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_BYTES) as spool:
            w = HashingWriter(spool, advance)
            with self.stream(key) as chunks:
                for chunk in chunks:
                    w.write(chunk)
            check_digest(self.display_path(key), sha256, w.hexdigest())
            spool.seek(0)
            yield spool  # type: ignore[misc]

    def verify(self, key: str, sha256: str) -> None:
        """Raise :class:`IntegrityError` (or :class:`ArtifactNotFoundError`) unless ``key`` matches."""
        sha = hashlib.sha256()
        with self.stream(key) as chunks:
            for chunk in chunks:
                sha.update(chunk)
        check_digest(self.display_path(key), sha256, sha.hexdigest())

    # -- housekeeping ---------------------------------------------------------
    def exists(self, key: str) -> bool:
        """Whether a file is stored under ``key``."""
        path = self.full_path(key)
        if self.is_local:
            return os.path.exists(path)
        with self._remote("check", key):
            self.fs.invalidate_cache()
            return bool(self.fs.exists(path))

    def size(self, key: str) -> int:
        """Size in bytes of ``key``; :class:`ArtifactNotFoundError` when missing."""
        path = self.full_path(key)
        if self.is_local:
            try:
                return os.path.getsize(path)
            except FileNotFoundError as exc:
                raise self.not_found(key) from exc
        with self._remote("check", key):
            self.fs.invalidate_cache()
            return int(self.fs.size(path))

    def delete(self, key: str, *, missing_ok: bool = False) -> None:
        """Remove ``key``; :class:`ArtifactNotFoundError` when missing unless ``missing_ok``."""
        path = self.full_path(key)
        if self.is_local:
            try:
                os.unlink(path)
            except FileNotFoundError:
                if not missing_ok:
                    raise self.not_found(key) from None
            return
        with self._remote("delete", key):
            if not missing_ok and not self.exists(key):
                raise self.not_found(key)
            try:
                self.fs.rm_file(path)  # S3 deletes of absent keys succeed
            except FileNotFoundError:
                if not missing_ok:
                    raise

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
            with self._remote("list", prefix):
                self.fs.invalidate_cache()
                found = self.fs.find(base)
        except ArtifactNotFoundError:
            return []
        strip = len(self.root) + 1
        return sorted(p[strip:] for p in found)

    @contextlib.contextmanager
    def _remote(self, action: str, key: str) -> Iterator[None]:
        """Turn a remote service's failures into :class:`StorageError` (missing keys into
        :class:`ArtifactNotFoundError`); s3fs lets botocore's connection errors through raw."""
        try:
            yield
        except ModelKeepError:
            raise
        except FileNotFoundError as exc:
            if _names_missing_bucket(exc):
                bucket = self.root.split("/", 1)[0]
                raise StorageError(
                    f"cannot {action} {self.display_path(key)}: the bucket {bucket!r} does not exist "
                    "(check models_dir, or create the bucket)"
                ) from exc
            raise self.not_found(key) from exc
        except Exception as exc:
            errno = exc.errno if isinstance(exc, OSError) else None
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            message = f"cannot {action} {self.display_path(key)}: {reason}{self._remote_hint(exc)}"
            raise (StorageError(message) if errno is None else StorageError(errno, message)) from exc

    def _remote_hint(self, exc: BaseException) -> str:
        """What to add to a network failure's message: the timeouts in force, or that it was retried."""
        names = {cls.__name__ for cls in type(exc).__mro__}
        if names & {"ConnectTimeoutError", "ReadTimeoutError", "TimeoutError", "FSTimeoutError"}:
            self.unreachable = True
            return " " + timeouts.describe(self.connect_timeout, self.read_timeout)
        if "EndpointConnectionError" in names:
            self.unreachable = True
            return f" (gave up after {timeouts.S3_ATTEMPTS} attempts; check the endpoint URL in storage_options)"
        return ""


class _RemoteWriter(io.RawIOBase):
    """Writes to an fsspec upload file, with errors as :class:`StorageError` and bounded parts.

    s3fs uploads its whole buffer as one part each time the buffer reaches
    ``blocksize``, so large writes are fed in ``part_size`` slices: parts stay
    near ``part_size`` and memory near one part. Doubling the part size every
    1,000 parts keeps any artifact under S3's 10,000-part limit.
    """

    def __init__(self, f: Any, store: ArtifactStore, key: str) -> None:
        super().__init__()
        self._f = f
        self._store = store
        self._key = key

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        step = self._store.part_size
        for start in range(0, view.nbytes, step):  # one big write must not become one huge part
            with self._store._remote("upload", self._key):
                self._f.write(view[start : start + step])
            parts = getattr(self._f, "parts", None)
            if parts:
                step = self._store.part_size << (len(parts) // 1000)
                if getattr(self._f, "blocksize", step) < step:
                    self._f.blocksize = step
        return view.nbytes


def _abort_upload(f: Any) -> None:
    """Throw away an unfinished upload: abort the multipart upload, never complete it.

    fsspec's ``__exit__`` and ``__del__`` would *close* the file, which uploads
    the partial buffer and completes the object, so mark it closed first.
    """
    try:
        discard = getattr(f, "discard", None)
        if callable(discard):
            discard()
    except Exception as exc:  # the server may be the reason we are here
        logger.debug("could not abort an upload: %s", exc)
    finally:
        with contextlib.suppress(AttributeError):  # io-based files (memory://) have nothing to complete
            f.closed = True


def _names_missing_bucket(exc: BaseException) -> bool:
    text = f"{exc} {exc.__cause__ or ''}"
    return "NoSuchBucket" in text or "bucket does not exist" in text.lower()


def check_digest(where: str, expected: str, got: str) -> None:
    """Raise :class:`IntegrityError` naming ``where`` unless ``got`` is the recorded digest."""
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
