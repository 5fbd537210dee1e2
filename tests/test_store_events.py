"""The store is the source of truth: every lifecycle change is also an event file in the store,
so that losing the index (a deleted ``registry.db``, a dropped PostgreSQL schema), a ``copy`` or a
bundle round trip keeps aliases, tags, descriptions, the trash and the history, exactly.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from modelkeep import ModelPersistence
from modelkeep.bundle import export_bundle, import_bundle
from modelkeep.copying import copy_registry
from modelkeep.eventlog import read_events
from modelkeep.index.sql import normalize_url
from modelkeep.layout import EVENT_DIR
from modelkeep.maintenance import EVENT

from ._workers import ALIAS_MOVE_STEPS, CTX, alias_move_then_die, lifecycle_fixture
from .conftest import IndexTarget

MODELS = ("churn", "fraud")


def build(p: ModelPersistence) -> None:
    """Two models with aliases, tags, descriptions, trash and over 200 history rows."""
    for name in MODELS:
        for i in range(4):
            p.save({"model": name, "i": i}, name)
    p.set_description("churn", "predicts churn")
    p.set_description("churn", "a version", version="1.0.1")
    p.set_tag("fraud", "team", "risk")
    for i in range(64):  # many moves: the history is long, the final state depends on the order
        p.set_alias("churn", "production", f"1.0.{i % 3}")
        p.set_tag("churn", "round", str(i), version="1.0.2")
        p.set_alias("fraud", "staging", f"1.0.{(i + 1) % 4}")
    p.set_alias("churn", "champion", "1.0.1")
    p.delete_alias("fraud", "staging")
    p.set_alias("fraud", "staging", "1.0.2")
    p.delete("churn", "1.0.3")
    p.delete("fraud", "1.0.0")
    p.restore("fraud", "1.0.0")
    p.delete("fraud", "1.0.3")
    p.delete_tag("fraud", "team")


def snapshot(p: ModelPersistence) -> dict[str, Any]:
    """Every query's answer, history rows without their numbers (another registry numbers them)."""
    out: dict[str, Any] = {"trash": p.list_trash(), "models": p.list_models()}
    for name in MODELS:
        versions = p.list_versions(name)
        out[name] = {
            "versions": versions,
            "aliases": p.get_aliases(name),
            "tags": p.get_tags(name),
            "description": p.get_description(name),
            "version_tags": {v: p.get_tags(name, version=v) for v in versions},
            "version_descriptions": {v: p.get_description(name, version=v) for v in versions},
            # Without the rows of the copy itself: a reindex's, and who imported a bundle.
            "history": [_entry(e) for e in p.history(name) if e.action not in ("reindex", "import")],
        }
    return out


def _entry(e: Any) -> tuple[Any, ...]:
    return (e.at, e.actor, e.action, e.model_name, e.version, e.alias, e.key, e.before, e.after, e.damaged)


def history_ids(p: ModelPersistence) -> list[int]:
    return [e.id for e in p.history() if e.action != "reindex"]


@pytest.fixture
def built(index_target: IndexTarget, tmp_path: Path) -> tuple[IndexTarget, Path, dict[str, Any], list[int]]:
    models = tmp_path / "models"
    with index_target.persistence(models) as p:
        build(p)
        assert len(p.history()) >= 200
        before = snapshot(p)
        ids = history_ids(p)
        assert p.verify().ok
    return index_target, models, before, ids


def _drop_index(target: IndexTarget, models: Path) -> None:
    if target.kind == "sqlite":
        os.remove(target.url.removeprefix("sqlite:///"))
    else:
        engine = create_engine(normalize_url(target.url))
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{target.schema}" CASCADE'))
            conn.execute(text(f'CREATE SCHEMA "{target.schema}"'))
        engine.dispose()


def test_reindex_after_losing_the_index_brings_everything_back(built: Any) -> None:
    target, models, before, ids = built
    _drop_index(target, models)
    with target.persistence(models) as p:
        assert p.list_models() == []
        assert p.reindex() == 8
        assert snapshot(p) == before
        assert history_ids(p) == ids  # the same numbers, in the same order
        assert ("churn", "1.0.3") in [(m, v) for m, v, _ in p.list_trash()]  # trashed stays trashed
        assert p.load("churn@production") == {"model": "churn", "i": 0}  # signed alias moves still verify
        assert p.verify().ok
        p.set_alias("churn", "production", "1.0.2")  # numbering goes on above the replayed rows
        assert p.history()[-1].id > max(ids)
    _drop_index(target, models)
    with target.persistence(models) as p:
        p.reindex()
        assert p.get_aliases("churn")["production"] == "1.0.2"


def test_an_alias_re_signed_by_an_overwrite_survives_losing_the_index(
    index_target: IndexTarget, tmp_path: Path
) -> None:
    """An overwrite re-signs the aliases of its version (the move's signature names the bytes):
    the re-sign is a history row and an event file, so a rebuild from the store alone gives the
    alias its new signature, and a load that requires a signed alias still succeeds."""
    models = tmp_path / "models"
    with index_target.persistence(models) as p:
        p.save({"v": 1}, "churn", "1.0.0")
        p.save({"v": 2}, "churn", "1.0.1")
        p.set_alias("churn", "production", "1.0.0")
        p.set_alias("churn", "production", "1.0.1")
        p.save({"v": "2, retrained"}, "churn", "1.0.1", overwrite=True)
        (resign,) = [e for e in p.history("churn") if e.action == "alias_resign"]
        assert (resign.alias, resign.version) == ("production", "1.0.1")
        assert [e["type"] for e in p.events(types="alias.*")] == ["alias.set", "alias.moved", "alias.resigned"]
        state = p.index.lifecycle.alias_state("churn", "production")
        assert p.load("churn@production", require_signed_alias=True) == {"v": "2, retrained"}
        before = [(e.action, e.version, e.alias, e.at) for e in p.history("churn")]
    _drop_index(index_target, models)
    with index_target.persistence(models) as p:
        p.reindex()
        assert p.index.lifecycle.alias_state("churn", "production") == state  # signature, number, from, time
        assert p.load("churn@production", require_signed_alias=True) == {"v": "2, retrained"}
        assert [(e.action, e.version, e.alias, e.at) for e in p.history("churn") if e.action != "reindex"] == before
        assert p.verify().ok


def test_copy_carries_the_history(built: Any, tmp_path: Path) -> None:
    target, models, before, _ = built
    with target.persistence(models) as src, ModelPersistence(tmp_path / "dest") as dest:
        report = copy_registry(src, dest)
        assert report.events_carried == len(src.history())
        assert snapshot(dest) == before
        again = copy_registry(src, dest)
        assert again.events_carried == 0 and snapshot(dest) == before
        assert dest.verify().ok
    os.remove(tmp_path / "dest" / "registry.db")  # the destination's own store rebuilds it too
    with ModelPersistence(tmp_path / "dest") as dest:
        dest.reindex()
        assert snapshot(dest) == before


def test_bundle_round_trip_keeps_the_history(built: Any, tmp_path: Path) -> None:
    target, models, before, _ = built
    with target.persistence(models) as src, ModelPersistence(tmp_path / "dest") as dest:
        for name in MODELS:
            versions = [v for m, v, _ in src.list_trash(name)] + src.list_versions(name)
            export_bundle(src, name, tmp_path / f"{name}.mkb", versions=versions)
            import_bundle(dest, tmp_path / f"{name}.mkb", with_aliases=True)
        assert snapshot(dest) == before
        assert dest.verify().ok


def test_event_files_are_not_versions(built: Any) -> None:
    """Listing, verify and gc never take an event file for a version, an orphan or garbage."""
    target, models, _, _ = built
    with target.persistence(models) as p:
        events = p.store.list_keys(EVENT_DIR)
        assert len(events) == len(p.history())
        assert p.list_models() == list(MODELS)
        report = p.gc(min_age_seconds=0)
        assert report.removed == [] and report.repaired == []
        assert p.store.list_keys(EVENT_DIR) == events
        assert p.verify().ok


def test_gc_repairs_missing_and_orphaned_event_files(built: Any) -> None:
    target, models, _, _ = built
    with target.persistence(models) as p:
        keys = p.store.list_keys(EVENT_DIR)
        p.store.delete(keys[3])
        forged = f"{EVENT_DIR}/churn/999999999999-{'a' * 32}.json"
        p.store.write_bytes(forged, p.store.read_bytes(keys[5]))
        found = {(pr.kind, pr.key) for pr in p.verify().problems}
        assert found == {(EVENT, keys[3]), (EVENT, forged)}
        report = p.gc(min_age_seconds=0)
        assert keys[3] in report.repaired
        assert forged in [item.key for item in report.removed]
        assert p.verify().ok
        assert p.store.list_keys(EVENT_DIR) == keys


def test_forged_unsigned_event_is_refused_when_signatures_are_required(tmp_path: Path) -> None:
    """Whoever can write the store writes an alias move into it; with signatures required,
    reindex does not let it move the alias."""
    models = tmp_path / "models"
    key = "a-team-hmac-key"
    with ModelPersistence(models, signing_key=key) as p:
        p.save({"v": 1}, "m")
        p.save({"v": 2}, "m")
        p.set_alias("m", "production", "1.0.0")
        seq = max(e.id for e in p.history()) + 1
    forged = {
        "format": "modelkeep-event",
        "format_version": 1,
        "event": "history",
        "seq": seq,
        "event_id": "b" * 32,
        "row": {
            "at": "2030-01-01T00:00:00.000000+00:00",
            "actor": "attacker",
            "action": "alias_set",
            "model_name": "m",
            "version": "1.0.1",
            "alias": "production",
            "key": None,
            "before": '"1.0.0"',
            "after": '"1.0.1"',
            "signature": None,
        },
        "state": {},
        "file_signature": None,
    }
    (models / EVENT_DIR / "m" / f"{seq:012d}-{'b' * 32}.json").write_text(json.dumps(forged))
    os.remove(models / "registry.db")
    with ModelPersistence(models, signing_key=key, require_signatures=True) as p:
        _, refused = read_events(p.store, p.keyring)
        assert [r.key.rsplit("/", 1)[1] for r in refused] == [f"{seq:012d}-{'b' * 32}.json"]
        p.reindex()
        assert p.get_aliases("m") == {"production": "1.0.0"}
        assert "attacker" not in {e.actor for e in p.history()}
    forged["file_signature"] = "hmac-sha256:" + "0" * 64  # a made-up signature is refused even when not required
    (models / EVENT_DIR / "m" / f"{seq:012d}-{'b' * 32}.json").write_text(json.dumps(forged))
    os.remove(models / "registry.db")
    with ModelPersistence(models, signing_key=key) as p:
        p.reindex()
        assert p.get_aliases("m") == {"production": "1.0.0"}


def test_event_files_outside_their_model_change_nothing(tmp_path: Path) -> None:
    """An event file copied into another model's folder, or naming a bad alias, is skipped."""
    models = tmp_path / "models"
    with ModelPersistence(models) as p:
        p.save({"v": 1}, "a")
        p.save({"v": 1}, "b")
        p.set_alias("a", "production", "1.0.0")
        src = p.store.list_keys(f"{EVENT_DIR}/a")[-1]
        p.store.write_bytes(src.replace("/a/", "/b/"), p.store.read_bytes(src))
    os.remove(models / "registry.db")
    with ModelPersistence(models) as p:
        p.reindex()
        assert p.get_aliases("b") == {} and p.get_aliases("a") == {"production": "1.0.0"}


@pytest.mark.parametrize("step", ALIAS_MOVE_STEPS)
def test_sigkill_at_each_step_of_an_alias_move(index_target: IndexTarget, tmp_path: Path, step: str) -> None:
    """After a kill at any step, gc (the repair) leaves the index and the event files agreeing,
    the alias where the index says, and a rebuild from the store alone gives the same answers."""
    models = tmp_path / "models"
    with index_target.persistence(models) as p:
        lifecycle_fixture(p)
    proc = CTX.Process(target=alias_move_then_die, args=(str(models), index_target.url, index_target.schema, step))
    proc.start()
    proc.join(120)
    assert proc.exitcode == -signal.SIGKILL
    with index_target.persistence(models) as p:
        moved = step == "committed"
        assert p.get_aliases("victim") == {"production": "1.0.2" if moved else "1.0.1"}
        found = [pr for pr in p.verify().problems if pr.kind == EVENT]
        assert bool(found) == (step in ("event_partial", "event_written"))  # a file no row names
        report = p.gc(min_age_seconds=0)
        assert len([r for r in report.removed if r.key.startswith(EVENT_DIR)]) == len(found)
        assert p.verify().ok
        before = snapshot_of(p)
    _drop_index(index_target, models)
    with index_target.persistence(models) as p:
        p.reindex()
        assert snapshot_of(p) == before


def snapshot_of(p: ModelPersistence) -> dict[str, Any]:
    """The answers about ``victim`` (:func:`lifecycle_fixture`'s model)."""
    versions = p.list_versions("victim")
    return {
        "versions": versions,
        "trash": p.list_trash(),
        "aliases": p.get_aliases("victim"),
        "tags": {v: p.get_tags("victim", version=v) for v in versions},
        "description": p.get_description("victim"),
        "history": [_entry(e) for e in p.history() if e.action != "reindex"],
    }


def test_policies_and_approvals_come_back_from_the_store(
    index_target: IndexTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelkeep import PolicyError, keys

    releaser = keys.generate("releaser")
    models = tmp_path / "models"
    with index_target.persistence(models) as p:
        monkeypatch.setenv("MODELKEEP_USER", "alice")
        p.save({"v": 1}, "churn", "1.0.0", metrics={"accuracy": 0.95})
        p.save({"v": 2}, "churn", "1.0.1", metrics={"accuracy": 0.99})
        p.set_policy("churn*", "production", filter="metrics.accuracy >= 0.9", approvals=1)
        p.set_policy("churn", "canary", require_signature=[releaser.public.pem().decode()])
        p.set_policy("fraud-[ab]", "staging", approvals=2)
        p.remove_policy("fraud-[ab]", "staging")
        monkeypatch.setenv("MODELKEEP_USER", "bob")
        p.approve("churn", "1.0.0", "production")
        policies, approvals = p.policies(), p.approvals("churn")
        refused = p.check_alias_move("churn", "production", "1.0.1")
    _drop_index(index_target, models)
    with index_target.persistence(models) as p:
        p.reindex()
        assert p.policies() == policies  # the signing key too, not only its fingerprint
        assert p.approvals("churn") == approvals
        assert p.check_alias_move("churn", "production", "1.0.1") == refused
        with pytest.raises(PolicyError, match="approvals"):
            p.set_alias("churn", "production", "1.0.1")
        p.set_alias("churn", "production", "1.0.0")  # bob's approval counts again
        assert p.get_aliases("churn") == {"production": "1.0.0"}


@pytest.mark.parametrize("glob", ["../../escape*", "a/b", ".hidden", ""])
def test_a_policy_model_glob_cannot_name_a_path(tmp_path: Path, glob: str) -> None:
    from modelkeep import InvalidNameError

    with ModelPersistence(tmp_path / "models") as p:
        p.save({"v": 1}, "churn", "1.0.0")
        with pytest.raises(InvalidNameError, match="policy model must be a model name or a glob"):
            p.set_policy(glob, "production", approvals=1)
        assert p.policies() == []
        assert not (tmp_path / "escape*").exists() and not (tmp_path / "models" / EVENT_DIR / "a").exists()
