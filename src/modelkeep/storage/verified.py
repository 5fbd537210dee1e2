"""Reading an artifact so that what is parsed is what was checked.

:func:`read_artifact` reads an artifact once, in file order, into memory that only this
process can change: the parsed bytes ("skeleton") into a private buffer at their file offsets,
and the raw data of each payload range (see :mod:`.hashing`) into a buffer of its own, so a
deserializer can use it as the array's memory without copying it again. Each chunk is hashed on
a helper thread while the next one is read; nothing is returned until every recorded digest
matches. :func:`check_mapped` does the same for a memory-mapped load: the skeleton is read into
private memory, and the payload bytes are hashed where they lie in the open file, which the
deserializer then maps.
"""

from __future__ import annotations

import contextlib
import io
import json
import mmap
import os
import time
import traceback
from collections.abc import Callable, Iterable
from typing import IO, Any

from ..errors import IntegrityError
from .hashing import Advance, BackgroundHash, Expected, VerifiedArtifact, new_hash, no_advance, plan_segments

#: Bytes read (and handed to the hasher) at a time.
READ_CHUNK = 4 << 20

ReadInto = Callable[[memoryview], int]


def private_buffer(size: int, *, dense: bool = True) -> Any:
    """A writable, file-like buffer of ``size`` bytes in this process's memory only: an
    anonymous memory map. A ``dense`` buffer (every byte will be written) asks for huge pages,
    which the kernel provides about ten times faster than 4 KiB ones (bench/README.md); a
    sparse one keeps small pages, so the parts never written cost no memory."""
    if size == 0:
        return io.BytesIO()
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if dense and advice is not None:
        with contextlib.suppress(OSError):
            buf.madvise(advice)
    return buf


def close_buffer(buf: Any) -> None:
    """Unmap a buffer from :func:`private_buffer` now; if a view of it is still alive
    somewhere, it is unmapped when that view goes (closing must not mask the real error)."""
    with contextlib.suppress(BufferError):
        buf.close()


class ChunkReader:
    """``readinto`` over an iterator of byte chunks (a remote store's stream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._rest = memoryview(b"")

    def readinto(self, view: memoryview) -> int:
        while not self._rest:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._rest = memoryview(chunk)
        n = min(len(view), len(self._rest))
        view[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


def _fill(readinto: ReadInto, view: memoryview, hasher: BackgroundHash, advance: Advance, where: str) -> None:
    """Fill ``view`` from ``readinto``, queueing each chunk for ``hasher``."""
    got, size = 0, len(view)
    while got < size:
        n = readinto(view[got : got + READ_CHUNK])
        if not n:
            raise IntegrityError(f"integrity check failed for {where}: it is shorter than recorded")
        hasher.update(view[got : got + n])
        got += n
        advance(n)


def _hashers(expected: Expected) -> tuple[BackgroundHash, BackgroundHash]:
    if expected.fast:
        return BackgroundHash("blake3"), BackgroundHash("blake3")
    one = BackgroundHash("sha256")  # artifacts from before 0.2: the SHA-256 of the whole file
    return one, one


def _check(expected: Expected, skeleton: Any, payload: Any, where: str) -> None:
    """Compare what was hashed with the record (``skeleton`` is the SHA-256 of everything for
    artifacts from before 0.2; ``payload`` is ``None`` when the payloads were not hashed)."""
    wanted = [(expected.skeleton if expected.fast else expected.sha256, skeleton)]
    if expected.fast and expected.ranges and payload is not None:
        wanted.append((expected.payload, payload))
    for digest, hasher in wanted:
        if hasher.hexdigest() != digest:
            raise IntegrityError(
                f"integrity check failed for {where}: its bytes differ from those saved (SHA-256 "
                f"{expected.sha256[:16]}...); the artifact was changed after it was saved"
            )


def _check_size(size: int, expected: Expected, where: str) -> None:
    if expected.size is not None and size != expected.size:
        raise IntegrityError(
            f"integrity check failed for {where}: it has {size} bytes, recorded {expected.size}; "
            "the artifact was changed after it was saved"
        )


def read_artifact(
    readinto: ReadInto, size: int, expected: Expected, where: str, advance: Advance = no_advance
) -> VerifiedArtifact:
    """Read ``size`` bytes from ``readinto`` once, check them, and return them privately held.

    The caller checks that no bytes follow (the file did not grow)."""
    _check_size(size, expected, where)
    segments = plan_segments(size, expected.ranges, where)
    skeleton, payload = _hashers(expected)
    buf = private_buffer(size, dense=not expected.ranges)  # holes where payloads go cost nothing
    view = memoryview(buf) if size else memoryview(bytearray())
    out = VerifiedArtifact(buf)
    checked = False
    try:
        for seg in segments:
            if not seg.payload:
                _fill(readinto, view[seg.start : seg.end], skeleton, advance, where)
                continue
            _fill(readinto, view[seg.start : seg.data_start], payload, advance, where)
            data = private_buffer(seg.end - seg.data_start)
            out.buffers[seg.start] = data
            _fill(readinto, memoryview(data) if seg.end > seg.data_start else memoryview(b""), payload, advance, where)
            out.ranges[seg.start] = (seg.start, seg.data_start, seg.end)
        _check(expected, skeleton, payload, where)
        checked = True
    except BaseException as exc:
        # The frames between here and the failed read still hold views of these buffers;
        # drop them, or closing a buffer raises BufferError instead of the read's own error.
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        view.release()  # before closing the buffer it views
        skeleton.close()
        payload.close()
        if not checked:
            for data in out.buffers.values():
                close_buffer(data)
            close_buffer(buf)
    buf.seek(0)
    return out


class CheckedFiles:
    """The local artifacts whose payload bytes this user has already checked, so that a
    memory-mapped load of an unchanged file need not hash them again.

    An entry names a file by device and inode and remembers its size, modification and
    status-change times (``ctime``) and the digest checked. Writing to a file, renaming over it
    or changing it in any way sets a new ``ctime``, which no unprivileged process can set back,
    so a file whose status still matches is the file that was checked. A file changed within
    ``RACY_NS`` of its check is not remembered (timestamps are only as fine as the kernel's
    clock tick). The folder is the user's own (under the config folder), never the store.
    """

    #: A file must have been unchanged this long before its check to be remembered.
    RACY_NS = 1_000_000_000

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = os.fspath(folder)

    def _path(self, st: os.stat_result) -> str:
        return os.path.join(self.folder, f"{st.st_dev:x}-{st.st_ino:x}.json")

    @staticmethod
    def _entry(st: os.stat_result, digest: str) -> dict[str, Any]:
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "digest": digest}

    def known(self, st: os.stat_result, digest: str) -> bool:
        """Whether the file with status ``st`` was checked to have payload digest ``digest``."""
        try:
            with open(self._path(st), encoding="utf-8") as fh:
                data = json.load(fh)
            checked = int(data.pop("checked_ns"))
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return False
        return data == self._entry(st, digest) and st.st_ctime_ns < checked - self.RACY_NS

    def remember(self, st: os.stat_result, digest: str, checked_ns: int) -> None:
        """Record that the file with status ``st`` (unchanged while it was hashed, hashing
        having started at ``checked_ns``) has payload digest ``digest``; best effort."""
        if st.st_ctime_ns >= checked_ns - self.RACY_NS:
            return
        entry = {**self._entry(st, digest), "checked_ns": checked_ns}
        path = self._path(st)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            os.makedirs(self.folder, mode=0o700, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(entry, fh)
            os.replace(tmp, path)  # a lost entry only costs one more check: no fsync
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    fields = ("st_dev", "st_ino", "st_size", "st_mtime_ns", "st_ctime_ns")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


def check_mapped(
    f: IO[bytes], expected: Expected, where: str, checked: CheckedFiles | None = None
) -> VerifiedArtifact | None:
    """For a memory-mapped load of the open local file ``f``: read its skeleton into private
    memory and hash its payload ranges in place (no copy; skipped when ``checked`` knows this
    unchanged file), then return what to parse and map. ``None`` when the record has no
    payload ranges (nothing to map: load it normally)."""
    if not (expected.fast and expected.ranges and expected.payload):
        return None
    started = time.time_ns()
    st = os.fstat(f.fileno())
    size = st.st_size
    _check_size(size, expected, where)
    segments = plan_segments(size, expected.ranges, where)
    known = checked is not None and checked.known(st, expected.payload)
    buf = private_buffer(size, dense=False)
    view = memoryview(buf)
    skeleton, payload = new_hash("blake3"), new_hash("blake3", threads=True)
    ok = False
    try:
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as source:
            for seg in segments:
                if not seg.payload:
                    view[seg.start : seg.end] = source[seg.start : seg.end]  # copy first, then hash the copy
                    skeleton.update(view[seg.start : seg.end])
                elif not known:
                    payload.update(source[seg.start : seg.end])
        _check(expected, skeleton, None if known else payload, where)
        ok = True
    finally:
        view.release()  # before closing the buffer it views
        if not ok:
            buf.close()
    if checked is not None and not known and _same_file(st, os.fstat(f.fileno())):
        checked.remember(st, expected.payload, started)
    ranges = {s.start: (s.start, s.data_start, s.end) for s in segments if s.payload}
    return VerifiedArtifact(buf, ranges=ranges, mapped=f)
