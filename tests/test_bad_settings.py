"""Bad team settings (issue 11): each fails with one stderr line naming the cause, and never hangs;
and ``modelkeep doctor`` finds each of them.

A loopback socket that accepts connections and never answers stands in for a hung S3 endpoint
and a hung PostgreSQL port; a port nobody listens on for an unreachable one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import pytest

from modelkeep.index.sql import SqlIndex
from tests.s3_server import AWS_ENV


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[Any] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept())
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


@pytest.fixture(scope="module")
def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run_cli(args: list[str], env: dict[str, str], tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    model_file = tmp_path / "model.joblib"
    joblib.dump({"a": 1}, model_file)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "modelkeep", *args],
        env={**os.environ, **AWS_ENV, **env},
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard, not a measurement
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - started
    print(f"{' '.join(args[:4])}: {elapsed:.1f} s: {result.stderr.strip()}")
    return result, elapsed


def s3_env(endpoint: str) -> dict[str, str]:
    return {"MODELKEEP_STORAGE_OPTIONS": json.dumps({"client_kwargs": {"endpoint_url": endpoint}})}


FAST = {"MODELKEEP_CONNECT_TIMEOUT": "2", "MODELKEEP_READ_TIMEOUT": "2"}


def save_args(models_dir: str, registry_url: str, tmp_path: Path) -> list[str]:
    return [
        "--models-dir",
        models_dir,
        "--registry-url",
        registry_url,
        "save",
        "--model-name",
        "m",
        "--model-file",
        str(tmp_path / "model.joblib"),
    ]


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and "[Errno" not in lines[0] and "Traceback" not in lines[0]
    return lines[0]


@pytest.mark.s3
def test_s3_endpoint_that_never_answers_fails_naming_the_timeout_settings(silent_port: int, tmp_path: Path) -> None:
    args = save_args("s3://bucket/models", f"sqlite:///{tmp_path / 'r.db'}", tmp_path)
    result, _ = run_cli(args, {**s3_env(f"http://127.0.0.1:{silent_port}"), **FAST}, tmp_path)
    line = one_error_line(result)
    assert "timeout" in line.lower() and "read timeout 2 s" in line and "MODELKEEP_READ_TIMEOUT" in line


def test_postgresql_port_that_never_answers_fails_naming_the_timeout_settings(silent_port: int, tmp_path: Path) -> None:
    args = save_args(str(tmp_path / "models"), f"postgresql://u@127.0.0.1:{silent_port}/db", tmp_path)
    result, _ = run_cli(args, FAST, tmp_path)
    line = one_error_line(result)
    assert "timeout" in line.lower() and "MODELKEEP_CONNECT_TIMEOUT" in line


@pytest.mark.s3
def test_s3_closed_port_fails_saying_it_retried(closed_port: int, tmp_path: Path) -> None:
    args = save_args("s3://bucket/models", f"sqlite:///{tmp_path / 'r.db'}", tmp_path)
    result, _ = run_cli(args, s3_env(f"http://127.0.0.1:{closed_port}"), tmp_path)
    line = one_error_line(result)
    assert "gave up after 2 attempts" in line and "endpoint" in line


@pytest.mark.s3
def test_missing_bucket_says_the_bucket_does_not_exist(moto_endpoint: str, tmp_path: Path) -> None:
    args = save_args("s3://no-such-bucket-mk/models", f"sqlite:///{tmp_path / 'r.db'}", tmp_path)
    result, _ = run_cli(args, s3_env(moto_endpoint), tmp_path)
    line = one_error_line(result)
    assert "the bucket 'no-such-bucket-mk' does not exist" in line
    assert "Model file not found" not in line


# -- doctor ---------------------------------------------------------------------------------------


def doctor(args: list[str], env: dict[str, str], tmp_path: Path) -> tuple[int, dict[str, Any]]:
    result, _ = run_cli([*args, "doctor", "--json"], env, tmp_path)
    return result.returncode, json.loads(result.stdout)


def failed(report: dict[str, Any]) -> dict[str, str]:
    return {c["check"]: c["detail"] for c in report["checks"] if not c["ok"]}


@pytest.mark.s3
def test_doctor_passes_on_a_working_team_registry(s3_bucket: Any, tmp_path: Path) -> None:
    args = ["--models-dir", s3_bucket.url(), "--registry-url", f"sqlite:///{tmp_path / 'r.db'}"]
    SqlIndex(args[-1]).close()  # the team's index exists (doctor checks it, and never creates it)
    code, report = doctor(args, {**s3_env(s3_bucket.endpoint_url), "MODELKEEP_SIGNING_KEY": "k" * 32}, tmp_path)
    assert code == 0 and report["ok"], report
    details = {c["check"]: c["detail"] for c in report["checks"]}
    assert "probe written and removed" in details["store"]
    assert details["signing key"] == "shared HMAC key from the environment (MODELKEEP_SIGNING_KEY)"
    assert [k for k in s3_bucket.object_keys() if "doctor" in k] == []  # the probe is gone
    text, _ = run_cli([*args, "doctor"], s3_env(s3_bucket.endpoint_url), tmp_path)
    assert len(text.stdout.strip().splitlines()) == len(report["checks"])  # one line per check


def test_doctor_reports_an_unreachable_registry_url(closed_port: int, tmp_path: Path) -> None:
    code, report = doctor(
        ["--models-dir", str(tmp_path / "m"), "--registry-url", f"postgresql://u@127.0.0.1:{closed_port}/db"],
        {},
        tmp_path,
    )
    assert code == 1
    assert "Connection refused" in failed(report)["index"]


@pytest.mark.s3
def test_doctor_reports_a_missing_bucket(moto_endpoint: str, tmp_path: Path) -> None:
    args = ["--models-dir", "s3://no-such-bucket-mk/m", "--registry-url", f"sqlite:///{tmp_path / 'r.db'}"]
    code, report = doctor(args, s3_env(moto_endpoint), tmp_path)
    assert code == 1
    assert "does not exist" in failed(report)["store"]


def test_doctor_reports_an_unwritable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, report = doctor(
        ["--models-dir", str(blocker / "models"), "--registry-url", f"sqlite:///{tmp_path / 'r.db'}"], {}, tmp_path
    )
    assert code == 1
    assert "cannot write" in failed(report)["store"]
