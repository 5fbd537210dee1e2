"""The small interface every serialization format implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import IO, TYPE_CHECKING, Any, Protocol

from .._version import __version__
from ..errors import FormatVersionError

if TYPE_CHECKING:
    from ..blobs import BlobStore

#: Key of ``ArtifactInfo.extra`` holding the format protocol an artifact was written in.
PROTOCOL_KEY = "protocol"
#: Key of ``ArtifactInfo.extra`` naming the first modelkeep release that reads that protocol.
REQUIRES_KEY = "requires"


class Writable(Protocol):
    """What a format writes to: anything with ``write(bytes)``."""

    def write(self, data: Any, /) -> int: ...


class Format(ABC):
    """A way to turn an object into bytes and back.

    A format never touches storage: it writes to, and reads from, a file object
    the registry hands it. ``compression`` is the normalized string returned by
    :meth:`normalize_compression` (``None`` for uncompressed).

    Versioning: :attr:`protocol` numbers the format's on-disk layout. The
    registry records it in every version's ``extra`` at save; a load of an
    artifact with a higher protocol is refused with :class:`FormatVersionError`
    naming the modelkeep release needed, and every older protocol keeps loading
    (a format that changes its layout keeps a reader for each older protocol).
    Artifacts from modelkeep 0.1 carry no protocol and count as protocol 1.
    """

    #: The name users pass as ``serialization_format``.
    name: str = ""
    #: The on-disk protocol this code writes (and the highest it reads).
    protocol: int = 1
    #: The modelkeep release that introduced :attr:`protocol` (recorded for protocols above 1).
    protocol_since: str = "0.1.0"
    #: Whether :meth:`dump` and :meth:`load` need ``blobs=`` (a :class:`~modelkeep.blobs.BlobStore`).
    uses_blobs: bool = False
    #: Whether the format stores models in general (scikit-learn estimators, arrays, any picklable
    #: object). Formats for one framework's own models, or for archives, say ``False``.
    general_purpose: bool = True

    @abstractmethod
    def extension(self, compression: str | None) -> str:
        """The file suffix, including the dot (``.joblib``, ``.pkl.gz``)."""

    @abstractmethod
    def normalize_compression(self, compress: Any) -> str | None:
        """Turn the user's ``compress`` argument into a canonical string, or ``None``."""

    @abstractmethod
    def dump(
        self, obj: Any, file: Writable, compression: str | None, *, blobs: BlobStore | None = None
    ) -> dict[str, Any] | None:
        """Serialize ``obj`` into ``file``.

        May return a small JSON-safe dict (for example the globals the pickle
        references) that is stored as ``ArtifactInfo.extra``, covered by the
        signature, and handed back to :meth:`load` as ``extra=``. ``blobs`` is
        given when :attr:`uses_blobs` is true.
        """

    @abstractmethod
    def load(self, file: IO[bytes], compression: str | None, **options: Any) -> Any:
        """Deserialize an object from ``file`` (already integrity-checked).

        ``options``: ``extra`` (what :meth:`dump` returned), ``mmap_mode``,
        ``trusted`` (type names the user trusts), and ``blobs`` when
        :attr:`uses_blobs` is true.
        """

    def supports_mmap(self, compression: str | None) -> bool:
        """Whether uncompressed artifacts of this format can map their arrays (``mmap_mode``)."""
        return False

    # -- versioning ---------------------------------------------------------------
    def protocol_record(self) -> dict[str, Any]:
        """What the registry adds to ``extra`` at save: the protocol (and, above 1, the release needed)."""
        out: dict[str, Any] = {PROTOCOL_KEY: self.protocol}
        if self.protocol > 1:
            out[REQUIRES_KEY] = self.protocol_since
        return out

    def check_protocol(self, extra: dict[str, Any] | None, where: str) -> int:
        """The protocol of an artifact (1 when unrecorded); :class:`FormatVersionError` if newer than ours."""
        found = (extra or {}).get(PROTOCOL_KEY, 1)
        if not isinstance(found, int) or isinstance(found, bool) or found < 1:
            raise FormatVersionError(f"{where}: the {self.name} protocol {found!r} recorded for it is not valid")
        if found > self.protocol:
            raise FormatVersionError(
                f"{where} was written in {self.name} protocol {found}, but this modelkeep "
                f"({__version__}) reads up to protocol {self.protocol}: {needs((extra or {}).get(REQUIRES_KEY))}"
            )
        return found


def needs(release: Any) -> str:
    """The remedy for data written by a newer modelkeep, naming the release when it is known."""
    if isinstance(release, str) and release:
        return f"upgrade to modelkeep {release} or later"
    return "upgrade modelkeep"
