"""Remote (S3) transfers against moto on loopback, with boto3 as the baseline, in one run.

* upload: ``ModelPersistence.save_version`` (claim, serialize, hash SHA-256 + BLAKE3, parallel
  multipart upload straight to the final key, commit) against ``boto3``'s ``upload_file`` of the
  same bytes from a local file with its default ``TransferConfig`` (multipart, 10 threads);
* the commit: the time the save spent completing its multipart upload (timed inside the save),
  beside a server-side ``CopyObject`` of the artifact (what the commit cost when saves were staged
  and copied);
* download: ``load`` with the cache off (parallel ranged GETs into private memory, digests
  checked, then parsed) against ``download_file`` to a local file;
* cached load: a ``load`` from a new registry object once the artifact is in the local cache,
  against a ``load`` of the same model from a local store;
* peak RSS of each modelkeep phase (its own process), over the RSS before the phase;
* where the upload's time goes: the CPU seconds of the client process and of moto during the save
  and during ``upload_file`` (moto shares the machine's cores with the client), the time each
  spent completing its multipart upload, and the save's CPU work alone (serializing, SHA-256 and
  BLAKE3 into a sink that keeps nothing: no upload), the floor that ``upload_file`` does not pay.

moto runs in its own process (``python -m moto.server``) and keeps every object in memory, so the
artifact is 512 MiB by default (``--size-mb``). Each phase runs ``--repeats`` times, alternating
modelkeep and boto3 (which of the two goes first alternates, after an untimed save); medians are reported.

    PYTHONPATH=src python bench/remote.py [--size-mb 512] [--repeats 3] [--uploads-only] [--json out.json]
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

#: One phase, in a process of its own (so its peak RSS is its own): prints a JSON result.
PHASE = r"""
import json, os, resource, sys, time
spec = json.loads(sys.argv[1])
def cpu_s(pid=None):  # user + system CPU seconds of this process, or of process pid (moto)
    if pid is None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
def rss_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
def peak_mb():  # the high-water mark since warm() reset it (or since the start)
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def warm(nbytes):
    # This VM hands memory that stayed free a few seconds back to its host, and filling it again
    # is several times slower (bench/large.py's docstring): a load, whose arrays are fresh memory,
    # is timed in pages this process touched a moment ago, for the cached and the local load
    # alike. The high-water mark is reset after it, so the warm-up is not counted as the load's.
    block = np.ones(nbytes + (64 << 20), dtype=np.uint8)
    del block
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
import numpy as np
from modelkeep import ModelPersistence
kind = spec["kind"]
opts = {"client_kwargs": {"endpoint_url": spec["endpoint"]}}
def remote(**kw):
    # moto assembles a completed upload, or a copy, in Python: it takes longer than the default 10 s
    return ModelPersistence(models_dir=spec["url"], registry_url=spec["registry"], storage_options=opts,
                            read_timeout=600, **kw)
# Each phase first saves or loads a tiny model: imports, the S3 session and the per-user key are
# one-time costs of a process, as creating its client is for boto3 (outside its timing too).
WARM = {"x": np.arange(10)}
if kind == "save":
    from modelkeep.storage import s3 as s3_module
    completing = []  # the commit: time spent making the uploaded object appear
    complete = s3_module.ParallelUpload.complete
    def timed_complete(self):
        t0 = time.perf_counter()
        try:
            complete(self)
        finally:
            completing.append(time.perf_counter() - t0)
    s3_module.ParallelUpload.complete = timed_complete
    model = {"w": np.random.default_rng(0).standard_normal(spec["size"] // 8)}
    p = remote(cache_max_bytes=0)
    p.save_version(WARM, "warm")
    completing.clear()
    before = rss_mb()
    cpu0, moto0 = cpu_s(), cpu_s(spec["moto_pid"])
    t = time.perf_counter()
    rec = p.save_version(model, "m", compress=False)
    out = {"seconds": time.perf_counter() - t, "version": rec.version, "key": rec.artifact.key,
           "commit_seconds": sum(completing), "cpu_s": cpu_s() - cpu0, "moto_cpu_s": cpu_s(spec["moto_pid"]) - moto0}
elif kind == "save-cpu":  # the save's CPU work alone: serialize, SHA-256 and BLAKE3 into a sink
    from modelkeep.formats import get_format
    from modelkeep.storage.hashing import HashingWriter, _Discard
    model = {"w": np.random.default_rng(0).standard_normal(spec["size"] // 8)}
    fmt = get_format("joblib")
    warm = HashingWriter(_Discard())
    fmt.dump(WARM, warm, None)
    warm.blake3_record()
    warm.close()
    before = rss_mb()
    cpu0 = cpu_s()
    t = time.perf_counter()
    sink = HashingWriter(_Discard())  # the same writer a save to S3 uses: hashing on helper threads
    fmt.dump(model, sink, None)
    digests = sink.blake3_record()
    sink.close()
    out = {"seconds": time.perf_counter() - t, "cpu_s": cpu_s() - cpu0}
elif kind in ("load", "load-cached"):
    p = remote(cache_max_bytes=0 if kind == "load" else None)
    p.load("warm")
    warm(spec["size"])
    before = rss_mb()
    t = time.perf_counter()
    model = p.load("m", spec["version"])
    out = {"seconds": time.perf_counter() - t}
elif kind == "load-local":
    p = ModelPersistence(models_dir=spec["local"])
    p.load("warm")
    warm(spec["size"])
    before = rss_mb()
    t = time.perf_counter()
    model = p.load("m", spec["version"])
    out = {"seconds": time.perf_counter() - t}
elif kind == "save-local":
    model = {"w": np.random.default_rng(0).standard_normal(spec["size"] // 8)}
    p = ModelPersistence(models_dir=spec["local"])
    p.save_version(WARM, "warm")
    before = rss_mb()
    rec = p.save_version(model, "m", compress=False)
    out = {"seconds": 0.0, "version": rec.version}
out.update(rss_before_mb=before, peak_rss_mb=peak_mb())
print(json.dumps(out))
"""

#: boto3's own transfers with their default TransferConfig.
BOTO = r"""
import json, os, resource, sys, time, boto3
spec = json.loads(sys.argv[1])
def cpu_s(pid=None):
    if pid is None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
s3 = boto3.client("s3", endpoint_url=spec["endpoint"], region_name="us-east-1")
completing = []  # the time upload_file spends completing its multipart upload
def started(**_):
    completing.append(-time.perf_counter())
def finished(**_):
    completing[-1] += time.perf_counter()
s3.meta.events.register("before-call.s3.CompleteMultipartUpload", started)
s3.meta.events.register("after-call.s3.CompleteMultipartUpload", finished)
t = time.perf_counter()
if spec["kind"] == "upload":
    cpu0, moto0 = cpu_s(), cpu_s(spec["moto_pid"])
    t = time.perf_counter()
    s3.upload_file(spec["file"], spec["bucket"], spec["key"])
    elapsed = time.perf_counter() - t
    print(json.dumps({"seconds": elapsed, "commit_seconds": sum(completing), "cpu_s": cpu_s() - cpu0,
                      "moto_cpu_s": cpu_s(spec["moto_pid"]) - moto0}))
    sys.exit(0)
elif spec["kind"] == "download":
    s3.download_file(spec["bucket"], spec["key"], spec["file"])
else:
    source = {"Bucket": spec["bucket"], "Key": spec["key"]}
    s3.copy_object(Bucket=spec["bucket"], Key=spec["key"] + ".copy", CopySource=source)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(script: str, spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(spec)], env=env, capture_output=True, text=True, timeout=3600
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--uploads-only", action="store_true", help="measure saves and upload_file only (no loads, no cache)"
    )
    args = parser.parse_args()
    size = args.size_mb * MiB

    port = _free_port()
    env = {**os.environ, **AWS, "PYTHONPATH": str(ROOT / "src"), "MODELKEEP_GIT": "0"}
    work = Path(tempfile.mkdtemp(prefix="mk-bench-remote-"))
    env["MODELKEEP_CACHE_DIR"] = str(work / "cache")
    env["MODELKEEP_CONFIG_DIR"] = str(work / "config")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        import boto3

        os.environ.update(AWS)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        for _ in range(100):
            try:
                s3.list_buckets()
                break
            except Exception:
                time.sleep(0.1)
        s3.create_bucket(Bucket="bench")
        spec = {
            "endpoint": endpoint,
            "url": "s3://bench/models",
            "registry": f"sqlite:///{work / 'registry.db'}",
            "local": str(work / "local"),
            "size": size,
            "moto_pid": server.pid,
        }
        results = measure(spec, env, s3, work, args.repeats, loads=not args.uploads_only)
        results["size_mb"] = args.size_mb
        results["load_average"] = os.getloadavg()
        print_report(results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        server.terminate()
        server.wait(30)
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def measure(
    spec: dict[str, Any], env: dict[str, str], s3: Any, work: Path, repeats: int, *, loads: bool = True
) -> dict[str, Any]:
    names = ("save", "commit", "save_cpu", "save_moto_cpu", "upload_file", "upload_commit", "upload_cpu")
    names += ("upload_moto_cpu", "save_work", "save_work_cpu", "copy", "load", "download_file")
    rows: dict[str, list[float]] = {k: [] for k in names}
    rss: dict[str, list[float]] = {"save": [], "load": [], "load-cached": [], "load-local": []}
    # An untimed save first: the same bytes, as a local file for boto3 to upload, and no timed
    # upload is the first big one into a fresh moto process (which the save always was).
    warm = _run(PHASE, {**spec, "kind": "save"}, env)
    artifact = work / "artifact.joblib"
    s3.download_file("bench", f"models/{warm['key']}", str(artifact))
    s3.delete_object(Bucket="bench", Key=f"models/{warm['key']}")
    version = key = ""

    def save(_: int) -> None:
        nonlocal version, key
        saved = _run(PHASE, {**spec, "kind": "save"}, env)
        version, key = saved["version"], saved["key"]
        rows["save"].append(saved["seconds"])
        rows["commit"].append(saved["commit_seconds"])
        rows["save_cpu"].append(saved["cpu_s"])
        rows["save_moto_cpu"].append(saved["moto_cpu_s"])
        rss["save"].append(saved["peak_rss_mb"] - saved["rss_before_mb"])

    def upload(i: int) -> None:
        up = _run(BOTO, {"endpoint": spec["endpoint"], "kind": "upload", "file": str(artifact), "bucket": "bench",
                         "key": f"baseline/{i}", "moto_pid": spec["moto_pid"]}, env)  # fmt: skip
        rows["upload_file"].append(up["seconds"])
        rows["upload_commit"].append(up["commit_seconds"])
        rows["upload_cpu"].append(up["cpu_s"])
        rows["upload_moto_cpu"].append(up["moto_cpu_s"])

    for i in range(repeats):
        # which goes first alternates, so that neither always runs right after the other
        for phase in (save, upload) if i % 2 == 0 else (upload, save):
            phase(i)
        work_alone = _run(PHASE, {**spec, "kind": "save-cpu"}, env)
        rows["save_work"].append(work_alone["seconds"])
        rows["save_work_cpu"].append(work_alone["cpu_s"])
        copy = _run(
            BOTO,
            {"endpoint": spec["endpoint"], "kind": "copy", "bucket": "bench", "key": f"baseline/{i}"},
            env,
        )
        rows["copy"].append(copy["seconds"])
        s3.delete_object(Bucket="bench", Key=f"baseline/{i}.copy")
        s3.delete_object(Bucket="bench", Key=f"baseline/{i}")
        if loads:
            loaded = _run(PHASE, {**spec, "kind": "load", "version": version}, env)
            rows["load"].append(loaded["seconds"])
            rss["load"].append(loaded["peak_rss_mb"] - loaded["rss_before_mb"])
            down = _run(BOTO, {"endpoint": spec["endpoint"], "kind": "download", "file": str(work / "down.bin"),
                               "bucket": "bench", "key": f"models/{key}"}, env)  # fmt: skip
            rows["download_file"].append(down["seconds"])
            (work / "down.bin").unlink()
        if i < repeats - 1:  # moto keeps objects in memory: one artifact at a time (the row stays)
            s3.delete_object(Bucket="bench", Key=f"models/{key}")
    med = {k: statistics.median(v) for k, v in rows.items() if v}
    out: dict[str, Any] = {"seconds": med, "peak_rss_over_start_mb": {k: max(v) for k, v in rss.items() if v}}
    out["runs"] = rows
    if not loads:
        return out
    # cached load against a local-store load of the same model
    first = _run(PHASE, {**spec, "kind": "load-cached", "version": version}, env)  # fills the cache
    local = _run(PHASE, {**spec, "kind": "save-local"}, env)
    cached_times, local_times = [], []
    for _ in range(repeats):
        c = _run(PHASE, {**spec, "kind": "load-cached", "version": version}, env)
        cached_times.append(c["seconds"])
        rss["load-cached"].append(c["peak_rss_mb"] - c["rss_before_mb"])
        lo = _run(PHASE, {**spec, "kind": "load-local", "version": local["version"]}, env)
        local_times.append(lo["seconds"])
        rss["load-local"].append(lo["peak_rss_mb"] - lo["rss_before_mb"])
    out.update(
        first_cached_load_s=first["seconds"],
        cached_load_s=statistics.median(cached_times),
        local_load_s=statistics.median(local_times),
        peak_rss_over_start_mb={k: max(v) for k, v in rss.items() if v},
    )
    return out


def print_report(r: dict[str, Any]) -> None:
    size = r["size_mb"]
    s = r["seconds"]
    cores = os.cpu_count() or 1
    print(f"artifact: {size} MiB; load average at the end: {', '.join(f'{x:.1f}' for x in r['load_average'])}")
    print("| transfer | modelkeep | boto3 | modelkeep / boto3 throughput |")
    print("|---|---:|---:|---:|")
    up = (size / s["save"], size / s["upload_file"])
    print(f"| upload (save_version vs upload_file) | {up[0]:.0f} MiB/s | {up[1]:.0f} MiB/s | {up[0] / up[1]:.2f}x |")
    if "load" in s:
        down = (size / s["load"], size / s["download_file"])
        print(
            f"| download (load vs download_file) | {down[0]:.0f} MiB/s | {down[1]:.0f} MiB/s "
            f"| {down[0] / down[1]:.2f}x |"
        )

    # where an upload's time goes: client and moto share the machine's cores
    def floor(client: float, moto: float) -> float:
        return max(moto, (client + moto) / cores)  # moto's Python runs on one core at a time

    ours, theirs = floor(s["save_cpu"], s["save_moto_cpu"]), floor(s["upload_cpu"], s["upload_moto_cpu"])
    print()
    print(f"| upload, {size} MiB (medians, seconds) | save_version | upload_file |")
    print("|---|---:|---:|")
    print(f"| wall | {s['save']:.2f} | {s['upload_file']:.2f} |")
    print(f"| CPU of the client process | {s['save_cpu']:.2f} | {s['upload_cpu']:.2f} |")
    print(f"| CPU of moto | {s['save_moto_cpu']:.2f} | {s['upload_moto_cpu']:.2f} |")
    print(f"| completing the multipart upload (wall) | {s['commit']:.2f} | {s['upload_commit']:.2f} |")
    print(
        f"| the save's own work alone: serialize + SHA-256 + BLAKE3, no upload (wall / CPU) "
        f"| {s['save_work']:.2f} / {s['save_work_cpu']:.2f} | 0 |"
    )
    print(f"| CPU floor on {cores} cores: max(moto CPU, (client + moto CPU) / {cores}) | {ours:.2f} | {theirs:.2f} |")
    print(f"throughput ratio the CPU floors allow: {theirs / ours:.2f}x (measured {up[0] / up[1]:.2f}x)")
    if "copy" in s:
        print(f"a server-side CopyObject of the same {size} MiB (the staged commit's copy): {s['copy']:.2f} s")
    if "cached_load_s" in r:
        cached, local = r["cached_load_s"], r["local_load_s"]
        print(
            f"cached load {cached * 1000:.0f} ms vs local-store load {local * 1000:.0f} ms: {cached / local:.2f}x "
            f"(first load, filling the cache: {r['first_cached_load_s']:.2f} s)"
        )
    print("peak RSS over the process's RSS before the phase (MiB):", json.dumps(r["peak_rss_over_start_mb"]))


if __name__ == "__main__":
    main()
