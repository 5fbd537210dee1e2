"""The client side of artifact transfers: save and load through a registry server.

A save runs the first half of a local save here (:mod:`modelkeep.saving`: validate, describe,
serialize to a scratch file with its digests), uploads the bytes, signs the record with this
client's key for the version and key the server plans, and asks the server to commit it
(:mod:`modelkeep.api.transfers` has the protocol); a small artifact goes with its signed record
in one request. A load reads the record (through an alias, with what its move is judged with),
with a small artifact's bytes in the same response, then
any other bytes through :class:`VersionFiles`, a read-only :class:`~modelkeep.storage.ArtifactStore`
over HTTP, and from there takes the same verified path as a local load: digests checked before anything
is parsed, the signature judged with this client's keys, the client's ``trusted_types``,
quarantine and memory budget, and the local cache of remote artifacts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .. import signing
from ..errors import (
    IntegrityError,
    ModelKeepError,
    SerializationError,
    StorageError,
    UnsafeModelError,
    VersionExistsError,
)
from ..formats import get_format
from ..layout import BLOB_DIR, blob_key
from ..metadata import ModelMetadata, utc_now
from ..storage import ArtifactStore, LocalStore
from ..storage.hashing import BLAKE3_KEY, Expected, no_advance
from ..versions import validate_model_name, validate_version
from .wire import API_PREFIX, no_such_route, transport_error, version_path
from .wire import path_segment as _segment

if TYPE_CHECKING:
    from ..input_signature import InputCheck
    from ..storage.cache import ArtifactCache

logger = logging.getLogger("modelkeep")

#: Bytes read from a local file per chunk of an upload.
UPLOAD_READ = 1 << 20
#: Artifacts from this size up go straight to an S3 store's bucket (smaller ones through the server).
PRESIGNED_MIN = 8 << 20
#: Artifacts up to this size are saved in one request (the server's limit, :data:`.transfers.INLINE_MAX`).
INLINE_MAX = 1 << 20
#: Part size of a presigned multipart upload planned for a whole file (``POST /uploads/presigned``).
PRESIGNED_PART = 16 << 20
#: Part size of an upload in parts, sent as the artifact is serialized (``POST /uploads/parts``): as a
#: direct save's parts, so the first goes out as early and the last (sent once serializing ends) is as short.
STREAMED_PART = 8 << 20
#: Parts of an upload in parts in flight at once (memory: this many parts, and the one being filled).
STREAMED_IN_FLIGHT = 8
#: How many times a save plans and signs again when other writers keep taking its version.
COMMIT_ATTEMPTS = 8


class VersionFiles(ArtifactStore):
    """One version's files on a registry server, as a read-only store: its artifact (under its
    record's key) and, for the native format, its blobs. Reads stream; nothing is kept."""

    shared = True

    def __init__(self, client: Any, record: ModelMetadata, inline: bytes | None = None) -> None:
        assert record.artifact is not None
        self.client = client
        self.record = record
        #: The artifact's bytes as the server sent them with the record (checked like any read).
        self.inline = inline
        self.root = ""
        self.url = f"{client.url}/models/{record.model_name}/{record.version}"
        self._base = f"/models/{_segment(record.model_name)}/versions/{_segment(record.version)}"

    def _path(self, key: str) -> str:
        assert self.record.artifact is not None
        if key == self.record.artifact.key:
            return f"{self._base}/artifact"
        if key.startswith(BLOB_DIR + "/"):
            return f"{self._base}/blobs/{_segment(key.rsplit('/', 1)[-1])}"
        raise self.not_found(key)

    def display_path(self, key: str) -> str:
        return f"{self.client.url}/{key}"

    @contextlib.contextmanager
    def stream(self, key: str) -> Iterator[Iterator[bytes]]:
        """``key``'s bytes: streamed by the server, or, when it redirects to a presigned S3 URL,
        read from the bucket with ranged GETs in parallel (:mod:`modelkeep.storage.presigned_client`)."""
        httpx = _httpx()
        path = self._path(key)
        if self.inline is not None and path.endswith("/artifact"):
            yield iter((self.inline,))
            return
        try:
            with self.client._http.stream("GET", path) as response:
                if response.status_code in (302, 303, 307, 308) and "location" in response.headers:
                    location = str(response.headers["location"])
                elif response.status_code >= 400:
                    response.read()
                    self.client.decode(response)
                    location = ""
                else:
                    location = ""
                    yield self._chunks(response)
            if location:
                from ..storage.presigned_client import download_ranges

                chunks = download_ranges(location, self.size(key), timeout=self.client._read_timeout)
                try:
                    yield chunks
                finally:
                    chunks.close()  # type: ignore[attr-defined]
        except httpx.TransportError as exc:  # timeouts included
            raise transport_error(self.client.url, exc, downloading=True) from None

    @staticmethod
    def _chunks(response: Any) -> Iterator[bytes]:
        # As they arrive: the reader copies them into the artifact's buffer, so gathering them
        # into larger chunks first would only copy every byte once more.
        yield from response.iter_bytes()

    def open_read(self, key: str) -> BinaryIO:
        with self.stream(key) as chunks:
            return io.BytesIO(b"".join(chunks))

    def size(self, key: str) -> int:
        assert self.record.artifact is not None
        if key == self.record.artifact.key:
            return self.record.artifact.size
        for sha, size in self.record.artifact.extra.get("blobs") or ():
            if key == blob_key(str(sha)):
                return int(size)
        raise self.not_found(key)

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ModelKeepError:
            return False
        return True

    def _read_only(self, *_args: Any, **_kwargs: Any) -> Any:
        raise StorageError("a version's files on a registry server are read-only")

    open_write = move = delete = _read_only

    def age_seconds(self, key: str, now: float) -> float | None:
        return None

    def list_keys(self, prefix: str = "") -> list[str]:
        return []


def _httpx() -> Any:
    import httpx

    return httpx


class _Scratch(LocalStore):
    """The client's scratch folder for one save: its files only feed an upload, so they are not
    ``fsync``'ed (a crash loses nothing committed; the folder is removed after the save)."""

    syncs_writes = False  # nor written back early: they may never need the disk

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        from ..storage.local import durable_write

        with durable_write(self.full_path(key), sync=False) as f:
            yield f


class _UntilTaken(io.RawIOBase):
    """The scratch file of a save whose parts go to the server's bucket as it serializes: every
    byte goes to ``sender`` (:class:`~modelkeep.storage.presigned_client.PartSender`), and to the
    file only until the server takes the upload in parts. From then on nothing reads the file (a
    failed part is sent again from its part buffer, and a failed upload fails the save), so the
    rest of the artifact is not written to a local disk, nor read back to be hashed (the digests
    come from the bytes as written). While the server has not answered, and when it declines (a
    folder store, an older server), the file gets every byte: the streamed or whole-file
    upload reads it."""

    def __init__(self, sender: Any) -> None:
        super().__init__()
        self._sender = sender
        self._raw: BinaryIO | None = None
        #: Whether the file holds every byte written.
        self.complete = True

    def around(self, raw: BinaryIO) -> BinaryIO:
        """This file, writing to ``raw`` (:attr:`.StagedArtifact.wrap`)."""
        self._raw = raw
        return self  # type: ignore[return-value]

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        assert self._raw is not None, "written before StagedArtifact.open"
        view = memoryview(data).cast("B")
        self._sender.write(view)
        if self.complete and self._sender.taken:
            self.complete = False
            self._raw.truncate(0)  # its bytes will not be read: let the pages go
        if self.complete:
            written = 0
            while written < view.nbytes:  # an unbuffered file's writes may be partial
                written += self._raw.write(view[written:]) or 0
        return view.nbytes

    def flush(self) -> None:
        if self._raw is not None:
            self._raw.flush()


@dataclasses.dataclass
class _Settings:
    """A client's own save and load settings (arguments, else ``MODELKEEP_*`` variables)."""

    format: Any
    compression: str | None
    compress: Any
    trusted_types: list[str]
    quarantine: str
    quarantine_timeout: float
    quarantine_memory_mb: int | None
    max_load_memory: int | None
    keyring: signing.Keyring
    cache: ArtifactCache | None


class _Screened:
    """What :func:`modelkeep.quarantine.screen` reads of a registry, for a load over HTTP."""

    def __init__(self, settings: _Settings, store: ArtifactStore) -> None:
        self.store = store
        self.quarantine = settings.quarantine
        self.quarantine_timeout = settings.quarantine_timeout
        self.quarantine_memory_mb = settings.quarantine_memory_mb
        self.trusted_types = settings.trusted_types
        self.max_load_memory = settings.max_load_memory


class TransferMixin:
    """Save, load and export for :class:`~modelkeep.api.client.HttpRegistry`."""

    url: str
    options: dict[str, Any]
    _http: Any
    _exchange: Any
    _read_timeout: float

    @property
    def keyring(self) -> signing.Keyring:  # pragma: no cover - HttpRegistry's (a cached property)
        """This client's keys: it signs saves and judges loads with them."""
        raise NotImplementedError

    def request(self, method: str, path: str, **kwargs: Any) -> Any:  # pragma: no cover - HttpRegistry's
        raise NotImplementedError

    def decode(self, response: Any) -> Any:  # pragma: no cover - HttpRegistry's
        raise NotImplementedError

    def get_version(  # pragma: no cover - HttpRegistry's
        self, model_name: str, version: str | None = None, *, alias: str | None = None
    ) -> ModelMetadata:
        raise NotImplementedError

    def _freshness(self) -> Any:  # pragma: no cover - SigningMixin's
        raise NotImplementedError

    def _checked_alias(  # pragma: no cover - SigningMixin's
        self, model_name: str, alias: str, *, version: str | None = None, require: bool = False, found: Any = None
    ) -> tuple[ModelMetadata, Any]:
        raise NotImplementedError

    @cached_property
    def _scratch(self) -> _Scratch:
        """The folder a save serializes its artifact to before sending it (each save a file of its
        own, removed after the save); made once per client, as making and removing a folder per
        save costs more than a small save's request, and removed with the client."""
        import shutil
        import weakref

        folder = tempfile.mkdtemp(prefix="modelkeep-upload-")
        weakref.finalize(self, shutil.rmtree, folder, True)
        return _Scratch(folder)

    @cached_property
    def _next_versions(self) -> dict[str, str]:
        """Model name -> the version this client expects the server to give its next save (the
        one after its last save), so a small save signs for it and goes in one request."""
        return {}

    def _send(self, method: str, path: str, *, missing: str = "_inline_ok", **kwargs: Any) -> Any:
        """One request's response (a lost or silent server raises :class:`StorageError`), or
        ``None`` when the server predates the route (answered before :meth:`decode` is tried; the
        attribute ``missing`` then says so, for the next saves and loads)."""
        response = self._exchange(method, path, **kwargs)
        if no_such_route(response):  # an older server: the older way from now on (two requests, a whole-file plan)
            setattr(self, missing, False)
            return None
        return response

    @cached_property
    def _settings(self) -> _Settings:
        from ..config import persistence_defaults
        from ..formats.budget import parse_size
        from ..storage.cache import open_cache

        o = self.options
        s = persistence_defaults(
            serialization_format=o.get("serialization_format"),
            compress=o.get("compress"),
            trusted_types=o.get("trusted_types"),
            quarantine=o.get("quarantine"),
            quarantine_timeout=o.get("quarantine_timeout"),
            quarantine_memory_mb=o.get("quarantine_memory_mb"),
            max_load_memory=o.get("max_load_memory"),
            cache_max_bytes=o.get("cache_max_bytes"),
        )
        from .. import quarantine as quarantine_mod

        fmt = get_format(s["serialization_format"] or "joblib")
        compress = True if s["compress"] is None else s["compress"]
        cache_max = s["cache_max_bytes"]
        if cache_max is not None and str(cache_max).strip() != "0":
            cache_max = parse_size(cache_max)
        return _Settings(
            format=fmt,
            compression=fmt.normalize_compression(compress),
            compress=compress,
            trusted_types=list(s["trusted_types"] or []),
            quarantine=quarantine_mod.check_mode(s["quarantine"] or "auto"),
            quarantine_timeout=float(s["quarantine_timeout"] or quarantine_mod.DEFAULT_TIMEOUT),
            quarantine_memory_mb=s["quarantine_memory_mb"],
            max_load_memory=None if s["max_load_memory"] is None else parse_size(s["max_load_memory"]),
            keyring=self.keyring,
            cache=open_cache(0 if str(cache_max).strip() == "0" else cache_max),
        )

    @property
    def trusted_types(self) -> list[str]:
        """Extra types a load may construct, beyond the built-in allow-list."""
        return self._settings.trusted_types

    # -- saving -----------------------------------------------------------------
    def save(
        self,
        model: Any,
        model_name: str,
        version: str | None = None,
        *,
        overwrite: bool = False,
        input_example: Any = None,
        training_data: Any = None,
        training_target: Any = None,
        parent: str | None = None,
        resume: bool = False,
        **metadata: Any,
    ) -> str:
        """Save ``model`` as a new version on the server; returns the URL its artifact downloads
        from (``GET`` with this client's token; :meth:`load` is what checks it)."""
        rec = self.save_version(
            model,
            model_name,
            version,
            overwrite=overwrite,
            metadata=metadata,
            input_example=input_example,
            training_data=training_data,
            training_target=training_target,
            parent=parent,
            resume=resume,
        )
        from urllib.parse import quote

        name, version = quote(rec.model_name, safe=""), quote(rec.version, safe="")
        return f"{self.url}{API_PREFIX}/models/{name}/versions/{version}/artifact"

    def save_version(
        self,
        model: Any,
        model_name: str,
        version: str | None = None,
        *,
        overwrite: bool = False,
        serialization_format: str | None = None,
        compress: Any = None,
        metadata: dict[str, Any] | None = None,
        created_at: str | None = None,
        input_example: Any = None,
        training_data: Any = None,
        training_target: Any = None,
        parent: str | None = None,
        resume: bool = False,
        **custom: Any,
    ) -> ModelMetadata:
        """Like :meth:`ModelPersistence.save_version`: serialized and signed here, committed by the
        server as the token's user. ``resume`` is accepted for compatibility; an interrupted upload
        is sent again whole."""
        started = time.perf_counter()
        if custom:
            metadata = {**(metadata or {}), **custom}
        model_name = validate_model_name(model_name)
        if version is not None:
            version = validate_version(version)
        from .. import saving  # saves only: the CLI's reads through a server do not import it

        s = self._settings
        fmt, compression = saving.choose_format(
            s.format, s.compression, s.compress, serialization_format, compress, model
        )
        custom_fields = saving.custom_metadata(model, metadata)
        described = saving.describe(
            model,
            model_name,
            input_example,
            training_data,
            training_target,
            parent,
            lambda name, v: self.get_version(name, v),
        )
        with contextlib.ExitStack() as stack:
            scratch, blobs = self._scratch, None
            if fmt.uses_blobs:  # its blobs are this save's alone: a folder of its own, removed after
                from ..blobs import BlobStore

                scratch = _Scratch(stack.enter_context(tempfile.TemporaryDirectory(prefix="modelkeep-upload-")))
                blobs = BlobStore(scratch)
            ext = fmt.extension(compression)
            with scratch.staged() as staged:
                # A large artifact goes to an S3 store's bucket part by part as it is serialized.
                sender = None if blobs is not None else self._part_sender(model_name, version, overwrite, ext)
                spool = None if sender is None else _UntilTaken(sender)
                if spool is not None:
                    staged.wrap = spool.around
                try:
                    draft = saving.serialize(
                        model,
                        model_name,
                        fmt,
                        compression,
                        staged,
                        no_advance,
                        custom=custom_fields,
                        described=described,
                        blobs=blobs,
                        trusted_types=s.trusted_types,
                    )
                    sent = sender.finish() if sender is not None else None
                    if sent is None and spool is not None and not spool.complete:  # the file is not whole
                        raise RuntimeError("modelkeep bug: the server took the upload in parts, but it sent no plan")
                except BaseException:
                    if sender is not None:
                        sender.abort()
                    raise
                if blobs is not None:
                    self._upload_blobs(scratch, draft)
                path = scratch.local_path(staged.tmp_key)
                assert path is not None
                record = self._upload_and_commit(path, draft, version, overwrite, created_at, ext, sent)
        # one line per save, as a local registry logs it (the server logs trashing and purging)
        logger.info(
            "saved %s version %s (%d bytes, %s) to %s in %.1f ms",
            record.model_name,
            record.version,
            record.artifact.size if record.artifact is not None else 0,
            fmt.name,
            self.url,
            (time.perf_counter() - started) * 1000,
        )
        return record

    def _upload_blobs(self, scratch: _Scratch, draft: ModelMetadata) -> None:
        """Send the blobs of a native-format save that the server's store lacks."""
        assert draft.artifact is not None
        wanted = [[str(sha), int(size)] for sha, size in draft.artifact.extra.get("blobs") or ()]
        if not wanted:
            return
        missing = self.request("POST", "/blobs/missing", json={"blobs": wanted})["missing"]
        for sha in missing:
            local = scratch.local_path(blob_key(str(sha)))
            if local is None or not local.is_file():
                raise StorageError(f"blob {str(sha)[:16]} was not written by the save")
            with open(local, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                self.request(
                    "PUT",
                    f"/blobs/{sha}",
                    content=_read_chunks(f),
                    headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
                )

    def _part_sender(self, name: str, version: str | None, overwrite: bool, ext: str) -> Any:
        """A :class:`~modelkeep.storage.presigned_client.PartSender` that sends this save's artifact
        to the server's bucket as it is serialized, once it fills a part (``POST /uploads/parts``
        claims the version and starts the upload; ``POST /uploads/{upload}/parts`` signs each part
        with its SHA-256); ``None`` when the server is known to take no upload in parts."""
        if not getattr(self, "_presigned_ok", True) or not getattr(self, "_parts_ok", True):
            return None
        from ..errors import ConfigError
        from ..storage.presigned_client import PartSender

        body = {"model": name, "version": version or "", "overwrite": bool(overwrite), "extension": ext}

        def start() -> dict[str, Any] | None:
            response = self._send(
                "POST", "/uploads/parts", missing="_parts_ok", json={**body, "part_size": STREAMED_PART}
            )
            if response is None:  # an older server: the presigned plan of a whole file (below)
                return None
            try:
                answer: dict[str, Any] = self.decode(response)
            except ConfigError:  # not an S3 store: stream through the server from now on
                self._presigned_ok = False
                return None
            return answer

        def sign(answer: dict[str, Any], number: int, size: int, sha256: str) -> dict[str, Any]:
            part = {"number": number, "size": size, "sha256": sha256}
            signed: dict[str, Any] = self.request("POST", f"/uploads/{answer['upload']}/parts", json=part)
            return signed

        def drop(answer: dict[str, Any]) -> None:
            self.request("DELETE", f"/uploads/{answer['upload']}")

        return PartSender(
            start,
            sign,
            drop,
            STREAMED_PART,
            max_in_flight=STREAMED_IN_FLIGHT,
            timeout=self._read_timeout,
        )

    def _upload_and_commit(
        self,
        path: Path,
        draft: ModelMetadata,
        version: str | None,
        overwrite: bool,
        created_at: str | None,
        ext: str,
        sent: dict[str, Any] | None = None,
    ) -> ModelMetadata:
        """Send the artifact at ``path`` (unless ``sent``: the answer of an upload in parts that
        already sent it) and commit it, signed for the version and key the server plans."""
        from .transfers import EXPECTED_HEADER

        assert draft.artifact is not None
        art = draft.artifact
        name = draft.model_name
        plan_params = {"version": version or "", "overwrite": "1" if overwrite else "", "extension": ext}
        answer = sent
        # one request for a small artifact, unless it is big enough to go to the bucket directly
        if answer is None and art.size <= INLINE_MAX and art.size < PRESIGNED_MIN and getattr(self, "_inline_ok", True):
            one = self._save_inline(path, draft, version, overwrite, created_at, ext)
            if isinstance(one, ModelMetadata):
                return one
            answer = one  # staged, but not under the version signed for: sign again below
        if answer is None and art.size >= PRESIGNED_MIN and getattr(self, "_presigned_ok", True):
            answer = self._upload_presigned(path, art, {"model": name, **plan_params})
        if answer is None:
            expected = {"size": art.size, "sha256": art.sha256, "blake3": art.extra.get(BLAKE3_KEY)}
            with open(path, "rb") as f:
                answer = self.request(
                    "POST",
                    "/uploads",
                    params={"model": name, **plan_params},
                    content=_read_chunks(f),
                    headers={
                        EXPECTED_HEADER: json.dumps(expected),
                        "Content-Length": str(art.size),
                        "Content-Type": "application/octet-stream",
                    },
                )
        upload, plan = answer["upload"], answer["plan"]
        try:
            for _attempt in range(COMMIT_ATTEMPTS):
                record = self._signed(draft, plan["version"], plan["key"])
                body = {
                    "upload": upload,
                    "record": record.to_dict(),
                    "auto_version": version is None,
                    "overwrite": bool(overwrite),
                    "created_at": created_at,
                }
                try:
                    out = self.request("POST", f"/models/{_segment(name)}/commit", json=body)
                except VersionExistsError as exc:
                    if type(exc) is not VersionExistsError or (version is not None and not overwrite):
                        raise
                    plan = self.request("GET", f"/models/{_segment(name)}/plan", params=plan_params)
                    continue
                upload = None
                return self._saved(ModelMetadata.from_dict(out["record"]))
            raise VersionExistsError(
                f"could not save model '{name}': other writers took {COMMIT_ATTEMPTS} versions in a row; save again"
            )
        finally:
            if upload is not None:
                with contextlib.suppress(ModelKeepError):
                    self.request("DELETE", f"/uploads/{upload}")

    def _saved(self, record: ModelMetadata) -> ModelMetadata:
        """Note the version after ``record``'s as the next save's guess; returns ``record``."""
        from ..versions import next_version

        self._next_versions[record.model_name] = next_version(record.version)
        return record

    def _save_inline(
        self, path: Path, draft: ModelMetadata, version: str | None, overwrite: bool, created_at: str | None, ext: str
    ) -> ModelMetadata | dict[str, Any] | None:
        """Save a small artifact in one request, signed for the version and key the server is
        expected to give it. Returns the committed record; or ``{upload, plan}`` when the server
        staged the bytes but plans another version or key (sign again and commit); or ``None``
        when the server has no one-request save."""
        from ..layout import artifact_key
        from ..versions import next_version
        from .transfers import BUNDLE_TYPE, EXPECTED_HEADER, RECORD_LENGTH_HEADER

        assert draft.artifact is not None
        art, name = draft.artifact, draft.model_name
        guess = version or self._next_versions.get(name) or next_version(None)
        record = self._signed(draft, guess, artifact_key(name, guess, ext))
        head = json.dumps(
            {
                "record": record.to_dict(),
                "auto_version": version is None,
                "overwrite": bool(overwrite),
                "created_at": created_at,
                "extension": ext,
            }
        ).encode()
        data = path.read_bytes()
        if len(data) != art.size:
            raise StorageError(f"the serialized artifact changed size while saving ({len(data)} != {art.size} bytes)")
        expected = {"size": art.size, "sha256": art.sha256, "blake3": art.extra.get(BLAKE3_KEY)}
        response = self._send(
            "POST",
            f"/models/{_segment(name)}/save",
            content=head + data,
            headers={
                EXPECTED_HEADER: json.dumps(expected),
                RECORD_LENGTH_HEADER: str(len(head)),
                "Content-Type": BUNDLE_TYPE,
            },
        )
        if response is None:
            return None
        out = self.decode(response)
        if "record" in out:
            return self._saved(ModelMetadata.from_dict(out["record"]))
        return {"upload": out["upload"], "plan": out["plan"]}

    def _fetch(self, name: str, version: str | None, alias: str | None) -> tuple[ModelMetadata, bytes | None]:
        """A version's record and, when the server sends them along, its artifact's bytes
        (unchecked yet: the load checks them as any read) in one request."""
        from .wire import record_from_wire

        response = None
        if getattr(self, "_inline_ok", True):
            path = version_path(name, version) + "/load"
            response = self._send("GET", path, params={"alias": alias} if alias else None)
        if response is None:
            return self.get_version(name, version, alias=alias), None
        found, inline = self._unbundle(response)
        return record_from_wire(found.get("record")), inline

    def _fetch_alias(self, name: str, alias: str) -> tuple[dict[str, Any] | None, bytes | None]:
        """What ``GET .../aliases/{alias}/state`` answers and, when small, the artifact the alias
        points at, in one request (unchecked yet); ``(None, None)`` from an older server."""
        from ..versions import validate_alias

        if not getattr(self, "_alias_load_ok", True):
            return None, None
        path = f"/models/{_segment(validate_model_name(name))}/aliases/{_segment(validate_alias(alias))}/load"
        response = self._send("GET", path, missing="_alias_load_ok")
        return (None, None) if response is None else self._unbundle(response)

    def _unbundle(self, response: Any) -> tuple[dict[str, Any], bytes | None]:
        """The JSON object of a one-request load's answer, and the artifact's bytes after it if any."""
        from .transfers import BUNDLE_TYPE, RECORD_LENGTH_HEADER

        malformed = f"the registry server {self.url} sent a malformed record and artifact"
        if response.status_code == 200 and response.headers.get("content-type", "").startswith(BUNDLE_TYPE):
            content = response.content
            try:
                head = int(response.headers.get(RECORD_LENGTH_HEADER, ""))
                if not 0 < head <= len(content):
                    raise ValueError(head)
                found = json.loads(content[:head])
            except ValueError:
                raise StorageError(malformed) from None
            data: bytes | None = content[head:]
        else:
            found, data = self.decode(response), None
        if not isinstance(found, dict):
            raise StorageError(malformed)
        return found, data

    def _upload_presigned(self, path: Path, art: Any, params: dict[str, str]) -> dict[str, Any] | None:
        """Upload straight to the server's bucket when its store is S3 (the server plans the upload
        and checks it at the commit); ``None`` when the server streams bytes itself."""
        from ..errors import ConfigError
        from ..storage.presigned_client import declare, upload_plan

        declared = declare(path, PRESIGNED_PART, sha256=art.sha256)  # the save hashed the file already
        body = {
            **params,
            "overwrite": bool(params.get("overwrite")),
            "size": declared.size,
            "sha256": declared.sha256,
            "part_size": declared.part_size,
            "part_sha256s": declared.part_sha256s,
            "blake3": art.extra.get(BLAKE3_KEY),
        }
        try:
            answer: dict[str, Any] = self.request("POST", "/uploads/presigned", json=body)
        except ConfigError:  # not an S3 store: stream through the server from now on
            self._presigned_ok = False
            return None
        try:
            upload_plan(answer["presigned"], path, timeout=self._read_timeout)
        except BaseException:
            with contextlib.suppress(ModelKeepError):
                self.request("DELETE", f"/uploads/{answer['upload']}")
            raise
        return answer

    def _signed(self, draft: ModelMetadata, version: str, key: str) -> ModelMetadata:
        assert draft.artifact is not None
        now = utc_now()
        record = dataclasses.replace(
            draft,
            version=version,
            created_at=now,
            updated_at=now,
            artifact=dataclasses.replace(draft.artifact, key=key),
        )
        record.signature = self._settings.keyring.sign(record)
        return record

    def import_file(
        self,
        path: str | os.PathLike[str],
        model_name: str,
        version: str | None = None,
        *,
        overwrite: bool = False,
        serialization_format: str | None = None,
        compress: Any = None,
        metadata: dict[str, Any] | None = None,
        trusted_types: list[str] | None = None,
        trust_file: bool = False,
        created_at: str | None = None,
    ) -> ModelMetadata:
        """Register a model from a local pickle or joblib file on the server (read here under the
        same policy as a local :meth:`ModelPersistence.import_file`)."""
        model_name = validate_model_name(model_name)
        if version is not None:
            version = validate_version(version)
        model = self.read_file(path, trusted_types=trusted_types, trust_file=trust_file)
        return self.save_version(
            model,
            model_name,
            version,
            overwrite=overwrite,
            serialization_format=serialization_format,
            compress=compress,
            metadata=metadata,
            created_at=created_at,
        )

    def read_file(
        self, path: str | os.PathLike[str], *, trusted_types: list[str] | None = None, trust_file: bool = False
    ) -> Any:
        """Read a local pickle or joblib file as :meth:`ModelPersistence.read_file` does."""
        from ..exporting import read_model_file

        return read_model_file(
            path, [*self._settings.trusted_types, *(trusted_types or [])], trust_file, self._settings.max_load_memory
        )

    # -- loading ----------------------------------------------------------------
    def load(
        self,
        model_name: str,
        version: str | None = None,
        return_metadata: bool = False,
        *,
        mmap_mode: str | None = None,
        alias: str | None = None,
        validate: Any = None,
        require_signed_alias: bool = False,
    ) -> Any:
        """Load a version from the server, checked as a local load is: the artifact's digests
        before anything is parsed, the signature with this client's trusted keys (so a server
        that swaps bytes or records cannot pass a model this client trusts), this client's
        ``trusted_types``, quarantine and memory budget. ``mmap_mode`` reads into memory."""
        from ..lifecycle import split_reference
        from ..loading import check_mmap_mode, warn_mmap_ignored

        started = time.perf_counter()
        check_mmap_mode(mmap_mode)
        name, version, alias = split_reference(model_name, version, alias)
        freshness = self._freshness()  # rollback checks with what this user has seen (SigningMixin)
        inline: bytes | None = None
        if alias is not None:  # the alias's move is judged here, with this client's keys (a small
            # artifact comes with what that takes, in one request; checked below as any read)
            found, inline = self._fetch_alias(name, alias)
            record = self._checked_alias(name, alias, version=version, require=require_signed_alias, found=found)[0]
        else:  # one request: the record and, for a small artifact, its bytes (checked below as any read)
            record, inline = self._fetch(name, version, None)
            _check_bound(record, name, version)
        if validate is not None:
            from ..input_signature import InputSchemaError, check

            result = check(record.input_signature, validate)
            if not result.ok:
                raise InputSchemaError(
                    f"input does not fit model '{record.model_name}' version {record.version}: {result}", result
                )
        art = record.artifact
        if art is None or record.damaged:
            raise IntegrityError(f"model '{record.model_name}' version '{record.version}' has no loadable artifact")
        from .. import environment
        from .. import quarantine as quarantine_mod

        s = self._settings
        verdict = s.keyring.check(record)
        if alias is None and version is None:
            freshness.check_latest(record)
        fmt = get_format(art.format)
        fmt.check_protocol(art.extra, f"model '{record.model_name}' version '{record.version}'")
        files = VersionFiles(self, record, inline)
        options: dict[str, Any] = {
            "mmap_mode": None,
            "extra": art.extra,
            "trusted": s.trusted_types,
            "signed": verdict.trusted,
            "max_load_memory": s.max_load_memory,
            "artifact_size": art.size,
        }
        if fmt.uses_blobs:
            from ..blobs import BlobStore

            options["blobs"] = BlobStore(files)
        expected = Expected.of(art.sha256, art.size, art.extra)
        warn_mmap_ignored(mmap_mode, fmt, art, False, expected)
        try:
            quarantine_mod.screen(_Screened(s, files), record, verdict)  # type: ignore[arg-type]
            model = self._read_verified(files, fmt, art, expected, options)
        except UnsafeModelError as exc:
            from ..remedies import with_remedy

            raise with_remedy(exc, f"model '{record.model_name}' version '{record.version}'", verdict) from exc
        freshness.note_loaded(record, verdict)
        environment.report(record)
        logger.info(
            "loaded %s version %s (%d bytes) from %s in %.1f ms",
            record.model_name,
            record.version,
            art.size,
            self.url,
            (time.perf_counter() - started) * 1000,
        )
        return (model, record) if return_metadata else model

    def _read_verified(
        self, files: VersionFiles, fmt: Any, art: Any, expected: Expected, options: dict[str, Any]
    ) -> Any:
        """Read the artifact once (from the local cache when it fits), check it, then parse it."""
        cache = self._settings.cache
        store: ArtifactStore = files
        key = art.key
        if cache is not None:
            entry = cache.lookup(art.sha256) or cache.fetch(files, art.key, art.sha256, art.size)
            if entry is not None:
                store, key = cache.store, entry
        try:
            return self._parse(store, key, fmt, art, expected, options)
        except IntegrityError as exc:
            if store is files or cache is None:
                raise
            cache.discard(art.sha256, str(exc))
            return self._parse(files, art.key, fmt, art, expected, options)

    @staticmethod
    def _parse(store: ArtifactStore, key: str, fmt: Any, art: Any, expected: Expected, options: dict[str, Any]) -> Any:
        with store.open_artifact(key, expected) as verified:
            try:
                return fmt.load(verified.file, art.compression, verified=verified, **options)
            except ModelKeepError:
                raise
            except Exception as exc:
                raise SerializationError(f"cannot deserialize the artifact: {exc}") from exc

    def export_file(
        self, model_name: str, version: str | None, output: str | os.PathLike[str], *, force: bool = False
    ) -> Path:
        """Load a version from the server (checked) and write it to a local ``output`` file in the
        format its suffix names, as :meth:`ModelPersistence.export_file` does."""
        from ..exporting import write_export

        return write_export(self, model_name, version, output, force=force)

    def check_input(self, model_name: str, version: str | None, X: Any) -> InputCheck:
        """Check data ``X`` against a version's input signature (only the record is fetched)."""
        from ..input_signature import check

        return check(self.get_version(model_name, version).input_signature, X)


def _check_bound(record: ModelMetadata, model_name: str, version: str | None) -> None:
    """Refuse a record the server answered for another model or version than asked for (its
    signature would verify, as it covers the record's own name and version): what a local
    registry refuses as a replayed row, checked here so that the server's word is not needed."""
    if record.model_name == model_name and (version is None or record.version == version):
        return
    from ..errors import SignatureError

    where = f"model '{model_name}' version '{version or 'latest'}'"
    found = f"{record.model_name} {record.version}"
    if record.signature:
        raise SignatureError(
            f"the server answered {where} with a record signed for {found}: a signed record replayed under "
            "another name or version"
        )
    raise IntegrityError(f"the server answered {where} with a record made for {found}")


def _read_chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(UPLOAD_READ):
        yield chunk
