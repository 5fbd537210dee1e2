"""Remote backends over fsspec: object stores (S3, GCS, Azure, memory) and other filesystems.

Object stores: staged bytes go up as a multipart upload in parts of
:data:`UPLOAD_PART_SIZE` while they are produced, so the progress bar tracks
the upload and memory stays at about one part. A failed write aborts its
multipart upload, which S3 never shows under any key. The commit is a
server-side ``CopyObject`` (no bytes pass through the client) plus a delete of
the staged object. Small files (sidecars) and blobs are one ``PUT``, which
object stores apply atomically. Reads stream in ranged ``GET``s of
:data:`READ_CHUNK`. Every failure of the remote service surfaces as
:class:`StorageError` (a missing key as :class:`ArtifactNotFoundError`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import logging
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

from .. import timeouts
from ..errors import ArtifactNotFoundError, ModelKeepError, StorageError
from .base import IO_WORKERS, ArtifactStore

logger = logging.getLogger("modelkeep")

#: Part size of multipart uploads to object stores (S3's minimum is 5 MiB).
#: Parts double every 1,000 parts, so S3's 10,000-part limit is never reached.
UPLOAD_PART_SIZE = 8 << 20
#: Size of each ranged GET when streaming an object from a remote store.
READ_CHUNK = 8 << 20
#: Keys of fsspec's ``info()`` that may hold a modification time.
_TIME_FIELDS = ("mtime", "LastModified", "last_modified", "updated", "created", "time")


class FsspecStore(ArtifactStore):
    """Any fsspec filesystem that is not local: commits are ``fs.mv``."""

    def __init__(
        self,
        fs: Any,
        root: str,
        protocol: str,
        *,
        connect_timeout: float = timeouts.CONNECT_TIMEOUT,
        read_timeout: float = timeouts.READ_TIMEOUT,
    ) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = f"{protocol}://{self.root}"
        self.part_size = UPLOAD_PART_SIZE
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        #: set when a remote call timed out or could not connect (cleanup then stops trying)
        self.unreachable = False
        if protocol in timeouts.S3_PROTOCOLS:
            timeouts.tune_s3_filesystem(fs)

    # -- writing ---------------------------------------------------------------
    def _prepare_write(self, path: str) -> None:
        self.fs.makedirs(self.fs._parent(path), exist_ok=True)

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        path = self.full_path(key)
        with self.translated("write", key):
            self._prepare_write(path)
            f = self.fs.open(path, "wb", block_size=self.part_size)
        try:
            yield _RemoteWriter(f, self, key)  # type: ignore[misc]
        except BaseException:
            _abort_upload(f)  # never complete a partial upload
            raise
        try:
            with self.translated("write", key):
                f.close()  # uploads the last part and completes the object
        except BaseException:
            _abort_upload(f)
            raise

    def move(self, src_key: str, dst_key: str) -> None:
        with self.translated("commit", dst_key):
            self.fs.mv(self.full_path(src_key), self.full_path(dst_key))

    # -- reading ---------------------------------------------------------------
    def open_read(self, key: str) -> BinaryIO:
        with self.translated("read", key):
            self.fs.invalidate_cache()  # another process may have written it since we listed
            f: BinaryIO = self.fs.open(self.full_path(key), "rb")
            return f

    @contextlib.contextmanager
    def stream(self, key: str) -> Iterator[Iterator[bytes]]:
        """Ranged GETs of :data:`READ_CHUNK` each, with no read-ahead cache."""
        with self.translated("read", key):
            self.fs.invalidate_cache()
            f = self.fs.open(self.full_path(key), "rb", block_size=READ_CHUNK, cache_type="none")

        def chunks() -> Iterator[bytes]:
            while True:
                with self.translated("read", key):
                    chunk = f.read(READ_CHUNK)
                if not chunk:
                    return
                yield chunk

        with f:
            yield chunks()

    # -- housekeeping ----------------------------------------------------------
    def exists(self, key: str) -> bool:
        with self.translated("check", key):
            self.fs.invalidate_cache()
            return bool(self.fs.exists(self.full_path(key)))

    def size(self, key: str) -> int:
        with self.translated("check", key):
            self.fs.invalidate_cache()
            return int(self.fs.size(self.full_path(key)))

    def age_seconds(self, key: str, now: float) -> float | None:
        try:
            with self.translated("check", key):
                info = self.fs.info(self.full_path(key))
        except ArtifactNotFoundError:
            return None
        for name in _TIME_FIELDS:
            value = info.get(name)
            if isinstance(value, (int, float)):
                return now - float(value)
            if isinstance(value, _dt.datetime):
                stamp = value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
                return now - stamp.timestamp()
            if isinstance(value, str):
                try:
                    return now - _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
                except ValueError:
                    continue
        return None

    def delete(self, key: str, *, missing_ok: bool = False) -> None:
        with self.translated("delete", key):
            if not missing_ok and not self.exists(key):
                raise self.not_found(key)
            try:
                self.fs.rm_file(self.full_path(key))  # S3 deletes of absent keys succeed
            except FileNotFoundError:
                if not missing_ok:
                    raise

    def list_keys(self, prefix: str = "") -> list[str]:
        base = self.full_path(prefix).rstrip("/") if prefix else self.root
        try:
            with self.translated("list", prefix):
                self.fs.invalidate_cache()
                found = self.fs.find(base)
        except ArtifactNotFoundError:
            return []
        strip = len(self.root) + 1
        return sorted(p[strip:] for p in found)

    @contextlib.contextmanager
    def translated(self, action: str, key: str) -> Iterator[None]:
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


class ObjectStore(FsspecStore):
    """S3, GCS, Azure and ``memory://``: one upload is all-or-nothing, copies are server-side."""

    def _prepare_write(self, path: str) -> None:
        return None  # object stores have no directories

    def move(self, src_key: str, dst_key: str) -> None:
        src = self.full_path(src_key)
        with self.translated("commit", dst_key):
            self.fs.cp_file(src, self.full_path(dst_key))  # server-side copy; the object appears whole
        try:
            self.fs.rm_file(src)
        except Exception as exc:  # the artifact is in place; gc removes the leftover
            logger.debug("could not remove staged file %s: %s", self.display_path(src_key), exc)

    def write_bytes(self, key: str, data: bytes | memoryview) -> None:
        """Small files are one ``PUT`` (all-or-nothing); larger ones a staged multipart upload."""
        if memoryview(data).nbytes >= self.part_size:
            super().write_bytes(key, data)
            return
        self._put(key, data)

    def write_many(self, items: Mapping[str, memoryview]) -> None:
        """Each file is one ``PUT``, in parallel: an object never appears half-written."""
        if len(items) <= 1:
            for key, data in items.items():
                self._put(key, data)
            return
        with ThreadPoolExecutor(IO_WORKERS) as pool:
            list(pool.map(lambda kv: self._put(*kv), items.items()))

    def _put(self, key: str, data: bytes | memoryview) -> None:
        with self.translated("write", key):
            self.fs.pipe_file(self.full_path(key), bytes(data))


class _RemoteWriter(io.RawIOBase):
    """Writes to an fsspec upload file, with errors as :class:`StorageError` and bounded parts.

    s3fs uploads its whole buffer as one part each time the buffer reaches
    ``blocksize``, so large writes are fed in ``part_size`` slices: parts stay
    near ``part_size`` and memory near one part. Doubling the part size every
    1,000 parts keeps any artifact under S3's 10,000-part limit.
    """

    def __init__(self, f: Any, store: FsspecStore, key: str) -> None:
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
            with self._store.translated("upload", self._key):
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
