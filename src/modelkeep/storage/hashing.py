"""SHA-256 while bytes stream past: the one hashing writer, and the digest check."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

from ..errors import IntegrityError

Advance = Callable[[int], None]
#: Read size when hashing a file.
CHUNK = 1 << 20


def no_advance(_: int) -> None:
    """A progress callback that draws nothing."""
    return None


class HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts every byte on its way to ``raw``."""

    #: Immutable chunks at least this large are hashed on a helper thread while
    #: the next one is written, so hashing overlaps the disk write.
    OVERLAP_MIN = 64 << 10
    #: At most this many chunks wait for the hasher (bounds the extra memory).
    MAX_PENDING = 4

    def __init__(self, raw: IO[bytes], advance: Advance = no_advance) -> None:
        super().__init__()
        self._raw = raw
        self._sha = hashlib.sha256()
        self._advance = advance
        self._hasher: ThreadPoolExecutor | None = None
        self._pending: deque[Future[None]] = deque()
        self.size = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        # joblib asks for the position to align arrays for memory-mapping.
        return self.size

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = view.nbytes
        if isinstance(data, bytes) and n >= self.OVERLAP_MIN:
            if self._hasher is None:
                self._hasher = ThreadPoolExecutor(1, thread_name_prefix="modelkeep-sha256")
            while len(self._pending) >= self.MAX_PENDING:
                self._pending.popleft().result()
            self._pending.append(self._hasher.submit(self._sha.update, view))
        else:
            # Mutable buffers may be reused by the caller once write() returns: hash now,
            # after whatever is queued so the digest keeps the byte order.
            self._drain()
            self._sha.update(view)
        written = 0
        while written < n:  # raw (unbuffered) writes may be partial
            written += self._raw.write(view[written:]) or 0
        self.size += n
        self._advance(n)
        return n

    def _drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def hexdigest(self) -> str:
        self._drain()
        return self._sha.hexdigest()

    def close(self) -> None:
        self._drain()
        if self._hasher is not None:
            self._hasher.shutdown()
            self._hasher = None
        super().close()


class _Discard(io.RawIOBase):
    """A sink: what :class:`HashingWriter` writes to when only the digest is wanted."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return memoryview(data).nbytes


def hashing_sink(advance: Advance = no_advance) -> HashingWriter:
    """A :class:`HashingWriter` that keeps nothing but the digest and the size."""
    return HashingWriter(_Discard(), advance)  # type: ignore[arg-type]


def check_digest(where: str, expected: str, got: str) -> None:
    """Raise :class:`IntegrityError` naming ``where`` unless ``got`` is the recorded digest."""
    if got != expected:
        raise IntegrityError(
            f"integrity check failed for {where}: SHA-256 is {got[:16]}..., "
            f"recorded {expected[:16]}...; the artifact was changed after it was saved"
        )


@contextlib.contextmanager
def private_file() -> Iterator[IO[bytes]]:
    """A read-write file that lives in this process's memory only (``memfd`` on Linux,
    else ``BytesIO``): verified bytes are kept here, out of reach of anyone writing the store,
    and deserializers read it like any file (``numpy.fromfile`` included, on Linux)."""
    make = getattr(os, "memfd_create", None)
    if make is None:
        with io.BytesIO() as buf:
            yield buf
        return
    fd = make("modelkeep-verified", getattr(os, "MFD_CLOEXEC", 0))
    with open(fd, "w+b") as f:
        yield f
