"""Signed alias moves as an attacker who can write the index sees them.

With ``load(..., require_signed_alias=True)``, ``trusted_releasers`` or ``serve
--require-signatures``, a reader refuses an alias row rewritten with raw SQL, an older signed
move replayed over a newer one (even a reader that never saw the newer move), and an unsigned
move; moves signed before the from-version and time were signed still verify, and so do moves
signed by a key rotated out since. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from modelkeep import ModelPersistence, RollbackError, SignatureError
from modelkeep import keys as k
from modelkeep.events import alias_event
from modelkeep.index.schema import aliases

from ._http_server import OverHttp
from .conftest import IndexTarget

#: Every test on a registry runs directly and through a registry server (``persistence``): the
#: server's client judges alias moves with its own keys, and the attacker writes the server's index.
ALSO_OVER_HTTP = True


def row(p: ModelPersistence, alias: str = "production") -> dict[str, Any]:
    with p.index.engine.connect() as conn:
        found = conn.execute(select(aliases).where(aliases.c.model_name == "churn", aliases.c.alias == alias)).one()
    return dict(found._mapping)


def rewrite(p: ModelPersistence, **values: Any) -> None:
    """What the attacker does: an UPDATE on the alias row, nothing else."""
    with p.index.engine.begin() as conn:
        conn.execute(update(aliases).where(aliases.c.model_name == "churn").values(**values))


@pytest.fixture
def churn(persistence: ModelPersistence) -> ModelPersistence:
    """``churn`` 1, 2 and 3, signed with the per-user key; production moved 1 -> 2 (signed)."""
    for v in ("1", "2", "3"):
        persistence.save({"v": v}, "churn", v)
    persistence.set_alias("churn", "production", "1")
    persistence.set_alias("churn", "production", "2")
    return persistence


def fresh_reader(p: ModelPersistence, index_target: IndexTarget, **options: Any) -> ModelPersistence:
    """Another reader of the same registry that has never loaded anything from it (over HTTP:
    another client of the same server, judging with its own keys)."""
    if isinstance(p, OverHttp):
        client = p.server.client(**options)
        client.forget_seen()
        return client  # type: ignore[no-any-return]
    reader = index_target.persistence(p.store.root, **options)
    reader.forget_seen()
    return reader


def test_the_signed_move_covers_from_version_and_time(churn: ModelPersistence) -> None:
    moved = row(churn)
    assert (moved["version"], moved["previous"]) == ("2", "1")
    assert churn.load("churn@production", require_signed_alias=True) == {"v": "2"}
    for field, value in (("previous", "3"), ("updated_at", "2020-01-01T00:00:00.000000+00:00"), ("version", "3")):
        rewrite(churn, **{field: value})
        with pytest.raises(SignatureError, match="signature of that move does not match"):
            churn.load("churn@production")
        rewrite(churn, **{field: moved[field]})
    assert churn.load("churn@production", require_signed_alias=True) == {"v": "2"}


def test_an_unsigned_move_is_refused_only_when_required(churn: ModelPersistence, index_target: IndexTarget) -> None:
    rewrite(churn, version="3", signature=None, seq=None, previous="2")
    with fresh_reader(churn, index_target) as reader:
        assert reader.load("churn@production") == {"v": "3"}  # nothing required: as before
        with pytest.raises(SignatureError, match="not signed by a trusted key"):
            reader.load("churn@production", require_signed_alias=True)
        with pytest.raises(SignatureError, match="not signed by a trusted key"):
            reader.verify_alias("churn", "production")


def test_an_old_signed_move_replayed_is_refused_even_by_a_reader_that_never_saw_the_newer_one(
    churn: ModelPersistence, index_target: IndexTarget
) -> None:
    churn.set_alias("churn", "production", "3")
    first = row(churn)
    churn.set_alias("churn", "production", "1")  # production: 1 -> 2 -> 3 -> 1, every move signed
    assert churn.load("churn@production", require_signed_alias=True) == {"v": "1"}
    # The attacker copies the whole, genuinely signed row of the move to 3 back.
    rewrite(churn, **{key: first[key] for key in ("version", "seq", "signature", "previous", "updated_at")})
    with fresh_reader(churn, index_target) as reader:
        assert reader.load("churn@production") == {"v": "3"}  # without the requirement: trusted, as it was signed
        with pytest.raises(RollbackError, match=r"history records a newer signed move .* to version '1'"):
            reader.load("churn@production", require_signed_alias=True)


def test_moves_signed_before_schema_7_still_verify(churn: ModelPersistence) -> None:
    """A row signed in the older form (model, alias, version, SHA-256, number) keeps loading."""
    sha = churn.get_version("churn", "2").artifact.sha256
    seq = row(churn)["seq"] + 1
    legacy = churn.keyring.sign_event(alias_event("churn", "production", "2", sha, seq))
    rewrite(churn, seq=seq, signature=legacy, previous=None)
    assert churn.load("churn@production", require_signed_alias=True) == {"v": "2"}
    rewrite(churn, version="3")  # but not for another version
    with pytest.raises(SignatureError, match="does not match"):
        churn.load("churn@production")


def test_trusted_releasers_name_the_keys_whose_moves_count(
    churn: ModelPersistence, index_target: IndexTarget, tmp_path: Path
) -> None:
    mine = churn._mover_fingerprint()
    assert mine is not None
    with fresh_reader(churn, index_target, trusted_releasers=[mine[:16]]) as reader:
        assert reader.load("churn@production") == {"v": "2"}  # trusted_releasers implies the requirement
    other = k.generate("release-bot")
    with fresh_reader(churn, index_target, trusted_releasers=[other.fingerprint]) as reader:
        with pytest.raises(SignatureError, match="not one of the trusted releasers"):
            reader.load("churn@production")
        assert reader.load("churn", "2") == {"v": "2"}  # by number: the alias is not involved


def test_signed_moves_verify_across_key_rotation(churn: ModelPersistence, index_target: IndexTarget) -> None:
    old = churn._mover_fingerprint()
    new, retired = k.rotate_user_key()
    assert retired is not None and retired.fingerprint == old != new.fingerprint
    with fresh_reader(churn, index_target, trusted_releasers=[old, new.fingerprint]) as reader:
        assert reader._mover_fingerprint() == new.fingerprint
        # The move to 2 was signed by the rotated-out key, whose public half stays trusted.
        assert reader.load("churn@production", require_signed_alias=True) == {"v": "2"}
        reader.set_alias("churn", "production", "3")  # signed by the new key
        assert reader.load("churn@production", require_signed_alias=True) == {"v": "3"}
    with (
        fresh_reader(churn, index_target, trusted_releasers=[old]) as reader,
        pytest.raises(SignatureError, match="not one of the trusted releasers"),
    ):
        reader.load("churn@production")  # the new key was not named a releaser


def test_serve_require_signatures_refuses_an_alias_rewritten_in_the_index(tmp_path: Path) -> None:
    """A real ``modelkeep serve`` child: a rewritten alias row (pointing at a genuinely signed
    version) is never swapped in; a signed move to the same version is."""
    from sklearn.dummy import DummyClassifier

    from .test_serve import Server

    persistence = ModelPersistence(tmp_path / "models")  # serve opens the registry by its folder
    X, y = [[0.0], [1.0]], [0, 1]
    for v, constant in (("1", 0), ("2", 1)):
        persistence.save(DummyClassifier(strategy="constant", constant=constant).fit(X, y), "churn", v)
    persistence.set_alias("churn", "production", "1")
    folder = Path(persistence.store.root)
    server = Server(folder, "churn@production", "--poll", "0.2", "--require-signatures")
    try:
        assert server.client.get("/model").json()["version"] == "1"
        rewrite(persistence, version="2")
        deadline = time.monotonic() + 30
        while (server.client.get("/health").json().get("behind") or {}).get("version") != "2":
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        reason = server.client.get("/health").json()["behind"]["reason"]
        assert "SignatureError" in reason and "signature of that move does not match" in reason
        assert server.client.get("/model").json()["version"] == "1"
        persistence.set_alias("churn", "production", "2")  # a real, signed move
        while server.client.get("/model").json()["version"] != "2":
            assert time.monotonic() < deadline + 30, server.output()
            time.sleep(0.1)
    finally:
        server.stop()
        persistence.close()


def test_an_alias_set_again_by_a_mover_with_a_slow_clock_is_numbered_above_its_history(
    churn: ModelPersistence, index_target: IndexTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Move numbers come from the clock; after a removal, a mover whose clock is an hour behind
    must still number above the moves the history records, or readers would call it a replay."""
    before = row(churn)["seq"]
    churn.delete_alias("churn", "production")
    real = time.time_ns
    monkeypatch.setattr("modelkeep.events.time.time_ns", lambda: real() - 3600 * 10**9)
    churn.set_alias("churn", "production", "3")
    assert row(churn)["seq"] > before
    with fresh_reader(churn, index_target) as reader:
        assert reader.load("churn@production", require_signed_alias=True) == {"v": "3"}
