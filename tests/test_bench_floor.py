"""bench's design floor takes every durable step a real save takes, and writes the same rows.

``bench/baselines.py``'s ``DesignFloor`` is the figure that says what the small save's design
costs with no registry code around it (bench/README.md's small-save verdict compares a save
with it). A floor that skipped a sync or a row would flatter the design and blame the code, so
this test counts both sides: the fsyncs of files and folders, the commits and whether each
synced the WAL, and the rows each save leaves in each table.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from modelkeep import ModelPersistence

BENCH = Path(__file__).resolve().parents[1] / "bench"
TABLES = ("modelkeep_versions", "modelkeep_fields", "modelkeep_history", "modelkeep_claims", "modelkeep_models")


def _model() -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression().fit([[0.0, 1.0], [1.0, 0.0], [0.5, 0.2]], [0, 1, 1])


def _rows(db: Path, model: str) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        ids = "(SELECT id FROM modelkeep_versions WHERE model_name = ?)"
        return {
            table: conn.execute(
                f"SELECT count(*) FROM {table} WHERE version_id IN {ids}"
                if table == "modelkeep_fields"
                else f"SELECT count(*) FROM {table} WHERE model_name = ?",
                (model,),
            ).fetchone()[0]
            for table in TABLES
        }
    finally:
        conn.close()


def _commits(conn: sqlite3.Connection, counts: Counter[str]) -> None:
    """Count the connection's COMMITs by whether they sync the WAL (``synchronous`` at the time)."""
    level = {"value": 2}

    def trace(statement: str) -> None:
        text = statement.strip().upper()
        if text.startswith("PRAGMA SYNCHRONOUS="):
            level["value"] = 1 if text.endswith("NORMAL") else 2
        elif text == "COMMIT":
            counts["index commit with WAL sync" if level["value"] >= 2 else "index commit without sync"] += 1

    conn.set_trace_callback(trace)


def test_the_design_floor_syncs_and_writes_what_a_save_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setenv("MODELKEEP_GIT", "0")
    from baselines import DesignFloor
    from save_costs import _counting_fsync, count_syncs

    model = _model()
    registry = ModelPersistence(str(tmp_path / "registry"))
    registry.save(model, "small")
    model.intercept_[0] += 1.0
    real = count_syncs(registry, lambda: registry.save(model, "small"))
    registry.close()

    floor = DesignFloor(tmp_path, tmp_path / "registry" / "registry.db", "small")
    counts: Counter[str] = Counter()
    _commits(floor.index, counts)
    with _counting_fsync(counts):
        floor.save(model, 1)
    floor.index.set_trace_callback(None)
    counts["total syncs"] = counts["file fsync"] + counts["folder fsync"] + counts["index commit with WAL sync"]
    assert dict(counts) == real
    floor.save(model, 2)
    floor.close()

    per_save = _rows(tmp_path / "registry" / "registry.db", "small")
    made = _rows(tmp_path / "design-floor.db", "floor")
    assert per_save["modelkeep_fields"] > 0 and per_save["modelkeep_claims"] == 0
    assert made == {
        "modelkeep_versions": 2,
        "modelkeep_fields": per_save["modelkeep_fields"],  # the registry's two versions, the floor's two
        "modelkeep_history": 2,
        "modelkeep_claims": 0,
        "modelkeep_models": 1,
    }
    assert len(list((tmp_path / "design-floor-events").iterdir())) == 2
    assert sorted(p.name for p in (tmp_path / "design-v2").iterdir()) == ["metadata.json", "model.joblib"]
