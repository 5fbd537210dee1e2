"""Every ``modelkeep`` command through a registry server (issue 28): ``MODELKEEP_REGISTRY_URL``
and ``MODELKEEP_TOKEN`` name a ``modelkeep server`` process, and each command either works (exit 0,
the expected output, the change visible on the server's registry) or, when it needs the registry's
host itself (ui and server, which start servers), says so in one
``Error:`` line naming the command and what to do instead: exit 1, no traceback.

:data:`CASES` has one entry per command of the click tree; a command added without one fails
:func:`test_every_command_has_a_case`. The commands run in process (click's runner: the server is
the real process, the CLI's start-up time is not what is tested), ``serve`` as a process of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx
import joblib
import pytest
from click.testing import CliRunner

from modelkeep.bundle import export_bundle
from modelkeep.cli import cli
from tests._http_server import HttpServer, free_port, stop_process
from tests._receiver import Receiver
from tests.test_http_api import fill

#: What a command that needs the registry itself says, besides its own name.
SERVER_HOST = "run it on the server's host"
MLFLOW_SQLITE = Path(__file__).resolve().parent / "data" / "mlflow" / "sqlite"


@dataclass(frozen=True)
class Works:
    """The command succeeds; stdout holds ``shows``."""

    args: tuple[str, ...]
    shows: str = ""
    stdin: str | None = None


@dataclass(frozen=True)
class OnServerHost:
    """The command needs the registry itself: one error line naming it and the remedy."""

    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Serves:
    """A long-running command on the client's host (``serve``): it answers ``/health`` and follows
    its alias without complaint."""

    args: tuple[str, ...]


@dataclass(frozen=True)
class Follows:
    """A command that follows the server's event feed until stopped (``events watch``): it prints
    one JSON line per event already in the feed."""

    args: tuple[str, ...]


@dataclass(frozen=True)
class Dispatches:
    """``events dispatch``: runs until stopped; the server delivers the pending events to the
    test's webhook receiver meanwhile."""

    args: tuple[str, ...]


Case = Works | OnServerHost | Serves | Follows | Dispatches


def cases(tmp: Path, hook: str = "http://127.0.0.1:9/hook") -> dict[str, Case]:
    """Each command's case, in the order they run (later ones use what earlier ones made);
    ``hook`` is the URL of the webhook receiver."""
    t = str(tmp)
    return {
        "list": Works((), "churn"),
        "webhooks add": Works((hook, "--events", "*", "--secret-file", f"{t}/secret"), "Added webhook 1"),
        "webhooks list": Works((), hook),
        "webhooks test": Works(("1",), "HTTP 200"),
        "info": Works(("--model-name", "churn@production"), "1.0.1"),
        "search": Works(("accuracy > 0.92",), "1.0.1"),
        "compare": Works(("--model-name", "churn"), "accuracy"),
        "history": Works((), "alias_set"),
        "save": Works(("--model-name", "new", "--model-file", f"{t}/model.joblib"), "Saved new version 1.0.0"),
        "load": Works(("--model-name", "churn", "--output", f"{t}/out.joblib"), "Wrote churn version 1.0.1"),
        "describe": Works(("--model-name", "churn", "the churn model"), "Described churn"),
        "alias set": Works(("--model-name", "churn", "--alias", "staging", "--version", "1.0.0"), "1.0.0"),
        "alias list": Works(("--model-name", "churn"), "staging"),
        "alias history": Works(("--model-name", "churn", "--alias", "staging"), "alias_set"),
        "alias rm": Works(("--model-name", "churn", "--alias", "staging"), "Removed churn@staging"),
        "tag set": Works(("--model-name", "churn", "owner", "ada"), "owner=ada"),
        "tag list": Works(("--model-name", "churn"), "ada"),
        "tag rm": Works(("--model-name", "churn", "owner"), "Removed tag owner"),
        "delete": Works(("--model-name", "fraud", "--version", "1"), "moved to the trash"),
        "restore": Works(("--model-name", "fraud", "--version", "1"), "Restored fraud version 1"),
        "prune": Works(("--model-name", "new", "--keep-last", "1"), "Moved 0 version(s)"),
        "purge": Works(("--yes",), "Purged 1 version(s)"),
        "verify": Works((), "all intact"),
        "doctor": Works((), "signed in as admin (admin)"),
        "policy set": Works(("--model-name", "churn", "--alias", "production", "--approvals", "1"), "approvals: 1"),
        "policy show": Works((), "approvals: 1"),
        "approve": Works(("churn", "1.0.1", "--for", "production"), "admin approved churn version 1.0.1"),
        "policy rm": Works(("--model-name", "churn", "--alias", "production"), "Removed the policy"),
        "import-mlflow": Works(
            ("--tracking-uri", f"sqlite:///{t}/mlflow/mlflow.db", "--model", "price"), "imported 2 version(s)"
        ),
        "users add": Works(("bob", "--role", "viewer", "--no-password"), "bob"),
        "users list": Works((), "bob"),
        "users role": Works(("bob", "writer"), "writer"),
        "users grant": Works(("bob", "churn*", "maintainer"), "churn*"),
        "users ungrant": Works(("bob", "churn*"), "churn*"),
        "users passwd": Works(("bob", "--password-stdin"), "bob", stdin="a long enough password\n"),
        "users token": Works(("bob",), "mkt_"),
        "users tokens": Works(("bob",), "never expires"),
        "users revoke": Works(("bob",), "Revoked 1 token(s)"),
        "users remove": Works(("bob",), "bob"),
        "keys list": Works((), "signs with"),
        "keys export-public": Works((), "BEGIN PUBLIC KEY"),
        "keys generate": Works(("--out", f"{t}/team.pem"), "fingerprint"),
        "keys trust": Works((f"{t}/team.pub",), "trusted "),
        "cache info": Works((), "entries"),
        "cache prune": Works((), "removed"),
        "cache clear": Works((), "removed"),
        "serve": Serves(("churn@production", "--poll", "0.05")),
        "gc": Works(("--dry-run",), "would remove"),
        "reindex": Works(("--yes",), "Reindexed"),
        # loads on the client, records on the server (admins)
        "backfill-params": Works(("--dry-run",), "checked"),
        "sign": Works(("--all",)),
        "keys forget-seen": Works(()),
        "copy": Works(("--to-models-dir", f"{t}/copy"), "copied 6 version(s)"),
        "export": Works(("--model-name", "churn", "-o", f"{t}/out.bundle")),
        "export-signed": Works(("--model-name", "churn", "--out", f"{t}/signed"), "its signature"),
        "import": Works((f"{t}/churn.bundle",)),
        "events dispatch": Dispatches(("--poll", "0.05")),
        "events watch": Follows(("--since", "0", "--poll", "0.05")),
        "webhooks deliveries": Works(("1", "--status", "delivered"), "delivered"),
        "webhooks redeliver": Works((), "queued again"),  # the newest delivery: its id is added below
        "webhooks rm": Works(("1",), "Removed webhook 1"),
        "server": OnServerHost(("--port", "0")),
        "ui": OnServerHost(("--port", "0")),
    }


def command_paths(group: click.Group = cli, prefix: str = "") -> Iterator[str]:
    """Every command of the click tree, as typed after ``modelkeep`` (``"alias set"``)."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        if isinstance(command, click.Group):
            yield from command_paths(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}"


def test_every_command_has_a_case(tmp_path: Path) -> None:
    assert sorted(cases(tmp_path)) == sorted(command_paths())


def _start(args: list[str], env: dict[str, str], cwd: Path, stdout: Any, stderr: Any) -> subprocess.Popen[bytes]:
    """``modelkeep ARGS`` as a process of its own, with ``env`` added to this one's environment."""
    return subprocess.Popen(
        [sys.executable, "-m", "modelkeep", *args], stdout=stdout, stderr=stderr, env={**os.environ, **env}, cwd=cwd
    )


def _serve(args: tuple[str, ...], env: dict[str, str], cwd: Path) -> str:
    """Start ``modelkeep serve`` on the server's registry; what went wrong, or ``""`` once it answers."""
    port = free_port()
    log = cwd / "serve.log"
    with log.open("wb") as out:
        process = _start(["serve", *args, "--port", str(port)], env, cwd, out, subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                if answer.status_code == 200 and "1.0.1" in answer.text:
                    time.sleep(1)  # a few alias polls (--poll 0.05): each one a request to the server
                    said = log.read_text(errors="replace")
                    if "cannot resolve" in said or "Error" in said:
                        return f"serve complains while following the alias: {said[-2000:]}"
                    return ""
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        return f"serve did not answer /health with version 1.0.1: {log.read_text(errors='replace')[-2000:]}"
    finally:
        stop_process(process)


def _follow(path: str, args: tuple[str, ...], env: dict[str, str], cwd: Path) -> str:
    """Run a feed-following command until it prints an event as a JSON line; what went wrong, or ``""``."""
    import json
    import select

    process = _start([*path.split(), *args], env, cwd, subprocess.PIPE, subprocess.PIPE)
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 60)
        line = process.stdout.readline() if ready else b""
        try:
            event = json.loads(line)
        except ValueError:
            return f"printed no event line: {line[:300]!r}"
        return "" if isinstance(event, dict) and "id" in event and "type" in event else f"not an event: {event!r}"
    finally:
        stop_process(process)


def _dispatch(args: tuple[str, ...], env: dict[str, str], cwd: Path, receiver: Receiver) -> str:
    """Run ``events dispatch`` until the receiver has an event besides the ping; what went wrong, or ``""``."""
    process = _start(["events", "dispatch", *args], env, cwd, subprocess.PIPE, subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if any(e["type"] != "ping" for e in receiver.events()):
                return ""
            time.sleep(0.05)
    finally:
        stop_process(process)
    said = process.stdout.read().decode(errors="replace")[-1000:] if process.stdout else ""
    return f"no event reached the webhook: {said!r}"


def test_every_command_through_a_server(
    http_server: HttpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a command writing beside the working directory writes here
    with http_server.direct() as p:
        fill(p)
        export_bundle(p, "churn", tmp_path / "churn.bundle")
    joblib.dump({"w": 9}, tmp_path / "model.joblib")
    shutil.copytree(MLFLOW_SQLITE, tmp_path / "mlflow")
    (tmp_path / "secret").write_text("a webhook secret\n")
    env = {"MODELKEEP_REGISTRY_URL": http_server.url, "MODELKEEP_TOKEN": http_server.token}
    runner = CliRunner()
    problems: list[str] = []
    receiver = Receiver()
    for path, case in cases(tmp_path, receiver.url).items():
        if isinstance(case, Dispatches):
            if failed := _dispatch(case.args, env, tmp_path, receiver):
                problems.append(f"{path}: {failed}")
            continue
        if isinstance(case, Serves):
            if failed := _serve(case.args, env, tmp_path):
                problems.append(f"{path}: {failed}")
            continue
        if isinstance(case, Follows):
            if failed := _follow(path, case.args, env, tmp_path):
                problems.append(f"{path}: {failed}")
            continue
        args = [*path.split(), *case.args]
        if path == "webhooks redeliver":
            with http_server.direct() as p:
                args += [d.delivery_id for d in p.webhooks.deliveries(limit=1)]
        stdin = case.stdin if isinstance(case, Works) else None
        done = runner.invoke(cli, args, prog_name="modelkeep", env={**env, "MODELKEEP_MODELS_DIR": None}, input=stdin)
        said = f"exit {done.exit_code}, stdout {done.stdout[-300:]!r}, stderr {done.stderr[-600:]!r}"
        if "Traceback" in done.output or (done.exception and not isinstance(done.exception, SystemExit)):
            problems.append(f"{path}: crashed: {said} {done.exception!r}")
        elif isinstance(case, Works):
            if done.exit_code != 0 or case.shows not in done.stdout:
                problems.append(f"{path}: expected {case.shows!r}: {said}")
        else:
            line = done.stderr
            if not (
                done.exit_code == 1
                and line.startswith("Error: ")
                and line.count("\n") == 1
                and f"'modelkeep {path}'" in line
                and SERVER_HOST in line
            ):
                problems.append(f"{path}: expected one line naming the command and the remedy: {said}")
    assert not problems, "\n".join(problems)
    # what the commands did is on the server's registry
    with http_server.direct() as p:
        assert p.list_models() == ["churn", "fraud", "new", "price"]
        assert p.list_versions("fraud") == ["1"] and p.list_trash() == []
        assert p.get_description("churn") == "the churn model"
        assert p.get_aliases("churn") == {"production": "1.0.1"} and "owner" not in p.get_tags("churn")
        assert p.users.get("bob") is None
        assert p.history(model_name="new")[-1].actor == "admin"
    assert joblib.load(tmp_path / "out.joblib") == {"w": 2}
    receiver.stop()
    # the webhook was signed with the secret the client read, which the server kept for it
    assert receiver.received and all(r.signed_by(b"a webhook secret") for r in receiver.received)
    assert (tmp_path / "copy").is_dir() and (tmp_path / "signed.sig").is_file()
