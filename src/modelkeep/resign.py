"""Re-signing stored versions with the current key (``modelkeep sign``), for key rotation.

A signature vouches for the bytes, so a version is re-signed only when its
current signature verifies under a key this registry trusts and its artifact
still hashes to the recorded digest. Unsigned or untrusted versions are skipped
unless the caller vouches for them (``include_untrusted``). Each version is
rewritten under its write lock: sidecar first, then the index row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .errors import SignatureError
from .versions import validate_model_name, validate_version

if TYPE_CHECKING:
    from .metadata import ModelMetadata
    from .registry import ModelPersistence
    from .signing import Keyring

logger = logging.getLogger("modelkeep")


@dataclass
class ResignReport:
    """What :meth:`ModelPersistence.sign` did: ``(model, version)`` pairs."""

    signer: str = ""
    signed: list[tuple[str, str]] = field(default_factory=list)
    unchanged: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (model, version, reason)

    def to_sign(
        self, keyring: Keyring, record: ModelMetadata, identity: tuple[str, str | None], include_untrusted: bool
    ) -> bool:
        """Whether ``record`` is to be signed again with the key ``identity`` names (``(scheme,
        fingerprint)``); if not, it is noted here: unchanged (that key already vouches for it), or
        skipped (its signature is not trusted, and ``include_untrusted`` is off)."""
        where = (record.model_name, record.version)
        verdict = keyring.verdict(record)
        if verdict.trusted and (verdict.scheme, verdict.fingerprint) == identity:
            self.unchanged.append(where)
            return False
        if not verdict.trusted and not include_untrusted:
            self.skipped.append((*where, f"{verdict.status}: {verdict.reason}"))
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        return {
            "signer": self.signer,
            "signed": [list(v) for v in self.signed],
            "unchanged": [list(v) for v in self.unchanged],
            "skipped": [{"model_name": m, "version": v, "reason": r} for m, v, r in self.skipped],
        }

    def __str__(self) -> str:
        return (
            f"signed {len(self.signed)} version(s) with {self.signer}, {len(self.unchanged)} already signed, "
            f"{len(self.skipped)} skipped"
        )


class _ChangedMeanwhile(Exception):
    """The version was replaced or removed between reading it and reserving it: roll back."""


def resign_versions(
    p: ModelPersistence,
    model_name: str | None = None,
    version: str | None = None,
    *,
    include_untrusted: bool = False,
) -> ResignReport:
    """Re-sign the chosen versions with ``p``'s signing key; see the module docstring."""
    from .layout import sidecar_bytes, sidecar_key
    from .signing import ECDSA_SCHEME, HMAC_SCHEME

    keyring = p.keyring
    key = keyring.signer()
    if key is None:
        raise SignatureError("no signing key: configure signing_key_file or signing_key, or allow the per-user key")
    report = ResignReport(signer="shared HMAC key" if isinstance(key, (str, bytes)) else key.public.label)
    if model_name is None:
        if version is not None:
            raise ValueError("a version needs a model name")
        records = list(p.index.iter_records())
    elif version is None:
        records = p.list_version_records(validate_model_name(model_name))
    else:
        records = [p.get_version(model_name, validate_version(version))]
    identity = (HMAC_SCHEME, None) if isinstance(key, (str, bytes)) else (ECDSA_SCHEME, key.fingerprint)
    for record in records:
        if not report.to_sign(keyring, record, identity, include_untrusted):
            continue
        where = (record.model_name, record.version)
        if record.artifact is None:
            report.skipped.append((*where, "no artifact"))
            continue
        p.store.verify(record.artifact.key, record.artifact.sha256)  # vouch only for intact bytes
        try:
            with p.index.reserve(record.model_name, record.version, overwrite=True) as slot:
                now = slot.previous
                if now is None or now.to_dict() != record.to_dict():  # deleted or replaced meanwhile
                    raise _ChangedMeanwhile  # leaves the reservation without writing anything
                signed = replace(record, signature=keyring.sign(record))
                p.store.write_bytes(sidecar_key(record.model_name, record.version), sidecar_bytes(signed))
                slot.put(signed)
        except _ChangedMeanwhile:
            report.skipped.append((*where, "changed while signing; run again"))
            continue
        report.signed.append(where)
    logger.info("re-signed: %s", report)
    return report


def store_signature(
    p: ModelPersistence,
    model_name: str,
    version: str,
    signed: dict[str, Any],
    signature: str,
    public_key: str | None = None,
) -> ModelMetadata:
    """Store ``signature``, made elsewhere over the manifest ``signed``, as ``version``'s (sidecar
    first, then the index row), only if ``signed`` is the manifest stored now; see
    :meth:`ModelPersistence.store_signature`. Returns the record as stored."""
    from .errors import VersionExistsError
    from .layout import sidecar_bytes, sidecar_key
    from .signing import ECDSA_SCHEME, HMAC_SCHEME, manifest, parse, verdict

    record = p.get_version(validate_model_name(model_name), validate_version(version))
    where = f"model '{record.model_name}' version '{record.version}'"
    if manifest(record) != signed:
        raise VersionExistsError(f"{where} is not the version that was signed (it changed): fetch and sign it again")
    parsed = parse(signature) if isinstance(signature, str) and signature else None
    if parsed is None:
        raise SignatureError(f"no signature to store for {where}")
    if parsed.scheme == ECDSA_SCHEME:
        from .keys import public_key_from_pem

        if not isinstance(public_key, str):
            raise SignatureError("a public-key signature needs the signer's public key")
        key = public_key_from_pem(public_key.encode(), "the signer's public key")
        if not verdict(replace(record, signature=signature), trusted={key.fingerprint: key}).trusted:
            raise SignatureError(f"the signature sent for {where} is not a valid signature of it by the key sent")
    elif parsed.scheme != HMAC_SCHEME:
        raise SignatureError(f"unknown signature scheme {parsed.scheme!r}")
    try:
        with p.index.reserve(record.model_name, record.version, overwrite=True) as slot:
            now = slot.previous
            if now is None or now.to_dict() != record.to_dict():  # deleted or replaced meanwhile
                raise _ChangedMeanwhile
            stored = replace(record, signature=signature)
            p.store.write_bytes(sidecar_key(record.model_name, record.version), sidecar_bytes(stored))
            slot.put(stored)
    except _ChangedMeanwhile:
        raise VersionExistsError(f"{where} changed while it was being signed: fetch and sign it again") from None
    logger.info("stored a signature made elsewhere for %s", where)
    return stored
