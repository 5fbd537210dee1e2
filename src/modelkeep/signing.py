"""HMAC-SHA256 signatures over each version's manifest.

A digest alone shows that an artifact is the one the index recorded; anyone
who can write the store can change both. A signature made with a key the
writer does not have cannot be forged, so a swapped artifact plus a rewritten
digest is still refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from .errors import SignatureError
from .metadata import ModelMetadata

#: Prefix of every signature string, naming the scheme (room for others later).
SCHEME = "hmac-sha256:"


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


def _key_bytes(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else key


def sign(record: ModelMetadata, key: str | bytes) -> str:
    """The signature of ``record``'s manifest under ``key``."""
    payload = json.dumps(manifest(record), sort_keys=True, separators=(",", ":")).encode()
    return SCHEME + hmac.new(_key_bytes(key), payload, hashlib.sha256).hexdigest()


def verify(record: ModelMetadata, key: str | bytes) -> None:
    """Raise :class:`SignatureError` unless ``record`` carries a valid signature."""
    where = f"model '{record.model_name}' version '{record.version}'"
    if not record.signature:
        raise SignatureError(f"{where} is not signed, but a signing key is configured")
    if not hmac.compare_digest(record.signature, sign(record, key)):
        raise SignatureError(f"signature check failed for {where}: wrong key, or the manifest was altered")
