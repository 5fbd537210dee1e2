"""Checks on tar members before anything is read or written from them.

Used wherever modelkeep unpacks a tar it did not write itself (bundles, MLflow model folders):

* a member name must be a plain relative path (no absolute path, no ``..``, no backslash or NUL);
* a member must be a regular file or a folder, by its type byte: ``REGTYPE``, ``AREGTYPE`` or
  ``DIRTYPE``. Links, devices, FIFOs, contiguous files and GNU sparse members are refused
  (``TarInfo.isfile()`` is true for sparse members, whose header may claim any size while
  the archive holds a few bytes: unpacked, a 5 KB archive fills a disk with zeros), and so
  are pax headers that describe a sparse file (``GNU.sparse.*``);
* what is unpacked is bounded: each member is streamed to disk and stops at its declared
  size, and the total of the declared sizes must stay under a limit (see
  :func:`extract_limit`) and under the free space of the destination, checked before
  anything is written.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import IO

from .errors import IntegrityError

#: The member types that may be unpacked: regular files and folders, nothing else.
ALLOWED_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE)
#: Unpacking a compressed archive may write at most this many times its compressed size ...
EXPANSION_RATIO = 64
#: ... and at least this many bytes (small archives of honest, well-compressed files).
MIN_EXTRACT_LIMIT = 256 << 20
_CHUNK = 1 << 20

_KINDS = {
    tarfile.SYMTYPE: "a link",
    tarfile.LNKTYPE: "a link",
    tarfile.CHRTYPE: "a device",
    tarfile.BLKTYPE: "a device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
    tarfile.CONTTYPE: "a contiguous file",
}


def check_member(member: tarfile.TarInfo) -> str:
    """The member's normalized relative name; :class:`IntegrityError` if it is unsafe."""
    name = member.name
    if not name or "\x00" in name or "\\" in name:
        raise IntegrityError(f"unsafe member name {name!r} in the archive")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/"):
        raise IntegrityError(f"unsafe member {name!r} in the archive: absolute path")
    if any(part == ".." for part in path.parts):
        raise IntegrityError(f"unsafe member {name!r} in the archive: '..' in the path")
    if member.type not in ALLOWED_TYPES:
        kind = _KINDS.get(member.type, f"member type {member.type!r}")
        raise IntegrityError(f"unsafe member {name!r} in the archive: {kind} (only regular files and folders)")
    if member.sparse is not None or any(key.startswith("GNU.sparse") for key in member.pax_headers):
        raise IntegrityError(f"unsafe member {name!r} in the archive: a sparse file (only regular files and folders)")
    if member.size < 0:
        raise IntegrityError(f"unsafe member {name!r} in the archive: negative size")
    return str(path)


def extract_limit(archive_size: int, max_bytes: int | None = None) -> int:
    """How many bytes unpacking an archive of ``archive_size`` bytes may write: ``max_bytes``
    when given, else ``max(MIN_EXTRACT_LIMIT, EXPANSION_RATIO * archive_size)``."""
    if max_bytes is not None:
        return max_bytes
    return max(MIN_EXTRACT_LIMIT, EXPANSION_RATIO * archive_size)


def check_total(sizes: Iterable[int], limit: int, dest: str | os.PathLike[str], *, setting: str) -> int:
    """The total of ``sizes``; :class:`IntegrityError` when it exceeds ``limit`` or the free
    space where ``dest`` lies. ``setting`` names what raises the limit, for the message."""
    total = sum(sizes)
    if total > limit:
        raise IntegrityError(
            f"the archive unpacks to {total} bytes, more than the {limit} allowed; nothing was unpacked "
            f"(raise {setting} if it is genuine)"
        )
    where = Path(dest)
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if total > free:
        raise IntegrityError(
            f"the archive unpacks to {total} bytes, more than the {free} bytes free in {str(where)!r}; "
            "nothing was unpacked"
        )
    return total


def copy_member(source: IO[bytes], out: IO[bytes], size: int, name: str) -> Iterable[bytes]:
    """Copy exactly ``size`` bytes of ``source`` to ``out``, yielding each chunk as it is written
    (for hashing); :class:`IntegrityError` if the member is shorter or longer than ``size``."""
    left = size
    while left > 0:
        chunk = source.read(min(_CHUNK, left))
        if not chunk:
            raise IntegrityError(f"{name} is shorter than its declared {size} bytes: the archive is truncated")
        left -= len(chunk)
        out.write(chunk)
        yield chunk
    if source.read(1):
        raise IntegrityError(f"{name} is longer than its declared {size} bytes")


def extract_all(data: bytes, dest: str | os.PathLike[str], *, max_bytes: int | None = None) -> list[str]:
    """Unpack a tar (optionally gzip-compressed) held in ``data`` into ``dest`` after checking
    every member; returns the file names. Nothing is written if any member is unsafe or the
    total exceeds :func:`extract_limit` (``max_bytes`` overrides it) or the free disk space."""
    root = Path(dest)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            members = tar.getmembers()
            names = [check_member(m) for m in members]
            check_total(
                (m.size for m in members if m.isfile()),
                extract_limit(len(data), max_bytes),
                root,
                setting="max_bytes",
            )
            files = []
            for member, name in zip(members, names, strict=True):
                target = root / name
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # a regular file, checked above
                with source, open(target, "wb") as out:
                    for _ in copy_member(source, out, member.size, name):
                        pass
                files.append(name)
    except (tarfile.TarError, EOFError) as exc:
        raise IntegrityError(f"the archive is damaged (truncated or not a tar file): {exc}") from exc
    return files
