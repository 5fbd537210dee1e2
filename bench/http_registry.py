"""Saves and loads through ``modelkeep server`` against direct access to the same backend, in one run.

``python bench/http_registry.py`` (add ``--s3`` for the PostgreSQL-or-SQLite + moto S3 case with
presigned transfers, ``--pg-url`` for a PostgreSQL index there; ``--enforced`` adds the same case with
both paths' S3 traffic through a proxy that refuses presigned bodies not matching their signed
``x-amz-checksum-sha256``, as S3 does and moto does not, so the server skips its read-back as it
does on S3: ``tests/s3_proxy.py`` in a process of its own, hashing on the same cores). For each backend, one registry is
opened twice from this process: directly (``ModelPersistence(folder)``), and through a ``modelkeep
server`` subprocess on the same registry (``ModelPersistence("http://127.0.0.1:PORT", token=...)``).

* small: a LogisticRegression saved and loaded ``--small-repeats`` times per path, interleaved
  (direct, http, direct, ...), and as often, in the same rounds, the other small operations: its
  versions listed, its record read (``get_version``), an alias moved between two of its versions
  (signed by the mover's key, on the client through the server) and the model loaded through it;
  medians, and http minus direct (target: within 5 ms);
* the floor: one bare HTTP round trip, and one signed-in API call, on the client's connection,
  back to back; and, as a signed move meets it in the rounds (the server idle while a direct
  operation ran), two signed-in API calls right after a direct alias move: a signed move's two
  requests (plan, signed move) without their work;
* large: a float64 array of ``--large-mb`` MiB saved uncompressed and loaded ``--large-repeats``
  times per path, interleaved; throughput, and http / direct (target: >= 0.8x with presigned S3);
* the floor under a large transfer through the server (SQLite + folder only), interleaved with
  it: the same number of bytes posted from a file with httpx to a minimal Starlette endpoint
  under uvicorn that reads and drops them, and read back from it (a ``FileResponse`` in 1 MiB
  chunks, as the server's) without being kept: loopback and the HTTP stacks alone, no hashing,
  no disk, no copy into a buffer.

``MODELKEEP_GIT=0`` (no ``git status`` in the lineage) and no local cache of remote artifacts
(``cache_max_bytes=0``), so every load moves the bytes. Prints a Markdown table, and JSON with
``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20
AWS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    import httpx

    for _ in range(600):
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not start")


@contextmanager
def _server(options: dict[str, Any], work: Path, env: dict[str, str]) -> Iterator[tuple[str, str]]:
    """A ``modelkeep server`` subprocess on the registry ``options`` describe: (url, admin token)."""
    from modelkeep import ModelPersistence

    with ModelPersistence(**options) as p:
        p.ensure_registry()
        if p.users.get("bench") is None:
            p.users.add("bench", None, "admin")
        token = p.users.new_token("bench", "bench")
    config = work / "server.json"
    persistence = {k: v for k, v in options.items() if k in ("models_dir", "registry_url", "storage_options")}
    config.write_text(json.dumps({"persistence": persistence}))
    port = _free_port()
    cmd = [sys.executable, "-m", "modelkeep", "--config", str(config), "server", "--port", str(port)]
    server_env = {k: v for k, v in env.items() if k not in ("MODELKEEP_REGISTRY_URL", "MODELKEEP_TOKEN")}
    process = subprocess.Popen(cmd, env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url + "/api/v1/openapi.json", process, "modelkeep server")
        yield url, token
    finally:
        process.terminate()
        process.wait(30)


#: The floor's server: ``python -c FLOOR_APP PORT FILE``.
FLOOR_APP = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import FileResponse, Response
from starlette.routing import Route

class File(FileResponse):
    chunk_size = 1 << 20

async def up(request):
    n = 0
    async for chunk in request.stream():
        n += len(chunk)
    return Response(str(n))

async def down(request):
    return File(sys.argv[2])

app = Starlette(routes=[Route("/up", up, methods=["POST"]), Route("/down", down)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", lifespan="off", proxy_headers=False)
"""


class Floor:
    """Raw HTTP transfers of ``path``'s bytes to and from a minimal endpoint (:data:`FLOOR_APP`)."""

    def __init__(self, path: Path, env: dict[str, str]) -> None:
        import httpx

        self.path, self.size = path, path.stat().st_size
        port = _free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-c", FLOOR_APP, str(port), str(path)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        _wait(url + "/ready", self.process, "the floor's server")  # any answer will do (a 404)
        self.http = httpx.Client(base_url=url, timeout=600)

    def upload(self) -> None:
        def chunks() -> Iterator[bytes]:
            with open(self.path, "rb") as f:
                while chunk := f.read(MiB):
                    yield chunk

        headers = {"Content-Length": str(self.size), "Content-Type": "application/octet-stream"}
        response = self.http.post("/up", content=chunks(), headers=headers)
        response.raise_for_status()
        assert int(response.text) == self.size

    def download(self) -> None:
        got = 0
        with self.http.stream("GET", "/down") as response:
            response.raise_for_status()
            for chunk in response.iter_raw():
                got += len(chunk)
        assert got == self.size

    def close(self) -> None:
        self.http.close()
        self.process.terminate()
        self.process.wait(30)


#: The small operations, in the order of the table: save, load, list_versions, get_version,
#: set_alias, and a load through that alias.
SMALL_OPS = ("save", "load", "list", "info", "alias", "alias_load")
#: How the table names each.
SMALL_LABELS = {
    "list": "list versions",
    "info": "info (get_version)",
    "alias": "set_alias (signed)",
    "alias_load": "load by alias",
}


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(
    direct: Any,
    http: Any,
    small_repeats: int,
    large_mb: int,
    large_repeats: int,
    floor: Callable[[bytes], Floor] | None = None,
) -> dict[str, Any]:
    """Interleaved small and large saves and loads, direct and through the server (and, given
    ``floor``, which starts a :class:`Floor` for some bytes, raw HTTP transfers of as many bytes)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 10))
    small = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))
    paths = {"direct": direct, "http": http}
    for name, p in paths.items():  # warm up: imports, keys, connections
        p.save_version(small, f"warm-{name}")
        p.load(f"warm-{name}")
    times: dict[str, list[float]] = {f"{k}_small_{op}": [] for k in paths for op in SMALL_OPS}
    times["idle_two_calls"] = []
    for i in range(small_repeats):
        for name, p in paths.items():
            model = f"small-{name}"
            times[f"{name}_small_save"].append(_timed(lambda p=p, m=model: p.save_version(small, m)))
            times[f"{name}_small_load"].append(_timed(lambda p=p, m=model: p.load(m)))
            times[f"{name}_small_list"].append(_timed(lambda p=p, m=model: p.list_versions(m)))
            times[f"{name}_small_info"].append(_timed(lambda p=p, m=model: p.get_version(m)))
            to = p.list_versions(model)[i % 2]  # a real move each time: between the first two versions
            times[f"{name}_small_alias"].append(_timed(lambda p=p, m=model, v=to: p.set_alias(m, "bench", v)))
            times[f"{name}_small_alias_load"].append(_timed(lambda p=p, m=model: p.load(f"{m}@bench")))
        # The floor under a signed move through the server, as the move meets it in these rounds (the
        # server idle while a direct operation ran): two signed-in API calls right after a direct move,
        # one for each of its requests (the plan, then the signed move), without their work.
        direct.set_alias("small-direct", "floor", direct.list_versions("small-direct")[i % 2])
        times["idle_two_calls"].append(_timed(lambda: (http.server_info(), http.server_info())))
    # The floor under "through the server", on the same connection: one bare HTTP round trip (HEAD of
    # the OpenAPI document, no sign-in, no body) and one signed-in API call (GET /api/v1/: the token
    # is checked against the index, a JSON answer).
    times["bare_round_trip"], times["api_round_trip"] = [], []
    for _ in range(small_repeats):
        times["bare_round_trip"].append(_timed(lambda: http._quick.request("HEAD", "/openapi.json").raise_for_status()))
        times["api_round_trip"].append(_timed(http.server_info))
    big = {"w": rng.random(large_mb * MiB // 8)}
    for op in ("large_save", "large_load"):
        for name in paths:
            times[f"{name}_{op}"] = []
    raw = floor(big["w"].tobytes()) if floor is not None else None
    if raw is not None:
        times["floor_upload"], times["floor_download"] = [], []
    try:
        for _ in range(large_repeats):
            for name, p in paths.items():
                times[f"{name}_large_save"].append(
                    _timed(lambda p=p, name=name: p.save_version(big, f"large-{name}", compress=False))
                )
                times[f"{name}_large_load"].append(_timed(lambda p=p, name=name: p.load(f"large-{name}")))
            if raw is not None:
                times["floor_upload"].append(_timed(raw.upload))
                times["floor_download"].append(_timed(raw.download))
    finally:
        if raw is not None:
            raw.close()
    out: dict[str, Any] = {k: statistics.median(v) for k, v in times.items()}
    out["raw"] = times
    out["large_mb"] = large_mb
    return out


def report(label: str, r: dict[str, Any]) -> str:
    """Markdown rows for one backend."""
    mb = r["large_mb"]
    rows = []
    for op in SMALL_OPS:
        if f"http_small_{op}" not in r:  # a JSON of an older run
            continue
        d, h = r[f"direct_small_{op}"] * 1e3, r[f"http_small_{op}"] * 1e3
        what = SMALL_LABELS.get(op, op)
        rows.append(f"| {label} | small {what} (median) | {d:.2f} ms | {h:.2f} ms | {h - d:+.2f} ms |")
    bare, api = r["bare_round_trip"] * 1e3, r["api_round_trip"] * 1e3
    rows.append(f"| {label} | one round trip: bare / signed-in API (median) | | {bare:.2f} / {api:.2f} ms | |")
    if "idle_two_calls" in r:
        two = r["idle_two_calls"] * 1e3
        measure = "signed move's floor: two signed-in API calls right after a direct move (median)"
        rows.append(f"| {label} | {measure} | | {two:.2f} ms | |")
    for op in ("save", "load"):
        d, h = mb / r[f"direct_large_{op}"], mb / r[f"http_large_{op}"]
        rows.append(f"| {label} | {mb} MiB {op} (median) | {d:.0f} MiB/s | {h:.0f} MiB/s | {h / d:.2f}x |")
    if "floor_upload" in r:
        up, down = mb / r["floor_upload"], mb / r["floor_download"]
        measure = f"{mb} MiB raw HTTP floor: upload / download (median)"
        rows.append(f"| {label} | {measure} | | {up:.0f} / {down:.0f} MiB/s | |")
    return "\n".join(rows)


@contextmanager
def _enforcing_proxy(upstream: str, env: dict[str, str]) -> Iterator[str]:
    """``tests/s3_proxy.py --enforce`` in front of ``upstream``, in its own process: its endpoint."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.s3_proxy", upstream, "--enforce"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        endpoint = process.stdout.readline().decode().strip()
        if not endpoint.startswith("http://"):
            raise RuntimeError(f"the S3 proxy did not start (exit {process.poll()})")
        yield endpoint
    finally:
        process.terminate()
        process.wait(30)


def _enforces(options: dict[str, Any]) -> bool:
    """Whether the server's store will skip the read-back (the probe it runs itself)."""
    from modelkeep.storage import open_store
    from modelkeep.storage.presigned import enforces_checksums

    store = open_store(options["models_dir"], storage_options=options["storage_options"])
    return enforces_checksums(store)  # type: ignore[arg-type]


@contextmanager
def _moto(env: dict[str, str]) -> Iterator[str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait(endpoint, process, "moto")
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
        yield endpoint
    finally:
        process.terminate()
        process.wait(30)


def run_backend(
    label: str, options: dict[str, Any], work: Path, env: dict[str, str], args: Any, *, floor: bool = False
) -> dict[str, Any]:
    from modelkeep import ModelPersistence

    def start_floor(data: bytes) -> Floor:
        path = work / "floor.bin"
        path.write_bytes(data)
        return Floor(path, env)

    with _server(options, work, env) as (url, token):
        direct = ModelPersistence(**options, cache_max_bytes=0, read_timeout=600)
        http = ModelPersistence(url, token=token, cache_max_bytes=0, read_timeout=600)
        try:
            return measure(
                direct,
                http,
                args.small_repeats,
                args.large_mb,
                args.large_repeats,
                start_floor if floor else None,
            )
        finally:
            direct.close()
            http.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small-repeats", type=int, default=30)
    parser.add_argument("--large-mb", type=int, default=256)
    parser.add_argument("--large-repeats", type=int, default=3)
    parser.add_argument("--s3", action="store_true", help="also PostgreSQL/SQLite + moto S3 (presigned)")
    parser.add_argument("--s3-large-mb", type=int, default=128, help="moto keeps objects in memory")
    parser.add_argument(
        "--pg-url",
        help="PostgreSQL index for the S3 case (default: SQLite); give it a schema of its own, "
        "e.g. ...?options=-csearch_path%%3Dbench_http (the schema must exist)",
    )
    parser.add_argument(
        "--enforced",
        action="store_true",
        help="with --s3, also the S3 case through a proxy that enforces the signed checksums (no read-back)",
    )
    parser.add_argument("--enforced-pg-url", help="PostgreSQL index for --enforced (default: SQLite)")
    parser.add_argument(
        "--no-floor", action="store_true", help="skip the raw HTTP floor under the SQLite + folder rows"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mk-bench-http-"))
    env = {**os.environ, **AWS, "PYTHONPATH": str(ROOT / "src"), "MODELKEEP_GIT": "0"}
    env["MODELKEEP_CACHE_DIR"] = str(work / "cache")
    env["MODELKEEP_CONFIG_DIR"] = str(work / "config")
    os.environ.update({k: env[k] for k in (*AWS, "MODELKEEP_GIT", "MODELKEEP_CACHE_DIR", "MODELKEEP_CONFIG_DIR")})
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()
    results: dict[str, Any] = {"started": started}
    lines = ["| backend | measure | direct | through the server | http vs direct |", "|---|---|---:|---:|---:|"]
    results["local"] = run_backend(
        "SQLite + folder", {"models_dir": str(work / "local")}, work, env, args, floor=not args.no_floor
    )
    lines.append(report("SQLite + folder (streamed)", results["local"]))
    if args.s3:
        with _moto(env) as endpoint:
            options: dict[str, Any] = {
                "models_dir": "s3://bench/models",
                "storage_options": {"client_kwargs": {"endpoint_url": endpoint}},
                "registry_url": args.pg_url or f"sqlite:///{work / 's3-registry.db'}",
            }
            s3_args = argparse.Namespace(**{**vars(args), "large_mb": args.s3_large_mb})
            results["s3"] = run_backend("S3", options, work, env, s3_args)
            index = "PostgreSQL" if args.pg_url else "SQLite"
            lines.append(report(f"{index} + moto S3 (presigned)", results["s3"]))
            if args.enforced:
                with _enforcing_proxy(endpoint, env) as proxy:
                    enforced: dict[str, Any] = {
                        "models_dir": "s3://bench/enforced",
                        "storage_options": {"client_kwargs": {"endpoint_url": proxy}},
                        "registry_url": args.enforced_pg_url or f"sqlite:///{work / 's3-enforced.db'}",
                    }
                    if not _enforces(enforced):
                        raise RuntimeError("the proxy does not enforce checksums: the server would read back")
                    results["s3_enforced"] = run_backend("S3 enforced", enforced, work, env, s3_args)
                index = "PostgreSQL" if args.enforced_pg_url else "SQLite"
                label = f"{index} + moto S3 behind a checksum-enforcing proxy (presigned, no read-back)"
                lines.append(report(label, results["s3_enforced"]))
    results["load_average"] = [load_before, os.getloadavg()]
    print(f"{started}; load average {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
