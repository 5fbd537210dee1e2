"""Checks on tar members before anything is read or written from them.

Used wherever modelkeep unpacks a tar it did not write itself (bundles, MLflow model folders):
a member name must be a plain relative path (no absolute path, no ``..``, no backslash or NUL),
and a member must be a regular file or a directory (no links, devices or FIFOs).
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path, PurePosixPath

from .errors import IntegrityError


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
    if not (member.isfile() or member.isdir()):
        kind = "link" if (member.issym() or member.islnk()) else "device or special file"
        raise IntegrityError(f"unsafe member {name!r} in the archive: a {kind}")
    return str(path)


def extract_all(data: bytes, dest: str | os.PathLike[str]) -> list[str]:
    """Unpack a tar (optionally gzip-compressed) held in ``data`` into ``dest`` after checking
    every member; returns the file names. Nothing is written if any member is unsafe."""
    root = Path(dest)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        members = tar.getmembers()
        names = [check_member(m) for m in members]
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
                while chunk := source.read(1 << 20):
                    out.write(chunk)
            files.append(name)
    return files
