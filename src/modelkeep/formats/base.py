"""The small interface every serialization format implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import IO, Any, Protocol


class Writable(Protocol):
    """What a format writes to: anything with ``write(bytes)``."""

    def write(self, data: Any, /) -> int: ...


class Format(ABC):
    """A way to turn an object into bytes and back.

    A format never touches storage: it writes to, and reads from, a file object
    the registry hands it. ``compression`` is the normalized string returned by
    :meth:`normalize_compression` (``None`` for uncompressed).
    """

    #: The name users pass as ``serialization_format``.
    name: str = ""

    @abstractmethod
    def extension(self, compression: str | None) -> str:
        """The file suffix, including the dot (``.joblib``, ``.pkl.gz``)."""

    @abstractmethod
    def normalize_compression(self, compress: Any) -> str | None:
        """Turn the user's ``compress`` argument into a canonical string, or ``None``."""

    @abstractmethod
    def dump(self, obj: Any, file: Writable, compression: str | None) -> dict[str, Any] | None:
        """Serialize ``obj`` into ``file``.

        May return a small JSON-safe dict (for example the globals the pickle
        references) that is stored as ``ArtifactInfo.extra``, covered by the
        signature, and handed back to :meth:`load` as ``extra=``.
        """

    @abstractmethod
    def load(self, file: IO[bytes], compression: str | None, **options: Any) -> Any:
        """Deserialize an object from ``file`` (already integrity-checked)."""

    def load_path(self, path: str, compression: str | None, **options: Any) -> Any:
        """Deserialize from a local path; formats that can memory-map override this."""
        with open(path, "rb") as f:
            return self.load(f, compression, **options)

    def supports_mmap(self, compression: str | None) -> bool:
        """Whether ``load_path(..., mmap_mode=...)`` maps arrays instead of copying them."""
        return False
