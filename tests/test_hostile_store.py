"""A store whose index or sidecars someone else wrote must not reach outside the store.

The attacker can write the registry database and every file under the store's
root (in a team: anyone with write access to the bucket and the database). Each
test plants one hostile layout, runs every command that reads the store
(load, verify, gc, delete/purge, reindex, save), and checks that nothing
outside the root was read, written or deleted, and that verify reports it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from modelkeep import ModelKeepError, ModelPersistence

SECRET = b"outside the store: must survive\n"


@pytest.fixture
def world(tmp_path: Path, classifier: Any) -> dict[str, Any]:
    """A registry with two versions, and a victim folder beside (not under) its root."""
    root = tmp_path / "models"
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(SECRET)
    with ModelPersistence(models_dir=root) as p:
        p.save(classifier, "churn", "1.0.0")
        p.save(classifier, "churn", "1.1.0")
    return {"root": root, "outside": outside, "victim": victim, "tmp": tmp_path}


def _outside_unchanged(world: dict[str, Any], before: dict[str, bytes]) -> None:
    now = {str(f.relative_to(world["outside"])): f.read_bytes() for f in world["outside"].rglob("*") if f.is_file()}
    assert now == before, "something outside the store was written or deleted"


def _snapshot(world: dict[str, Any]) -> dict[str, bytes]:
    return {str(f.relative_to(world["outside"])): f.read_bytes() for f in world["outside"].rglob("*") if f.is_file()}


def _rewrite_index(root: Path, name: str, version: str, change: Callable[[dict[str, Any]], None]) -> None:
    """What an attacker with write access to the database does: rewrite a row and its record."""
    engine = create_engine(f"sqlite:///{root / 'registry.db'}")
    with engine.begin() as conn:
        raw = conn.execute(
            text("SELECT record FROM modelkeep_versions WHERE model_name = :n AND version = :v"),
            {"n": name, "v": version},
        ).scalar_one()
        record = json.loads(raw)
        change(record)
        conn.execute(
            text("UPDATE modelkeep_versions SET record = :r, artifact_key = :k WHERE model_name = :n AND version = :v"),
            {"r": json.dumps(record), "k": record["artifact"]["key"], "n": name, "v": version},
        )
    engine.dispose()


def _rewrite_sidecar(root: Path, name: str, version: str, change: Callable[[dict[str, Any]], None]) -> None:
    path = root / name / version / f"{name}_v{version}_metadata.json"
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def _remove_version(p: ModelPersistence, name: str, version: str) -> None:
    """Delete a version and, where deletes are soft, purge its bytes too."""
    p.delete(name, version, force=True) if _accepts(p.delete, "force") else p.delete(name, version)
    purge = getattr(p, "purge", None)
    if purge is not None:
        purge(name, version)


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    import inspect

    return name in inspect.signature(fn).parameters


def _attempt(action: Callable[[], Any]) -> None:
    """Run one command; refusing with a modelkeep error is a correct outcome."""
    with contextlib.suppress(ModelKeepError):
        action()


def _every_command(world: dict[str, Any], name: str, version: str) -> list[str]:
    """Run load, verify, gc (dry run and real), delete/purge and reindex; return what verify reported."""
    with ModelPersistence(models_dir=world["root"], create=False) as p:
        _attempt(lambda: p.load(name, version))
        report = p.verify()
        problems = [f"{pr.kind}:{pr.key}" for pr in report.problems]
        _attempt(lambda: p.gc(dry_run=True, min_age_seconds=0))
        _attempt(lambda: p.gc(min_age_seconds=0))
        _attempt(lambda: _remove_version(p, name, version))
        _attempt(lambda: p.reindex())
    return problems


@pytest.mark.parametrize(
    "evil_key",
    [
        "../outside/victim",
        "churn/../../outside/victim",
        "churn/1.0.0/../../../outside/victim",
        "{abs}",
    ],
)
def test_artifact_key_escaping_the_root_is_refused_everywhere(world: dict[str, Any], evil_key: str) -> None:
    key = evil_key.replace("{abs}", str(world["victim"]))
    before = _snapshot(world)

    def point_outside(record: dict[str, Any]) -> None:
        record["artifact"]["key"] = key

    _rewrite_index(world["root"], "churn", "1.0.0", point_outside)
    _rewrite_sidecar(world["root"], "churn", "1.0.0", point_outside)
    problems = _every_command(world, "churn", "1.0.0")
    _outside_unchanged(world, before)
    assert any(key in p for p in problems), problems


def test_blob_id_escaping_the_blob_folder_is_refused_by_reindex_and_purge(world: dict[str, Any]) -> None:
    before = _snapshot(world)

    def add_blob(record: dict[str, Any]) -> None:
        record["artifact"].setdefault("extra", {})["blobs"] = [["../outside/victim", len(SECRET)]]

    _rewrite_sidecar(world["root"], "churn", "1.1.0", add_blob)
    with ModelPersistence(models_dir=world["root"], create=False) as p:
        _attempt(p.reindex)
    # reindex skipped the hostile 1.1.0 sidecar; now the attacker rewrites 1.0.0's index row too.
    _rewrite_index(world["root"], "churn", "1.0.0", add_blob)
    problems = _every_command(world, "churn", "1.0.0")
    _outside_unchanged(world, before)
    assert any("victim" in p for p in problems), problems


@pytest.mark.parametrize("level", ["model", "version"])
def test_symlinked_folders_are_not_followed_out_of_the_root(world: dict[str, Any], level: str) -> None:
    root, outside = world["root"], world["outside"]
    target = root / "churn" if level == "model" else root / "churn" / "1.0.0"
    # The attacker replaces the folder with a link to a look-alike folder outside the store.
    lookalike = outside / "lookalike"
    import shutil

    shutil.copytree(target, lookalike)
    shutil.rmtree(target)
    os.symlink(lookalike, target)
    before = _snapshot(world)
    problems = _every_command(world, "churn", "1.0.0")
    _outside_unchanged(world, before)
    assert problems, "verify must report a version stored behind a symlink"


def test_symlinked_tmp_folder_does_not_make_save_write_outside(world: dict[str, Any], classifier: Any) -> None:
    root, outside = world["root"], world["outside"]
    tmp = root / ".tmp"
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    os.symlink(outside, tmp)
    before = _snapshot(world)
    with ModelPersistence(models_dir=root, create=False) as p:
        _attempt(lambda: p.save(classifier, "churn", "2.0.0"))
        _attempt(lambda: p.gc(min_age_seconds=0))
    _outside_unchanged(world, before)
    assert sorted(os.listdir(outside)) == ["victim"]


@pytest.mark.parametrize("folder", ["churn", ".tmp"])
def test_a_link_planted_between_two_saves_of_one_registry_is_refused(
    world: dict[str, Any], classifier: Any, folder: str
) -> None:
    # A registry object checks the store's paths at every save, not once: a link planted since is refused.
    root, outside = world["root"], world["outside"]
    with ModelPersistence(models_dir=root, create=False) as p:
        p.save(classifier, "churn")  # the folders are checked, and found to be folders
        target = root / folder
        lookalike = outside / "lookalike"
        shutil.copytree(target, lookalike)
        shutil.rmtree(target)
        os.symlink(lookalike, target)
        before = _snapshot(world)
        with pytest.raises(ModelKeepError, match="symbolic link"):
            p.save(classifier, "churn")
    _outside_unchanged(world, before)


def test_symlinked_artifact_file_is_not_read_or_deleted(world: dict[str, Any]) -> None:
    root = world["root"]
    artifact = next((root / "churn" / "1.0.0").glob("churn_v1.0.0.*"))
    artifact.unlink()
    os.symlink(world["victim"], artifact)
    before = _snapshot(world)
    problems = _every_command(world, "churn", "1.0.0")
    _outside_unchanged(world, before)
    assert problems


def test_reindex_skips_a_sidecar_naming_an_unsafe_blob(world: dict[str, Any]) -> None:
    def add_blob(record: dict[str, Any]) -> None:
        record["artifact"].setdefault("extra", {})["blobs"] = [["../outside/victim", len(SECRET)]]

    _rewrite_sidecar(world["root"], "churn", "1.1.0", add_blob)
    with ModelPersistence(models_dir=world["root"], create=False) as p:
        assert p.reindex() == 1  # 1.0.0 only: the hostile sidecar is skipped, not trusted
        assert p.list_versions("churn") == ["1.0.0"]
    assert world["victim"].read_bytes() == SECRET


def test_verify_names_the_unsafe_entry(world: dict[str, Any]) -> None:
    def point_outside(record: dict[str, Any]) -> None:
        record["artifact"]["key"] = "../outside/victim"

    _rewrite_index(world["root"], "churn", "1.0.0", point_outside)
    with ModelPersistence(models_dir=world["root"], create=False) as p:
        unsafe = [pr for pr in p.verify().problems if pr.kind == "unsafe"]
    assert [(pr.model_name, pr.version) for pr in unsafe] == [("churn", "1.0.0")]
