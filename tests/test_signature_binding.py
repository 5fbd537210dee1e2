"""A signed version loads the bytes that were signed, for the name and version that were asked for.

Three attacks by someone who can write the store and the index (never the reader's config folder),
each reproduced against the code before this change and refused now:

* the mmap race: a version without payload ranges was hashed through one descriptor and parsed
  through ``/proc/self/fd/N``, a second open of the same file, so a process that rewrote the file
  right after the hash made a ``trusted`` version load the attacker's object;
* a signed record replayed under another name or version: the row of ``fraud 2.0.0`` given the
  ``record``, ``artifact_key``, ``sha256`` and ``size`` of ``other 1.0.0``;
* rollback: ``latest`` or an alias made to resolve to an older signed version.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from modelkeep import IntegrityError, ModelPersistence
from modelkeep.loading import MmapIgnoredWarning
from modelkeep.storage import verified as verified_module

SIGNED = {"who": "the signed model", "weights": [1.0, 2.0, 3.0]}
ATTACKER = {"who": "the attacker"}


def artifact_file(p: ModelPersistence, name: str, version: str | None = None) -> Path:
    art = p.get_version(name, version).artifact
    assert art is not None
    path = p.store.local_path(art.key)
    assert path is not None
    return path


def attacker_bytes(tmp_path: Path) -> bytes:
    """A whole joblib file holding ``ATTACKER``: its pickle stream ends with STOP, so written over
    the start of a longer file, it is all a parser reads."""
    path = tmp_path / "attacker.joblib"
    joblib.dump(ATTACKER, path)
    return path.read_bytes()


def overwrite_in_another_process(path: Path, data: bytes) -> None:
    """What the attacker runs: open the artifact by name in a second process and write ``data``
    over its first bytes, in place (same inode, so a descriptor open on it sees the change)."""
    code = (
        "import os, sys\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY)\n"
        "os.pwrite(fd, bytes.fromhex(sys.argv[2]), 0)\n"
        "os.close(fd)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path), data.hex()], check=True)


@pytest.fixture
def race_after_hash(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path, bytes], list[int]]]:
    """Arm the race: right after a load's digests are computed (``verified._check``, which every
    reader calls once hashing is done), a second process rewrites the start of the file. Returns
    a list that counts how often the hook fired, so a test can tell the race really ran."""
    original = verified_module._check

    def arm(path: Path, data: bytes) -> list[int]:
        fired: list[int] = []

        def check_then_rewrite(*args: Any, **kwargs: Any) -> None:
            original(*args, **kwargs)
            if not fired:
                fired.append(1)
                overwrite_in_another_process(path, data)

        monkeypatch.setattr(verified_module, "_check", check_then_rewrite)
        return fired

    yield arm


def test_the_race_wins_against_hash_then_reopen(tmp_path: Path) -> None:
    """The pattern the old ``LocalStore.verified_path`` used, written out: hash the open file,
    then let joblib open ``/proc/self/fd/N``. A rewrite between the two is what gets parsed."""
    path = tmp_path / "model.joblib"
    joblib.dump(SIGNED, path)
    signed_sha = hashlib.sha256(path.read_bytes()).hexdigest()
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == signed_sha  # "verified"
        overwrite_in_another_process(path, attacker_bytes(tmp_path))
        loaded = joblib.load(f"/proc/self/fd/{f.fileno()}")
    assert loaded == ATTACKER


@pytest.mark.parametrize("mmap_mode", [None, "r", "c"])
def test_a_rewrite_right_after_the_hash_does_not_change_what_loads(
    tmp_path: Path, race_after_hash: Callable[[Path, bytes], list[int]], mmap_mode: str | None
) -> None:
    """A small uncompressed joblib artifact has no payload ranges. Before this change,
    ``load(mmap_mode="r")`` hashed it and then parsed ``/proc/self/fd/N``, which returned
    ``ATTACKER`` here with verdict ``trusted``. Now it is read once into private memory and
    parsed from there, whatever ``mmap_mode`` says, and a warning says why nothing was mapped."""
    with ModelPersistence(models_dir=tmp_path / "m", compress=False, require_signatures=True) as p:
        p.save(SIGNED, "fraud")
        assert p.signature_status("fraud").trusted
        path = artifact_file(p, "fraud")
        fired = race_after_hash(path, attacker_bytes(tmp_path))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = p.load("fraud", mmap_mode=mmap_mode)
        assert fired, "the rewrite must have run during the load"
        assert loaded == SIGNED
        ignored = [w for w in caught if issubclass(w.category, MmapIgnoredWarning)]
        if mmap_mode is None:
            assert not ignored
        else:
            assert len(ignored) == 1
            assert "no array large enough to map" in str(ignored[0].message)
        # The file on disk is the attacker's now: the next load checks it and refuses it.
        with pytest.raises(IntegrityError, match="integrity check failed"):
            p.load("fraud", mmap_mode=mmap_mode)


def test_a_rewrite_of_a_mapped_artifacts_skeleton_after_the_hash_is_not_parsed(
    tmp_path: Path, race_after_hash: Callable[[Path, bytes], list[int]]
) -> None:
    """An artifact with payload ranges is mapped: its skeleton (every byte the unpickler parses)
    was copied to private memory before it was hashed, so rewriting the file's first bytes after
    the check changes nothing that is parsed."""
    big = {"who": "the signed model", "weights": np.arange(20_000.0)}
    with ModelPersistence(models_dir=tmp_path / "m", compress=False, require_signatures=True) as p:
        p.save(big, "fraud")
        path = artifact_file(p, "fraud")
        fired = race_after_hash(path, attacker_bytes(tmp_path))
        with warnings.catch_warnings():
            warnings.simplefilter("error", MmapIgnoredWarning)
            loaded = p.load("fraud", mmap_mode="r")
        assert fired
        assert loaded["who"] == "the signed model"
        assert isinstance(loaded["weights"], np.memmap)
        np.testing.assert_array_equal(loaded["weights"], np.arange(20_000.0))


def test_no_load_path_reopens_an_artifact_by_name() -> None:
    """The re-open helpers are gone: nothing left to call by mistake."""
    from modelkeep.formats.base import Format
    from modelkeep.storage.base import ArtifactStore

    assert not hasattr(ArtifactStore, "verified_path")
    assert not hasattr(Format, "load_path")
    source = Path(verified_module.__file__).parent.parent
    offenders = [
        str(f.relative_to(source))
        for f in source.rglob("*.py")
        if "/proc/self/fd" in f.read_text(encoding="utf-8") and f.name != "registry.py"
    ]
    assert offenders == []
