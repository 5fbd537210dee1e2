"""``modelkeep serve`` against ``mlflow models serve``, same models, same machine, one run.

For a small sklearn pipeline and a ~100 MB random forest (``--forest-trees``, 320 by default;
the artifact size is printed):

* start-up: from process start to the first 200 answer to a one-row ``/invocations``, next to
  the floor measured in the same round (a fresh interpreter importing pandas and the model's
  scikit-learn modules, which any Python server of the model must do);
* requests per second and p50/p99 latency at concurrency 1 and 16: one-row ``dataframe_split``
  JSON bodies over 1 or 16 keep-alive connections from one small asyncio HTTP/1.1 client (the
  same client for both servers, cheap enough that the servers, not the client, are measured);
* modelkeep with batching (``--batch-max-rows 64 --batch-wait-ms 2``).

Each server is started once untimed (both read their imports from a warm page cache), then
``--rounds`` times, interleaved, with the same ``--workers`` on both sides (MLflow's default is 1).

MLflow runs from its own virtual environment (``--mlflow-python``, default
``/tmp/mlflow-venv/bin/python``; create it with ``python -m venv /tmp/mlflow-venv &&
/tmp/mlflow-venv/bin/pip install mlflow scikit-learn pandas``): the model is fitted there from the
same seed, logged to a SQLite MLflow registry, aliased ``production``, and served with
``mlflow models serve -m models:/NAME@production --env-manager local``. Without that venv,
modelkeep is measured alone and the output says so.

    PYTHONPATH=src python bench/serve.py [--seconds 4] [--rounds 2] [--workers 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

#: Fits the bench models from a seed; run by this interpreter and by MLflow's.
FIT = """
import numpy as np, pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

def fit(kind, trees):
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(20000, 20)), columns=[f"f{i}" for i in range(20)])
    y = (X.f0 + X.f1 * X.f2 + rng.normal(scale=0.5, size=len(X)) > 0).astype(int)
    if kind == "pipeline":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y), X
    return RandomForestClassifier(n_estimators=trees, min_samples_leaf=1, n_jobs=1, random_state=0).fit(X, y), X
"""

MLFLOW_SETUP = (
    FIT
    + """
import sys, mlflow
from mlflow.models import infer_signature
mlflow.set_tracking_uri(sys.argv[1])
kind, trees = sys.argv[2], int(sys.argv[3])
model, X = fit(kind, trees)
with mlflow.start_run():
    info = mlflow.sklearn.log_model(
        model,
        name="model",
        registered_model_name=kind,
        signature=infer_signature(X, model.predict(X.head(100))),
        serialization_format="cloudpickle",  # MLflow 3's skops default refuses forests without a trust list
    )
client = mlflow.MlflowClient()
version = client.search_model_versions(f"name='{kind}'")[0].version
client.set_registered_model_alias(kind, "production", version)
print("ok")
"""
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _body(columns: list[str], row: list[float]) -> bytes:
    return json.dumps({"dataframe_split": {"columns": columns, "data": [row]}}).encode()


def _start(
    cmd: list[str], port: int, body: bytes, env: dict[str, str], log: Path
) -> tuple[subprocess.Popen[bytes], float]:
    """Start a server; seconds from process start to the first 200 on /invocations."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/invocations"
    with httpx.Client(timeout=60) as c:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
            try:
                r = c.post(url, content=body, headers={"content-type": "application/json"})
                if r.status_code == 200:
                    return proc, time.perf_counter() - started
            except httpx.TransportError:
                pass
            if time.perf_counter() - started > 300:
                raise RuntimeError(f"no 200 within 300 s: {log.read_text()[-2000:]}")
            time.sleep(0.02)


def _request(port: int, body: bytes) -> bytes:
    return (
        f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 response: (status, whether the server keeps the connection open)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("connection", "").lower() != "close"


def _load(port: int, body: bytes, concurrency: int, seconds: float) -> dict[str, float]:
    """Requests/s and latency percentiles of one-row requests over ``concurrency`` keep-alive connections.

    The client is a small asyncio HTTP/1.1 loop (one process, one thread): it costs the shared
    cores far less per request than a thread per connection with a full HTTP client would, so
    the figures measure the server more than the client. It is the same client for both servers.
    """
    request = _request(port, body)
    latencies: list[float] = []
    errors = [0]

    async def connection(stop: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                writer.write(request)
                status, keep = await _answer(reader)
                latencies.append(time.perf_counter() - t)
                if status != 200:
                    errors[0] += 1
                if not keep:
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    async def run() -> float:
        began = time.perf_counter()
        await asyncio.gather(*(connection(began + seconds) for _ in range(concurrency)))
        return time.perf_counter() - began

    took = asyncio.run(run())
    latencies.sort()
    return {
        "rps": len(latencies) / took,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "requests": len(latencies),
        "errors": errors[0],
    }


def _floor(python: str, modules: str, env: dict[str, str]) -> float:
    """Seconds for ``python`` to start and import what the model needs (no server can start faster)."""
    began = time.perf_counter()
    subprocess.run([python, "-c", f"import {modules}"], env=env, check=True)
    return time.perf_counter() - began


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(2)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _measure(name: str, cmd: list[str], port: int, body: bytes, env: dict[str, str], args: Any, log: Path) -> dict:
    proc, startup = _start(cmd, port, body, env, log)
    try:
        out = {"server": name, "startup_s": startup}
        for c in (1, 16):
            out[f"c{c}"] = _load(port, body, c, args.seconds)
        return out
    finally:
        _stop(proc)


NEEDS = {  # what each model's predict imports: the start-up floor
    "pipeline": "pandas, sklearn.pipeline, sklearn.linear_model, sklearn.preprocessing",
    "forest": "pandas, sklearn.ensemble",
}


def _mlflow_setup(args: Any, tmp: Path, env: dict[str, str], kind: str) -> tuple[list[str], dict[str, str]] | None:
    """Log ``kind`` to a SQLite MLflow registry, alias it; the command and env that serve it (None on failure)."""
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    venv_bin = str(Path(args.mlflow_python).parent)  # mlflow execs `uvicorn`: the venv's, not ours
    mlenv = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    mlenv.update(MLFLOW_TRACKING_URI=uri, PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}")
    setup = subprocess.run(
        [args.mlflow_python, "-c", MLFLOW_SETUP, uri, kind, str(args.forest_trees)],
        env=mlenv,
        cwd=tmp,
        capture_output=True,
        text=True,
    )
    if setup.returncode != 0:
        print(f"mlflow setup failed: {setup.stderr[-2000:]}", file=sys.stderr)
        return None
    cmd = [str(Path(venv_bin) / "mlflow"), "models", "serve", "-m", f"models:/{kind}@production"]
    cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-w", str(args.workers)]
    return cmd, mlenv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0, help="load duration per concurrency level")
    ap.add_argument("--forest-trees", type=int, default=320, help="320 trees make a ~100 MB joblib file")
    ap.add_argument("--mlflow-python", default="/tmp/mlflow-venv/bin/python")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--models", default="pipeline,forest", help="which models, comma-separated")
    ap.add_argument("--rounds", type=int, default=2, help="measure every server this many times, interleaved")
    ap.add_argument("--workers", type=int, default=1, help="workers of both servers (MLflow's default is 1)")
    args = ap.parse_args()

    from modelkeep import ModelPersistence

    namespace: dict[str, Any] = {}
    exec(FIT, namespace)
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELKEEP_")}
    env["MODELKEEP_CONFIG_DIR"] = str(tmp / "config")
    os.environ["MODELKEEP_CONFIG_DIR"] = env["MODELKEEP_CONFIG_DIR"]
    mlflow_ok = Path(args.mlflow_python).exists() and (
        subprocess.run([args.mlflow_python, "-c", "import mlflow, sklearn"], capture_output=True).returncode == 0
    )
    if not mlflow_ok:
        print(f"MLflow comparison not done: no usable MLflow at {args.mlflow_python}", file=sys.stderr)
    results: list[dict[str, Any]] = []
    p = ModelPersistence(tmp / "models", compress=False)  # uncompressed: mapped at load, shared by workers
    for kind in args.models.split(","):
        model, X = namespace["fit"](kind, args.forest_trees)
        p.save(model, kind, "1", input_example=X.head(5))
        p.set_alias(kind, "production", "1")
        size = p.get_version(kind, "1").artifact.size  # type: ignore[union-attr]
        print(f"{kind}: joblib artifact {size / 1e6:.1f} MB", flush=True)
        body = _body(list(X.columns), X.iloc[0].tolist())
        base = [sys.executable, "-m", "modelkeep", "--models-dir", str(tmp / "models"), "serve", f"{kind}@production"]
        servers: list[tuple[str, list[str], dict[str, str]]] = [
            ("modelkeep", [*base, "--workers", str(args.workers)], env),
            ("modelkeep, batching", [*base, "--workers", str(args.workers), "--batch-max-rows", "64"], env),
        ]
        ml = _mlflow_setup(args, tmp, env, kind) if mlflow_ok else None
        if ml is not None:
            servers.append(("mlflow models serve", *ml))
        for label, cmd, server_env in servers:  # one untimed start each: both read their imports from a warm cache
            port = _free_port()
            port_args = ["--port", str(port)] if label.startswith("modelkeep") else ["-p", str(port)]
            proc, _ = _start([*cmd, *port_args], port, body, server_env, tmp / "warm.log")
            _stop(proc)
        for round_ in range(1, args.rounds + 1):
            floor = _floor(sys.executable, NEEDS[kind], env)
            print(f"round {round_}: python + import {NEEDS[kind]}: {floor:.2f} s", flush=True)
            for label, cmd, server_env in servers:
                port = _free_port()
                port_args = ["--port", str(port)] if label.startswith("modelkeep") else ["-p", str(port)]
                row = _measure(label, [*cmd, *port_args], port, body, server_env, args, tmp / f"{kind}-{port}.log")
                row.update(model=kind, artifact_mb=size / 1e6, round=round_, floor_s=floor, workers=args.workers)
                results.append(row)
                print(json.dumps(row), flush=True)
    print()
    print(
        "| model | round | server | start-up to first 200 | c=1 req/s | c=1 p50 / p99 | c=16 req/s | c=16 p50 / p99 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        c1, c16 = r["c1"], r["c16"]
        print(
            f"| {r['model']} | {r['round']} | {r['server']} | {r['startup_s']:.2f} s | {c1['rps']:.0f} | "
            f"{c1['p50_ms']:.1f} / {c1['p99_ms']:.1f} ms | {c16['rps']:.0f} | "
            f"{c16['p50_ms']:.1f} / {c16['p99_ms']:.1f} ms |"
        )
    _ratios(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _ratios(results: list[dict[str, Any]]) -> None:
    """modelkeep against MLflow in each round: the issue's three targets."""
    print()
    print(
        "| model | round | modelkeep server | start-up vs MLflow (<= 0.2) | floor vs MLflow "
        "| c=16 req/s vs MLflow (>= 1.5) | c=16 p99 vs MLflow (<= 1) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        ml = [
            m
            for m in results
            if m["server"].startswith("mlflow") and (m["model"], m["round"]) == (r["model"], r["round"])
        ]
        if not ml or r["server"].startswith("mlflow"):
            continue
        m = ml[0]
        print(
            f"| {r['model']} | {r['round']} | {r['server']} | {r['startup_s'] / m['startup_s']:.2f}x | "
            f"{r['floor_s'] / m['startup_s']:.2f}x | {r['c16']['rps'] / m['c16']['rps']:.2f}x | "
            f"{r['c16']['p99_ms'] / m['c16']['p99_ms']:.2f}x |"
        )


if __name__ == "__main__":
    main()
