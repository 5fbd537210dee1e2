"""Claim leases (issue 27): a save that uploads under its claim renews the lease from a
heartbeat, so a long upload keeps its version; a renewal is fenced by the token and never
revives an expired lease; without renewals the lease runs out and the writer stops.

Both index backends (SQLite and PostgreSQL); leases are lowered to a second or two.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete

from modelkeep import ModelPersistence
from modelkeep.errors import ClaimLostError, SaveInProgressError
from modelkeep.index import claims as claims_module
from modelkeep.index.claims import list_claims, settle_version
from modelkeep.index.schema import claims as claims_table
from tests.conftest import IndexTarget


@pytest.fixture
def short_lease(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(claims_module, "CLAIM_LEASE_SECONDS", 1.0)
    monkeypatch.setattr(claims_module, "CLAIM_RENEW_SECONDS", 0.1)
    return 1.0


@pytest.fixture
def registry(index_target: IndexTarget, tmp_path: Path) -> Any:
    p = index_target.persistence(tmp_path / "models")
    yield p
    p.close()


def test_a_renewed_claim_outlives_its_lease_and_gc_keeps_it(
    registry: ModelPersistence, short_lease: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 2 s lease renewed every 0.1 s: a renewal may come up to 1.9 s late on a busy machine (two
    # test workers on two cores) before the lease is lost, not the 0.9 s a 1 s lease leaves.
    lease = 2 * short_lease
    monkeypatch.setattr(claims_module, "CLAIM_LEASE_SECONDS", lease)
    index = registry.index
    with index.claim("m", None) as slot, slot.kept_alive():
        first = slot.claimed_at
        time.sleep(lease * 2.5)  # two and a half leases
        slot.check()  # still ours, and the lease was renewed meanwhile
        (held,) = list_claims(index, "m")
        assert held.token == slot.token and held.claimed_at > first
        with pytest.raises(SaveInProgressError):  # gc at any --min-age leaves a renewed claim alone
            settle_version(index, "m", slot.version, min_age_seconds=0, clean=lambda _r: None)
    assert list_claims(index, "m") == []


def test_without_renewals_the_lease_runs_out_and_is_never_revived(
    registry: ModelPersistence, short_lease: float
) -> None:
    index = registry.index
    with index.claim("m", "1.0.0") as slot:
        time.sleep(short_lease * 1.5)
        with pytest.raises(ClaimLostError, match="without renewing"):
            slot.check()
        with pytest.raises(ClaimLostError, match="without renewing"):
            slot.renew()  # gc may already have released it: an expired lease is not taken back
        released = settle_version(index, "m", "1.0.0", min_age_seconds=0, clean=lambda _r: None)
        assert released is not None and released.token == slot.token
    assert list_claims(index, "m") == []


def test_a_renewal_is_fenced_by_the_token(registry: ModelPersistence, short_lease: float) -> None:
    """A claim released under its writer (gc, as stale) and taken by another: the first
    writer's renewal fails and leaves the other's claim as it was."""
    index = registry.index
    with index.claim("m", "1.0.0") as slot:
        with index._write() as conn:
            conn.execute(delete(claims_table).where(claims_table.c.token == slot.token))
        with index.claim("m", "1.0.0") as other:
            with pytest.raises(ClaimLostError, match="released"):
                slot.renew()
            (held,) = list_claims(index, "m")
            assert (held.token, held.claimed_at) == (other.token, other.claimed_at)
            with pytest.raises(ClaimLostError):
                slot.check()
            other.check()
