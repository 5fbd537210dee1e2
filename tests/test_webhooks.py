"""Events out: the history as events, webhooks with a durable outbox, the dispatcher and the
``webhooks`` / ``events`` commands.

A real HTTP receiver on loopback (:mod:`tests._receiver`), the real index (SQLite and
PostgreSQL), and real ``modelkeep events dispatch`` / ``events watch`` subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update

from modelkeep import ModelPersistence, WebhookNotFoundError
from modelkeep.cli import cli
from modelkeep.errors import ConfigError
from modelkeep.index.audit import write_history
from modelkeep.index.schema import history
from modelkeep.index.schema import webhooks as webhooks_table
from modelkeep.webhooks.dispatch import Dispatcher
from modelkeep.webhooks.events import EVENT_OF_ACTION, event_type
from modelkeep.webhooks.settings import DispatchSettings
from tests._receiver import Receiver, wait_for
from tests.conftest import PG_URL, IndexTarget, postgres_schema

ROOT = Path(__file__).resolve().parent.parent
SECRET = b"a-test-secret-of-32-bytes-length"
#: Retries in milliseconds instead of minutes, and a lease a restarted dispatcher outlives quickly.
FAST = DispatchSettings(poll=0.02, timeout=5.0, backoff=0.02, max_backoff=0.2, max_attempts=10_000, lease=1.0)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "webhook.secret"
    path.write_bytes(SECRET + b"\n")
    return path


def _history(p: ModelPersistence) -> None:
    """One of each kind of change, on two models."""
    p.save({"w": 1}, "churn", version="1.0.0")
    p.save({"w": 2}, "churn", version="1.1.0")
    p.set_alias("churn", "production", "1.0.0")
    p.set_alias("churn", "production", "1.1.0")
    p.set_tag("churn", "validated", "yes", version="1.1.0")
    p.delete_tag("churn", "validated", version="1.1.0")
    p.set_description("churn", "the churn model")
    p.delete_alias("churn", "production")
    p.delete("churn", "1.0.0")
    p.restore("churn", "1.0.0")
    p.save({"w": 3}, "fraud", version="1.0.0")
    p.delete("churn", "1.0.0")
    p.purge("churn", "1.0.0")


EXPECTED = [
    ("version.created", "churn"),
    ("version.created", "churn"),
    ("alias.set", "churn"),
    ("alias.moved", "churn"),
    ("tag.set", "churn"),
    ("tag.removed", "churn"),
    ("version.described", "churn"),
    ("alias.removed", "churn"),
    ("version.trashed", "churn"),
    ("version.restored", "churn"),
    ("version.created", "fraud"),
    ("version.trashed", "churn"),
    ("version.purged", "churn"),
]


def test_every_history_action_has_one_public_name() -> None:
    assert event_type("alias_set", None) == "alias.set"
    assert event_type("alias_set", "1.0.0") == "alias.moved"
    assert event_type("policy_set", None) == "policy.set" and event_type("approve", None) == "approval.added"
    assert event_type("a_future_action", None) == "history.a_future_action"
    from modelkeep.params_backfill import HISTORY_ACTION

    assert HISTORY_ACTION in EVENT_OF_ACTION
    names = list(EVENT_OF_ACTION.values())
    assert len(names) == len(set(names))


def test_events_iterate_the_history_in_order(persistence: ModelPersistence) -> None:
    _history(persistence)
    events = list(persistence.events())
    assert [(e["type"], e["model"]) for e in events] == EXPECTED
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    moved = events[3]
    assert (moved["alias"], moved["before"], moved["after"], moved["version"]) == (
        "production",
        "1.0.0",
        "1.1.0",
        "1.1.0",
    )
    assert moved["actor"] and moved["at"] and moved["signature"]  # alias moves are signed
    json.dumps(events)  # JSON-able as they are
    assert [e["type"] for e in persistence.events(since=ids[9])] == [t for t, _ in EXPECTED[10:]]
    assert [e["model"] for e in persistence.events(model="fraud")] == ["fraud"]
    assert [e["type"] for e in persistence.events(types="alias.*")] == ["alias.set", "alias.moved", "alias.removed"]
    with pytest.raises(ConfigError, match="matches no event"):
        list(persistence.events(types="alias.mvoed"))


def test_events_follow_yields_new_events_until_stopped(persistence: ModelPersistence) -> None:
    persistence.save({"w": 1}, "churn", version="1.0.0")
    start = list(persistence.events())[-1]["id"]
    stop = threading.Event()
    seen: list[dict[str, Any]] = []

    def follow() -> None:
        for event in persistence.events(since=start, follow=True, poll=0.02, stop=stop):
            seen.append(event)

    thread = threading.Thread(target=follow)
    thread.start()
    persistence.set_alias("churn", "production", "1.0.0")
    persistence.set_tag("churn", "team", "growth")
    wait_for(lambda: len(seen) == 2, what="the followed events")
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert [e["type"] for e in seen] == ["alias.set", "tag.set"]


def test_deliveries_arrive_signed_and_filtered(
    persistence: ModelPersistence, receiver: Receiver, secret_file: Path
) -> None:
    persistence.save({"w": 0}, "churn", version="0.9.0")  # before the webhook: not delivered
    hook = persistence.webhooks.add(
        receiver.url, events="alias.*,version.created", model="ch*", secret_file=secret_file
    )
    _history(persistence)
    dispatcher = persistence.webhooks.dispatcher(FAST)
    while dispatcher.run_once():
        pass
    wanted = [(t, m) for t, m in EXPECTED if m.startswith("ch") and (t.startswith("alias.") or t == "version.created")]
    assert [(e["type"], e["model"]) for e in receiver.events()] == wanted
    for got in receiver.received:
        assert got.signed_by(SECRET)
        assert not got.signed_by(b"another-secret-of-enough-length!")
        event = got.event
        assert got.headers["X-Modelkeep-Event"] == event["type"]
        assert got.headers["X-Modelkeep-Delivery"] == event["delivery"] and event["webhook"] == hook
        assert got.headers["Content-Type"] == "application/json"
    log = persistence.webhooks.deliveries(hook)
    assert len(log) == len(wanted) and {d.status for d in log} == {"delivered"}
    assert all(len(d.log) == 1 and d.log[0]["response_code"] == 200 for d in log)
    assert not dispatcher.run_once()  # nothing new: nothing sent twice
    assert len(receiver.received) == len(wanted)


def _dedup_in_order(receiver: Receiver, p: ModelPersistence, patterns: str = "*") -> None:
    """Every matching history event arrived, exactly once after de-duplication by delivery id,
    and in history order per model."""
    history = [e for e in p.events(types=patterns)]
    unique = receiver.unique()
    assert sorted(e["id"] for e in unique) == [e["id"] for e in history]
    for model in {e["model"] for e in history}:
        arrived = [e["id"] for e in unique if e["model"] == model]
        assert arrived == sorted(arrived), f"{model} events out of order: {arrived}"


def test_receiver_down_then_up_gets_every_event_once_in_order(
    persistence: ModelPersistence, receiver: Receiver, secret_file: Path
) -> None:
    hook = persistence.webhooks.add(receiver.url, events="*", secret_file=secret_file)
    receiver.stop()  # down: connections refused
    dispatcher = persistence.webhooks.dispatcher(FAST)
    thread = threading.Thread(target=dispatcher.run)
    thread.start()
    try:
        _history(persistence)
        wait_for(
            lambda: any(d.attempts >= 3 for d in persistence.webhooks.deliveries(hook)),
            what="retries against the stopped receiver",
        )
        failed = [a for d in persistence.webhooks.deliveries(hook) for a in d.log if a["status"] != "sending"]
        assert failed and all(a["status"] == "error" and a["response_code"] is None for a in failed)
        assert "Connection" in failed[0]["error"] or "refused" in failed[0]["error"].lower()
        receiver.start()  # back up, same port
        wait_for(
            lambda: (
                [d.status for d in persistence.webhooks.deliveries(hook, limit=100)] == ["delivered"] * len(EXPECTED)
            ),
            what="every delivery",
        )
    finally:
        dispatcher.stop.set()
        thread.join(30)
    assert not thread.is_alive()
    _dedup_in_order(receiver, persistence)


def test_a_failing_event_holds_back_its_model_only_then_is_given_up(
    persistence: ModelPersistence, receiver: Receiver, secret_file: Path
) -> None:
    """The receiver refuses churn's first event: churn's later events wait, fraud's go on;
    after max_attempts the refused one is given up and churn's queue moves."""
    receiver.answer = lambda r: 500 if r.event["model"] == "churn" and r.event["version"] == "1.0.0" else 200
    hook = persistence.webhooks.add(receiver.url, events="version.created", secret_file=secret_file)
    persistence.save({"w": 1}, "churn", version="1.0.0")
    persistence.save({"w": 2}, "churn", version="1.1.0")
    persistence.save({"w": 3}, "fraud", version="1.0.0")
    dispatcher = persistence.webhooks.dispatcher(
        DispatchSettings(poll=0.02, backoff=0.0, max_backoff=0.0, max_attempts=3, lease=5.0)
    )
    dispatcher.run_once()
    assert [(e["model"], e["version"]) for e in receiver.events()] == [("churn", "1.0.0"), ("fraud", "1.0.0")]
    while dispatcher.run_once():
        pass
    got = [(e["model"], e["version"]) for e in receiver.events()]
    assert got == [("churn", "1.0.0"), ("fraud", "1.0.0"), ("churn", "1.0.0"), ("churn", "1.0.0"), ("churn", "1.1.0")]
    by_version = {(d.model, d.history_id): d for d in persistence.webhooks.deliveries(hook)}
    refused = next(d for d in by_version.values() if d.status == "failed")
    assert refused.attempts == 3 and [a["response_code"] for a in refused.log] == [500, 500, 500]
    assert sorted(d.status for d in by_version.values()) == ["delivered", "delivered", "failed"]
    persistence.webhooks.redeliver(refused.delivery_id)  # the operator's retry, after a fix
    receiver.answer = lambda r: 200
    dispatcher.run_once()
    assert receiver.received[-1].headers["X-Modelkeep-Delivery"] == refused.delivery_id  # same id: de-duplicable


@pytest.mark.postgres
def test_an_earlier_id_committed_late_is_not_skipped(tmp_path: Path, receiver: Receiver, secret_file: Path) -> None:
    """PostgreSQL: a transaction holds history id N uncommitted while N+1 commits. Neither the
    dispatcher nor ``events()`` may move past N; once N commits, both arrive, in order."""
    with postgres_schema() as schema:
        assert PG_URL
        p = IndexTarget("postgresql", PG_URL, schema).persistence(tmp_path / "models")
        try:
            p.save({"w": 1}, "churn", version="1.0.0")
            hook = p.webhooks.add(receiver.url, events="*", secret_file=secret_file)
            dispatcher = p.webhooks.dispatcher(FAST)
            with p.index.engine.connect() as slow:
                held = slow.begin()
                write_history(slow, "tag_set", "churn", key="slow", after="1")  # takes id N, not committed
                slow_id = slow.execute(select(func.max(history.c.id))).scalar_one()
                p.set_tag("churn", "fast", "1")  # id N+1, committed first
                fast_id = p.history()[-1].id
                assert fast_id > slow_id
                late = p.webhooks.add(receiver.url, events="tag.*", secret_file=secret_file)
                assert p.webhooks.get(late).cursor == fast_id  # not 0: an open transaction replays nothing
                dispatcher.run_once()
                dispatcher.run_once()
                assert receiver.events() == []
                assert p.webhooks.get(hook).cursor < slow_id
                assert all(e["id"] < slow_id for e in p.events())  # events() stops short as well
                held.commit()
            while dispatcher.run_once():
                pass
            assert [(e["id"], e["key"]) for e in receiver.events()] == [(slow_id, "slow"), (fast_id, "fast")]
        finally:
            p.close()


def test_one_dispatcher_per_webhook(persistence: ModelPersistence, receiver: Receiver, secret_file: Path) -> None:
    hook = persistence.webhooks.add(receiver.url, events="*", secret_file=secret_file)
    first = persistence.webhooks.dispatcher(DispatchSettings(lease=60.0))
    second = persistence.webhooks.dispatcher(DispatchSettings(lease=60.0))
    persistence.save({"w": 1}, "churn", version="1.0.0")
    assert first.run_once()
    persistence.save({"w": 2}, "churn", version="1.1.0")
    assert not second.run_once()  # the lease is first's
    assert len(receiver.received) == 1
    first.release()
    assert second.run_once()
    assert [e["version"] for e in receiver.unique()] == ["1.0.0", "1.1.0"]
    rows = persistence.webhooks.rows
    assert rows.lease(hook, first.owner, 60.0) is None  # second holds it now


def test_an_expired_lease_is_taken_over_and_its_attempt_marked_interrupted(
    persistence: ModelPersistence, receiver: Receiver, secret_file: Path
) -> None:
    hook = persistence.webhooks.add(receiver.url, events="*", secret_file=secret_file)
    persistence.save({"w": 1}, "churn", version="1.0.0")
    rows = persistence.webhooks.rows
    crashed = persistence.webhooks.dispatcher(FAST)
    assert rows.lease(hook, crashed.owner, 60.0) is True
    crashed._enqueue(rows.get(hook), crashed.settled.advance())
    rows.start_attempt(rows.pending(hook)[0])  # ... and then it died mid-POST
    with persistence.index._write() as conn:  # its lease runs out
        conn.execute(update(webhooks_table).values(lease_until="2000-01-01T00:00:00.000000+00:00"))
    successor = persistence.webhooks.dispatcher(FAST)
    assert successor.run_once()
    [delivery] = persistence.webhooks.deliveries(hook)
    assert delivery.status == "delivered"
    assert [a["status"] for a in delivery.log] == ["interrupted", "ok"]


def test_a_hostile_index_cannot_make_the_dispatcher_read_files_or_follow_redirects(
    persistence: ModelPersistence, receiver: Receiver, secret_file: Path, tmp_path: Path
) -> None:
    """Whoever writes the index may rewrite a webhook: the URL must stay http(s) (no file://),
    the secret file must be a small regular file (no /dev/zero, no FIFO that blocks), and a
    redirect is not followed."""
    hook = persistence.webhooks.add(receiver.url, events="*", secret_file=secret_file)
    persistence.save({"w": 1}, "churn", version="1.0.0")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    dispatcher = Dispatcher(persistence.webhooks.rows, DispatchSettings(max_attempts=1))
    for column, value, error in (
        ("url", "file:///etc/passwd", "must be an http"),
        ("secret_file", "/dev/zero", "not a regular file"),
        ("secret_file", str(fifo), "not a regular file"),
        ("secret_file", str(ROOT / "README.md"), "larger than"),
    ):
        with persistence.index._write() as conn:
            conn.execute(update(webhooks_table).values(url=receiver.url, secret_file=str(secret_file)))
            conn.execute(update(webhooks_table).values(**{column: value}))
        for queued in persistence.webhooks.deliveries(hook):  # none before the first run
            persistence.webhooks.rows.redeliver(queued.delivery_id)
        dispatcher.run_once()
        [delivery] = persistence.webhooks.deliveries(hook)
        assert delivery.status == "failed" and error in delivery.log[-1]["error"], delivery.log
    assert receiver.received == []
    receiver.answer = lambda r: 302
    with persistence.index._write() as conn:
        conn.execute(update(webhooks_table).values(url=receiver.url, secret_file=str(secret_file)))
    persistence.webhooks.rows.redeliver(persistence.webhooks.deliveries(hook)[0].delivery_id)
    dispatcher.run_once()
    assert persistence.webhooks.deliveries(hook)[0].log[-1]["response_code"] == 302
    assert len(receiver.received) == 1


# -- the command line -----------------------------------------------------------------


def _invoke(models_dir: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--models-dir", str(models_dir), *args])


def _one_line_error(result: Any, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_webhooks_commands(local_persistence: ModelPersistence, receiver: Receiver, secret_file: Path) -> None:
    models = Path(local_persistence.models_dir)
    added = _invoke(models, "webhooks", "add", receiver.url, "--events", "alias.*", "--secret-file", str(secret_file))
    assert added.exit_code == 0, added.output
    assert added.stdout.strip() == f"Added webhook 1: {receiver.url}"
    listed = _invoke(models, "webhooks", "list")
    assert listed.stdout.startswith(f"1\t{receiver.url}\talias.*\tall models\tafter event 0")
    assert json.loads(_invoke(models, "webhooks", "list", "--json").stdout)[0]["events"] == ["alias.*"]

    tested = _invoke(models, "webhooks", "test", "1")
    assert tested.exit_code == 0 and tested.stdout.startswith(f"ping to {receiver.url}: HTTP 200 in ")
    assert receiver.received[0].event["type"] == "ping" and receiver.received[0].signed_by(SECRET)

    local_persistence.save({"w": 1}, "churn", version="1.0.0")
    local_persistence.set_alias("churn", "production", "1.0.0")
    local_persistence.webhooks.dispatcher(FAST).run_once()
    lines = _invoke(models, "webhooks", "deliveries").stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("\twebhook 1\tevent 2 alias.set churn\tdelivered\t1 attempt(s)")
    assert lines[1].startswith("  #1\t") and lines[1].endswith("\tok\tHTTP 200")
    [as_json] = json.loads(_invoke(models, "webhooks", "deliveries", "1", "--json").stdout)
    assert as_json["status"] == "delivered" and as_json["log"][0]["response_code"] == 200

    receiver.stop()
    _one_line_error(_invoke(models, "webhooks", "test", "1", "--timeout", "2"), "ping to")
    _one_line_error(_invoke(models, "webhooks", "rm", "7"), "no webhook 7")
    _one_line_error(
        _invoke(models, "webhooks", "add", "http://x/", "--events", "alias.mvoed", "--secret-file", str(secret_file)),
        "matches no event",
    )
    _one_line_error(
        _invoke(models, "webhooks", "add", "ftp://x/", "--events", "*", "--secret-file", str(secret_file)),
        "http:// or https://",
    )
    short = secret_file.parent / "short"
    short.write_text("abc")
    _one_line_error(
        _invoke(models, "webhooks", "add", "http://x/", "--events", "*", "--secret-file", str(short)), "shorter than"
    )
    assert _invoke(models, "webhooks", "rm", "1").stdout.strip() == "Removed webhook 1."
    assert _invoke(models, "webhooks", "deliveries").stdout.strip() == "No deliveries."
    with pytest.raises(WebhookNotFoundError):
        local_persistence.webhooks.get(1)


# -- real processes -------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def cli_registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a ``modelkeep`` subprocess on a fresh registry, on each backend."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    env["MODELKEEP_MODELS_DIR"] = str(tmp_path / "models")
    if request.param == "sqlite":
        ModelPersistence(models_dir=tmp_path / "models").ensure_registry().engine.dispose()
        yield env
        return
    with postgres_schema() as schema:
        env["MODELKEEP_REGISTRY_URL"] = f"{PG_URL}?options=-csearch_path%3D{schema}"
        _open(env).ensure_registry().engine.dispose()
        yield env


def _open(env: dict[str, str]) -> ModelPersistence:
    return ModelPersistence(models_dir=env["MODELKEEP_MODELS_DIR"], registry_url=env.get("MODELKEEP_REGISTRY_URL"))


def _dispatch(env: dict[str, str]) -> subprocess.Popen[str]:
    args = ["events", "dispatch", "--poll", "0.02", "--backoff", "0.02", "--max-backoff", "0.2", "--lease", "1"]
    return subprocess.Popen(
        [sys.executable, "-m", "modelkeep", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_dispatcher_killed_mid_delivery_loses_nothing(
    cli_registry: dict[str, str], receiver: Receiver, secret_file: Path
) -> None:
    """SIGKILL while the receiver holds the first POST open; the restarted dispatcher sends it
    again (same delivery id) and everything after it: nothing lost, each once after de-dup."""
    got_first, release = threading.Event(), threading.Event()

    def answer(_received: Any) -> int:
        if not got_first.is_set():
            got_first.set()
            release.wait(30)  # hold the first POST open until the dispatcher is dead
        return 200

    receiver.answer = answer
    with _open(cli_registry) as p:
        hook = p.webhooks.add(receiver.url, events="*", secret_file=secret_file)
        for i in range(3):
            p.save({"w": i}, "churn", version=f"1.{i}.0")
        first = _dispatch(cli_registry)
        try:
            assert got_first.wait(60), first.stderr.read() if first.poll() is not None else "no POST"
            first.send_signal(signal.SIGKILL)
            first.wait(30)
        finally:
            release.set()
        for i in range(3, 5):
            p.save({"w": i}, "churn", version=f"1.{i}.0")
        second = _dispatch(cli_registry)
        try:
            wait_for(
                lambda: (
                    len(p.webhooks.deliveries(hook)) == 5
                    and {d.status for d in p.webhooks.deliveries(hook)} == {"delivered"}
                ),
                what="every delivery after the restart",
            )
        finally:
            second.send_signal(signal.SIGTERM)
            out, err = second.communicate(timeout=30)
        assert second.returncode == 0, err
        assert "Dispatcher stopped." in out and "Traceback" not in err
        _dedup_in_order(receiver, p)
        first_delivery = p.webhooks.deliveries(hook)[-1]
        assert [a["status"] for a in first_delivery.log] == ["interrupted", "ok"]
        ids = [r.headers["X-Modelkeep-Delivery"] for r in receiver.received]
        assert ids.count(first_delivery.delivery_id) == 2  # sent twice, under one id
        assert p.webhooks.get(hook).lease_owner is None  # SIGTERM gave the lease back


WATCH = [sys.executable, "-m", "modelkeep", "events", "watch", "--poll", "0.02"]


def test_events_watch_exec_runs_once_per_event(cli_registry: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "seen.jsonl"
    script = tmp_path / "on_event.py"
    script.write_text(
        "import json, sys\n"
        "event = json.load(sys.stdin)\n"
        f"with open({str(out)!r}, 'a') as f:\n"
        "    f.write(json.dumps(event) + '\\n')\n"
    )
    with _open(cli_registry) as p:
        p.save({"w": 1}, "churn", version="1.0.0")
        p.save({"w": 2}, "churn", version="1.1.0")
        watch = subprocess.Popen(
            [*WATCH, "--model", "churn", "--alias", "production", "--exec", f"{sys.executable} {script}"],
            env=cli_registry,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert watch.stderr is not None
            assert watch.stderr.readline().startswith("Watching events after id 2")
            p.set_alias("churn", "production", "1.0.0")
            p.set_alias("churn", "staging", "1.0.0")  # another alias: not watched
            p.save({"w": 3}, "fraud", version="1.0.0")  # another model: not watched
            p.set_alias("churn", "production", "1.1.0")
            p.delete_alias("churn", "production")
            wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 3, what="three --exec runs")
        finally:
            watch.send_signal(signal.SIGTERM)
            _, err = watch.communicate(timeout=30)
        assert watch.returncode == 0 and "Traceback" not in err
        seen = [json.loads(line) for line in out.read_text().splitlines()]
        assert [(e["type"], e["after"]) for e in seen] == [
            ("alias.set", "1.0.0"),
            ("alias.moved", "1.1.0"),
            ("alias.removed", None),
        ]


def test_events_watch_prints_json_lines(cli_registry: dict[str, str]) -> None:
    with _open(cli_registry) as p:
        p.save({"w": 1}, "churn", version="1.0.0")
        p.set_tag("churn", "team", "growth")
    watch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelkeep",
            "events",
            "watch",
            "--since",
            "0",
            "--events",
            "version.*",
            "--poll",
            "0.02",
        ],
        env=cli_registry,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stdout is not None
        line = json.loads(watch.stdout.readline())
    finally:
        watch.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = watch.communicate(timeout=30)
    assert watch.returncode == 0 and "Traceback" not in err
    assert (line["type"], line["model"], line["version"], line["id"]) == ("version.created", "churn", "1.0.0", 1)


@pytest.mark.parametrize("command", [["ui", "--port", "0"], ["serve", "churn@production", "--port", "0"]])
def test_ui_and_serve_dispatch_events_with_the_flag(
    command: list[str], cli_registry: dict[str, str], receiver: Receiver, secret_file: Path
) -> None:
    with _open(cli_registry) as p:
        hook = p.webhooks.add(receiver.url, events="alias.*", secret_file=secret_file)
        p.save({"w": 1}, "churn", version="1.0.0")
        p.set_alias("churn", "production", "1.0.0")
        server = subprocess.Popen(
            [sys.executable, "-m", "modelkeep", *command, "--dispatch-events"],
            env=cli_registry,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: len(receiver.received) == 1 or server.poll() is not None, what="the alias event")
            assert server.poll() is None, server.communicate()
        finally:
            server.send_signal(signal.SIGTERM)
            _, err = server.communicate(timeout=60)
        assert server.returncode == 0 and "Traceback" not in err, err
        assert receiver.events()[0]["type"] == "alias.set"
        assert p.webhooks.deliveries(hook)[0].status == "delivered"
        assert p.webhooks.get(hook).lease_owner is None  # stopped with the server, its lease given back


def test_a_damaged_history_row_is_still_an_event(persistence: ModelPersistence) -> None:
    """A history value that is not JSON (a hostile or broken index) does not stop the stream:
    the event carries it as text and says why in ``damaged``."""
    persistence.save({"w": 1}, "churn", version="1.0.0")
    with persistence.index._write() as conn:
        conn.execute(update(history).values(after="{not json"))
    [event] = list(persistence.events())
    assert event["type"] == "version.created" and event["after"] == "{not json"
    assert "after is not JSON" in event["damaged"]


def test_the_ui_shows_the_delivery_log_to_admins_only(
    local_persistence: ModelPersistence, receiver: Receiver, secret_file: Path
) -> None:
    from modelkeep.ui import create_app
    from tests.test_ui_auth import PASSWORDS, ROLES, _signed_in

    p = local_persistence
    for name in ("eddie", "ada"):
        p.users.add(name, PASSWORDS[name], ROLES[name])
    hook = p.webhooks.add(receiver.url, events="alias.*", secret_file=secret_file)
    p.save({"w": 1}, "churn", version="1.0.0")
    p.set_alias("churn", "production", "1.0.0")
    p.webhooks.dispatcher(FAST).run_once()
    [delivery] = p.webhooks.deliveries(hook)
    app = create_app(p)
    eddie = _signed_in(app, "eddie")
    assert 'id="webhooks-link"' not in eddie.get("/").text
    assert eddie.get("/webhooks").status_code == 403
    ada = _signed_in(app, "ada")
    assert 'id="webhooks-link"' in ada.get("/").text
    page = ada.get("/webhooks")
    assert page.status_code == 200
    assert f'data-webhook="{hook}"' in page.text and receiver.url in page.text
    assert f'data-delivery="{delivery.delivery_id}" data-status="delivered"' in page.text
    assert "alias.set churn" in page.text and "ok 200" in page.text
    assert str(secret_file) not in page.text  # not even the secret's path


def test_only_an_admin_identity_manages_webhooks(
    local_persistence: ModelPersistence, receiver: Receiver, secret_file: Path
) -> None:
    from modelkeep import PermissionDeniedError
    from modelkeep.identity import Identity

    p = local_persistence
    hook = p.webhooks.add(receiver.url, events="*", secret_file=secret_file)  # no identity: no role checks
    p.identity = Identity("eddie", "editor")
    with pytest.raises(PermissionDeniedError, match="manage webhooks"):
        p.webhooks.add(receiver.url, events="*", secret_file=secret_file)
    with pytest.raises(PermissionDeniedError):
        p.webhooks.remove(hook)
    assert [h.id for h in p.webhooks.list()] == [hook]  # reading is allowed
    p.identity = Identity("ada", "admin")
    p.webhooks.remove(hook)
    assert p.webhooks.list() == []
