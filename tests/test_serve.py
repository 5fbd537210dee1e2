"""``modelkeep serve``: a real server process on a free loopback port, over a real registry.

Every accepted body format against a local ``predict``; each kind of bad body (400/422, the
server stays up); an alias moved under a steady stream of requests; a tampered new version
(the server stays on the old one and says it is behind); ``--workers 2`` and batching;
tokens and the Host check; Ctrl-C (SIGINT) ends each server with exit code 0.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelkeep import ModelPersistence
from modelkeep.cli import cli

POLL = 0.2
JSON = {"content-type": "application/json"}


def _data() -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"tenure": rng.uniform(0, 60, 200), "calls": rng.integers(0, 9, 200)})
    y = ((X.tenure < 20) | (X.calls > 6)).astype(int)
    return X, y


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One per-user config folder (one signing key) for the module: its servers outlive a test."""
    return tmp_path_factory.mktemp("serve-config") / "modelkeep"


@pytest.fixture(autouse=True)
def shared_key(private_config_dir: Path, config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELKEEP_CONFIG_DIR", str(config_dir))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, config_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """``churn`` 1 and 2 (2 answers the opposite of 1), ``production`` -> 1; the fitted models by version."""
    os.environ["MODELKEEP_CONFIG_DIR"] = str(config_dir)  # module scope: no monkeypatch; each test sets it too
    folder = tmp_path_factory.mktemp("serve") / "models"
    X, y = _data()
    models = {
        "1": make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y),
        "2": make_pipeline(StandardScaler(), LogisticRegression()).fit(X, 1 - y),
    }
    with ModelPersistence(models_dir=folder) as p:
        for version, model in models.items():
            p.save(model, "churn", version, input_example=X.head(5))
        p.set_alias("churn", "production", "1")
    yield folder, models


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A ``modelkeep serve`` child process; :meth:`stop` sends SIGINT and checks it exits cleanly."""

    def __init__(self, folder: Path, *args: str, ready: int = 200, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder.parent / f"serve-{self.port}.log"
        cmd = [sys.executable, "-m", "modelkeep", "--models-dir", str(folder), "serve", *args]
        self.proc = subprocess.Popen(
            [*cmd, "--port", str(self.port)],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.client = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the server exited: {self.output()}"
            try:
                if self.client.get("/health", headers=self.auth()).status_code == ready:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"/health never answered {ready}: {self.output()}")

    def auth(self) -> dict[str, str]:
        return {}

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.client.close()
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=30)
        assert code == 0, self.output()
        assert "modelkeep serve stopped." in self.output()


@pytest.fixture(scope="module")
def server(registry: tuple[Path, dict[str, Any]]) -> Iterator[Server]:
    """A server on ``churn@1`` (pinned) that allows predict_proba and takes bodies up to 20 kB."""
    s = Server(registry[0], "churn@1", "--method", "predict_proba", "--max-body", "20000")
    yield s
    s.stop()


def _post(client: httpx.Client, body: Any, path: str = "/invocations", **kw: Any) -> httpx.Response:
    return client.post(path, content=json.dumps(body) if not isinstance(body, (str, bytes)) else body, **kw)


def test_every_body_format_answers_as_a_local_predict(server: Server, registry: tuple[Path, dict[str, Any]]) -> None:
    X, _ = _data()
    X = X.head(7)
    model = registry[1]["1"]
    want = model.predict(X).tolist()
    rows = X.to_dict(orient="records")
    bodies: dict[str, tuple[Any, dict[str, str]]] = {
        "dataframe_split": ({"dataframe_split": json.loads(X.to_json(orient="split", index=False))}, JSON),
        "dataframe_records": ({"dataframe_records": rows}, JSON),
        "records, keys in another order": ({"dataframe_records": [dict(reversed(r.items())) for r in rows]}, JSON),
        "instances as rows": ({"instances": X.values.tolist()}, JSON),
        "instances as records": ({"instances": rows}, JSON),
        "inputs as columns": ({"inputs": X.to_dict(orient="list")}, JSON),
        "csv": (X.to_csv(index=False), {"content-type": "text/csv"}),
    }
    for what, (body, headers) in bodies.items():
        r = _post(server.client, body, headers=headers)
        assert r.status_code == 200, (what, r.text)
        assert r.json() == {"predictions": want}, what
        assert r.headers["x-model-version"] == "1"
    r = _post(server.client, bodies["dataframe_split"][0], "/predict?method=predict_proba", headers=JSON)
    assert r.status_code == 200, r.text
    assert np.allclose(r.json()["predictions"], model.predict_proba(X))


def test_bad_bodies_get_400_or_422_and_the_server_stays_up(server: Server) -> None:
    cols = ["tenure", "calls"]
    cases: list[tuple[str, Any, dict[str, str], int, str]] = [
        ("malformed JSON", '{"dataframe_split": ', JSON, 400, "malformed JSON"),
        ("wrong orient", {"dataframe_splat": {"columns": cols, "data": [[1.0, 2]]}}, JSON, 400, "exactly one of"),
        ("not an object", [[1.0, 2]], JSON, 400, "not an object"),
        ("NaN where not nullable", {"dataframe_records": [{"tenure": None, "calls": 1}]}, JSON, 400, "tenure"),
        ("oversized body", {"instances": [[1.0, 2]] * 3000}, JSON, 400, "--max-body"),
        ("content type", "tenure=1", {"content-type": "application/x-www-form-urlencoded"}, 400, "text/csv"),
        ("missing column", {"dataframe_split": {"columns": ["tenure"], "data": [[1.0]]}}, JSON, 422, "calls"),
        ("extra column", {"dataframe_records": [{"tenure": 1.0, "calls": 2, "zip": 3}]}, JSON, 422, "zip"),
        ("misordered", {"dataframe_split": {"columns": ["calls", "tenure"], "data": [[2, 1.0]]}}, JSON, 422, "order"),
        ("unsafe cast", {"dataframe_records": [{"tenure": 1.0, "calls": 2.5}]}, JSON, 422, "calls"),
        ("text for numbers", {"dataframe_records": [{"tenure": "long", "calls": 2}]}, JSON, 422, "tenure"),
        ("row width", {"instances": [[1.0, 2, 3]]}, JSON, 422, "expected 2 values"),
        ("method not allowed", {"instances": [[1.0, 2]]}, JSON, 400, "--method decision_function"),
    ]
    for what, body, headers, status, says in cases:
        path = "/predict?method=decision_function" if what == "method not allowed" else "/invocations"
        r = _post(server.client, body, path, headers=headers)
        assert r.status_code == status, (what, r.text)
        assert says in r.json()["error"] or says in json.dumps(r.json()), (what, r.json())
        if status == 422:
            assert r.json()["expected_columns"] == ["tenure", "calls"]
    # The model itself fails on infinity (the signature allows any float): a 500 naming the error.
    r = _post(
        server.client, '{"dataframe_split": {"columns": ["tenure", "calls"], "data": [[Infinity, 1]]}}', headers=JSON
    )
    assert r.status_code == 500 and "ValueError" in r.json()["error"], r.text
    assert server.client.get("/health").json()["status"] == "ok"
    assert _post(server.client, {"instances": [[1.0, 2]]}, headers=JSON).status_code == 200
    metrics = server.client.get("/metrics").text
    assert 'modelkeep_serve_errors_total{endpoint="invocations",status="422"}' in metrics
    assert 'modelkeep_serve_errors_total{endpoint="invocations",status="500"} 1.0' in metrics


def _tamper(folder: Path, version: str) -> None:
    with ModelPersistence(models_dir=folder) as p:
        key = p.get_version("churn", version).artifact.key  # type: ignore[union-attr]
        path = p.store.local_path(key)
    assert path is not None
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_alias_moves_under_load_tampered_version_is_refused_rollback_works(
    registry: tuple[Path, dict[str, Any]],
) -> None:
    folder, models = registry
    X, _ = _data()
    X = X.head(20)
    body = {"dataframe_split": json.loads(X.to_json(orient="split", index=False))}
    answers = {v: m.predict(X).tolist() for v, m in models.items()}
    s = Server(folder, "churn@production", "--poll", str(POLL), "--require-signatures")
    p = ModelPersistence(models_dir=folder)
    failures: list[str] = []
    seen: list[tuple[float, str]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            while not stop.is_set():
                r = _post(c, body, headers=JSON)
                version = r.headers.get("x-model-version", "?")
                if r.status_code != 200 or r.json()["predictions"] != answers.get(version):
                    failures.append(f"{r.status_code} {version} {r.text[:200]}")
                seen.append((time.monotonic(), version))

    def wait_for(check: Any, what: str) -> None:
        deadline = time.monotonic() + 30
        while not check():
            assert time.monotonic() < deadline, f"{what}: {s.output()}"
            time.sleep(0.05)

    threads = [threading.Thread(target=client) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: len(seen) > 20, "requests flow")
        moved = time.monotonic()
        p.set_alias("churn", "production", "2")
        wait_for(lambda: any(v == "2" for _, v in seen), "the server switches to version 2")
        switched = min(t for t, v in seen if v == "2")
        print(f"switched {switched - moved:.3f} s after the alias moved (poll {POLL} s)")
        time.sleep(3 * POLL)
        stop.set()
        for t in threads:
            t.join()
        assert not failures, failures[:5]
        # Once switched, only version 2 answers (requests in flight finished on 1 just before).
        assert all(v == "2" for t, v in seen if t > switched + 0.5)
        info = s.client.get("/model").json()
        assert (info["version"], info["alias"], info["reloads"], info["behind"]) == ("2", "production", 1, None)
        assert info["signature"]["status"] == "trusted" and info["input_signature"]["columns"][0]["name"] == "tenure"
        metrics = s.client.get("/metrics").text
        assert 'modelkeep_serve_live_version{model="churn",version="2"} 1.0' in metrics
        assert 'version="1"' not in metrics
        assert "modelkeep_serve_reloads_total 1.0" in metrics

        # A new version whose bytes were rewritten after save: never swapped in.
        # (other bytes than 1 and 2: identical bytes would be hard-linked, and the rewrite would hit them too)
        Xt, yt = _data()
        p.save(make_pipeline(StandardScaler(), LogisticRegression(C=0.5)).fit(Xt, yt), "churn", "3", input_example=X)
        _tamper(folder, "3")
        p.set_alias("churn", "production", "3")
        wait_for(lambda: s.client.get("/health").json()["status"] == "behind", "health says behind")
        health = s.client.get("/health").json()
        assert health["version"] == "2" and health["behind"]["version"] == "3"
        assert "IntegrityError" in health["behind"]["reason"]
        r = _post(s.client, body, headers=JSON)
        assert r.headers["x-model-version"] == "2" and r.json()["predictions"] == answers["2"]
        assert "modelkeep_serve_behind 1.0" in s.client.get("/metrics").text
        assert "version 3, which cannot be served" in s.output()

        # A version signed by a key this server does not trust: refused under --require-signatures.
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MODELKEEP_CONFIG_DIR", str(folder.parent / "someone-else"))
            with ModelPersistence(models_dir=folder) as other:
                other.save(make_pipeline(StandardScaler()).fit(Xt), "churn", "4")
        assert p.signature_status("churn", "4").status == "untrusted"
        p.set_alias("churn", "production", "4")
        wait_for(lambda: (s.client.get("/health").json().get("behind") or {}).get("version") == "4", "refuses 4")
        assert "--require-signatures" in s.client.get("/health").json()["behind"]["reason"]
        assert s.client.get("/model").json()["version"] == "2"

        # Rollback is moving the alias back.
        p.set_alias("churn", "production", "1")
        wait_for(lambda: s.client.get("/health").json() == {"status": "ok", "version": "1"}, "rolled back")
        assert _post(s.client, body, headers=JSON).json()["predictions"] == answers["1"]
        assert "modelkeep_serve_behind 0.0" in s.client.get("/metrics").text
    finally:
        stop.set()
        p.set_alias("churn", "production", "1")
        p.close()
        s.stop()


def test_two_workers_batching_tokens_and_host_check(registry: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """One server with two pre-forked workers, batching and a token file (one start instead of three)."""
    folder, models = registry
    X, _ = _data()
    token = "tok_" + os.urandom(16).hex()
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# serving clients\n{token}\n")
    with ModelPersistence(models_dir=folder) as p:
        p.users.add("ci", None, "viewer")
        user_token = p.users.new_token("ci")
    args = ["--workers", "2", "--batch-max-rows", "64", "--batch-wait-ms", "20", "--token-file", str(token_file)]
    args += ["--poll", str(POLL)]
    # TMPDIR: where the server makes its private metrics folder, so the test can see it go on exit.
    s = Server(folder, "churn@production", *args, env={"TMPDIR": str(tmp_path)})
    auth = {**JSON, "authorization": f"Bearer {token}"}
    results: dict[int, Any] = {}

    def one(i: int) -> None:
        part = X.iloc[i * 5 : i * 5 + 1 + i % 5]
        if i % 7 == 3:  # infinity makes the model raise: that request alone gets the 500
            body: Any = '{"dataframe_split": {"columns": ["tenure", "calls"], "data": [[Infinity, 1]]}}'
        else:
            body = {"dataframe_split": json.loads(part.to_json(orient="split", index=False))}
        with httpx.Client(base_url=s.url, timeout=30) as c:
            r = _post(c, body, headers=auth)
        results[i] = (r.status_code, r.json(), part)

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, (status, answer, part) in sorted(results.items()):
            if i % 7 == 3:
                assert status == 500 and "ValueError" in answer["error"], answer
            else:
                assert status == 200, answer
                assert answer["predictions"] == models["1"].predict(part).tolist(), i
        _metrics_are_summed_over_workers(s, tmp_path, auth, sent=27, rows=sum(1 + i % 5 for i in results if i % 7 != 3))
        _alias_move_shows_once_in_metrics(s, folder, auth)

        body = {"instances": [[1.0, 2]]}
        assert _post(s.client, body, headers=JSON).status_code == 401
        r = _post(s.client, body, headers={**JSON, "authorization": "Bearer not-the-token-at-all"})
        assert r.status_code == 401 and "unknown" in r.json()["error"]
        assert s.client.get("/model").status_code == 401
        assert s.client.get("/metrics").status_code == 401
        for good in (token, user_token):
            r = _post(s.client, body, headers={**JSON, "authorization": f"Bearer {good}"})
            assert r.status_code == 200, r.text
        assert s.client.get("/health").status_code == 200  # probes need no token
        # DNS rebinding: a page on another name that resolves to 127.0.0.1 still sends its own Host.
        r = s.client.get("/health", headers={"host": "attacker.example"})
        assert r.status_code == 400 and "--allowed-host attacker.example" in r.text
    finally:
        s.stop()
        with ModelPersistence(models_dir=folder) as p:
            p.users.remove("ci")
            p.set_alias("churn", "production", "1")
    assert not list(tmp_path.glob("modelkeep-serve-metrics-*")), "the metrics folder outlived the server"


def _sample(text: str, line_start: str) -> float:
    """The value of the one sample line of ``text`` that starts with ``line_start`` (0 when absent)."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start + " ")]
    assert len(values) <= 1, values
    return values[0] if values else 0.0


OK_200 = 'modelkeep_serve_requests_total{endpoint="invocations",status="200"}'


def _per_worker_requests(tmp_path: Path) -> list[float]:
    """Each worker's own count of 200s on /invocations, read from its file in the shared folder."""
    from prometheus_client.multiprocess import MultiProcessCollector

    (folder,) = tmp_path.glob("modelkeep-serve-metrics-*")
    counts = []
    for f in sorted(folder.glob("counter_*.db")):
        n = 0.0
        for metric in MultiProcessCollector.merge([str(f)], accumulate=False):
            for sample in metric.samples:
                if sample.name == "modelkeep_serve_requests_total" and sample.labels == {
                    "endpoint": "invocations",
                    "status": "200",
                }:
                    n += sample.value
        counts.append(n)
    return counts


def _metrics_are_summed_over_workers(s: Server, tmp_path: Path, auth: dict[str, str], *, sent: int, rows: int) -> None:
    """Whichever worker answers /metrics, it reports every worker's requests (and both workers answered some)."""
    body = {"instances": [[1.0, 2]]}
    for _ in range(200):  # new connections until both workers have answered (the kernel picks the worker)
        if len(_per_worker_requests(tmp_path)) == 2 and min(_per_worker_requests(tmp_path)) > 0:
            break
        with httpx.Client(base_url=s.url, timeout=30) as c:
            assert _post(c, body, headers=auth).status_code == 200
        sent += 1
        rows += 1
    per_worker = _per_worker_requests(tmp_path)
    assert len(per_worker) == 2 and min(per_worker) > 0, per_worker
    for _ in range(6):  # fresh connections: the scrapes land on either worker
        with httpx.Client(base_url=s.url, timeout=30) as c:
            text = c.get("/metrics", headers=auth).text
        assert _sample(text, OK_200) == sent, (per_worker, text)
        assert _sample(text, 'modelkeep_serve_errors_total{endpoint="invocations",status="500"}') == 5
        assert _sample(text, "modelkeep_serve_rows_predicted_total") == rows
        assert _sample(text, 'modelkeep_serve_request_seconds_count{endpoint="invocations"}') == sent + 5
        assert _sample(text, 'modelkeep_serve_live_version{model="churn",version="1"}') == 1


def _alias_move_shows_once_in_metrics(s: Server, folder: Path, auth: dict[str, str]) -> None:
    """Both workers follow the alias; /metrics shows one live version and one reload, not one per worker."""
    moved = time.time()
    with ModelPersistence(models_dir=folder) as p:
        p.set_alias("churn", "production", "2")
    deadline = time.monotonic() + 30
    while True:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            text = c.get("/metrics", headers=auth).text
        if 'version="1"' not in text:
            break
        assert time.monotonic() < deadline, text
        time.sleep(POLL)
    for _ in range(4):
        with httpx.Client(base_url=s.url, timeout=30) as c:
            text = c.get("/metrics", headers=auth).text
            assert c.get("/model", headers=auth).json()["version"] == "2"
        assert _sample(text, 'modelkeep_serve_live_version{model="churn",version="2"}') == 1
        assert _sample(text, "modelkeep_serve_reloads_total") == 1
        assert _sample(text, "modelkeep_serve_last_reload_timestamp_seconds") >= moved - 1
        assert _sample(text, "modelkeep_serve_behind") == 0


def test_health_is_503_until_a_model_can_be_served(registry: tuple[Path, dict[str, Any]]) -> None:
    """The alias points at a tampered version when the server starts: /health (and every model
    endpoint) answers 503 and says why; once the alias moves to a good version, 200."""
    folder, models = registry
    X, y = _data()
    with ModelPersistence(models_dir=folder) as p:
        p.save(make_pipeline(StandardScaler(), LogisticRegression(C=0.3)).fit(X, y), "churn", "6", input_example=X)
        _tamper(folder, "6")
        p.set_alias("churn", "staging", "6")
    s = Server(folder, "churn@staging", "--poll", str(POLL), ready=503)
    try:
        health = s.client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "failed", health.text
        assert "IntegrityError" in health.json()["error"]
        body = {"dataframe_split": json.loads(X.head(3).to_json(orient="split", index=False))}
        assert _post(s.client, body, headers=JSON).status_code == 503
        assert s.client.get("/model").status_code == 503
        assert s.proc.poll() is None
        with ModelPersistence(models_dir=folder) as p:
            p.set_alias("churn", "staging", "1")
        deadline = time.monotonic() + 30
        while (r := s.client.get("/health")).status_code != 200:
            assert r.status_code == 503, r.text
            assert time.monotonic() < deadline, s.output()
            time.sleep(POLL / 2)
        assert r.json() == {"status": "ok", "version": "1"}
        r = _post(s.client, body, headers=JSON)
        assert r.status_code == 200 and r.json()["predictions"] == models["1"].predict(X.head(3)).tolist()
        assert 'modelkeep_serve_live_version{model="churn",version="1"} 1.0' in s.client.get("/metrics").text
    finally:
        with ModelPersistence(models_dir=folder) as p:
            p.delete_alias("churn", "staging")
        s.stop()


def test_other_interfaces_need_tokens(registry: tuple[Path, dict[str, Any]]) -> None:
    folder, _ = registry
    result = CliRunner().invoke(cli, ["--models-dir", str(folder), "serve", "churn@production", "--host", "0.0.0.0"])
    assert result.exit_code != 0
    assert "refusing to serve on 0.0.0.0 without tokens" in result.output
    result = CliRunner().invoke(cli, ["--models-dir", str(folder), "serve", "churn@nonesuch"])
    assert result.exit_code != 0 and "nonesuch" in result.output and "Traceback" not in result.output


def test_a_crafted_native_version_never_takes_the_server_down(registry: tuple[Path, dict[str, Any]]) -> None:
    """Issue 30: someone who can write the store and the index points ``production`` at a
    version whose pickled decision tree has a child a billion nodes past its node array (plain
    ``joblib.load`` + ``predict`` of it dies with SIGSEGV: tests/test_native_state.py). The
    server loads new targets through ``ModelPersistence.load`` with the default quarantine, so the
    version is refused before it is swapped in: the server keeps answering with the old version
    and says it is behind."""
    from ._native_fuzz import tree_attack
    from .test_tampering import forge_record

    folder, models = registry
    X, _ = _data()
    body = {"dataframe_split": json.loads(X.head(5).to_json(orient="split", index=False))}
    s = Server(folder, "churn@production", "--poll", str(POLL))
    p = ModelPersistence(models_dir=folder, compress=False)
    try:
        p.save({"placeholder": 1}, "churn", "9")
        payload, _x = tree_attack()
        forge_record(p, "churn", "9", payload, globals=[])  # unsigned, as the attacker holds no key
        p.set_alias("churn", "production", "9")
        deadline = time.monotonic() + 60
        while (s.client.get("/health").json().get("behind") or {}).get("version") != "9":
            assert s.proc.poll() is None, f"the server died: {s.output()}"
            assert time.monotonic() < deadline, s.output()
            time.sleep(0.1)
        assert s.proc.poll() is None
        r = _post(s.client, body, headers=JSON)
        assert r.status_code == 200 and r.headers["x-model-version"] == "1"
        assert r.json()["predictions"] == models["1"].predict(X.head(5)).tolist()
        assert "UnsafeModelError" in s.client.get("/health").json()["behind"]["reason"]
    finally:
        p.set_alias("churn", "production", "1")
        p.close()
        s.stop()


def test_all_float_signatures_read_number_rows_as_one_array_and_refuse_the_rest() -> None:
    """The short path for a signature of float64 columns (one array, no per-column inference) gives
    the frame the long path gives, and sends text, nulls and wrong widths to the same 400/422s."""
    from modelkeep import input_signature
    from modelkeep.serve.bodies import BadInput, check, parse

    X = pd.DataFrame({"a": [0.5, 1.0], "b": [2.0, -3.25], "c": [1e300, 0.0]})
    sig = input_signature.infer(object(), X)
    assert all(c["dtype"] == "float64" for c in sig["columns"])

    def read(body: Any) -> Any:
        return check(parse(json.dumps(body).encode(), "application/json", sig), sig)

    rows = [[0.5, 2, 1e300], [1, -3.25, 0]]  # ints among floats: JSON writes 1.0 as 1
    want = pd.DataFrame(rows, columns=["a", "b", "c"]).astype("float64")
    for body in ({"dataframe_split": {"columns": ["a", "b", "c"], "data": rows}}, {"instances": rows}):
        got = read(body)
        assert list(got.dtypes) == ["float64"] * 3
        pd.testing.assert_frame_equal(got, want)
    cases = [
        ([[0.5, "2", 1.0]], 422, "b"),  # text is never read as a number
        ([[0.5, None, 1.0]], 400, "b"),  # a null where the signature says never missing
        ([[0.5, 2.0]], 400, "columns"),  # a row of the wrong width
    ]
    for data, status, says in cases:
        with pytest.raises(BadInput) as caught:
            read({"dataframe_split": {"columns": ["a", "b", "c"], "data": data}})
        assert caught.value.status == status and says in json.dumps(caught.value.detail), caught.value.detail
    with pytest.raises(BadInput) as caught:
        read({"dataframe_split": {"columns": ["b", "a", "c"], "data": rows}})
    assert caught.value.status == 422 and caught.value.detail["reordered"]
