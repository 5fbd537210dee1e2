"""The artifact store: bytes under keys, on a local disk or any fsspec filesystem.

:func:`open_store` picks the backend once, from the URL scheme, as fsspec
does: a local folder (or ``file://``) gets :class:`LocalStore`; S3, GCS, Azure
and ``memory://`` get :class:`ObjectStore`; any other fsspec filesystem gets
:class:`FsspecStore`. They all implement :class:`ArtifactStore`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .. import timeouts
from ..errors import BackendUnavailableError
from ..layout import TMP_DIR
from .base import ArtifactStore, StagedArtifact
from .hashing import Advance, HashingWriter, check_digest
from .local import LocalStore

if TYPE_CHECKING:
    from .remote import FsspecStore, ObjectStore
    from .s3 import S3Store

#: The remote backends, imported on first use: a local registry never needs them (S3's imports asyncio).
_REMOTE = {"FsspecStore": "remote", "ObjectStore": "remote", "S3Store": "s3"}


def __getattr__(name: str) -> Any:
    if name in _REMOTE:
        import importlib

        return getattr(importlib.import_module(f".{_REMOTE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Filesystems where one upload is all-or-nothing and a copy happens server-side.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"})
#: Extras that bring a scheme's fsspec implementation.
EXTRAS = {"s3": "s3", "s3a": "s3"}
#: Filesystems that get :class:`S3Store`'s parallel transfers (when fsspec gives s3fs).
S3_PROTOCOLS = frozenset(timeouts.S3_PROTOCOLS)


def is_local(root: str | os.PathLike[str]) -> bool:
    """Whether :func:`open_store` gives ``root`` a :class:`LocalStore` without asking fsspec
    (a path, ``file://`` or ``local://``)."""
    root_str = os.fspath(root)
    return "://" not in root_str or root_str.split("://", 1)[0] in ("file", "local")


def local_root(root: str | os.PathLike[str]) -> str:
    """The folder of a root for which :func:`is_local` is true."""
    root_str = os.fspath(root)
    return root_str.split("://", 1)[-1] if "://" in root_str else root_str


def open_store(
    root: str | os.PathLike[str],
    storage_options: dict[str, Any] | None = None,
    *,
    connect_timeout: float = timeouts.CONNECT_TIMEOUT,
    read_timeout: float = timeouts.READ_TIMEOUT,
    max_concurrency: int | None = None,
    part_size: int | None = None,
) -> ArtifactStore:
    """The backend for ``root``: a local path, ``file://...``, or any fsspec URL.

    ``connect_timeout`` and ``read_timeout`` (seconds) bound each request to a
    remote store (S3 also gets bounded retries; see :mod:`modelkeep.timeouts`).
    ``max_concurrency`` bounds the requests in flight of one S3 transfer and ``part_size``
    sets its multipart part size (see :mod:`.s3`).
    """
    root_str = os.fspath(root)
    if is_local(root_str):
        return LocalStore(local_root(root_str))
    scheme = root_str.split("://", 1)[0]
    from fsspec.core import url_to_fs

    from .remote import FsspecStore, ObjectStore
    from .s3 import S3Store, default_max_concurrency, tuned_options

    try:
        options = timeouts.s3_storage_options(root_str, storage_options, connect_timeout, read_timeout)
        if scheme in timeouts.S3_PROTOCOLS:
            options = tuned_options(options, max_concurrency or default_max_concurrency())
        fs, path = url_to_fs(root_str, **(options or {}))
    except (ImportError, ValueError) as exc:
        extra = EXTRAS.get(scheme)
        hint = f" (for {scheme}:// install modelkeep[{extra}])" if extra else ""
        raise BackendUnavailableError(f"cannot open models_dir {root_str!r}: {exc}{hint}") from exc
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "file" in protocols or "local" in protocols:
        return LocalStore(path)
    store: FsspecStore
    if S3_PROTOCOLS.intersection(protocols) and hasattr(fs, "_call_s3"):
        store = S3Store(
            fs,
            path,
            protocols[0],
            max_concurrency=max_concurrency,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
    else:
        cls = ObjectStore if OBJECT_STORES.intersection(protocols) else FsspecStore
        store = cls(fs, path, protocols[0], connect_timeout=connect_timeout, read_timeout=read_timeout)
    if part_size is not None:
        store.part_size = part_size
    return store


__all__ = [
    "TMP_DIR",
    "Advance",
    "ArtifactStore",
    "FsspecStore",
    "HashingWriter",
    "LocalStore",
    "ObjectStore",
    "S3Store",
    "StagedArtifact",
    "check_digest",
    "is_local",
    "local_root",
    "open_store",
]
