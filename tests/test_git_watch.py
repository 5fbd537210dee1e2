"""The inotify watch beside a kept git status (modelkeep._inotify, lineage._GitSnapshot.quiet):
a save whose watch reported nothing reuses the status without a stat check, and every change a
user can make between two saves is still seen, through the watch or through its fallbacks.

Each test runs with the periodic full check pushed an hour away (WATCH_RECHECK), so that only
the watch can tell a change; ``full_checks`` counts the full checks, to show which path answered.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelkeep import ModelPersistence, _inotify, lineage
from modelkeep.lineage import git_state

from .test_signature_lineage import _repo_with_one_commit

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or _inotify._load() is None, reason="inotify is Linux's"
)

Git = Callable[..., str]


@pytest.fixture
def full_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Settled files (RACY_NS=0), no periodic full check, no status kept by an earlier test, and
    a record of the full checks."""
    monkeypatch.setattr(lineage, "_snapshots", {})
    monkeypatch.setattr(lineage, "_watched", ())
    monkeypatch.setattr(lineage, "RACY_NS", 0)
    monkeypatch.setattr(lineage, "WATCH_RECHECK", 3600.0)
    calls: list[int] = []
    real = lineage._GitSnapshot.unchanged

    def unchanged(self: lineage._GitSnapshot) -> bool:
        calls.append(len(self.paths))
        return real(self)

    monkeypatch.setattr(lineage._GitSnapshot, "unchanged", unchanged)
    return calls


def _kept(folder: Path) -> lineage._GitSnapshot:
    snapshot = lineage._snapshots.get(str(folder))
    assert isinstance(snapshot, lineage._GitSnapshot), snapshot
    return snapshot


def _truth(folder: Path) -> dict[str, Any] | None:
    """What ``git status`` says now, asked directly."""
    return lineage._read_status(folder)


def _repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cwd: str = "") -> Path:
    """A repository with ``train.py``, ``pkg/util.py`` and ``deep/inner/leaf/mod.py`` (whose
    ``deep`` and ``inner`` folders hold no file of their own), its working directory ``cwd``."""
    git = _repo_with_one_commit(tmp_path / "repo")
    repo = tmp_path / "repo"
    (repo / "deep" / "inner" / "leaf").mkdir(parents=True)
    (repo / "deep" / "inner" / "leaf" / "mod.py").write_text("M = 1\n")
    git("add", "deep")
    git("commit", "-qm", "deep")
    monkeypatch.chdir(repo / cwd)
    return repo


def _same_size_same_mtime(path: Path) -> None:
    """An edit that leaves the size and the mtime (to the nanosecond) as they were: only the
    ctime shows it."""
    before = path.stat()
    text = path.read_bytes()
    path.write_bytes(text.replace(b"1", b"2") if b"1" in text else text.upper())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert after.st_size == before.st_size and after.st_mtime_ns == before.st_mtime_ns


def test_a_quiet_watch_answers_without_a_stat_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_checks: list[int]
) -> None:
    """The kept status of a repository on a local file system has a watch on every folder from
    ``/`` to each tracked file and git file; while it reports nothing, saves lstat nothing."""
    repo = _repo(tmp_path, monkeypatch)
    state = git_state()
    snapshot = _kept(repo)
    assert snapshot.watch is not None and snapshot.watch.pid == os.getpid()
    folders = snapshot.watch.folders
    assert {
        "/",
        str(tmp_path),
        str(repo),
        str(repo / "pkg"),
        str(repo / ".git"),
        str(repo / ".git" / "refs" / "heads"),
    } <= folders
    with ModelPersistence(models_dir=tmp_path / "models") as p:
        for _ in range(3):
            rec = p.save_version({"a": 0}, "m")
            assert rec.lineage is not None and rec.lineage["git"] == state
    assert git_state() == state == _truth(repo)
    assert full_checks == []  # answered by the watch alone


def _edit_tracked(repo: Path, git: Git) -> None:
    _same_size_same_mtime(repo / "train.py")


def _edit_in_subfolder(repo: Path, git: Git) -> None:
    _same_size_same_mtime(repo / "pkg" / "util.py")


def _chmod(repo: Path, git: Git) -> None:
    (repo / "train.py").chmod(0o755)


def _delete(repo: Path, git: Git) -> None:
    (repo / "pkg" / "util.py").unlink()


def _commit(repo: Path, git: Git) -> None:
    git("commit", "-q", "--allow-empty", "-m", "second")


def _switch_branch(repo: Path, git: Git) -> None:
    git("checkout", "-q", "-b", "other")


def _git_add(repo: Path, git: Git) -> None:
    (repo / "new.py").write_text("N = 1\n")
    git("add", "new.py")


def _edit_from_another_process(repo: Path, git: Git) -> None:
    code = "import sys; open(sys.argv[1], 'w').write('print(7)\\n')"  # same size as print(1)
    subprocess.run([sys.executable, "-c", code, str(repo / "train.py")], check=True)


def _folder_above_replaced(repo: Path, git: Git) -> None:
    """``deep/inner`` renamed away and made again: ``leaf``'s own watch moves with it silently."""
    (repo / "deep" / "inner").rename(repo / "deep" / "inner.old")
    (repo / "deep" / "inner" / "leaf").mkdir(parents=True)
    (repo / "deep" / "inner" / "leaf" / "mod.py").write_text("M = 2\n")


CHANGES = {
    "folder above replaced": _folder_above_replaced,
    "edit, same size and mtime": _edit_tracked,
    "edit in a subfolder": _edit_in_subfolder,
    "chmod": _chmod,
    "delete": _delete,
    "new commit": _commit,
    "branch switch": _switch_branch,
    "git add": _git_add,
    "edit by another process": _edit_from_another_process,
}


@pytest.mark.parametrize(
    ("via", "compiled"), [("git_state", True), ("save", True), ("git_state", False)], ids=["c", "save", "python"]
)
@pytest.mark.parametrize("change", list(CHANGES), ids=list(CHANGES))
def test_every_change_is_seen_through_the_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_checks: list[int], change: str, via: str, compiled: bool
) -> None:
    """Through ``git_state`` or a save, with the compiled full check or the Python one."""
    if not compiled:
        monkeypatch.setattr(lineage, "_c_signatures", None)
    repo = _repo(tmp_path, monkeypatch)

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout

    with ModelPersistence(models_dir=tmp_path / "models") as p:

        def state() -> dict[str, Any] | None:
            if via == "git_state":
                return git_state()
            rec = p.save_version({"a": 0}, "m")
            return None if rec.lineage is None else rec.lineage.get("git")

        kept = state()
        assert _kept(repo).watch is not None and state() == kept and full_checks == []
        CHANGES[change](repo, git)
        now = _truth(repo)
        assert now != kept  # the change matters to git
        assert state() == now
        assert full_checks  # the watch's event led to the full check
        assert state() == now  # and the status read then is kept or read again, never the old one


def test_a_git_folder_made_between_cwd_and_the_top_is_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_checks: list[int]
) -> None:
    """Saving from ``repo/pkg``: a ``.git`` made in ``pkg`` makes it another repository."""
    repo = _repo(tmp_path, monkeypatch, cwd="pkg")
    kept = git_state()
    assert kept is not None and git_state() == kept and full_checks == []
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo / "pkg", check=True, capture_output=True)
    assert _truth(repo / "pkg") is None  # a repository with no commit yet
    assert git_state() is None


def test_an_edit_right_after_the_stats_of_the_snapshot_is_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_checks: list[int]
) -> None:
    """The watch is made before the snapshot's first ``stat``: an edit made right after its last
    ``stat`` (the kept status then predates it) is reported to the watch."""
    repo = _repo(tmp_path, monkeypatch)
    real_stats = lineage._stats
    calls: list[int] = []

    def stats(paths: list[str]) -> list[Any]:
        out = real_stats(paths)
        calls.append(len(paths))
        if len(calls) == 3:  # the stats of every path after `git status` was read: the last ones
            _same_size_same_mtime(repo / "train.py")
        return out

    monkeypatch.setattr(lineage, "_stats", stats)
    kept = git_state()
    assert len(calls) == 3 and kept is not None and kept["dirty"] is False
    assert _kept(repo).result == kept  # kept though the edit came before it returned
    assert git_state() == _truth(repo) != kept


def _event(wd: int, mask: int, name: bytes = b"") -> bytes:
    return struct.pack("iIII", wd, mask, 0, len(name)) + name


def test_a_queue_overflow_remakes_the_watch_and_checks_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_checks: list[int]
) -> None:
    """Events were lost (IN_Q_OVERFLOW): the watch is made again and every path is checked."""
    repo = _repo(tmp_path, monkeypatch)
    (repo / "scratch.log").write_text("a\n")  # untracked: its edits are events that change nothing
    kept = git_state()
    watch = _kept(repo).watch
    assert watch is not None

    with open(repo / "scratch.log", "a") as fh:
        fh.write("b\n")  # IN_MODIFY of a file no status depends on: read, and nothing to check
    assert not watch.quiet()
    assert git_state() == kept and full_checks == [] and _kept(repo).watch is watch and watch.quiet()

    real_read = _inotify._read
    made_up: list[bytes] = []

    def overflowed(fd: int, n: int) -> bytes:
        real_read(fd, n)  # what the kernel had is lost...
        if made_up:
            raise BlockingIOError
        made_up.append(_event(-1, _inotify.IN_Q_OVERFLOW))
        return made_up[-1]  # ... and only the overflow is told

    monkeypatch.setattr(_inotify, "_read", overflowed)
    with open(repo / "scratch.log", "a") as fh:
        fh.write("c\n")
    assert git_state() == kept and len(full_checks) == 1
    renewed = _kept(repo).watch
    assert renewed is not None and renewed is not watch and renewed.folders == watch.folders

    made_up.clear()
    _same_size_same_mtime(repo / "train.py")  # the edit's own event is lost behind an overflow
    assert git_state() == _truth(repo) != kept


def _no_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_inotify, "_load", lambda: None)


def _init_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = _inotify._load()
    assert libc is not None
    monkeypatch.setattr(libc, "init1", lambda flags: -1)  # EMFILE: too many inotify instances


def _watch_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = _inotify._load()
    assert libc is not None
    real = libc.add_watch
    added: list[bytes] = []

    def add_watch(fd: int, path: bytes, mask: int) -> int:
        if len(added) >= 3:
            return -1
        added.append(path)
        return int(real(fd, path, mask))

    monkeypatch.setattr(libc, "add_watch", add_watch)
    monkeypatch.setattr(libc, "get_errno", lambda: errno.ENOSPC)  # max_user_watches reached


def _nfs_home(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = _inotify._load()
    assert libc is not None
    real = libc.fs_type
    home = os.fsencode(os.path.expanduser("~"))
    monkeypatch.setattr(libc, "fs_type", lambda folder: 0x6969 if folder == home else real(folder))  # NFS


FALLBACKS = {
    "not linux": _no_linux,
    "inotify_init1 fails": _init_fails,
    "watch limit": _watch_limit,
    "home on nfs": _nfs_home,
}


@pytest.mark.parametrize("compiled", [True, False], ids=["c", "python"])
@pytest.mark.parametrize("fallback", list(FALLBACKS), ids=list(FALLBACKS))
def test_without_a_watch_every_save_checks_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_checks: list[int], fallback: str, compiled: bool
) -> None:
    """No inotify, no instance left, the watch limit reached, or a folder on a file system whose
    changes may not go through this kernel: the status is kept without a watch, and every reuse
    lstats every path, as without inotify."""
    if not compiled:
        monkeypatch.setattr(lineage, "_c_signatures", None)
    repo = _repo(tmp_path, monkeypatch)
    FALLBACKS[fallback](monkeypatch)
    kept = git_state()
    assert _kept(repo).watch is None
    assert git_state() == kept and len(full_checks) == 1
    _same_size_same_mtime(repo / "train.py")
    assert git_state() == _truth(repo) != kept


def test_a_local_file_system_is_recognised() -> None:
    libc = _inotify._load()
    assert libc is not None
    assert libc.fs_type(b"/proc") == 0x9FA0  # PROC_SUPER_MAGIC: read right, and not local
    assert libc.fs_type(b"/no/such/folder") is None
    assert _inotify.open_watch(["/proc/self/status"]) is None


def test_a_change_inotify_cannot_see_is_seen_by_the_periodic_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_checks: list[int]
) -> None:
    """A write through a shared mmap makes no inotify event, but changes the file's ctime: the
    full check due every WATCH_RECHECK seconds sees it."""
    repo = _repo(tmp_path, monkeypatch)
    kept = git_state()
    snapshot = _kept(repo)
    with open(repo / "train.py", "r+b") as fh, mmap.mmap(fh.fileno(), 0) as mapped:
        mapped[6] = ord("2")  # print(1) -> print(2), the file kept open (its close is an event)
        mapped.flush()
        assert snapshot.quiet()  # inotify saw nothing
        assert git_state() == kept and full_checks == []
        snapshot.checked -= lineage.WATCH_RECHECK  # the last full check is now due
        assert git_state() == _truth(repo) != kept and len(full_checks) == 1


def test_quiet_waits_for_a_thread_that_took_events_and_for_a_failed_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_checks: list[int]
) -> None:
    """Events read by one thread are gone for the others: while that thread checks, or after its
    check failed, the snapshot is not quiet for anyone."""
    repo = _repo(tmp_path, monkeypatch)
    git_state()
    snapshot = _kept(repo)
    assert snapshot.watch is not None and snapshot.quiet()
    with snapshot.watch.lock:
        assert not snapshot.quiet()
    assert snapshot.quiet()
    _same_size_same_mtime(repo / "train.py")
    assert not snapshot.still_valid()  # reads the events
    assert snapshot.watch.quiet() and not snapshot.quiet()  # no event waits any more, yet not quiet


def _fork_and_report(repo: Path) -> tuple[int, dict[str, Any] | None, dict[str, Any] | None]:
    """Fork; the child waits for the parent's edit, then reports its git state. Returns the
    child's exit status, its state, and the parent's state read after the child's."""
    ready_r, ready_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.close(ready_w)
            os.close(out_r)
            os.read(ready_r, 1)
            os.write(out_w, json.dumps(git_state()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(ready_r)
    os.close(out_w)
    _same_size_same_mtime(repo / "train.py")  # made after the fork, before the child looks
    os.write(ready_w, b"x")
    with os.fdopen(out_r, "rb") as fh:
        child = json.loads(fh.read())
    os.close(ready_w)
    _, status = os.waitpid(pid, 0)
    return status, child, git_state()


def test_a_forked_child_never_reads_its_parents_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_checks: list[int]
) -> None:
    """A child inherits the kept status and its descriptor: it checks with a watch of its own,
    so the parent's events stay the parent's, and both see a change made after the fork."""
    repo = _repo(tmp_path, monkeypatch)
    kept = git_state()
    watch = _kept(repo).watch
    assert watch is not None
    status, child, parent = _fork_and_report(repo)
    assert status == 0
    assert child == parent == _truth(repo) != kept


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_replaced_or_dropped_watch_closes_its_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_checks: list[int]
) -> None:
    """Many repositories and many changes: one descriptor per kept status, never more."""
    before = _open_fds()
    repos = []
    for n in range(4):
        git = _repo_with_one_commit(tmp_path / f"repo{n}")
        repos.append((tmp_path / f"repo{n}", git))
    for round_ in range(5):
        for repo, _ in repos:
            monkeypatch.chdir(repo)
            assert git_state() is not None
            (repo / "train.py").write_text(f"print({round_})\n")  # a new status, a new watch
    kept = [lineage._snapshots.get(str(repo)) for repo, _ in repos]
    assert all(isinstance(s, lineage._GitSnapshot) and s.watch is not None for s in kept)
    assert _open_fds() - before == len(repos)
    for repo, _ in repos:
        del lineage._snapshots[str(repo)]
    del kept
    assert _open_fds() == before


def test_the_descriptor_is_not_inherited_across_exec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_checks: list[int]
) -> None:
    repo = _repo(tmp_path, monkeypatch)
    git_state()
    watch = _kept(repo).watch
    assert watch is not None and not os.get_inheritable(watch.fd)
    out = subprocess.run(
        [sys.executable, "-c", f"import os; print(os.path.exists('/proc/self/fd/{watch.fd}'))"],
        capture_output=True,
        text=True,
        check=True,
        close_fds=False,
    )
    assert out.stdout.strip() == "False"


def test_the_watch_is_not_read_by_the_first_check_after_it_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_checks: list[int]
) -> None:
    """Reading a snapshot (rev-parse, ls-files, status) writes nothing the watch reports: the
    save right after the first one is already answered by the watch."""
    repo = _repo(tmp_path, monkeypatch)
    git_state()
    time.sleep(0.01)
    assert _kept(repo).quiet()


def test_a_process_holds_few_watches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_checks: list[int]) -> None:
    """Saving from more folders than MAX_WATCHES: the oldest statuses lose their watch (and its
    inotify instance) and are checked in full; each still sees a change."""
    before = _open_fds()
    repos = [tmp_path / f"repo{n}" for n in range(lineage.MAX_WATCHES + 2)]
    kept = []
    for repo in repos:
        _repo_with_one_commit(repo)
        monkeypatch.chdir(repo)
        kept.append(git_state())
    watched = [repo for repo in repos if _kept(repo).watch is not None]
    assert watched == repos[-lineage.MAX_WATCHES :]
    assert _open_fds() - before == lineage.MAX_WATCHES
    for repo, state in zip(repos, kept, strict=True):
        monkeypatch.chdir(repo)
        assert git_state() == state
        _same_size_same_mtime(repo / "train.py")
        assert git_state() == _truth(repo) != state
    assert len(full_checks) >= 2 * 2  # the two without a watch, twice each
    for repo in repos:
        del lineage._snapshots[str(repo)]
    assert _open_fds() == before
