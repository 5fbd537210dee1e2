"""Lifecycle changes racing across processes, and SIGKILL in the middle of them, on SQLite
and PostgreSQL. The history is replayed to check it agrees with the state at every step."""

from __future__ import annotations

import collections
import signal
from pathlib import Path

import pytest

from modelkeep import ModelPersistence

from ._workers import (
    CTX,
    LIFECYCLE_OPS,
    alias_or_trash,
    lifecycle_fixture,
    lifecycle_then_die,
    move_alias_with_cas,
    run_in_processes,
)
from .conftest import IndexTarget
from .test_crash import assert_consistent_after_crash

VERSIONS = ["1.0.0", "1.0.1", "1.0.2", "1.0.3"]


def assert_history_matches_state(p: ModelPersistence) -> None:
    """Replaying the history gives today's aliases, trash and versions, and no alias ever
    pointed at a trashed or missing version along the way."""
    aliases: dict[tuple[str, str], str] = {}
    trashed: set[tuple[str, str]] = set()
    present: set[tuple[str, str]] = set()
    for e in p.history():
        key = (e.model_name, str(e.version))
        if e.action == "save":
            present.add(key)
        elif e.action == "purge":
            present.discard(key)
            trashed.discard(key)
        elif e.action == "delete":
            trashed.add(key)
        elif e.action == "restore":
            trashed.discard(key)
        elif e.action == "alias_set":
            aliases[(e.model_name, str(e.alias))] = str(e.after)
        elif e.action == "alias_delete":
            del aliases[(e.model_name, str(e.alias))]
        for (model, _alias), version in aliases.items():
            assert (model, version) in present and (model, version) not in trashed, (e, aliases)
    models = {m for m, _ in present}
    assert aliases == {(m, a): v for m in models for a, v in p.get_aliases(m).items()}
    assert trashed == {(m, v) for m, v, _ in p.list_trash()}
    assert present - trashed == {(m, v) for m in models for v in p.list_versions(m)}


def _seed(index_target: IndexTarget, models: Path) -> None:
    with index_target.persistence(models) as p:
        for v in VERSIONS:
            p.save({"v": v}, "shared", v)
        p.set_alias("shared", "production", VERSIONS[0])


def test_eight_processes_moving_one_alias_lose_no_update(index_target: IndexTarget, tmp_path: Path) -> None:
    models = tmp_path / "models"
    _seed(index_target, models)
    attempts = 6
    results = run_in_processes(
        move_alias_with_cas,
        [(str(models), index_target.url, index_target.schema, w, attempts, VERSIONS) for w in range(8)],
    )
    won = [move for moves, _ in results.values() for move in moves]
    conflicts = sum(c for _, c in results.values())
    assert len(won) + conflicts == 8 * attempts, "every attempt either moved the alias or raised a conflict"
    assert won, "some compare-and-set must succeed"
    with index_target.persistence(models) as p:
        moves = p.alias_history("shared", "production")[1:]  # after the initial set
        # Each success is in the history exactly once, and the moves form one unbroken chain.
        assert collections.Counter((e.before, e.after) for e in moves) == collections.Counter(won)
        chain = [VERSIONS[0], *(e.after for e in moves)]
        assert [e.before for e in moves] == chain[:-1]
        assert p.get_aliases("shared") == {"production": chain[-1]}
        assert_history_matches_state(p)


def test_alias_moves_racing_with_deletes_never_point_at_the_trash(index_target: IndexTarget, tmp_path: Path) -> None:
    models = tmp_path / "models"
    _seed(index_target, models)
    results = run_in_processes(
        alias_or_trash,
        [(str(models), index_target.url, index_target.schema, w, 12, VERSIONS) for w in range(6)],
    )
    assert sum(r["ok"] for r in results.values()) > 0
    with index_target.persistence(models) as p:
        target = p.get_aliases("shared")["production"]
        assert target in p.list_versions("shared")
        assert p.load("shared@production") == {"v": target}
        assert_history_matches_state(p)


@pytest.mark.parametrize("op", LIFECYCLE_OPS)
def test_sigkill_during_a_lifecycle_change(index_target: IndexTarget, tmp_path: Path, op: str) -> None:
    models = tmp_path / "models"
    with index_target.persistence(models) as p:
        lifecycle_fixture(p)
        before_history = len(p.history())
        before_aliases = p.get_aliases("victim")
        before_tags = p.get_tags("victim", version="1.0.1")
        before_trash = [t[:2] for t in p.list_trash()]

    proc = CTX.Process(target=lifecycle_then_die, args=(str(models), index_target.url, index_target.schema, op))
    proc.start()
    proc.join(120)
    assert proc.exitcode == -signal.SIGKILL

    with index_target.persistence(models) as p:
        if op == "purge_files":
            # The purge committed (row gone, history written); its files are crash leftovers for gc.
            assert [t[:2] for t in p.list_trash()] == []
            assert p.history()[-1].action == "purge"
        else:
            # Killed inside the transaction: nothing of it happened, history included.
            assert len(p.history()) == before_history
            assert p.get_aliases("victim") == before_aliases
            assert p.get_tags("victim", version="1.0.1") == before_tags
            assert p.get_description("victim") == "original"
            assert [t[:2] for t in p.list_trash()] == before_trash
            assert p.list_versions("victim") == ["1.0.1", "1.0.2"]
        assert_history_matches_state(p)
        assert_consistent_after_crash(p)
        assert p.load("victim@production")["seq"] == 1
        assert_history_matches_state(p)
