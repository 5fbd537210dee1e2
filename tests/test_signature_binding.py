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
import re
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sqlalchemy import delete, insert, select, update

from modelkeep import IntegrityError, ModelPersistence, RollbackError, RollbackWarning, SignatureError, freshness
from modelkeep.copying import copy_registry
from modelkeep.index.rows import parse_record
from modelkeep.index.schema import aliases, history, versions
from modelkeep.loading import MmapIgnoredWarning
from modelkeep.metadata import ModelMetadata
from modelkeep.storage import verified as verified_module

from ._http_server import OverHttp
from .conftest import IndexTarget

#: The tests on ``persistence`` run directly and through a registry server too: the attacker
#: writes the server's index and store; the client judges with its own keys.
ALSO_OVER_HTTP = True

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


# -- a signed record replayed under another name or version ------------------------------------

OTHER = {"who": "other 1.0.0, a different model"}
FRAUD = {"who": "fraud 2.0.0, the model that was asked for"}


def replay(p: ModelPersistence, source: tuple[str, str], target: tuple[str, str]) -> None:
    """The attacker's edit: copy the ``record``, ``artifact_key``, ``sha256``, ``size``, ``format``
    and ``compression`` of the ``source`` row into the ``target`` row (whose ``model_name`` and
    ``version`` columns stay, because that is how it is found)."""
    cols = ("record", "artifact_key", "sha256", "size", "format", "compression", "model_type")
    with p.index.engine.begin() as conn:
        row = conn.execute(
            select(*(versions.c[c] for c in cols)).where(
                versions.c.model_name == source[0], versions.c.version == source[1]
            )
        ).one()
        conn.execute(
            update(versions)
            .where(versions.c.model_name == target[0], versions.c.version == target[1])
            .values(dict(zip(cols, row, strict=True)))
        )


def row_record(p: ModelPersistence, model_name: str, version: str) -> ModelMetadata:
    """The record as the code before this change built it: the row's JSON, nothing compared."""
    with p.index.engine.connect() as conn:
        raw = conn.execute(
            select(versions.c.record).where(versions.c.model_name == model_name, versions.c.version == version)
        ).scalar_one()
    return parse_record(raw)


def make_replayed(persistence: ModelPersistence) -> ModelPersistence:
    """Make ``persistence`` a registry whose signatures are required, where ``fraud 2.0.0``'s row now carries the signed
    record of ``other 1.0.0``. Before this change ``load("fraud", "2.0.0")`` returned ``OTHER``
    with verdict ``trusted``: the record's signature is genuine, and nothing compared its name and
    version with the row that was asked for."""
    persistence.keyring.required = True
    persistence.save(OTHER, "other", "1.0.0")
    persistence.save({"who": "fraud 1.0.0"}, "fraud", "1.0.0")
    persistence.save(FRAUD, "fraud", "2.0.0")
    replay(persistence, ("other", "1.0.0"), ("fraud", "2.0.0"))
    # The premise: the replayed record verifies as trusted on its own, and its bytes are intact.
    forged = row_record(persistence, "fraud", "2.0.0")
    assert (forged.model_name, forged.version) == ("other", "1.0.0")
    assert persistence.keyring.check(forged).trusted
    return persistence


@pytest.fixture
def replayed(persistence: ModelPersistence) -> ModelPersistence:
    """:func:`make_replayed` on SQLite and PostgreSQL."""
    return make_replayed(persistence)


SIGNED_FOR_OTHER_TEXT = "model 'fraud' version '2.0.0' carries a record signed for other 1.0.0"
SIGNED_FOR_OTHER = re.escape(SIGNED_FOR_OTHER_TEXT)


def test_load_refuses_a_record_signed_for_another_version(replayed: ModelPersistence) -> None:
    for call in (
        lambda: replayed.load("fraud", "2.0.0"),
        lambda: replayed.load("fraud"),  # latest is 2.0.0
        lambda: replayed.load("fraud", "2.0.0", mmap_mode="r"),
    ):
        with pytest.raises(SignatureError, match=SIGNED_FOR_OTHER):
            call()
    assert replayed.load("fraud", "1.0.0") == {"who": "fraud 1.0.0"}  # the untouched rows still load
    assert replayed.load("other", "1.0.0") == OTHER


def test_load_through_an_alias_refuses_it_too(replayed: ModelPersistence) -> None:
    with replayed.index.engine.begin() as conn:
        conn.execute(insert(aliases).values(model_name="fraud", alias="prod", version="2.0.0", updated_at="x"))
    with pytest.raises(SignatureError, match=SIGNED_FOR_OTHER):
        replayed.load("fraud@prod")


def test_metadata_signature_status_and_export_refuse_it(replayed: ModelPersistence, tmp_path: Path) -> None:
    for call in (
        lambda: replayed.get_metadata("fraud", "2.0.0"),
        lambda: replayed.get_version("fraud"),
        lambda: replayed.signature_status("fraud", "2.0.0"),
        lambda: replayed.export_file("fraud", "2.0.0", tmp_path / "out.joblib"),
    ):
        with pytest.raises(SignatureError, match=SIGNED_FOR_OTHER):
            call()
    assert not (tmp_path / "out.joblib").exists()


def test_listings_mark_the_replayed_row_damaged(replayed: ModelPersistence) -> None:
    """A listing does not fail on one altered row: it shows it as damaged (it cannot be loaded),
    under the row's own name and version, saying why."""
    for records in (
        replayed.list_version_records("fraud"),
        replayed.search_versions("version = '2.0.0'", model_name="fraud").items,
    ):
        forged = [r for r in records if r.version == "2.0.0"]
        assert len(forged) == 1 and forged[0].model_name == "fraud"
        assert forged[0].damaged is not None and SIGNED_FOR_OTHER_TEXT in forged[0].damaged
        assert forged[0].artifact is None
    assert [r.version for r in replayed.list_version_records("fraud") if not r.damaged] == ["1.0.0"]


def test_verify_reports_the_replayed_row_under_its_own_name(replayed: ModelPersistence) -> None:
    report = replayed.verify("fraud")
    found = [(pr.kind, pr.model_name, pr.version) for pr in report.problems if pr.kind == "signature"]
    assert found == [("signature", "fraud", "2.0.0")]
    assert any(SIGNED_FOR_OTHER_TEXT in pr.detail for pr in report.problems)


def test_copy_refuses_the_replayed_row(replayed: ModelPersistence, tmp_path: Path) -> None:
    """Before: copy registered the forged row in the destination as ``other 1.0.0`` (the name in
    its JSON), under the source's signature. Now nothing of ``fraud`` is copied."""
    with ModelPersistence(models_dir=tmp_path / "dest") as dest:
        dest.ensure_registry()  # an empty destination registry, so "nothing copied" can be listed
        with pytest.raises(SignatureError, match=SIGNED_FOR_OTHER):
            copy_registry(replayed, dest, models=["fraud"])
        assert dest.list_models() == []


def test_ui_version_page_refuses_it(index_target: IndexTarget, tmp_path: Path) -> None:
    """The UI runs beside the registry (a server's UI too): this one is not run over HTTP."""
    from starlette.testclient import TestClient

    from modelkeep.ui import create_app

    with (
        index_target.persistence(tmp_path / "models") as registry,
        TestClient(create_app(make_replayed(registry), read_only=True), base_url="http://127.0.0.1") as client,
    ):
        page = client.get("/models/fraud/versions/2.0.0")
        assert page.status_code == 400
        assert "carries a record signed for other 1.0.0" in page.text
        listing = client.get("/models/fraud")  # the model page lists it as damaged, and why
        assert listing.status_code == 200
        assert "damaged" in listing.text and "carries a record signed for other 1.0.0" in listing.text
        assert client.get("/models/fraud/versions/1.0.0").status_code == 200


@pytest.mark.parametrize(
    ("column", "value", "says"),
    [
        ("artifact_key", "fraud/2.0.0/elsewhere.joblib", "but the index row names 'fraud/2.0.0/elsewhere.joblib'"),
        ("sha256", "0" * 64, "but the index row says 0000000000000000"),
        ("size", 1, "(1 bytes)"),
    ],
)
def test_a_row_whose_columns_disagree_with_its_signed_record_is_refused(
    persistence: ModelPersistence, column: str, value: object, says: str
) -> None:
    persistence.save(FRAUD, "fraud", "2.0.0")
    with persistence.index.engine.begin() as conn:
        conn.execute(update(versions).where(versions.c.model_name == "fraud").values({column: value}))
    with pytest.raises(SignatureError, match=re.escape(says)):
        persistence.load("fraud", "2.0.0")


def test_an_unsigned_record_of_another_version_is_a_corrupt_row(tmp_path: Path) -> None:
    """Without any signature the same replay is not a signature problem but a corrupt row."""
    with ModelPersistence(models_dir=tmp_path / "m") as p:
        p.keyring.use_user_key = False  # save unsigned
        p.save(OTHER, "other", "1.0.0")
        p.save(FRAUD, "fraud", "2.0.0")
        assert p.get_version("fraud").signature is None
        replay(p, ("other", "1.0.0"), ("fraud", "2.0.0"))
        with pytest.raises(IntegrityError, match=re.escape("holds a record made for other 1.0.0")) as caught:
            p.load("fraud", "2.0.0")
        assert not isinstance(caught.value, SignatureError)


def test_the_cli_read_only_path_refuses_it_too(local_persistence: ModelPersistence) -> None:
    """``info`` answers from a read-only SQLite reader when it can: it refuses the row as the
    library does, with the same message."""
    from click.testing import CliRunner

    from modelkeep.cli import cli

    replayed = make_replayed(local_persistence)
    runner = CliRunner()
    for fast in ("1", "0"):
        result = runner.invoke(
            cli,
            ["--models-dir", str(replayed.models_dir), "info", "--model-name", "fraud", "--version", "2.0.0"],
            env={"MODELKEEP_CLI_FAST_PATH": fast},
        )
        assert result.exit_code != 0
        assert SIGNED_FOR_OTHER_TEXT in result.output


# -- rollback: latest and aliases going back to an older signed version ------------------------


def delete_row(p: ModelPersistence, model_name: str, version: str) -> None:
    """The attacker removes a version's row outright (no trash, no history): every row left
    is still genuinely signed."""
    with p.index.engine.begin() as conn:
        conn.execute(delete(versions).where(versions.c.model_name == model_name, versions.c.version == version))


@pytest.fixture
def two_versions(persistence: ModelPersistence) -> ModelPersistence:
    """``fraud`` 1.0.0 and 2.0.0, signed, signatures required; this reader has loaded the latest."""
    persistence.keyring.required = True
    persistence.save({"who": "fraud 1.0.0"}, "fraud", "1.0.0")
    persistence.save(FRAUD, "fraud", "2.0.0")
    assert persistence.load("fraud") == FRAUD
    return persistence


def test_latest_rolled_back_by_deleting_the_newest_row_is_refused(two_versions: ModelPersistence) -> None:
    """Before this change ``load("fraud")`` then returned ``fraud 1.0.0`` with verdict ``trusted``."""
    p = two_versions
    delete_row(p, "fraud", "2.0.0")
    assert p.resolve_version("fraud") == "1.0.0"
    assert p.signature_status("fraud", "1.0.0").trusted  # the row left is genuinely signed
    with pytest.raises(RollbackError, match=r"resolves to '1\.0\.0'.*signed version '2\.0\.0'"):
        p.load("fraud")
    assert p.load("fraud", "1.0.0") == {"who": "fraud 1.0.0"}  # asked for by number: the user's call


def test_latest_rolled_back_by_reordering_rows_is_refused(two_versions: ModelPersistence) -> None:
    """The index orders versions by its ``sort_key`` column, which the attacker can rewrite; the
    reader compares the version numbers themselves."""
    p = two_versions
    with p.index.engine.begin() as conn:
        conn.execute(update(versions).where(versions.c.version == "1.0.0").values(sort_key=b"\xff" * 8))
    assert p.resolve_version("fraud") == "1.0.0"
    with pytest.raises(RollbackError):
        p.load("fraud")


def test_a_signed_trash_moves_latest_back_without_an_error(two_versions: ModelPersistence) -> None:
    p = two_versions
    p.delete("fraud", "2.0.0")
    assert p.load("fraud") == {"who": "fraud 1.0.0"}
    p.purge("fraud", "2.0.0")  # purging after the trash changes nothing for readers
    assert p.load("fraud") == {"who": "fraud 1.0.0"}
    # and the mark is now 1.0.0: deleting that row without a signed trash is a rollback again
    p.save({"who": "fraud 0.9.0"}, "fraud", "0.9.0")
    delete_row(p, "fraud", "1.0.0")
    with pytest.raises(RollbackError):
        p.load("fraud")


def test_an_old_signed_trash_replayed_after_a_restore_is_refused(
    two_versions: ModelPersistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2.0.0 was trashed (signed) and restored; the reader loads it again. Deleting its row now and
    keeping the old signed trash in the history does not pass: that removal is older than the
    reader's last sight of 2.0.0. (A reader renews that time every ``REFRESH_SECONDS``; here on
    every load, so that the test does not depend on the clock.)"""
    monkeypatch.setattr(freshness, "REFRESH_SECONDS", 0.0)
    p = two_versions
    p.delete("fraud", "2.0.0")
    p.restore("fraud", "2.0.0")
    assert p.load("fraud") == FRAUD
    delete_row(p, "fraud", "2.0.0")
    assert p.index.lifecycle.signed_removals("fraud", "2.0.0")  # the old signed removal is there
    with pytest.raises(RollbackError):
        p.load("fraud")


def test_a_forged_trash_signature_is_not_accepted(two_versions: ModelPersistence) -> None:
    p = two_versions
    p.keyring.use_user_key = False  # a writer without the key trashes (unsigned)...
    if isinstance(p, OverHttp):
        p.direct.keyring.use_user_key = False  # (through a server that has none either)
    p.delete("fraud", "2.0.0")
    assert p.index.lifecycle.signed_removals("fraud", "2.0.0") == []
    with p.index.engine.begin() as conn:  # ...and the attacker pastes a signature from elsewhere
        conn.execute(update(history).where(history.c.action == "delete").values(signature="hmac-sha256:" + "0" * 64))
    with pytest.raises(RollbackError):
        p.load("fraud")


def alias_row(p: ModelPersistence, model_name: str, alias: str) -> dict[str, Any]:
    with p.index.engine.connect() as conn:
        row = conn.execute(select(aliases).where(aliases.c.model_name == model_name, aliases.c.alias == alias)).one()
    return dict(row._mapping)


def test_alias_moves_are_signed_and_a_rewritten_alias_is_refused(two_versions: ModelPersistence) -> None:
    """Before this change an ``UPDATE modelkeep_aliases SET version = '1.0.0'`` made
    ``load("fraud@prod")`` return ``fraud 1.0.0``, trusted."""
    p = two_versions
    p.set_alias("fraud", "prod", "2.0.0")
    row = alias_row(p, "fraud", "prod")
    assert row["signature"] and row["seq"]
    assert p.load("fraud@prod") == FRAUD
    with p.index.engine.begin() as conn:
        conn.execute(update(aliases).where(aliases.c.alias == "prod").values(version="1.0.0"))
    with pytest.raises(SignatureError, match="signature of that move does not match"):
        p.load("fraud@prod")


def test_an_older_signed_alias_move_replayed_is_a_rollback(two_versions: ModelPersistence) -> None:
    """The attacker kept the alias row of an earlier, genuinely signed move (to 1.0.0) and writes
    it back after the alias moved on to 2.0.0."""
    p = two_versions
    p.set_alias("fraud", "prod", "1.0.0")
    old = alias_row(p, "fraud", "prod")
    p.set_alias("fraud", "prod", "2.0.0")
    assert p.load("fraud@prod") == FRAUD
    with p.index.engine.begin() as conn:
        conn.execute(
            update(aliases)
            .where(aliases.c.alias == "prod")
            .values(
                version=old["version"],
                seq=old["seq"],
                signature=old["signature"],
                previous=old["previous"],  # the move signs where it came from and when
                updated_at=old["updated_at"],
            )
        )
    with pytest.raises(RollbackError, match="older move than this reader has already seen"):
        p.load("fraud@prod")
    with pytest.raises(RollbackError):  # stripping the signature does not help either
        with p.index.engine.begin() as conn:
            conn.execute(update(aliases).where(aliases.c.alias == "prod").values(signature=None))
        p.load("fraud", alias="prod")
    assert p.load("fraud", "1.0.0") == {"who": "fraud 1.0.0"}


def test_unsigned_alias_is_refused_when_signatures_are_required_until_moved_again(
    two_versions: ModelPersistence,
) -> None:
    """An alias set before signed moves existed (or by a writer without a key) has no signature."""
    p = two_versions
    with p.index.engine.begin() as conn:
        conn.execute(insert(aliases).values(model_name="fraud", alias="prod", version="2.0.0", updated_at="x"))
    with pytest.raises(SignatureError, match=r"not signed by a trusted key.*modelkeep alias set"):
        p.load("fraud@prod")
    p.set_alias("fraud", "prod", "2.0.0")  # where it already points: signs it, writes no history
    assert alias_row(p, "fraud", "prod")["signature"]
    assert [e.action for e in p.alias_history("fraud", "prod")] == []
    assert p.load("fraud@prod") == FRAUD


def test_without_required_signatures_a_rollback_is_a_warning(persistence: ModelPersistence) -> None:
    p = persistence
    p.save({"who": "fraud 1.0.0"}, "fraud", "1.0.0")
    p.save(FRAUD, "fraud", "2.0.0")
    assert p.load("fraud") == FRAUD
    delete_row(p, "fraud", "2.0.0")
    with pytest.warns(RollbackWarning, match="may have been rolled back"):
        assert p.load("fraud") == {"who": "fraud 1.0.0"}


def test_forget_seen_resets_what_this_reader_remembers(two_versions: ModelPersistence) -> None:
    p = two_versions
    delete_row(p, "fraud", "2.0.0")
    with pytest.raises(RollbackError):
        p.load("fraud")
    p.forget_seen("fraud")
    assert p.load("fraud") == {"who": "fraud 1.0.0"}


def test_marks_live_in_the_readers_config_folder_per_registry(
    two_versions: ModelPersistence, private_config_dir: Path, tmp_path: Path
) -> None:
    """Another registry with the same model names is not affected by what was seen here."""
    seen = list((private_config_dir / "seen").glob("*.json"))
    assert len(seen) == 1
    with ModelPersistence(models_dir=tmp_path / "elsewhere", require_signatures=True) as other:
        other.save({"who": "elsewhere"}, "fraud", "1.0.0")
        assert other.load("fraud") == {"who": "elsewhere"}
    assert len(list((private_config_dir / "seen").glob("*.json"))) == 2


def test_cli_forget_seen(local_persistence: ModelPersistence) -> None:
    from click.testing import CliRunner

    from modelkeep.cli import cli

    p = local_persistence
    p.keyring.required = True
    p.save({"who": "fraud 1.0.0"}, "fraud", "1.0.0")
    p.save(FRAUD, "fraud", "2.0.0")
    p.load("fraud")
    delete_row(p, "fraud", "2.0.0")
    with pytest.raises(RollbackError):
        p.load("fraud")
    result = CliRunner().invoke(
        cli, ["--models-dir", str(p.models_dir), "keys", "forget-seen", "--model-name", "fraud"]
    )
    assert result.exit_code == 0, result.output
    assert "Forgot what you have seen of model 'fraud'" in result.output
    assert p.load("fraud") == {"who": "fraud 1.0.0"}


def test_overwriting_an_aliased_version_re_signs_its_aliases(two_versions: ModelPersistence) -> None:
    """A move's signature names the bytes it pointed at; an honest overwrite re-signs the alias, so
    it keeps loading (a rewrite of the row by someone without the key does not)."""
    p = two_versions
    p.set_alias("fraud", "prod", "2.0.0")
    before = alias_row(p, "fraud", "prod")
    p.save({"who": "fraud 2.0.0, retrained"}, "fraud", "2.0.0", overwrite=True)
    after = alias_row(p, "fraud", "prod")
    assert after["seq"] > before["seq"] and after["signature"] != before["signature"]
    assert p.load("fraud@prod") == {"who": "fraud 2.0.0, retrained"}
