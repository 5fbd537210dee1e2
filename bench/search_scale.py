"""Search and the UI at 1,000,000 versions: 1,000 models with 20 metrics each, SQLite and PostgreSQL.

Usage (from the repository root)::

    python bench/search_scale.py                    # 1,000,000 versions (built once, then cached)
    python bench/search_scale.py --versions 100000  # a quicker run
    python bench/run.py --only search               # the same, inside the suite's targets table

The registry is bulk-inserted through the index layer's own row builders
(``record_row``, ``field_rows``), as ``bench/search.py`` does: version rows, their
searchable field rows (21 per version) and one ``dataset`` tag per version, without
artifacts. It is built once per size and kept: the SQLite file under
``bench/.tmp/search_scale/`` and the PostgreSQL schema ``bench_search_<size>``;
a marker row says the build finished. Then, per backend:

* ``filtered top 10``: ``accuracy > 0.9 AND tags.dataset = "v7"`` by ``-accuracy``
  (the filter bounds the order field), CPU time on SQLite, wall time on PostgreSQL;
* ``unbounded sort``: ``accuracy > 0.5`` by ``-auc`` and no filter by ``-auc``
  (the filter does not bound ``auc``): the segmented query shape;
* the floor: one ``LIMIT 10`` index walk of ``(key, num)`` written by hand;
* the UI at this size (SQLite): the model page, chart data for 2,000 points,
  the models page, with each request's query count;
* peak RSS of a fresh process that runs the searches and of one that renders the
  model page (the memory targets);
* the bulk path (``--saved N``, 20,000 by default): a registry of N *real* versions (a small
  fitted LogisticRegression per customer, 20 metrics each) built through
  ``ModelPersistence.save_many``, against a loop of ``save()`` over the first versions in the
  same run; its disk use per version, the UI on it, and the build extrapolated to 1,000,000.

The 1,000,000-version registry the queries run on is still bulk-inserted rows: built through
``save_many`` it would take hours on the shared 2-core machine and ~15 GB of small files (the
figures printed say how many), so the bulk path is measured at ``--saved`` versions and
extrapolated linearly (its cost per version does not grow with the registry: one claim and one
commit per batch, index-backed checks).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent / "src"))

from sqlalchemy import event, text  # noqa: E402

from modelkeep.index import SqlIndex  # noqa: E402
from modelkeep.index.common import record_row  # noqa: E402
from modelkeep.index.fields import field_rows  # noqa: E402
from modelkeep.metadata import ArtifactInfo, ModelMetadata  # noqa: E402
from modelkeep.search import search_versions  # noqa: E402

EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)
METRICS = [f"m{i:02d}" for i in range(17)] + ["accuracy", "auc", "loss"]
BOUNDED = ('accuracy > 0.9 AND tags.dataset = "v7"', "-accuracy")
UNBOUNDED: list[tuple[str | None, Any]] = [
    ("accuracy > 0.5", "-auc"),
    (None, "-auc"),
    ('tags.dataset = "v3"', "loss"),
    ("auc >= 0.5 AND loss < 0.2 AND epochs IN (10, 20)", ["-m01", "version"]),  # bench/search.py's slow shape
]
PG_URL = os.environ.get("MODELKEEP_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
CACHE = BENCH_DIR / ".tmp" / "search_scale"
MARKER = "bench_search_scale_built"
_VERSION_COLUMNS = (
    "id",
    "model_name",
    "version",
    "parsed",
    "sort_key",
    "model_type",
    "artifact_key",
    "format",
    "compression",
    "size",
    "sha256",
    "created_at",
    "updated_at",
    "record",
    "deleted_at",
    "description",
)


def _rows(n_versions: int, n_models: int, seed: int = 0) -> Any:
    """Yield (version row, field rows, tag row) for every version, deterministically."""
    rng = random.Random(seed)
    per_model = n_versions // n_models
    vid = 0
    for m in range(n_models):
        name = f"model_{m:04d}"
        for i in range(per_model):
            vid += 1
            metadata: dict[str, Any] = {k: round(rng.random(), 4) for k in METRICS}
            metadata["epochs"] = rng.choice([5, 10, 20, 40])
            when = (EPOCH + timedelta(seconds=vid)).isoformat()
            record = ModelMetadata(
                model_name=name,
                model_type="RandomForestClassifier",
                version=f"1.{i}.0",
                created_at=when,
                updated_at=when,
                metadata=metadata,
                artifact=ArtifactInfo(f"{name}/1.{i}.0/a.joblib", "joblib", None, 1000 + vid, "0" * 64),
            )
            row = {"id": vid, "deleted_at": None, "description": None, **record_row(record)}
            tag = (name, record.version, "dataset", f"v{rng.randrange(10)}")
            yield row, list(field_rows(vid, metadata)), tag


def _built(index: SqlIndex, n_versions: int) -> bool:
    with index.engine.connect() as conn:
        found = conn.execute(
            text(f"SELECT value FROM {index.schema + '.' if index.schema else ''}modelkeep_info WHERE key = :k"),
            {"k": MARKER},
        ).scalar()
    return found == str(n_versions)


def build(index: SqlIndex, n_versions: int, n_models: int) -> float:
    """Bulk-insert the registry unless a finished build of this size is there; seconds taken."""
    if _built(index, n_versions):
        return 0.0
    started = time.perf_counter()
    prefix = f'"{index.schema}".' if index.schema else ""
    raw = index.engine.raw_connection()
    try:
        cur = raw.cursor()
        postgres = index.dialect == "postgresql"
        if not postgres:
            cur.execute("BEGIN IMMEDIATE")  # the index's connections issue their own BEGIN
        for table in ("modelkeep_tags", "modelkeep_fields", "modelkeep_versions", "modelkeep_models"):
            cur.execute(f"DELETE FROM {prefix}{table}")
        vrows: list[tuple[Any, ...]] = []
        frows: list[tuple[Any, ...]] = []
        trows: list[tuple[Any, ...]] = []

        def flush() -> None:
            if postgres:
                for table, cols, rows in (
                    ("modelkeep_versions", _VERSION_COLUMNS, vrows),
                    ("modelkeep_fields", ("version_id", "key", "num", "str"), frows),
                    ("modelkeep_tags", ("model_name", "version", "key", "value"), trows),
                ):
                    with cur.copy(f"COPY {prefix}{table} ({', '.join(cols)}) FROM STDIN") as copy:
                        for r in rows:
                            copy.write_row(r)
            else:
                marks = ", ".join("?" for _ in _VERSION_COLUMNS)
                cur.executemany(
                    f"INSERT INTO modelkeep_versions ({', '.join(_VERSION_COLUMNS)}) VALUES ({marks})", vrows
                )
                cur.executemany("INSERT INTO modelkeep_fields (version_id, key, num, str) VALUES (?, ?, ?, ?)", frows)
                cur.executemany(
                    "INSERT INTO modelkeep_tags (model_name, version, key, value) VALUES (?, ?, ?, ?)", trows
                )
            vrows.clear()
            frows.clear()
            trows.clear()

        for n, (row, fields, tag) in enumerate(_rows(n_versions, n_models), 1):
            vrows.append(tuple(row[c] for c in _VERSION_COLUMNS))
            frows.extend((f["version_id"], f["key"], f["num"], f["str"]) for f in fields)
            trows.append(tag)
            if len(vrows) >= 10_000:
                flush()
                if n % 100_000 == 0:
                    print(f"  {index.dialect}: {n:,} versions", file=sys.stderr)
        flush()
        cur.execute(
            f"INSERT INTO {prefix}modelkeep_models (model_name, description, created_at, updated_at)"
            f" SELECT model_name, NULL, min(created_at), max(updated_at) FROM {prefix}modelkeep_versions"
            " GROUP BY model_name"
        )
        cur.execute(f"DELETE FROM {prefix}modelkeep_info WHERE key = '{MARKER}'")
        cur.execute(f"INSERT INTO {prefix}modelkeep_info (key, value) VALUES ('{MARKER}', '{n_versions}')")
        raw.commit()
        cur.execute("ANALYZE")
        raw.commit()
    finally:
        raw.close()
    return time.perf_counter() - started


def timed(fn: Any, repeats: int) -> dict[str, float]:
    """Median wall and CPU milliseconds of ``fn`` after one warm-up."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return {"wall_ms": statistics.median(wall), "cpu_ms": statistics.median(cpu)}


def _floor(index: SqlIndex, repeats: int) -> dict[str, float]:
    """The physical floor of a top-10 sort: ten rows read in order off the ``(key, num)`` index."""
    prefix = f'"{index.schema}".' if index.schema else ""
    sql = text(
        f"SELECT f.version_id, f.num FROM {prefix}modelkeep_fields AS f WHERE f.key = 'auc'"
        " ORDER BY f.num DESC LIMIT 10"
    )

    def run() -> None:
        with index.engine.connect() as conn:
            conn.execute(sql).all()

    return timed(run, repeats)


def _single_statement(index: SqlIndex, repeats: int) -> dict[str, float]:
    """The shape before segments, for comparison: ``accuracy > 0.5`` by ``-auc`` as one
    statement ordered by a computed rank (every match is sorted)."""
    prefix = f'"{index.schema}".' if index.schema else ""
    sql = text(
        f"SELECT v.record FROM {prefix}modelkeep_versions AS v LEFT OUTER JOIN {prefix}modelkeep_fields AS o"
        " ON o.version_id = v.id AND o.key = 'auc' WHERE v.deleted_at IS NULL AND v.id IN"
        f" (SELECT f.version_id FROM {prefix}modelkeep_fields AS f WHERE f.key = 'accuracy' AND f.num > 0.5)"
        " ORDER BY CASE WHEN o.num IS NOT NULL THEN 0 WHEN o.str IS NOT NULL THEN 1 ELSE 2 END,"
        " coalesce(o.num, 0.0) DESC, coalesce(o.str, '') DESC, v.id LIMIT 11"
    )

    def run() -> None:
        with index.engine.connect() as conn:
            conn.execute(sql).all()

    return timed(run, max(1, min(repeats, 3)))


def measure(index: SqlIndex, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    f, o = BOUNDED
    out["bounded"] = {
        "filter": f,
        "order_by": o,
        **timed(lambda: search_versions(index, f, order_by=o, limit=10), repeats),
    }
    out["unbounded"] = []
    for f2, o2 in UNBOUNDED:
        stats = timed(lambda f2=f2, o2=o2: search_versions(index, f2, order_by=o2, limit=10), repeats)
        out["unbounded"].append({"filter": f2, "order_by": o2, **stats})
    out["floor"] = _floor(index, repeats)
    out["single_statement"] = _single_statement(index, repeats)
    return out


def explain(index: SqlIndex) -> list[str]:
    """The plan of the unbounded sort's first segment (what the README quotes)."""
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        if "ORDER BY" in statement and not statement.startswith("EXPLAIN"):
            statements.append((statement, params))

    event.listen(index.engine, "before_cursor_execute", capture)
    try:
        search_versions(index, UNBOUNDED[0][0], order_by=UNBOUNDED[0][1], limit=10)
    finally:
        event.remove(index.engine, "before_cursor_execute", capture)
    statement, params = statements[0]
    raw = index.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(("EXPLAIN QUERY PLAN " if index.dialect == "sqlite" else "EXPLAIN ") + statement, params)
        return [" ".join(str(c) for c in row) for row in cur.fetchall()]
    finally:
        raw.close()


def ui(index_url: str, models_dir: Path, repeats: int, model: str = "model_0007") -> dict[str, Any]:
    """Server time and query count of the UI's pages on the 1M registry (SQLite)."""
    from starlette.testclient import TestClient

    from modelkeep import ModelPersistence
    from modelkeep.ui import create_app

    p = ModelPersistence(models_dir=models_dir, registry_url=index_url)
    queries = [0]
    event.listen(p.index.engine, "before_cursor_execute", lambda *a: queries.__setitem__(0, queries[0] + 1))
    pages = {
        "model page": f"/models/{model}",
        "chart data (2,000 points)": f"/api/models/{model}/chart?metric=accuracy",
        "models page": "/",
        "models page, next page": "/?after=" + (model[:-4] + "0199"),
    }
    out: dict[str, Any] = {}
    with TestClient(create_app(p), base_url="http://127.0.0.1") as client:
        for label, path in pages.items():
            times = []
            for i in range(repeats + 1):
                queries[0] = 0
                response = client.get(path)
                assert response.status_code == 200, (path, response.status_code)
                if i:
                    times.append(float(response.headers["server-timing"].split("dur=")[1]))
            out[label] = {"server_ms": statistics.median(times), "queries": queries[0]}
    p.close()
    return out


def peak_rss(args: list[str]) -> float:
    """Peak RSS (MiB) of a fresh ``python bench/search_scale.py --probe ...`` process."""
    done = subprocess.run(
        [sys.executable, __file__, "--probe", *args], capture_output=True, text=True, check=True, env=os.environ
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mib"])


def _probe(kind: str, url: str, models_dir: str, model: str = "model_0007") -> None:
    """Run one workload and print this process's peak RSS."""
    if kind == "search":
        index = SqlIndex(url)
        for f, o in [BOUNDED, *UNBOUNDED]:
            search_versions(index, f, order_by=o, limit=10)
        index.close()
    else:
        from starlette.testclient import TestClient

        from modelkeep import ModelPersistence
        from modelkeep.ui import create_app

        p = ModelPersistence(models_dir=Path(models_dir), registry_url=url)
        with TestClient(create_app(p), base_url="http://127.0.0.1") as client:
            for path in (f"/models/{model}", f"/api/models/{model}/chart?metric=accuracy", "/"):
                assert client.get(path).status_code == 200
        p.close()
    print(json.dumps({"peak_rss_mib": _own_peak_rss_mib()}))


def _own_peak_rss_mib() -> float:
    """This process's own peak RSS. Not ``ru_maxrss``: Linux carries it across ``execve``, so a
    probe started from this bench (after it built a registry) would report the parent's RSS."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _customer_models(count: int, seed: int = 1) -> list[Any]:
    """``count`` small fitted LogisticRegression models (a model per customer), each different."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        X = rng.normal(size=(40, 4))
        y = (X[:, 0] + rng.normal(scale=0.5, size=40) > 0).astype(int)
        out.append(LogisticRegression(max_iter=200).fit(X, y))
    return out


def _disk_bytes(folder: Path) -> int:
    """Allocated bytes of every file under ``folder`` (what ``du`` counts)."""
    return sum(p.lstat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def bulk_build(n_versions: int, per_model: int, repeats: int, loop_versions: int = 300) -> dict[str, Any]:
    """A registry of real versions built through ``save_many``, against a loop of ``save()``
    measured in the same run; then the UI on it and the build's peak RSS (a fresh process)."""
    import shutil
    import tempfile

    from modelkeep import ModelPersistence

    rng = random.Random(7)
    fitted = _customer_models(64)  # reused round-robin: each version still gets its own metrics
    n_models = max(1, n_versions // per_model)

    def item(i: int) -> dict[str, Any]:
        metadata = {k: round(rng.random(), 4) for k in METRICS}
        return {"model": fitted[i % len(fitted)], "model_name": f"customer_{i % n_models:05d}", **metadata}

    out: dict[str, Any] = {"versions": n_versions, "models": n_models, "loop_versions": loop_versions}
    root = Path(tempfile.mkdtemp(prefix="modelkeep-bulk-", dir=CACHE))
    try:
        loop = ModelPersistence(models_dir=root / "loop")
        loop.ensure_registry()
        started = time.perf_counter()
        for i in range(loop_versions):
            one = item(i)
            loop.save(one.pop("model"), one.pop("model_name"), **one)
        out["loop_ms_per_version"] = (time.perf_counter() - started) * 1000 / loop_versions
        loop.close()

        bulk = ModelPersistence(models_dir=root / "bulk")
        bulk.ensure_registry()
        started = time.perf_counter()
        chunk = 5_000  # save_many holds its items: give it a few thousand at a time
        for first in range(0, n_versions, chunk):
            bulk.save_many([item(i) for i in range(first, min(n_versions, first + chunk))])
            print(f"  save_many: {min(n_versions, first + chunk):,} versions", file=sys.stderr)
        seconds = time.perf_counter() - started
        out["bulk_s"] = seconds
        out["bulk_ms_per_version"] = seconds * 1000 / n_versions
        out["speedup"] = out["loop_ms_per_version"] / out["bulk_ms_per_version"]
        out["disk_bytes_per_version"] = _disk_bytes(root / "bulk") / n_versions
        out["files_per_version"] = sum(1 for p in (root / "bulk").rglob("*") if p.is_file()) / n_versions
        out["extrapolated_1m_hours"] = out["bulk_ms_per_version"] * 1_000_000 / 1000 / 3600
        out["extrapolated_1m_gb"] = out["disk_bytes_per_version"] * 1_000_000 / 1e9
        assert bulk.verify().ok
        bulk.close()
        url = f"sqlite:///{root / 'bulk' / 'registry.db'}"
        out["ui"] = ui(url, root / "bulk", repeats, model="customer_00007")
        out["ui_peak_rss_mib"] = peak_rss(["ui", url, str(root / "bulk"), "customer_00007"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def run(n_versions: int, n_models: int, repeats: int, postgres: bool = True, saved: int = 20_000) -> dict[str, Any]:
    CACHE.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"versions": n_versions, "models": n_models, "metrics": len(METRICS)}
    sqlite_url = f"sqlite:///{CACHE / f'registry_{n_versions}.db'}"
    targets = [("sqlite", sqlite_url, None)]
    if postgres:
        targets.append(("postgresql", PG_URL, f"bench_search_{n_versions}"))
    for kind, url, schema in targets:
        try:
            index = SqlIndex(url, schema=schema)
        except Exception as exc:  # PostgreSQL not running: report, keep the SQLite figures
            results[kind] = {"error": str(exc).splitlines()[0]}
            continue
        try:
            build_s = build(index, n_versions, n_models)
            results[kind] = {"build_s": build_s, **measure(index, repeats), "plan": explain(index)}
        finally:
            index.close()
        print(json.dumps({kind: results[kind]}, indent=2), file=sys.stderr)
    models_dir = CACHE / "models"
    models_dir.mkdir(exist_ok=True)
    results["ui"] = ui(sqlite_url, models_dir, repeats)
    results["memory"] = {
        "search_peak_rss_mib": peak_rss(["search", sqlite_url, str(models_dir)]),
        "ui_peak_rss_mib": peak_rss(["ui", sqlite_url, str(models_dir)]),
    }
    if saved:
        results["bulk"] = bulk_build(saved, max(1, n_versions // n_models), repeats)
    results["load_average"] = os.getloadavg()
    return results


def run_section(quick: bool) -> dict[str, Any]:
    """The ``search`` section of ``bench/run.py``: 1,000,000 versions (20,000 with ``--quick``)."""
    if quick:
        return run(20_000, 20, 3, saved=2_000)
    return run(1_000_000, 1_000, 11)


def report(results: dict[str, Any]) -> str:
    sq, pg = results.get("sqlite", {}), results.get("postgresql", {})
    lines = [
        f"{results['versions']:,} versions across {results['models']:,} models, {results['metrics']} metrics each.",
        "",
        "| query (limit 10) | order_by | SQLite CPU | SQLite wall | PostgreSQL wall |",
        "|---|---|---:|---:|---:|",
    ]
    unbounded = [("unbounded", i) for i in range(len(sq.get("unbounded", [])))]
    rows = [("bounded", None), *unbounded, ("single_statement", None), ("floor", None)]
    for key, i in rows:
        a = sq.get(key) if i is None else sq[key][i]
        b = pg.get(key) if i is None else (pg.get(key) or [None] * (i + 1))[i]
        label = {
            "floor": "floor: 10 rows off the `(key, num)` index",
            "single_statement": "before: `accuracy > 0.5` as one statement sorted by a computed rank",
        }.get(key) or f"`{a.get('filter') or '(none)'}`"
        order = "`-auc`" if key == "single_statement" else "" if key == "floor" else f"`{a.get('order_by')}`"
        pg_ms = f"{b['wall_ms']:.1f} ms" if b else pg.get("error", "n/a")
        lines.append(f"| {label} | {order} | {a['cpu_ms']:.1f} ms | {a['wall_ms']:.1f} ms | {pg_ms} |")
    lines += ["", "| UI page (SQLite) | server time | queries |", "|---|---:|---:|"]
    for label, r in results.get("ui", {}).items():
        lines.append(f"| {label} | {r['server_ms']:.1f} ms | {r['queries']} |")
    for kind, r in (("SQLite", sq), ("PostgreSQL", pg)):
        if r.get("plan"):
            lines += ["", f"{kind} plan of `accuracy > 0.5` by `-auc` (its first segment):", ""]
            lines += [f"    {step}" for step in r["plan"]]
    bulk = results.get("bulk")
    if bulk:
        lines += [
            "",
            f"Bulk path: {bulk['versions']:,} real versions ({bulk['models']:,} models) through `save_many`: "
            f"{bulk['bulk_ms_per_version']:.2f} ms per version against {bulk['loop_ms_per_version']:.2f} ms for a "
            f"loop of `save()` ({bulk['loop_versions']} versions, same run): {bulk['speedup']:.1f}x; "
            f"{bulk['disk_bytes_per_version'] / 1024:.1f} KiB and {bulk['files_per_version']:.1f} files per version. "
            f"1,000,000 versions this way: about {bulk['extrapolated_1m_hours']:.1f} h and "
            f"{bulk['extrapolated_1m_gb']:.0f} GB.",
            "",
            "| UI page on the save_many registry (SQLite) | server time | queries |",
            "|---|---:|---:|",
        ]
        for label, r in bulk["ui"].items():
            lines.append(f"| {label} | {r['server_ms']:.1f} ms | {r['queries']} |")
        lines.append(f"\nPeak RSS of the UI process on it: {bulk['ui_peak_rss_mib']:.0f} MiB.")
    mem = results.get("memory", {})
    if mem:
        lines.append(
            f"\nPeak RSS: search process {mem['search_peak_rss_mib']:.0f} MiB, "
            f"UI process {mem['ui_peak_rss_mib']:.0f} MiB."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--probe"]:
        _probe(*argv[1:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--versions", type=int, default=1_000_000)
    parser.add_argument("--models", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--saved", type=int, default=20_000, help="versions built through save_many (0: skip)")
    args = parser.parse_args(argv)
    results = run(args.versions, args.models, args.repeats, postgres=not args.no_postgres, saved=args.saved)
    (CACHE / "results.json").write_text(json.dumps(results, indent=2))
    print(report(results))


if __name__ == "__main__":
    main()
