"""The permissions model as a server will use it: each request acts as one identity, and the
library alone decides what it may do and see.

* every role (viewer < writer < maintainer < admin) against every kind of change, through
  ``ModelPersistence(token=...)``, with the change either made (and recorded under the user's
  name) or refused with nothing changed;
* per-model grants (a user with no registry role, writer on ``churn-*``): the other models are
  invisible, and reading one answers exactly as a missing model does;
* API tokens as an attacker holds them: forged, altered, revoked, expired, of a removed user.

Runs on SQLite and PostgreSQL (the ``persistence`` fixture).
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelkeep import AuthenticationError, ModelPersistence, PermissionDeniedError
from modelkeep.errors import AliasNotFoundError, InvalidNameError, ModelNotFoundError, UserNotFoundError, no_versions
from modelkeep.identity import ROLES, Identity, acting_as, validate_role

from ._cli_in_process import run_cli

# -- helpers ---------------------------------------------------------------------------


def opened(base: ModelPersistence, token: str) -> ModelPersistence:
    """The registry ``base`` opens, as the owner of ``token`` (what a server request does)."""
    return ModelPersistence(
        models_dir=base.models_dir, registry_url=base.index.url, index_schema=base.index.schema, token=token
    )


def user_with_token(base: ModelPersistence, name: str, role: str, **token_options: Any) -> str:
    base.users.add(name, None, role)
    return base.users.new_token(name, **token_options)


# -- every role against every change ------------------------------------------------------


@pytest.fixture
def shop(persistence: ModelPersistence) -> ModelPersistence:
    """churn 1.0.0-1.5.0 (production -> 1.0.0; 1.3.0 and 1.4.0 in the trash), old 1.0.0-2.0.0."""
    p = persistence
    for v in ("1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0"):
        p.save({"v": v}, "churn", v)
    for v in ("1.0.0", "2.0.0"):
        p.save({"v": v}, "old", v)
    p.set_alias("churn", "production", "1.0.0")
    p.delete("churn", "1.3.0")
    p.delete("churn", "1.4.0")
    return p


Action = tuple[str, Callable[[ModelPersistence], Any], Callable[[ModelPersistence], bool]]

#: (what, do it as the user, whether it happened, as read by the owner with no identity)
ACTIONS: list[Action] = [
    (
        "save new",
        lambda p: p.save({"v": "9"}, "churn", "9.0.0"),
        lambda b: "9.0.0" in b.list_versions("churn"),
    ),
    (
        "overwrite",
        lambda p: p.save({"v": "over"}, "churn", "1.1.0", overwrite=True),
        lambda b: b.load("churn", "1.1.0") == {"v": "over"},
    ),
    ("tag", lambda p: p.set_tag("churn", "team", "risk"), lambda b: b.get_tags("churn") == {"team": "risk"}),
    ("describe", lambda p: p.set_description("churn", "churn score"), lambda b: b.get_description("churn") is not None),
    (
        "alias",
        lambda p: p.set_alias("churn", "staging", "1.2.0"),
        lambda b: b.get_aliases("churn").get("staging") == "1.2.0",
    ),
    (
        "protected alias",
        lambda p: p.set_alias("churn", "production", "1.2.0"),
        lambda b: b.get_aliases("churn")["production"] == "1.2.0",
    ),
    ("trash", lambda p: p.delete("churn", "1.5.0"), lambda b: "1.5.0" not in b.list_versions("churn")),
    ("restore", lambda p: p.restore("churn", "1.3.0"), lambda b: "1.3.0" in b.list_versions("churn")),
    (
        "purge",
        lambda p: p.purge("churn", "1.4.0"),
        lambda b: ("churn", "1.4.0") not in [(m, v) for m, v, _ in b.list_trash()],
    ),
    ("prune", lambda p: p.prune("old", keep_last=1), lambda b: b.list_versions("old") == ["2.0.0"]),
    ("approve", lambda p: p.approve("churn", "1.0.0", "production"), lambda b: bool(b.approvals("churn", "1.0.0"))),
    ("users", lambda p: p.users.add("newbie", None, "viewer"), lambda b: b.users.get("newbie") is not None),
    (
        "grant",
        lambda p: p.users.grant("newbie2", "x-*", "writer"),
        lambda b: b.users.grants("newbie2") == [("x-*", "writer")],
    ),
    (
        "policy",
        lambda p: p.set_policy("churn", "champion", approvals=1),
        lambda b: [x.alias for x in b.policies("churn")] == ["champion"],
    ),
    ("gc", lambda p: p.gc(dry_run=True), lambda b: True),
]

#: What each role may do (each role may also do what the roles before it may).
ALLOWED = {
    "viewer": set(),
    "writer": {"save new", "tag", "describe"},
    "maintainer": {"overwrite", "alias", "trash", "restore", "approve"},
    "admin": {"protected alias", "purge", "prune", "users", "grant", "policy", "gc"},
}


def allowed(role: str) -> set[str]:
    return set().union(*(ALLOWED[r] for r in ROLES[: ROLES.index(role) + 1]))


def test_the_matrix_names_every_action_once() -> None:
    names = [a[0] for a in ACTIONS]
    assert len(names) == len(set(names)) and set().union(*ALLOWED.values()) <= set(names)


@pytest.mark.parametrize("role", ROLES)
def test_each_role_may_do_what_its_table_says_and_nothing_else(shop: ModelPersistence, role: str) -> None:
    shop.users.add("newbie2", None, "none")  # for "grant"
    token = user_with_token(shop, "pat", role)
    last = shop.history()[-1].id
    may = allowed(role)
    with opened(shop, token) as p:
        assert p.identity == Identity("pat", role)
        for what, do, _ in ACTIONS:
            if what in may:
                do(p)
            else:
                with pytest.raises(PermissionDeniedError, match=f"pat(?: \\(| is an? ){role}"):
                    do(p)
    happened = {what for what, _, done in ACTIONS if what != "gc" and done(shop)}
    assert happened == may - {"gc"}
    rows = [e for e in shop.history() if e.id > last]
    # Every change is in the history under the token's owner, and only the allowed ones are there.
    assert {e.actor for e in rows} <= {"pat"}
    assert bool(rows) == bool(may)
    if "save new" in may:
        assert any(e.action == "save" and e.version == "9.0.0" and e.actor == "pat" for e in rows)


def test_a_writer_may_save_a_new_version_with_overwrite_but_not_replace_one(persistence: ModelPersistence) -> None:
    persistence.save({"v": 1}, "churn", "1.0.0")
    with opened(persistence, user_with_token(persistence, "wes", "writer")) as wes:
        wes.save({"v": 2}, "churn", "2.0.0", overwrite=True)  # nothing to replace: a new version
        wes.save({"v": 3}, "churn")  # the next version
        with pytest.raises(PermissionDeniedError, match="may not overwrite versions: it needs the maintainer role"):
            wes.save({"v": "x"}, "churn", "1.0.0", overwrite=True)
    assert persistence.load("churn", "1.0.0") == {"v": 1}
    assert persistence.list_versions("churn") == ["1.0.0", "2.0.0", "2.0.1"]


def test_editor_is_the_old_name_of_maintainer(persistence: ModelPersistence) -> None:
    assert validate_role("editor") == "maintainer" and Identity("e", "editor").role == "maintainer"
    persistence.users.add("eddie", None, "editor")
    assert persistence.users.get("eddie").role == "maintainer"  # type: ignore[union-attr]
    persistence.users.set_role("eddie", "EDITOR")
    assert persistence.users.identity("eddie") == Identity("eddie", "maintainer")
    for bad in ("owner", "none ", "", "Admin; DROP TABLE modelkeep_users"):
        if bad.strip().lower() in ("none",):
            continue
        with pytest.raises(InvalidNameError, match="is not one of"):
            persistence.users.set_role("eddie", bad)
    with pytest.raises(InvalidNameError, match="is not one of"):
        persistence.users.grant("eddie", "churn-*", "none")  # a grant gives a role, never takes one


# -- grants and what an identity may see ----------------------------------------------------


@pytest.fixture
def teams(persistence: ModelPersistence) -> ModelPersistence:
    """churn-eu, churn-us and fraud, each with an alias, a tag and metrics; a user ``gina`` with
    no registry role and writer on ``churn-*``."""
    p = persistence
    for name in ("churn-eu", "churn-us", "fraud"):
        p.save({"m": name}, name, "1.0.0", accuracy=0.9)
        p.save({"m": name}, name, "1.1.0", accuracy=0.95)
        p.set_alias(name, "production", "1.0.0")
        p.set_tag(name, "team", "x")
    p.delete("fraud", "1.1.0")
    p.set_policy("fraud", "production", approvals=1)
    p.set_policy("churn-*", "production", approvals=0)
    p.users.add("gina", None, "none")
    p.users.grant("gina", "churn-*", "writer")
    return p


def test_a_grant_lets_a_user_save_the_models_it_names_and_nothing_else(teams: ModelPersistence) -> None:
    assert teams.users.grants("gina") == [("churn-*", "writer")]
    with opened(teams, teams.users.new_token("gina")) as gina:
        assert gina.identity == Identity("gina", "none", (("churn-*", "writer"),))
        gina.save({"m": 2}, "churn-eu", "2.0.0")
        gina.save({"m": 2}, "churn-new")  # a new model the glob names
        gina.set_tag("churn-us", "owner", "gina")
        with pytest.raises(PermissionDeniedError, match=r"gina \(no role on model 'fraud'\) may not save"):
            gina.save({"m": 2}, "fraud", "2.0.0")
        with pytest.raises(PermissionDeniedError, match="may not save"):
            gina.save({"m": 2}, "ghost", "1.0.0")  # refused the same way, existing or not
        with pytest.raises(PermissionDeniedError, match="needs the maintainer role"):
            gina.set_alias("churn-eu", "staging", "2.0.0")
        with pytest.raises(PermissionDeniedError, match="needs the writer role"):
            gina.set_tag("fraud", "owner", "gina")
    assert teams.list_versions("fraud") == ["1.0.0"]
    assert [e.actor for e in teams.history("churn-eu", limit=1)] == ["gina"]


def test_models_an_identity_may_not_view_are_absent_from_every_listing(teams: ModelPersistence) -> None:
    seen = ["churn-eu", "churn-us"]
    with opened(teams, teams.users.new_token("gina")) as gina:
        assert gina.list_models() == seen
        assert [s.name for s in gina.model_summaries()] == seen
        assert sorted({r.model_name for r in gina.search_versions().items}) == seen
        assert sorted({r.model_name for r in gina.search_versions("accuracy > 0.5", limit=1000).items}) == seen
        assert [s.name for s in gina.search_models().items] == seen
        first = gina.search_versions(limit=1)
        second = gina.search_versions(limit=100, page_token=first.next_page_token)
        assert len(first.items) + len(second.items) == 4 and second.next_page_token is None
        assert {e.model_name for e in gina.history()} == {*seen, "churn-*"}  # with churn-*'s policy
        assert gina.history("fraud") == [] and gina.alias_history("fraud", "production") == []
        assert len(gina.history(limit=3)) == 3 and gina.history(limit=3) == gina.history()[-3:]
        assert set(gina.all_aliases()) == set(seen)
        assert gina.list_trash() == []
        assert gina.list_versions("fraud") == [] and gina.get_aliases("fraud") == {} and gina.get_tags("fraud") == {}
        assert gina.metric_history("fraud", "accuracy") == [] and gina.approvals("fraud") == []
        assert gina.get_metadata("fraud") is None
        assert gina.policies("fraud") == [] and [x.model for x in gina.policies()] == ["churn-*"]
    # The owner with no identity still sees everything.
    assert teams.list_models() == ["churn-eu", "churn-us", "fraud"]


def _error(call: Callable[..., Any], *args: Any) -> BaseException:
    with pytest.raises(Exception) as caught:
        call(*args)
    return caught.value


def test_reading_an_invisible_model_answers_exactly_as_a_missing_one(teams: ModelPersistence, tmp_path: Path) -> None:
    with opened(teams, teams.users.new_token("gina")) as gina:
        for read in (
            lambda m: gina.get_version(m),
            lambda m: gina.get_version(m, "1.0.0"),
            lambda m: gina.load(m),
            lambda m: gina.load(m, "1.1.0"),  # in the trash, for the owner: still just "missing" here
            lambda m: gina.signature_status(m, "1.0.0"),
            lambda m: gina.export_file(m, "1.0.0", tmp_path / f"{m}.joblib"),
            lambda m: gina.list_version_records(m),
            lambda m: gina.compare_versions(m),
            lambda m: gina.verify(m),
            lambda m: gina.get_description(m),
            lambda m: gina.get_tags(m, version="1.0.0"),
            lambda m: gina.check_input(m, "1.0.0", [[1.0]]),
        ):
            hidden, missing = _error(read, "fraud"), _error(read, "fraux")
            assert type(hidden) is type(missing) and isinstance(hidden, ModelNotFoundError)
            assert str(hidden).replace("fraud", "?") == str(missing).replace("fraux", "?")
            assert str(hidden) == str(no_versions("fraud", ["churn-eu", "churn-us"]))
        hidden, missing = _error(lambda: gina.load("fraud@production")), _error(lambda: gina.load("fraux@production"))
        assert isinstance(hidden, AliasNotFoundError) and type(hidden) is type(missing)
        assert str(hidden).replace("fraud", "?") == str(missing).replace("fraux", "?")
        # "Did you mean" never names a model she may not see.
        assert "fraud" not in str(_error(lambda: gina.get_version("frau")))
        assert "churn-eu" in str(_error(lambda: gina.get_version("churn-e")))
        with pytest.raises(ModelNotFoundError, match="no live version of model 'fraud'"):
            gina.best_version("fraud", "accuracy")
        from modelkeep.bundle import export_bundle

        for versions in (None, ["1.0.0"], ["1.1.0"]):  # 1.1.0 is in the trash, which a bundle may take
            with pytest.raises(ModelNotFoundError, match="No versions found for model 'fraud'"):
                export_bundle(gina, "fraud", tmp_path / "fraud.mkb", versions=versions)
        assert not (tmp_path / "fraud.mkb").exists()
        assert not (tmp_path / "fraud.joblib").exists()
        with pytest.raises(PermissionDeniedError, match="verify the whole registry"):
            gina.verify()
    assert teams.load("fraud") == {"m": "fraud"}


def test_acting_as_an_identity_hides_models_from_a_registry_opened_without_one(teams: ModelPersistence) -> None:
    """What a server does: one registry object, ``acting_as`` each request's identity."""
    gina = teams.users.identity("gina")
    assert gina is not None
    with acting_as(gina):
        assert teams.list_models() == ["churn-eu", "churn-us"]
        with pytest.raises(ModelNotFoundError):
            teams.load("fraud")
        with pytest.raises(PermissionDeniedError):
            teams.delete("fraud", "1.0.0")
    with acting_as(Identity("vic", "viewer", (("fraud", "maintainer"),))):
        assert teams.list_models() == ["churn-eu", "churn-us", "fraud"]  # a viewer sees every model
        teams.set_alias("fraud", "staging", "1.0.0")  # and maintains the one its grant names
        with pytest.raises(PermissionDeniedError, match="alias 'production' is protected"):
            teams.set_alias("fraud", "production", "1.0.0")
        with pytest.raises(PermissionDeniedError, match="needs the maintainer role"):
            teams.set_alias("churn-eu", "staging", "1.0.0")
    assert teams.list_models() == ["churn-eu", "churn-us", "fraud"]
    assert teams.history("fraud", limit=1)[0].actor == "vic"


def test_removing_a_grant_or_the_user_takes_the_access_away(teams: ModelPersistence) -> None:
    token = teams.users.new_token("gina")
    teams.users.revoke_grant("gina", "churn-*")
    with pytest.raises(UserNotFoundError, match="no grant on 'churn-\\*'"):
        teams.users.revoke_grant("gina", "churn-*")
    with opened(teams, token) as gina:
        assert gina.list_models() == []
        with pytest.raises(PermissionDeniedError):
            gina.save({"m": 3}, "churn-eu", "3.0.0")
    teams.users.grant("gina", "churn-eu", "admin")
    teams.users.remove("gina")
    assert teams.users.grants("gina") == []
    with pytest.raises(AuthenticationError, match="unknown or revoked"):
        opened(teams, token)


def test_a_tokens_identity_and_grants_come_from_one_query(
    teams: ModelPersistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a server asks of every request signed in by token: one round trip to the index."""
    from sqlalchemy import event

    teams.users.grant("gina", "fraud", "viewer")
    token, plain = teams.users.new_token("gina"), user_with_token(teams, "pat", "viewer")
    statements: list[str] = []
    engine = teams.index.engine

    def on_connect(dbapi: Any, _record: Any) -> None:  # SQLite: the query goes straight to the driver
        dbapi.set_trace_callback(statements.append)

    sqlite = engine.dialect.name == "sqlite"
    hooks = [("connect", on_connect)] if sqlite else []
    if not sqlite:  # PostgreSQL: straight to psycopg too; every statement it sends goes through a cursor
        import psycopg

        sent = psycopg.Cursor.execute

        def traced(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            statements.append(str(query))
            return sent(cursor, query, *args, **kwargs)

        monkeypatch.setattr(psycopg.Cursor, "execute", traced)
    engine.pool.dispose()  # a new connection, traced from its first statement
    for name, fn in hooks:
        event.listen(engine, name, fn)
    try:
        gina, pat = teams.users.token_identity(token), teams.users.token_identity(plain)
        checks = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    finally:
        for name, fn in hooks:
            event.remove(engine, name, fn)
        engine.pool.dispose()
    assert gina == Identity("gina", "none", (("churn-*", "writer"), ("fraud", "viewer")))
    assert gina == teams.users.identity("gina") and pat == Identity("pat", "viewer", ())
    assert len(checks) == 2


@pytest.mark.parametrize("glob", ["../fraud", "churn/*", "", " ", "x" * 200, "*;DROP"])
def test_a_grant_glob_is_held_to_model_name_characters(persistence: ModelPersistence, glob: str) -> None:
    persistence.users.add("gina", None, "none")
    with pytest.raises(InvalidNameError, match="glob"):
        persistence.users.grant("gina", glob, "viewer")


# -- tokens, as an attacker has them ---------------------------------------------------------


def test_forged_altered_and_orphaned_tokens_are_refused(persistence: ModelPersistence) -> None:
    persistence.save({"v": 1}, "churn", "1.0.0")
    token = user_with_token(persistence, "ann", "admin")
    body = token[len("mkt_") :]
    flipped = "mkt_" + ("B" if body[0] == "A" else "A") + body[1:]
    forged = [
        "mkt_" + secrets.token_urlsafe(32),  # the right format, random
        flipped,  # one character changed
        token[:-1],  # one character short
        token + "A",
        "mkt_" + body.swapcase(),
        "mkt_' OR '1'='1",
        "mkt_" + "0" * 64,
    ]
    for attempt in forged:
        with pytest.raises(AuthenticationError, match="unknown or revoked API token"):
            opened(persistence, attempt)
    for attempt in ("", "Bearer " + token, token[4:], " " + token, token.upper()):
        with pytest.raises(AuthenticationError, match="not a modelkeep API token"):
            persistence.users.check_token(attempt)
    with opened(persistence, token) as ann:  # the real one still works
        assert ann.identity == Identity("ann", "admin")
    persistence.users.remove("ann")
    with pytest.raises(AuthenticationError, match="unknown or revoked"):
        opened(persistence, token)


def test_one_token_is_revoked_by_its_id_and_the_others_keep_working(persistence: ModelPersistence) -> None:
    persistence.save({"v": 1}, "churn", "1.0.0")
    ci = user_with_token(persistence, "wes", "writer", label="ci")
    laptop = persistence.users.new_token("wes", "laptop")
    listed = persistence.users.tokens("wes")
    assert [t.label for t in listed] == ["ci", "laptop"] and all(t.expires_at is None for t in listed)
    assert len({t.token_id for t in listed}) == 2 and all(t.token_id and t.token_id not in ci for t in listed)
    persistence.users.revoke_token("wes", listed[0].token_id)
    with pytest.raises(AuthenticationError, match="unknown or revoked"):
        opened(persistence, ci)
    with opened(persistence, laptop) as wes:
        wes.set_tag("churn", "by", "laptop")
    with pytest.raises(UserNotFoundError, match="has no token"):
        persistence.users.revoke_token("wes", listed[0].token_id)
    persistence.users.add("ann", None, "admin")
    with pytest.raises(UserNotFoundError, match="has no token"):  # another user's token id
        persistence.users.revoke_token("ann", listed[1].token_id)
    assert persistence.users.revoke_tokens("wes") == 1
    with pytest.raises(AuthenticationError, match="unknown or revoked"):
        opened(persistence, laptop)
    assert persistence.users.revoke_tokens("wes") == 0 and persistence.users.tokens("wes") == []
    # a mistyped name is an error, not "revoked 0 tokens" (which would reassure an admin wrongly)
    for call in (persistence.users.revoke_tokens, persistence.users.tokens):
        with pytest.raises(UserNotFoundError, match="no user 'wess'"):
            call("wess")


def test_an_expired_token_is_refused_and_says_so(
    persistence: ModelPersistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modelkeep.users as users_module

    persistence.save({"v": 1}, "churn", "1.0.0")
    token = user_with_token(persistence, "wes", "writer", label="short", expires_in=3600)
    (listed,) = persistence.users.tokens("wes")
    expires = dt.datetime.fromisoformat(listed.expires_at or "")
    created = dt.datetime.fromisoformat(listed.created_at)
    assert dt.timedelta(minutes=59) < expires - created < dt.timedelta(minutes=61)
    with opened(persistence, token) as wes:
        wes.set_tag("churn", "k", "v")
    later = expires + dt.timedelta(seconds=1)
    monkeypatch.setattr(users_module, "_utc_now", lambda: later)
    with pytest.raises(AuthenticationError, match=f"API token \\({listed.token_id}\\) expired at"):
        opened(persistence, token)
    for bad in (0, -5, "soon", True):
        with pytest.raises(InvalidNameError, match="expiry"):
            persistence.users.new_token("wes", expires_in=bad)  # type: ignore[arg-type]


def test_only_an_admin_changes_users_grants_and_tokens(persistence: ModelPersistence) -> None:
    persistence.save({"v": 1}, "churn", "1.0.0")
    persistence.users.add("wes", None, "writer")
    with acting_as(Identity("max", "maintainer", (("churn", "admin"),))):  # admin of one model only
        for change in (
            lambda u: u.add("eve", None, "admin"),
            lambda u: u.set_role("wes", "admin"),
            lambda u: u.grant("wes", "*", "admin"),
            lambda u: u.revoke_grant("wes", "*"),
            lambda u: u.new_token("wes"),
            lambda u: u.revoke_tokens("wes"),
            lambda u: u.revoke_token("wes", "abc"),
            lambda u: u.remove("wes"),
        ):
            with pytest.raises(PermissionDeniedError, match="needs the admin role"):
                change(persistence.users)
    assert persistence.users.identity("wes") == Identity("wes", "writer")


def test_cli_tokens_grants_and_revocation(
    local_persistence: ModelPersistence, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_persistence.save({"a": 1}, "churn-eu", "1.0.0")
    local_persistence.save({"a": 1}, "fraud", "1.0.0")
    local_persistence.close()
    models_dir = str(local_persistence.models_dir)
    monkeypatch.chdir(tmp_path)

    def run(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        # In process: the CLI's answers are under test, not its start-up (~20 commands here).
        return run_cli("--models-dir", models_dir, *args, env={"MODELKEEP_TOKEN": token})

    def listed(token: str) -> list[str]:
        done = run("list", "--json", token=token)
        assert done.returncode == 0, done.stderr
        return [row["name"] for row in json.loads(done.stdout)]

    added = run("users", "add", "gina", "--role", "none", "--no-password")
    assert added.returncode == 0 and "modelkeep users grant gina GLOB ROLE" in added.stdout + added.stderr
    granted = run("users", "grant", "gina", "churn-*", "writer")
    assert granted.returncode == 0, granted.stderr
    bad = run("users", "grant", "gina", "../x", "writer")
    assert bad.returncode == 1 and "glob" in bad.stderr and "Traceback" not in bad.stderr
    assert "gina\tnone\tno password\t0 token(s)" in run("users", "list").stdout
    assert "writer on churn-*" in run("users", "list").stdout
    token = run("users", "token", "gina", "--label", "ci", "--expires", "30d").stdout.strip()
    other = run("users", "token", "gina").stdout.strip()
    never = run("users", "token", "gina", "--expires", "0s")
    assert never.returncode == 1 and never.stderr.strip().endswith("got 0 seconds"), never.stderr
    assert token.startswith("mkt_") and other.startswith("mkt_")
    lines = run("users", "tokens", "gina").stdout.splitlines()
    assert len(lines) == 2 and "\tci\t" in lines[0] and "expires 20" in lines[0] and "never expires" in lines[1]
    assert listed(token) == ["churn-eu"]
    hidden = run("load", "--model-name", "fraud", "--output", "x.joblib", token=token)
    assert hidden.returncode == 1 and "No versions found for model 'fraud'" in hidden.stderr
    assert "Traceback" not in hidden.stderr
    token_id = lines[0].split("\t")[0]
    assert run("users", "revoke", "gina", "--token", token_id).returncode == 0
    refused = run("list", token=token)
    assert refused.returncode == 1 and "unknown or revoked" in refused.stderr and "Traceback" not in refused.stderr
    assert run("list", token=other).returncode == 0
    assert run("users", "ungrant", "gina", "churn-*").returncode == 0
    assert listed(other) == []
    missing = run("users", "ungrant", "gina", "churn-*")
    assert missing.returncode == 1 and "no grant" in missing.stderr
    assert run("users", "revoke", "gina").returncode == 0
    assert run("list", token=other).returncode == 1


def test_events_leave_out_the_models_an_identity_may_not_view(teams: ModelPersistence) -> None:
    every = {e["model"] for e in teams.events()}
    assert {"churn-eu", "churn-us", "fraud"} <= every
    with opened(teams, teams.users.new_token("gina")) as gina:
        # A policy's events carry its glob: gina sees the one on churn-*, not the one on fraud.
        assert {e["model"] for e in gina.events()} == {"churn-eu", "churn-us", "churn-*"}
        assert {e.model_name for e in gina.history()} == {"churn-eu", "churn-us", "churn-*"}
        assert list(gina.events(model="fraud")) == []


def test_the_web_ui_shows_a_user_only_the_models_they_may_view(local_persistence: ModelPersistence) -> None:
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from modelkeep.ui import create_app

    p = local_persistence
    for name in ("churn-eu", "fraud"):
        p.save({"m": name}, name, "1.0.0")
    p.users.add("ada", None, "admin")
    p.users.add("gina", None, "none")
    p.users.grant("gina", "churn-*", "viewer")
    headers = {"Authorization": f"Bearer {p.users.new_token('gina')}"}
    client = TestClient(create_app(p), base_url="http://127.0.0.1:8765")
    home = client.get("/", headers=headers)
    assert home.status_code == 200 and "churn-eu" in home.text and "fraud" not in home.text
    assert "fraud" not in client.get("/history", headers=headers).text

    def get(path: str, model: str) -> Any:
        return client.get(path.format(model), headers=headers)

    for path in ("/models/{}", "/models/{}/versions/1.0.0", "/models/{}/compare", "/api/models/{}/chart?metric=m"):
        hidden, missing = get(path, "fraud"), get(path, "fraux")
        assert hidden.status_code == missing.status_code  # 404 for the pages; an empty chart
        assert hidden.text.replace("fraud", "?") == missing.text.replace("fraux", "?")
    assert get("/models/{}", "fraud").status_code == get("/models/{}/versions/1.0.0", "fraud").status_code == 404
    assert get("/api/models/{}/chart?metric=m", "fraud").json()["x"] == []
    assert client.get("/models/churn-eu", headers=headers).status_code == 200
    admin = {"Authorization": f"Bearer {p.users.new_token('ada')}"}
    assert "fraud" in client.get("/", headers=admin).text
