"""archive: a folder kept as one gzip-compressed tar, for models modelkeep cannot load natively.

The MLflow importer stores a pyfunc model with custom code this way: the whole MLflow model
folder (``MLmodel``, code, environment files, pickles) as it was, never unpickled by modelkeep.
Loading gives back a :class:`ModelArchive`; unpack it and load it with the tool that made it.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..errors import IntegrityError, SerializationError
from .base import Format, Writable

if TYPE_CHECKING:
    from ..blobs import BlobStore


@dataclass(frozen=True)
class ModelArchive:
    """A folder packed as a ``.tar.gz``; ``kind`` says what is inside (``"mlflow-model"``)."""

    data: bytes
    kind: str = "folder"
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str], kind: str = "folder", **info: Any) -> ModelArchive:
        """Pack every file under ``folder`` (sorted, fixed timestamps: the same folder gives the same bytes)."""
        root = Path(folder)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
            for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
                member = tarfile.TarInfo(path.relative_to(root).as_posix())
                member.size = path.stat().st_size
                member.mode = 0o644
                with open(path, "rb") as f:
                    tar.addfile(member, f)
        return cls(buf.getvalue(), kind, dict(info))

    def names(self) -> list[str]:
        """The files in the archive."""
        with tarfile.open(fileobj=io.BytesIO(self.data), mode="r:gz") as tar:
            return [m.name for m in tar.getmembers() if m.type in (tarfile.REGTYPE, tarfile.AREGTYPE)]

    def read(self, name: str, *, max_bytes: int | None = None) -> bytes:
        """One file's bytes (a regular file no larger than :func:`~modelkeep._tarsafe.extract_limit`
        allows: links, sparse files and the like raise :class:`~modelkeep.errors.IntegrityError`)."""
        from .._tarsafe import check_member, extract_limit

        with tarfile.open(fileobj=io.BytesIO(self.data), mode="r:gz") as tar:
            member = tar.getmember(name)
            check_member(member)
            limit = extract_limit(len(self.data), max_bytes)
            if member.size > limit:
                raise IntegrityError(f"{name} claims {member.size} bytes, more than the {limit} allowed")
            f = tar.extractfile(member)
            if f is None:
                raise KeyError(name)
            with f:
                return f.read(member.size)

    def extract(self, dest: str | os.PathLike[str], *, max_bytes: int | None = None) -> Path:
        """Unpack into ``dest``. Members are checked first (regular files and folders only: no
        absolute paths, ``..``, links, devices or sparse files), and nothing is written when the
        files would total more than ``max_bytes`` (default: ``max(256 MiB, 64 * the archive's
        size)``) or more than the free space there."""
        from .._tarsafe import extract_all

        extract_all(self.data, dest, max_bytes=max_bytes)
        return Path(dest)


class ArchiveFormat(Format):
    """Stores a :class:`ModelArchive`'s bytes as they are (``.tar.gz``)."""

    general_purpose = False

    name = "archive"

    def extension(self, compression: str | None) -> str:
        return ".tar.gz"

    def normalize_compression(self, compress: Any) -> str | None:
        return None  # the tar is gzip-compressed already

    def dump(
        self, obj: Any, file: Writable, compression: str | None, *, blobs: BlobStore | None = None
    ) -> dict[str, Any] | None:
        if not isinstance(obj, ModelArchive):
            raise SerializationError(f"the archive format stores ModelArchive objects, not {type(obj).__name__}")
        file.write(obj.data)
        return {"kind": obj.kind, **({"info": obj.info} if obj.info else {})}

    def load(self, file: IO[bytes], compression: str | None, **options: Any) -> Any:
        extra = options.get("extra") or {}
        return ModelArchive(file.read(), str(extra.get("kind", "folder")), dict(extra.get("info") or {}))
