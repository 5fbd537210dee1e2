"""Stream codecs that wrap a format's byte stream (zstd), beside joblib's own.

joblib's built-in codecs (zlib, gzip, bz2, lzma, xz, lz4) stay available by
name; ``zstd`` is modelkeep's default for ``compress=True`` because at level 1
it is several times faster than joblib's zlib-3 at about the same size. A
zstd artifact is a standard zstd frame around a plain joblib stream:
``joblib.load(zstandard.open(path, "rb"))`` reads it without modelkeep.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import IO, Any

from ..errors import BackendUnavailableError
from .budget import BoundedReader, LoadBudget

STREAM_CODECS = ("zstd",)


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError as exc:  # pragma: no cover - zstandard is a base dependency
        raise BackendUnavailableError("the zstd codec needs the 'zstandard' package") from exc
    return zstandard


@contextlib.contextmanager
def compressing(file: Any, codec: str, level: int) -> Iterator[Any]:
    """A writer that compresses into ``file``; the frame is finished on exit."""
    if codec != "zstd":
        raise ValueError(f"unknown stream codec {codec!r}")
    zstd = _zstd()
    # threads=-1: compress on every core while the caller pickles (still one standard frame).
    with zstd.ZstdCompressor(level=level, threads=-1).stream_writer(file, closefd=False) as writer:
        yield writer


@contextlib.contextmanager
def decompressing(file: IO[bytes], codec: str, budget: LoadBudget | None = None) -> Iterator[IO[bytes]]:
    """A buffered reader of the decompressed stream (``peek`` works, as joblib needs); with a
    ``budget``, reading past its limit raises :class:`~modelkeep.errors.UnsafeModelError`."""
    if codec != "zstd":
        raise ValueError(f"unknown stream codec {codec!r}")
    zstd = _zstd()
    with zstd.ZstdDecompressor().stream_reader(file, closefd=False) as raw:
        source: Any = raw if budget is None else BoundedReader(raw, budget, f"a {codec}-compressed artifact")
        yield io.BufferedReader(source, buffer_size=1 << 20)
