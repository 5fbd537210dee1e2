"""Presigned S3 transfers (issue 28) against ``S3Store`` direct, in one run, on moto (loopback).

* upload, direct: ``S3Store.open_write`` (parallel multipart upload) of a file's bytes;
* upload, presigned: the client hashes the file (``declare``), the server plans, the client sends
  the parts with httpx (``upload_plan``), the server completes, with and without reading the
  staged object back (``complete_upload(verify=...)``); each step is timed;
* download, direct: ``S3Store.stream`` (ranged GETs in flight); presigned: ``download_ranges`` of a
  ``presign_get`` URL, same chunk size and requests in flight.

moto runs in its own process and keeps objects in memory (256 MiB by default). Each phase runs
``--repeats`` times, alternating; medians are reported with the load average.

    PYTHONPATH=src python bench/presigned.py [--size-mb 256] [--repeats 3] [--json out.json]
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

MiB = 1 << 20
PART = 16 * MiB
CONCURRENCY = 16
AWS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _timed(action: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = action()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.update(AWS)
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        for _ in range(100):
            try:
                s3.create_bucket(Bucket="bench-presigned")
                break
            except Exception:
                time.sleep(0.1)
        with tempfile.TemporaryDirectory() as work:
            result = measure(endpoint, s3, Path(work), args.size_mb * MiB, args.repeats)
    finally:
        server.terminate()
        server.wait(30)
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def measure(endpoint: str, s3: Any, work: Path, size: int, repeats: int) -> dict[str, Any]:
    import numpy as np

    from modelkeep.storage import S3Store, open_store
    from modelkeep.storage.presigned import complete_upload, plan_upload, presign_get
    from modelkeep.storage.presigned_client import declare, download_ranges, upload_plan

    options = {
        "client_kwargs": {"endpoint_url": endpoint},
        "config_kwargs": {"read_timeout": 600},  # moto assembles a completed upload in Python
    }
    store = open_store("s3://bench-presigned/models", options, max_concurrency=CONCURRENCY, part_size=PART)
    assert isinstance(store, S3Store)
    store.read_chunk = 8 * MiB
    path = work / "artifact.bin"
    with open(path, "wb") as f:
        rng = np.random.default_rng(0)
        for _ in range(size // (64 * MiB)):
            f.write(rng.integers(0, 256, size=64 * MiB, dtype=np.uint8).tobytes())
        f.write(rng.integers(0, 256, size=size % (64 * MiB), dtype=np.uint8).tobytes())

    def direct_upload() -> None:
        with open(path, "rb") as src, store.open_write(".tmp/direct.part") as dst:
            while chunk := src.read(PART):
                dst.write(chunk)

    def presigned_upload(verify: bool) -> dict[str, float]:
        t_declare, dec = _timed(lambda: declare(path, PART))
        t_plan, plan = _timed(
            lambda: plan_upload(store, dec.size, sha256=dec.sha256, part_sha256s=dec.part_sha256s, part_size=PART)
        )
        t_send, _ = _timed(lambda: upload_plan(plan.to_json(), path, max_concurrency=CONCURRENCY))
        t_done, done = _timed(lambda: complete_upload(store, plan, verify=verify))
        store.delete(done.key)
        return {"declare": t_declare, "plan": t_plan, "send": t_send, "complete": t_done}

    rows: dict[str, list[Any]] = {k: [] for k in ("direct_up", "pre_up", "pre_up_noverify", "direct_down", "pre_down")}
    s3.put_object(Bucket="bench-presigned", Key="models/m/1/m.bin", Body=path.read_bytes())
    url = presign_get(store, "m/1/m.bin")
    for _ in range(repeats):
        rows["direct_up"].append(_timed(direct_upload)[0])
        store.delete(".tmp/direct.part")
        rows["pre_up"].append(presigned_upload(verify=True))
        rows["pre_up_noverify"].append(presigned_upload(verify=False))

        def drain_direct() -> int:
            with store.stream("m/1/m.bin") as chunks:
                return sum(len(c) for c in chunks)

        rows["direct_down"].append(_timed(drain_direct)[0])
        rows["pre_down"].append(
            _timed(
                lambda: sum(len(c) for c in download_ranges(url, size, max_concurrency=CONCURRENCY, part_size=8 * MiB))
            )[0]
        )

    def med(values: list[float]) -> float:
        return statistics.median(values)

    def step(name: str, key: str) -> float:
        return med([r[key] for r in rows[name]])

    pre_total = med([sum(r.values()) for r in rows["pre_up"]])
    pre_nv_total = med([sum(r.values()) for r in rows["pre_up_noverify"]])
    out = {
        "size_mb": size / MiB,
        "part_mb": PART / MiB,
        "concurrency": CONCURRENCY,
        "loadavg_end": os.getloadavg(),
        "direct_upload_s": med(rows["direct_up"]),
        "presigned_upload_total_s": pre_total,
        "presigned_upload_noverify_total_s": pre_nv_total,
        "presigned_steps_s": {k: step("pre_up", k) for k in ("declare", "plan", "send", "complete")},
        "presigned_noverify_complete_s": step("pre_up_noverify", "complete"),
        "direct_download_s": med(rows["direct_down"]),
        "presigned_download_s": med(rows["pre_down"]),
    }
    return out


def print_report(r: dict[str, Any]) -> None:
    mb = r["size_mb"]

    def rate(seconds: float) -> str:
        return f"{seconds:6.2f} s  {mb / seconds:7.1f} MB/s"

    direct_up, direct_down = r["direct_upload_s"], r["direct_download_s"]
    steps = r["presigned_steps_s"]
    print(f"{mb:.0f} MiB, parts {r['part_mb']:.0f} MiB, {r['concurrency']} in flight, load {r['loadavg_end']}")
    print(f"upload   S3Store direct                 {rate(direct_up)}")
    print(
        f"upload   presigned, read back (total)   {rate(r['presigned_upload_total_s'])}"
        f"  {direct_up / r['presigned_upload_total_s']:.2f}x direct"
    )
    print(
        f"upload   presigned, S3 checks (total)   {rate(r['presigned_upload_noverify_total_s'])}"
        f"  {direct_up / r['presigned_upload_noverify_total_s']:.2f}x direct"
    )
    print(f"  steps: declare {steps['declare']:.2f} s, plan {steps['plan']:.2f} s, send {steps['send']:.2f} s, ")
    without = r["presigned_noverify_complete_s"]
    print(f"         complete+read back {steps['complete']:.2f} s (without: {without:.2f} s)")
    print(f"  send alone vs direct: {direct_up / steps['send']:.2f}x")
    print(f"download S3Store direct                 {rate(direct_down)}")
    print(
        f"download presigned                      {rate(r['presigned_download_s'])}"
        f"  {direct_down / r['presigned_download_s']:.2f}x direct"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
