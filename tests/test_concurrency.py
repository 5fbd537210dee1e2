"""Many processes writing one model at once, on SQLite and on PostgreSQL.

MLflow has handed two concurrent registrations the same version
(mlflow#1982); pins fails when two writes land in the same second. These tests
start real processes (multiprocessing, "spawn"), never threads.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelkeep import VersionExistsError

from ._workers import payload, race_for_versions, run_in_processes, save_many
from .conftest import IndexTarget

pytestmark = pytest.mark.slow

WORKERS = 8
SAVES = 30


def _assert_payload(loaded: dict[str, Any], worker: int, seq: int) -> None:
    expected = payload(worker, seq, 16 << 10)
    assert (loaded["worker"], loaded["seq"]) == (worker, seq)
    assert np.array_equal(loaded["data"], expected["data"])


def test_concurrent_saves_each_get_a_distinct_version_and_all_load(index_target: IndexTarget, tmp_path: Path) -> None:
    models = tmp_path / "models"
    with index_target.persistence(models) as p:  # create the tables before the workers race
        assert p.list_versions("shared") == []
    plans = []
    for w in range(WORKERS):
        # Even saves ask for the next automatic version, odd ones name their own
        # (custom strings, so they never collide with the automatic 1.0.x line).
        plans.append([None if j % 2 == 0 else f"w{w}-s{j}" for j in range(SAVES)])
    results = run_in_processes(
        save_many, [(str(models), index_target.url, index_target.schema, w, plans[w]) for w in range(WORKERS)]
    )

    saved = [(version, w, seq) for w, done in results.items() for version, seq in done]
    assert len(saved) == WORKERS * SAVES
    counts = Counter(version for version, _, _ in saved)
    assert [v for v, n in counts.items() if n > 1] == [], "two saves were given the same version"

    with index_target.persistence(models) as p:
        listed = p.list_versions("shared")
        assert sorted(listed) == sorted(counts), "a save was lost, or a version appeared from nowhere"
        auto = sorted((v for v, _, seq in saved if seq % 2 == 0), key=lambda v: tuple(map(int, v.split("."))))
        assert auto == [f"1.0.{i}" for i in range(len(auto))], "automatic versions skipped or repeated a number"
        for version, w, seq in saved:
            _assert_payload(p.load("shared", version), w, seq)
        report = p.verify()
        assert report.ok, report.to_dict()
        assert report.versions_checked == WORKERS * SAVES


def test_racing_for_one_explicit_version_has_exactly_one_winner(index_target: IndexTarget, tmp_path: Path) -> None:
    models = tmp_path / "models"
    racers, rounds = 6, 8
    versions = [f"2.0.{i}" for i in range(rounds)]
    with index_target.persistence(models) as p:
        p.save({"seed": True}, "contested", "1.0.0")
    results = run_in_processes(
        race_for_versions, [(str(models), index_target.url, index_target.schema, w, versions) for w in range(racers)]
    )

    with index_target.persistence(models) as p:
        for seq, version in enumerate(versions):
            outcomes = {w: dict(results[w])[version] for w in range(racers)}
            winners = [w for w, outcome in outcomes.items() if outcome == "won"]
            assert len(winners) == 1, f"version {version}: winners {winners}"
            assert sorted(outcomes.values()).count("exists") == racers - 1
            loaded = p.load("contested", version)
            assert (loaded["worker"], loaded["seq"]) == (winners[0], seq), "the winner's artifact was replaced"
            assert np.array_equal(loaded["data"], payload(winners[0], seq)["data"])
        assert p.list_versions("contested") == ["1.0.0", *versions]
        with pytest.raises(VersionExistsError):
            p.save({"late": True}, "contested", versions[0])
        report = p.verify()
        assert report.ok, report.to_dict()
