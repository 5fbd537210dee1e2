"""An inotify watch on the folders a kept git status depends on (:mod:`modelkeep.lineage`), so a
save whose watch reported nothing reuses the status without ``lstat``-ing every tracked file.

Linux only; everywhere else, and whenever a watch cannot be trusted, :func:`open_watch` returns
``None`` and the caller keeps checking the ``stat`` of every path. The calls are made through
:mod:`ctypes` (as ``storage/hashing.py`` calls ``sync_file_range``): they run once per kept
status, not per save, so they need no compiler and work the same with or without the optional
``_statscan`` extension; a save only polls the watch's descriptor (:meth:`Watch.quiet`), a
system call :mod:`select` makes.

What a watch covers: every folder on the way from ``/`` to each watched path (a rename or removal
of any of them changes what the path names, and is reported to the watch on its parent), also
through the symbolic links those folders resolve through. A folder that does not exist is not
watched: its creation is reported to the watch on its existing parent. An event matters only when
it names a file or folder on the way to a watched path, or is about a watched folder itself (or
the queue): a log written beside a tracked file, or a temporary file in ``/tmp`` above a
repository, is read and ignored (:meth:`Watch.drain`). Whether a folder's file
system sends every change through this kernel is read with ``statfs`` (its ``f_type``, the magic
number of the file system the folder is on, not a path looked up in ``/proc/self/mountinfo``,
which a bind mount or an escaped name may mislead); a watch is only made when every folder is on
one of :data:`LOCAL_FILESYSTEMS`: on NFS, CIFS, FUSE (sshfs, virtiofs, grpcfuse), 9p and the like
a change made by another machine (or the host) never reaches inotify.

What inotify does not report, and the caller's periodic full check covers: writes through a
shared ``mmap``, a change made through a hard link in an unwatched folder, and a mount over a
watched folder.
"""

from __future__ import annotations

import errno
import os
import select
import struct
import sys
import threading
from typing import Any

# <linux/inotify.h>
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_CLOEXEC = 0o2000000
IN_NONBLOCK = 0o4000

#: What every watch reports (IN_UNMOUNT, IN_Q_OVERFLOW and IN_IGNORED are always reported).
MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_UNMOUNT
    | IN_ONLYDIR
)
#: Events after which the watches may no longer cover every path (a watched folder went away or
#: moved, a missing folder or a symbolic link appeared, events were lost): the watch is made again.
RESHAPING = IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_Q_OVERFLOW | IN_IGNORED

#: ``statfs`` f_type of the file systems whose every change goes through this kernel (<linux/magic.h>).
LOCAL_FILESYSTEMS = {
    0xEF53: "ext2/ext3/ext4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x01021994: "tmpfs",
    0x858458F6: "ramfs",
    0xF2F52010: "f2fs",
    0x2FC12FC1: "zfs",
    0x794C7630: "overlay",
    0xCA451A4E: "bcachefs",
}

#: How events are read (a test replaces it to make events up).
_read = os.read
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len, then the name
#: Events about a watch itself (or the queue), which matter whatever their name.
_ABOUT_THE_WATCH = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_Q_OVERFLOW | IN_IGNORED
_MISSING = (errno.ENOENT, errno.ENOTDIR)


class _Libc:
    """``inotify_init1``, ``inotify_add_watch`` and ``statfs`` through ctypes."""

    def __init__(self) -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        self.init1 = libc.inotify_init1
        self.init1.argtypes, self.init1.restype = [ctypes.c_int], ctypes.c_int
        self.add_watch = libc.inotify_add_watch
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.add_watch.restype = ctypes.c_int
        self.statfs = libc.statfs
        self.statfs.argtypes, self.statfs.restype = [ctypes.c_char_p, ctypes.c_void_p], ctypes.c_int
        self.get_errno = ctypes.get_errno
        self._ctypes = ctypes

    def fs_type(self, folder: bytes) -> int | None:
        """``statfs(folder).f_type`` as an unsigned 32-bit number (the magic numbers are; a
        32-bit ``long`` holds some as negative), or ``None`` when it fails."""
        # struct statfs is at most 120 bytes on Linux, f_type its first field, a native word; a
        # buffer per call, as threads may ask at once
        buffer = self._ctypes.create_string_buffer(256)
        if self.statfs(folder, buffer) != 0:
            return None
        value = int(self._ctypes.c_long.from_buffer(buffer).value)
        return value & 0xFFFFFFFF if -(1 << 31) <= value < 1 << 32 else None


_libc: _Libc | None = None


def _load() -> _Libc | None:
    """The C library's inotify calls, ``None`` where there are none (not Linux, no symbols).
    No lock: two threads may both load them, and either result serves."""
    global _libc
    if not sys.platform.startswith("linux"):
        return None
    if _libc is None:
        try:
            _libc = _Libc()
        except (OSError, AttributeError):
            return None
    return _libc


#: For one watched folder: the names in it whose events matter, or ``None`` for all of them.
Names = set[str] | None


def interest(paths: list[str], resolve: bool = False) -> dict[str, Names]:
    """For every folder on the way from ``/`` to each of ``paths`` (absolute and normalized, as
    ``lineage`` makes them; with ``resolve``, also to its folder's real path): the names in it
    that lead to one of ``paths``. A path named ``.git`` may be a folder whose own ``stat`` is
    checked: every event in it matters (``None``)."""
    out: dict[str, Names] = {}
    for path in paths:
        chains = [path]
        if resolve:
            folder, _, name = path.rpartition(os.sep)
            real = os.path.join(os.path.realpath(folder or os.sep), name)
            if real != path:
                chains.append(real)
        for child in chains:
            if child.endswith(os.sep + ".git"):
                out[child] = None
            while True:
                parent, _, name = child.rpartition(os.sep)
                if not name:
                    break  # at /
                parent = parent or os.sep
                names = out.setdefault(parent, set())
                if names is not None:
                    if name in names:
                        break  # the way up from here is already in
                    names.add(name)
                child = parent
    return out


class Watch:
    """One inotify instance of this process and the folders it watches.

    Only the process that made it reads it (:attr:`pid`: a forked child never reads, nor closes,
    its parent's descriptor; the descriptor is not inherited across ``exec``). Its descriptor is
    closed by :meth:`close`, or when the watch is garbage collected (the kept status that owned it
    was replaced). :attr:`lock` is held by the one thread that reads its events at a time."""

    __slots__ = ("_poll", "fd", "folders", "lock", "names", "pid", "sources")

    def __init__(self, fd: int) -> None:
        self.fd, self.pid = fd, os.getpid()
        self.folders: set[str] = set()
        #: per watch descriptor: the names whose events matter (:func:`interest`)
        self.names: dict[int, Names] = {}
        self.sources: list[tuple[list[str], bool]] = []
        self.lock = threading.Lock()
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def add(self, paths: list[str], resolve: bool = False) -> bool:
        """Watch every folder on the way to each of ``paths`` (:func:`interest`); ``False`` when
        one of them cannot be watched: not on a local file system, or ``inotify_add_watch``
        refused it (the watch limit, a folder it may not read)."""
        libc = _load()
        if libc is None:
            return False
        self.sources.append((list(paths), resolve))  # a copy: the caller may extend its list
        wanted = interest(paths, resolve)
        for folder in sorted(wanted, key=lambda f: (f.count(os.sep), f)):  # parents first
            path = os.fsencode(folder)
            wd = libc.add_watch(self.fd, path, MASK)
            if wd < 0:
                if libc.get_errno() in _MISSING:
                    continue  # its parent's watch reports its creation
                return False
            if folder not in self.folders and libc.fs_type(path) not in LOCAL_FILESYSTEMS:
                return False
            self.folders.add(folder)
            # a folder reached twice (through a symbolic link, or from two calls) has one descriptor
            had, names = self.names.get(wd, set()), wanted[folder]
            self.names[wd] = None if had is None or names is None else had | names
        return True

    def quiet(self) -> bool:
        """Whether no event is waiting (nothing read: a peek, safe from any thread)."""
        return not self._poll.poll(0)

    def drain(self) -> tuple[bool, bool]:
        """Read every waiting event. Returns whether one of them matters (it names a folder or
        file on the way to a watched path, or the watched folder itself, or events were lost)
        and whether the watches still cover every folder (no event of :data:`RESHAPING` that
        matters, no read error). Hold :attr:`lock`."""
        matters, intact = False, True
        while True:
            try:
                data = _read(self.fd, 65536)
            except BlockingIOError:
                return matters, intact
            except OSError:
                return True, False
            if not data:
                return True, False
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                start = offset + _EVENT.size
                name = os.fsdecode(data[start : start + length].split(b"\0", 1)[0])
                offset = start + length
                names = self.names.get(wd, None)
                if mask & _ABOUT_THE_WATCH or not name or names is None or name in names:
                    matters = True
                    intact = intact and not mask & RESHAPING

    def renew(self) -> Watch | None:
        """A new watch on the same paths (see :func:`open_watch`)."""
        watch = open_watch(*self.sources[0])
        for paths, resolve in self.sources[1:]:
            if watch is None or not watch.add(paths, resolve):
                return None
        return watch

    def close(self, _getpid: Any = os.getpid, _close: Any = os.close) -> None:
        """Close the descriptor (only in the process that made it, and only once). Not while
        another thread may still poll it (its number could be reused): the owner drops its last
        reference instead, and the collector closes it (``os`` bound here for a collection at
        interpreter exit)."""
        fd, self.fd = self.fd, -1
        if fd >= 0 and self.pid == _getpid():
            _close(fd)

    def __del__(self) -> None:
        self.close()


def open_watch(paths: list[str], resolve: bool = False) -> Watch | None:
    """A new watch on the folders of ``paths`` (:meth:`Watch.add`), or ``None`` where inotify is
    unavailable or cannot watch them all."""
    libc = _load()
    if libc is None:
        return None
    fd = libc.init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        return None
    try:
        watch = Watch(fd)
    except OSError:  # poll could not register it
        os.close(fd)
        return None
    if not watch.add(paths, resolve):
        watch.close()
        return None
    return watch
