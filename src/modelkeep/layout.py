"""The store layout: where each file of a registry lives, relative to ``models_dir``.

Every module that names a file in the store asks this one::

    <model>/<version>/<model>_v<version><ext>                 the artifact
    <model>/<version>/<model>_v<version>.r<12 hex><ext>       an overwrite's artifact (a revision)
    <model>/<version>/<model>_v<version>_metadata.json        the sidecar: the record as JSON
    .blobs/<first two hex digits>/<sha256>                    content-addressed buffers (native format)
    .tmp/<time>-<hex>.part                                    staged bytes of a save in progress
    .events/<model>/<seq, 12 digits>-<32 hex>.json            one lifecycle event (a history row)

Keys always use ``/``; the storage backend maps them to paths or object names.
This module does no I/O and imports nothing from modelkeep but the metadata types.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import UnsafeKeyError

if TYPE_CHECKING:
    from .metadata import ModelMetadata

#: Staged files live here until committed; anything left is a crash leftover.
TMP_DIR = ".tmp"
#: Content-addressed blobs of the ``native`` format.
BLOB_DIR = ".blobs"
#: Append-only lifecycle events, one file per history row (see :mod:`modelkeep.eventlog`).
EVENT_DIR = ".events"
SIDECAR_SUFFIX = "_metadata.json"
_EVENT_NAME = re.compile(r"([0-9]{12,19})-([0-9a-f]{32})\.json")
_REVISION = re.compile(r"^\.r[0-9a-f]{12}(?=\.)")
_BLOB_ID = re.compile(r"[0-9a-f]{64}")


def artifact_key(model_name: str, version: str, extension: str) -> str:
    """The artifact of a version: ``<name>/<version>/<name>_v<version><ext>``."""
    return f"{model_name}/{version}/{model_name}_v{version}{extension}"


def revision_key(model_name: str, version: str, extension: str) -> str:
    """A fresh key for an overwrite, beside the usual one: ``<name>/<version>/<name>_v<version>.r<hex><ext>``."""
    return f"{model_name}/{version}/{model_name}_v{version}.r{uuid.uuid4().hex[:12]}{extension}"


def new_artifact_key(
    model_name: str,
    version: str,
    extension: str,
    replaced_key: str | None = None,
    taken: Callable[[str], bool] | None = None,
) -> str:
    """The key a save of ``version`` writes its artifact under: the usual :func:`artifact_key`, or
    a fresh :func:`revision_key` when the row being replaced names the usual one (its bytes are
    never replaced), or when ``taken(key)`` says an object already sits there (an upload straight
    to the key never replaces one)."""
    key = artifact_key(model_name, version, extension)
    if replaced_key == key or (taken is not None and taken(key)):
        return revision_key(model_name, version, extension)
    return key


def artifact_extension(model_name: str, version: str, key: str) -> str:
    """The format suffix of an artifact key (``.joblib``, ``.pkl.gz``), without any revision part."""
    prefix = f"{model_name}/{version}/{model_name}_v{version}"
    tail = key[len(prefix) :] if key.startswith(prefix) else "." + key.rsplit(".", 1)[-1]
    return _REVISION.sub("", tail)  # a revision of a revision gets one suffix, not two


def sidecar_key(model_name: str, version: str) -> str:
    """The sidecar metadata file of a version (what ``reindex`` rebuilds the index from)."""
    return f"{model_name}/{version}/{model_name}_v{version}{SIDECAR_SUFFIX}"


def sidecar_bytes(record: ModelMetadata) -> bytes:
    """The sidecar file's content for ``record``."""
    return json.dumps(record.to_dict(), indent=2, sort_keys=False).encode() + b"\n"


def check_key(key: str) -> str:
    """``key`` if it names a place inside the store, else :class:`UnsafeKeyError`.

    Keys come from the index and sidecars, which whoever can write the database or
    the bucket can rewrite: an absolute path, a ``..`` part or an empty part is refused
    before any storage call, so no command reads, writes or deletes outside the root.
    """
    parts = key.split("/")
    if (
        not key
        or key.startswith("/")
        or "\\" in key
        or "\x00" in key
        or ":" in parts[0]
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise UnsafeKeyError(f"refusing the store key {key!r}: it does not name a file inside the store")
    return key


def check_blob_id(sha256: str) -> str:
    """``sha256`` if it is a blob id (64 lowercase hex digits), else :class:`UnsafeKeyError`."""
    if not _BLOB_ID.fullmatch(sha256):
        raise UnsafeKeyError(f"refusing the blob id {sha256!r}: a blob id is 64 lowercase hex digits")
    return sha256


def blob_key(sha256: str) -> str:
    """The key of a content-addressed blob (its id is checked first)."""
    check_blob_id(sha256)
    return f"{BLOB_DIR}/{sha256[:2]}/{sha256}"


def blob_digest(key: str) -> str | None:
    """The SHA-256 of a blob key, or ``None`` if ``key`` is not a blob."""
    parts = key.split("/")
    return parts[2] if len(parts) == 3 and parts[0] == BLOB_DIR else None


def version_dir(key: str) -> tuple[str, str] | None:
    """``(model, version)`` for a key inside a version folder, else ``None``."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0].startswith("."):
        return None
    return parts[0], parts[1]


def is_temporary(key: str) -> bool:
    """Whether ``key`` is a staged file (of a save in progress, or a crash leftover)."""
    return key.startswith(TMP_DIR + "/")


def referenced_keys(record: ModelMetadata) -> set[str]:
    """The files in its version folder that a record names: its artifact and its sidecar."""
    keys = {sidecar_key(record.model_name, record.version)}
    if record.artifact is not None:
        keys.add(record.artifact.key)
    return keys


def record_blobs(record: ModelMetadata) -> set[str]:
    """The content-addressed blobs a record references (native format)."""
    extra = record.artifact.extra if record.artifact is not None else {}
    return {str(item[0]) for item in extra.get("blobs", [])}


def event_key(model_name: str, seq: int, event_id: str) -> str:
    """The event file of history row ``seq`` (its id in the registry that wrote it):
    ``.events/<model>/<seq>-<event_id>.json``, so that a listing sorts in history order."""
    return f"{EVENT_DIR}/{model_name}/{seq:012d}-{event_id}.json"


def event_parts(key: str) -> tuple[str, int, str] | None:
    """``(model, seq, event_id)`` of an event file's key, or ``None`` if ``key`` is not one."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != EVENT_DIR or parts[1].startswith("."):
        return None
    found = _EVENT_NAME.fullmatch(parts[2])
    return None if found is None else (parts[1], int(found[1]), found[2])
