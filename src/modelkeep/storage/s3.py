"""S3 transfers with several parts in flight, on s3fs's own event loop and connections.

s3fs runs every request as a coroutine on one event-loop thread; its synchronous file API
waits for each part in turn. :class:`S3Store` submits the coroutines itself
(``asyncio.run_coroutine_threadsafe``), so up to ``max_concurrency`` parts are on the wire
at once, with the credentials, endpoint, timeouts and retries s3fs was given.

* Uploads (:class:`ParallelUpload`): a multipart upload whose parts go up while the caller
  writes; memory stays near ``(max_concurrency + 1) x part_size`` (one longer part, an
  immutable ``bytes`` write sent uncopied, may be alone in flight). Each part goes to botocore
  as a file object, which aiohttp sends in slices, signed ``UNSIGNED-PAYLOAD`` (no second
  SHA-256 of it, see :func:`_unsigned_part`). The SHA-256 and BLAKE3 digests are still
  computed by :class:`~.hashing.HashingWriter` from the same stream, in one pass. A file
  smaller than one part is one ``PUT``. A failure aborts the upload.
* Downloads (:meth:`S3Store.stream`): ranged ``GET``\\ s, ``max_concurrency`` in flight,
  yielded in order; a load checks the digests of what it read before anything is parsed
  (see :mod:`.verified`), so bytes of a half-replaced object are refused, never parsed.
* Saves upload straight to the version's final key (:meth:`S3Store.begin_direct`) under its
  claim: the upload completes after the claim's check, with ``If-None-Match: *``; no copy.
* Commits of staged bytes (:meth:`S3Store.move`, a resumable save): a server-side ``CopyObject``
  up to :data:`COPY_LIMIT` (S3's 5 GiB single-copy limit), above it a multipart
  ``UploadPartCopy`` with the parts in parallel, aborted on failure. No byte passes through the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import io
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, BinaryIO

from ..errors import StorageError
from .base import MIN_PART_SIZE, RESUMABLE_PREFIX, staged_at
from .remote import ObjectStore
from .verified import ChunkReader, ReadInto

logger = logging.getLogger("modelkeep")

#: S3 refuses a single ``CopyObject`` of a larger object (then parts are copied).
COPY_LIMIT = 5 << 30
#: Part size of a multipart copy (S3 allows 5 MiB to 5 GiB per part).
COPY_PART_SIZE = 512 << 20


def default_max_concurrency() -> int:
    """Parts in flight when nothing says otherwise: waiting on the network costs no CPU, so a
    few per core, at least 16, at most 32. On loopback to moto, 8 in flight moved 0.68x and 16
    moved 0.98x of boto3's ``upload_file`` (10 threads) on 2 cores (bench/README.md)."""
    return max(16, min(32, 4 * (os.cpu_count() or 1)))


class S3Store(ObjectStore):
    """An S3 bucket (s3fs) with parallel multipart uploads, ranged downloads and copies."""

    resumable_uploads = True
    direct_uploads = True

    def __init__(self, fs: Any, root: str, protocol: str, *, max_concurrency: int | None = None, **kwargs: Any) -> None:
        super().__init__(fs, root, protocol, **kwargs)
        from .remote import READ_CHUNK  # read now, not at import: tests lower it

        #: Requests in flight for one transfer; memory is about this many parts.
        self.max_concurrency = max(1, max_concurrency or default_max_concurrency())
        #: Size of each ranged GET.
        self.read_chunk = READ_CHUNK
        self._upload_checksum: tuple[str | None] | None = None

    @property
    def upload_checksum(self) -> str | None:
        """The checksum algorithm a multipart upload declares when it starts (``"CRC32"``), as
        boto3's ``upload_file`` does: unless the client is configured with
        ``request_checksum_calculation="when_required"`` (stores that reject checksums), botocore
        sends a CRC32 with every part anyway; declaring it makes the store keep a composite
        checksum of the parts, instead of computing one of its own over the whole object when
        the upload completes (moto copies the object twice more to do that)."""
        if self._upload_checksum is None:
            self.prepare_upload()
        return self._upload_checksum[0]  # type: ignore[index]

    def prepare_upload(self) -> None:
        """Ready s3fs's current client for a :class:`ParallelUpload` (its parts are signed without
        a second SHA-256, see :func:`_unsigned_part`) and read :attr:`upload_checksum` again."""
        setting = self.submit(_prepare_client(self.fs, self.bucket_key("x")[0])).result()
        self._upload_checksum = ("CRC32" if setting == "when_supported" else None,)

    # -- running s3fs's coroutines ---------------------------------------------------
    def submit(self, coro: Coroutine[Any, Any, Any]) -> Future[Any]:
        """Start ``coro`` on s3fs's event loop; its result comes back as a future."""
        return asyncio.run_coroutine_threadsafe(coro, self.fs.loop)

    def call(self, method: str, **kwargs: Any) -> Future[Any]:
        """One S3 API call (``create_multipart_upload``...) with s3fs's retries and errors."""
        return self.submit(self.fs._call_s3(method, **kwargs))

    def bucket_key(self, key: str) -> tuple[str, str]:
        bucket, path, _ = self.fs.split_path(self.full_path(key))
        return bucket, path

    # -- writing -----------------------------------------------------------------------
    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        upload = ParallelUpload(self, key, resumable=key.startswith(RESUMABLE_PREFIX))
        try:
            yield upload  # type: ignore[misc]
            with self.translated("write", key):
                upload.complete()
        except BaseException:
            upload.abort()  # never complete a partial upload
            raise

    def begin_direct(self, key: str) -> ParallelUpload:
        """A multipart upload straight to ``key``: parts go up while the caller writes, invisible
        until :meth:`ParallelUpload.complete`, which sends ``If-None-Match: *`` so that it never
        replaces an object already under ``key``."""
        return ParallelUpload(self, key, exclusive=True)

    def finish(self, method: str, key: str, *, exclusive: bool, **kwargs: Any) -> Any:
        """``method`` (``put_object``, ``complete_multipart_upload``) on ``key``, the call that makes
        an object appear; ``exclusive``: only where none is yet (``If-None-Match: *``, for an upload
        straight to a version's key under its claim)."""
        bucket, path = self.bucket_key(key)
        if not exclusive:
            return self.call(method, Bucket=bucket, Key=path, **kwargs).result()
        try:
            return self.call(method, Bucket=bucket, Key=path, IfNoneMatch="*", **kwargs).result()
        except Exception as exc:
            text = f"{exc} {exc.__cause__ or ''}"
            if "PreconditionFailed" in text or "412" in text:
                raise StorageError(
                    f"cannot write {self.display_path(key)}: an object appeared under that key while "
                    "this save was uploading (was its claim taken over?); nothing was registered"
                ) from exc
            if "NotImplemented" not in text:
                raise
        # a store without conditional writes: the claim alone keeps other writers away, as before
        logger.debug("%s has no conditional writes; completing %s without one", self.url, key)
        return self.call(method, Bucket=bucket, Key=path, **kwargs).result()

    def move(self, src_key: str, dst_key: str) -> None:
        with self.translated("commit", dst_key):
            size = self.size(src_key)
            if size <= COPY_LIMIT:
                bucket, src = self.bucket_key(src_key)
                _, dst = self.bucket_key(dst_key)
                self.call("copy_object", Bucket=bucket, Key=dst, CopySource={"Bucket": bucket, "Key": src}).result()
            else:
                self._copy_parts(src_key, dst_key, size)
        try:
            self.delete(src_key, missing_ok=True)
        except Exception as exc:  # the artifact is in place; gc removes the leftover
            logger.debug("could not remove staged file %s: %s", self.display_path(src_key), exc)

    def _copy_parts(self, src_key: str, dst_key: str, size: int) -> None:
        """A multipart ``UploadPartCopy`` of an object over :data:`COPY_LIMIT`, parts in
        parallel; the destination appears whole at the final call, or not at all."""
        bucket, src = self.bucket_key(src_key)
        _, dst = self.bucket_key(dst_key)
        part = max(COPY_PART_SIZE, -(-size // 10_000))
        upload_id = self.call("create_multipart_upload", Bucket=bucket, Key=dst).result()["UploadId"]
        try:
            ranges = [(start, min(size, start + part) - 1) for start in range(0, size, part)]
            futures = [
                self.call(
                    "upload_part_copy",
                    Bucket=bucket,
                    Key=dst,
                    UploadId=upload_id,
                    PartNumber=n,
                    CopySource={"Bucket": bucket, "Key": src},
                    CopySourceRange=f"bytes={first}-{last}",
                )
                for n, (first, last) in enumerate(ranges, 1)
            ]
            parts = [{"PartNumber": n, "ETag": f.result()["CopyPartResult"]["ETag"]} for n, f in enumerate(futures, 1)]
            self.call(
                "complete_multipart_upload",
                Bucket=bucket,
                Key=dst,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            ).result()
        except BaseException:
            _quietly(lambda: self.call("abort_multipart_upload", Bucket=bucket, Key=dst, UploadId=upload_id).result())
            raise

    # -- reading -----------------------------------------------------------------------
    @contextlib.contextmanager
    def stream(self, key: str) -> Iterator[Iterator[bytes]]:
        """The object's bytes in order, fetched as ranged GETs with several in flight."""
        with self.translated("read", key):
            size = self.size(key)
        with self.stream_range(key, size) as chunks:
            yield chunks

    @contextlib.contextmanager
    def stream_range(self, key: str, size: int, *, probe: bool = False) -> Iterator[Iterator[bytes]]:
        """``key``'s first ``size`` bytes in order, :attr:`max_concurrency` ranged GETs in
        flight (memory: that many chunks). With ``probe`` the last GET asks for one byte
        more, which then follows the ``size`` bytes if the object is longer."""
        bucket, path = self.bucket_key(key)
        end = size + 1 if probe else size
        ranges = [(start, min(end, start + self.read_chunk)) for start in range(0, end, self.read_chunk)]
        if probe and len(ranges) > 1 and ranges[-1][1] - ranges[-1][0] == 1:
            ranges[-2:] = [(ranges[-2][0], end)]  # never a GET of the probe byte alone
        pending: deque[Future[bytes]] = deque()

        def get(first: int, stop: int) -> Future[bytes]:
            whole = size == 0  # an empty object has no byte to ask a range of
            return self.submit(_get_range(self.fs, bucket, path, first, None if whole else stop))

        def chunks() -> Iterator[bytes]:
            todo = iter(ranges)
            for first, stop in todo:
                pending.append(get(first, stop))
                if len(pending) >= self.max_concurrency:
                    break
            while pending:
                with self.translated("read", key):
                    chunk = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(get(*nxt))
                yield chunk

        try:
            yield chunks()
        finally:
            for future in pending:
                future.cancel()
            for future in pending:
                with contextlib.suppress(BaseException):
                    future.result()

    @contextlib.contextmanager
    def _source(self, key: str, expected: Any) -> Iterator[tuple[ReadInto, int, Callable[[], bool]]]:
        if expected.size is None:
            with super()._source(key, expected) as source:
                yield source
            return
        size = expected.size  # no HEAD: the record says how long it is; the probe byte says if it grew
        with self.stream_range(key, size, probe=True) as chunks:
            reader = ChunkReader(chunks)
            yield reader.readinto, size, lambda: bool(reader.readinto(memoryview(bytearray(1))))

    # -- housekeeping ----------------------------------------------------------------------
    def pending_uploads(self) -> list[dict[str, Any]]:
        """Multipart uploads started under this store's root and neither completed nor aborted:
        ``{"key", "upload_id", "initiated" (seconds since the epoch), "size" (bytes of parts
        so far)}``. ``initiated`` is the later of the store's date and the time in a staged key's
        name (some S3 implementations report a fixed date), so an upload never looks older than it is."""
        bucket, prefix = self.bucket_key("x")
        prefix = prefix[:-1]
        out: list[dict[str, Any]] = []
        with self.translated("list", ".uploads"):
            marker: dict[str, str] = {}
            while True:
                page = self.call("list_multipart_uploads", Bucket=bucket, Prefix=prefix, **marker).result()
                for upload in page.get("Uploads", []):
                    out.append(
                        {
                            "key": upload["Key"][len(prefix) :],
                            "upload_id": upload["UploadId"],
                            "initiated": _initiated(upload),
                            "size": self._parts_size(bucket, upload["Key"], upload["UploadId"]),
                        }
                    )
                if not page.get("IsTruncated"):
                    return out
                marker = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}

    def _parts_size(self, bucket: str, key: str, upload_id: str) -> int:
        total, marker = 0, 0
        while True:
            page = self.call("list_parts", Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker).result()
            total += sum(int(p.get("Size", 0)) for p in page.get("Parts", []))
            if not page.get("IsTruncated"):
                return total
            marker = int(page["NextPartNumberMarker"])

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort one multipart upload (from :meth:`pending_uploads`); its parts are freed."""
        bucket, path = self.bucket_key(key)
        with self.translated("abort the upload of", key):
            self.call("abort_multipart_upload", Bucket=bucket, Key=path, UploadId=upload_id).result()


def _initiated(upload: dict[str, Any]) -> float:
    when: Any = upload.get("Initiated")
    stamps: list[float] = [when.timestamp()] if hasattr(when, "timestamp") else []
    named = staged_at(str(upload.get("Key", "")))
    if named is not None:
        stamps.append(named)
    return max(stamps) if stamps else time.time()


async def _prepare_client(fs: Any, bucket: str) -> str | None:
    """The client's ``request_checksum_calculation`` (``"when_supported"`` by default); and
    :func:`_unsigned_part` hooked into it, once (``unique_id``), so that parts are not hashed twice."""
    await fs.set_session()
    s3 = await fs.get_s3(bucket)
    s3.meta.events.register("before-sign.s3.UploadPart", _unsigned_part, unique_id=_UNSIGNED_PART_HOOK)
    setting = getattr(s3.meta.config, "request_checksum_calculation", None)
    return None if setting is None else str(setting)


_UNSIGNED_PART_HOOK = "modelkeep-unsigned-part"


class _PartBody(io.BytesIO):
    """The body of a part of a :class:`ParallelUpload`: artifact bytes whose SHA-256 and BLAKE3
    the save records and every load checks (see :func:`_unsigned_part`).

    Made from a whole ``bytes`` object, it shares it, as ``BytesIO`` does, and :meth:`getbuffer`
    is a read-only view of it: ``BytesIO.getbuffer`` would first copy the bytes into a buffer
    of its own (aiohttp calls it for the body's length; nothing writes to a part)."""

    def __init__(self, whole: bytes | None = None) -> None:
        super().__init__(b"" if whole is None else whole)
        self._whole = whole

    def getbuffer(self) -> memoryview:
        if self._whole is not None:
            return memoryview(self._whole)
        return super().getbuffer()


def _unsigned_part(request: Any, **_: Any) -> None:
    """Sign a part of a :class:`ParallelUpload` without a SHA-256 of its payload
    (``UNSIGNED-PAYLOAD``), as botocore already does for every part over HTTPS.

    Over plain HTTP botocore reads each part once more to SHA-256 it for the signature (about a
    quarter of a save's client CPU, on top of the save's own SHA-256 of the whole artifact). The
    part still carries its CRC32 (a signed header) against accidental damage, and a part altered
    on the way cannot pass a load: the artifact's SHA-256 and BLAKE3, recorded by the save, are
    checked before anything is parsed. Only parts of a :class:`ParallelUpload` (:class:`_PartBody`)
    are concerned, and an explicit ``s3={"payload_signing_enabled": ...}`` in the client's config wins.
    """
    if not isinstance(getattr(request, "body", None), _PartBody):
        return
    context = request.context
    config = context.get("client_config")
    if config is None:
        return
    chosen = getattr(config, "s3", None) or {}
    if chosen.get("payload_signing_enabled") is not None:
        return
    unsigned = copy.copy(config)  # the client's own config is shared: a copy for this request
    unsigned.s3 = {**chosen, "payload_signing_enabled": False}
    context["client_config"] = unsigned


async def _get_range(fs: Any, bucket: str, key: str, start: int, stop: int | None) -> bytes:
    """Bytes ``[start, stop)`` of an object (fewer at its end; all of it when ``stop`` is
    ``None``); one GET, with s3fs's retries."""
    ranged = {} if stop is None else {"Range": f"bytes={start}-{stop - 1}"}
    resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, **ranged)
    try:
        data: bytes = await resp["Body"].read()
    finally:
        resp["Body"].close()
    return data


class ParallelUpload(io.RawIOBase):
    """A write-only file that uploads to S3 as a multipart upload with several parts in flight.

    Bytes are gathered into parts of ``store.part_size``; each full part is sent at once
    while the caller goes on writing, at most ``store.max_concurrency`` at a time (and at most
    that many parts' worth of bytes). Parts double in size every 1,000 parts, so no artifact
    reaches S3's 10,000-part limit.

    A write of a whole ``bytes`` object (immutable: nobody can change it while it is sent) of
    one to :attr:`WHOLE_PARTS` parts ends a part: appended to the bytes gathered, if any, or
    else sent as a part of its own as it is, without being copied into a part buffer (joblib
    writes arrays as 16 MiB ``bytes`` chunks: every chunk but the first is sent uncopied). A
    part is never shorter than ``part_size``, so this never makes more parts."""

    #: A write of a whole ``bytes`` object up to this many parts long may be sent uncopied.
    WHOLE_PARTS = 4

    def __init__(self, store: S3Store, key: str, *, resumable: bool = False, exclusive: bool = False) -> None:
        super().__init__()
        self._store = store
        self._key = key
        #: Complete only if no object is under the key yet (``If-None-Match: *``).
        self.exclusive = exclusive
        #: Keep the upload open on failure, and reuse the parts an earlier attempt uploaded.
        self.resumable = resumable
        self._earlier: dict[int, tuple[str, int]] = {}
        #: The checksum algorithm declared for the upload (see :attr:`S3Store.upload_checksum`).
        self._algorithm: str | None = None
        self._md5s: list[bytes] = []
        #: Parts sent by this attempt, and parts found already uploaded (resumed).
        self.sent = self.reused = 0
        self._bucket, self._path = store.bucket_key(key)
        self._part_size = max(MIN_PART_SIZE, store.part_size)
        #: The bytes gathered for the next part. A part goes to botocore as a file object, which
        #: aiohttp sends in slices; a ``bytearray`` body was copied whole into a fresh buffer with
        #: the request's headers, then again into the socket's send buffer.
        self._buf: io.BytesIO = _PartBody()
        self._upload_id: str | None = None
        self._in_flight: deque[tuple[int, Future[Any], int]] = deque()
        self._in_flight_bytes = 0
        self._etags: dict[int, str] = {}
        #: Each part's checksum, as the store answered it (with :attr:`_algorithm` only).
        self._checksums: dict[int, str] = {}
        self._next_part = 1
        self._done = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = view.nbytes
        whole, part = view.obj, self._part_size
        if type(whole) is bytes and n == len(whole) and part <= n <= self.WHOLE_PARTS * part:
            if self._buf.tell():  # the gathered bytes and this write make one part: the next write starts a part
                self._buf.write(view)
                self._send_part()
            else:  # immutable and long enough to be a part of its own: sent as it is
                self._send_part(whole)
            return n
        while view.nbytes:
            take = min(view.nbytes, self._part_size - self._buf.tell())
            self._buf.write(view[:take])
            view = view[take:]
            if self._buf.tell() >= self._part_size:
                self._send_part()
        return n

    def _send_part(self, whole: bytes | None = None) -> None:
        """Send the gathered bytes as the next part, or ``whole`` (nothing gathered) as it is."""
        store = self._store
        with store.translated("upload", self._key):
            if self._upload_id is None:
                store.prepare_upload()  # once per upload: s3fs may have made a new client since
                self._upload_id = self._resumed_upload() if self.resumable else None
            if self._upload_id is None:
                # a direct upload is never copied afterwards (moto gives a copy of a composite
                # checksum the wrong checksum): only it declares one
                self._algorithm = store.upload_checksum if self.exclusive else None
                declared = {} if self._algorithm is None else {"ChecksumAlgorithm": self._algorithm}
                started = store.call("create_multipart_upload", Bucket=self._bucket, Key=self._path, **declared)
                self._upload_id = started.result()["UploadId"]
            if whole is None:
                body, self._buf = self._buf, _PartBody()  # handed over whole: no copy
            else:
                body = _PartBody(whole)  # shares the bytes (what botocore does with a bytes body)
            size = body.tell() if whole is None else len(whole)
            body.seek(0)
            # memory: at most max_concurrency parts, and that many parts' worth of bytes, in flight
            limit = store.max_concurrency * self._part_size
            while self._in_flight and (
                len(self._in_flight) >= store.max_concurrency or self._in_flight_bytes + size > limit
            ):
                self._wait_any()
            number = self._next_part
            self._next_part += 1
            if self.resumable:
                with body.getbuffer() as view:
                    md5 = hashlib.md5(view, usedforsecurity=False)
                self._md5s.append(md5.digest())
                if self._earlier.get(number) == (f'"{md5.hexdigest()}"', size):
                    self._etags[number] = self._earlier[number][0]  # this part is already there
                    self.reused += 1
                    return
            self.sent += 1
            declared = {} if self._algorithm is None else {"ChecksumAlgorithm": self._algorithm}
            future = store.call(
                "upload_part",
                Bucket=self._bucket,
                Key=self._path,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=body,
                **declared,
            )
            self._in_flight.append((number, future, size))
            self._in_flight_bytes += size
        if number % 1000 == 0:
            self._part_size *= 2

    def _resumed_upload(self) -> str | None:
        """The newest open upload of this key and its parts (MD5 ETag and size by number)."""
        store = self._store
        found = store.call("list_multipart_uploads", Bucket=self._bucket, Prefix=self._path).result()
        uploads = [u for u in found.get("Uploads", []) if u["Key"] == self._path]
        if not uploads:
            return None
        upload_id = str(max(uploads, key=_initiated)["UploadId"])
        marker = 0
        while True:
            page = store.call(
                "list_parts", Bucket=self._bucket, Key=self._path, UploadId=upload_id, PartNumberMarker=marker
            ).result()
            for part in page.get("Parts", []):
                self._earlier[int(part["PartNumber"])] = (str(part["ETag"]), int(part["Size"]))
            if not page.get("IsTruncated"):
                return upload_id
            marker = int(page["NextPartNumberMarker"])

    def _wait_any(self) -> None:
        """Wait until a part in flight is answered, and take every answered one: a new part goes
        up as soon as any slot is free (the store answers parts out of order; waiting for the
        oldest left slots idle while it was still being received)."""
        wait([future for _, future, _ in self._in_flight], return_when=FIRST_COMPLETED)
        for entry in [entry for entry in self._in_flight if entry[1].done()]:
            self._in_flight.remove(entry)
            self._take(entry)

    def _wait_oldest(self) -> None:
        self._take(self._in_flight.popleft())

    def _take(self, entry: tuple[int, Future[Any], int]) -> None:
        """Record an answered part's ETag (and checksum); raises if the part failed."""
        number, future, size = entry
        self._in_flight_bytes -= size
        answer = future.result()
        self._etags[number] = answer["ETag"]
        if self._algorithm is not None:
            checksum = answer.get(f"Checksum{self._algorithm}")
            if checksum is None:  # the store ignores checksums: complete the upload without them
                self._checksums.clear()
                self._algorithm = None
            else:
                self._checksums[number] = checksum

    def send_all(self) -> None:
        """Send every byte written so far and wait for the parts in flight, so that
        :meth:`complete` has only the completion left to do (a file smaller than one part
        stays in memory: it is one ``PUT`` then)."""
        if self._upload_id is not None and self._buf.tell():
            self._send_part()
        while self._in_flight:
            self._wait_oldest()

    def complete(self) -> None:
        """Send what is left and complete the upload: the object appears whole, now."""
        store = self._store
        if self._upload_id is None:  # smaller than one part: one PUT
            self._finish("put_object", Body=self._buf.getvalue())
            self._buf = io.BytesIO()
        else:
            if self._buf.tell():
                self._send_part()
            while self._in_flight:
                self._wait_oldest()
            parts = [self._part(n, etag) for n, etag in sorted(self._etags.items())]
            done = self._finish("complete_multipart_upload", UploadId=self._upload_id, MultipartUpload={"Parts": parts})
            if self.resumable:
                self._check_whole(str(done.get("ETag", "")))
        self._done = True
        store.fs.invalidate_cache()

    def _part(self, number: int, etag: str) -> dict[str, Any]:
        """One part as :meth:`complete` lists it: with its checksum when the upload declared one."""
        part: dict[str, Any] = {"PartNumber": number, "ETag": etag}
        if self._algorithm is not None:
            part[f"Checksum{self._algorithm}"] = self._checksums[number]
        return part

    def _finish(self, method: str, **kwargs: Any) -> Any:
        """The call that makes the object appear; an exclusive one only where none is yet."""
        return self._store.finish(method, self._key, exclusive=self.exclusive, **kwargs)

    def _check_whole(self, etag: str) -> None:
        """A resumable upload's key is shared by every attempt of the same save: make sure the
        completed object is made of this attempt's parts (S3's multipart ETag is the MD5 of the
        parts' MD5s), not of a concurrent attempt's."""
        wanted = f'"{hashlib.md5(b"".join(self._md5s), usedforsecurity=False).hexdigest()}-{len(self._md5s)}"'
        if etag != wanted:
            _quietly(lambda: self._store.call("delete_object", Bucket=self._bucket, Key=self._path).result())
            raise StorageError(
                f"cannot write {self._store.display_path(self._key)}: another attempt of the same save "
                "changed its parts meanwhile; save again"
            )

    def abort(self) -> None:
        """Throw the upload away: parts in flight are waited for, then the upload is aborted
        (a resumable one stays open for the next attempt; ``gc`` aborts it if none comes)."""
        if self._done:
            return
        self._done = True
        self._buf = io.BytesIO()
        for _, future, _ in self._in_flight:
            future.cancel()
        for _, future, _ in self._in_flight:
            with contextlib.suppress(BaseException):
                future.result()
        self._in_flight.clear()
        self._in_flight_bytes = 0
        if self._upload_id is not None and not self._store.unreachable and not self.resumable:
            upload_id = self._upload_id
            _quietly(
                lambda: self._store.call(
                    "abort_multipart_upload", Bucket=self._bucket, Key=self._path, UploadId=upload_id
                ).result()
            )

    def close(self) -> None:
        if not self._done:
            self.abort()
        super().close()


def _quietly(action: Callable[[], Any]) -> None:
    """Best-effort cleanup: the server may be why we are cleaning up (``gc`` aborts leftovers)."""
    try:
        action()
    except Exception as exc:
        logger.debug("cleanup failed: %s", exc)


def tuned_options(options: dict[str, Any] | None, max_concurrency: int) -> dict[str, Any] | None:
    """s3fs ``storage_options`` with a connection pool large enough for ``max_concurrency``
    requests in flight (botocore's default pool holds 10), and SigV4 named explicitly: botocore
    signs requests with it anyway, but presigns URLs with SigV2 unless told (see :mod:`.presigned`)."""
    if options is None:
        return None
    config = options.setdefault("config_kwargs", {})
    config.setdefault("max_pool_connections", max(10, max_concurrency + 2))
    if not options.get("anon"):
        config.setdefault("signature_version", "s3v4")
    return options


__all__ = ["COPY_LIMIT", "ParallelUpload", "S3Store", "default_max_concurrency", "tuned_options"]
