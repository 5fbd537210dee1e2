"""Signatures over HTTP as a compromised server (or a user with a token) would attack them.

The server of these tests runs in process on a SQLite + folder registry; the attacker writes its
index directly (``server.served``: what whoever runs the server can do), or answers for it (a
patched method of the served registry), or sends raw requests. Clients hold their own keys
(``alice`` signs; readers trust only her public key), so every verdict here is the client's.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, select, update

from modelkeep import ModelPersistence, RollbackError, SignatureError, keys
from modelkeep.api.endpoint import json_response
from modelkeep.api.wire import API_PREFIX, PROTOCOL, PROTOCOL_HEADER
from modelkeep.errors import AliasConflictError, PermissionDeniedError, PolicyError, VersionExistsError
from modelkeep.events import alias_event
from modelkeep.index.schema import aliases, history
from modelkeep.signing import manifest, sign_event

from ._http_server import HttpServer, ServerSide, running_server
from .test_http_one_request import _requests
from .test_signing_keys import key_pair


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HttpServer]:
    with running_server(ServerSide(str(tmp_path / "models")), tmp_path / "server", in_process=True) as running:
        yield running


@pytest.fixture
def alice(tmp_path: Path) -> tuple[Path, Path]:
    """Alice's key pair: the key files of the only writer readers trust."""
    return key_pair(tmp_path, "alice")


def served(server: HttpServer) -> ModelPersistence:
    assert server.served is not None
    return server.served


def alias_row(server: HttpServer, alias: str = "production") -> dict[str, Any]:
    with served(server).index.engine.connect() as conn:
        found = conn.execute(select(aliases).where(aliases.c.model_name == "churn", aliases.c.alias == alias)).one()
    return dict(found._mapping)


def rewrite_alias(server: HttpServer, **values: Any) -> None:
    """The compromised server rewrites the alias row in its index."""
    with served(server).index.engine.begin() as conn:
        conn.execute(update(aliases).where(aliases.c.model_name == "churn").values(**values))


def api(server: HttpServer, method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token or server.token}", PROTOCOL_HEADER: str(PROTOCOL)}
    return httpx.request(method, server.url + API_PREFIX + path, headers=headers, timeout=30, **kwargs)


@pytest.fixture
def churn(server: HttpServer, alice: tuple[Path, Path], tmp_path: Path) -> Any:
    """``churn`` 1, 2 and 3 saved by Alice; production moved 1 -> 2 by her, signed on her side."""
    writer = server.client(signing_key_file=str(alice[0]))
    for v in ("1", "2", "3"):
        writer.save({"v": v}, "churn", v)
    writer.set_alias("churn", "production", "1")
    writer.set_alias("churn", "production", "2")
    yield writer
    writer.close()


def reader(server: HttpServer, alice: tuple[Path, Path], **options: Any) -> Any:
    """A client that trusts Alice's public key only (besides a per-user key of its own)."""
    client = server.client(trusted_keys=[str(alice[1])], **options)
    client.forget_seen()
    return client


def test_the_client_signs_the_move_with_its_own_key(server: HttpServer, churn: Any, alice: tuple[Path, Path]) -> None:
    fingerprint = keys.load_public_key(alice[1]).fingerprint
    row = alias_row(server)
    assert (row["version"], row["previous"]) == ("2", "1")
    assert row["signature"].startswith(f"ecdsa-p256:{fingerprint}:")
    with served(server).index.engine.connect() as conn:
        moves = conn.execute(select(history.c.signature).where(history.c.action == "alias_set")).scalars().all()
    assert [m.split(":")[1] for m in moves] == [fingerprint, fingerprint]
    with reader(server, alice) as r:
        verdict = r.verify_alias("churn", "production", version="2")
        assert verdict.trusted and verdict.fingerprint == fingerprint
        assert r.load("churn@production", require_signed_alias=True) == {"v": "2"}
    churn.set_alias("churn", "production", "2")  # where it already points: re-signed, history unchanged
    assert alias_row(server)["seq"] > row["seq"] and alias_row(server)["updated_at"] == row["updated_at"]


def test_a_move_signed_with_a_shared_secret_verifies_only_with_it(server: HttpServer, tmp_path: Path) -> None:
    with server.client(signing_key="team-secret") as writer:
        writer.save({"v": 1}, "churn", "1")
        writer.set_alias("churn", "production", "1")
        assert alias_row(server)["signature"].startswith("hmac-sha256:")
    with server.client(signing_key="team-secret") as r:
        assert r.verify_alias("churn", "production").trusted
    with server.client(signing_key="another-secret") as r, pytest.raises(SignatureError, match="does not match"):
        r.verify_alias("churn", "production")


def test_a_compromised_server_cannot_forge_a_move(server: HttpServer, churn: Any, alice: tuple[Path, Path]) -> None:
    """The server points production at 3 with a move it signs with its own key, well formed in
    every field: readers that trust Alice's key refuse it, as a local reader refuses a rewritten index."""
    state = alias_row(server)
    mallory = keys.generate("server")
    sha = churn.get_version("churn", "3").artifact.sha256
    seq, at = state["seq"] + 1, state["updated_at"]
    forged = sign_event(alias_event("churn", "production", "3", sha, seq, previous="2", at=at), mallory)
    rewrite_alias(server, version="3", seq=seq, signature=forged, previous="2")
    with reader(server, alice) as r:
        with pytest.raises(SignatureError, match="not signed by a trusted key"):
            r.verify_alias("churn", "production")
        with pytest.raises(SignatureError, match="not signed by a trusted key"):
            r.load("churn@production", require_signed_alias=True)
        assert r.load("churn", "2") == {"v": "2"}  # by number: the alias is not involved
    fingerprint = keys.load_public_key(alice[1]).fingerprint
    with (
        reader(server, alice, trusted_releasers=[fingerprint[:16]]) as r,  # implies the requirement
        pytest.raises(SignatureError, match="not signed by a trusted key"),
    ):
        r.load("churn@production")
    rewrite_alias(server, version="3", seq=state["seq"], signature=state["signature"], previous="1")
    with reader(server, alice) as r, pytest.raises(SignatureError, match="signature of that move does not match"):
        r.load("churn@production")  # Alice's genuine signature, moved to another version: always refused


def test_a_server_that_alters_the_event_of_a_newer_move_is_caught(
    server: HttpServer, churn: Any, alice: tuple[Path, Path]
) -> None:
    """Alice moves production 1 -> 2 -> 3; the server copies her signed move to 2 back into the
    alias row, and rewrites the history's event of the move to 3 so that it seems to go to 2."""
    replayed = alias_row(server)
    churn.set_alias("churn", "production", "3")
    rewrite_alias(server, **{k: replayed[k] for k in ("version", "seq", "signature", "previous", "updated_at")})
    with reader(server, alice) as r, pytest.raises(RollbackError, match="a newer signed move"):
        r.verify_alias("churn", "production")
    with served(server).index.engine.begin() as conn:
        conn.execute(
            update(history)
            .where(history.c.alias == "production", history.c.seq > replayed["seq"])
            .values(after='"2"', before='"1"')  # JSON text, as the history stores versions
        )
    assert [e["after"] for e in churn.events(model="churn", types="alias.*")][-1] == "2"  # the feed as rewritten
    with reader(server, alice) as r:
        with pytest.raises(RollbackError, match="a newer move whose record was altered"):
            r.verify_alias("churn", "production")
        with pytest.raises(RollbackError, match="a newer move whose record was altered"):
            r.load("churn@production", require_signed_alias=True)


def test_a_reader_that_saw_a_newer_move_refuses_a_replay_with_the_history_erased(
    server: HttpServer, churn: Any, alice: tuple[Path, Path]
) -> None:
    replayed = alias_row(server)
    churn.set_alias("churn", "production", "3")
    r = reader(server, alice, require_signatures=True)
    assert r.load("churn@production") == {"v": "3"}  # seen: this reader remembers move 3
    rewrite_alias(server, **{k: replayed[k] for k in ("version", "seq", "signature", "previous", "updated_at")})
    with served(server).index.engine.begin() as conn:
        conn.execute(delete(history).where(history.c.alias == "production", history.c.seq > replayed["seq"]))
    with pytest.raises(RollbackError, match="older move than this reader has already seen"):
        r.load("churn@production")
    with reader(server, alice) as fresh:  # never saw move 3: what no reader can tell (docs/server.md)
        assert fresh.load("churn@production", require_signed_alias=True) == {"v": "2"}
    r.close()


def test_the_client_signs_only_the_move_it_asked_for(
    server: HttpServer, churn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that plans another move (other bytes, another version) gets no signature."""
    lifecycle = served(server).index.lifecycle
    real = lifecycle.plan_move_with_record
    before = alias_row(server)

    def other_bytes(model_name: str, alias: str, version: str, **kwargs: Any) -> Any:
        event, record = real(model_name, alias, version, **kwargs)
        return {**event, "sha256": "0" * 64}, record

    def other_version(model_name: str, alias: str, version: str, **kwargs: Any) -> Any:
        return real(model_name, alias, "1", **kwargs)

    for lie, says in ((other_bytes, "to bytes other than those"), (other_version, "another alias move")):
        monkeypatch.setattr(lifecycle, "plan_move_with_record", lie)
        with pytest.raises(SignatureError, match=says):
            churn.set_alias("churn", "production", "3")
        assert alias_row(server) == before


def test_a_move_takes_two_requests_and_is_checked_against_the_record_its_plan_came_with(
    server: HttpServer, churn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan answers the record of the version the move goes to (no request of its own for it),
    and the client judges it as it judged a record it asked for: a server that sends another
    version's record, other bytes, or a record its signature does not match gets no signature."""
    seen = _requests(churn)
    churn.set_alias("churn", "production", "3")
    path = "/models/churn/aliases/production"
    assert [s.split("?")[0] for s in seen] == [f"GET {path}/plan", f"POST {path}/signed"]
    before = alias_row(server)
    lifecycle = served(server).index.lifecycle
    real = lifecycle.plan_move_with_record

    def another_version(name: str, alias: str, version: str, **kwargs: Any) -> Any:
        return real(name, alias, version, **kwargs)[0], real(name, alias, "1", **kwargs)[1]

    def other_bytes(name: str, alias: str, version: str, **kwargs: Any) -> Any:
        event, record = real(name, alias, version, **kwargs)
        return event, dataclasses.replace(record, artifact=dataclasses.replace(record.artifact, sha256="0" * 64))

    def altered(name: str, alias: str, version: str, **kwargs: Any) -> Any:
        event, record = real(name, alias, version, **kwargs)  # the same bytes, a record Alice did not sign
        size = record.artifact.size + 1
        return event, dataclasses.replace(record, artifact=dataclasses.replace(record.artifact, size=size))

    lies = (
        (another_version, "with the record of model 'churn' version '1'"),
        (other_bytes, "to bytes other than those"),
        (altered, "has a signature that does not match"),
    )
    for lie, says in lies:
        monkeypatch.setattr(lifecycle, "plan_move_with_record", lie)
        with pytest.raises(SignatureError, match=says):
            churn.set_alias("churn", "production", "2")
        assert alias_row(server) == before


def test_a_server_whose_plan_has_no_record_is_asked_for_it(
    tmp_path: Path, alice: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older server answers the plan's event alone: the client reads the record itself, and
    checks the plan against it as before."""
    from modelkeep.api import signing_routes

    plan_move = signing_routes.SigningRoutes.plan_move

    async def event_only(self: Any, request: Any) -> Any:
        answer = await plan_move(self, request)
        return json_response({"event": json.loads(answer.body)["event"]})

    monkeypatch.setattr(signing_routes.SigningRoutes, "plan_move", event_only)
    side = ServerSide(str(tmp_path / "models"))
    with (
        running_server(side, tmp_path / "server", in_process=True) as old,
        old.client(signing_key_file=str(alice[0])) as c,
    ):
        c.save({"v": 1}, "churn", "1")
        seen = _requests(c)
        c.set_alias("churn", "production", "1")
        path = "/models/churn/aliases/production"
        assert [s.split("?")[0] for s in seen] == [
            f"GET {path}/plan",
            "GET /models/churn/versions/1",
            f"POST {path}/signed",
        ]
        assert c.get_aliases("churn") == {"production": "1"}
        assert alias_row(old)["signature"].startswith("ecdsa-p256:")


def test_raw_signed_moves_are_checked_by_the_server(
    server: HttpServer, churn: Any, alice: tuple[Path, Path], tmp_path: Path
) -> None:
    """A client cannot store a signature that claims someone else's key, nor one for another event."""
    alice_key = keys.load_private_key(alice[0])
    mallory = keys.generate("mallory")
    path = "/models/churn/aliases/production"
    event = api(server, "GET", path + "/plan", params={"version": "3"}).json()["event"]
    claimed = sign_event(event, mallory).split(":")
    claimed[1] = alice_key.fingerprint  # "signed by Alice"
    attempts = [
        (":".join(claimed), mallory.public.pem().decode(), event, "not by the public key sent"),
        (":".join(claimed), alice_key.public.pem().decode(), event, "does not match the event sent"),
        (sign_event(event, mallory), mallory.public.pem().decode(), {**event, "version": "1"}, "does not match"),
    ]
    before = alias_row(server)
    for signature, public, sent, says in attempts:
        body = {"version": "3", "event": sent, "signature": signature, "public_key": public}
        answer = api(server, "POST", path + "/signed", json=body)
        assert answer.status_code == 422 and says in answer.json()["error"]["message"]
        assert answer.json()["error"]["class"] == "SignatureError"
    # A genuine signature of a plan that is no longer current (another move got in between).
    churn.set_alias("churn", "production", "1")
    public = alice_key.public.pem().decode()
    body = {"version": "3", "event": event, "signature": sign_event(event, alice_key), "public_key": public}
    answer = api(server, "POST", path + "/signed", json=body)
    assert answer.status_code == 409 and answer.json()["error"]["class"] == "AliasConflictError"
    assert alias_row(server)["version"] == "1" != before["version"]
    # A fresh plan, signed, but with its time moved an hour back (a backdated move): refused.
    event = api(server, "GET", path + "/plan", params={"version": "3"}).json()["event"]
    backdated = {**event, "at": "2020-01-01T00:00:00.000000+00:00"}
    body = {"version": "3", "event": backdated, "signature": sign_event(backdated, alice_key), "public_key": public}
    answer = api(server, "POST", path + "/signed", json=body)
    assert answer.status_code == 409 and "planned too long ago" in answer.json()["error"]["message"]
    assert alias_row(server)["version"] == "1"
    viewer = server.add_user("vic", "viewer")
    answer = api(server, "POST", path + "/signed", token=viewer, json=body)
    assert answer.status_code == 403
    with server.client(viewer, signing_key_file=str(alice[0])) as vic, pytest.raises(PermissionDeniedError):
        vic.set_alias("churn", "production", "3")


def test_a_plan_whose_bytes_were_overwritten_before_the_move_is_refused(
    server: HttpServer, churn: Any, alice: tuple[Path, Path]
) -> None:
    """The plan and its record are read without the model's lock: a genuine signature of a plan
    whose target was overwritten before the move names the old bytes, and the move refuses it."""
    alice_key = keys.load_private_key(alice[0])
    path = "/models/churn/aliases/production"
    plan = api(server, "GET", path + "/plan", params={"version": "3"}).json()
    assert plan["event"]["sha256"] == plan["record"]["artifact"]["sha256"]
    churn.save({"v": "3 again"}, "churn", "3", overwrite=True)
    event, public = plan["event"], alice_key.public.pem().decode()
    body = {"version": "3", "event": event, "signature": sign_event(event, alice_key), "public_key": public}
    answer = api(server, "POST", path + "/signed", json=body)
    assert answer.status_code == 409 and answer.json()["error"]["class"] == "AliasConflictError"
    assert alias_row(server)["version"] == "2"
    # A plan with expected= is refused at once when the alias points elsewhere.
    answer = api(server, "GET", path + "/plan", params={"version": "3", "expected": "1"})
    assert answer.status_code == 409 and "points at version '2'" in answer.json()["error"]["message"]


def test_a_policy_naming_a_key_accepts_only_moves_signed_by_it_on_the_client(
    server: HttpServer, churn: Any, alice: tuple[Path, Path], tmp_path: Path
) -> None:
    fingerprint = keys.load_public_key(alice[1]).fingerprint
    churn.set_policy("churn", "production", allowed=[fingerprint])
    bob_private, _ = key_pair(tmp_path, "bob")
    with server.client(signing_key_file=str(bob_private)) as bob, pytest.raises(PolicyError):
        bob.set_alias("churn", "production", "3")
    churn.set_alias("churn", "production", "3")
    assert alias_row(server)["version"] == "3"


def test_a_stale_plan_is_planned_again(server: HttpServer, churn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another mover gets in between the plan and the move: the client plans, signs and sends again."""
    real = served(server).set_alias_signed
    calls: list[int] = []

    def someone_first(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            served(server).set_alias("churn", "production", "1")  # moved meanwhile, by the server's side
        real(*args, **kwargs)

    monkeypatch.setattr(served(server), "set_alias_signed", someone_first)
    churn.set_alias("churn", "production", "3")
    assert len(calls) == 2 and alias_row(server)["version"] == "3"
    with pytest.raises(AliasConflictError, match="points at version '3'"):
        churn.set_alias("churn", "production", "1", expected="2")


def test_a_trash_is_signed_on_the_client(server: HttpServer, churn: Any, alice: tuple[Path, Path]) -> None:
    fingerprint = keys.load_public_key(alice[1]).fingerprint
    with reader(server, alice, require_signatures=True) as r:
        assert r.load("churn") == {"v": "3"}  # seen as the latest
        churn.delete("churn", "3")
        removals = served(server).index.lifecycle.signed_removals("churn", "3")
        assert len(removals) == 1 and removals[0][1].split(":")[1] == fingerprint
        assert r.load("churn") == {"v": "2"}  # a removal signed by a trusted key: no rollback error
        churn.restore("churn", "3")
        assert r.load("churn") == {"v": "3"}
        with served(server).index.engine.begin() as conn:  # the server hides 3 again, unsigned
            conn.execute(update(history).where(history.c.action == "delete").values(signature=None))
        served(server).index.lifecycle.trash("churn", "3")
        with pytest.raises(RollbackError, match="no signed removal"):
            r.load("churn")


def test_re_signing_over_http_checks_roles_and_what_was_signed(
    server: HttpServer, churn: Any, alice: tuple[Path, Path], tmp_path: Path
) -> None:
    new_private, new_public = key_pair(tmp_path, "alice-2027")
    rotated = server.client(signing_key_file=str(new_private), trusted_keys=[str(alice[1])])
    record = rotated.get_version("churn", "1")
    body = {
        "manifest": {**manifest(record), "size": 1},
        "signature": rotated.keyring.sign(record),
        "public_key": keys.load_public_key(new_public).pem().decode(),
    }
    answer = api(server, "PUT", "/models/churn/versions/1/signature", json=body)  # not what is stored
    assert answer.status_code == 409 and answer.json()["error"]["class"] == "VersionExistsError"
    writer = server.add_user("wes", "writer")
    body["manifest"]["size"] = record.artifact.size
    assert api(server, "PUT", "/models/churn/versions/1/signature", token=writer, json=body).status_code == 403
    body["public_key"] = keys.load_public_key(alice[1]).pem().decode()  # not the key that signed
    assert api(server, "PUT", "/models/churn/versions/1/signature", json=body).status_code == 422
    report = rotated.sign("churn")
    assert report.signed == [("churn", "1"), ("churn", "2"), ("churn", "3")]
    with server.client(trusted_keys=[str(new_public)], require_signatures=True) as r:
        assert r.signature_status("churn", "1").name == "alice-2027"
        assert r.load("churn", "1") == {"v": "1"}
    with pytest.raises(VersionExistsError):  # stale: the client raises what the server answered
        rotated.request("PUT", "/models/churn/versions/1/signature", json={**body, "manifest": {}})
    rotated.close()


def test_the_event_feed_shows_only_the_models_a_user_may_see(server: HttpServer, churn: Any) -> None:
    churn.save({"f": 1}, "fraud", "1")
    everything = list(churn.events())
    assert {e["model"] for e in everything} >= {"churn", "fraud"}
    ids = [e["id"] for e in everything]
    assert ids == sorted(ids) and [e["id"] for e in churn.events(since=ids[2])] == ids[3:]
    assert {e["type"] for e in churn.events(types="alias.*")} == {"alias.set", "alias.moved"}
    assert {e["type"] for e in churn.events(types="version.created")} == {"version.created"}
    direct = served(server)
    direct.users.add("gus", None, "none")
    direct.users.grant("gus", "fraud*", "viewer")
    gus = direct.users.new_token("gus", "tests")
    answer = api(server, "GET", "/events", token=gus)
    assert answer.status_code == 200
    assert {e["model"] for e in answer.json()["events"]} == {"fraud"}
    with server.client(gus) as client:
        assert [e["id"] for e in client.events()] == [e["id"] for e in everything if e["model"] == "fraud"]
        stop = threading.Event()
        seen: list[dict[str, Any]] = []

        def follow() -> None:
            for event in client.events(since=ids[-1], follow=True, poll=0.05, stop=stop):
                seen.append(event)
                stop.set()

        watcher = threading.Thread(target=follow)
        watcher.start()
        churn.save({"f": 2}, "fraud", "2")
        watcher.join(timeout=60)
        assert not watcher.is_alive() and [e["version"] for e in seen] == ["2"]
    assert api(server, "GET", "/events", params={"limit": "0"}).status_code == 400


def test_cli_sign_and_events_watch_through_the_server(
    server: HttpServer, churn: Any, alice: tuple[Path, Path], tmp_path: Path
) -> None:
    """``modelkeep sign`` and ``modelkeep events watch`` against the server: the CLI user's key
    re-signs (refusing what its trusted keys do not vouch for), and the watcher starts after the
    server's newest event."""
    import json
    import os
    import signal
    import subprocess
    import sys

    new_private, new_public = key_pair(tmp_path, "alice-2027")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELKEEP_")}
    env.update(
        MODELKEEP_REGISTRY_URL=server.url,
        MODELKEEP_TOKEN=server.token,
        MODELKEEP_CONFIG_DIR=str(tmp_path / "cli-config"),
        MODELKEEP_CACHE_DIR=str(tmp_path / "cli-cache"),
        MODELKEEP_SIGNING_KEY_FILE=str(new_private),
    )
    cli = [sys.executable, "-m", "modelkeep"]
    signed = subprocess.run([*cli, "sign", "--all", "--json"], env=env, capture_output=True, text=True)
    assert signed.returncode == 0, signed.stderr
    assert json.loads(signed.stdout)["signed"] == []  # Alice's key is not trusted there: nothing vouched for
    env["MODELKEEP_TRUSTED_KEYS"] = str(alice[1])
    signed = subprocess.run([*cli, "sign", "--model-name", "churn", "--json"], env=env, capture_output=True, text=True)
    assert signed.returncode == 0, signed.stderr
    assert json.loads(signed.stdout)["signed"] == [["churn", "1"], ["churn", "2"], ["churn", "3"]]
    with server.client(trusted_keys=[str(new_public)], require_signatures=True) as r:
        assert r.signature_status("churn", "2").name == "alice-2027"
    watch = subprocess.Popen(
        [*cli, "events", "watch", "--poll", "0.05", "--model", "churn"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stderr is not None and watch.stdout is not None
        newest = max(e["id"] for e in churn.events())
        assert watch.stderr.readline().startswith(f"Watching events after id {newest}")
        churn.set_tag("churn", "team", "risk")
        line = json.loads(watch.stdout.readline())
        assert (line["type"], line["model"]) == ("tag.set", "churn") and line["id"] > newest
    finally:
        watch.send_signal(signal.SIGTERM)
        _, err = watch.communicate(timeout=30)
    assert "Traceback" not in err
