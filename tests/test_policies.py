"""Alias policies and approvals: every condition passing and failing, the author's own approval,
who may change policies, the audit trail, races between approvals, moves and policy changes,
and the library, the command line and the UI refusing the same moves with the same reasons.

Runs on SQLite and PostgreSQL (the ``persistence`` / ``index_target`` fixtures).
"""

from __future__ import annotations

import html
import re
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import update
from starlette.testclient import TestClient

from modelkeep import ModelPersistence, PermissionDeniedError, PolicyError
from modelkeep import keys as k
from modelkeep.identity import Identity
from modelkeep.index.schema import policies
from modelkeep.ui import create_app
from modelkeep.ui.security import FIELD

from ._cli_in_process import run_cli
from .conftest import IndexTarget


def as_user(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Act as ``name`` from now on (``MODELKEEP_USER``: what the history records with no token)."""
    monkeypatch.setenv("MODELKEEP_USER", name)


@pytest.fixture
def churn(persistence: ModelPersistence, monkeypatch: pytest.MonkeyPatch) -> ModelPersistence:
    """``churn`` 1 (accuracy 0.90) and 2 (0.95, validated), both saved by alice."""
    as_user(monkeypatch, "alice")
    persistence.save({"v": 1}, "churn", "1", metrics={"accuracy": 0.90})
    persistence.save({"v": 2}, "churn", "2", metrics={"accuracy": 0.95})
    persistence.set_tag("churn", "validated", "yes", version="2")
    return persistence


def refused(p: ModelPersistence, version: str, alias: str = "production") -> PolicyError:
    with pytest.raises(PolicyError) as info:
        p.set_alias("churn", alias, version)
    assert p.get_aliases("churn").get(alias) != version
    return info.value


def test_filter_condition_passes_and_fails_with_the_value_seen(churn: ModelPersistence) -> None:
    p = churn
    p.set_policy("churn", "production", filter='metrics.accuracy >= 0.92 AND tags.validated = "yes"')
    err = refused(p, "1")
    assert isinstance(err, PermissionError) and isinstance(err, PermissionDeniedError)
    assert err.failures == [
        (
            'filter metrics.accuracy >= 0.92 AND tags.validated = "yes"',
            "metrics.accuracy = 0.9, tags.validated = (missing)",
        )
    ]
    assert "metrics.accuracy = 0.9" in str(err)
    p.set_alias("churn", "production", "2")
    assert p.get_aliases("churn") == {"production": "2"}
    # The same filter means what search means: the versions search finds are the ones that pass.
    found = [r.version for r in p.search_versions('metrics.accuracy >= 0.92 AND tags.validated = "yes"').items]
    assert found == ["2"]


def test_a_filter_on_a_field_no_version_has_fails_closed(churn: ModelPersistence) -> None:
    churn.set_policy("churn", "production", filter="metrics.auc >= 0.5")
    err = refused(churn, "2")
    assert "unknown field 'metrics.auc'" in err.failures[0][1]


def test_require_signature_names_the_keys_and_what_signed_the_version(
    persistence: ModelPersistence, index_target: IndexTarget, tmp_path: Path
) -> None:
    release = k.generate("release")
    key_file = tmp_path / "release.pem"
    key_file.write_bytes(release.pem())
    pub_file = tmp_path / "release.pub"
    pub_file.write_bytes(release.public.pem())
    persistence.save({"v": 1}, "churn", "1")  # signed by the per-user key, not the release key
    with index_target.persistence(persistence.store.root, signing_key_file=key_file) as releaser:
        releaser.save({"v": 2}, "churn", "2")
        persistence.set_policy("churn", "production", require_signature=[pub_file])
        err = refused(persistence, "1")
        (condition, seen), *_ = err.failures
        assert condition == f"require_signature (one of {release.fingerprint[:16]})"
        assert "not trusted" in seen
        releaser.set_alias("churn", "production", "2")
    # The key is stored in the policy itself: a mover who does not hold it judges the same way.
    assert persistence.get_aliases("churn") == {"production": "2"}
    assert persistence.policies()[0].to_dict()["conditions"]["require_signature"] == [release.fingerprint]


def test_require_input_signature(persistence: ModelPersistence) -> None:
    persistence.save({"v": 1}, "churn", "1")
    persistence.save({"v": 2}, "churn", "2", input_example=pd.DataFrame({"tenure": [1.0, 2.0]}))
    persistence.set_policy("churn*", "production", require_input_signature=True)
    err = refused(persistence, "1")
    assert err.failures == [("require_input_signature", "the version has no input signature")]
    persistence.set_alias("churn", "production", "2")
    assert persistence.get_aliases("churn") == {"production": "2"}


def test_approvals_by_others_count_the_authors_do_not_and_an_overwrite_needs_new_ones(
    churn: ModelPersistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = churn
    p.set_policy("churn", "production", approvals=2)
    p.approve("churn", "2", "production")  # alice saved version 2: recorded, never counted
    err = refused(p, "2")
    assert err.failures == [
        ("approvals 2", "0 approvals; alice saved this version, so their own approval does not count")
    ]
    as_user(monkeypatch, "bob")
    p.approve("churn", "2", "production")
    p.approve("churn", "2", "production")  # twice by the same user is one approval
    p.approve("churn", "2", "staging")  # for another alias: does not count here
    assert refused(p, "2").failures == [
        ("approvals 2", "1 approval (bob); alice saved this version, so their own approval does not count")
    ]
    as_user(monkeypatch, "carol")
    p.approve("churn", "2", "production")
    assert p.check_alias_move("churn", "production", "2").ok
    # An overwrite replaces the bytes approved: the approvals name the old bytes and stop counting.
    as_user(monkeypatch, "alice")
    p.save({"v": "2b"}, "churn", "2", overwrite=True, metrics={"accuracy": 0.95})
    assert "0 approvals" in refused(p, "2").failures[0][1]
    as_user(monkeypatch, "bob")
    p.approve("churn", "2", "production")
    as_user(monkeypatch, "carol")
    p.approve("churn", "2", "production")
    p.set_alias("churn", "production", "2")  # carol moves it; bob and carol approved the new bytes
    assert p.get_aliases("churn") == {"production": "2"}
    users = {(a["user"], a["alias"]) for a in p.approvals("churn", "2")}
    assert users == {("alice", "production"), ("bob", "production"), ("bob", "staging"), ("carol", "production")}


def test_the_author_is_whoever_saved_the_current_bytes(
    churn: ModelPersistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = churn
    p.set_policy("churn", "production", approvals=1)
    as_user(monkeypatch, "bob")
    p.approve("churn", "2", "production")
    p.save({"v": "2b"}, "churn", "2", overwrite=True)  # bob now authored these bytes
    p.approve("churn", "2", "production")
    assert "bob saved this version" in refused(p, "2").failures[0][1]


def test_allowed_users_and_key_fingerprints(churn: ModelPersistence, monkeypatch: pytest.MonkeyPatch) -> None:
    p = churn
    fingerprint = p._mover_fingerprint()
    assert fingerprint is not None
    p.set_policy("churn", "production", allowed=["release-bot"])
    as_user(monkeypatch, "mallory")
    err = refused(p, "2")
    assert err.failures == [("allowed release-bot", f"moved by mallory with key {fingerprint[:16]}")]
    as_user(monkeypatch, "release-bot")
    p.set_alias("churn", "production", "2")
    # A key fingerprint (or a prefix of 16+ hex digits) lets whoever holds that key move it.
    p.set_policy("churn", "production", allowed=[fingerprint[:20]])
    as_user(monkeypatch, "mallory")
    p.set_alias("churn", "production", "1")
    p.set_policy("churn", "production", allowed=["0" * 64])
    assert refused(p, "2").failures[0][0] == f"allowed {'0' * 64}"


def test_every_failed_condition_is_named_at_once_and_globs_govern_their_models(churn: ModelPersistence) -> None:
    p = churn
    p.save({"v": 1}, "fraud", "1")
    p.set_policy("ch*", "production", filter="metrics.accuracy >= 0.92", approvals=1, require_input_signature=True)
    err = refused(p, "1")
    assert [c for c, _ in err.failures] == ["filter metrics.accuracy >= 0.92", "require_input_signature", "approvals 1"]
    assert str(err).count(": seen ") == 3
    p.set_alias("churn", "staging", "1")  # another alias: no policy
    p.set_alias("fraud", "production", "1")  # another model: the glob does not match
    assert [q.model for q in p.policies("churn")] == ["ch*"] and p.policies("fraud") == []
    check = p.check_alias_move("churn", "production", "1")
    assert not check.ok and check.failures == err.failures
    assert "would be refused" in str(check)


def test_a_damaged_policy_row_refuses_every_move(churn: ModelPersistence) -> None:
    churn.set_policy("churn", "production", approvals=1)
    with churn.index.engine.begin() as conn:
        conn.execute(update(policies).values(conditions="{not json"))
    assert "damaged policy row" in refused(churn, "2").failures[0][0]


def test_only_admins_change_policies_editors_approve_viewers_do_nothing(
    churn: ModelPersistence, index_target: IndexTarget
) -> None:
    root = churn.store.root

    def as_identity(name: str, role: str) -> ModelPersistence:
        return index_target.persistence(root, identity=Identity(name, role))

    with as_identity("ed", "editor") as ed, as_identity("ada", "admin") as ada, as_identity("vi", "viewer") as vi:
        with pytest.raises(PermissionDeniedError, match="needs the admin role"):
            ed.set_policy("churn", "production", approvals=1)
        ada.set_policy("churn", "production", approvals=1)
        with pytest.raises(PermissionDeniedError, match="needs the admin role"):
            ed.remove_policy("churn", "production")
        with pytest.raises(PermissionDeniedError, match="needs the maintainer role"):
            vi.approve("churn", "2", "production")
        ed.approve("churn", "2", "production")
        ada.set_alias("churn", "production", "2")
        ada.remove_policy("churn", "production")
    # With no identity (no token): as for protected aliases, whoever writes the index may.
    churn.set_policy("churn", "staging", approvals=1)


def test_policy_changes_and_approvals_are_in_the_history(
    churn: ModelPersistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = churn
    as_user(monkeypatch, "ada")
    p.set_policy("churn", "production", approvals=1)
    p.set_policy("churn", "production", approvals=2, filter="metrics.accuracy > 0.9")
    as_user(monkeypatch, "bob")
    p.approve("churn", "2", "production")
    as_user(monkeypatch, "ada")
    p.remove_policy("churn", "production")
    rows = p.history(actions=("policy_set", "policy_delete", "approve"))
    assert [(r.action, r.actor, r.model_name, r.alias) for r in rows] == [
        ("policy_set", "ada", "churn", "production"),
        ("policy_set", "ada", "churn", "production"),
        ("approve", "bob", "churn", "production"),
        ("policy_delete", "ada", "churn", "production"),
    ]
    assert rows[0].before is None and rows[0].after == {"approvals": 1}
    assert rows[1].before == {"approvals": 1}
    assert rows[1].after == {"approvals": 2, "filter": "metrics.accuracy > 0.9"}
    assert rows[2].version == "2" and rows[2].after == {"sha256": p.get_version("churn", "2").artifact.sha256}
    assert rows[3].before == {"approvals": 2, "filter": "metrics.accuracy > 0.9"} and rows[3].after is None
    with pytest.raises(KeyError, match="no policy"):
        p.remove_policy("churn", "production")


# -- races ---------------------------------------------------------------------------


def _moves_and_approvals(p: ModelPersistence) -> list[tuple[int, str, str]]:
    return [(e.id, e.action, e.actor) for e in p.history("churn", actions=("alias_set", "approve", "policy_set"))]


def test_concurrent_approvals_and_moves_never_move_before_enough_approvals(
    churn: ModelPersistence, index_target: IndexTarget
) -> None:
    """Movers hammer the alias while approvers approve; every move that went through was
    preceded (in commit order) by two approvals from other people than the author."""
    root = churn.store.root
    churn.set_policy("churn", "production", approvals=2)
    errors: list[BaseException] = []
    moved = threading.Event()

    def approver(name: str) -> None:
        with index_target.persistence(root, identity=Identity(name, "editor")) as p:
            p.approve("churn", "2", "production")

    def mover(name: str) -> None:
        with index_target.persistence(root, identity=Identity(name, "admin")) as p:
            while not moved.is_set():
                try:
                    p.set_alias("churn", "production", "2")
                    moved.set()
                except PolicyError:
                    continue
                except BaseException as exc:
                    errors.append(exc)
                    return

    movers = [threading.Thread(target=mover, args=(f"mover{i}",)) for i in range(3)]
    for t in movers:
        t.start()
    for name in ("bob", "carol"):
        approver(name)
    for t in movers:
        t.join(timeout=120)
    assert not errors and moved.is_set()
    rows = _moves_and_approvals(churn)
    first_move = min(i for i, action, _ in rows if action == "alias_set")
    approvals_before = {who for i, action, who in rows if action == "approve" and i < first_move}
    assert approvals_before == {"bob", "carol"}


def test_a_policy_change_racing_moves_is_obeyed_by_every_later_move(
    churn: ModelPersistence, index_target: IndexTarget
) -> None:
    """Movers flip the alias between 1 and 2 while an admin tightens the policy: no move commits
    after the tightening (the policy lock orders them)."""
    root = churn.store.root
    stop = threading.Event()
    errors: list[BaseException] = []
    counts = {"moves": 0, "refused": 0}

    def mover(name: str) -> None:
        with index_target.persistence(root, identity=Identity(name, "admin")) as p:
            target = "1"
            while not stop.is_set():
                try:
                    p.set_alias("churn", "production", target)
                    counts["moves"] += 1
                except PolicyError:
                    counts["refused"] += 1
                except BaseException as exc:
                    errors.append(exc)
                    return
                target = "2" if target == "1" else "1"

    threads = [threading.Thread(target=mover, args=(f"m{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    while counts["moves"] < 6 and not errors:
        threading.Event().wait(0.01)
    churn.set_policy("churn", "production", allowed=["nobody"])
    while counts["refused"] < 6 and not errors:
        threading.Event().wait(0.01)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    rows = _moves_and_approvals(churn)
    tightened = max(i for i, action, _ in rows if action == "policy_set")
    assert any(action == "alias_set" for i, action, _ in rows if i < tightened)
    assert not [r for r in rows if r[1] == "alias_set" and r[0] > tightened]


def test_processes_racing_approve_and_move(churn: ModelPersistence, index_target: IndexTarget, tmp_path: Path) -> None:
    """The same race across processes (each its own connection pool and interpreter)."""
    churn.set_policy("churn", "production", approvals=1)
    script = tmp_path / "race.py"
    script.write_text(
        "import sys, time\n"
        "from modelkeep import ModelPersistence, PolicyError\n"
        "from modelkeep.identity import Identity\n"
        "role, name, url, schema, root = sys.argv[1:6]\n"
        "p = ModelPersistence(models_dir=root, registry_url=url, index_schema=schema or None,\n"
        "                     identity=Identity(name, 'admin'))\n"
        "if role == 'approve':\n"
        "    p.approve('churn', '2', 'production')\n"
        "else:\n"
        "    deadline = time.monotonic() + 240\n"  # until the approval lands, however fast each try is
        "    while time.monotonic() < deadline:\n"
        "        try:\n"
        "            p.set_alias('churn', 'production', '2')\n"
        "            print('moved'); break\n"
        "        except PolicyError:\n"
        "            pass\n"
    )
    args = [index_target.url, index_target.schema or "", str(churn.store.root)]
    mover = subprocess.Popen([sys.executable, str(script), "move", "m", *args], stdout=subprocess.PIPE, text=True)
    approver = subprocess.run([sys.executable, str(script), "approve", "bob", *args], capture_output=True, text=True)
    assert approver.returncode == 0, approver.stderr
    out, _ = mover.communicate(timeout=300)
    rows = _moves_and_approvals(churn)
    moves = [i for i, action, _ in rows if action == "alias_set"]
    approved = [i for i, action, _ in rows if action == "approve"]
    assert out.strip() == "moved" and len(moves) == 1 and approved[0] < moves[0]


# -- one refusal, three interfaces ---------------------------------------------------


def _cli(index_target: IndexTarget, root: Path, *args: str, user: str = "alice") -> subprocess.CompletedProcess[str]:
    """``modelkeep ARGS`` as ``user`` on this registry, in process (its answers are under test,
    not the process boundary: ~20 commands here)."""
    url = index_target.url
    if index_target.schema:  # the libpq way to put the tables in a schema
        url = f"{url}?options=-csearch_path%3D{index_target.schema}"
    env = {"MODELKEEP_USER": user, "MODELKEEP_MODELS_DIR": str(root), "MODELKEEP_REGISTRY_URL": url}
    return run_cli(*args, env=env)


def test_library_cli_and_ui_refuse_the_same_moves_with_the_same_reasons(
    churn: ModelPersistence, index_target: IndexTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = churn
    root = Path(p.store.root)
    set_policy = _cli(
        index_target,
        root,
        "policy",
        "set",
        "--model-name",
        "churn",
        "--alias",
        "production",
        "--filter",
        "metrics.accuracy >= 0.92",
        "--approvals",
        "1",
    )
    assert set_policy.returncode == 0, set_policy.stderr
    shown = _cli(index_target, root, "policy", "show", "--model-name", "churn")
    assert "metrics.accuracy >= 0.92" in shown.stdout and "approvals: 1" in shown.stdout

    for version in ("1", "2"):
        library = refused(p, version)
        cli = _cli(
            index_target, root, "alias", "set", "--model-name", "churn", "--alias", "production", "--version", version
        )
        assert cli.returncode != 0 and "Traceback" not in cli.stderr
        # The same reasons, and the remedy spelled for the command line.
        assert cli.stderr.strip() == f"Error: {library.for_cli()}"
        assert f"modelkeep approve churn {version} --for production" in cli.stderr
        assert f"approve('churn', '{version}', 'production')" in str(library)
        dry = _cli(
            index_target,
            root,
            "alias",
            "set",
            "--model-name",
            "churn",
            "--alias",
            "production",
            "--version",
            version,
            "--dry-run",
        )
        assert dry.returncode == 1 and "would be refused" in dry.stdout
        for condition, seen in library.failures:
            assert f"{condition}: seen {seen}" in dry.stdout
        with TestClient(create_app(p), base_url="http://127.0.0.1:8765") as client:
            page = client.get(f"/models/churn/versions/{version}")
            token = re.search(rf'name="{FIELD}" value="([0-9a-f]+)"', page.text)
            assert token is not None
            form = {FIELD: token.group(1), "alias": "production", "version": version, "seen": "{}"}
            answer = client.post("/models/churn/aliases", data=form, follow_redirects=False)
        assert answer.status_code == 403
        shown_rows = re.findall(r'<td class="condition">(.*?)</td><td class="seen">(.*?)</td>', answer.text)
        assert [(html.unescape(c), html.unescape(s)) for c, s in shown_rows] == library.failures
    assert p.get_aliases("churn") == {}

    approve = _cli(index_target, root, "approve", "churn", "2", "--for", "production", user="bob")
    assert approve.returncode == 0 and "bob approved churn version 2 for production" in approve.stdout
    dry = _cli(
        index_target,
        root,
        "alias",
        "set",
        "--model-name",
        "churn",
        "--alias",
        "production",
        "--version",
        "2",
        "--dry-run",
    )
    assert dry.returncode == 0 and "would pass" in dry.stdout and p.get_aliases("churn") == {}
    moved = _cli(index_target, root, "alias", "set", "--model-name", "churn", "--alias", "production", "--version", "2")
    assert moved.returncode == 0, moved.stderr
    assert p.get_aliases("churn") == {"production": "2"}
    removed = _cli(index_target, root, "policy", "rm", "--model-name", "churn", "--alias", "production")
    assert removed.returncode == 0 and p.policies() == []


def test_ui_approve_button_records_the_signed_in_users_approval(
    churn: ModelPersistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    churn.set_policy("churn", "production", approvals=1)
    as_user(monkeypatch, "bob")  # the UI without users acts as the local user
    with TestClient(create_app(churn), base_url="http://127.0.0.1:8765") as client:
        page = client.get("/models/churn/versions/2")
        assert 'id="approve-form"' in page.text
        token = re.search(rf'name="{FIELD}" value="([0-9a-f]+)"', page.text)
        assert token is not None
        answer = client.post(
            "/models/churn/versions/2/approve",
            data={FIELD: token.group(1), "alias": "production"},
            follow_redirects=True,
        )
        assert answer.status_code == 200 and 'id="approvals"' in answer.text and "bob" in answer.text
    assert [a["user"] for a in churn.approvals("churn", "2", alias="production")] == ["bob"]
    churn.set_alias("churn", "production", "2")
