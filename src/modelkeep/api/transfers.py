"""Server routes that move artifact bytes: uploads for saves, downloads for loads.

A save over HTTP (the client half is :mod:`modelkeep.api.client_transfers`):

1. ``POST /uploads?model=..&version=..&overwrite=..&extension=..`` streams the artifact the client
   serialized, with the digests it computed in ``X-Modelkeep-Expected``. The server stages the
   bytes under the store's ``.tmp/`` (in batches of about :data:`UPLOAD_CHUNK`, one written while
   the next arrives, so memory stays bounded: :func:`spool`), hashing them as they arrive (SHA-256,
   and BLAKE3 split by the recorded payload ranges); bytes that do not match are refused (422) and
   removed. It answers an upload id and
   the version and artifact key it would assign (the *plan*).
2. The client signs its record for that version and key with its own key, then
   ``POST /models/{name}/commit`` ``{upload, record, auto_version, overwrite, created_at}``.
   The server rebuilds the record from the fields a client may set, with the digests it
   measured, and commits it through :meth:`ModelPersistence.commit_staged` as the authenticated
   user (the library's role checks and history apply). The client's signature is kept only if
   the record it signed is exactly what is committed; when another writer took the version
   meanwhile the answer is 409, and the client asks ``GET /models/{name}/plan`` again, re-signs
   and commits the same upload. Uploads live in memory for :data:`UPLOAD_TTL` seconds; their
   staged files are ``gc``'s when the server dies.

A small save (artifact up to :data:`INLINE_MAX`) takes one request: ``POST /models/{name}/save``
with the digests in ``X-Modelkeep-Expected`` and a body of ``{record, auto_version, overwrite,
created_at, extension}`` as JSON (its length in :data:`RECORD_LENGTH_HEADER`) followed by the
artifact. The client signs for the version and key it expects the server to plan (the next version
after its last save of the model, or the version it names); the server checks the writer role
before reading the body (see :mod:`.token_hints`), the digests before storing a byte, and commits
as in step 2, except that on a store that takes uploads straight to their final key (S3) the bytes
are not staged: the commit puts them at the version's key under its claim, as a direct save does
(:class:`~modelkeep.storage.base.InlineArtifact`). When the version or key was not the one the
server would give (or was taken, or a crashed save's leftover sat at the key), the bytes are kept
staged as a pending upload and the answer (202) is ``{upload, plan}``: the client signs again and
commits it as in step 2, without sending the bytes again.

A large save to an S3 store skips the server: ``POST /uploads/presigned`` declares the file's
size and SHA-256 and each part's, and the answer is a plan of presigned part URLs. For a multipart
upload the server first claims the version (:meth:`ModelPersistence.claim_upload`) and plans the
parts at its final key, keeping the claim's lease alive until the commit; the commit takes a record
naming that version and key only, and completes the upload there under the claim, with no copy
(:meth:`ModelPersistence.commit_claimed_upload`, :class:`_ClaimedParts`). A one-part upload (one
presigned ``PUT``) is staged under ``.tmp/``, checked, and moved at the commit as above.

A load reads the record (``GET /models/{name}/versions/{version}``), then the bytes:
``GET .../artifact`` (ranged GETs work on a local store) and, for the native format, ``GET
.../blobs/{sha}``. ``GET .../load`` does both in one request: ``{"record": ...}`` as JSON, and,
when the artifact is at most :data:`INLINE_MAX` bytes, the artifact after it (media type
:data:`BUNDLE_TYPE`, the JSON's length in :data:`RECORD_LENGTH_HEADER`). A load through an alias
reads what its move is judged with (``GET .../aliases/{alias}/state``: the alias row, its record,
later signed moves); ``GET .../aliases/{alias}/load`` answers that JSON with the small artifact
after it the same way. The client checks digests, signature and the alias's move with its own keys,
whichever way the bytes came.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import mmap
import re
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from ..errors import (
    IntegrityError,
    MetadataError,
    ModelKeepError,
    PermissionDeniedError,
    RequestError,
    StorageError,
    VersionExistsError,
)
from ..formats import get_format
from ..layout import artifact_key, blob_key, new_artifact_key
from ..metadata import ArtifactInfo, ModelMetadata, to_json_safe
from ..signing import manifest
from ..storage.base import StagedArtifact
from ..storage.hashing import BLAKE3_KEY, Expected, SplitHash, start_writeback
from ..versions import next_version, sort_key, validate_model_name, validate_version
from .endpoint import MAX_JSON_BODY, flag
from .wire import too_large

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from ..index.claims import VersionClaim
    from ..storage import ArtifactStore
    from .endpoint import Endpoint
    from .routes import Api

#: Header of an upload: ``{"size", "sha256", "blake3"}`` as the client measured them.
EXPECTED_HEADER = "X-Modelkeep-Expected"
#: Bytes gathered from the request before one write to the store (the server's memory per upload).
UPLOAD_CHUNK = 4 << 20
#: Bytes a download reads from a local file at a time: Starlette's 64 KiB took a worker-thread hop
#: each, and the server spent about 3x the CPU time per download that it spends in chunks of 1 MiB.
SEND_CHUNK = 1 << 20
#: Artifacts from this size up are read from an S3 store's bucket by the client (a presigned GET);
#: smaller ones are streamed by the server, which costs fewer round trips than a redirect.
PRESIGNED_GET_MIN = 8 << 20
#: Seconds a presigned download URL works.
PRESIGNED_GET_SECONDS = 900
#: Header of a redirect to a presigned download: the artifact's size.
SIZE_HEADER = "X-Modelkeep-Size"
#: Seconds a part URL of an upload in parts works.
PART_URL_SECONDS = 3600
#: Seconds an upload waits for its commit.
UPLOAD_TTL = 3600.0
#: Artifacts up to this size are saved in one request (``POST /models/{name}/save``) and come
#: back with their record in one response (``GET .../load``): the server holds one in memory.
INLINE_MAX = 1 << 20
#: Header of a one-request save or load: how many bytes of the body are the JSON before the artifact.
RECORD_LENGTH_HEADER = "X-Modelkeep-Record-Length"
#: Media type of a body that is a JSON object (:data:`RECORD_LENGTH_HEADER` bytes), then an artifact.
BUNDLE_TYPE = "application/vnd.modelkeep.record+artifact"
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Upload:
    """Bytes staged by ``POST /uploads``, waiting for their commit."""

    tmp_key: str
    size: int
    sha256: str
    blake3: dict[str, Any] | None
    user: str | None
    created: float = field(default_factory=time.monotonic)
    #: For an upload straight to S3: the server's copy of the plan, completed at the commit.
    presigned: Any = None
    #: For a multipart upload straight to a version's final key: the version's write claim,
    #: taken when the upload was planned, and what keeps its lease alive until the commit.
    claim: VersionClaim | None = None
    lease: contextlib.ExitStack | None = None
    #: For an upload whose parts are declared one at a time (``POST /uploads/parts``): part number
    #: -> ``(size, SHA-256)`` as declared when its URL was signed; ``None`` for any other upload.
    parts: dict[int, tuple[int, str]] | None = None


def stale(message: str) -> VersionExistsError:
    """The version or key a client signed for was taken meanwhile: it plans, signs and commits
    again (a plain :class:`VersionExistsError`, so it crosses the wire as that class)."""
    return VersionExistsError(message)


def _expected(request: Request) -> Expected:
    raw = request.headers.get(EXPECTED_HEADER)
    if not raw:
        raise HTTPException(400, f"an upload needs the {EXPECTED_HEADER} header (size, sha256, blake3)")
    try:
        data = json.loads(raw)
        size, sha = int(data["size"]), str(data["sha256"])
    except (ValueError, KeyError, TypeError):
        raise HTTPException(400, f"the {EXPECTED_HEADER} header is not valid JSON with size and sha256") from None
    if size < 0 or not _SHA256.fullmatch(sha):
        raise HTTPException(400, f"the {EXPECTED_HEADER} header has a bad size or sha256")
    blake = data.get("blake3")
    expected = Expected.of(sha, size, {BLAKE3_KEY: blake} if isinstance(blake, dict) else None)
    if blake is not None and not expected.fast:
        raise HTTPException(400, f"the {EXPECTED_HEADER} header's blake3 record is malformed")
    return expected


class _Sink:
    """Writes an upload to a staged key, hashing it as it goes (run in worker threads)."""

    def __init__(self, store: ArtifactStore, tmp_key: str, expected: Expected) -> None:
        self.store, self.tmp_key, self.expected = store, tmp_key, expected
        self.sha = hashlib.sha256()
        self.split = SplitHash(expected.ranges) if expected.fast else None
        self.size = 0
        self._stack = contextlib.ExitStack()
        # A second thread hashes BLAKE3 beside SHA-256 (a one-request save's body, in memory
        # whole, is hashed in turn by check_bytes: starting a thread would cost more than it saves).
        self._pool = self._stack.enter_context(ThreadPoolExecutor(1))
        self._raw = self._stack.enter_context(store.open_write(tmp_key))
        # A file the store fsyncs once written: its write-back starts as it goes (as a direct
        # save's does, :func:`~modelkeep.storage.hashing.start_writeback`), so finish() waits less.
        self._fd = store.reread_fd(self._raw) if store.syncs_writes else None
        self._written_back = 0

    def write(self, chunks: list[bytes]) -> None:
        """Write and hash one batch of the body's chunks (as received: not joined, no copy)."""
        self.size += sum(map(len, chunks))
        if self.size > (self.expected.size or 0):
            raise IntegrityError(f"the upload is longer than the {self.expected.size} bytes announced")
        blake = None
        if self.split is not None:
            blake = self._pool.submit(_hash_all, self.split, chunks)
        for chunk in chunks:
            _write_all(self._raw, chunk)
        _hash_all(self.sha, chunks)  # hashlib and blake3 release the GIL: the two digests run side by side
        if blake is not None:
            blake.result()
        if self._fd is not None:
            pages = self.size - self.size % mmap.PAGESIZE
            start_writeback(self._fd, self._written_back, pages)
            self._written_back = pages

    def finish(self) -> None:
        """Make the bytes durable, then check them against what the client announced."""
        self._stack.close()
        _check_digests(self.size, self.sha.hexdigest(), self.split, self.expected)

    def abort(self, exc: BaseException) -> None:
        with contextlib.suppress(BaseException):
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
        with contextlib.suppress(Exception):
            self.store.delete(self.tmp_key, missing_ok=True)


def _hash_all(hasher: Any, chunks: list[bytes]) -> None:
    for chunk in chunks:
        hasher.update(chunk)


def _write_all(raw: Any, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[raw.write(view) or 0 :]


def _check_digests(size: int, sha256: str, split: SplitHash | None, expected: Expected) -> None:
    """Refuse (:class:`IntegrityError`) bytes whose size and digests are not those announced."""
    if size != expected.size or sha256 != expected.sha256:
        raise IntegrityError(
            f"the uploaded bytes ({size} bytes, SHA-256 {sha256[:16]}...) are not those announced "
            f"({expected.size} bytes, SHA-256 {expected.sha256[:16]}...); the upload was damaged, send it again"
        )
    if split is not None:
        ok = split.skeleton.hexdigest() == expected.skeleton and (
            not expected.ranges or split.payload.hexdigest() == expected.payload
        )
        if not ok:
            raise IntegrityError("the uploaded bytes do not match their announced BLAKE3 digests")


def check_bytes(data: bytes | memoryview, expected: Expected) -> None:
    """:func:`_check_digests` of bytes held whole in memory (a one-request save's)."""
    split = SplitHash(expected.ranges) if expected.fast else None
    if split is not None:
        split.update(data)
    _check_digests(len(data), hashlib.sha256(data).hexdigest(), split, expected)


def plan(p: Any, model_name: str, version: str | None, overwrite: bool, extension: str) -> tuple[str, str]:
    """The version and artifact key a save of ``model_name`` would get now (a claim may still find
    them taken: then the commit answers 409 and the client plans again). An automatic version is
    the one a claim would take: after the highest version and the highest claimed one (a large
    save through a server holds its claim while its client uploads), skipping taken ones."""
    from ..index.claims import list_claims

    index = p.index
    if version is None:
        with index.engine.connect() as conn:
            top = index.highest_version(conn, model_name)
        held = {c.version for c in list_claims(index, model_name)}
        keyed = [(k, v) for v in [*held, *([top] if top else [])] if (k := sort_key(v)) is not None]
        version = next_version(
            max(keyed)[1] if keyed else None, lambda v: v in held or index.get(model_name, v) is not None
        )
        previous = None
    else:
        previous = index.get(model_name, version) if overwrite else None
    replaced = previous.artifact.key if previous is not None and previous.artifact is not None else None
    return version, new_artifact_key(model_name, version, extension, replaced)


def _key_rule(proposed: str) -> Any:
    """``key_for`` of :meth:`ModelPersistence.commit_staged`: the client's key, when it is the key
    this claim may use (the usual one, or a fresh revision key for an overwrite)."""

    def key_for(slot: VersionClaim, extension: str) -> str:
        usual = artifact_key(slot.model_name, slot.version, extension)
        prev = slot.previous.artifact.key if slot.previous is not None and slot.previous.artifact else None
        if proposed == usual and prev != usual:
            return proposed
        stem = re.escape(usual[: -len(extension)] if extension else usual)
        if (
            prev is not None
            and proposed != prev
            and re.fullmatch(stem + r"\.r[0-9a-f]{12}" + re.escape(extension), proposed)
        ):
            return proposed
        raise stale(
            f"model '{slot.model_name}' version '{slot.version}' is not what the client planned "
            f"(artifact key {proposed!r}); plan and sign again"
        )

    return key_for


def _signer(draft: ModelMetadata) -> Any:
    """``sign`` of a commit: the client's signature of ``draft``, for the record committed only if
    it is exactly what the client signed (else :func:`stale`)."""
    wanted = manifest(draft)

    def sign(record: ModelMetadata) -> str | None:
        if manifest(record) != wanted:
            raise stale(
                f"model '{record.model_name}' version '{record.version}' is not the version the client "
                f"signed for ({draft.version}); plan and sign again"
            )
        return draft.signature

    return sign


def _created_at(body: dict[str, Any]) -> str | None:
    """A commit's ``created_at`` (an ISO-8601 string, or ``None``)."""
    created_at = body.get("created_at")
    if created_at is not None and not isinstance(created_at, str):
        raise MetadataError("created_at must be an ISO-8601 string")
    return created_at


def draft_from_client(data: Any, name: str, upload: Upload) -> ModelMetadata:
    """The record a client asks to commit, rebuilt from the fields a client may set, with the
    digests the server measured; a malformed or inconsistent record raises :class:`MetadataError`
    (:class:`IntegrityError` when its digests are not the uploaded bytes')."""
    if not isinstance(data, dict):
        raise MetadataError("the commit's record must be a JSON object")
    client = ModelMetadata.from_dict(data)
    if client.model_name != name:
        raise MetadataError(f"the record names model {client.model_name!r}, not {name!r}")
    validate_version(client.version)
    art = client.artifact
    if art is None:
        raise MetadataError("the record has no artifact")
    if art.size != upload.size or art.sha256 != upload.sha256 or art.extra.get(BLAKE3_KEY) != upload.blake3:
        raise IntegrityError("the record's size and digests are not those of the uploaded bytes")
    fmt = get_format(art.format)
    if fmt.normalize_compression(art.compression) != art.compression:
        raise MetadataError(f"compression {art.compression!r} is not one the {fmt.name} format writes")
    fmt.check_protocol(art.extra, f"model '{name}'")
    blobs = art.extra.get("blobs")
    if blobs is not None and not _blob_list(blobs):
        raise MetadataError("the record's blob list is malformed")
    for label, value in (("metadata", client.metadata), ("environment", client.environment)):
        if not isinstance(value, dict):
            raise MetadataError(f"the record's {label} must be an object")
    for label, opt in (("input_signature", client.input_signature), ("lineage", client.lineage)):
        if opt is not None and not isinstance(opt, dict):
            raise MetadataError(f"the record's {label} must be an object")
    return ModelMetadata(
        model_name=name,
        model_type=str(client.model_type),
        version=client.version,
        created_at="",
        updated_at="",
        metadata=to_json_safe(client.metadata),
        artifact=ArtifactInfo(art.key, fmt.name, art.compression, upload.size, upload.sha256, art.extra),
        environment=client.environment,
        signature=client.signature,
        input_signature=client.input_signature,
        lineage=client.lineage,
    )


def check_declared_size(request: Request, limit: int | None, declared: int | None = None) -> None:
    """Refuse a body whose ``Content-Length`` (or ``declared`` size) is over ``limit`` before reading it."""
    if limit is None:
        return
    length = request.headers.get("content-length", "")
    if (length.isdigit() and int(length) > limit) or (declared is not None and declared > limit):
        raise too_large(limit)


async def capped_stream(request: Request, limit: int | None) -> AsyncIterator[bytes]:
    """The request body's chunks, refused (:class:`UploadTooLargeError`) as soon as more than
    ``limit`` bytes arrive, whatever the headers said (a chunked body declares no length)."""
    check_declared_size(request, limit)
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if limit is not None and received > limit:
            raise too_large(limit)
        yield chunk


async def spool(request: Request, limit: int | None, write: Callable[[list[bytes]], Any]) -> None:
    """Hand the request body (refused past ``limit`` bytes, :func:`capped_stream`) to ``write``
    in batches of chunks of about :data:`UPLOAD_CHUNK` bytes (as received, not joined), each on a
    thread of its own while the next batch arrives, so receiving, hashing and writing overlap: at
    most two batches in memory, one ``write`` at a time, in order. When this returns or raises,
    no ``write`` is running (the caller may close or remove what it writes to)."""
    pool: ThreadPoolExecutor | None = None
    writing: Future[Any] | None = None
    try:
        batch: list[bytes] = []
        size = 0
        async for chunk in capped_stream(request, limit):
            batch.append(chunk)
            size += len(chunk)
            if size >= UPLOAD_CHUNK:
                if writing is not None:
                    await asyncio.wrap_future(writing)
                pool = pool or ThreadPoolExecutor(1, thread_name_prefix="modelkeep-upload")
                writing = pool.submit(write, batch)
                batch, size = [], 0
        if writing is not None:
            await asyncio.wrap_future(writing)
        if batch:
            await run_in_threadpool(write, batch)
    finally:
        if writing is not None and not writing.done():
            await _written(writing)
        if pool is not None:
            pool.shutdown(wait=False)


async def _written(writing: Future[Any]) -> None:
    """Wait for a batch's write after the body failed (its own error does not matter then); if
    this task is cancelled meanwhile, block until the write ends (one batch: milliseconds)."""
    try:
        await asyncio.shield(asyncio.wrap_future(writing))
    except asyncio.CancelledError:
        wait_futures([writing])
        raise
    except Exception:
        pass


async def _receive(
    request: Request, store: ArtifactStore, tmp_key: str, expected: Expected, limit: int | None = None
) -> _Sink:
    """Stream the request body into ``tmp_key`` (:func:`spool`: bounded memory, the next batch
    received while one is hashed and written), checked against ``expected`` and the upload cap
    ``limit`` as it arrives; on any failure the staged bytes are removed."""
    check_declared_size(request, limit, expected.size)
    sink = await run_in_threadpool(_Sink, store, tmp_key, expected)
    try:
        await spool(request, limit, sink.write)
        await run_in_threadpool(sink.finish)
    except BaseException as exc:
        await run_in_threadpool(sink.abort, exc)
        raise
    return sink


def _ranges(upload: Upload) -> list[Any]:
    """The payload ranges of ``upload``'s BLAKE3 record, for the read-back's digests."""
    return list((upload.blake3 or {}).get("ranges") or [])


def _check_completed(store: Any, done: Any, upload: Upload) -> None:
    """Refuse a completed presigned upload (:class:`~.presigned.CompletedUpload` ``done``) whose
    bytes, read back, are not those declared; its object is removed. Not read back (``sha256``
    ``None``) only where the parts are known to be those declared: S3 refused any part whose
    bytes did not hash to its signed checksum, or the store's composite SHA-256 of the parts it
    holds is the declared parts'. The whole file's digests are then the client's signed
    declaration, which every load checks again before parsing."""
    if done.sha256 is not None and (done.sha256 != upload.sha256 or done.blake3 != upload.blake3):
        with contextlib.suppress(Exception):
            store.delete(done.key, missing_ok=True)
        raise IntegrityError("the uploaded bytes do not match their declared digests")


class _ClaimedParts(StagedArtifact):
    """A presigned multipart upload straight to a version's final key, under the version's claim
    (taken when the upload was planned): :meth:`commit` completes it there, never over an object
    already there, and checks the bytes as a staged upload's are checked; no copy follows.
    :meth:`discard` aborts an upload that was not completed (what is under the key is the claim's
    clean-up's to remove)."""

    def __init__(self, store: Any, upload: Upload, listing: Any = None) -> None:
        super().__init__(store, upload.presigned.key)
        self.s3: Any = store
        self.upload = upload
        #: S3's listing of the parts, asked for when the commit began (:func:`.presigned.list_parts_soon`)
        self.listing = listing
        self.size, self.sha256 = upload.size, upload.sha256

    def commit(self, key: str) -> None:
        from ..storage.presigned import complete_upload

        if key != self.tmp_key or self.upload.claim is None:
            raise ValueError(f"{key!r} is not where these bytes were uploaded ({self.tmp_key!r})")
        self.upload.claim.check_lease()
        done = complete_upload(self.s3, self.upload.presigned, ranges=_ranges(self.upload), listing=self.listing)
        _check_completed(self.s3, done, self.upload)
        self.committed = True

    def drop_duplicate(self) -> None:
        self.discard()
        self.committed = True

    def discard(self) -> None:
        from ..storage.presigned import abort_upload

        if not self.committed:
            with contextlib.suppress(Exception):
                abort_upload(self.s3, self.upload.presigned)


class Transfers:
    """The transfer handlers of one :class:`~modelkeep.api.routes.Api`, and its pending uploads."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.uploads: dict[str, Upload] = {}
        self._lock = threading.Lock()

    @property
    def store(self) -> ArtifactStore:
        store: ArtifactStore = self.api.p.store
        return store

    @property
    def s3(self) -> Any:
        """The store, for :mod:`modelkeep.storage.presigned` (which refuses any but S3 clearly)."""
        return self.api.p.store

    def _user(self, request: Request) -> str | None:
        who = getattr(request.state, "user", None)
        return None if who is None else str(who.name)

    def _may_upload(self, request: Request, model_name: str | None) -> None:
        """Refuse bytes from a user who could not commit them: the writer role on ``model_name``
        (or, for a blob, which names no model, on some model). Nothing reaches the store first."""
        who = getattr(request.state, "user", None)
        if model_name is not None:
            self.api.p.access.require(who, "writer", "upload artifacts", model_name)
        elif who is not None and not who.may_somewhere("writer"):
            raise PermissionDeniedError(f"{who.name} ({who.role}) may not upload: it needs the writer role")

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            old = [k for k, u in self.uploads.items() if now - u.created > UPLOAD_TTL]
            gone = [self.uploads.pop(k) for k in old]
        if gone:  # off the event loop: aborts and claim releases are round trips
            threading.Thread(target=self._drop_all, args=(gone,), name="drop-uploads", daemon=True).start()

    def _drop_all(self, uploads: list[Upload]) -> None:
        for upload in uploads:
            self._drop(upload)

    def _drop(self, upload: Upload) -> None:
        """Throw a pending upload away (best effort: ``gc`` removes what is left): its staged bytes,
        or its presigned upload, and, for one to a version's final key, its claim (whose clean-up
        removes what is under the key only while the claim is still this upload's). The lease's
        heartbeat stops first: it must not renew a claim that is being given up."""
        if upload.lease is not None:
            upload.lease.close()
        with contextlib.suppress(Exception):
            if upload.presigned is not None:
                from ..storage.presigned import abort_upload

                abort_upload(self.s3, upload.presigned)
            else:
                self.store.delete(upload.tmp_key, missing_ok=True)
        if upload.claim is not None:
            key = upload.presigned.key
            upload.claim.abandon([key], lambda k: self.store.delete(k, missing_ok=True))

    def _take(self, upload_id: Any, request: Request) -> Upload:
        with self._lock:
            upload = self.uploads.pop(str(upload_id), None)
        if upload is None or upload.user != self._user(request):
            if upload is not None:
                self._put_back(str(upload_id), upload)
            raise MetadataError(f"no pending upload {upload_id!r}: it was committed, expired or never made")
        return upload

    def _put_back(self, upload_id: str, upload: Upload) -> None:
        with self._lock:
            self.uploads[upload_id] = upload

    # -- saving -----------------------------------------------------------------
    def _plan_args(self, request: Request, name: str) -> tuple[str | None, bool, str]:
        q = request.query_params
        version = q.get("version") or None
        if version is not None:
            version = validate_version(version)
        extension = q.get("extension", "")
        if not re.fullmatch(r"(\.[A-Za-z0-9]{1,10}){1,3}", extension):
            raise MetadataError(f"bad artifact extension {extension!r}")
        return version, q.get("overwrite", "") in ("1", "true"), extension

    async def upload(self, request: Request) -> Response:
        """Stage the request body as an artifact, checked against its announced digests."""
        self._expire()
        name = request.query_params.get("model")
        plan_for = None
        if name:
            name = validate_model_name(name)
        self._may_upload(request, name or None)
        expected = _expected(request)
        if name:
            plan_for = (name, *self._plan_args(request, name))
        staged = self.store.stage()
        sink = await _receive(request, self.store, staged.tmp_key, expected, self.api.max_upload_bytes)
        upload = Upload(staged.tmp_key, sink.size, sink.sha.hexdigest(), _blake3_record(expected), self._user(request))
        upload_id = uuid.uuid4().hex
        self._put_back(upload_id, upload)
        out: dict[str, Any] = {"upload": upload_id, "size": upload.size, "sha256": upload.sha256}
        if plan_for is not None:
            version, key = await self.api.call(request, plan, self.api.p, *plan_for)
            out["plan"] = {"version": version, "key": key}
        return _json(out, 201)

    async def upload_presigned(self, request: Request) -> Response:
        """Plan an upload straight to the bucket (S3 stores): the client declares the size and the
        SHA-256 of the file and of each part (and its BLAKE3 record); S3 is asked to refuse other
        bytes, and the commit checks that the stored parts are those declared (:func:`.presigned.complete_upload`)."""
        from ..storage.presigned import plan_upload
        from .endpoint import read_json

        self._expire()
        body = await read_json(request)
        try:
            size, sha, part_size = int(body["size"]), str(body["sha256"]), int(body["part_size"])
            parts = [str(d) for d in body["part_sha256s"]]
        except (KeyError, TypeError, ValueError):
            raise MetadataError("a presigned upload needs size, sha256, part_size and part_sha256s") from None
        blake = body.get("blake3")
        expected = Expected.of(sha, size, {BLAKE3_KEY: blake} if isinstance(blake, dict) else None)
        if blake is not None and not expected.fast:
            raise MetadataError("the upload's blake3 record is malformed")
        if self.api.max_upload_bytes is not None and size > self.api.max_upload_bytes:
            raise too_large(self.api.max_upload_bytes)
        name = body.get("model")
        plan_for = None
        self._may_upload(request, validate_model_name(str(name)) if name else None)
        if name:
            name = validate_model_name(str(name))
            version = validate_version(str(body["version"])) if body.get("version") else None
            extension = str(body.get("extension", ""))
            if not re.fullmatch(r"(\.[A-Za-z0-9]{1,10}){1,3}", extension):
                raise MetadataError(f"bad artifact extension {extension!r}")
            plan_for = (name, version, flag(body, "overwrite"), extension)
        # A file of one part goes up as one PUT, not a one-part multipart upload: one request
        # instead of three, and the object's checksum is its own SHA-256 (a multipart upload's is
        # a checksum of the parts' checksums, which some S3 servers return as if it were the file's).
        single = len(parts) == 1 and parts[0] == sha and 0 <= size <= part_size
        upload = Upload("", size, sha, _blake3_record(expected), self._user(request))
        out: dict[str, Any] = {"upload": uuid.uuid4().hex}
        if plan_for is not None and not single:
            # The version is claimed now and the parts go straight to its final key: the commit
            # completes the upload there, with no copy (a single PUT is staged: its URL could
            # replace the object after the commit checked it).
            out["plan"] = await self.api.call(request, self._plan_claimed, upload, plan_for, parts, part_size)
        else:
            upload.presigned = await run_in_threadpool(
                lambda: plan_upload(
                    self.s3, size, sha256=sha, part_sha256s=None if single else parts, part_size=part_size
                )
            )
            if plan_for is not None:
                version, key = await self.api.call(request, plan, self.api.p, *plan_for)
                out["plan"] = {"version": version, "key": key}
        upload.tmp_key = upload.presigned.key
        self._put_back(out["upload"], upload)
        out["presigned"] = upload.presigned.to_json()
        return _json(out, 201)

    def _plan_claimed(
        self, upload: Upload, plan_for: tuple[str, str | None, bool, str], parts: list[str], part_size: int
    ) -> dict[str, str]:
        """Claim the version ``plan_for`` names (model, version or ``None``, overwrite, extension),
        plan ``upload``'s multipart upload at its final key, and keep the claim's lease alive while
        the client uploads (no request reaches the server until the commit: every part's URL is in
        the plan), for at most :data:`UPLOAD_TTL`. A server killed meanwhile renews nothing, so its
        claim goes stale and ``gc`` aborts the upload, as a killed direct save's."""
        from ..storage.presigned import plan_upload

        return self._claimed(
            upload,
            plan_for,
            lambda key: plan_upload(
                self.s3,
                upload.size,
                sha256=upload.sha256,
                part_sha256s=parts,
                part_size=part_size,
                staging_key=key,
                final=True,
            ),
        )

    def _claimed(
        self, upload: Upload, plan_for: tuple[str, str | None, bool, str], start: Callable[[str], Any]
    ) -> dict[str, str]:
        """Claim the version ``plan_for`` names, start ``upload``'s multipart upload at its final key
        (``start(key)`` gives the plan), and keep the claim's lease alive for at most :data:`UPLOAD_TTL`."""
        name, version, overwrite, extension = plan_for
        slot, key = self.api.p.claim_upload(name, version, extension, overwrite=overwrite)
        lease = contextlib.ExitStack()
        try:
            upload.presigned = start(key)
            lease.enter_context(slot.kept_alive(until=time.monotonic() + UPLOAD_TTL))
        except BaseException:
            slot.abandon([], lambda _key: None)  # nothing was written under the key
            raise
        upload.claim, upload.lease = slot, lease
        return {"version": slot.version, "key": key}

    async def upload_parts(self, request: Request) -> Response:
        """Start an upload straight to S3 whose parts are declared one at a time, as the client
        serializes: the version is claimed and a multipart upload created at its final key, with no
        part URL yet (``POST /uploads/{upload}/parts`` signs each; the commit says the file's size
        and digests, and completes the parts declared, checked as any presigned upload's)."""
        from ..storage.presigned import check_s3, start_parts
        from .endpoint import read_json

        self._expire()
        check_s3(self.s3)  # before any claim: a store that is not S3 streams through the server
        body = await read_json(request)
        name = validate_model_name(str(body.get("model", "")))
        self._may_upload(request, name)
        version = validate_version(str(body["version"])) if body.get("version") else None
        extension = str(body.get("extension", ""))
        if not re.fullmatch(r"(\.[A-Za-z0-9]{1,10}){1,3}", extension):
            raise MetadataError(f"bad artifact extension {extension!r}")
        part_size = body.get("part_size")
        if type(part_size) is not int:
            raise MetadataError("an upload in parts needs a part_size (bytes)")
        upload = Upload("", 0, "", None, self._user(request), parts={})
        plan_for = (name, version, flag(body, "overwrite"), extension)
        out: dict[str, Any] = {"upload": uuid.uuid4().hex, "part_size": part_size}
        out["plan"] = await self.api.call(
            request, self._claimed, upload, plan_for, lambda key: start_parts(self.s3, key, part_size=part_size)
        )
        upload.tmp_key = upload.presigned.key
        self._put_back(out["upload"], upload)
        return _json(out, 201)

    async def sign_part(self, request: Request) -> Response:
        """The presigned URL of one part of an upload started by ``POST /uploads/parts``, signed
        with the SHA-256 the client declares for it (S3 refuses other bytes); a part number out of
        range, past the upload cap, or declared before with other bytes is refused, as is any part
        of an upload that was committed, dropped or expired."""
        from ..storage.presigned import MAX_PARTS, sign_part
        from .endpoint import read_json

        body = await read_json(request)
        upload_id = str(request.path_params["upload"])
        with self._lock:
            upload = self.uploads.get(upload_id)
        if upload is None or upload.user != self._user(request) or upload.parts is None:
            raise MetadataError(f"no pending upload in parts {upload_id!r}: it was committed, expired or never made")
        number, size, sha = body.get("number"), body.get("size"), str(body.get("sha256", ""))
        part_size = upload.presigned.part_size
        if type(number) is not int or not 1 <= number <= MAX_PARTS:
            raise MetadataError(f"a part number is 1 to {MAX_PARTS}, not {number!r}")
        if type(size) is not int or not 1 <= size <= part_size or not _SHA256.fullmatch(sha):
            raise MetadataError(f"part {number} needs a size of 1 to {part_size} bytes and a hex sha256")
        limit = self.api.max_upload_bytes
        if limit is not None and (number - 1) * part_size + size > limit:
            raise too_large(limit)
        with self._lock:
            if upload.parts.setdefault(number, (size, sha)) != (size, sha):
                raise MetadataError(f"part {number} of this upload was declared with other bytes")
        start = (number - 1) * part_size
        key, upload_ref = upload.presigned.key, upload.presigned.upload_id
        part = await run_in_threadpool(
            sign_part, self.s3, key, upload_ref, number, start, start + size, sha, PART_URL_SECONDS
        )
        return _json({"number": number, "url": part.url, "headers": part.headers}, 201)

    def _declared(self, upload: Upload, data: Any) -> None:
        """An upload in parts gets its size and digests from the record the client commits (its
        signed word, as a presigned plan's declaration is), and the plan to complete: exactly the
        parts a file of that size cuts into, as declared (:func:`.presigned.declared_plan`)."""
        from ..storage.presigned import declared_plan

        if upload.parts is None:
            return
        art = data.get("artifact") if isinstance(data, dict) else None
        if (
            not isinstance(art, dict)
            or type(art.get("size")) is not int
            or not _SHA256.fullmatch(str(art.get("sha256")))
        ):
            raise MetadataError("the record of an upload in parts needs its artifact's size and sha256")
        size, sha = int(art["size"]), str(art["sha256"])
        if self.api.max_upload_bytes is not None and size > self.api.max_upload_bytes:
            raise too_large(self.api.max_upload_bytes)
        blake = (art.get("extra") or {}).get(BLAKE3_KEY) if isinstance(art.get("extra"), dict) else None
        expected = Expected.of(sha, size, {BLAKE3_KEY: blake} if isinstance(blake, dict) else None)
        if blake is not None and not expected.fast:
            raise MetadataError("the upload's blake3 record is malformed")
        with self._lock:
            declared = dict(upload.parts)
        for n, (got, _sha) in declared.items():
            want = min(upload.presigned.part_size, size - (n - 1) * upload.presigned.part_size)
            if got != want:
                raise IntegrityError(f"part {n} was declared with {got} bytes; a file of {size} bytes has {want} there")
        upload.presigned = declared_plan(upload.presigned, size, sha, {n: d for n, (_, d) in declared.items()})
        upload.size, upload.sha256, upload.blake3 = size, sha, _blake3_record(expected)

    def _complete(self, upload: Upload) -> None:
        """Check a presigned upload's staged object against its plan and the declared digests
        (read back once by the server), so the commit moves checked bytes; once."""
        from ..storage.presigned import abort_upload, complete_upload

        if upload.presigned is None:
            return
        try:
            done = complete_upload(self.s3, upload.presigned, ranges=_ranges(upload))
            _check_completed(self.s3, done, upload)
        except BaseException:
            with contextlib.suppress(Exception):
                abort_upload(self.s3, upload.presigned)
            raise
        upload.tmp_key, upload.presigned = done.key, None

    async def plan(self, request: Request) -> Response:
        """The version and key a save would get now."""
        name = validate_model_name(request.path_params["name"])
        version, key = await self.api.call(request, plan, self.api.p, name, *self._plan_args(request, name))
        return _json({"version": version, "key": key})

    async def discard(self, request: Request) -> Response:
        """Drop a pending upload (the client gave up)."""
        upload = self._take(request.path_params["upload"], request)
        await run_in_threadpool(self._drop, upload)
        return _json({"discarded": True})

    async def commit(self, request: Request) -> Response:
        """Commit a pending upload as a version, with the record and signature the client made."""
        from .endpoint import read_json

        name = validate_model_name(request.path_params["name"])
        body = await read_json(request)
        upload_id = str(body.get("upload", ""))
        upload = self._take(upload_id, request)
        if upload.claim is not None:
            return await self._commit_claimed(request, upload_id, upload, name, body)
        await run_in_threadpool(self._complete, upload)  # a refused presigned upload is aborted, not put back
        try:
            draft = draft_from_client(body.get("record"), name, upload)
            record = await self.api.call(request, self._commit, upload, draft, body)
        except BaseException:
            self._put_back(upload_id, upload)  # e.g. a version taken meanwhile: the client commits it again
            raise
        return _json({"record": record.to_dict()}, 201)

    async def _commit_claimed(
        self, request: Request, upload_id: str, upload: Upload, name: str, body: dict[str, Any]
    ) -> Response:
        """Commit an upload to a version's final key under the claim taken when it was planned: the
        record must name that version and key. A malformed record leaves the upload pending (the
        client may commit again); any later failure (bytes not those declared, a lost claim) drops
        it, and the claim's clean-up removes what the attempt wrote."""
        slot = upload.claim
        assert slot is not None and upload.presigned is not None
        try:
            self._declared(upload, body.get("record"))
        except ModelKeepError:
            self._put_back(upload_id, upload)  # nothing checked yet: the client may commit again
            raise
        presigned = upload.presigned
        try:
            draft = draft_from_client(body.get("record"), name, upload)
            assert draft.artifact is not None
            if (name, draft.version, draft.artifact.key) != (slot.model_name, slot.version, presigned.key):
                raise MetadataError(
                    f"the record names version {draft.version!r} at {draft.artifact.key!r}, not the version "
                    f"this upload was planned and claimed for ({slot.version!r} at {presigned.key!r})"
                )
            created_at = _created_at(body)
        except ModelKeepError:
            # Bytes not those planned are refused first (the upload dropped), as at any commit;
            # otherwise the upload stays pending for a commit with a well-formed record.
            from ..storage.presigned import check_parts

            try:
                await run_in_threadpool(check_parts, self.s3, presigned)
            except IntegrityError:
                await run_in_threadpool(self._drop, upload)
                raise
            self._put_back(upload_id, upload)
            raise
        # S3's listing of the parts, checked at the completion, is asked for now: it answers while
        # the commit checks the claim and writes the sidecar, which come first
        from ..storage.presigned import list_parts_soon

        staged = _ClaimedParts(self.s3, upload, list_parts_soon(self.s3, presigned))
        try:
            record = await self.api.call(
                request,
                self.api.p.commit_claimed_upload,
                slot,
                staged,
                draft,
                created_at=created_at,
                sign=_signer(draft),
            )
        except BaseException:
            await run_in_threadpool(self._drop, upload)
            raise
        if upload.lease is not None:
            await run_in_threadpool(upload.lease.close)
        return _json({"record": record.to_dict()}, 201)

    def _commit(
        self, upload: Upload, draft: ModelMetadata, body: dict[str, Any], staged: StagedArtifact | None = None
    ) -> ModelMetadata:
        """Commit ``staged`` (default: the upload's staged key) as the version ``draft`` names."""
        p = self.api.p
        overwrite = flag(body, "overwrite")
        auto = flag(body, "auto_version")
        created_at = _created_at(body)
        assert draft.artifact is not None
        if staged is None:
            staged = StagedArtifact(self.store, upload.tmp_key)
            staged.size, staged.sha256 = upload.size, upload.sha256
        return p.commit_uploaded(
            staged,
            draft,
            None if auto else draft.version,
            overwrite=overwrite,
            created_at=created_at,
            sign=_signer(draft),
            key_for=_key_rule(draft.artifact.key),
        )

    # -- small saves in one request ------------------------------------------------
    async def save(self, request: Request) -> Response:
        """Stage, check and commit a small artifact sent with its signed record in one request."""
        self._expire()
        name = validate_model_name(request.path_params["name"])
        self._may_upload(request, name)  # before a byte of the body is read
        expected = _expected(request)
        if expected.size is None or expected.size > INLINE_MAX:
            raise RequestError(f"a one-request save is limited to {INLINE_MAX} bytes: upload it first")
        if self.api.max_upload_bytes is not None and expected.size > self.api.max_upload_bytes:
            raise too_large(self.api.max_upload_bytes)  # the cap holds for every way bytes come in
        try:
            head = int(request.headers.get(RECORD_LENGTH_HEADER, ""))
        except ValueError:
            raise RequestError(f"a one-request save needs the {RECORD_LENGTH_HEADER} header") from None
        if not 0 < head <= MAX_JSON_BODY:
            raise RequestError(f"the record of a one-request save is limited to {MAX_JSON_BODY} bytes")
        body = await _read_exactly(request, head + expected.size)
        out = await self.api.call(request, self._save, name, body, head, expected, self._user(request))
        return _json(out, 201 if "record" in out else 202)

    def _save(self, name: str, body: bytes, head: int, expected: Expected, user: str | None) -> dict[str, Any]:
        """The worker-thread half of :meth:`save`: check, then commit (or stage, and plan)."""
        from ..storage.base import InlineArtifact

        try:
            form = json.loads(body[:head])
        except ValueError:
            raise MetadataError("the record of a one-request save is not JSON") from None
        if not isinstance(form, dict):
            raise MetadataError("the record of a one-request save must be a JSON object")
        extension = str(form.get("extension", ""))
        if not re.fullmatch(r"(\.[A-Za-z0-9]{1,10}){1,3}", extension):
            raise MetadataError(f"bad artifact extension {extension!r}")
        data = memoryview(body)[head:]
        upload = Upload("", int(expected.size or 0), expected.sha256, _blake3_record(expected), user)
        draft = draft_from_client(form.get("record"), name, upload)  # nothing stored for a bad record
        check_bytes(data, expected)  # the bytes are those announced (and so those the record names)
        auto, overwrite = flag(form, "auto_version"), flag(form, "overwrite")
        # A store that takes uploads straight to their final key (S3) gets the bytes there under the
        # version's claim, as a direct save's: no staged copy, no server-side copy after it.
        staged = InlineArtifact(self.store, data, upload.sha256) if self.store.direct_uploads else None
        try:
            if staged is None:
                upload.tmp_key = self._stage_bytes(data)
            try:
                record = self._commit(upload, draft, form, staged)
            except (VersionExistsError, StorageError) as exc:
                collided = staged is not None and staged.collided
                if not collided and (type(exc) is not VersionExistsError or not (auto or overwrite)):
                    raise
                # Not the version or key the client signed for (or a crashed save's leftover sat
                # at that key; the failed attempt removed it): the bytes are kept staged, as an
                # upload the client signs again for and commits (POST .../commit).
                upload.tmp_key = upload.tmp_key or self._stage_bytes(data)
                version, key = plan(self.api.p, name, None if auto else draft.version, overwrite, extension)
                upload_id = uuid.uuid4().hex
                self._put_back(upload_id, upload)
                return {"upload": upload_id, "plan": {"version": version, "key": key}}
        except BaseException:
            if upload.tmp_key:
                with contextlib.suppress(Exception):
                    self.store.delete(upload.tmp_key, missing_ok=True)
            raise
        return {"record": record.to_dict()}

    def _stage_bytes(self, data: memoryview) -> str:
        """Write checked bytes to a new staged key, and return it."""
        tmp_key = self.store.stage().tmp_key
        try:
            with self.store.open_write(tmp_key) as raw:
                _write_all(raw, data)
        except BaseException:
            with contextlib.suppress(Exception):
                self.store.delete(tmp_key, missing_ok=True)
            raise
        return tmp_key

    # -- loading ----------------------------------------------------------------
    async def load(self, request: Request) -> Response:
        """A version's record and, when it is small, its artifact, in one response."""
        from .wire import record_to_wire

        name, version = request.path_params["name"], request.path_params["version"]
        alias = request.query_params.get("alias")
        record, data = await self.api.call(request, self._load, name, None if version == "latest" else version, alias)
        return _bundle({"record": record_to_wire(record)}, data)

    def _load(self, name: str, version: str | None, alias: str | None) -> tuple[ModelMetadata, bytes | None]:
        record: ModelMetadata = self.api.p.get_version(name, version, alias=alias)
        return record, self._small_bytes(record)

    async def load_alias(self, request: Request) -> Response:
        """What a reader checks a load through an alias with (as ``GET .../state``: the alias row,
        the record it points at, each later signed move) and, when small, that version's artifact,
        in one response: the client judges the move with its own keys before it parses a byte."""
        name, alias = request.path_params["name"], request.path_params["alias"]
        found, data = await self.api.call(request, self._load_alias, name, alias)
        return _bundle(found, data)

    def _load_alias(self, name: str, alias: str) -> tuple[dict[str, Any], bytes | None]:
        from .signing_routes import alias_state_of

        found, record = alias_state_of(self.api.p, name, alias)
        return found, self._small_bytes(record)

    def _small_bytes(self, record: ModelMetadata) -> bytes | None:
        """The artifact's bytes when they are small and readable (else ``None``: the client reads
        them as before, and meets any error there)."""
        from ..errors import ModelKeepError

        art = record.artifact
        if art is None or record.damaged or art.size > INLINE_MAX or self._presigned_get(art.size):
            return None
        try:
            return self._read_small(art.key, art.size)
        except (ModelKeepError, OSError):
            return None

    def _presigned_get(self, size: int) -> bool:
        """Whether the client reads an artifact of ``size`` bytes from the bucket itself."""
        from ..storage.s3 import S3Store

        return isinstance(self.store, S3Store) and size >= PRESIGNED_GET_MIN

    def _read_small(self, key: str, size: int) -> bytes:
        """``key``'s bytes, at most one more than ``size`` (the client then finds it too long),
        in one read: one GET on S3 (the size is the record's, so no HEAD first)."""
        from ..storage.s3 import S3Store

        if isinstance(self.store, S3Store):
            with self.store.translated("read", key), self.store.stream_range(key, size, probe=True) as chunks:
                return b"".join(chunks)
        local = self.store.local_path(key)
        if local is not None:
            with open(local, "rb") as f:
                return f.read(size + 1)
        return self.store.read_bytes(key)

    async def _record(self, request: Request) -> ModelMetadata:
        name, version = request.path_params["name"], request.path_params["version"]
        record: ModelMetadata = await self.api.call(
            request, self.api.p.get_version, name, None if version == "latest" else version
        )
        if record.artifact is None:
            raise IntegrityError(f"model '{record.model_name}' version '{record.version}' has no artifact")
        return record

    async def artifact(self, request: Request) -> Response:
        """A version's artifact bytes (``Range`` requests work on a local store)."""
        record = await self._record(request)
        assert record.artifact is not None
        return await self._send(record.artifact.key, record.artifact.size)

    async def blob(self, request: Request) -> Response:
        """One blob of a native-format version (only the blobs its record lists)."""
        record = await self._record(request)
        assert record.artifact is not None
        sha = request.path_params["sha"]
        sizes = {b[0]: b[1] for b in record.artifact.extra.get("blobs") or () if isinstance(b, list) and len(b) == 2}
        if sha not in sizes:
            raise MetadataError(
                f"blob {sha[:16]!r} is not part of model '{record.model_name}' version '{record.version}'"
            )
        return await self._send(blob_key(sha), int(sizes[sha]))

    async def _send(self, key: str, size: int) -> Response:
        from ..storage.s3 import S3Store

        if isinstance(self.store, S3Store) and self._presigned_get(size):  # bucket -> client directly
            from ..storage.presigned import presign_get

            url = await run_in_threadpool(presign_get, self.store, key, PRESIGNED_GET_SECONDS)
            return RedirectResponse(url, status_code=307, headers={SIZE_HEADER: str(size)})
        local = self.store.local_path(key)
        if local is not None:
            if not local.is_file():
                raise self.store.not_found(key)
            return _LocalFile(local, media_type="application/octet-stream")
        stream_cm = self.store.stream(key)
        chunks = await run_in_threadpool(stream_cm.__enter__)

        def body() -> Any:
            try:
                yield from chunks
            finally:
                stream_cm.__exit__(None, None, None)

        return StreamingResponse(body(), media_type="application/octet-stream", headers={"Content-Length": str(size)})

    # -- native-format blobs ----------------------------------------------------
    async def missing_blobs(self, request: Request) -> Response:
        """Which of ``{"blobs": [[sha, size], ...]}`` the store lacks (to upload before the commit)."""
        from ..blobs import BlobStore
        from .endpoint import read_json

        # The store is shared by every model: its answer says whether anyone stored given
        # bytes, so only a user who could upload them asks (as for PUT /blobs/{sha}).
        self._may_upload(request, None)
        body = await read_json(request)
        wanted = body.get("blobs")
        if wanted is None or not _blob_list(wanted):
            raise MetadataError("blobs must be a list of [sha256, size]")
        missing = await run_in_threadpool(BlobStore(self.store).missing, [(s, n) for s, n in wanted])
        return _json({"missing": missing})

    async def put_blob(self, request: Request) -> Response:
        """Store one blob; its bytes must hash to its name."""
        sha = request.path_params["sha"]
        if not _SHA256.fullmatch(sha):
            raise MetadataError("a blob is named by its SHA-256 (64 hex digits)")
        self._may_upload(request, None)
        size = int(request.headers.get("content-length") or -1)
        if size < 0:
            raise HTTPException(411, "a blob upload needs a Content-Length")
        expected = Expected(sha, size)
        staged = self.store.stage()
        sink = await _receive(request, self.store, staged.tmp_key, expected, self.api.max_upload_bytes)
        try:
            await run_in_threadpool(staged.commit, blob_key(sha))
        except BaseException as exc:
            await run_in_threadpool(sink.abort, exc)
            raise
        return _json({"stored": sha}, 201)


class _LocalFile(FileResponse):
    """A local file's bytes, read :data:`SEND_CHUNK` bytes at a time (``Range`` requests work)."""

    chunk_size = SEND_CHUNK


async def _read_exactly(request: Request, length: int) -> bytes:
    """The request body, which must be ``length`` bytes (its ``Content-Length``); reading stops
    past that, so memory stays bounded by what the headers announced and the server allows."""
    if request.headers.get("content-length") != str(length):
        raise RequestError(f"the body must have a Content-Length of {length} (record and artifact)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > length:
            raise RequestError("the body is longer than its Content-Length")
    if len(body) != length:
        raise RequestError(f"the body ended after {len(body)} of {length} bytes")
    return bytes(body)


def _blake3_record(expected: Expected) -> dict[str, Any] | None:
    """The ``extra["blake3"]`` record of checked digests (as :class:`HashingWriter` records them)."""
    if not expected.fast:
        return None
    record: dict[str, Any] = {"sha256": expected.sha256, "skeleton": expected.skeleton}
    if expected.ranges:
        record["payload"] = expected.payload
        record["ranges"] = [list(r) for r in expected.ranges]
    return record


def _blob_list(value: Any) -> bool:
    """Whether ``value`` is a list of ``[sha256, size]`` pairs."""
    return isinstance(value, list) and all(
        isinstance(b, list) and len(b) == 2 and isinstance(b[0], str) and _SHA256.fullmatch(b[0]) and type(b[1]) is int
        for b in value
    )


def _bundle(found: dict[str, Any], data: bytes | None) -> Response:
    """``found`` as JSON and, given ``data``, the artifact's bytes after it (its length in
    :data:`RECORD_LENGTH_HEADER`): the answer of the one-request loads."""
    from .endpoint import json_response

    head = bytes(json_response(found).body)
    if data is None:
        return Response(head, media_type="application/json")
    return Response(head + data, media_type=BUNDLE_TYPE, headers={RECORD_LENGTH_HEADER: str(len(head))})


def _json(data: Any, status: int = 200) -> Response:
    from .endpoint import json_response

    return json_response(data, status)


def transfer_endpoints(api: Api) -> list[Endpoint]:
    """The routes that upload and download artifacts."""
    from .endpoint import Endpoint

    t = Transfers(api)
    api.transfers = t  # type: ignore[attr-defined]
    octets = "application/octet-stream"
    expected = (EXPECTED_HEADER + "!",)
    planned = ("version", "extension", "overwrite:boolean")  # what a plan needs besides the model
    return [
        Endpoint(
            "POST",
            "/uploads",
            t.upload,
            "Stage an artifact's bytes (streamed); answers an upload id and a plan",
            query=("model", *planned),
            headers=expected,
            stream=octets,
            success=(201,),
        ),
        Endpoint(
            "POST",
            "/uploads/presigned",
            t.upload_presigned,
            "Plan an upload straight to S3 (S3 stores only)",
            body=("size:integer!", "sha256!", "part_size:integer!", "part_sha256s:array!", "blake3", "model", *planned),
            success=(201,),
        ),
        Endpoint(
            "POST",
            "/uploads/parts",
            t.upload_parts,
            "Claim a version and start an upload straight to S3 whose parts are signed one by one (S3 stores only)",
            body=("model!", "part_size:integer", "size:integer", "sha256", "blake3", *planned),
            success=(201,),
        ),
        Endpoint(
            "POST",
            "/uploads/{upload}/parts",
            t.sign_part,
            "The presigned URL of one part of an upload in parts, signed with its declared SHA-256",
            body=("number:integer!", "size:integer!", "sha256!"),
            success=(201,),
        ),
        Endpoint("DELETE", "/uploads/{upload}", t.discard, "Drop a pending upload"),
        Endpoint(
            "GET",
            "/models/{name}/plan",
            t.plan,
            "The version and artifact key a save would get now",
            query=("extension!", "version", "overwrite:boolean"),
        ),
        Endpoint(
            "POST",
            "/models/{name}/commit",
            t.commit,
            "Commit an upload as a version, with the client's signature",
            body=("upload!", "record:object!", "overwrite:boolean", "auto_version:boolean"),
            success=(201,),
        ),
        Endpoint(
            "POST",
            "/models/{name}/save",
            t.save,
            "Save a small artifact with its signed record in one request: the JSON of the record "
            "(its length in X-Modelkeep-Record-Length), then the bytes",
            hinted=True,
            headers=(*expected, RECORD_LENGTH_HEADER + ":integer!"),
            stream=octets,
            success=(201, 202),
        ),
        Endpoint(
            "GET",
            "/models/{name}/versions/{version}/load",
            t.load,
            "A version's record, and its artifact if small",
            hinted=True,
            query=("alias",),
            returns=("application/json", BUNDLE_TYPE),
        ),
        Endpoint(
            "GET",
            "/models/{name}/aliases/{alias}/load",
            t.load_alias,
            "What .../state answers (an alias's signed move, its record, later signed moves), and the "
            "artifact if small",
            hinted=True,
            returns=("application/json", BUNDLE_TYPE),
        ),
        Endpoint(
            "GET",
            "/models/{name}/versions/{version}/artifact",
            t.artifact,
            "A version's artifact bytes (or a redirect to a presigned URL)",
            success=(200, 307),
            returns=(octets,),
        ),
        Endpoint(
            "GET",
            "/models/{name}/versions/{version}/blobs/{sha}",
            t.blob,
            "One blob of a native-format version",
            returns=(octets,),
        ),
        Endpoint("POST", "/blobs/missing", t.missing_blobs, "Which blobs the store lacks", body=("blobs:array!",)),
        Endpoint(
            "PUT",
            "/blobs/{sha}",
            t.put_blob,
            "Store one blob (its bytes must hash to its name)",
            stream=octets,
            success=(201,),
        ),
    ]
