"""Search at scale: 100,000 versions across 100 models with 10 metrics each.

Usage (from the repository root)::

    python bench/search.py                 # SQLite, and PostgreSQL when it answers on 127.0.0.1
    python bench/search.py --versions 10000 --repeats 5   # a quicker run

The registry is built by bulk-inserting index rows (version rows, their searchable
field rows and one ``dataset`` tag per version) through the index layer's own row
builders, not by saving 100,000 artifacts. Then, per backend:

* the median of a filtered search with ``order_by`` and ``limit 10``
  (``accuracy > 0.9 AND tags.dataset = "v7"``, ``-accuracy``), and two more shapes;
* paging through every match of a broad filter, checking that each match is
  visited exactly once and that the pages equal one unpaged ``ORDER BY`` query;
* for comparison, the same first query written with SQLite's JSON functions over
  the ``record`` column (the design not chosen), as a baseline in the same run.

Prints a Markdown table and writes ``bench/.tmp/search.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent / "src"))

from sqlalchemy import func, insert, select, text  # noqa: E402

from modelkeep.index import SqlIndex  # noqa: E402
from modelkeep.index.common import record_row as _row  # noqa: E402
from modelkeep.index.fields import field_rows  # noqa: E402
from modelkeep.index.schema import fields, tags, versions  # noqa: E402
from modelkeep.metadata import ArtifactInfo, ModelMetadata  # noqa: E402
from modelkeep.search import iter_versions, search_versions  # noqa: E402

#: When the first bulk-inserted version was "saved" (each next one a second later).
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)
METRICS = ["accuracy", "auc", "f1", "precision", "recall", "loss", "rmse", "mae", "latency_ms", "epochs"]
QUERIES = [
    ('accuracy > 0.9 AND tags.dataset = "v7"', "-accuracy"),
    ("auc >= 0.5 AND loss < 0.2 AND epochs IN (10, 20)", ["-f1", "version"]),
    ('model_name = "model_042" AND version >= "1.500.0"', "-accuracy"),
]
PAGED = ("accuracy > 0.8", "-auc")
PG_URL = os.environ.get("MODELKEEP_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def build(index: SqlIndex, n_versions: int, n_models: int, seed: int = 0) -> float:
    """Bulk-insert ``n_versions`` versions; return the seconds it took."""
    rng = random.Random(seed)
    started = time.perf_counter()
    per_model = n_versions // n_models
    batch_versions: list[dict[str, Any]] = []
    batch_fields: list[dict[str, Any]] = []
    batch_tags: list[dict[str, Any]] = []
    vid = 0
    with index.engine.begin() as conn:

        def flush() -> None:
            for table, rows in ((versions, batch_versions), (fields, batch_fields), (tags, batch_tags)):
                if rows:
                    conn.execute(insert(table), rows)
                    rows.clear()

        for m in range(n_models):
            name = f"model_{m:03d}"
            for i in range(per_model):
                vid += 1
                metadata: dict[str, Any] = {k: round(rng.random(), 4) for k in METRICS}
                metadata["epochs"] = rng.choice([5, 10, 20, 40])  # ints beside floats
                record = ModelMetadata(
                    model_name=name,
                    model_type="RandomForestClassifier",
                    version=f"1.{i}.0",
                    created_at=(EPOCH + timedelta(seconds=vid)).isoformat(),
                    updated_at=(EPOCH + timedelta(seconds=vid)).isoformat(),
                    metadata=metadata,
                    artifact=ArtifactInfo(f"{name}/1.{i}.0/a.joblib", "joblib", None, 1000 + vid, "0" * 64),
                )
                batch_versions.append({"id": vid, **_row(record)})
                batch_fields.extend(field_rows(vid, metadata))
                batch_tags.append(
                    {"model_name": name, "version": record.version, "key": "dataset", "value": f"v{rng.randrange(10)}"}
                )
                if len(batch_versions) >= 5000:
                    flush()
        flush()
    if index.dialect == "postgresql":
        with index.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    return time.perf_counter() - started


def timed(fn: Any, repeats: int, cpu: list[float] | None = None) -> list[float]:
    """Wall-clock milliseconds per call; this process's CPU milliseconds go to ``cpu``."""
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
        if cpu is not None:
            cpu.append((time.process_time() - c0) * 1000)
    return out


def json_baseline(index: SqlIndex, repeats: int) -> float:
    """The first query with SQLite's JSON functions over ``record`` (no fields table)."""
    sql = text(
        "SELECT v.record FROM modelkeep_versions v WHERE v.deleted_at IS NULL "
        "AND json_extract(v.record, '$.metadata.accuracy') > :x "
        "AND EXISTS (SELECT 1 FROM modelkeep_tags t WHERE t.model_name = v.model_name "
        "AND t.version = v.version AND t.key = 'dataset' AND t.value = :d) "
        "ORDER BY json_extract(v.record, '$.metadata.accuracy') DESC, v.id LIMIT 10"
    )

    def run() -> None:
        with index.engine.connect() as conn:
            conn.execute(sql, {"x": 0.9, "d": "v7"}).all()

    return statistics.median(timed(run, repeats))


def measure(index: SqlIndex, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {"queries": []}
    for filter_text, order in QUERIES:

        def run(f: str = filter_text, o: Any = order) -> None:
            search_versions(index, f, order_by=o, limit=10)

        cpu: list[float] = []
        times = timed(run, repeats, cpu)
        hits = len(search_versions(index, filter_text, order_by=order, limit=10).items)
        out["queries"].append(
            {
                "filter": filter_text,
                "order_by": order,
                "median_ms": statistics.median(times),
                "cpu_median_ms": statistics.median(cpu),
                "hits": hits,
            }
        )
    filter_text, order = PAGED
    t0 = time.perf_counter()
    paged = [(r.model_name, r.version) for r in iter_versions(index, filter_text, order_by=order, page_size=1000)]
    paging_s = time.perf_counter() - t0
    with index.engine.connect() as conn:  # the same count, written by hand
        expected = conn.execute(
            select(func.count())
            .select_from(fields.join(versions, versions.c.id == fields.c.version_id))
            .where(fields.c.key == "accuracy", fields.c.num > 0.8, versions.c.deleted_at.is_(None))
        ).scalar_one()
    out["paging"] = {
        "filter": filter_text,
        "order_by": order,
        "matches": expected,
        "visited": len(paged),
        "distinct": len(set(paged)),
        "exactly_once": len(paged) == len(set(paged)) == expected,
        "seconds": paging_s,
    }
    if index.dialect == "sqlite":
        out["json_baseline_median_ms"] = json_baseline(index, repeats)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--versions", type=int, default=100_000)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"versions": args.versions, "models": args.models, "metrics": len(METRICS)}
    tmp = Path(tempfile.mkdtemp(prefix="search-", dir=BENCH_DIR / ".tmp" if (BENCH_DIR / ".tmp").is_dir() else None))
    try:
        targets = [("sqlite", f"sqlite:///{tmp / 'registry.db'}", None)]
        if not args.no_postgres:
            targets.append(("postgresql", PG_URL, f"bench_search_{uuid.uuid4().hex[:8]}"))
        for kind, url, schema in targets:
            try:
                index = SqlIndex(url, schema=schema)
            except Exception as exc:  # PostgreSQL not running: report, keep the SQLite figures
                results[kind] = {"error": str(exc).splitlines()[0]}
                continue
            try:
                build_s = build(index, args.versions, args.models)
                results[kind] = {"build_s": build_s, **measure(index, args.repeats)}
            finally:
                if schema is not None:
                    with index.engine.begin() as conn:
                        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
                index.close()
            print(json.dumps({kind: results[kind]}, indent=2), file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (BENCH_DIR / ".tmp").mkdir(exist_ok=True)
    (BENCH_DIR / ".tmp" / "search.json").write_text(json.dumps(results, indent=2))
    print(report(results))


def report(results: dict[str, Any]) -> str:
    sq, pg = results.get("sqlite", {}), results.get("postgresql", {})
    lines = [
        f"{results['versions']:,} versions across {results['models']} models, {results['metrics']} metrics each.",
        "",
        "| query (limit 10) | order_by | SQLite median | SQLite CPU median | PostgreSQL median |",
        "|---|---|---:|---:|---:|",
    ]
    for i, q in enumerate(sq.get("queries", [])):
        other = pg.get("queries", [])
        pg_ms = f"{other[i]['median_ms']:.1f} ms" if i < len(other) else pg.get("error", "n/a")
        lines.append(
            f"| `{q['filter']}` | `{q['order_by']}` | {q['median_ms']:.1f} ms | {q['cpu_median_ms']:.1f} ms | {pg_ms} |"
        )
    if "json_baseline_median_ms" in sq:
        lines.append(
            f"| same first query via `json_extract` on the record (baseline) | | "
            f"{sq['json_baseline_median_ms']:.1f} ms | | |"
        )
    for kind, r in (("SQLite", sq), ("PostgreSQL", pg)):
        if "paging" in r:
            p = r["paging"]
            lines.append(
                f"\n{kind}: paging `{p['filter']}` by `{p['order_by']}` in pages of 1,000 visited {p['visited']:,} "
                f"of {p['matches']:,} matches, {p['distinct']:,} distinct (exactly once: {p['exactly_once']}) "
                f"in {p['seconds']:.1f} s; building the registry took {r['build_s']:.0f} s."
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
