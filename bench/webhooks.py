"""Webhook latency: from an alias move's commit to its POST arriving at a receiver on loopback.

A real ``modelkeep events dispatch`` subprocess delivers to an ``http.server`` receiver in this
process. For each of ``--moves`` alias moves (a random 100-300 ms pause between them, so that
moves land at every phase of the poll), the time after ``set_alias`` returns (committed) is
compared with the time the receiver reads the POST. Rows:

* ``direct POST`` (the baseline): this process POSTs the same signed body itself right after
  the commit: the floor any delivery pays;
* ``dispatcher --poll P``: the dispatcher at the default poll interval and at a shorter one.

Each on SQLite and, with ``--pg-url``, on PostgreSQL (a schema of its own, dropped after).

    PYTHONPATH=src python bench/webhooks.py [--moves 200] [--pg-url postgresql://...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from modelkeep import ModelPersistence
from modelkeep.webhooks import delivery
from modelkeep.webhooks.settings import DispatchSettings

ROOT = Path(__file__).resolve().parent.parent


class Arrivals:
    """A loopback receiver that notes when each delivery (by history id) arrived."""

    def __init__(self) -> None:
        self.at: dict[int, float] = {}
        arrivals = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                arrivals.at.setdefault(int(json.loads(body)["id"]), time.time())
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50_ms": statistics.median(ordered) * 1000, "p99_ms": p99 * 1000, "n": len(ordered)}


def _moves(p: ModelPersistence, n: int, after_commit: Any) -> dict[int, float]:
    """``n`` alias moves; returns history id -> commit time."""
    committed: dict[int, float] = {}
    rng = random.Random(0)
    for i in range(n):
        time.sleep(rng.uniform(0.1, 0.3))  # promotions are rare: no queue builds up between them
        p.set_alias("churn", "production", "1.0.0" if i % 2 else "1.1.0")
        at = time.time()
        event_id = p.history(limit=1)[0].id
        committed[event_id] = at
        after_commit(event_id)
    return committed


def _burst(p: ModelPersistence, env: dict[str, str], secret: Path, n: int) -> dict[str, Any]:
    """Throughput: ``n`` moves committed while no dispatcher runs, then one started: the time
    from its first to its last POST."""
    receiver = Arrivals()
    hook = p.webhooks.add(receiver.url, events="alias.*", secret_file=secret)
    committed = _moves_at_once(p, n)
    dispatcher = subprocess.Popen(
        [sys.executable, "-m", "modelkeep", "events", "dispatch"], env=env, stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 300
        while not set(committed) <= set(receiver.at) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        dispatcher.terminate()
        dispatcher.wait(30)
    p.webhooks.remove(hook)
    times = sorted(receiver.at[i] for i in committed if i in receiver.at)
    per_second = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    return {"variant": f"burst of {n}: deliveries per second", "per_second": per_second, "n": len(times)}


def _moves_at_once(p: ModelPersistence, n: int) -> list[int]:
    for i in range(n):
        p.set_alias("churn", "production", "1.0.0" if i % 2 else "1.1.0")
    return [e.id for e in p.history(limit=n)]


def measure(url: str | None, schema: str | None, moves: int, work: Path) -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MODELKEEP_MODELS_DIR": str(work / "models")}
    if url:
        env["MODELKEEP_REGISTRY_URL"] = f"{url}?options=-csearch_path%3D{schema}"
    p = ModelPersistence(models_dir=work / "models", registry_url=env.get("MODELKEEP_REGISTRY_URL"))
    p.ensure_registry()
    p.save({"w": 1}, "churn", version="1.0.0")
    p.save({"w": 2}, "churn", version="1.1.0")
    secret = work / "secret"
    secret.write_text(uuid.uuid4().hex * 2)
    rows = []

    receiver = Arrivals()
    key = delivery.read_secret(str(secret))

    def post_now(event_id: int) -> None:
        body = delivery.body_of({"id": event_id}, uuid.uuid4().hex, 0)
        delivery.post(receiver.url, body, delivery.headers_for("alias.moved", "x", delivery.sign(key, body)), 10)

    committed = _moves(p, moves, post_now)
    latencies = [receiver.at[i] - t for i, t in committed.items()]
    rows.append({"variant": "direct POST (baseline)", **_percentiles(latencies)})

    for poll in (DispatchSettings().poll, 0.05):
        receiver = Arrivals()
        hook = p.webhooks.add(receiver.url, events="alias.*", secret_file=secret)
        dispatcher = subprocess.Popen(
            [sys.executable, "-m", "modelkeep", "events", "dispatch", "--poll", str(poll)],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(1.5)  # started and idle
            committed = _moves(p, moves, lambda _id: None)
            deadline = time.monotonic() + 60
            while not set(committed) <= set(receiver.at) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            dispatcher.terminate()
            dispatcher.wait(30)
        p.webhooks.remove(hook)
        latencies = [receiver.at[i] - t for i, t in committed.items() if i in receiver.at]
        rows.append(
            {"variant": f"dispatcher --poll {poll:g}", **_percentiles(latencies), "lost": moves - len(latencies)}
        )
    rows.append(_burst(p, env, secret, moves))
    p.close()
    base = rows[0]["p50_ms"]
    for row in rows:
        if "p50_ms" in row:
            row["p50_vs_direct"] = row["p50_ms"] / base
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--moves", type=int, default=200)
    parser.add_argument("--pg-url", default=os.environ.get("MODELKEEP_TEST_POSTGRES_URL"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite"] = measure(None, None, args.moves, Path(tmp) / "sqlite")
    if args.pg_url:
        from sqlalchemy import create_engine, text

        schema = f"mk_bench_{uuid.uuid4().hex[:8]}"
        engine = create_engine(args.pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            with tempfile.TemporaryDirectory() as tmp:
                results["postgresql"] = measure(args.pg_url, schema, args.moves, Path(tmp) / "pg")
        finally:
            with engine.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    print(f"load: {os.getloadavg()}")
    print("| index | variant | p50 (ms) | p99 (ms) | p50 vs direct POST | n |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for backend, rows in results.items():
        for r in rows:
            if "per_second" in r:
                print(f"| {backend} | {r['variant']} | {r['per_second']:.0f}/s | | | {r['n']} |")
                continue
            print(
                f"| {backend} | {r['variant']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                f"{r['p50_vs_direct']:.1f}x | {r['n']} |"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
