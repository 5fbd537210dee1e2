"""What a PostgreSQL save does with fewer round trips still holds: the row's one statement is fenced
by the claim, a row written without a claim still fails it, the claim's insert still skips a version
that has a row, a pooled connection killed while idle is replaced, and a read's autocommit does not
outlive its checkout; the token check, sent straight to the driver, keeps to the same rules."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text

from modelkeep import ModelPersistence
from modelkeep.errors import ClaimLostError, VersionExistsError
from modelkeep.index import sql as index_sql
from modelkeep.index.claims import VersionClaim

from .conftest import PG_URL

pytestmark = pytest.mark.postgres


@pytest.fixture
def registry(pg_schema: str, tmp_path: Path) -> Iterator[ModelPersistence]:
    assert PG_URL is not None
    with ModelPersistence(models_dir=tmp_path / "models", registry_url=PG_URL, index_schema=pg_schema) as p:
        p.ensure_registry()
        yield p


def _count(p: ModelPersistence, schema: str, table: str) -> int:
    with p.index.engine.connect() as conn:
        return int(conn.execute(text(f'SELECT count(*) FROM "{schema}".{table}')).scalar_one())


def _admin(sql: str, *params: Any) -> list[Any]:
    """``sql`` run on a connection of its own; its rows (``[]`` for none)."""
    assert PG_URL is not None
    engine = create_engine(index_sql.normalize_url(PG_URL))
    try:
        with engine.begin() as conn:
            result = conn.exec_driver_sql(sql, params)
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


def test_the_row_statement_is_fenced_by_the_claim(
    registry: ModelPersistence, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.save({"v": 0}, "fenced", accuracy=0.5)
    before = {t: _count(registry, pg_schema, t) for t in ("modelkeep_history", "modelkeep_fields")}
    check_placing = VersionClaim.check_placing

    def then_released(self: VersionClaim, sha256: str, key: str, **options: Any) -> str | None:
        found = check_placing(self, sha256, key, **options)  # the last check passes; the claim goes right after
        _admin(f'DELETE FROM "{pg_schema}".modelkeep_claims')
        return found

    monkeypatch.setattr(VersionClaim, "check_placing", then_released)
    with pytest.raises(ClaimLostError, match="released"):
        registry.save({"v": 1}, "fenced", accuracy=0.9)
    monkeypatch.undo()
    assert registry.list_versions("fenced") == ["1.0.0"]
    after = {t: _count(registry, pg_schema, t) for t in ("modelkeep_history", "modelkeep_fields")}
    assert after == before  # no history row, no field row of the refused save
    registry.gc(min_age_seconds=0)
    assert registry.verify().ok, registry.verify().to_dict()


def test_a_row_written_without_a_claim_fails_the_row_statement(
    registry: ModelPersistence, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.save({"v": 0}, "unclaimed")
    history = _count(registry, pg_schema, "modelkeep_history")
    check_placing = VersionClaim.check_placing

    def then_row_by_hand(self: VersionClaim, sha256: str, key: str, **options: Any) -> str | None:
        found = check_placing(self, sha256, key, **options)
        _admin(
            f'INSERT INTO "{pg_schema}".modelkeep_versions (model_name, version, parsed, sort_key, model_type, '
            "artifact_key, format, size, sha256, created_at, updated_at, record) "
            f"SELECT model_name, %s, parsed, sort_key, model_type, artifact_key, format, size, sha256, created_at, "
            f'updated_at, record FROM "{pg_schema}".modelkeep_versions WHERE version = %s',
            self.version,
            "1.0.0",
        )
        return found

    monkeypatch.setattr(VersionClaim, "check_placing", then_row_by_hand)
    with pytest.raises(VersionExistsError, match="without a claim"):
        registry.save({"v": 1}, "unclaimed")
    monkeypatch.undo()
    assert _count(registry, pg_schema, "modelkeep_history") == history  # nothing of the save went in


def test_the_claim_skips_a_next_version_that_has_a_row(registry: ModelPersistence, pg_schema: str) -> None:
    registry.save({"v": 0}, "skipping")
    with registry.index.engine.begin() as conn:  # 1.0.0 no longer counts as the highest version
        conn.execute(text(f'UPDATE "{pg_schema}".modelkeep_versions SET parsed = false'))
    saved = registry.save_version({"v": 1}, "skipping")  # next after none is 1.0.0, which has a row
    assert saved.version == "1.0.1"
    assert registry.load("skipping", "1.0.1") == {"v": 1}


def _pooled_pids(p: ModelPersistence, action: Any) -> set[int]:
    """The backends of the pooled connections ``action`` checks out."""
    pids: set[int] = set()

    def seen(dbapi: Any, _record: Any, _proxy: Any) -> None:
        pids.add(dbapi.info.backend_pid)

    event.listen(p.index.engine.pool, "checkout", seen)
    try:
        action()
    finally:
        event.remove(p.index.engine.pool, "checkout", seen)
    return pids


def test_a_pooled_connection_killed_while_idle_is_replaced_before_use(
    registry: ModelPersistence, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pids = _pooled_pids(registry, lambda: registry.save({"v": 0}, "idle"))
    for pid in pids:  # every pooled connection of this registry
        _admin("SELECT pg_terminate_backend(%s)", pid)
    monkeypatch.setattr(index_sql, "IDLE_PING_SECONDS", 0.05)
    time.sleep(0.1)
    with caplog.at_level("WARNING", logger="modelkeep"):
        registry.save({"v": 1}, "idle")
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]  # the ping swapped it, no retry
    assert registry.load("idle") == {"v": 1}


def _assert_pool_lends_out_of_autocommit(p: ModelPersistence) -> None:
    raw = p.index.engine.raw_connection()
    try:
        assert raw.dbapi_connection is not None
        assert raw.dbapi_connection.autocommit is False  # type: ignore[attr-defined]
    finally:
        raw.close()


def test_a_read_leaves_its_connection_out_of_autocommit(registry: ModelPersistence) -> None:
    registry.save({"v": 0}, "reads")
    assert registry.list_versions("reads") == ["1.0.0"]
    _assert_pool_lends_out_of_autocommit(registry)


def test_a_token_check_is_one_statement_and_leaves_its_connection_as_lent(registry: ModelPersistence) -> None:
    """The token check every API request makes goes to the driver without SQLAlchemy's Connection:
    it still sends one statement (in autocommit: no BEGIN, no ROLLBACK), and the pool gets the
    connection back out of autocommit, so the next write's transaction is a transaction."""
    registry.users.add("tess", None, "writer")
    token = registry.users.new_token("tess")
    pids = _pooled_pids(registry, lambda: registry.users.token_identity(token))
    assert len(pids) == 1
    # what that backend ran last, and how it waits now: the check, with no ROLLBACK after it
    ((query, state),) = _admin("SELECT query, state FROM pg_stat_activity WHERE pid = %s", next(iter(pids)))
    assert "modelkeep_tokens" in query and not query.lstrip().upper().startswith(("BEGIN", "ROLLBACK"))
    assert state == "idle"
    _assert_pool_lends_out_of_autocommit(registry)
    assert registry.users.token_identity(token).name == "tess"
    registry.save({"v": 1}, "after_token_checks")  # writes after the checks: their transactions hold
    assert registry.load("after_token_checks") == {"v": 1}


def test_a_token_check_whose_connection_was_killed_is_retried_on_a_new_one(
    registry: ModelPersistence, caplog: pytest.LogCaptureFixture
) -> None:
    """Its pooled connection killed while idle, and no ping before use: the check's error is the
    lost connection's, the connection is dropped from the pool, and the check runs again."""
    registry.users.add("tom", None, "viewer")
    token = registry.users.new_token("tom")
    pids = _pooled_pids(registry, lambda: registry.users.token_identity(token))
    for pid in pids:
        _admin("SELECT pg_terminate_backend(%s)", pid)
    time.sleep(0.1)
    with caplog.at_level("WARNING", logger="modelkeep"):
        assert registry.users.token_identity(token).name == "tom"
    assert any("retrying on a new connection" in r.getMessage() for r in caplog.records)
    assert registry.list_versions("nothing") == []  # the pool lends live connections again


def test_a_token_revoked_through_another_connection_is_refused_at_the_next_check(
    registry: ModelPersistence, pg_schema: str, tmp_path: Path
) -> None:
    from modelkeep.errors import AuthenticationError

    registry.users.add("una", None, "writer")
    token = registry.users.new_token("una")
    assert registry.users.token_identity(token).role == "writer"
    assert PG_URL is not None
    with ModelPersistence(models_dir=tmp_path / "models", registry_url=PG_URL, index_schema=pg_schema) as other:
        other.users.set_role("una", "viewer")
        assert registry.users.token_identity(token).role == "viewer"
        other.users.revoke_tokens("una")
    with pytest.raises(AuthenticationError, match="unknown or revoked"):
        registry.users.token_identity(token)


@pytest.mark.parametrize(
    "fields",
    [{"note": "only text"}, {"accuracy": 0.5, "epochs": 3}, {"ok": True}, {"note": "it's", "loss": 1e-3}, {}],
)
def test_the_row_statement_writes_every_kind_of_field(
    registry: ModelPersistence, pg_schema: str, fields: dict[str, Any]
) -> None:
    registry.save({"v": 0}, "fields", **fields)
    with registry.index.engine.connect() as conn:
        rows = conn.execute(text(f'SELECT key, num, str FROM "{pg_schema}".modelkeep_fields ORDER BY key')).all()
    expected = {k: (float(v), None) if not isinstance(v, str) else (None, v) for k, v in sorted(fields.items())}
    assert {k: (n, s) for k, n, s in rows} == expected
