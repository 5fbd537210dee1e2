"""SIGKILL during a save, at every step and at random moments, on SQLite and PostgreSQL.

After any crash the registry must list no version whose artifact is missing
or fails verification, accept a new save at once (no stale lock), and become
fully clean after ``gc``.
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import pytest

from modelkeep import ModelPersistence
from modelkeep.maintenance import CORRUPT, MISSING, SIDECAR, SIGNATURE

from ._workers import CTX, PHASES, payload, save_forever, save_then_die
from .conftest import IndexTarget


def assert_consistent_after_crash(p: ModelPersistence, *, fresh_save_within: float = 15.0) -> None:
    """The invariants every crash must preserve, then gc makes the store spotless."""
    for name in p.list_models():
        for version in p.list_versions(name):
            p.load(name, version)  # re-hashes before unpickling
    report = p.verify()
    assert report.of_kind(MISSING, CORRUPT, SIGNATURE) == [], report.to_dict()
    # A new save goes through at once: nothing is left holding a lock.
    started = time.monotonic()
    rec = p.save_version({"after": "crash"}, "after-crash")
    assert time.monotonic() - started < fresh_save_within, "a lock outlived the killed process"
    assert p.load("after-crash", rec.version) == {"after": "crash"}
    p.gc(min_age_seconds=0)
    final = p.verify()
    assert final.ok, final.to_dict()
    assert p.store.list_keys(".tmp") == []


def _kill_at(index_target: IndexTarget, models: Path, phase: str, version: str | None) -> int:
    proc = CTX.Process(target=save_then_die, args=(str(models), index_target.url, index_target.schema, phase, version))
    proc.start()
    proc.join(120)
    assert proc.exitcode is not None, "the worker hung"
    return proc.exitcode


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("overwrite", [False, True], ids=["new-version", "overwrite"])
def test_sigkill_at_each_step_of_a_save(index_target: IndexTarget, tmp_path: Path, phase: str, overwrite: bool) -> None:
    models = tmp_path / "models"
    original = payload(0, 0)
    with index_target.persistence(models) as p:
        p.save(original, "victim", "1.0.0")
        before = p.get_version("victim", "1.0.0")

    exitcode = _kill_at(index_target, models, phase, "1.0.0" if overwrite else None)
    assert exitcode == -signal.SIGKILL

    with index_target.persistence(models) as p:
        versions = p.list_versions("victim")
        assert versions == ["1.0.0"], "a version was registered by a save that never committed"
        rec = p.get_version("victim", "1.0.0")
        assert rec.artifact == before.artifact, "the committed version was changed by a killed overwrite"
        loaded = p.load("victim", "1.0.0")
        assert loaded["seq"] == original["seq"]
        report = p.verify()
        if phase == "staging":
            assert [pr.key.split("/")[0] for pr in report.problems] == [".tmp"]
        elif phase in ("sidecar", "commit", "index"):
            # Leftovers of the killed save are reported, never as missing or corrupt versions.
            assert report.of_kind(MISSING, CORRUPT, SIGNATURE) == []
            assert report.problems, "the killed save's files should show up as orphaned or a stale sidecar"
            if not overwrite:
                assert report.of_kind(SIDECAR) == []
        assert_consistent_after_crash(p)
        assert p.load("victim", "1.0.0")["seq"] == original["seq"]
        assert p.reindex() == 2  # victim 1.0.0 + after-crash 1.0.0: the sidecars agree with the index
        assert p.load("victim", "1.0.0")["seq"] == original["seq"]


@pytest.mark.parametrize("overwrite", [False, True], ids=["new-version", "overwrite"])
def test_sigkill_while_the_staged_file_syncs_on_the_helper(
    index_target: IndexTarget, tmp_path: Path, overwrite: bool
) -> None:
    """A local store fsync's the staged artifact on a helper thread while the save claims its
    version and writes its sidecar; the artifact's move waits for that fsync. Killed while it is
    pending, with the claim committed and the sidecar in place: the staged file was never moved,
    nothing is registered, the leftovers are reported, and gc leaves a clean registry."""
    models = tmp_path / "models"
    original = payload(0, 0)
    with index_target.persistence(models) as p:
        p.save(original, "victim", "1.0.0")
        before = p.get_version("victim", "1.0.0")

    assert _kill_at(index_target, models, "syncing", "1.0.0" if overwrite else None) == -signal.SIGKILL

    with index_target.persistence(models) as p:
        assert p.store.list_keys(".tmp"), "the staged file should never have been moved"
        assert p.list_versions("victim") == ["1.0.0"], "a version was registered by a save that never committed"
        assert p.get_version("victim", "1.0.0").artifact == before.artifact
        report = p.verify()
        assert report.of_kind(MISSING, CORRUPT, SIGNATURE) == []
        assert report.problems, "the killed save's files should show up as leftovers"
        assert_consistent_after_crash(p)
        assert p.load("victim", "1.0.0")["seq"] == original["seq"]
        assert p.reindex() == 2


@pytest.mark.slow
def test_sigkill_in_a_loop_never_corrupts_the_registry(index_target: IndexTarget, tmp_path: Path) -> None:
    models = tmp_path / "models"
    rng = random.Random(1234)
    with index_target.persistence(models) as p:
        p.save(payload(0, 0), "crashy", "9.9.9")
    kills = 0
    for _ in range(20):
        ready = CTX.Event()
        proc = CTX.Process(
            target=save_forever, args=(str(models), index_target.url, index_target.schema, 3 << 20, ready)
        )
        proc.start()
        assert ready.wait(60), "the saver did not start"
        time.sleep(rng.uniform(0.0, 0.6))  # the point of the test: kill at an arbitrary moment
        proc.kill()
        proc.join(30)
        kills += proc.exitcode == -signal.SIGKILL
    assert kills == 20
    with index_target.persistence(models) as p:
        assert "9.9.9" in p.list_versions("crashy")
        assert_consistent_after_crash(p)
        indexed = {(r.model_name, r.version, json.dumps(r.to_dict())) for r in p.index.iter_records()}
        assert p.reindex() == len(indexed)
        assert {(r.model_name, r.version, json.dumps(r.to_dict())) for r in p.index.iter_records()} == indexed
        assert p.verify().ok
