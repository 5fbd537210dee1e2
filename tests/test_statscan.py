"""The compiled stat check of a kept git status (_statscan.c) against the Python one (lineage.py)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from modelkeep import lineage

from .test_signature_lineage import _repo_with_one_commit


def _paths(tmp_path: Path) -> list[str]:
    """A file, a folder, a symlink to each, a dangling symlink, a missing path, a file dated
    before 1970 and an empty file: every kind of answer lstat gives."""
    (tmp_path / "file.py").write_text("X = 1\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "file.py")
    (tmp_path / "folder-link").symlink_to(tmp_path / "folder")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    old = tmp_path / "old.py"
    old.write_text("Y = 2\n")
    os.utime(old, ns=(-1_500_000_001, -1_500_000_001))  # a negative mtime
    (tmp_path / "empty").touch()
    names = ["file.py", "folder", "link", "folder-link", "dangling", "missing", "old.py", "empty", "folder/missing"]
    return [str(tmp_path / name) for name in names]


def test_the_c_check_is_built_and_used() -> None:
    """``pip install -e .`` compiles the extension; the Python loop is only the fallback of an
    install without a compiler (or on Windows)."""
    assert lineage.STAT_CHECK == "c"
    assert lineage._c_signatures is not None


def test_the_c_signatures_are_the_packed_python_stats(tmp_path: Path) -> None:
    assert lineage._c_signatures is not None
    paths = _paths(tmp_path)
    stats = lineage._stats(paths)
    assert stats[5] is None and stats[4] is not None  # missing; a dangling link is itself there
    assert stats[6] is not None and stats[6][2] < 0
    assert lineage._c_signatures(tuple(os.fsencode(p) for p in paths)) == lineage._pack(stats)
    assert lineage._c_signatures(()) == b""


def test_anything_but_a_tuple_of_bytes_is_refused() -> None:
    assert lineage._c_signatures is not None
    with pytest.raises(TypeError):
        lineage._c_signatures(["/etc/hostname"])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        lineage._c_signatures(("/etc/hostname",))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        lineage._c_signatures((b"/etc\0/hostname",))


@pytest.mark.parametrize("compiled", [True, False], ids=["c", "python"])
def test_both_checks_see_every_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compiled: bool) -> None:
    """An edit of the same size, a chmod, a removal, a replacement by rename and a path that
    appears each end a snapshot's validity, with the compiled check and without it."""
    if not compiled:
        monkeypatch.setattr(lineage, "_c_signatures", None)
    paths = _paths(tmp_path)

    def snapshot() -> lineage._GitSnapshot:
        return lineage._GitSnapshot(paths, lineage._stats(paths), {"commit": "x", "dirty": False, "branch": None})

    def edits() -> list[tuple[str, object]]:
        file = tmp_path / "file.py"
        spare = tmp_path / "spare"
        return [
            ("same size", lambda: file.write_text("X = 2\n")),
            ("chmod", lambda: file.chmod(0o755)),
            ("renamed over", lambda: (spare.write_text("X = 1\n"), os.replace(spare, file))),
            ("removed", lambda: file.unlink()),
            ("appeared", lambda: (tmp_path / "missing").write_text("")),
            ("link retargeted", lambda: ((tmp_path / "link").unlink(), (tmp_path / "link").symlink_to(tmp_path))),
        ]

    for label, edit in edits():
        kept = snapshot()
        assert kept.still_valid(), label
        edit()  # type: ignore[operator]
        assert not kept.still_valid(), label


def test_threads_check_at_once(tmp_path: Path) -> None:
    """The GIL is released during the lstat loop: threads checking at once all get the answer."""
    paths = _paths(tmp_path)
    kept = lineage._GitSnapshot(paths, lineage._stats(paths), None)
    answers: list[bool] = []

    def check() -> None:
        answers.extend(kept.still_valid() for _ in range(200))

    threads = [threading.Thread(target=check) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [True] * 800


def test_a_repository_is_checked_through_the_c_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kept status of a real repository is checked by the compiled code, and sees an edit."""
    git = _repo_with_one_commit(tmp_path / "repo")
    repo = tmp_path / "repo"
    monkeypatch.setattr(lineage, "RACY_NS", 0)
    monkeypatch.setattr(lineage, "WATCH_RECHECK", 0.0)  # every reuse checks in full, watch or not
    monkeypatch.chdir(repo)
    calls: list[int] = []
    real = lineage._c_signatures
    assert real is not None

    def counted(paths: tuple[bytes, ...]) -> bytes:
        calls.append(len(paths))
        return real(paths)

    monkeypatch.setattr(lineage, "_c_signatures", counted)
    assert lineage.git_state() == {"commit": git("rev-parse", "HEAD"), "dirty": False, "branch": "main"}
    assert lineage.git_state() is not None and calls  # reused, through the compiled check
    assert str(repo / "train.py").encode() in lineage._snapshots[str(repo)].encoded  # type: ignore[union-attr]
    (repo / "train.py").write_text("print(2)\n")
    assert lineage.git_state() == {"commit": git("rev-parse", "HEAD"), "dirty": True, "branch": "main"}
