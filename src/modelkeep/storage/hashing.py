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

import bisect
import contextlib
import functools
import hashlib
import io
import mmap
import os
import sys
import threading
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
    memory held. Updates are handed over in batches of ``BATCH`` bytes: each hand-over costs
    the helper a wait for the GIL (up to the interpreter's switch interval while the caller
    runs Python code), so few large hand-overs keep it hashing. Small updates are gathered
    into one buffer first.
    """

    #: Updates smaller than this are copied into one gathering buffer.
    OVERLAP_MIN = 64 << 10
    #: Bytes handed to the helper at a time.
    BATCH = 8 << 20

    def __init__(self, algorithm: str, max_pending: int = 128 << 20) -> None:
        self._hash = new_hash(algorithm)
        self._max_pending = max_pending
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[Future[None], int]] = deque()
        self._pending_bytes = 0
        self._small = bytearray()
        self._batch: list[memoryview] = []
        self._batch_bytes = 0

    def update(self, view: memoryview, *, stable: bool = True) -> None:
        """Hash ``view``: later, on the helper thread, when ``stable``; a large unstable
        buffer (one the caller may reuse) is hashed before this returns."""
        n = view.nbytes
        if n < self.OVERLAP_MIN:
            self._small += view
            if len(self._small) >= self.OVERLAP_MIN:
                self._gather()
        elif stable:
            self._gather()
            self._batch.append(view)
            self._batch_bytes += n
        else:
            self._drain()  # keep the byte order
            self._hash.update(view)
            return
        if self._batch_bytes >= self.BATCH:
            self._submit()

    def _gather(self) -> None:
        if self._small:
            self._batch.append(memoryview(bytes(self._small)))
            self._batch_bytes += len(self._small)
            self._small.clear()

    def _submit(self) -> None:
        if not self._batch:
            return
        batch, n = self._batch, self._batch_bytes
        self._batch, self._batch_bytes = [], 0
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="modelkeep-hash")
        while self._pending and self._pending_bytes + n > self._max_pending:
            self._pop()
        self._pending.append((self._pool.submit(self._hash_all, batch), n))
        self._pending_bytes += n

    def _hash_all(self, views: list[memoryview]) -> None:
        for view in views:
            self._hash.update(view)

    def _pop(self) -> None:
        future, n = self._pending.popleft()
        self._pending_bytes -= n
        future.result()

    def _drain(self) -> None:
        """Hash everything given so far (the helper's queue, then the rest here)."""
        self._gather()
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        while self._pending:
            self._pop()
        self._hash_all(batch)

    def hexdigest(self) -> str:
        """The digest of everything passed to :meth:`update` (waits for the helper)."""
        self._drain()
        return str(self._hash.hexdigest())

    def close(self) -> None:
        """Wait for queued work and stop the helper thread."""
        with contextlib.suppress(Exception):
            self._drain()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def _mapped(fd: int, start: int, end: int, chunk: int) -> Iterator[memoryview]:
    """The bytes ``[start, end)`` of the file ``fd``, mapped (no copy) ``chunk`` bytes at a time,
    so only one chunk's pages count in the process's memory."""
    while start < end:
        stop = min(end, start + chunk)
        base = start - start % mmap.ALLOCATIONGRANULARITY  # a map starts on a page boundary
        pages = mmap.mmap(fd, stop - base, offset=base, access=mmap.ACCESS_READ)
        with pages, memoryview(pages) as whole, whole[start - base :] as view:
            yield view  # released when the caller asks for the next one: the map can then close
        start = stop


#: ``sync_file_range(2)``'s flag that starts writing dirty pages back without waiting for them.
_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's ``sync_file_range(2)`` (``None`` elsewhere, or where libc lacks it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


def start_writeback(fd: int, start: int, end: int) -> None:
    """Ask the kernel to start writing the bytes ``[start, end)`` of ``fd`` to the disk now,
    without waiting (``sync_file_range(2)`` with ``SYNC_FILE_RANGE_WRITE``), so that the
    ``fsync`` which ends the write finds most of the file already on its way. Only a hint: it
    makes nothing durable, and a write-back error is not reported here (this call leaves the
    file's error state alone) but by that ``fsync``. Nothing happens where the call is missing."""
    call = _sync_file_range()
    if call is not None and end > start:
        call(fd, start, end - start, _SYNC_FILE_RANGE_WRITE)


class _Trailer:
    """Hashes what a :class:`HashingWriter` has written so far by mapping it back from the file
    (the page cache) on a helper thread, trailing the writer: the caller's buffers are never
    held, so the memory they used is reused at once instead of fresh pages being faulted in,
    and nothing is copied.

    It hashes whole chunks of :attr:`CHUNK` bytes (a shorter one only at the end): every step
    costs a map, an unmap (which interrupts the writer's core to flush its TLB) and a few takes
    of the GIL from the writer's thread, which pickles in Python and holds the GIL between
    writes. Stepping each time 1 MiB was written took 110 steps for a 110 MB forest instead of
    14, and the save switched threads 142 times instead of 62.

    With ``writeback`` (the file is ``fsync``'ed once written), each step also starts the
    write-back of every whole page written so far (:func:`start_writeback`), so the disk
    writes while the format pickles: the ``fsync``'s of a 110 MB forest's save then waited
    12-22 ms in all instead of 66-100 (a file otherwise stays only in the page cache until its
    ``fsync``). A partly written last page is left out: the writer's next bytes go to it, and
    a page under write-back may make them wait."""

    #: Bytes mapped and hashed at a time.
    CHUNK = 8 << 20

    def __init__(self, fd: int, writer: HashingWriter, hasher: Any, *, writeback: bool) -> None:
        self._fd = fd
        self._writeback = writeback
        self._writer = writer
        self._hasher = hasher
        self._wake = threading.Event()
        self._stop = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="modelkeep-hash", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        done = submitted = 0
        try:
            while not self._stop:
                self._wake.clear()
                finished = self._writer.finished  # read before the size: then the size is final
                target = self._writer.flushed
                pages = target - target % mmap.PAGESIZE
                if self._writeback and pages > submitted:
                    start_writeback(self._fd, submitted, pages)
                    submitted = pages
                if done >= target and finished:
                    return
                if target - done < self.CHUNK and not finished:  # a whole chunk, or the end
                    self._wake.wait()
                    continue
                end = min(target, done + self.CHUNK)
                for view in _mapped(self._fd, done, end, self.CHUNK):
                    self._hasher.update(view)
                done = end
        except BaseException as exc:  # raised in the writer's thread by join()
            self._error = exc

    def join(self, *, abort: bool = False) -> None:
        """Wait until everything written is hashed (or, with ``abort``, stop at once)."""
        self._stop = abort
        self._wake.set()
        self._thread.join()
        if self._error is not None and not abort:
            raise self._error


class HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts every byte on its way to ``raw``.

    It computes the SHA-256 of everything and, when ``blake3`` is set, the BLAKE3 skeleton
    and payload digests (see the module's docstring); formats mark payloads with
    :meth:`payload`. Hashing runs on helper threads: given ``reread_fd`` (a descriptor that
    reads the file being written), one thread maps the written bytes back from the page cache
    and computes the SHA-256 while they are written, and BLAKE3 runs once :meth:`done_writing`
    says the file is complete (while the caller's ``fsync`` waits); otherwise the written buffers
    are queued for a thread per digest (:class:`BackgroundHash`), each holding at most
    ``max_pending`` bytes not hashed yet. ``writeback`` says the caller will ``fsync`` the file:
    the first thread then starts its write-back as it goes.

    Writes smaller than :attr:`GATHER_MIN` are gathered into one buffer of up to
    :attr:`GATHER` bytes before they reach ``raw``: a pickler writes many small pieces, and one
    system call each made a save of an unbuffered file 1.5x slower than ``joblib.dump`` into a
    buffered one. ``size`` (and :meth:`tell`) count every byte given; ``flushed`` only those
    handed to ``raw``, which is all the hashing threads read back.
    """

    #: Writes smaller than this are gathered before they reach the file.
    GATHER_MIN = 64 << 10
    #: The gathering buffer is written out once it holds this many bytes.
    GATHER = 1 << 20

    #: Bytes of the written file mapped at a time to hash it (a multiple of the page size).
    MAP_CHUNK = 8 << 20
    #: Below this size a re-readable file is hashed in the writer's thread when it finishes.
    TRAIL_MIN = 1 << 20
    #: The hashing thread is woken each time this many more bytes were written (its chunk).
    WAKE = _Trailer.CHUNK

    def __init__(
        self,
        raw: IO[bytes],
        advance: Advance = no_advance,
        *,
        blake3: bool = True,
        reread_fd: int | None = None,
        writeback: bool = False,
        max_pending: int = 128 << 20,
    ) -> None:
        super().__init__()
        self._raw = raw
        self._advance = advance
        # Its own descriptor: the hashing may finish after the writer's file is closed.
        self._fd = os.dup(reread_fd) if reread_fd is not None else None
        self._blake3 = blake3
        self._writeback = writeback
        self._in_payload = False
        self.ranges: list[Range] = []
        self.size = 0
        self.flushed = 0
        self._gathered = bytearray()
        self.finished = False
        self._trailers: list[_Trailer] = []
        self._whole: threading.Thread | None = None
        self._whole_error: BaseException | None = None
        self._hashed = False
        self._woken = 0
        if reread_fd is None:
            self._queued: dict[str, BackgroundHash] | None = {"sha256": BackgroundHash("sha256", max_pending)}
            if blake3:
                self._queued.update(
                    skeleton=BackgroundHash("blake3", max_pending), payload=BackgroundHash("blake3", max_pending)
                )
        else:
            self._queued = None
            self._sha = new_hash("sha256")
            # BLAKE3 by the final ranges, once the file is complete (done_writing)
            self._split: SplitHash | None = None

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        # joblib asks for the position to align arrays for memory-mapping.
        return self.size

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = view.nbytes
        if self._queued is not None:
            # Mutable buffers may be reused by the caller once write() returns: hash them now.
            stable = isinstance(data, bytes)
            self._queued["sha256"].update(view, stable=stable)
            blake = self._queued.get("payload" if self._in_payload else "skeleton")
            if blake is not None:
                blake.update(view, stable=stable)
        self.size += n
        if n < self.GATHER_MIN:
            self._gathered += view
            if len(self._gathered) >= self.GATHER:
                self._flush_gathered()
        else:
            self._flush_gathered()
            self._write_raw(view)
        self._advance(n)
        return n

    def _write_raw(self, view: memoryview) -> None:
        n = view.nbytes
        written = 0
        while written < n:  # raw (unbuffered) writes may be partial
            written += self._raw.write(view[written:]) or 0
        self.flushed += n
        if self._fd is not None and not self._trailers and self.flushed >= self.TRAIL_MIN:
            self._start_trailers(self._fd)
        if self._trailers and self.flushed - self._woken >= self.WAKE:
            self._woken = self.flushed  # wake the hasher once per chunk, not per write
            for trailer in self._trailers:
                trailer.wake()

    def _flush_gathered(self) -> None:
        if self._gathered:
            gathered, self._gathered = self._gathered, bytearray()
            self._write_raw(memoryview(gathered))

    def flush(self) -> None:
        """Hand the gathered small writes to the file."""
        if not self.closed:
            self._flush_gathered()

    def _start_trailers(self, fd: int) -> None:
        # The SHA-256 trails the writer on its own core; BLAKE3, several times faster, waits for
        # done_writing() and then runs while the caller's fsync leaves the writer's core idle.
        self._trailers.append(_Trailer(fd, self, self._sha, writeback=self._writeback))

    def done_writing(self) -> None:
        """No more bytes will be written: the size is final. With a re-readable file, BLAKE3 of
        the whole file starts now on a helper thread, to run while the caller makes it durable."""
        if self.finished:
            return
        self._flush_gathered()
        self.finished = True
        for trailer in self._trailers:
            trailer.wake()
        if self._blake3 and self._queued is None:
            self._split = SplitHash(self.ranges)
        if self._trailers and self._split is not None and self._fd is not None:
            self._whole = threading.Thread(target=self._blake3_whole, args=(self._fd,), name="modelkeep-blake3")
            self._whole.start()

    def _blake3_whole(self, fd: int) -> None:
        assert self._split is not None
        try:
            for view in _mapped(fd, 0, self.size, self.MAP_CHUNK):
                self._split.update(view)
        except BaseException as exc:  # raised in the writer's thread by _finish()
            self._whole_error = exc

    @contextlib.contextmanager
    def payload(self, nbytes: int) -> Iterator[bool]:
        """Mark what is written in this block as a payload whose last ``nbytes`` bytes are raw
        data that a loader may map or read into a buffer of its own without parsing it.

        Yields ``False`` (and marks nothing) for small payloads, past the range limit,
        or when this writer keeps no BLAKE3 digests."""
        if not self._blake3 or nbytes < PAYLOAD_MIN or len(self.ranges) >= PAYLOAD_MAX_RANGES:
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

    def _finish(self) -> None:
        """Wait until every byte written is hashed."""
        if self._hashed:
            return
        self.done_writing()
        self._hashed = True
        if self._fd is None:
            return
        try:
            if self._trailers:
                for trailer in self._trailers:
                    trailer.join()
                if self._whole is not None:
                    self._whole.join()
                    if self._whole_error is not None:
                        raise self._whole_error
                return
            view = memoryview(os.pread(self._fd, self.size, 0))  # small: hash it here
            if len(view) != self.size:
                raise OSError(f"the staged file has {len(view)} bytes; {self.size} were written")
            self._sha.update(view)
            if self._split is not None:
                self._split.update(view)
        finally:
            self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _digest(self, name: str) -> str:
        self._finish()
        if self._queued is not None:
            return self._queued[name].hexdigest()
        if name == "sha256":
            return str(self._sha.hexdigest())
        assert self._split is not None
        return str((self._split.skeleton if name == "skeleton" else self._split.payload).hexdigest())

    def hexdigest(self) -> str:
        """The SHA-256 of everything written."""
        return self._digest("sha256")

    def blake3_record(self) -> dict[str, Any] | None:
        """The BLAKE3 digests to record in the artifact's ``extra`` (``None`` without BLAKE3)."""
        if not self._blake3:
            return None
        record: dict[str, Any] = {"sha256": self.hexdigest(), "skeleton": self._digest("skeleton")}
        if self.ranges:
            record["payload"] = self._digest("payload")
            record["ranges"] = [list(r) for r in self.ranges]
        return record

    def close(self) -> None:
        if not self._hashed:  # abandoned: stop hashing what no one will ask for
            self._hashed = True
            self.finished = True
            for trailer in self._trailers:
                trailer.join(abort=True)
            if self._whole is not None:
                self._whole.join()
        self._close_fd()
        self._gathered = bytearray()  # a writer closed before done_writing() was abandoned
        for h in (self._queued or {}).values():
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


class SplitHash:
    """BLAKE3 of a stream fed in order, split by payload ranges into the skeleton and the
    payload digests (for a writer's file once it is complete, and for ``verify``)."""

    def __init__(self, ranges: Sequence[Range]) -> None:
        self.skeleton, self.payload = new_hash("blake3"), new_hash("blake3")
        self._starts = [start for start, _, _ in ranges]
        self._ends = [end for _, _, end in ranges]
        self._pos = 0

    def update(self, data: Any) -> None:
        view, pos = memoryview(data), self._pos
        while view:
            i = bisect.bisect_right(self._starts, pos) - 1  # the last range starting at or before pos
            if i >= 0 and pos < self._ends[i]:
                n = min(len(view), self._ends[i] - pos)
                self.payload.update(view[:n])
            else:
                upto = self._starts[i + 1] if i + 1 < len(self._starts) else None
                n = len(view) if upto is None else min(len(view), upto - pos)
                self.skeleton.update(view[:n])
            view, pos = view[n:], pos + n
        self._pos = pos


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
