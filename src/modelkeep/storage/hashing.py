"""Digests while bytes stream past: the one hashing writer, verified reads, and the digest check.

Every artifact has a SHA-256 of its bytes: its identity, shown to users and checked by
``verify``. Artifacts saved since modelkeep 0.2 also record BLAKE3 digests, which a load checks
instead because BLAKE3 runs several times faster (bench/README.md), split in two so that a
memory-mapped load can check what it parses without reading the array bytes it maps:

* ``skeleton``: BLAKE3 of every byte outside the payload ranges, in file order;
* ``payload``: BLAKE3 of every byte inside them, in file order;
* ``ranges``: ``[start, data_start, end]`` per payload, raw array bytes that the format
  writes between pickle opcodes (``[start, data_start)`` is alignment padding);
* ``sha256``: the SHA-256 they were computed with; a record whose SHA-256 differs (rewritten
  by hand or by a tool that knows only SHA-256) has its SHA-256 checked instead.

A format without payloads has one digest, ``skeleton``, over the whole file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from ..errors import IntegrityError

Advance = Callable[[int], None]
#: Read size when hashing a file.
CHUNK = 1 << 20
#: Arrays smaller than this stay in the skeleton (a payload range is not worth its bookkeeping).
PAYLOAD_MIN = 64 << 10
#: At most this many payload ranges per artifact (the rest stay in the skeleton).
PAYLOAD_MAX_RANGES = 10_000
#: The key of the BLAKE3 digests in an artifact's ``extra``.
BLAKE3_KEY = "blake3"

Range = tuple[int, int, int]


def no_advance(_: int) -> None:
    """A progress callback that draws nothing."""
    return None


def new_hash(algorithm: str, *, threads: bool = False) -> Any:
    """A fresh ``hashlib``-style hash object for ``"sha256"`` or ``"blake3"``; ``threads``
    lets BLAKE3 hash one large buffer on every core."""
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "blake3":
        from blake3 import blake3

        return blake3(max_threads=blake3.AUTO) if threads else blake3()
    raise ValueError(f"unknown digest algorithm {algorithm!r}")


class BackgroundHash:
    """A hash fed on a helper thread, so hashing overlaps the caller's I/O.

    :meth:`update` queues buffers that stay unchanged until hashed (``bytes``, or views of
    buffers the caller never reuses); at most ``max_pending`` bytes wait, which bounds the
    memory held. Small updates are gathered into one buffer first, so that a stream of small
    writes costs no thread hand-off each (and never waits for the helper).
    """

    #: Updates smaller than this are gathered; larger ones go to the helper as they are.
    OVERLAP_MIN = 64 << 10

    def __init__(self, algorithm: str, max_pending: int = 128 << 20) -> None:
        self._hash = new_hash(algorithm)
        self._max_pending = max_pending
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[Future[None], int]] = deque()
        self._pending_bytes = 0
        self._small = bytearray()

    def update(self, view: memoryview, *, stable: bool = True) -> None:
        """Hash ``view``: later, on the helper thread, when ``stable``; a large unstable
        buffer (one the caller may reuse) is hashed before this returns."""
        n = view.nbytes
        if n < self.OVERLAP_MIN:
            self._small += view
            if len(self._small) >= self.OVERLAP_MIN:
                self._flush_small()
            return
        self._flush_small()
        if stable:
            self._submit(view, n)
        else:
            self._drain()  # keep the byte order
            self._hash.update(view)

    def _flush_small(self) -> None:
        if self._small:
            data = bytes(self._small)
            self._small.clear()
            self._submit(memoryview(data), len(data))

    def _submit(self, view: memoryview, n: int) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="modelkeep-hash")
        while self._pending and self._pending_bytes + n > self._max_pending:
            self._pop()
        self._pending.append((self._pool.submit(self._hash.update, view), n))
        self._pending_bytes += n

    def _pop(self) -> None:
        future, n = self._pending.popleft()
        self._pending_bytes -= n
        future.result()

    def _drain(self) -> None:
        while self._pending:
            self._pop()

    def hexdigest(self) -> str:
        """The digest of everything passed to :meth:`update` (waits for the helper)."""
        if self._small:
            self._drain()
            self._hash.update(self._small)
            self._small.clear()
        self._drain()
        return str(self._hash.hexdigest())

    def close(self) -> None:
        """Wait for queued work and stop the helper thread."""
        with contextlib.suppress(Exception):
            self._drain()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts every byte on its way to ``raw``.

    It computes the SHA-256 of everything and, when ``blake3`` is set, the BLAKE3 skeleton
    and payload digests (see the module's docstring); formats mark payloads with
    :meth:`payload`. Hashing runs on helper threads while the bytes are written.
    """

    def __init__(self, raw: IO[bytes], advance: Advance = no_advance, *, blake3: bool = True) -> None:
        super().__init__()
        self._raw = raw
        self._advance = advance
        self._sha = BackgroundHash("sha256")
        self._skeleton = BackgroundHash("blake3") if blake3 else None
        self._payload = BackgroundHash("blake3") if blake3 else None
        self._in_payload = False
        self.ranges: list[Range] = []
        self.size = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        # joblib asks for the position to align arrays for memory-mapping.
        return self.size

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = view.nbytes
        # Mutable buffers may be reused by the caller once write() returns: hash them now.
        stable = isinstance(data, bytes)
        self._sha.update(view, stable=stable)
        blake = self._payload if self._in_payload else self._skeleton
        if blake is not None:
            blake.update(view, stable=stable)
        written = 0
        while written < n:  # raw (unbuffered) writes may be partial
            written += self._raw.write(view[written:]) or 0
        self.size += n
        self._advance(n)
        return n

    @contextlib.contextmanager
    def payload(self, nbytes: int) -> Iterator[bool]:
        """Mark what is written in this block as a payload whose last ``nbytes`` bytes are raw
        data that a loader may map or read into a buffer of its own without parsing it.

        Yields ``False`` (and marks nothing) for small payloads, past the range limit,
        or when this writer keeps no BLAKE3 digests."""
        if self._payload is None or nbytes < PAYLOAD_MIN or len(self.ranges) >= PAYLOAD_MAX_RANGES:
            yield False
            return
        start = self.size
        self._in_payload = True
        try:
            yield True
        finally:
            self._in_payload = False
        if self.size - start < nbytes:
            raise ValueError(f"a payload of {nbytes} bytes wrote only {self.size - start}")
        self.ranges.append((start, self.size - nbytes, self.size))

    def hexdigest(self) -> str:
        """The SHA-256 of everything written."""
        return self._sha.hexdigest()

    def blake3_record(self) -> dict[str, Any] | None:
        """The BLAKE3 digests to record in the artifact's ``extra`` (``None`` without BLAKE3)."""
        if self._skeleton is None or self._payload is None:
            return None
        record: dict[str, Any] = {"sha256": self.hexdigest(), "skeleton": self._skeleton.hexdigest()}
        if self.ranges:
            record["payload"] = self._payload.hexdigest()
            record["ranges"] = [list(r) for r in self.ranges]
        return record

    def close(self) -> None:
        for h in (self._sha, self._skeleton, self._payload):
            if h is not None:
                h.close()
        super().close()


class _Discard(io.RawIOBase):
    """A sink: what :class:`HashingWriter` writes to when only the digest is wanted."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return memoryview(data).nbytes


def hashing_sink(advance: Advance = no_advance) -> HashingWriter:
    """A :class:`HashingWriter` that keeps nothing but the SHA-256 and the size."""
    return HashingWriter(_Discard(), advance, blake3=False)  # type: ignore[arg-type]


def check_digest(where: str, expected: str, got: str) -> None:
    """Raise :class:`IntegrityError` naming ``where`` unless ``got`` is the recorded digest."""
    if got != expected:
        raise IntegrityError(
            f"integrity check failed for {where}: digest is {got[:16]}..., "
            f"recorded {expected[:16]}...; the artifact was changed after it was saved"
        )


@dataclass(frozen=True)
class Expected:
    """What an artifact's bytes must hash to, from its record: the SHA-256 of the whole file
    and, for artifacts saved by modelkeep 0.2 or later, the BLAKE3 digests a load checks."""

    sha256: str
    size: int | None = None
    skeleton: str | None = None
    payload: str | None = None
    ranges: tuple[Range, ...] = ()

    @classmethod
    def of(cls, sha256: str, size: int | None, extra: dict[str, Any] | None) -> Expected:
        """Read the digests recorded for an artifact. BLAKE3 digests count only when recorded
        for this same SHA-256 (a record whose SHA-256 was rewritten alone, or a malformed one,
        gets its SHA-256 checked instead, which is always there)."""
        rec = (extra or {}).get(BLAKE3_KEY)
        if not isinstance(rec, dict) or rec.get("sha256") != sha256 or not isinstance(rec.get("skeleton"), str):
            return cls(sha256, size)
        ranges: list[Range] = []
        for item in rec.get("ranges") or ():
            if not (isinstance(item, list) and len(item) == 3 and all(type(x) is int for x in item)):
                return cls(sha256, size)
            ranges.append((item[0], item[1], item[2]))
        payload = rec.get("payload")
        if ranges and not isinstance(payload, str):
            return cls(sha256, size)
        return cls(sha256, size, rec["skeleton"], payload if ranges else None, tuple(ranges))

    @property
    def fast(self) -> bool:
        """Whether BLAKE3 digests were recorded (else only the SHA-256 can be checked)."""
        return self.skeleton is not None


@dataclass
class Segment:
    """A piece of the file: ``[start, end)``, where it is read to, and which digest covers it."""

    start: int
    end: int
    payload: bool
    data_start: int = 0


def plan_segments(size: int, ranges: Sequence[Range], where: str) -> list[Segment]:
    """Cut ``[0, size)`` into skeleton and payload segments; :class:`IntegrityError` when the
    recorded ranges are not ordered, disjoint and inside the file."""
    out: list[Segment] = []
    pos = 0
    for start, data_start, end in ranges:
        if not (pos <= start <= data_start <= end <= size):
            raise IntegrityError(f"the payload ranges recorded for {where} do not fit its {size} bytes")
        if start > pos:
            out.append(Segment(pos, start, False))
        out.append(Segment(start, end, True, data_start))
        pos = end
    if pos < size:
        out.append(Segment(pos, size, False))
    return out


@dataclass
class VerifiedArtifact:
    """An artifact's verified bytes: ``file`` holds the parsed bytes at their file offsets
    (private memory no one else can change), ``buffers`` the data of each payload range,
    keyed by the range's start; ``mapped`` is the open artifact when payloads are to be mapped
    from it instead (then their bytes were not read)."""

    file: IO[bytes]
    ranges: dict[int, Range] = field(default_factory=dict)
    buffers: dict[int, bytearray] = field(default_factory=dict)
    mapped: IO[bytes] | None = None
