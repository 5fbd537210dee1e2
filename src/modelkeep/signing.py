"""Signatures over each version's manifest, and the reader's trust decision.

A digest alone shows that an artifact is the one the index recorded; anyone
who can write the store can change both. A signature made with a key the
writer does not have cannot be forged, so a swapped artifact plus a rewritten
digest is still refused.

Two schemes, named by the signature string's prefix:

* ``hmac-sha256:<hex>``: a shared secret (``signing_key``); whoever verifies can
  also sign. The payload is the manifest's canonical JSON, as in modelkeep 0.1.
* ``ecdsa-p256:<fingerprint>:<base64url DER signature>[:<name>]``: a private key
  signs, and readers verify with public keys only. The payload is
  ``modelkeep-signature-v1`` + the manifest, the key's fingerprint and the name.

:class:`Keyring` holds what one reader/writer has (secret, private key, trusted
public keys) and turns a record into a :class:`Verdict`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import SignatureError
from .metadata import ModelMetadata

if TYPE_CHECKING:
    from .keys import PrivateKey, PublicKey

logger = logging.getLogger("modelkeep")

HMAC_SCHEME = "hmac-sha256"
ECDSA_SCHEME = "ecdsa-p256"
#: Prefix of an HMAC signature string (the only scheme of modelkeep 0.1).
SCHEME = HMAC_SCHEME + ":"
_ECDSA_DOMAIN = b"modelkeep-signature-v1\n"
#: Prefix of what an event signature covers (alias moves, removals), so that no event
#: signature can pass for a version's, or the other way round.
_EVENT_DOMAIN = b"modelkeep-event-v1\n"

#: Verdict statuses.
TRUSTED = "trusted"
"""Signed by a key this reader holds, and the signature verifies."""
UNSIGNED = "unsigned"
"""No signature."""
UNTRUSTED = "untrusted"
"""Signed, but by a key this reader does not hold: treated as unsigned."""
INVALID = "invalid"
"""Signed by a key this reader holds, and the signature does not verify: altered, or the wrong secret."""


def manifest(record: ModelMetadata) -> dict[str, Any]:
    """The signed fields: identity, digests, format, size."""
    art = record.artifact
    if art is None:
        raise SignatureError(f"model '{record.model_name}' version '{record.version}' has no artifact to sign")
    return {
        "model_name": record.model_name,
        "version": record.version,
        "key": art.key,
        "format": art.format,
        "compression": art.compression,
        "size": art.size,
        "sha256": art.sha256,
        "extra": art.extra,
    }


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def key_bytes(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else key


def _where(record: ModelMetadata) -> str:
    return f"model '{record.model_name}' version '{record.version}'"


def _ecdsa_payload(record: ModelMetadata, fingerprint: str, name: str | None) -> bytes:
    return _ECDSA_DOMAIN + _canonical({"manifest": manifest(record), "signer": fingerprint, "name": name})


def sign(record: ModelMetadata, key: str | bytes | PrivateKey) -> str:
    """The signature of ``record``'s manifest: HMAC with a secret, ECDSA with a :class:`PrivateKey`."""
    if isinstance(key, (str, bytes)):
        return SCHEME + hmac.new(key_bytes(key), _canonical(manifest(record)), hashlib.sha256).hexdigest()
    return _ecdsa_text(key, key.sign(_ecdsa_payload(record, key.fingerprint, key.name)))


def _ecdsa_text(key: PrivateKey, raw: bytes) -> str:
    text = f"{ECDSA_SCHEME}:{key.fingerprint}:{base64.urlsafe_b64encode(raw).decode().rstrip('=')}"
    return f"{text}:{key.name}" if key.name else text


def _event_ecdsa_payload(event: dict[str, Any], fingerprint: str, name: str | None) -> bytes:
    return _EVENT_DOMAIN + _canonical({"event": event, "signer": fingerprint, "name": name})


def sign_event(event: dict[str, Any], key: str | bytes | PrivateKey) -> str:
    """The signature of an event (a JSON-able dict such as an alias move), in the same
    schemes as a version's; see :func:`event_verdict`."""
    if isinstance(key, (str, bytes)):
        return SCHEME + hmac.new(key_bytes(key), _EVENT_DOMAIN + _canonical(event), hashlib.sha256).hexdigest()
    return _ecdsa_text(key, key.sign(_event_ecdsa_payload(event, key.fingerprint, key.name)))


@dataclass(frozen=True)
class ParsedSignature:
    """A signature string taken apart (nothing verified yet)."""

    scheme: str
    value: str
    fingerprint: str | None = None
    name: str | None = None


def parse(signature: str) -> ParsedSignature:
    """Split a signature string; an unknown scheme keeps its prefix as ``scheme``."""
    scheme, _, rest = signature.partition(":")
    if scheme == ECDSA_SCHEME:
        fingerprint, _, rest = rest.partition(":")
        value, _, name = rest.partition(":")
        return ParsedSignature(scheme, value, fingerprint.lower(), name or None)
    return ParsedSignature(scheme, rest)


@dataclass(frozen=True)
class Verdict:
    """What a reader concludes about one version's signature.

    ``trusted`` is what the format's ``load`` receives as ``signed``: only then are
    the globals recorded at save trusted. ``fingerprint``/``name`` name the signer
    (for HMAC, ``fingerprint`` is ``None``); ``reason`` says why, for people.
    """

    status: str
    scheme: str | None = None
    fingerprint: str | None = None
    name: str | None = None
    reason: str = ""

    @property
    def trusted(self) -> bool:
        return self.status == TRUSTED

    @property
    def signer(self) -> str | None:
        """``name (fingerprint prefix)``, ``"shared HMAC key"``, or ``None`` when unsigned."""
        if self.scheme == HMAC_SCHEME:
            return "shared HMAC key"
        if self.fingerprint is None:
            return None
        short = self.fingerprint[:16]
        return f"{self.name} ({short})" if self.name else short

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "trusted": self.trusted,
            "scheme": self.scheme,
            "fingerprint": self.fingerprint,
            "name": self.name,
            "reason": self.reason,
        }


def verdict(
    record: ModelMetadata,
    *,
    hmac_key: str | bytes | None = None,
    trusted: dict[str, PublicKey] | None = None,
) -> Verdict:
    """Judge ``record``'s signature against an HMAC secret and/or trusted public keys."""
    return _judge(
        record.signature,
        lambda key: sign(record, key),
        lambda fp, name: _ecdsa_payload(record, fp, name),
        hmac_key=hmac_key,
        trusted=trusted,
    )


def event_verdict(
    signature: str | None,
    event: dict[str, Any],
    *,
    hmac_key: str | bytes | None = None,
    trusted: dict[str, PublicKey] | None = None,
) -> Verdict:
    """Judge an event's ``signature`` (see :func:`sign_event`) as :func:`verdict` judges a version's."""
    return _judge(
        signature,
        lambda key: sign_event(event, key),
        lambda fp, name: _event_ecdsa_payload(event, fp, name),
        hmac_key=hmac_key,
        trusted=trusted,
    )


def _judge(
    sig: str | None,
    hmac_signature: Callable[[str | bytes], str],
    ecdsa_payload: Callable[[str, str | None], bytes],
    *,
    hmac_key: str | bytes | None,
    trusted: dict[str, PublicKey] | None,
) -> Verdict:
    if not sig:
        return Verdict(UNSIGNED, reason="not signed")
    parsed = parse(sig)
    if parsed.scheme == HMAC_SCHEME:
        if not hmac_key:
            return Verdict(UNTRUSTED, HMAC_SCHEME, reason="signed with a shared HMAC key, and none is configured")
        if hmac.compare_digest(sig, hmac_signature(hmac_key)):
            return Verdict(TRUSTED, HMAC_SCHEME, reason="valid HMAC signature")
        return Verdict(INVALID, HMAC_SCHEME, reason="wrong key, or the manifest was altered")
    if parsed.scheme == ECDSA_SCHEME and parsed.fingerprint:
        fp, name = parsed.fingerprint, parsed.name
        key = (trusted or {}).get(fp)
        if key is None:
            return Verdict(UNTRUSTED, ECDSA_SCHEME, fp, name, reason=f"signed by key {fp[:16]}, which is not trusted")
        try:
            raw = base64.urlsafe_b64decode(parsed.value + "=" * (-len(parsed.value) % 4))
        except (binascii.Error, ValueError):
            raw = b""
        if raw and key.verify(raw, ecdsa_payload(fp, name)):
            return Verdict(TRUSTED, ECDSA_SCHEME, fp, key.name or name, reason="valid signature by a trusted key")
        return Verdict(INVALID, ECDSA_SCHEME, fp, name, reason="the signature does not match: the manifest was altered")
    return Verdict(UNTRUSTED, parsed.scheme or None, reason=f"unknown signature scheme {parsed.scheme!r}")


def verify(record: ModelMetadata, key: str | bytes | PublicKey) -> None:
    """Raise :class:`SignatureError` unless ``record`` carries a valid signature by ``key``."""
    where = _where(record)
    if not record.signature:
        raise SignatureError(f"{where} is not signed, but a signing key is configured")
    if isinstance(key, (str, bytes)):
        found = verdict(record, hmac_key=key)
    else:
        found = verdict(record, trusted={key.fingerprint: key})
    if not found.trusted:
        raise SignatureError(f"signature check failed for {where}: {found.reason}")


class Keyring:
    """The keys one :class:`~modelkeep.ModelPersistence` signs and verifies with.

    Signing uses, in order: the private key in ``signing_key_file``, the shared
    ``hmac_key``, or the per-user key (created on first use when ``user_key``).
    A version is trusted when it carries a valid signature by the HMAC key, the
    private key, the per-user key, a key in the per-user ``trusted/`` folder, or a
    key in ``trusted_keys`` (PEM public key files).

    ``required`` (default: on when ``hmac_key`` or ``signing_key_file`` is set) turns
    every version that is not trusted into a :class:`SignatureError` at load. A
    signature by a held key that does not verify is always an error.
    """

    def __init__(
        self,
        *,
        hmac_key: str | bytes | None = None,
        signing_key_file: str | os.PathLike[str] | None = None,
        trusted_keys: list[str] | None = None,
        require_signatures: bool | None = None,
        user_key: bool = True,
    ) -> None:
        from . import keys

        self.hmac_key = hmac_key or None
        self.private: PrivateKey | None = keys.load_private_key(signing_key_file) if signing_key_file else None
        self.trusted_files = [str(t) for t in trusted_keys or []]
        # Configured public keys are read now, so that a bad path is reported when the registry opens.
        self._configured = [keys.load_public_key(path) for path in self.trusted_files]
        self.required = bool(self.hmac_key or self.private) if require_signatures is None else require_signatures
        self.use_user_key = user_key
        self._trusted: dict[str, PublicKey] | None = None
        self._user: PrivateKey | None = None
        self._lock = threading.Lock()

    @property
    def explicit(self) -> bool:
        """Whether a key was configured (rather than the per-user default)."""
        return bool(self.hmac_key or self.private)

    def trusted_keys(self) -> dict[str, PublicKey]:
        """Fingerprint -> public key, for every key whose signatures this reader trusts."""
        with self._lock:
            if self._trusted is None:
                from . import keys

                found: dict[str, PublicKey] = {}
                user = keys.user_key(create=False) if self.use_user_key else None
                extra = keys.trusted_dir_keys() if self.use_user_key else []
                for priv in (self.private, user):
                    if priv is not None:
                        found.setdefault(priv.fingerprint, priv.public)
                for key in [*self._configured, *extra]:
                    found.setdefault(key.fingerprint, key)
                self._trusted = found
            return self._trusted

    def signer(self) -> PrivateKey | str | bytes | None:
        """What :meth:`sign` signs with: a private key, the HMAC secret, or ``None``."""
        if self.private is not None:
            return self.private
        if self.hmac_key:
            return self.hmac_key
        if not self.use_user_key:
            return None
        if self._user is None:
            from . import keys

            try:
                self._user = keys.user_key(create=True)
            except OSError as exc:
                logger.warning(
                    "cannot create the per-user signing key in %s (%s): saving unsigned; set "
                    "MODELKEEP_CONFIG_DIR to a writable folder",
                    keys.config_dir(),
                    exc.strerror or exc,
                )
                self.use_user_key = False
                return None
            with self._lock:
                if self._trusted is not None and self._user is not None:
                    self._trusted.setdefault(self._user.fingerprint, self._user.public)
        return self._user

    def sign(self, record: ModelMetadata) -> str | None:
        """The signature to store with ``record``, or ``None`` when there is nothing to sign with."""
        key = self.signer()
        return None if key is None else sign(record, key)

    def sign_event(self, event: dict[str, Any]) -> str | None:
        """The signature of ``event`` (an alias move, a removal), or ``None`` with nothing to sign with."""
        key = self.signer()
        return None if key is None else sign_event(event, key)

    def event_verdict(self, signature: str | None, event: dict[str, Any]) -> Verdict:
        """Judge an event's signature with the keys held here (never raises)."""
        needs_keys = (signature or "").startswith(ECDSA_SCHEME + ":")
        return event_verdict(
            signature, event, hmac_key=self.hmac_key, trusted=self.trusted_keys() if needs_keys else None
        )

    def verdict(self, record: ModelMetadata) -> Verdict:
        """Judge ``record`` (never raises for a bad signature; see :meth:`check`)."""
        sig = record.signature or ""
        needs_keys = sig.startswith(ECDSA_SCHEME + ":")
        return verdict(record, hmac_key=self.hmac_key, trusted=self.trusted_keys() if needs_keys else None)

    def check(self, record: ModelMetadata) -> Verdict:
        """The verdict, or :class:`SignatureError` when the signature is invalid, or when
        signatures are required and this one is missing or by a key not held here."""
        found = self.verdict(record)
        where = _where(record)
        if found.status == INVALID:
            raise SignatureError(f"signature check failed for {where}: {found.reason}")
        if self.required and not found.trusted:
            if found.status == UNSIGNED:
                raise SignatureError(f"{where} is not signed, but a signing key is configured")
            raise SignatureError(
                f"{where} is not signed by a trusted key ({found.reason}): add the signer's public key "
                "to trusted_keys, or re-sign the version"
            )
        return found


def resolve_keyring(
    *,
    signing_key: str | bytes | None = None,
    signing_key_file: str | os.PathLike[str] | None = None,
    trusted_keys: list[str] | str | None = None,
    require_signatures: bool | str | None = None,
) -> Keyring:
    """The :class:`Keyring` for these settings; each one left ``None`` comes from its
    ``MODELKEEP_*`` variable. ``ModelPersistence()`` and the CLI both resolve keys here."""
    from .config import key_settings

    settings = key_settings(
        signing_key=signing_key if not isinstance(signing_key, bytes) else None,
        signing_key_file=os.fspath(signing_key_file) if signing_key_file is not None else None,
        trusted_keys=trusted_keys,
        require_signatures=require_signatures,
    )
    secret: str | bytes | None = signing_key if isinstance(signing_key, bytes) else None
    if secret is None and settings.signing_key is not None:
        secret = settings.signing_key.get_secret_value()
    return Keyring(
        hmac_key=secret,
        signing_key_file=settings.signing_key_file,
        trusted_keys=settings.trusted_keys,
        require_signatures=settings.require_signatures,
    )
