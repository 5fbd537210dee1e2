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


#: A stream that ends within this many bytes is compressed in one call on the writer's thread:
#: handing a small frame to zstd's worker threads and waiting for them costs more than compressing
#: it (0.1 ms on an idle machine, milliseconds on a busy one, against microseconds).
SMALL_STREAM = 256 << 10


def _single_compressor(zstd: Any, level: int) -> Any:
    """This thread's single-threaded compressor for ``level`` (made once; see :func:`_take_compressor`)."""
    held: tuple[int, dict[int, Any]] | None = getattr(_idle, "single", None)
    if held is None or held[0] != os.getpid():
        held = (os.getpid(), {})
        _idle.single = held
    found = held[1].get(level)
    if found is None:
        found = held[1][level] = zstd.ZstdCompressor(level=level)
    return found


class _SmallFirst:
    """A compressing writer that holds the first :data:`SMALL_STREAM` bytes: a stream that ends
    there becomes one frame compressed in one call; a longer one goes through a multi-threaded
    stream writer from then on. Either way the output is one standard zstd frame."""

    def __init__(self, file: Any, zstd: Any, level: int) -> None:
        self._file, self._zstd, self._level = file, zstd, level
        self._held = bytearray()
        self._position = 0
        self._compressor: Any = None
        self._context: Any = None
        self._stream: Any = None

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        """Bytes given so far (uncompressed)."""
        return self._position

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self._position += n
        if self._stream is not None:
            self._stream.write(data)
        else:
            self._held += data
            if len(self._held) > SMALL_STREAM:
                self._start_stream()
        return n

    def flush(self) -> None:
        if self._stream is not None:
            self._stream.flush()

    def _start_stream(self) -> None:
        self._compressor = _take_compressor(self._zstd, self._level)
        self._context = self._compressor.stream_writer(self._file, closefd=False)
        self._stream = self._context.__enter__()
        held, self._held = self._held, bytearray()
        self._stream.write(held)

    def finish(self) -> None:
        """End the frame: compress what is held, or close the stream writer."""
        if self._stream is None:
            frame = memoryview(_single_compressor(self._zstd, self._level).compress(bytes(self._held)))
            self._held = bytearray()
            written = 0
            while written < frame.nbytes:  # a raw file may take part of it
                written += self._file.write(frame[written:]) or 0
            return
        self._context.__exit__(None, None, None)
        _give_back(self._level, self._compressor)  # only after a finished frame

    def abandon(self, exc: BaseException) -> None:
        """Drop a failed frame (its compressor's state goes with it)."""
        self._held = bytearray()
        if self._context is not None:
            self._context.__exit__(type(exc), exc, exc.__traceback__)


@contextlib.contextmanager
def compressing(file: Any, codec: str, level: int) -> Iterator[Any]:
    """A writer that compresses into ``file``; the frame is finished on exit."""
    if codec != "zstd":
        raise ValueError(f"unknown stream codec {codec!r}")
    writer = _SmallFirst(file, _zstd(), level)
    try:
        yield writer
    except BaseException as exc:
        writer.abandon(exc)
        raise
    writer.finish()


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
