"""Portable bundles: one file holding versions of a model, verifiable anywhere.

A bundle (``.mkb``) is an uncompressed POSIX tar:

* ``store/<key>``: every file a version has in a registry store, under the same key: the
  artifact (``churn/1.0.0/churn_v1.0.0.joblib``), its sidecar (``..._metadata.json``) and,
  for the ``native`` format, its blobs (``blobs/ab/<sha256>``);
* ``manifest.json``: ``format`` (``"modelkeep-bundle"``), ``format_version``, the versions,
  the SHA-256 and size of every ``store/`` member, and the model's aliases, tags,
  descriptions and history when the registry has them;
* ``manifest.sig`` (only when the writer has a signing key): ``hmac-sha256:<hex>`` of the
  exact bytes of ``manifest.json``.

Import checks everything before it registers anything: member names (no absolute path, no
``..``, no links or devices), the manifest's format version (newer is refused), its
signature when the reader has a key (an unsigned bundle is then refused too), every member's
SHA-256 and size against the manifest, and that no member is missing or extra. The versions
are then copied into the registry as ``modelkeep copy`` does (byte for byte, checked again in
the destination; versions already present with the same bytes are skipped).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import logging
import os
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import __version__, _lifecycle
from ._tarsafe import check_member
from .errors import IntegrityError, MetadataError, SignatureError
from .layout import blob_key, sidecar_bytes, sidecar_key
from .metadata import ModelMetadata, utc_now
from .versions import validate_model_name, validate_version

if TYPE_CHECKING:
    from .registry import ModelPersistence

logger = logging.getLogger("modelkeep")

FORMAT = "modelkeep-bundle"
#: Version of the bundle layout this release writes; bundles with a higher one are refused.
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
STORE_PREFIX = "store/"
_CHUNK = 1 << 20


class BundleError(IntegrityError):
    """A bundle is malformed, tampered with, or of a newer format; nothing was registered."""


@dataclass
class BundleReport:
    """What :func:`import_bundle` did, as ``(model_name, version)`` pairs."""

    imported: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    signature_checked: bool = False
    lifecycle_applied: bool = False
    lifecycle: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "imported": [list(v) for v in self.imported],
            "skipped": [list(v) for v in self.skipped],
            "signature_checked": self.signature_checked,
            "lifecycle_applied": self.lifecycle_applied,
            "lifecycle": self.lifecycle,
        }

    def __str__(self) -> str:
        signed = "signature checked" if self.signature_checked else "not signed-checked (no key)"
        return f"imported {len(self.imported)} version(s), skipped {len(self.skipped)} already present; {signed}"


# -- signing: the one place a bundle's manifest is signed and checked -------------------------
def sign_manifest(data: bytes, key: str | bytes) -> str:
    """The signature of a manifest's exact bytes (HMAC-SHA256 today; room for other schemes)."""
    from .signing import SCHEME, key_bytes

    return SCHEME + hmac.new(key_bytes(key), data, hashlib.sha256).hexdigest()


def verify_manifest(data: bytes, signature: str | None, key: str | bytes) -> None:
    """Raise :class:`SignatureError` unless ``signature`` is ``data``'s under ``key``."""
    if not signature:
        raise SignatureError("the bundle is not signed, but a signing key is configured; nothing was imported")
    if not hmac.compare_digest(signature.strip(), sign_manifest(data, key)):
        raise SignatureError(
            "the bundle's manifest signature does not verify: wrong key, or the manifest was altered; "
            "nothing was imported"
        )


# -- export ----------------------------------------------------------------------------------
class _HashingReader(io.RawIOBase):
    """Reads ``size`` bytes from ``raw`` for ``tarfile.addfile`` while hashing them."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data


def export_bundle(
    persistence: ModelPersistence,
    model_name: str,
    output: str | os.PathLike[str],
    *,
    versions: list[str] | None = None,
    force: bool = False,
) -> Path:
    """Write ``model_name``'s versions (all by default) to the bundle file ``output``.

    Every artifact is re-hashed while it is written and must match its recorded SHA-256
    (and, with a signing key, its signature); the bundle is signed when ``persistence`` has
    a signing key. The file appears only when complete (written beside it, then renamed).
    """
    out = Path(output)
    if out.exists() and not force:
        from .errors import VersionExistsError

        raise VersionExistsError(f"output file {str(out)!r} already exists; use force to replace it")
    model_name = validate_model_name(model_name)
    if versions is None:
        records = persistence.list_version_records(model_name)
    else:
        records = [persistence.get_version(model_name, validate_version(v)) for v in versions]
    if persistence.signing_key:
        from . import signing

        for record in records:
            signing.verify(record, persistence.signing_key)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                manifest = _write_versions(persistence, tar, records)
                data = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
                _add_bytes(tar, MANIFEST, data)
                if persistence.signing_key:
                    _add_bytes(tar, SIGNATURE, sign_manifest(data, persistence.signing_key).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("exported %d version(s) of %s to %s", len(records), model_name, out)
    return out


def _write_versions(
    persistence: ModelPersistence, tar: tarfile.TarFile, records: list[ModelMetadata]
) -> dict[str, Any]:
    files: dict[str, dict[str, Any]] = {}
    entries = []
    written_blobs: set[str] = set()
    for record in records:
        art = record.artifact
        if art is None:
            raise IntegrityError(f"model '{record.model_name}' version '{record.version}' has no artifact")
        _add_store_file(persistence, tar, art.key, art.sha256, art.size, files)
        blobs = [str(sha) for sha, _size in art.extra.get("blobs") or []]
        for sha, size in art.extra.get("blobs") or []:
            if str(sha) not in written_blobs:
                _add_store_file(persistence, tar, blob_key(str(sha)), str(sha), int(size), files)
                written_blobs.add(str(sha))
        sidecar = sidecar_key(record.model_name, record.version)
        files[STORE_PREFIX + sidecar] = _add_bytes(tar, STORE_PREFIX + sidecar, sidecar_bytes(record))
        entries.append(
            {
                "model_name": record.model_name,
                "version": record.version,
                "artifact": STORE_PREFIX + art.key,
                "sidecar": STORE_PREFIX + sidecar,
                "blobs": [STORE_PREFIX + blob_key(sha) for sha in blobs],
                "sha256": art.sha256,
            }
        )
    name = records[0].model_name if records else ""
    versions = [r.version for r in records]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": utc_now(),
        "created_by": f"modelkeep {__version__}",
        "versions": entries,
        "files": files,
        "lifecycle": {name: _lifecycle.read_lifecycle(persistence, name, versions).to_dict()} if name else {},
        "history": {name: _lifecycle.read_history(persistence, name)} if name else {},
    }


def _add_store_file(
    persistence: ModelPersistence,
    tar: tarfile.TarFile,
    key: str,
    sha256: str,
    size: int,
    files: dict[str, dict[str, Any]],
) -> None:
    info = tarfile.TarInfo(STORE_PREFIX + key)
    info.size = size
    info.mode = 0o644
    with persistence.store.open_read(key) as raw:
        reader = _HashingReader(raw)
        tar.addfile(info, reader)
    if reader.size != size or reader.sha.hexdigest() != sha256:
        raise IntegrityError(
            f"{persistence.store.display_path(key)} does not match its recorded SHA-256; not exported "
            "(run modelkeep verify)"
        )
    files[info.name] = {"sha256": sha256, "size": size}


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> dict[str, Any]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


# -- import ----------------------------------------------------------------------------------
def import_bundle(persistence: ModelPersistence, path: str | os.PathLike[str]) -> BundleReport:
    """Verify the bundle at ``path`` completely, then register its versions in ``persistence``.

    Raises :class:`BundleError` (an :class:`IntegrityError`) or :class:`SignatureError` if
    anything does not check out, before anything is registered; :class:`VersionExistsError`
    if the registry already holds one of the versions with different bytes. Versions present
    with the same bytes are skipped, so importing twice is harmless. Aliases, tags and
    descriptions are applied when the registry has the lifecycle API.
    """
    from .copying import copy_registry
    from .registry import ModelPersistence

    report = BundleReport()
    with tempfile.TemporaryDirectory(prefix="modelkeep-bundle-") as tmp:
        manifest, report.signature_checked = _unpack_verified(Path(path), Path(tmp) / "store", persistence.signing_key)
        names = sorted({str(v["model_name"]) for v in manifest["versions"]})
        with ModelPersistence(Path(tmp) / "store", registry_path=Path(tmp) / "index") as staging:
            if staging.reindex() != len(manifest["versions"]):
                raise BundleError("the bundle's sidecar files do not describe the versions its manifest lists")
            _check_records(staging, manifest)
            copied = copy_registry(staging, persistence, models=names)
    report.imported, report.skipped = copied.copied, copied.skipped
    versions_of: dict[str, set[str]] = {}
    for entry in manifest["versions"]:
        versions_of.setdefault(str(entry["model_name"]), set()).add(str(entry["version"]))
    for name, data in (manifest.get("lifecycle") or {}).items():
        lifecycle = _lifecycle.Lifecycle.from_dict(data)
        report.lifecycle[name] = lifecycle.to_dict()
        report.lifecycle_applied = _lifecycle.apply_lifecycle(
            persistence, name, lifecycle, versions_of.get(name, set())
        )
    logger.info("imported bundle %s: %s", path, report)
    return report


def _unpack_verified(path: Path, dest: Path, key: str | bytes | None) -> tuple[dict[str, Any], bool]:
    """Check and unpack ``path`` into ``dest``; returns the manifest and whether its signature was checked."""
    try:
        tar = tarfile.open(path, mode="r:")  # noqa: SIM115  (closed by the with below)
    except tarfile.TarError as exc:
        raise BundleError(f"{str(path)!r} is not a modelkeep bundle (not a tar file): {exc}") from exc
    with tar:
        try:
            listed = tar.getmembers()
        except tarfile.TarError as exc:
            raise BundleError(f"{str(path)!r} is damaged (truncated or not a tar file): {exc}") from exc
        members: dict[str, tarfile.TarInfo] = {}
        for member in listed:
            try:
                name = check_member(member)
            except IntegrityError as exc:
                raise BundleError(f"{exc}; nothing was imported") from exc
            if name in members:
                raise BundleError(f"the bundle holds {name!r} twice; nothing was imported")
            if member.isfile():
                members[name] = member
        if MANIFEST not in members:
            raise BundleError(f"{str(path)!r} has no {MANIFEST}: not a modelkeep bundle")
        data = _read(tar, members[MANIFEST])
        signature = _read(tar, members[SIGNATURE]).decode("ascii", "replace") if SIGNATURE in members else None
        if key:
            verify_manifest(data, signature, key)
        elif signature:
            logger.warning("%s is signed, but no signing key is configured: its signature was not checked", path)
        manifest = _parse_manifest(data)
        files: dict[str, Any] = manifest["files"]
        expected = set(files) | {MANIFEST} | ({SIGNATURE} if signature is not None else set())
        extra, missing = sorted(set(members) - expected), sorted(set(files) - set(members))
        if extra or missing:
            problem = f"files not in its manifest: {extra[:5]}" if extra else f"files missing: {missing[:5]}"
            raise BundleError(f"the bundle has {problem}; nothing was imported")
        for name, want in sorted(files.items()):
            if not name.startswith(STORE_PREFIX):
                raise BundleError(f"manifest lists {name!r} outside store/; nothing was imported")
            _extract_checked(tar, members[name], dest / name[len(STORE_PREFIX) :], want)
    return manifest, bool(key)


def _check_records(staging: ModelPersistence, manifest: dict[str, Any]) -> None:
    """Every sidecar must name the artifact, digest, size and blobs the manifest lists for it."""
    files: dict[str, Any] = manifest["files"]
    for entry in manifest["versions"]:
        record = staging.get_metadata(entry["model_name"], entry["version"])
        art = None if record is None else record.artifact
        want = files.get(entry["artifact"], {})
        blobs = sorted(STORE_PREFIX + blob_key(str(sha)) for sha, _ in (art.extra.get("blobs") or [] if art else []))
        if (
            art is None
            or STORE_PREFIX + art.key != entry["artifact"]
            or (art.sha256, art.size) != (want.get("sha256"), want.get("size"))
            or blobs != sorted(entry.get("blobs") or [])
        ):
            raise BundleError(
                f"{entry['model_name']} {entry['version']}: its sidecar does not match the bundle's manifest; "
                "nothing was imported"
            )


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    assert f is not None  # a regular file
    with f:
        return f.read()


def _parse_manifest(data: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise BundleError(f"the bundle's manifest is not JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError("not a modelkeep bundle manifest (format is not 'modelkeep-bundle')")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise BundleError(f"bad bundle format_version {version!r}")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"the bundle has format_version {version}, newer than this modelkeep reads ({FORMAT_VERSION}): "
            "upgrade modelkeep"
        )
    if not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("versions"), list):
        raise BundleError("the bundle's manifest lacks 'files' or 'versions'")
    for entry in manifest["versions"]:
        try:
            validate_model_name(entry["model_name"])
            validate_version(entry["version"])
            if manifest["files"][entry["artifact"]]["sha256"] != entry["sha256"]:
                raise BundleError(f"manifest: {entry['artifact']} has two different digests")
        except (KeyError, TypeError) as exc:
            raise BundleError(f"the bundle's manifest has a malformed version entry: {exc}") from exc
        except MetadataError as exc:  # pragma: no cover - validate_* raise InvalidNameError
            raise BundleError(str(exc)) from exc
    return manifest


def _extract_checked(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, want: dict[str, Any]) -> None:
    """Write one member to ``target``, hashing it; refuse it unless it is what the manifest says."""
    target.parent.mkdir(parents=True, exist_ok=True)
    sha, size = hashlib.sha256(), 0
    with contextlib.ExitStack() as stack:
        source = tar.extractfile(member)
        assert source is not None
        stack.enter_context(source)
        out = stack.enter_context(open(target, "wb"))
        for chunk in _chunks(source):
            sha.update(chunk)
            size += len(chunk)
            out.write(chunk)
    if sha.hexdigest() != want.get("sha256") or size != want.get("size"):
        raise BundleError(
            f"{member.name} does not match the bundle's manifest (SHA-256 {sha.hexdigest()[:16]}..., "
            f"{size} bytes; manifest says {str(want.get('sha256'))[:16]}..., {want.get('size')} bytes): "
            "the bundle was altered or damaged; nothing was imported"
        )


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    while chunk := f.read(_CHUNK):
        yield chunk
