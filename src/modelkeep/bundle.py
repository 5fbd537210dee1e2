"""Portable bundles: one file holding versions of a model, verifiable anywhere.

A bundle (``.mkb``) is an uncompressed POSIX tar:

* ``store/<key>``: every file a version has in a registry store, under the same key: the
  artifact (``churn/1.0.0/churn_v1.0.0.joblib``), its sidecar (``..._metadata.json``) and,
  for the ``native`` format, its blobs (``blobs/ab/<sha256>``);
* ``manifest.json``: ``format`` (``"modelkeep-bundle"``), ``format_version``, the versions,
  the SHA-256 and size of every ``store/`` member, and the model's aliases, tags,
  descriptions and history when the registry has them;
* ``manifest.sig`` (when the writer has a key to sign with: the one it signs versions with,
  the per-user ECDSA key by default): ``hmac-sha256:<hex>`` of the exact bytes of
  ``manifest.json``, or ``ecdsa-p256:<fingerprint>:<signature>[:<name>]`` over
  ``modelkeep-bundle-signature-v1``, the signer and those bytes.

Import checks everything before it registers anything:

* member names (no absolute path, no ``..``) and types: regular files only, by their type
  byte (no links, devices, FIFOs or sparse files: :mod:`modelkeep._tarsafe`);
* the manifest's format version (newer is refused) and its signature: invalid is refused,
  a signer the reader does not trust is reported (and refused when signatures are required,
  as is an unsigned bundle);
* that each member's size is the one the manifest declares and lies inside the bundle file,
  and that their total stays under ``max_bundle_bytes`` and the free disk space, before a
  byte is written; then each member is streamed through SHA-256 as it is written, never past
  its declared size; and that no member is missing or extra.

The versions are then copied into the registry as ``modelkeep copy`` does (byte for byte,
checked again in the destination; versions already present with the same bytes are skipped).
The manifest's lifecycle section applies only to the models and versions the bundle carries;
its aliases are reported and moved only with ``with_aliases``.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import __version__, _lifecycle
from ._tarsafe import check_member, check_total, copy_member
from .errors import IntegrityError, MetadataError, ModelKeepError, SignatureError
from .identity import Identity, acting, acting_as
from .layout import blob_key, event_parts, sidecar_bytes, sidecar_key
from .metadata import ModelMetadata, utc_now
from .versions import validate_model_name, validate_version

if TYPE_CHECKING:
    from .keys import PrivateKey
    from .registry import ModelPersistence
    from .signing import Keyring, Verdict

logger = logging.getLogger("modelkeep")

FORMAT = "modelkeep-bundle"
#: Version of the bundle layout this release writes; bundles with a higher one are refused.
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
STORE_PREFIX = "store/"
#: Largest ``manifest.json`` / ``manifest.sig`` read into memory.
MAX_MANIFEST_BYTES = 64 << 20
_BUNDLE_DOMAIN = b"modelkeep-bundle-signature-v1\n"


#: History actions that move aliases: a bundle's are replayed only ``with_aliases``.
ALIAS_ACTIONS = ("alias_set", "alias_delete", "alias_resign")
#: The role a history row a bundle carries needs, when replayed, of whoever imports it through a
#: server (besides the writer role every import needs), by action; alias moves need what moving
#: the alias needs (:meth:`~modelkeep.identity.AccessPolicy.require_alias`).
REPLAY_ROLES = {
    "delete": "maintainer",
    "restore": "maintainer",
    "approve": "maintainer",
    "policy_set": "admin",
    "policy_delete": "admin",
}


class BundleError(IntegrityError):
    """A bundle is malformed, tampered with, or of a newer format; nothing was registered."""


@dataclass
class BundleReport:
    """What :func:`import_bundle` did, as ``(model_name, version)`` pairs.

    ``signature`` is the manifest's verdict (``status``: ``trusted``, ``untrusted``,
    ``unsigned``; ``signer``). ``alias_moves`` lists, per model, each alias the bundle would set
    to another version than the registry's (``{"from": current or None, "to": version}``);
    they are applied only with ``with_aliases`` (``aliases_applied``). ``ignored`` says which
    parts of the bundle's lifecycle section were left out: models or versions it does not carry.
    """

    imported: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    signature_checked: bool = False
    lifecycle_applied: bool = False
    lifecycle: dict[str, Any] = field(default_factory=dict)
    signature: dict[str, Any] = field(default_factory=dict)
    alias_moves: dict[str, dict[str, dict[str, str | None]]] = field(default_factory=dict)
    aliases_applied: bool = False
    ignored: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "imported": [list(v) for v in self.imported],
            "skipped": [list(v) for v in self.skipped],
            "signature_checked": self.signature_checked,
            "signature": self.signature,
            "lifecycle_applied": self.lifecycle_applied,
            "lifecycle": self.lifecycle,
            "alias_moves": self.alias_moves,
            "aliases_applied": self.aliases_applied,
            "ignored": self.ignored,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BundleReport:
        """The report :meth:`to_dict` gave (what a registry server answers an import with)."""

        def pairs(key: str) -> list[tuple[str, str]]:
            return [(str(m), str(v)) for m, v in data.get(key) or []]

        return cls(
            imported=pairs("imported"),
            skipped=pairs("skipped"),
            signature_checked=bool(data.get("signature_checked")),
            lifecycle_applied=bool(data.get("lifecycle_applied")),
            lifecycle=dict(data.get("lifecycle") or {}),
            signature=dict(data.get("signature") or {}),
            alias_moves=dict(data.get("alias_moves") or {}),
            aliases_applied=bool(data.get("aliases_applied")),
            ignored=[str(i) for i in data.get("ignored") or []],
        )

    def __str__(self) -> str:
        status = self.signature.get("status")
        signer = self.signature.get("signer")
        if self.signature_checked:
            signed = f"signature checked ({signer})" if signer else "signature checked"
        elif status == "untrusted":
            signed = f"signed by {signer or 'an unknown key'}, which this reader does not trust: not checked"
        elif status == "unsigned":
            signed = "not signed"
        else:
            signed = "not signed-checked (no key)"
        lines = [f"imported {len(self.imported)} version(s), skipped {len(self.skipped)} already present; {signed}"]
        moves = [
            f"{model} {alias}: {move['from'] or '(unset)'} -> {move['to']}"
            for model, aliases in sorted(self.alias_moves.items())
            for alias, move in sorted(aliases.items())
        ]
        if moves:
            verb = "moved" if self.aliases_applied else "not moved (use --with-aliases to move them)"
            lines.append(f"aliases in the bundle, {verb}:")
            lines += [f"  {m}" for m in moves]
        lines += [f"ignored: {why}" for why in self.ignored]
        return "\n".join(lines)


# -- signing: the one place a bundle's manifest is signed and checked -------------------------
def _ecdsa_payload(data: bytes, fingerprint: str, name: str | None) -> bytes:
    header = json.dumps({"signer": fingerprint, "name": name}, sort_keys=True, separators=(",", ":"))
    return _BUNDLE_DOMAIN + header.encode() + b"\n" + data


def sign_manifest(data: bytes, key: str | bytes | PrivateKey) -> str:
    """The signature of a manifest's exact bytes: HMAC-SHA256 with a shared secret, ECDSA
    P-256 with a :class:`~modelkeep.keys.PrivateKey` (the same key types as versions)."""
    import base64

    from .signing import ECDSA_SCHEME, SCHEME, key_bytes

    if isinstance(key, (str, bytes)):
        return SCHEME + hmac.new(key_bytes(key), data, hashlib.sha256).hexdigest()
    raw = key.sign(_ecdsa_payload(data, key.fingerprint, key.name))
    text = f"{ECDSA_SCHEME}:{key.fingerprint}:{base64.urlsafe_b64encode(raw).decode().rstrip('=')}"
    return f"{text}:{key.name}" if key.name else text


def manifest_verdict(data: bytes, signature: str | None, keyring: Keyring) -> Verdict:
    """Judge a manifest's signature with ``keyring``'s HMAC secret and trusted public keys
    (never raises for a bad signature; see :func:`check_manifest`)."""
    import base64
    import binascii

    from . import signing

    if not signature:
        return signing.Verdict(signing.UNSIGNED, reason="the bundle is not signed")
    signature = signature.strip()
    parsed = signing.parse(signature)
    if parsed.scheme == signing.HMAC_SCHEME:
        if not keyring.hmac_key:
            return signing.Verdict(
                signing.UNTRUSTED, signing.HMAC_SCHEME, reason="signed with a shared HMAC key, and none is configured"
            )
        if hmac.compare_digest(signature, sign_manifest(data, keyring.hmac_key)):
            return signing.Verdict(signing.TRUSTED, signing.HMAC_SCHEME, reason="valid HMAC signature")
        return signing.Verdict(signing.INVALID, signing.HMAC_SCHEME, reason="wrong key, or the manifest was altered")
    if parsed.scheme == signing.ECDSA_SCHEME and parsed.fingerprint:
        fp, name = parsed.fingerprint, parsed.name
        key = keyring.trusted_keys().get(fp)
        if key is None:
            why = f"signed by key {fp[:16]}, which is not trusted"
            return signing.Verdict(signing.UNTRUSTED, signing.ECDSA_SCHEME, fp, name, reason=why)
        try:
            raw = base64.urlsafe_b64decode(parsed.value + "=" * (-len(parsed.value) % 4))
        except (binascii.Error, ValueError):
            raw = b""
        if raw and key.verify(raw, _ecdsa_payload(data, fp, name)):
            return signing.Verdict(
                signing.TRUSTED, signing.ECDSA_SCHEME, fp, key.name or name, reason="valid signature by a trusted key"
            )
        why = "the signature does not match: the manifest was altered"
        return signing.Verdict(signing.INVALID, signing.ECDSA_SCHEME, fp, name, reason=why)
    return signing.Verdict(
        signing.UNTRUSTED, parsed.scheme or None, reason=f"unknown signature scheme {parsed.scheme!r}"
    )


def check_manifest(data: bytes, signature: str | None, keyring: Keyring) -> Verdict:
    """The manifest's verdict; :class:`SignatureError` when the signature is invalid, or when
    ``keyring`` requires signatures and this one is missing or by a key it does not trust."""
    from . import signing

    found = manifest_verdict(data, signature, keyring)
    if found.status == signing.INVALID:
        raise SignatureError(
            f"the bundle's manifest signature does not verify ({found.reason}): wrong key, or the manifest "
            "was altered; nothing was imported"
        )
    if keyring.required and not found.trusted:
        if found.status == signing.UNSIGNED:
            raise SignatureError("the bundle is not signed, but signatures are required; nothing was imported")
        raise SignatureError(
            f"the bundle is not signed by a trusted key ({found.reason}), and signatures are required: add the "
            "signer's public key to trusted_keys; nothing was imported"
        )
    return found


def verify_manifest(data: bytes, signature: str | None, key: str | bytes) -> None:
    """Raise :class:`SignatureError` unless ``signature`` is ``data``'s HMAC under ``key``."""
    from .signing import Keyring

    check_manifest(data, signature, Keyring(hmac_key=key, user_key=False))


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

    Every artifact is re-hashed while it is written and must match its recorded SHA-256,
    and every version's signature is checked as a load checks it. The manifest is signed with
    the key ``persistence`` signs versions with (a private key file, the shared HMAC key, or
    the per-user ECDSA key). The file appears only when complete (written beside it, then renamed).

    ``persistence`` may be a registry server's client (:class:`~modelkeep.api.client.HttpRegistry`):
    then the server builds the bundle and this client checks it with its own keys and signs it.
    """
    if is_remote(persistence):
        return Path(persistence.export_bundle(model_name, output, versions=versions, force=force))
    return write_bundle(
        persistence, model_name, output, versions=versions, force=force, signer=persistence.keyring.signer()
    )


def is_remote(persistence: Any) -> bool:
    """Whether ``persistence`` is a registry server's client (which has no index or store here:
    :attr:`~modelkeep.api.client.HttpRegistry.is_remote`; asked by name, as the client's module
    imports this one)."""
    return getattr(type(persistence), "is_remote", False) is True


def refuse_existing(output: str | os.PathLike[str], force: bool) -> Path:
    """``output`` as a path; :class:`VersionExistsError` when it exists and ``force`` is not set."""
    out = Path(output)
    if out.exists() and not force:
        from .errors import VersionExistsError

        raise VersionExistsError(f"output file {str(out)!r} already exists; use force to replace it")
    return out


def write_bundle(
    persistence: ModelPersistence,
    model_name: str,
    output: str | os.PathLike[str],
    *,
    versions: list[str] | None = None,
    force: bool = False,
    signer: str | bytes | PrivateKey | None = None,
) -> Path:
    """:func:`export_bundle` with the manifest signed by ``signer`` (``None``: left unsigned, what
    a registry server sends: its client checks the bundle and signs it with its own key)."""
    out = refuse_existing(output, force)
    model_name = validate_model_name(model_name)
    if versions is None:
        records = persistence.list_version_records(model_name)
    else:
        # A version named explicitly may be in the trash: it travels, and the history trashes it again.
        records = [
            persistence.index.get(model_name, v) or persistence.get_version(model_name, v)
            for v in map(validate_version, versions)
        ]
    for record in records:
        persistence.keyring.check(record)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                manifest = _write_versions(persistence, tar, records)
                data = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
                _add_bytes(tar, MANIFEST, data)
                if signer is not None:
                    _add_bytes(tar, SIGNATURE, sign_manifest(data, signer).encode() + b"\n")
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
    live = set(persistence.index.list_versions(name)) if name else set()
    versions = [r.version for r in records if r.version in live]  # lifecycle getters refuse trashed ones
    if name:  # the model's history as event files, replayed by the import (modelkeep.eventlog)
        from .eventlog import key_of, render

        for event in persistence.index.history_rows(name):
            member = STORE_PREFIX + key_of(event)
            files[member] = _add_bytes(tar, member, render(event, persistence.keyring))
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
def import_bundle(
    persistence: ModelPersistence,
    path: str | os.PathLike[str],
    *,
    with_aliases: bool = False,
    max_bundle_bytes: int | None = None,
) -> BundleReport:
    """Verify the bundle at ``path`` completely, then register its versions in ``persistence``.

    Raises :class:`BundleError` (an :class:`IntegrityError`) or :class:`SignatureError` if
    anything does not check out, before anything is registered; :class:`VersionExistsError`
    if the registry already holds one of the versions with different bytes. Versions present
    with the same bytes are skipped, so importing twice is harmless.

    The manifest's signature is checked with ``persistence``'s keys: an invalid one is refused,
    a signer the reader does not trust is reported in ``signature`` (and refused, as is an
    unsigned bundle, when signatures are required). Nothing is unpacked when the files would
    total more than ``max_bundle_bytes`` (default: no limit but the bundle's own size and the
    free disk space).

    Tags and descriptions in the bundle are applied to the models and versions it carries,
    never to others; its aliases are listed in ``alias_moves`` and moved only with
    ``with_aliases``.

    ``persistence`` may be a registry server's client: then this client checks the manifest's
    signature with its own keys, and the server runs every other check before it registers anything.
    """
    if is_remote(persistence):
        return persistence.import_bundle(path, with_aliases=with_aliases, max_bundle_bytes=max_bundle_bytes)
    return import_checked(persistence, path, with_aliases=with_aliases, max_bundle_bytes=max_bundle_bytes)


def import_checked(
    persistence: ModelPersistence,
    path: str | os.PathLike[str],
    *,
    with_aliases: bool = False,
    max_bundle_bytes: int | None = None,
    allow_models: Callable[[list[str]], None] | None = None,
) -> BundleReport:
    """:func:`import_bundle` into a local registry; ``allow_models`` is called with the model names
    the manifest lists, once its signature is checked and before a byte is unpacked (a server
    refuses there a bundle carrying a model the user may not write).

    When an identity acts, what replaying the bundle would change is checked against its roles
    before anything is registered (:func:`_check_replay_roles`)."""
    from .copying import copy_registry

    local = type(persistence)  # the staging registry is a local one too (registry.py imports this module)
    report = BundleReport()
    with tempfile.TemporaryDirectory(prefix="modelkeep-bundle-") as tmp:
        manifest, verdict = _unpack_verified(
            Path(path), Path(tmp) / "store", persistence.keyring, max_bundle_bytes, allow_models
        )
        report.signature = {**verdict.to_dict(), "signer": verdict.signer}
        report.signature_checked = verdict.trusted
        names = sorted({str(v["model_name"]) for v in manifest["versions"]})
        index = Path(tmp) / "index"
        index.mkdir()
        # A private SQLite index named outright: MODELKEEP_REGISTRY_URL / MODELKEEP_TOKEN (the
        # destination's, perhaps a team database or a registry server) must not reach it, or the
        # reindex below would rebuild the team's shared index from this bundle.
        scratch = f"sqlite:///{(index / 'registry.db').resolve()}"
        with local(Path(tmp) / "store", registry_url=scratch, token="") as staging:
            # The staging registry is this import's own scratch: whoever imports owns it (a server's
            # user has only the roles it was given on the destination, checked by the copy below).
            who = acting()
            with acting_as(None if who is None else Identity(who.name, "admin")):
                if staging.reindex() != len(manifest["versions"]):
                    raise BundleError("the bundle's sidecar files do not describe the versions its manifest lists")
                _check_records(staging, manifest)
            carried = {parts[2] for m in manifest["files"] if (parts := event_parts(m[len(STORE_PREFIX) :]))}
            if persistence._who() is not None:  # an identity acts: its roles bound what the history does
                replayed = [
                    e
                    for name in names
                    for e in staging.index.history_rows(name)
                    if e.event_id in carried and (with_aliases or e.row["action"] not in ALIAS_ACTIONS)
                ]
                _check_replay_roles(persistence, manifest, replayed, with_aliases=with_aliases)
            current = {name: persistence.get_aliases(name) for name in names if _has_model(persistence, name)}
            copied = copy_registry(
                staging, persistence, models=names, with_aliases=with_aliases, events=carried.__contains__
            )
    report.imported, report.skipped = copied.copied, copied.skipped
    _apply_lifecycle(persistence, manifest, report, with_aliases=with_aliases, current=current)
    _record_import(persistence, names, report)
    logger.info("imported bundle %s: %s", path, report)
    return report


def _check_replay_roles(
    persistence: ModelPersistence, manifest: dict[str, Any], replayed: list[Any], *, with_aliases: bool
) -> None:
    """Refuse (:class:`PermissionDeniedError`) an import whose replayed history rows or lifecycle
    section would do what the acting identity may not: move an alias (as moving it needs: a
    protected one needs an admin), trash or restore a version (maintainer), change a promotion
    policy (admin). Every import needs the writer role on each model it carries, checked by the copy."""
    who, access = persistence._who(), persistence.access
    for name in sorted({str(v["model_name"]) for v in manifest["versions"]}):
        access.require(who, "writer", "import bundles", name)
    for event in replayed:
        row = event.row
        action, model = str(row["action"]), str(row["model_name"])
        if action in ALIAS_ACTIONS:
            alias = str(row.get("alias") or "")
            access.require_alias(who, alias, f"move alias '{alias}' with a bundle", model)
        elif action in REPLAY_ROLES:
            access.require(who, REPLAY_ROLES[action], f"import a bundle whose history does {action}", model)
    lifecycle = manifest.get("lifecycle") if with_aliases else None
    for model, data in (lifecycle if isinstance(lifecycle, dict) else {}).items():
        aliases = data.get("aliases") if isinstance(data, dict) else None
        for alias in aliases if isinstance(aliases, dict) else {}:
            access.require_alias(who, str(alias), f"move alias '{alias}' with a bundle", str(model))


def _record_import(persistence: ModelPersistence, names: list[str], report: BundleReport) -> None:
    """One ``import`` history row per model the bundle carries, by whoever imported it (the rows
    the bundle carried keep their own actors): the versions it added and skipped, and its signer."""
    from .index.audit import write_history

    with persistence.index._write() as conn:
        for name in names:
            write_history(
                conn,
                "import",
                name,
                after={
                    "imported": sorted(v for m, v in report.imported if m == name),
                    "skipped": sorted(v for m, v in report.skipped if m == name),
                    "signature": report.signature.get("status"),
                    "signer": report.signature.get("signer"),
                },
            )


def _has_model(persistence: ModelPersistence, name: str) -> bool:
    try:
        return name in persistence.list_models()
    except ModelKeepError:  # no registry here yet
        return False


def _apply_lifecycle(
    persistence: ModelPersistence,
    manifest: dict[str, Any],
    report: BundleReport,
    *,
    with_aliases: bool,
    current: dict[str, dict[str, str]],
) -> None:
    """Apply the manifest's lifecycle section to the models and versions the bundle carries only."""
    versions_of: dict[str, set[str]] = {}
    for entry in manifest["versions"]:
        versions_of.setdefault(str(entry["model_name"]), set()).add(str(entry["version"]))
    section = manifest.get("lifecycle") or {}
    if not isinstance(section, dict):
        report.ignored.append("the manifest's lifecycle section is not an object")
        return
    applied = False
    for name, data in sorted(section.items()):
        carried = versions_of.get(str(name))
        if carried is None:
            report.ignored.append(f"lifecycle data for {name!r}, a model the bundle does not carry")
            logger.warning("ignored the bundle's lifecycle data for %r, a model it does not carry", name)
            continue
        try:
            lifecycle = _lifecycle.Lifecycle.from_dict(data)
        except (AttributeError, TypeError, ValueError) as exc:
            report.ignored.append(f"lifecycle data for {name!r}: malformed ({exc})")
            continue
        for version in sorted(
            (set(lifecycle.version_tags) | set(lifecycle.version_descriptions) | set(lifecycle.aliases.values()))
            - carried
        ):
            report.ignored.append(f"lifecycle data for {name} {version}, a version the bundle does not carry")
        lifecycle.version_tags = {v: t for v, t in lifecycle.version_tags.items() if v in carried}
        lifecycle.version_descriptions = {v: d for v, d in lifecycle.version_descriptions.items() if v in carried}
        lifecycle.aliases = {a: v for a, v in lifecycle.aliases.items() if v in carried}
        report.lifecycle[name] = lifecycle.to_dict()
        moves = _lifecycle.alias_moves(persistence, name, lifecycle, carried, current.get(str(name), {}))
        if moves:
            report.alias_moves[name] = {a: {"from": old, "to": new} for a, (old, new) in moves.items()}
        applied = _lifecycle.apply_lifecycle(persistence, name, lifecycle, carried, with_aliases=with_aliases)
        report.aliases_applied = report.aliases_applied or bool(applied and with_aliases and moves)
    report.lifecycle_applied = applied
    if report.alias_moves and not with_aliases:
        listed = [f"{m} {a} -> {x['to']}" for m, moves in sorted(report.alias_moves.items()) for a, x in moves.items()]
        logger.warning(
            "the bundle's aliases were not moved (%s); import with --with-aliases to move them", ", ".join(listed)
        )


def _unpack_verified(
    path: Path,
    dest: Path,
    keyring: Keyring,
    max_bundle_bytes: int | None,
    allow_models: Callable[[list[str]], None] | None = None,
) -> tuple[dict[str, Any], Verdict]:
    """Check and unpack ``path`` into ``dest``; returns the manifest and its signature's verdict."""
    try:
        bundle_size = path.stat().st_size
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
            if member.offset_data + member.size > bundle_size:
                raise BundleError(
                    f"{name} claims {member.size} bytes, more than the bundle file holds: it is truncated "
                    "or crafted; nothing was imported"
                )
            if member.isfile():
                members[name] = member
        if MANIFEST not in members:
            raise BundleError(f"{str(path)!r} has no {MANIFEST}: not a modelkeep bundle")
        data = _read_small(tar, members[MANIFEST])
        signature = _read_small(tar, members[SIGNATURE]).decode("ascii", "replace") if SIGNATURE in members else None
        verdict = check_manifest(data, signature, keyring)
        if signature and not verdict.trusted:
            logger.warning("%s: %s; its signature was not checked", path, verdict.reason)
        manifest = _parse_manifest(data)
        if allow_models is not None:
            allow_models(sorted({str(v["model_name"]) for v in manifest["versions"]}))
        files: dict[str, Any] = manifest["files"]
        expected = set(files) | {MANIFEST} | ({SIGNATURE} if signature is not None else set())
        extra, missing = sorted(set(members) - expected), sorted(set(files) - set(members))
        if extra or missing:
            problem = f"files not in its manifest: {extra[:5]}" if extra else f"files missing: {missing[:5]}"
            raise BundleError(f"the bundle has {problem}; nothing was imported")
        for name, want in sorted(files.items()):
            if not name.startswith(STORE_PREFIX):
                raise BundleError(f"manifest lists {name!r} outside store/; nothing was imported")
            if not isinstance(want, dict) or not isinstance(want.get("size"), int) or want["size"] < 0:
                raise BundleError(f"manifest lists {name!r} without a valid size; nothing was imported")
            if members[name].size != want["size"]:
                raise BundleError(
                    f"{name} holds {members[name].size} bytes, but the bundle's manifest declares {want['size']}: "
                    "the bundle was altered or damaged; nothing was imported"
                )
        limit = bundle_size if max_bundle_bytes is None else min(bundle_size, max_bundle_bytes)
        try:
            check_total((want["size"] for want in files.values()), limit, dest, setting="max_bundle_bytes")
        except IntegrityError as exc:
            raise BundleError(f"{exc}; nothing was imported") from exc
        for name, want in sorted(files.items()):
            _extract_checked(tar, members[name], dest / name[len(STORE_PREFIX) :], want)
    return manifest, verdict


def _check_records(staging: ModelPersistence, manifest: dict[str, Any]) -> None:
    """Every sidecar must name the artifact, digest, size and blobs the manifest lists for it."""
    files: dict[str, Any] = manifest["files"]
    for entry in manifest["versions"]:
        record = staging.index.get(entry["model_name"], entry["version"])  # trashed ones too
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


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if member.size > MAX_MANIFEST_BYTES:
        raise BundleError(f"the bundle's {member.name} is {member.size} bytes, more than {MAX_MANIFEST_BYTES}")
    f = tar.extractfile(member)
    assert f is not None  # a regular file
    with f:
        return f.read(member.size)


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
    """Stream one member to ``target`` through SHA-256, never past the size the manifest
    declares; refuse it unless its digest is the manifest's."""
    target.parent.mkdir(parents=True, exist_ok=True)
    sha = hashlib.sha256()
    size = int(want["size"])
    with contextlib.ExitStack() as stack:
        source = tar.extractfile(member)
        assert source is not None
        stack.enter_context(source)
        out = stack.enter_context(open(target, "wb"))
        try:
            for chunk in copy_member(source, out, size, member.name):
                sha.update(chunk)
        except IntegrityError as exc:
            raise BundleError(f"{exc}; nothing was imported") from exc
    if sha.hexdigest() != want.get("sha256"):
        raise BundleError(
            f"{member.name} does not match the bundle's manifest (SHA-256 {sha.hexdigest()[:16]}..., "
            f"{size} bytes; manifest says {str(want.get('sha256'))[:16]}..., {want.get('size')} bytes): "
            "the bundle was altered or damaged; nothing was imported"
        )


# -- a registry server's client: what it checks itself --------------------------------------
def _listed(tar: tarfile.TarFile, path: Path) -> dict[str, tarfile.TarInfo]:
    """The bundle's regular members by name (unsafe or repeated members refused)."""
    try:
        listed = tar.getmembers()
    except tarfile.TarError as exc:
        raise BundleError(f"{str(path)!r} is damaged (truncated or not a tar file): {exc}") from exc
    members: dict[str, tarfile.TarInfo] = {}
    for member in listed:
        try:
            name = check_member(member)
        except IntegrityError as exc:
            raise BundleError(str(exc)) from exc
        if name in members:
            raise BundleError(f"the bundle holds {name!r} twice")
        if member.isfile():
            members[name] = member
    if MANIFEST not in members:
        raise BundleError(f"{str(path)!r} has no {MANIFEST}: not a modelkeep bundle")
    return members


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:")
    except (OSError, tarfile.TarError) as exc:
        raise BundleError(f"{str(path)!r} is not a modelkeep bundle (not a tar file): {exc}") from exc


def read_manifest(path: str | os.PathLike[str]) -> tuple[dict[str, Any], bytes, str | None]:
    """A bundle's parsed manifest, its exact bytes and its signature (``None``: unsigned); what a
    server's client reads before it sends the bundle (the server checks the rest again)."""
    path = Path(path)
    with _open_tar(path) as tar:
        members = _listed(tar, path)
        data = _read_small(tar, members[MANIFEST])
        signature = _read_small(tar, members[SIGNATURE]).decode("ascii", "replace") if SIGNATURE in members else None
    return _parse_manifest(data), data, signature


def check_received(path: str | os.PathLike[str], keyring: Keyring) -> bytes:
    """Check a bundle a registry server built (unsigned) before this client signs it: every member
    hashes to what the manifest declares, each version's record names those bytes, and each
    record's signature passes ``keyring`` as a load's would (so a server cannot slip in a version
    this client would refuse). Returns the manifest's bytes; :class:`BundleError` or
    :class:`SignatureError` otherwise."""
    path = Path(path)
    with _open_tar(path) as tar:
        members = _listed(tar, path)
        if SIGNATURE in members:
            raise BundleError("the server sent a signed bundle; its client signs bundles itself")
        data = _read_small(tar, members[MANIFEST])
        manifest = _parse_manifest(data)
        files: dict[str, Any] = manifest["files"]
        if set(members) - {MANIFEST} != set(files):
            raise BundleError("the server's bundle holds other files than its manifest lists")
        sidecars = {str(e.get("sidecar")): e for e in manifest["versions"]}
        for name, want in sorted(files.items()):
            member = members[name]
            if not isinstance(want, dict) or member.size != want.get("size"):
                raise BundleError(f"{name}: its size is not the one the server's manifest declares")
            source = tar.extractfile(member)
            assert source is not None  # a regular file
            sha, kept = hashlib.sha256(), bytearray()
            with source:
                while chunk := source.read(1 << 20):
                    sha.update(chunk)
                    if name in sidecars and len(kept) <= MAX_MANIFEST_BYTES:
                        kept += chunk
            if sha.hexdigest() != want.get("sha256"):
                raise BundleError(f"{name} does not match the server's manifest: the bundle was damaged")
            if name in sidecars:
                entry = sidecars[name]
                try:
                    record = ModelMetadata.from_dict(json.loads(bytes(kept)))
                except (ValueError, TypeError, KeyError) as exc:
                    raise BundleError(f"{name} is not a version record: {exc}") from exc
                art = record.artifact
                if (
                    (record.model_name, record.version) != (entry["model_name"], entry["version"])
                    or art is None
                    or STORE_PREFIX + art.key != entry["artifact"]
                    or art.sha256 != entry["sha256"]
                ):
                    raise BundleError(f"{name} does not describe the version the server's manifest lists")
                keyring.check(record)
    return data


def append_signature(path: str | os.PathLike[str], data: bytes, signer: str | bytes | PrivateKey) -> None:
    """Sign the manifest ``data`` of the unsigned bundle at ``path`` with ``signer`` (appended)."""
    with tarfile.open(path, mode="a", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, SIGNATURE, sign_manifest(data, signer).encode() + b"\n")
