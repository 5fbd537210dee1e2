"""A local cache of remote artifacts, content-addressed by SHA-256, shared by every registry
and process of one user on the host.

Layout under :func:`cache_dir` (``MODELKEEP_CACHE_DIR``, else ``$XDG_CACHE_HOME/modelkeep``,
else ``~/.cache/modelkeep``), created mode 0700::

    sha256/<first two hex digits>/<sha256>   an entry: the artifact's bytes, read-only
    used/<sha256>                            its last use (the marker's mtime: LRU order)
    tmp/                                     downloads in progress
    lock                                     held (flock) while entries are added or evicted

An entry enters only after the downloaded bytes hash to the SHA-256 the index records; it is
written to ``tmp/`` and renamed into place. The cache folder is treated like a store someone
else may write: a load reads an entry through :class:`~.local.LocalStore` (no symbolic links)
and checks it exactly as a local store's artifact (every byte hashed before it is parsed; a
memory-mapped load skips the payload hash only when this user's checked-files record knows the
file by inode, size, mtime and ctime). An entry owned by another user, or that is not a regular
file, is never read; a tampered entry fails its check, is removed, and the load reads the
remote store instead. The last use is recorded beside the entry, never on it, so using an entry
does not change its ctime (which would void its checked-files record).

The cache holds at most ``max_bytes``: each addition evicts the least recently used entries,
under an exclusive ``flock``, so concurrent processes never evict past the cap or remove a file
another is still writing. A process that has an entry open keeps reading it after eviction
(POSIX unlink semantics).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import IntegrityError, ModelKeepError
from .base import ArtifactStore
from .hashing import Advance, VerifiedArtifact, new_hash, no_advance
from .local import LocalStore

logger = logging.getLogger("modelkeep")

#: ``cache_max_bytes`` when nothing sets it.
DEFAULT_MAX_BYTES = 10 << 30
_SHA256 = re.compile(r"[0-9a-f]{64}")


def cache_dir() -> Path:
    """``MODELKEEP_CACHE_DIR``, else ``$XDG_CACHE_HOME/modelkeep``, else ``~/.cache/modelkeep``."""
    explicit = os.environ.get("MODELKEEP_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "modelkeep"


@dataclass(frozen=True)
class CacheInfo:
    """What :meth:`ArtifactCache.info` reports."""

    folder: str
    entries: int
    bytes: int
    max_bytes: int


class ArtifactCache:
    """The artifacts of remote stores, kept on the local disk (see the module's docstring)."""

    def __init__(self, folder: str | os.PathLike[str] | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.folder = Path(folder) if folder is not None else cache_dir()
        self.max_bytes = max_bytes
        #: The entries, read like a local store (no symbolic links below the folder).
        self.store = LocalStore(os.fspath(self.folder))

    # -- naming -----------------------------------------------------------------------
    @staticmethod
    def entry_key(sha256: str) -> str | None:
        """The key of ``sha256``'s entry; ``None`` for a digest that is not 64 hex digits."""
        return f"sha256/{sha256[:2]}/{sha256}" if _SHA256.fullmatch(sha256) else None

    def _path(self, *parts: str) -> str:
        return os.path.join(self.folder, *parts)

    # -- using entries --------------------------------------------------------------------
    def lookup(self, sha256: str) -> str | None:
        """The key of a usable entry for ``sha256`` (marked as just used), or ``None``."""
        key = self.entry_key(sha256)
        if key is None or not self._safe_folder():
            return None
        path = self._path(*key.split("/"))
        try:
            self.store.full_path(os.path.dirname(key))  # no link on the way
            st = os.lstat(path)
        except (OSError, ModelKeepError):
            return None
        if not _own_regular_file(st):
            logger.warning("ignoring cache entry %s: not a regular file of this user", self._path(*key.split("/")))
            return None
        self._mark_used(sha256)
        return key

    def fetch(
        self, source: ArtifactStore, key: str, sha256: str, size: int | None, advance: Advance = no_advance
    ) -> str | None:
        """Copy ``source``'s ``key`` into the cache after checking that it hashes to ``sha256``;
        returns the entry's key, or ``None`` when it is not cached (too large for the cap, an
        unusable cache folder). A download that does not match raises :class:`IntegrityError`."""
        entry = self.entry_key(sha256)
        if entry is None or (size is not None and size > self.max_bytes) or not self._prepare():
            return None
        tmp = self._path("tmp", f"{uuid.uuid4().hex}.part")
        try:
            digest = new_hash("sha256")
            got = 0
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with open(fd, "wb", buffering=0) as out, source.stream(key) as chunks:
                for chunk in chunks:
                    digest.update(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[out.write(view) or 0 :]
                    got += len(chunk)
                    advance(len(chunk))
            if digest.hexdigest() != sha256 or (size is not None and got != size):
                raise IntegrityError(
                    f"integrity check failed for {source.display_path(key)}: its bytes differ from those "
                    f"saved (SHA-256 {sha256[:16]}...); the artifact was changed after it was saved"
                )
            os.chmod(tmp, 0o400)
            with self._locked():
                final = self._path(*entry.split("/"))
                os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)
                self.store.full_path(os.path.dirname(entry))  # UnsafeKeyError for a linked folder
                os.replace(tmp, final)  # replaces a link or odd file left there, never follows it
                self._mark_used(sha256)
                self._evict(self.max_bytes, keep=sha256)
            return entry
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def begin_entry(self) -> PendingEntry | None:
        """A new entry to write bytes into, admitted under its SHA-256 by
        :meth:`PendingEntry.admit` (a save writes the bytes it uploads; a load the bytes it
        checked itself); ``None`` when the cache folder is unusable."""
        if not self._prepare():
            return None
        tmp = self._path("tmp", f"{uuid.uuid4().hex}.part")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            logger.debug("not caching: %s", exc)
            return None
        return PendingEntry(self, fd, tmp)

    def keep_verified(self, sha256: str, verified: VerifiedArtifact, size: int) -> str | None:
        """Add the bytes of an artifact a load has just read and checked (``verified``) as
        ``sha256``'s entry, without hashing them again; best effort (``None`` when not added)."""
        if size > self.max_bytes or self.entry_key(sha256) is None:
            return None
        pending = self.begin_entry()
        if pending is None:
            return None
        held: Any = verified.file.getbuffer() if isinstance(verified.file, io.BytesIO) else verified.file
        whole = memoryview(held)
        try:
            at = 0
            for start in sorted(verified.ranges):  # payloads live in buffers of their own
                _, data_start, end = verified.ranges[start]
                pending.write(whole[at:data_start])
                pending.write(memoryview(verified.buffers[start])[: end - data_start])
                at = end
            pending.write(whole[at:size])
        finally:
            whole.release()
        return pending.admit(sha256, size)

    def discard(self, sha256: str, reason: str) -> None:
        """Remove ``sha256``'s entry (it failed its check), saying why."""
        key = self.entry_key(sha256)
        if key is None:
            return
        logger.warning("removed cache entry %s: %s", self._path(*key.split("/")), reason)
        with contextlib.suppress(OSError):
            os.unlink(self._path(*key.split("/")))
        with contextlib.suppress(OSError):
            os.unlink(self._path("used", sha256))

    # -- housekeeping ------------------------------------------------------------------------
    def entries(self) -> list[tuple[str, int, float]]:
        """``(sha256, size, last use)`` of every entry, least recently used first."""
        out: list[tuple[str, int, float]] = []
        root = self._path("sha256")
        with contextlib.suppress(OSError):
            for prefix in os.listdir(root):
                with contextlib.suppress(OSError):
                    for name in os.listdir(os.path.join(root, prefix)):
                        if not (_SHA256.fullmatch(name) and name[:2] == prefix):
                            continue  # not an entry (prune removes it)
                        path = os.path.join(root, prefix, name)
                        try:
                            st = os.lstat(path)
                        except OSError:
                            continue
                        try:
                            used = os.lstat(self._path("used", name)).st_mtime
                        except OSError:
                            used = st.st_mtime
                        out.append((name, st.st_size, used))
        out.sort(key=lambda e: e[2])
        return out

    def info(self) -> CacheInfo:
        """How many entries, how many bytes, and the cap."""
        found = self.entries()
        return CacheInfo(os.fspath(self.folder), len(found), sum(size for _, size, _ in found), self.max_bytes)

    def prune(self, max_bytes: int | None = None) -> tuple[int, int]:
        """Evict least recently used entries until at most ``max_bytes`` (default: the cap)
        remain, and remove anything that is not a valid entry (odd files, links, stale
        downloads); returns ``(files removed, bytes freed)``."""
        if not self._prepare():
            return 0, 0
        with self._locked():
            removed, freed = self._remove_invalid()
            n, b = self._evict(self.max_bytes if max_bytes is None else max_bytes)
        return removed + n, freed + b

    def clear(self) -> tuple[int, int]:
        """Remove every entry; returns ``(files removed, bytes freed)``."""
        return self.prune(0)

    # -- internals ------------------------------------------------------------------------------
    def _safe_folder(self) -> bool:
        """The folder is a real directory of this user that no one else can write."""
        try:
            st = os.lstat(self.folder)
        except OSError:
            return False
        ok = stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022
        if not ok:
            logger.warning("not using the cache %s: it must be a folder of yours that others cannot write", self.folder)
        return ok

    def _prepare(self) -> bool:
        try:
            os.makedirs(self.folder, mode=0o700, exist_ok=True)
            for sub in ("sha256", "used", "tmp"):
                os.makedirs(self._path(sub), mode=0o700, exist_ok=True)
        except OSError as exc:
            logger.warning("not using the cache %s: %s", self.folder, exc)
            return False
        subfolders = [self._path(sub) for sub in ("sha256", "used", "tmp")]
        return self._safe_folder() and all(os.path.isdir(p) and not os.path.islink(p) for p in subfolders)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        fd = os.open(self._path("lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _mark_used(self, sha256: str) -> None:
        path = self._path("used", sha256)
        try:
            os.utime(path, follow_symlinks=False)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
        except OSError:
            pass

    def _evict(self, max_bytes: int, keep: str | None = None) -> tuple[int, int]:
        """Remove least recently used entries until at most ``max_bytes`` remain (caller holds the lock)."""
        found = self.entries()
        total = sum(size for _, size, _ in found)
        removed = freed = 0
        for sha, size, _ in found:
            if total <= max_bytes:
                break
            if sha == keep and max_bytes > 0:
                continue
            with contextlib.suppress(OSError):
                os.unlink(self._path("sha256", sha[:2], sha))
                removed += 1
                freed += size
            with contextlib.suppress(OSError):
                os.unlink(self._path("used", sha))
            total -= size
        return removed, freed

    def _remove_invalid(self) -> tuple[int, int]:
        removed = freed = 0
        now = time.time()
        for name in _listdir(self._path("tmp")):
            path = self._path("tmp", name)
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if now - st.st_mtime > 3600 or not stat.S_ISREG(st.st_mode):  # older than any live download
                    os.unlink(path)
                    removed, freed = removed + 1, freed + st.st_size
        root = self._path("sha256")
        for prefix in _listdir(root):
            folder = os.path.join(root, prefix)
            if os.path.islink(folder) or not os.path.isdir(folder):
                with contextlib.suppress(OSError):
                    os.unlink(folder)
                    removed += 1
                continue
            for name in _listdir(folder):
                path = os.path.join(folder, name)
                with contextlib.suppress(OSError):
                    st = os.lstat(path)
                    if not (_SHA256.fullmatch(name) and name[:2] == prefix and _own_regular_file(st)):
                        os.unlink(path)
                        removed, freed = removed + 1, freed + st.st_size
        for name in _listdir(self._path("used")):
            if not os.path.lexists(self._path("sha256", name[:2], name)):
                with contextlib.suppress(OSError):
                    os.unlink(self._path("used", name))
        return removed, freed


class PendingEntry:
    """An entry being written under ``tmp/`` (see :meth:`ArtifactCache.begin_entry`). A write
    that fails (a full disk) only means the entry is not admitted: it never fails the caller."""

    def __init__(self, cache: ArtifactCache, fd: int, tmp: str) -> None:
        self.cache = cache
        self._fd: int | None = fd
        self._tmp = tmp
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` (best effort)."""
        if self._fd is None:
            return
        view = memoryview(data).cast("B")
        try:
            n = view.nbytes
            while view.nbytes:
                view = view[os.write(self._fd, view) :]
            self.size += n
        except OSError as exc:
            logger.debug("not caching %s: %s", self._tmp, exc)
            self.discard()

    def admit(self, sha256: str, size: int) -> str | None:
        """Make the bytes written ``sha256``'s entry (the caller hashed them, or checked them
        against the record) unless they are not ``size`` bytes or exceed the cap; returns the
        entry's key, or ``None``."""
        entry = self.cache.entry_key(sha256)
        if self._fd is None or entry is None or self.size != size or size > self.cache.max_bytes:
            self.discard()
            return None
        cache = self.cache
        try:
            os.close(self._fd)
            self._fd = None
            os.chmod(self._tmp, 0o400)
            with cache._locked():
                final = cache._path(*entry.split("/"))
                os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)
                cache.store.full_path(os.path.dirname(entry))  # UnsafeKeyError for a linked folder
                os.replace(self._tmp, final)
                cache._mark_used(sha256)
                cache._evict(cache.max_bytes, keep=sha256)
            return entry
        except (OSError, ModelKeepError) as exc:
            logger.debug("not caching %s: %s", sha256, exc)
            return None
        finally:
            self.discard()

    def discard(self) -> None:
        """Throw the bytes away (idempotent)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)


def _own_regular_file(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def open_cache(max_bytes: int | None) -> ArtifactCache | None:
    """The cache with cap ``max_bytes`` (default :data:`DEFAULT_MAX_BYTES`); ``None`` when 0."""
    if max_bytes == 0:
        return None
    return ArtifactCache(max_bytes=DEFAULT_MAX_BYTES if max_bytes is None else max_bytes)


__all__ = ["DEFAULT_MAX_BYTES", "ArtifactCache", "CacheInfo", "cache_dir", "open_cache"]
