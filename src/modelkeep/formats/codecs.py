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
import os
import threading
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


_idle = threading.local()  # per thread: (pid, {level: a ZstdCompressor not in use})


def _take_compressor(zstd: Any, level: int) -> Any:
    """A compressor for ``level``: this thread's idle one, else a new one.

    A multi-threaded zstd context starts its worker threads when it is made, which costs more
    than compressing a small model; kept per thread (a compressor is not thread-safe) and per
    process (a forked child has none of its parent's workers), it is made once."""
    held: tuple[int, dict[int, Any]] | None = getattr(_idle, "compressors", None)
    if held is None or held[0] != os.getpid():
        held = (os.getpid(), {})
        _idle.compressors = held
    found = held[1].pop(level, None)  # out of the cache while in use: a nested use makes its own
    # threads=-1: compress on every core while the caller pickles (still one standard frame).
    return found if found is not None else zstd.ZstdCompressor(level=level, threads=-1)


def _give_back(level: int, compressor: Any) -> None:
    held = getattr(_idle, "compressors", None)
    if held is not None and held[0] == os.getpid():
        held[1][level] = compressor


@contextlib.contextmanager
def compressing(file: Any, codec: str, level: int) -> Iterator[Any]:
    """A writer that compresses into ``file``; the frame is finished on exit."""
    if codec != "zstd":
        raise ValueError(f"unknown stream codec {codec!r}")
    compressor = _take_compressor(_zstd(), level)
    with compressor.stream_writer(file, closefd=False) as writer:
        yield writer
    _give_back(level, compressor)  # only after a finished frame: a failed one's state is dropped


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
