"""Presigned S3 transfers, client side: no credentials, only the URLs a server handed out.

* :func:`declare` hashes a file once into what :func:`.presigned.plan_upload` needs: the
  SHA-256 of the whole file and of each part.
* :func:`upload_plan` sends a plan's parts, ``max_concurrency`` ``PUT``\\ s in flight (memory:
  that many parts, plus the one being read), each retried on connection errors and 5xx
  answers. A refusal from S3 is a :class:`StorageError` that says why: the bytes did not
  match their declared SHA-256, the URL expired, or the request did not match its signature.
* :func:`download_ranges` reads a presigned ``GET`` as ranged requests in flight, yielded in
  order; every answer's ``Content-Range`` must name the expected total, and the last request
  asks for one byte more, so a shorter or grown object is refused.
* :class:`UrlSource` feeds those chunks to :func:`.verified.read_artifact`: the same checked
  load path as a store's (nothing is parsed before the digests match).

Error messages name the URL without its query: the signature is a credential while it lives.
httpx is imported when first used (``pip install modelkeep[client]``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import ArtifactNotFoundError, BackendUnavailableError, ConfigError, IntegrityError, StorageError
from .hashing import Advance, Expected, VerifiedArtifact, no_advance
from .presigned import PartUrl, UploadPlan, part_ranges
from .verified import ChunkReader, read_artifact

#: Requests in flight when nothing says otherwise.
DEFAULT_CONCURRENCY = 8
#: Size of each ranged GET.
DEFAULT_READ_PART = 8 << 20
#: Attempts after the first, on a connection error or a 5xx answer.
DEFAULT_RETRIES = 3


def _httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:  # pragma: no cover - the extra is installed in tests
        raise BackendUnavailableError("presigned transfers need httpx: pip install modelkeep[client]") from exc
    return httpx


def where(url: str) -> str:
    """``url`` without its query (the signature), for messages."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


@dataclass(frozen=True)
class Declaration:
    """What a client declares before an upload (:func:`declare`)."""

    size: int
    sha256: str
    part_size: int
    part_sha256s: list[str]


@contextlib.contextmanager
def _opened(source: Any) -> Iterator[IO[bytes]]:
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            yield f
    else:
        yield source


def _read_exact(f: IO[bytes], n: int) -> bytes:
    data = f.read(n)
    if len(data) == n or not data:
        return data
    pieces = [data]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            break
        pieces.append(more)
        got += len(more)
    return b"".join(pieces)


def _read_into(f: IO[bytes], view: memoryview) -> int:
    """Fill ``view`` from ``f``; the bytes read (fewer only at the end of ``f``)."""
    readinto = getattr(f, "readinto", None)
    got = 0
    while got < view.nbytes:
        if readinto is not None:
            n = readinto(view[got:])
        else:
            data = f.read(view.nbytes - got)
            n = len(data)
            view[got : got + n] = data
        if not n:
            break
        got += n
    return got


class _Slices:
    """A request body over a part's buffer, sent in slices without copying the part (an
    iterable, so each retry sends it again from its start)."""

    SLICE = 1 << 20

    def __init__(self, view: memoryview) -> None:
        self._view = view

    def __iter__(self) -> Iterator[bytes]:
        for start in range(0, self._view.nbytes, self.SLICE):
            yield self._view[start : start + self.SLICE]  # type: ignore[misc]


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def declare(source: str | os.PathLike[str] | IO[bytes], part_size: int, *, sha256: str | None = None) -> Declaration:
    """Read ``source`` (a path, or a binary file at its start) once and return its size, its
    SHA-256 and the SHA-256 of each ``part_size`` slice (hex). ``sha256``: the file's SHA-256
    when the caller knows it already (a save hashed what it wrote), so only the parts are
    hashed. Each part is hashed on a helper thread while the next is read and, without
    ``sha256``, the whole file hashed on this one (hashlib lets go of the interpreter lock),
    so the passes share the cores. Memory: three parts."""
    if part_size <= 0:
        raise ConfigError(f"part_size must be a positive number of bytes, not {part_size!r}")
    whole = hashlib.sha256() if sha256 is None else None
    parts: list[str] = []
    hashing: deque[Future[str]] = deque()
    size = 0
    with _opened(source) as f, ThreadPoolExecutor(2) as pool:
        while True:
            data = _read_exact(f, part_size)
            if not data and (parts or hashing):
                break
            hashing.append(pool.submit(_sha256_hex, data))
            if whole is not None:
                whole.update(data)
            size += len(data)
            while len(hashing) > 1:  # memory: the part read, and two being hashed
                parts.append(hashing.popleft().result())
            if len(data) < part_size:
                break
        parts.extend(future.result() for future in hashing)
    return Declaration(size, whole.hexdigest() if whole is not None else str(sha256), part_size, parts)


_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")


def _refusal(what: str, url: str, status: int, body: bytes) -> StorageError:
    """The error for S3's refusal of a presigned request, saying what it means."""
    code_match, message_match = _CODE.search(body), _MESSAGE.search(body)
    code = code_match.group(1).decode("utf-8", "replace") if code_match else ""
    message = message_match.group(1).decode("utf-8", "replace") if message_match else ""
    if code in ("BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "InvalidChecksum"):
        reason = "S3 refused the bytes: they did not match their declared SHA-256"
    elif "expired" in message.lower() or code == "ExpiredToken":
        reason = "the presigned URL expired; ask the server for a new plan"
    elif code == "SignatureDoesNotMatch":
        reason = "the request did not match its signature (a signed header was changed or left out)"
    elif status == 403:
        reason = "access denied (the URL expired or was not signed for this request)"
    else:
        reason = "refused"
    detail = f" ({code}: {message})" if code or message else ""
    return StorageError(f"cannot {what} {where(url)}: HTTP {status}, {reason}{detail}")


def _request(
    client: Any,
    method: str,
    url: str,
    what: str,
    retries: int,
    *,
    ok: tuple[int, ...],
    **kwargs: Any,
) -> Any:
    """One request, retried on connection errors and 5xx answers; anything else not in
    ``ok`` is a :class:`StorageError` saying what S3 meant."""
    httpx = _httpx()
    for attempt in range(retries + 1):
        try:
            response = client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            if attempt == retries:
                raise StorageError(
                    f"cannot {what} {where(url)}: {type(exc).__name__} after {attempt + 1} attempts"
                ) from exc
        else:
            if response.status_code in ok:
                return response
            if response.status_code < 500 or attempt == retries:
                if response.status_code == 404:
                    if what == "download":  # in the words a local or streamed load uses
                        raise ArtifactNotFoundError(f"Model file not found: {where(url)}")
                    raise ArtifactNotFoundError(f"cannot {what} {where(url)}: not found")
                raise _refusal(what, url, response.status_code, response.content)
        time.sleep(min(2.0, 0.1 * 2**attempt))
    raise AssertionError("unreachable")  # pragma: no cover


def _put_part(client: Any, url: str, headers: dict[str, str], body: memoryview, what: str, retries: int) -> str:
    """``PUT`` one part's bytes to its presigned URL; its ETag."""
    headers = {**headers, "Content-Length": str(body.nbytes)}
    response = _request(client, "PUT", url, what, retries, ok=(200,), content=_Slices(body), headers=headers)
    return str(response.headers.get("ETag", ""))


@functools.cache
def _tls() -> Any:
    """The TLS settings every client made here shares (httpx's defaults): building them reads the
    CA bundle, ~20 ms of CPU that a client made per transfer would pay on every load and save."""
    return _httpx().create_ssl_context()


def _client(client: Any, max_concurrency: int, timeout: float) -> contextlib.AbstractContextManager[Any]:
    if client is not None:
        return contextlib.nullcontext(client)
    httpx = _httpx()
    limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
    return httpx.Client(timeout=timeout, limits=limits, verify=_tls())


def upload_plan(
    plan: UploadPlan | dict[str, Any],
    source: str | os.PathLike[str] | IO[bytes],
    *,
    max_concurrency: int = DEFAULT_CONCURRENCY,
    timeout: float = 60.0,
    retries: int = DEFAULT_RETRIES,
    progress: Callable[[int], None] | None = None,
    client: Any = None,
) -> list[str]:
    """Upload ``source`` (a path, or a binary file at its start) by ``plan``'s URLs; return
    each part's ETag, in part order.

    Parts are read in order and sent as soon as read, at most ``max_concurrency`` at once,
    so memory stays near ``(max_concurrency + 1) x plan.part_size`` whatever the file's size.
    ``progress`` is called with the bytes of each part once S3 has it. ``client`` is an
    ``httpx.Client`` to use (one with a pool of ``max_concurrency`` is made otherwise).
    A refusal (see the module) or a failure after ``retries`` is a :class:`StorageError`;
    a source of another size than planned is a :class:`ConfigError`. The server aborts a
    failed upload (the client has no credentials to)."""
    if isinstance(plan, dict):
        plan = UploadPlan.from_json(plan)
    if max_concurrency < 1:
        raise ConfigError(f"max_concurrency must be at least 1, not {max_concurrency!r}")
    if isinstance(source, (str, os.PathLike)) and os.path.getsize(source) != plan.size:
        raise ConfigError(f"{os.fspath(source)} has {os.path.getsize(source)} bytes, the plan {plan.size}")
    etags: dict[int, str] = {}
    in_flight: deque[tuple[PartUrl, bytearray, Future[str]]] = deque()
    free: list[bytearray] = []  # at most max_concurrency + 1 part buffers, reused

    with _client(client, max_concurrency, timeout) as http, ThreadPoolExecutor(max_concurrency) as pool:

        def put(part: PartUrl, body: memoryview) -> str:
            return _put_part(
                http, part.url, part.headers, body, f"upload part {part.number} of {len(plan.parts)} to", retries
            )

        def wait_oldest() -> None:
            part, buf, future = in_flight.popleft()
            etags[part.number] = future.result()
            free.append(buf)
            if progress is not None:
                progress(part.end - part.start)

        try:
            with _opened(source) as f:
                for part in plan.parts:
                    while len(in_flight) >= max_concurrency:  # memory: parts in flight x part size
                        wait_oldest()
                    buf = free.pop() if free else bytearray(plan.part_size)
                    body = memoryview(buf)[: part.end - part.start]
                    got = _read_into(f, body)
                    if got != body.nbytes:
                        raise ConfigError(f"the source ended at {part.start + got} bytes; the plan has {plan.size}")
                    in_flight.append((part, buf, pool.submit(put, part, body)))
                if f.read(1):
                    raise ConfigError(f"the source has more than the {plan.size} bytes planned")
            while in_flight:
                wait_oldest()
        except BaseException:
            for _, _, future in in_flight:
                future.cancel()
            raise
    return [etags[p.number] for p in plan.parts]


class PartSender:
    """Sends a file to the bucket while it is being written: each ``part_size`` slice, once
    written, is hashed (SHA-256) on a helper thread, its URL asked for with that checksum
    (``sign(started, number, size, sha256)`` -> ``{"url", "headers"}``), and ``PUT``, at most
    ``max_in_flight`` parts at once (memory: that many parts plus the one being filled; a write
    waits for the oldest part when they are all in flight). The first part's buffer grows as it
    is written, so a file smaller than a part costs a copy of its own bytes, not a part buffer.

    Nothing is sent until a whole part is written: ``start()`` (the upload's plan, or ``None``
    when the server takes no upload in parts) is asked for then, beside the first part, so a
    file smaller than one part is never started. :meth:`write` never raises (a file write must
    not fail for its upload's sake): a failure stops the sending, and :meth:`finish` raises it.
    :meth:`abort` stops and calls ``drop(started)`` (the server aborts the upload)."""

    def __init__(
        self,
        start: Callable[[], Any],
        sign: Callable[[Any, int, int, str], dict[str, Any]],
        drop: Callable[[Any], None],
        part_size: int,
        *,
        max_in_flight: int = 4,
        timeout: float = 60.0,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        if part_size <= 0 or max_in_flight < 1:
            raise ConfigError("part_size and max_in_flight must be at least 1")
        self._start, self._sign, self._drop = start, sign, drop
        self.part_size, self.max_in_flight, self.timeout, self.retries = part_size, max_in_flight, timeout, retries
        self._buf = bytearray(0)
        self._fill = 0
        self._number = 0
        self._free: list[bytearray] = []
        self._in_flight: deque[tuple[bytearray | None, Future[str | None]]] = deque()
        self._started: Future[Any] | None = None
        self._stack = contextlib.ExitStack()
        self._pool: ThreadPoolExecutor | None = None
        self._http: Any = None
        self.error: BaseException | None = None

    @property
    def started(self) -> bool:
        """Whether a part was sent for (the upload was asked for)."""
        return self._started is not None

    @property
    def taken(self) -> bool:
        """Whether the server took the upload in parts (``start()`` answered a plan): from then
        on every byte goes to the bucket from this sender's part buffers (a failed ``PUT`` is
        retried from its buffer), or the upload fails (:meth:`finish` raises); never ``False``
        again once ``True``. ``False`` while ``start()`` has not answered, and when it declined or failed."""
        started = self._started
        if started is None or not started.done() or started.cancelled() or started.exception() is not None:
            return False
        return started.result() is not None

    def write(self, data: Any) -> None:
        """Take the next bytes of the file: copied into a part buffer (the caller may reuse its
        own), except whole parts of a ``bytes`` object (immutable), sent as they are; nothing
        once the server took no upload in parts (``start()`` answered ``None``)."""
        if self.error is not None:
            return
        if self._let_go_if_declined():
            return
        view = memoryview(data).cast("B")
        stable = type(view.obj) is bytes
        while view.nbytes:
            if stable and not self._fill and view.nbytes >= self.part_size:
                if not self._ship(view[: self.part_size]):
                    return
                view = view[self.part_size :]
                continue
            if not self._buf and (self._free or self._number):
                # the file is large (a part was sent): a whole part buffer, filled in place
                self._buf = self._free.pop() if self._free else bytearray(self.part_size)
            take = min(view.nbytes, self.part_size - self._fill)
            if len(self._buf) == self._fill:
                # the first part grows as written: a small file costs its own bytes, not a part
                self._buf += view[:take]
            else:
                self._buf[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == self.part_size and not self._ship(memoryview(self._buf)):
                return

    def _ship(self, body: memoryview) -> bool:
        """Send ``body`` as the next part (the part buffer's bytes, or a slice of an immutable
        write); ``False`` once sending has failed."""
        try:
            if self._pool is None:
                # the pool is shut down (its parts waited for) before the connections close
                self._http = self._stack.enter_context(_client(None, self.max_in_flight, self.timeout))
                self._pool = self._stack.enter_context(ThreadPoolExecutor(self.max_in_flight + 1))
                self._started = self._pool.submit(self._start)
            elif self._started is not None and not self._started.done():
                # a second part waits for the upload's start: a server that takes no upload in
                # parts (a folder store) must not cost this save a part buffer more
                futures_wait([self._started])
            if self._let_go_if_declined():
                return False
            while len(self._in_flight) >= self.max_in_flight:
                self._wait_oldest()
            self._number += 1
            owned = self._buf if body.obj is self._buf else None  # a buffer to reuse once sent
            self._in_flight.append((owned, self._pool.submit(self._send, self._number, body)))
        except BaseException as exc:
            self._fail(exc)
            return False
        if owned is not None:
            self._buf, self._fill = bytearray(0), 0
        return True

    def _send(self, number: int, body: memoryview) -> str | None:
        assert self._started is not None
        sha256 = hashlib.sha256(body).hexdigest()  # while the upload is being started, for the first part
        started = self._started.result()
        if started is None:  # the server takes no upload in parts: nothing to send
            return None
        part = self._sign(started, number, body.nbytes, sha256)
        return _put_part(
            self._http, str(part["url"]), dict(part["headers"]), body, f"upload part {number} to", self.retries
        )

    def _let_go_if_declined(self) -> bool:
        """Whether the server answered that it takes no upload in parts: then every part buffer
        is let go (:meth:`_let_go`; the bytes go through the server once the file is written)."""
        started = self._started
        if started is None or not started.done() or started.exception() is not None or started.result() is not None:
            return False
        self._let_go()
        return True

    def _let_go(self) -> None:
        """Drop every part buffer and the bytes gathered (nothing more is sent)."""
        self._free.clear()
        self._buf, self._fill = bytearray(0), 0

    def _wait_oldest(self) -> None:
        buf, future = self._in_flight.popleft()
        future.result()
        if buf is not None:
            self._free.append(buf)

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        for _, future in self._in_flight:
            future.cancel()
        self._let_go()

    def finish(self) -> Any:
        """Send the last part and wait for every part; the upload's plan (``start()``'s answer),
        or ``None`` when nothing was started or the server takes no upload in parts. A failure is
        raised (the caller then calls :meth:`abort`)."""
        try:
            if self.error is not None:
                raise self.error
            if self._started is None:
                return None
            if self._fill:
                self._ship(memoryview(self._buf)[: self._fill])
            while self._in_flight and self.error is None:
                try:
                    self._wait_oldest()
                except BaseException as exc:
                    self._fail(exc)
            if self.error is not None:
                raise self.error
            return self._started.result()
        finally:
            if self.error is None:
                self._stack.close()

    def abort(self) -> None:
        """Stop sending and have the started upload dropped (best effort)."""
        for _, future in self._in_flight:
            future.cancel()
        self._stack.close()  # waits for the parts being sent
        self._in_flight.clear()
        started = self._started
        if started is not None and not started.cancelled() and started.exception() is None:
            answer = started.result()
            if answer is not None:
                with contextlib.suppress(Exception):
                    self._drop(answer)


def _ranges(size: int, part_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each GET; the last asks for one byte past ``size`` (the probe),
    and is never the probe byte alone."""
    end = size + 1
    ranges = [(start, min(end, start + part_size)) for start in range(0, end, part_size)]
    if len(ranges) > 1 and ranges[-1][1] - ranges[-1][0] == 1:
        ranges[-2:] = [(ranges[-2][0], end)]
    return ranges


_TOTAL = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def _get(client: Any, url: str, size: int, start: int, stop: int, retries: int) -> bytes:
    """Bytes ``[start, min(stop, size))`` of the object behind ``url``;
    :class:`IntegrityError` if it is not ``size`` bytes long."""
    shown = where(url)
    if size == 0:  # an empty object has no byte to ask a range of
        response = _request(client, "GET", url, "download", retries, ok=(200,))
        if response.content:
            raise IntegrityError(f"integrity check failed for {shown}: it is longer than the 0 bytes expected")
        return b""
    response = _request(
        client, "GET", url, "download", retries, ok=(206, 416), headers={"Range": f"bytes={start}-{stop - 1}"}
    )
    if response.status_code == 416:
        raise IntegrityError(f"integrity check failed for {shown}: it is shorter than the {size} bytes expected")
    match = _TOTAL.fullmatch(response.headers.get("Content-Range", ""))
    if match is None or match.group(3) == "*":
        raise StorageError(f"cannot download {shown}: the answer to a ranged GET has no Content-Range total")
    total = int(match.group(3))
    if total != size:
        shape = "longer" if total > size else "shorter"
        raise IntegrityError(
            f"integrity check failed for {shown}: it is {shape} ({total} bytes) than the {size} expected"
        )
    data: bytes = response.content
    if len(data) != min(stop, size) - start or int(match.group(1)) != start:
        raise IntegrityError(
            f"integrity check failed for {shown}: a ranged GET returned {len(data)} bytes at {match.group(1)}"
        )
    return data


def download_ranges(
    url: str,
    size: int,
    *,
    max_concurrency: int = DEFAULT_CONCURRENCY,
    part_size: int = DEFAULT_READ_PART,
    timeout: float = 60.0,
    retries: int = DEFAULT_RETRIES,
    client: Any = None,
) -> Iterator[bytes]:
    """The ``size`` bytes behind a presigned ``GET`` ``url`` in order, as ranged GETs of
    ``part_size``, ``max_concurrency`` in flight (memory: that many chunks).

    Each answer's ``Content-Range`` must say the object has ``size`` bytes and the last
    request asks one byte past it, so an object shorter or longer than ``size`` is an
    :class:`IntegrityError` (possibly after chunks were yielded: hash what you read, as
    :class:`UrlSource` does, before using it). Refusals are :class:`StorageError`."""
    if max_concurrency < 1 or part_size < 1:
        raise ConfigError("max_concurrency and part_size must be at least 1")
    if size < 0:
        raise ConfigError(f"size must be >= 0, not {size!r}")
    with _client(client, max_concurrency, timeout) as http, ThreadPoolExecutor(max_concurrency) as pool:
        pending: deque[Future[bytes]] = deque()
        todo = iter(_ranges(size, part_size))
        try:
            for start, stop in todo:
                pending.append(pool.submit(_get, http, url, size, start, stop, retries))
                if len(pending) >= max_concurrency:
                    break
            while pending:
                chunk = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(_get, http, url, size, *nxt, retries))
                yield chunk
        finally:
            for future in pending:
                future.cancel()


class UrlSource:
    """A read-only artifact behind a presigned ``GET``: what a client without credentials
    loads from, through the same checked path as a store (:meth:`open_artifact`)."""

    def __init__(
        self,
        url: str,
        size: int,
        *,
        max_concurrency: int = DEFAULT_CONCURRENCY,
        part_size: int = DEFAULT_READ_PART,
        timeout: float = 60.0,
        client: Any = None,
    ) -> None:
        self.url = url
        self._size = size
        self.max_concurrency, self.part_size, self.timeout, self.client = max_concurrency, part_size, timeout, client

    def size(self) -> int:
        """The size the server said the object has (the download refuses any other)."""
        return self._size

    def display_path(self) -> str:
        """The URL without its signature."""
        return where(self.url)

    @contextlib.contextmanager
    def stream(self) -> Iterator[Iterator[bytes]]:
        """The object's bytes in order (:func:`download_ranges`)."""
        chunks = download_ranges(
            self.url,
            self._size,
            max_concurrency=self.max_concurrency,
            part_size=self.part_size,
            timeout=self.timeout,
            client=self.client,
        )
        try:
            yield chunks
        finally:
            chunks.close()  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def open_artifact(self, expected: Expected | str, advance: Advance = no_advance) -> Iterator[VerifiedArtifact]:
        """The bytes in private memory after checking them against ``expected`` (a record's
        digests, or a SHA-256), as :meth:`ArtifactStore.open_artifact` gives them: read once,
        nothing returned before every digest matches."""
        if isinstance(expected, str):
            expected = Expected(expected, self._size)
        with self.stream() as chunks:
            out = read_artifact(ChunkReader(chunks).readinto, self._size, expected, self.display_path(), advance)
        try:
            yield out
        finally:
            out.file.close()


__all__ = [
    "Declaration",
    "PartSender",
    "UrlSource",
    "declare",
    "download_ranges",
    "part_ranges",
    "upload_plan",
    "where",
]
