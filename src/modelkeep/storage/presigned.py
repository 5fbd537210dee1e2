"""Presigned S3 transfers, server side: the server holds the credentials, clients get URLs.

An upload is planned (:func:`plan_upload`) from what the client declares: the size and the
SHA-256 of the whole file (one ``PUT``) or of each part (a multipart upload). Every URL is
signed *with* its declared ``x-amz-checksum-sha256`` header, so S3 itself refuses bytes that
do not hash to it (``BadDigest``) and a client cannot swap the header. The upload is staged
under the registry's ``.tmp/`` prefix with a staged key's name, so ``gc`` aborts an abandoned
multipart upload and removes an abandoned object like any interrupted save's; or a multipart
upload goes to a version's final key under the version's claim (``final=True``), completed there
with ``If-None-Match: *``, as a direct save's (:class:`.s3.ParallelUpload`).

:func:`complete_upload` lists the parts S3 holds and refuses a missing, extra or resized part
or one whose checksum differs from the plan, completes the upload, and then checks that the
stored parts are those declared: nothing more where the store refused other bytes
(:func:`enforces_checksums`: S3); where it took them but reports, for a completed upload, the
composite SHA-256 of the bytes it holds (:func:`measures_checksums`: moto), that composite must
be the declared parts'; otherwise (or when it is not) the object is read once through the
hashing path (ranged GETs, parts in flight) and the whole file (or, without a declared
whole-file SHA-256, every part) checked against the declaration. A read-back returns the SHA-256
and, given the artifact's payload ranges, the BLAKE3 record a load checks, computed by the
server from the stored bytes. Without one, the whole file's digests are the client's signed
word: no hash of the parts binds them (S3 cannot check a multipart object's whole SHA-256), only
reading every byte could, and every load reads and checks them before parsing a byte.

:func:`presign_get` signs a ``GET`` that honours ``Range``, for
:func:`modelkeep.storage.presigned_client.download_ranges`. The client side (no credentials,
only URLs) is :mod:`.presigned_client`.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import logging
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..errors import ArtifactNotFoundError, ConfigError, IntegrityError, StorageError
from ..layout import TMP_DIR
from .hashing import BackgroundHash, SplitHash, new_hash
from .s3 import MIN_PART_SIZE, S3Store

#: S3's largest part, and largest single ``PUT``.
MAX_PART_SIZE = 5 << 30
#: S3's most parts in one upload.
MAX_PARTS = 10_000
#: A SigV4 presigned URL lives at most seven days.
MAX_EXPIRES = 7 * 24 * 3600
#: Part size when the caller names none.
DEFAULT_PART_SIZE = 64 << 20

logger = logging.getLogger("modelkeep")


@dataclass(frozen=True)
class PartUrl:
    """One ``PUT`` of a plan: bytes ``[start, end)`` of the file go to ``url`` with ``headers``."""

    number: int
    start: int
    end: int
    #: The declared SHA-256 of these bytes (hex); its base64 form is in ``headers``.
    sha256: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class UploadPlan:
    """What a client needs to upload a file straight to the bucket, and what the server checks.

    JSON-able (:meth:`to_json` / :meth:`from_json`). The server keeps its own copy (the plan
    holds the declared digests :func:`complete_upload` checks against): never take a plan
    back from a client."""

    kind: Literal["single", "multipart"]
    #: The staged key, relative to the store's root (under ``.tmp/``).
    key: str
    size: int
    part_size: int
    #: The declared SHA-256 of the whole file (hex), if the client declared it.
    sha256: str | None
    upload_id: str | None
    parts: tuple[PartUrl, ...]
    #: When the URLs stop working (seconds since the epoch).
    expires_at: float

    def to_json(self) -> dict[str, Any]:
        """A dict of JSON types (what a server sends a client)."""
        out = asdict(self)
        out["parts"] = [asdict(p) for p in self.parts]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UploadPlan:
        """The plan :meth:`to_json` wrote; :class:`ConfigError` naming what is wrong otherwise."""
        try:
            parts = tuple(PartUrl(**p) for p in data["parts"])
            plan = cls(**{**data, "parts": parts})
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"not an upload plan: {exc}") from exc
        if plan.kind not in ("single", "multipart"):
            raise ConfigError(f"not an upload plan: kind {plan.kind!r} is neither 'single' nor 'multipart'")
        return plan


@dataclass(frozen=True)
class CompletedUpload:
    """A staged upload checked against its plan: commit ``key`` (a staged key; for a checked
    single ``PUT`` a server-side copy under a new name, which no client holds a URL for) under
    the version's key with ``store.move`` once the version's claim is taken."""

    key: str
    size: int
    #: SHA-256 of the whole file as stored (hex); ``None`` if the bytes were not read back.
    sha256: str | None
    #: SHA-256 of each part as declared (hex); read back and checked one by one only when the
    #: whole file's SHA-256 was not declared (when it was, the stored bytes hashing to it is the
    #: check: they are the file the client declared).
    part_sha256s: list[str]
    #: The BLAKE3 record a load checks (``{"sha256", "skeleton", ["payload", "ranges"]}``),
    #: when the bytes were read back.
    blake3: dict[str, Any] | None = None


def b64_sha256(hex_digest: str) -> str:
    """The base64 form S3's ``x-amz-checksum-sha256`` header takes, of a hex SHA-256."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")


def _hex_sha256(value: str, what: str) -> str:
    try:
        raw = bytes.fromhex(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{what} is not a hex SHA-256: {value!r}") from exc
    if len(raw) != 32:
        raise ConfigError(f"{what} is not a hex SHA-256 (64 hex digits): {value!r}")
    return raw.hex()


def part_ranges(size: int, part_size: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` byte ranges of a file of ``size`` bytes cut in ``part_size`` parts."""
    return [(start, min(size, start + part_size)) for start in range(0, size, part_size)] or [(0, 0)]


async def _presign(fs: Any, method: str, params: dict[str, Any], expires: int) -> str:
    await fs.set_session()
    url: str = await fs.s3.generate_presigned_url(method, Params=params, ExpiresIn=expires)
    return url


def _presigned(store: S3Store, method: str, params: dict[str, Any], expires: int) -> str:
    url = str(store.submit(_presign(store.fs, method, params, expires)).result())
    if "X-Amz-Signature=" not in url:  # SigV2 signs no checksum header and lives past 7 days
        raise ConfigError(
            "presigned URLs need SigV4: open the store with storage_options "
            "{'config_kwargs': {'signature_version': 's3v4'}} (open_store sets it unless anon)"
        )
    return url


def check_s3(store: Any) -> S3Store:
    """``store``, if it is an S3 store (presigned URLs need one); :class:`ConfigError` otherwise."""
    if not isinstance(store, S3Store):
        raise ConfigError(f"presigned transfers need an S3 store, not {store.url}; stream the bytes instead")
    return store


def plan_upload(
    store: S3Store,
    size: int,
    *,
    sha256: str | None = None,
    part_sha256s: Sequence[str] | None = None,
    part_size: int = DEFAULT_PART_SIZE,
    expires: int = 3600,
    staging_key: str | None = None,
    final: bool = False,
) -> UploadPlan:
    """Plan an upload of ``size`` bytes straight to the bucket, staged under ``.tmp/``.

    With ``part_sha256s`` (the SHA-256 of each ``part_size`` slice of the file, hex) it is a
    multipart upload created with ``ChecksumAlgorithm=SHA256``, one presigned ``UploadPart``
    per part carrying that part's checksum; otherwise one presigned ``PUT`` carrying
    ``sha256`` (required then). ``sha256`` is the whole file's; with parts it is optional and
    checked by :func:`complete_upload` when given. ``expires`` (seconds, at most seven days)
    bounds how long the URLs work. ``staging_key`` defaults to a fresh staged key
    (``store.stage()``), whose name ``gc`` reads the upload's age from.

    ``final``: ``staging_key`` is a version's final key, which the caller holds the write claim
    of (a multipart upload only: nothing appears under the key until :func:`complete_upload`,
    which then never writes over an object already there; ``gc`` keeps the upload while the
    claim is live, and aborts it once the claim is stale).
    """
    store = check_s3(store)
    if not isinstance(size, int) or size < 0:
        raise ConfigError(f"upload size must be a whole number of bytes >= 0, not {size!r}")
    _check_expires(expires)
    key = staging_key if staging_key is not None else store.stage().tmp_key
    if final and (staging_key is None or part_sha256s is None or _staged(key)):
        # a single PUT's URL could replace the object after the commit checked it
        raise ConfigError("an upload straight to a final key is a multipart upload to a key outside .tmp/")
    if not final and not _staged(key):
        raise ConfigError(f"an upload is staged under {TMP_DIR}/ (where gc finds it), not at {key!r}")
    whole = _hex_sha256(sha256, "sha256") if sha256 is not None else None
    bucket, path = store.bucket_key(key)
    expires_at = time.time() + expires
    if part_sha256s is None:
        if whole is None:
            raise ConfigError("a single-PUT upload needs the file's sha256 (S3 checks the bytes against it)")
        if size > MAX_PART_SIZE:
            raise ConfigError(f"{size} bytes is over S3's single-PUT limit ({MAX_PART_SIZE}); declare part_sha256s")
        headers = {"x-amz-checksum-sha256": b64_sha256(whole)}
        params: dict[str, Any] = {"Bucket": bucket, "Key": path, "ChecksumSHA256": headers["x-amz-checksum-sha256"]}
        with store.translated("sign an upload to", key):
            url = _presigned(store, "put_object", params, expires)
        part = PartUrl(1, 0, size, whole, url, headers)
        return UploadPlan("single", key, size, max(size, 1), whole, None, (part,), expires_at)
    _check_part_size(part_size)
    ranges = part_ranges(size, part_size)
    if len(ranges) > MAX_PARTS:
        raise ConfigError(f"{len(ranges)} parts is over S3's {MAX_PARTS}; use a larger part_size")
    if len(part_sha256s) != len(ranges):
        raise ConfigError(
            f"{size} bytes in parts of {part_size} make {len(ranges)} parts, "
            f"but {len(part_sha256s)} part_sha256s were declared"
        )
    digests = [_hex_sha256(d, f"part {n} sha256") for n, d in enumerate(part_sha256s, 1)]
    upload_id = _create_multipart(store, key)
    try:
        parts = [
            sign_part(store, key, upload_id, n, start, end, digest, expires)
            for n, ((start, end), digest) in enumerate(zip(ranges, digests, strict=True), 1)
        ]
    except BaseException:
        with contextlib.suppress(Exception):
            store.abort_upload(key, upload_id)
        raise
    return UploadPlan("multipart", key, size, part_size, whole, upload_id, tuple(parts), expires_at)


def _check_part_size(part_size: Any) -> None:
    if not isinstance(part_size, int) or not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise ConfigError(
            f"part_size must be {MIN_PART_SIZE} to {MAX_PART_SIZE} bytes (S3's limits), not {part_size!r}"
        )


def _check_expires(expires: Any) -> None:
    if not isinstance(expires, int) or not 1 <= expires <= MAX_EXPIRES:
        raise ConfigError(f"expires must be 1 to {MAX_EXPIRES} seconds (S3's limit), not {expires!r}")


def _create_multipart(store: S3Store, key: str) -> str:
    """Start a multipart upload to ``key`` whose parts carry SHA-256 checksums; its upload id."""
    bucket, path = store.bucket_key(key)
    with store.translated("start an upload to", key):
        started = store.call("create_multipart_upload", Bucket=bucket, Key=path, ChecksumAlgorithm="SHA256").result()
    return str(started["UploadId"])


def sign_part(
    store: S3Store, key: str, upload_id: str, number: int, start: int, end: int, sha256: str, expires: int
) -> PartUrl:
    """The presigned ``UploadPart`` of part ``number`` (bytes ``[start, end)``) of the multipart
    upload ``upload_id`` to ``key``, signed *with* the part's declared SHA-256 (hex), so S3
    refuses other bytes and the client cannot swap the header."""
    bucket, path = store.bucket_key(key)
    headers = {"x-amz-checksum-sha256": b64_sha256(sha256)}
    params = {
        "Bucket": bucket,
        "Key": path,
        "UploadId": upload_id,
        "PartNumber": number,
        "ChecksumSHA256": headers["x-amz-checksum-sha256"],
    }
    with store.translated("sign an upload to", key):
        return PartUrl(number, start, end, sha256, _presigned(store, "upload_part", params, expires), headers)


def start_parts(store: S3Store, key: str, *, part_size: int = DEFAULT_PART_SIZE, expires: int = 3600) -> UploadPlan:
    """Start a multipart upload straight to the version's final key ``key`` (the caller holds its
    write claim) whose parts are declared one at a time, as the client has them
    (:func:`sign_part` for each, then :func:`declared_plan` at the commit). The plan it returns
    has no part and no size yet: enough to abort it (:func:`abort_upload`)."""
    store = check_s3(store)
    _check_part_size(part_size)
    if _staged(key):
        raise ConfigError("an upload whose parts are declared one by one goes to a version's final key")
    _check_expires(expires)
    upload_id = _create_multipart(store, key)
    return UploadPlan("multipart", key, 0, part_size, None, upload_id, (), time.time() + expires)


def declared_plan(started: UploadPlan, size: int, sha256: str, part_sha256s: dict[int, str]) -> UploadPlan:
    """The plan :func:`complete_upload` checks a :func:`start_parts` upload against, once the
    client says how big the file is: ``part_sha256s`` (part number -> the SHA-256 declared when
    its URL was signed) must hold exactly the parts a file of ``size`` bytes cuts into
    (:class:`IntegrityError` otherwise, nothing completed)."""
    ranges = part_ranges(size, started.part_size)
    if size <= 0 or len(ranges) > MAX_PARTS:
        raise IntegrityError(f"a file of {size} bytes cannot be the upload of {len(part_sha256s)} parts")
    numbers = set(range(1, len(ranges) + 1))
    if set(part_sha256s) != numbers:
        missing, extra = sorted(numbers - set(part_sha256s)), sorted(set(part_sha256s) - numbers)
        raise IntegrityError(
            f"{size} bytes make {len(ranges)} parts of {started.part_size}, but "
            + (f"part(s) {missing} were never declared" if missing else f"part(s) {extra} were declared beyond them")
        )
    parts = tuple(
        PartUrl(n, start, end, part_sha256s[n], "", {"x-amz-checksum-sha256": b64_sha256(part_sha256s[n])})
        for n, (start, end) in enumerate(ranges, 1)
    )
    return dataclasses.replace(started, size=size, sha256=_hex_sha256(sha256, "sha256"), parts=parts)


def _staged(key: str) -> bool:
    """Whether ``key`` is a staged key (under ``.tmp/``), not a version's final key."""
    return key.startswith(TMP_DIR + "/")


def presign_get(store: S3Store, key: str, expires: int = 3600) -> str:
    """A URL that reads ``key`` for ``expires`` seconds (at most seven days), ``Range``
    requests included: the byte source of :func:`.presigned_client.download_ranges`."""
    store = check_s3(store)
    _check_expires(expires)
    bucket, path = store.bucket_key(key)
    with store.translated("sign a download of", key):
        return _presigned(store, "get_object", {"Bucket": bucket, "Key": path}, expires)


def abort_upload(store: S3Store, plan: UploadPlan) -> None:
    """Throw a planned upload away: abort its multipart upload (parts freed) or delete the
    object a single ``PUT`` left. Idempotent; an upload already gone is not an error. An upload
    to a version's final key (``plan_upload(final=True)``) is only aborted: what is under that
    key is removed by the claim's clean-up, which first checks that the claim is still the
    caller's (another writer may own the key once it is not)."""
    store = check_s3(store)
    failed: StorageError | None = None
    if plan.upload_id is not None:
        bucket, path = store.bucket_key(plan.key)
        try:
            with store.translated("abort the upload of", plan.key):
                store.call("abort_multipart_upload", Bucket=bucket, Key=path, UploadId=plan.upload_id).result()
        except ArtifactNotFoundError:
            pass  # completed or aborted already (NoSuchUpload)
        except StorageError as exc:
            failed = exc
    if _staged(plan.key):
        store.delete(plan.key, missing_ok=True)  # a completed upload, or a single PUT, left an object
    if failed is not None:
        raise failed


def list_parts_soon(store: S3Store, plan: UploadPlan) -> Future[Any]:
    """Ask S3 now for the (first page of the) parts of ``plan``'s multipart upload, for a
    :func:`complete_upload` to come (its ``listing``): the request runs while the caller does
    other work before the completion (a claimed commit checks its claim and writes the sidecar),
    and still answers before the completion is sent. Its errors are raised where it is read."""
    return _ask_parts(check_s3(store), plan, 0)


def _ask_parts(store: S3Store, plan: UploadPlan, marker: int) -> Future[Any]:
    """Ask S3 for the page of ``plan``'s parts after part number ``marker``; its answer, to come."""
    bucket, path = store.bucket_key(plan.key)
    future: Future[Any] = store.call(
        "list_parts", Bucket=bucket, Key=path, UploadId=plan.upload_id, PartNumberMarker=marker
    )
    return future


def _listed_parts(store: S3Store, plan: UploadPlan, first: Future[Any] | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    marker = 0
    with store.translated("list the parts of", plan.key):
        while True:
            asked = first if first is not None and marker == 0 else _ask_parts(store, plan, marker)
            page = asked.result()
            out.extend(page.get("Parts", []))
            if not page.get("IsTruncated"):
                return out
            marker = int(page["NextPartNumberMarker"])


def _refuse(store: S3Store, plan: UploadPlan, why: str) -> IntegrityError:
    """Abort the upload, and the error to raise: the bytes are not what was declared."""
    with contextlib.suppress(Exception):
        abort_upload(store, plan)
    return IntegrityError(f"refusing the upload to {store.display_path(plan.key)}: {why}; nothing was committed")


def _check_parts(store: S3Store, plan: UploadPlan, first: Future[Any] | None = None) -> list[dict[str, Any]]:
    """The parts to complete with, after checking S3's listing against the plan (``first``: its
    first page, asked for earlier by :func:`list_parts_soon`)."""
    listed = {int(p["PartNumber"]): p for p in _listed_parts(store, plan, first)}
    planned = {p.number: p for p in plan.parts}
    missing = sorted(set(planned) - set(listed))
    extra = sorted(set(listed) - set(planned))
    if missing:
        raise _refuse(store, plan, f"part(s) {missing} of {len(planned)} were never uploaded")
    if extra:
        raise _refuse(store, plan, f"part(s) {extra} were not in the plan of {len(planned)} parts")
    out = []
    for n, part in sorted(planned.items()):
        got = listed[n]
        if int(got.get("Size", -1)) != part.end - part.start:
            raise _refuse(store, plan, f"part {n} has {got.get('Size')} bytes, declared {part.end - part.start}")
        checksum = got.get("ChecksumSHA256")
        if checksum is not None and checksum != part.headers["x-amz-checksum-sha256"]:
            raise _refuse(store, plan, f"part {n}'s SHA-256 is {checksum}, declared {b64_sha256(part.sha256)}")
        entry = {"PartNumber": n, "ETag": got["ETag"]}
        if checksum is not None:
            entry["ChecksumSHA256"] = checksum
        out.append(entry)
    return out


def check_parts(store: S3Store, plan: UploadPlan) -> None:
    """Refuse (:class:`IntegrityError`, the upload aborted) a multipart upload whose parts, as
    S3 lists them, are not those planned: one missing, added, resized or with another SHA-256.
    Nothing is completed (:func:`complete_upload` checks the same before completing)."""
    _check_parts(check_s3(store), plan)


def complete_upload(
    store: S3Store,
    plan: UploadPlan,
    *,
    verify: bool | None = None,
    ranges: Sequence[Sequence[int]] | None = None,
    listing: Future[Any] | None = None,
) -> CompletedUpload:
    """Check what the client uploaded against ``plan`` (the server's own copy), complete it,
    and return the staged key to commit.

    A multipart upload's parts are listed first: a part missing, added beyond the plan, of
    another size, or with another SHA-256 than declared refuses the upload (aborted). With
    ``verify`` the staged object is then read once, ranged GETs in parallel, and its size and
    the whole file's SHA-256 (or, when none was declared, every part's) must match; ``ranges`` (the
    artifact's payload ranges, from the client's format) add the BLAKE3 record a load
    checks. A mismatch deletes the staged object and raises :class:`IntegrityError`; S3
    failures are :class:`StorageError`. Without ``verify`` the server relies on S3 having
    checked each signed checksum, and no byte passes through it (``sha256`` and ``blake3``
    of the result are then ``None``: record the client's, which every load checks).
    ``verify=None`` (the default) reads back unless :func:`enforces_checksums` found that
    this store refuses mismatched bytes (real S3 does; moto does not), or, for a multipart
    upload, :func:`measures_checksums` found that it reports the composite SHA-256 of the bytes
    it holds and that composite is the declared parts' (moto; one ``HEAD``). A composite that
    differs is read back, which says what differs and refuses it.

    ``listing``: the parts' listing asked for already (:func:`list_parts_soon`, after every part
    was sent), checked here as one asked for now would be; the completion names the ETags it
    lists, so a part sent again since makes S3 refuse the completion (``InvalidPart``).
    """
    store = check_s3(store)
    measured = False
    if verify is None:
        verify = not enforces_checksums(store)
        measured = verify and plan.kind == "multipart" and measures_checksums(store)
    if plan.kind == "multipart":
        parts = _check_parts(store, plan, listing)
        with store.translated("complete the upload of", plan.key):
            # a version's final key: never over an object already there (If-None-Match: *)
            store.finish(
                "complete_multipart_upload",
                plan.key,
                exclusive=not _staged(plan.key),
                UploadId=plan.upload_id,
                MultipartUpload={"Parts": parts},
            )
    else:
        try:
            stored = store.size(plan.key)
        except FileNotFoundError:
            raise _refuse(store, plan, "nothing was uploaded") from None
        if stored != plan.size:
            raise _refuse(store, plan, f"it has {stored} bytes, declared {plan.size}")
    store.fs.invalidate_cache()
    declared = [p.sha256 for p in plan.parts]
    if not verify or (measured and stored_composite(store, plan.key, len(plan.parts)) == composite(declared)):
        # the parts are those declared (S3 refused others, or the store's composite of what it
        # holds says so); plan.sha256 and the BLAKE3 record are the client's word, which every load checks
        return CompletedUpload(plan.key, plan.size, None, declared)
    key = plan.key
    if plan.kind == "single":
        # The client's PUT URL works until it expires: check (and hand on) a server-side copy
        # it has no URL for, or it could replace the bytes between the check and the commit.
        key = store.stage().tmp_key
        store.move(plan.key, key)
    try:
        sha256, stored_parts, blake3 = _read_back(store, key, plan, ranges)
        if plan.sha256 is not None and plan.sha256 != sha256:
            raise IntegrityError(f"its bytes hash to {sha256[:16]}..., declared {plan.sha256[:16]}...")
        for n, (want, got) in enumerate(zip(declared, stored_parts or declared, strict=True), 1):
            if want != got:
                raise IntegrityError(f"part {n}'s bytes hash to {got[:16]}..., declared {want[:16]}...")
    except IntegrityError as exc:
        with contextlib.suppress(Exception):
            store.delete(key, missing_ok=True)
        raise _refuse(store, plan, str(exc)) from None
    return CompletedUpload(key, plan.size, sha256, stored_parts or declared, blake3)


_ENFORCES: weakref.WeakKeyDictionary[S3Store, bool] = weakref.WeakKeyDictionary()
_MEASURES: weakref.WeakKeyDictionary[S3Store, bool] = weakref.WeakKeyDictionary()


def composite(part_sha256s: Sequence[str]) -> str:
    """S3's composite SHA-256 of a multipart object with these parts' SHA-256s (hex): the
    SHA-256 of their raw digests in part order, base64 (without S3's ``-<parts>`` suffix)."""
    joined = b"".join(bytes.fromhex(d) for d in part_sha256s)
    return base64.b64encode(hashlib.sha256(joined).digest()).decode("ascii")


def stored_composite(store: S3Store, key: str, parts: int) -> str | None:
    """The composite SHA-256 ``store`` reports for the completed multipart object ``key`` of
    ``parts`` parts (``HEAD`` with ``ChecksumMode=ENABLED``), or ``None`` when it reports none,
    one of another kind or for another number of parts."""
    bucket, path = store.bucket_key(key)
    with store.translated("read the checksum of", key):
        head = store.call("head_object", Bucket=bucket, Key=path, ChecksumMode="ENABLED").result()
    value = head.get("ChecksumSHA256")
    if not isinstance(value, str) or head.get("ChecksumType", "COMPOSITE") != "COMPOSITE":
        return None
    digest, _, count = value.partition("-")
    if count and count != str(parts):
        return None
    return digest


def measures_checksums(store: S3Store) -> bool:
    """Whether ``store``, which takes presigned parts whose bytes do not match their signed
    ``x-amz-checksum-sha256`` (:func:`enforces_checksums` is false: moto), reports for a completed
    multipart upload the composite SHA-256 of the bytes it holds, not of the checksums it was
    told: then that composite matching the declared parts' is the check :func:`complete_upload`
    makes instead of reading the object back. Probed once per store object with a tiny upload
    under ``.tmp/`` whose part is sent with the wrong checksum (removed), then remembered; any
    failure counts as not measuring (the safe answer: the object is read back)."""
    store = check_s3(store)
    known = _MEASURES.get(store)
    if known is None:
        try:
            known = _probe_composite(store)
        except (OSError, ValueError) as exc:  # StorageError, urllib's errors, ConfigError
            logger.debug("composite checksum probe of %s failed: %s", store.url, exc)
            known = False
        _MEASURES[store] = known
    return known


def enforces_checksums(store: S3Store) -> bool:
    """Whether ``store`` refuses presigned ``PUT``\\ s, single and ``UploadPart``, whose bytes
    do not match their signed ``x-amz-checksum-sha256``, while taking matching ones: probed
    once per store object with two tiny uploads under ``.tmp/`` (removed), then remembered.
    A store that fails the probe in any way counts as not enforcing (the safe answer)."""
    store = check_s3(store)
    known = _ENFORCES.get(store)
    if known is None:
        try:
            known = _probe_single(store) and _probe_part(store)
        except (OSError, ValueError) as exc:  # StorageError, urllib's errors, ConfigError
            logger.debug("checksum probe of %s failed: %s", store.url, exc)
            known = False
        _ENFORCES[store] = known
    return known


def _put_status(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    # urllib would call the body a form (application/x-www-form-urlencoded) otherwise
    request = urllib.request.Request(
        url, data=body, method="PUT", headers={**headers, "Content-Type": "application/octet-stream"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _probe_single(store: S3Store) -> bool:
    key = store.stage().tmp_key
    bucket, path = store.bucket_key(key)
    declared = b64_sha256(hashlib.sha256(b"declared").hexdigest())
    headers = {"x-amz-checksum-sha256": declared}
    url = _presigned(store, "put_object", {"Bucket": bucket, "Key": path, "ChecksumSHA256": declared}, 60)
    try:
        refused = _put_status(url, b"other", headers, store.read_timeout) in (400, 403)
        taken = _put_status(url, b"declared", headers, store.read_timeout) == 200
    finally:
        store.delete(key, missing_ok=True)
    return refused and taken


@contextlib.contextmanager
def _probe_upload(store: S3Store) -> Iterator[tuple[str, str, str, Callable[[], bool]]]:
    """A multipart upload under ``.tmp/`` that declares SHA-256 checksums: its key, the presigned
    URL of its part 1 (signed with the checksum of ``b"declared"``), that header's value, and a
    call that completes the upload with the part the store took (``False`` if it holds none).
    Aborted, and its object removed, on exit."""
    key = store.stage().tmp_key
    bucket, path = store.bucket_key(key)
    started = store.call("create_multipart_upload", Bucket=bucket, Key=path, ChecksumAlgorithm="SHA256").result()
    upload_id = str(started["UploadId"])
    declared = b64_sha256(hashlib.sha256(b"declared").hexdigest())
    params = {"Bucket": bucket, "Key": path, "UploadId": upload_id, "PartNumber": 1, "ChecksumSHA256": declared}

    def complete() -> bool:
        listed = store.call("list_parts", Bucket=bucket, Key=path, UploadId=upload_id).result().get("Parts", [])
        if len(listed) != 1:
            return False
        part = {"PartNumber": 1, "ETag": listed[0]["ETag"]}
        if listed[0].get("ChecksumSHA256") is not None:
            part["ChecksumSHA256"] = listed[0]["ChecksumSHA256"]
        parts = {"Parts": [part]}
        store.call(
            "complete_multipart_upload", Bucket=bucket, Key=path, UploadId=upload_id, MultipartUpload=parts
        ).result()
        return True

    try:
        yield key, _presigned(store, "upload_part", params, 60), declared, complete
    finally:
        with contextlib.suppress(Exception):
            store.abort_upload(key, upload_id)
        with contextlib.suppress(Exception):
            store.delete(key, missing_ok=True)


def _probe_part(store: S3Store) -> bool:
    with _probe_upload(store) as (_key, url, declared, _complete):
        headers = {"x-amz-checksum-sha256": declared}
        refused = _put_status(url, b"other", headers, store.read_timeout) in (400, 403)
        taken = _put_status(url, b"declared", headers, store.read_timeout) == 200
    return refused and taken


def _probe_composite(store: S3Store) -> bool:
    with _probe_upload(store) as (key, url, declared, complete):
        if _put_status(url, b"other", {"x-amz-checksum-sha256": declared}, store.read_timeout) != 200:
            return False  # refused: nothing to measure (the store enforces the checksum)
        return complete() and stored_composite(store, key, 1) == composite([hashlib.sha256(b"other").hexdigest()])


def _read_back(
    store: S3Store, key: str, plan: UploadPlan, ranges: Sequence[Sequence[int]] | None
) -> tuple[str, list[str] | None, dict[str, Any] | None]:
    """Hash the staged object ``key`` as stored: its SHA-256, BLAKE3 split by ``ranges``, and,
    only when the plan declares no whole-file SHA-256, each part's (else ``None``: the whole
    file's digest is the check, and a second SHA-256 pass over every byte would add nothing);
    :class:`IntegrityError` if it is shorter or longer than planned."""
    whole = BackgroundHash("sha256")  # on a helper thread, while this one hashes the rest
    split = SplitHash([tuple(r) for r in ranges]) if ranges is not None else None  # type: ignore[misc]
    by_part = plan.sha256 is None
    bounds = [p.end for p in plan.parts]
    part_hashes: list[str] = []
    current = new_hash("sha256")
    pos = 0
    try:
        with store.stream_range(key, plan.size, probe=True) as chunks:
            for chunk in _exact(chunks, plan.size, store.display_path(key)):
                view = memoryview(chunk)
                whole.update(view)  # bytes: never changed, hashed later
                if split is not None:
                    split.update(view)
                while by_part and view.nbytes:
                    take = min(view.nbytes, bounds[len(part_hashes)] - pos)
                    current.update(view[:take])
                    view, pos = view[take:], pos + take
                    if pos == bounds[len(part_hashes)] and len(part_hashes) < len(bounds) - 1:
                        part_hashes.append(current.hexdigest())
                        current = new_hash("sha256")
        part_hashes.append(current.hexdigest())
        sha256 = whole.hexdigest()
    finally:
        whole.close()
    record: dict[str, Any] | None = None
    if split is not None:
        record = {"sha256": sha256, "skeleton": split.skeleton.hexdigest()}
        if ranges:
            record["payload"] = split.payload.hexdigest()
            record["ranges"] = [list(r) for r in ranges]
    return sha256, part_hashes if by_part else None, record


def _exact(chunks: Iterator[bytes], size: int, where: str) -> Iterator[bytes]:
    """``chunks`` cut at ``size`` bytes; :class:`IntegrityError` if they end before or go past it."""
    got = 0
    for chunk in chunks:
        if got + len(chunk) > size:
            raise IntegrityError(f"{where} is longer than the {size} bytes declared")
        got += len(chunk)
        yield chunk
    if got != size:
        raise IntegrityError(f"{where} has {got} bytes, declared {size}")


__all__ = [
    "DEFAULT_PART_SIZE",
    "MAX_EXPIRES",
    "CompletedUpload",
    "PartUrl",
    "UploadPlan",
    "abort_upload",
    "b64_sha256",
    "check_parts",
    "check_s3",
    "complete_upload",
    "composite",
    "declared_plan",
    "enforces_checksums",
    "list_parts_soon",
    "measures_checksums",
    "part_ranges",
    "plan_upload",
    "presign_get",
    "sign_part",
    "start_parts",
    "stored_composite",
]
