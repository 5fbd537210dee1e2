"""Render a results dict (as stored in results.json) into bench/README.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from targets import evaluate

MB = 1024 * 1024
#: Typographic signs for the markdown report.
X = "\u00d7"  # multiplication sign, as in "1.15x"
DASH = "\u2013"  # en dash, for ranges and missing values


def fmt_time(seconds: float | None) -> str:
    """Seconds as a short human figure: µs, ms or s."""
    if seconds is None:
        return DASH
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms" if seconds < 0.1 else f"{seconds * 1e3:.0f} ms"
    return f"{seconds:.2f} s"


def fmt_mb(nbytes: float | None) -> str:
    """Bytes as MB with one decimal (KB below 0.1 MB)."""
    if nbytes is None:
        return DASH
    return f"{nbytes / 1024:.1f} KB" if nbytes < MB / 10 else f"{nbytes / MB:.1f} MB"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def timing_table(stats: dict[str, Any] | None, baseline: str, nbytes: int | None = None) -> list[str]:
    """One row per case: median, range, repeats, optional MB/s, and the ratio to ``baseline``."""
    if not stats:
        return ["_not measured_", ""]
    base = (stats.get(baseline) or {}).get("median")
    header = ["method", "median", f"min {DASH} max", "runs"]
    header += ["MB/s"] if nbytes else []
    header += [f"ratio vs {baseline}"]
    rows = []
    for case, s in stats.items():
        if "error" in s:
            rows.append([case, f"error: {s['error']}", "", "", *([""] if nbytes else []), ""])
            continue
        row = [case, fmt_time(s["median"]), f"{fmt_time(s['min'])} {DASH} {fmt_time(s['max'])}", str(s["n"])]
        row += [f"{nbytes / MB / s['median']:,.0f}"] if nbytes else []
        row += [f"{s['median'] / base:.2f}{X}" if base else DASH]
        rows.append(row)
    return _table(header, rows)


def _failed(section: dict[str, Any] | None, *keys: str) -> bool:
    """True when a section did not run or holds none of the ``keys`` it should have."""
    return not section or not any(key in section for key in keys)


def _error_line(section: dict[str, Any] | None) -> list[str]:
    if section is None:
        return ["_Section not run._", ""]
    errors = {k: v for k, v in section.items() if "error" in k}
    return [f"_{k}: {v}_" for k, v in errors.items()] + ([""] if errors else [])


def targets_section(results: dict[str, Any]) -> list[str]:
    rows = [[v.target, v.measured, v.goal, v.status] for v in evaluate(results)]
    return ["## Targets (reported, not asserted)", "", *_table(["target", "measured", "goal", "status"], rows)]


def small_section(results: dict[str, Any]) -> list[str]:
    small = results.get("small")
    lines = ["## Small model (LogisticRegression) save+register and load", ""]
    if _failed(small, "save"):
        return lines + _error_line(small)
    lines += [f"Pickled size: {small['model_bytes']:,} bytes. modelkeep allocates the version itself.", ""]
    lines += _error_line(small)
    fsyncs = [small[k]["median"] for k in ("fsync_before", "fsync_after") if k in small]
    if fsyncs:
        lines += [
            "Disk right now: writing 4 KB to a new file and fsyncing it took "
            + " and ".join(fmt_time(f) for f in fsyncs)
            + " (median, before and after this section). A save that makes k fsync calls cannot take "
            "less than k times that, so compare runs through this figure.",
            "",
        ]
    lines += ["Save (modelkeep: save + register in one call):", ""]
    lines += timing_table(small.get("save"), "joblib.dump+fsync")
    lines += _save_costs(small)
    mlflow = results.get("mlflow") or {}
    lines += _mlflow_comparison(small, mlflow)
    lines += ["Load:", ""]
    lines += timing_table(small.get("load"), "joblib.load")
    mlflow_load = (mlflow.get("small") or {}).get("load")
    if mlflow_load:
        lines += [f"MLflow load_model(models:/...): {fmt_time(mlflow_load['median'])}.", ""]
    return lines


def _counts(counts: dict[str, Any], skip: tuple[str, ...]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in counts.items() if kind not in skip)


#: What each round trip of a small save on PostgreSQL is for, and why it is not folded into another
#: (docs/ARCHITECTURE.md, "What a save sends to the index"; pinned by tests/test_save_costs.py).
POSTGRES_TRIPS = [
    "What each round trip is for (pinned by tests/test_save_costs.py):",
    "",
    "1. the claim, one message and one implicit transaction (src/modelkeep/index/pg_claim.py): the",
    "   model's advisory lock, then the claim's insert, then the keys of stored artifacts with the",
    "   same bytes (dedup). The lock is a statement of its own, so the insert's snapshot sees every",
    "   claim committed before it was granted. The insert picks the next patch of the highest",
    "   version in SQL and claims it only when the model has no claim and the version no row;",
    "   otherwise nothing is inserted and the claim is taken as before (4 round trips: BEGIN + lock,",
    "   the model's claims and highest version, the insert, COMMIT).",
    "2. the row: `BEGIN`, the model's lock and the row's one statement in one message; the claim's",
    "   delete is the fence, and only when it removed the claim do the version row, its field rows,",
    "   the model's row and the history row go in.",
    "3. the row: `COMMIT`. Its own round trip: the history row's event file is written into the",
    "   store between the statement, which returns the row's id that names the file, and the",
    "   commit. This is the one over the minimum.",
    "",
    "No claim check reads the database before the files: a claim cannot be taken from a writer",
    "before its lease (15 min) runs out unless its process is provably dead, so a save whose lease",
    "is younger than half of it trusts it; past that it reads, as before, and the row's statement",
    'always does (src/modelkeep/index/claims.py, "Checks without a read"). Connections are pinged',
    "only after 1 s idle (no ping in a loop of saves); reads run in autocommit (no `BEGIN`/`ROLLBACK`).",
]


def _save_costs(small: dict[str, Any]) -> list[str]:
    """The syncs of one small save (SQLite) and its round trips and times on PostgreSQL."""
    lines: list[str] = []
    syncs = small.get("syncs_per_save") or {}
    if "total syncs" in syncs:
        lines += [
            f"One save made {syncs['total syncs']} syncs ({_counts(syncs, ('total syncs',))}), counted by "
            "bench/save_costs.py; docs/ARCHITECTURE.md says why each is needed.",
            "",
        ]
    pg = small.get("postgres") or {}
    trips = pg.get("round_trips_per_save") or {}
    if "total round trips" in trips:
        lines += [
            f"On PostgreSQL one save made {trips['total round trips']} network round trips "
            f"({_counts(trips, ('total round trips', 'claim protocol minimum'))}); the claim protocol needs "
            f"at least {trips['claim protocol minimum']} (two transactions, each sent in one batch).",
            "",
            *POSTGRES_TRIPS,
            "",
            *timing_table(pg.get("save"), "joblib.dump+fsync"),
        ]
    elif pg:
        lines += [f"PostgreSQL: {pg.get('skipped') or pg.get('error')}", ""]
    return lines


def _mlflow_comparison(small: dict[str, Any], mlflow: dict[str, Any]) -> list[str]:
    """Sentences comparing modelkeep's small save with MLflow's, with and without inference."""
    mk = (small.get("save") or {}).get("modelkeep (default) save", {}).get("median")
    lines = []
    for key, label in (("small", "log_model + register"), ("small_no_inference", "with pip_requirements given")):
        stats = (mlflow.get(key) or {}).get("save_register")
        if stats is None:
            continue
        speedup = f"; modelkeep (default) is **{stats['median'] / mk:,.0f}{X}** faster" if mk else ""
        lines.append(f"MLflow {mlflow['mlflow_version']} {label}: {fmt_time(stats['median'])}{speedup}.")
    return [*lines, ""] if lines else []


def large_section(results: dict[str, Any]) -> list[str]:
    large = results.get("large")
    lines = ["## Large models, uncompressed", ""]
    if _failed(large, "forest", "arrays"):
        return lines + _error_line(large)
    for workload, data in large.items():
        size = data["model_bytes"]
        lines += [f"### {workload} ({fmt_mb(size)} pickled)", "", *_error_line(data)]
        lines += ["Save:", "", *timing_table(data.get("save"), "joblib.dump+fsync", size)]
        lines += ["Load, warm page cache:", "", *timing_table(data.get("load"), "joblib.load", size)]
        lines += ["Load, pages dropped first (fadvise):", "", *timing_table(data.get("load_cold"), "joblib.load", size)]
        if data.get("floors"):
            lines += [
                "What the hardware allows, on the same bytes in the same run (a verified load cannot beat the",
                "read plus whatever hashing does not overlap it; a save cannot beat the SHA-256 of its bytes,",
                "nor writing them and waiting for the fsync):",
                "",
                *timing_table(data["floors"], "read into memory (page cache)", size),
            ]
    return lines


def compression_section(results: dict[str, Any]) -> list[str]:
    comp = results.get("compression")
    lines = ["## Compressed save: compress=True vs joblib zlib level 3", ""]
    if _failed(comp, "forest", "arrays"):
        return lines + _error_line(comp)
    for workload, data in comp.items():
        size = data["model_bytes"]
        lines += [f"### {workload} ({fmt_mb(size)} pickled)", "", *_error_line(data)]
        lines += timing_table(data.get("save"), "joblib zlib-3+fsync", size)
        rows = [["joblib zlib-3", fmt_mb(data.get("joblib_bytes")), "zlib-3"]]
        rows.append(["modelkeep compress=True", fmt_mb(data.get("modelkeep_bytes")), str(data.get("modelkeep_codec"))])
        lines += _table(["file", "size", "codec"], rows)
        lines += ["Load of the compressed files:", "", *timing_table(data.get("load"), "joblib.load (zlib-3)", size)]
    return lines


def memory_section(results: dict[str, Any]) -> list[str]:
    memory = results.get("memory")
    lines = [
        "## Peak memory (RSS) of save and load",
        "",
        "Each figure is one operation in a fresh process: peak RSS during the operation minus "
        "RSS just before it (after the object was built or, for loads, before anything was read). "
        "The peak comes from the kernel's high-water mark (`VmHWM`, reset through "
        "`/proc/self/clear_refs` just before the operation), so short spikes are not missed. "
        "The target 'save memory <= model size + 64 MB' is checked on the save rows; a streaming "
        "save stays far below it (a few MB), a save that builds the whole file in memory "
        "would sit near 1x the model. A load necessarily allocates the model itself (1x), and "
        "scikit-learn trees briefly hold two copies of their node arrays while unpickling (2x).",
        "",
    ]
    if _failed(memory, "forest", "arrays"):
        return lines + _error_line(memory)
    rows = []
    for workload, data in memory.items():
        size = data["model_bytes"]
        for method, pair in data.items():
            if method == "model_bytes":
                continue
            for case in ("save", "load"):
                probe = pair[case]
                if "error" in probe:
                    rows.append([workload, method, case, f"error: {probe['error']}", ""])
                    continue
                delta = probe["delta"]
                rows.append([workload, method, case, fmt_mb(delta), f"{delta / size:.2f}{X} model"])
    header = ["workload", "method", "operation", "extra peak RSS", "relative to pickled size"]
    return lines + _table(header, rows)


def index_section(results: dict[str, Any], plot_name: str | None) -> list[str]:
    index = results.get("index")
    lines = ["## Index scaling: one model growing version by version", ""]
    if not index or "reads" not in index:
        return lines + _error_line(index)
    lines += _error_line(index)
    lines += [f"Versions saved: {index['versions_reached']:,} of {index['target_versions']:,}.", ""]
    if "save" in index:
        save = index["save"]
        lines += [
            f"Per-save latency: first window median {fmt_time(save['early']['median'])}, "
            f"last window median {fmt_time(save['late']['median'])} "
            f"(late/early {save['late_over_early']:.2f}{X}). Slowest stretch of the run (median of "
            f"{save['bin_size']} consecutive saves): {fmt_time(save['worst_bin'])}; all saves together: "
            f"{save['total_s']:.1f} s. Isolated bumps in the plot's save line that do not grow with the "
            "version count can come from other load on the shared machine.",
            "",
        ]
    ops = list(index["reads"][0]["ops"])
    rows = [
        [
            f"{r['versions']:,}",
            *(fmt_time(r["ops"][op].get("median")) if "median" in r["ops"][op] else "error" for op in ops),
        ]
        for r in index["reads"]
    ]
    lines += _table(["versions", *ops], rows)
    if plot_name:
        lines += [f"![index scaling]({plot_name})", ""]
    return lines


def dedup_section(results: dict[str, Any]) -> list[str]:
    dedup = results.get("dedup")
    lines = ["## Storage over a series of retrained versions (dedup)", ""]
    if _failed(dedup, "joblib_bytes_total"):
        return lines + _error_line(dedup)
    total = dedup["joblib_bytes_total"]
    lines += [
        f"{dedup['versions']} versions of a RandomForestRegressor retrained with warm_start, "
        f"{dedup['trees'][0]} → {dedup['trees'][-1]} trees. Baseline: the sum of the plain "
        f"joblib file sizes, {fmt_mb(total)}. modelkeep: everything under the registry directory.",
        "",
    ]
    rows = []
    for label, data in dedup["configs"].items():
        if "error" in data:
            rows.append([label, data["error"], "", ""])
        else:
            stored = data["stored_bytes"]
            rows.append([label, fmt_mb(stored), f"{stored / total:.2f}{X}", fmt_time(data["save_seconds_total"])])
    return lines + _table(
        ["modelkeep configuration", "bytes stored", "vs sum of joblib files", "total save time"], rows
    )


MLFLOW_CASES = {
    "small": "small, default log_model",
    "small_no_inference": "small, pip_requirements given",
    "forest": "forest, default log_model",
}


def mlflow_section(results: dict[str, Any]) -> list[str]:
    mlflow = results.get("mlflow")
    lines = ["## MLflow baseline", ""]
    if not mlflow or "mlflow_version" not in mlflow:
        reason = (mlflow or {}).get("error", "section not run")
        return [*lines, f"_MLflow was not measured: {reason}_", ""]
    lines += [
        f"MLflow {mlflow['mlflow_version']} in bench/.venv-mlflow, SQLite tracking and registry store, "
        "file artifact store, in a temporary directory. save+register = start_run + "
        "mlflow.sklearn.log_model(..., registered_model_name=...); load = mlflow.sklearn.load_model('models:/...'). "
        "By default log_model infers the pip requirements of the model, which spawns a subprocess and "
        "takes most of its time; the 'pip_requirements given' row skips that inference.",
        "",
    ]
    rows = []
    for key, label in MLFLOW_CASES.items():
        data = mlflow.get(key)
        if data is None:
            continue
        if "error" in data:
            rows.append([label, f"error: {data['error']}", "", "", "", ""])
            continue
        rows.append(
            [label, fmt_mb(data["model_bytes"]), str(data.get("serialization")),
             fmt_time(data["save_register"]["median"]), fmt_time(data["load"]["median"]),
             str(data["save_register"]["n"])]
        )  # fmt: skip
    return lines + _table(["model", "pickled size", "MLflow serializer", "save+register", "load", "runs"], rows)


def startup_section(results: dict[str, Any]) -> list[str]:
    startup = results.get("startup")
    lines = ["## CLI cold start", ""]
    if not startup or "rows" not in startup:
        if (startup or {}).get("error"):
            return [*lines, f"_bench/bench_startup.py's run() failed: {startup['error']}_", ""]
        note = (startup or {}).get("skipped") or "section not run"
        return [*lines, f"_Skipped: {note}_", ""]
    rows = startup["rows"]
    if not rows:
        return [*lines, "_bench_startup.run() returned no rows._", ""]
    header = list(dict.fromkeys(key for row in rows for key in row))
    body = [[_cell(row.get(key)) for key in header] for row in rows]
    return lines + _table(header, body)


def search_section(results: dict[str, Any]) -> list[str]:
    """Search and the UI at 1M versions (bench/search_scale.py)."""
    import search_scale

    search = results.get("search")
    lines = ["## Search and the UI at scale", ""]
    if not search or "sqlite" not in search:
        return [*lines, f"_{(search or {}).get('error', 'section not run')}_", ""]
    return [*lines, *search_scale.report(search).splitlines(), ""]


def unpickle_section(results: dict[str, Any]) -> list[str]:
    """Object-heavy unpickling (bench/unpickle.py): medians per workload and format."""
    section = results.get("unpickle")
    lines = ["## Unpickling object-heavy pickles (bench/unpickle.py)", ""]
    if not section or "rows" not in section:
        return [*lines, f"_{(section or {}).get('error') or 'section not run'}_", ""]
    scanner = section.get("scanner", "python")
    ab = all("python_scan_ratio" in row for row in section["rows"])
    header = ["workload", "format", "fast path", "pickle.loads", "format load", "ratio", "restricted", "scan floor"]
    if ab:
        header += ["ratio, Python scan", "floor, Python scan"]
    body = [
        [
            row["workload"],
            row["format"],
            "yes" if row["fast_path"] else "no",
            fmt_time(row["pickle.loads_s"]),
            fmt_time(row["format load_s"]),
            f"{row['ratio']:.2f}x",
            f"{row['restricted_ratio']:.2f}x",
            f"{row['floor_ratio']:.2f}x",
            *([f"{row['python_scan_ratio']:.2f}x", f"{row['python_floor_ratio']:.2f}x"] if ab else []),
        ]
        for row in section["rows"]
    ]
    which = "the C extension (formats/_plainscan.c)" if scanner == "c" else "pure Python (the extension was not built)"
    note = (
        "_ratio: the format's load over `pickle.loads`; restricted: the restricted unpickler alone (the path "
        "before the fast path); scan floor: the fast path's pre-scan plus `pickle.loads`, over `pickle.loads`. "
        f"Pre-scan: {which}"
        + ("; the last two columns: the same with the pure-Python scan, timed in the same rounds" if ab else "")
        + "._"
    )
    return [*lines, *_table(header, body), note, ""]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _dates_note(meta: dict[str, Any]) -> str:
    """Which sections were measured when, if not all in this run (a partial run keeps the rest)."""
    dates: dict[str, str] = meta.get("section_dates") or {}
    if len(set(dates.values())) <= 1:
        return ""
    by_date: dict[str, list[str]] = {}
    for name, date in dates.items():
        by_date.setdefault(date, []).append(name)
    parts = [f"{', '.join(names)}: {date}" for date, names in sorted(by_date.items(), reverse=True)]
    return " Sections measured at different times (" + "; ".join(parts) + "); see each section's load average."


def header_section(results: dict[str, Any]) -> list[str]:
    meta = results["meta"]
    mode = (
        "quick smoke run (`--quick`): small sizes, few repeats; not the reference figures"
        if meta["quick"]
        else "full run"
        if len(set((meta.get("section_dates") or {}).values())) <= 1
        else "the last run of each section"
    )
    lines = [
        "# modelkeep benchmarks",
        "",
        "Reproduce every figure on this page with one command from the repository root:",
        "",
        "```sh",
        meta["command"],
        "```",
        "",
        "`python bench/run.py --quick` is a smoke run of a minute or two that writes "
        "`bench/.tmp/README.quick.md` instead of this file. `--only` / `--skip` take section names "
        "(small, large, compression, memory, index, dedup, mlflow, startup, search, unpickle). Raw numbers of the "
        "last "
        "run are in `bench/results.json`.",
        "",
        f"This page: {mode}, {meta['date']}, {meta['duration_s'] / 60:.1f} min.{_dates_note(meta)}",
        f"Machine: {meta['cpu']}, {meta['cores']} cores, {meta['memory_gb']:.0f} GB RAM, {meta['platform']}. "
        f"Python {meta['python']}; " + ", ".join(f"{k} {v}" for k, v in meta["packages"].items()) + ".",
        "",
    ]
    if meta.get("joblib_classes_replaced"):
        names = ", ".join(f"`joblib.numpy_pickle.{n}`" for n in meta["joblib_classes_replaced"])
        lines += [
            f"Note: importing and using modelkeep replaced {names} process-wide; the joblib baselines "
            "put joblib's own classes back for each call, so they show plain joblib.",
            "",
        ]
    if meta.get("modelkeep_error"):
        lines += [f"**modelkeep could not be imported: {meta['modelkeep_error']}** — only baselines ran.", ""]
    return lines


HOW_TO_READ = """## How to read these tables

* Every timing is the **median** of repeated runs (`runs` column; 31 for the small model, 15
  for index reads, 5 for large objects, after one or two untimed warm-up runs), measured with `time.perf_counter` around
  the single call. `min - max` shows the spread; on this shared 2-core machine a difference of
  10-15 % between two medians is within noise.
* **ratio vs X** is *this row's median / X's median*: below 1.00x the row is faster than the
  baseline X, above 1.00x it is slower. The baselines are raw `joblib.dump` and `pickle.dump`
  (protocol 5) to a file followed by `fsync`, and plain `joblib.load` / `pickle.load`.
* Cases are interleaved (run 1 of every method, then run 2 of every method, in rotating order),
  so slow drifts of the machine affect every method alike.
* **MB/s** is the pickled size of the object divided by the median time.
* Page cache: dropping the OS caches needs privileges a benchmark should not use, so "warm"
  loads read files that were just written (in the page cache), and "pages dropped first" loads
  evict the files with `posix_fadvise(DONTNEED)` before each run; the hypervisor below may still
  cache them, so even those are not true cold-disk reads.
* All files go to fresh directories under `bench/.tmp/` on the same disk as the repository, so
  every `fsync` reaches the real disk.
* The targets table only reports; nothing in this suite fails when a target is missed.
"""


def render(results: dict[str, Any], plot_name: str | None) -> str:
    """The whole README as markdown."""
    lines = header_section(results)
    lines += targets_section(results)
    lines += [*HOW_TO_READ.splitlines(), ""]
    notes = section_notes()
    sections = [small_section(results), large_section(results), compression_section(results)]
    sections += [memory_section(results), index_section(results, plot_name)]
    for section in (dedup_section, mlflow_section, startup_section, search_section, unpickle_section):
        sections.append(section(results))
    for written in sections:
        lines += written
        heading = next((line for line in written if line.startswith("## ")), None)
        if heading in notes:
            while not lines[-1].strip():
                lines.pop()
            lines += ["", *notes.pop(heading), ""]
    if notes:
        raise ValueError(f"bench/notes.md has notes for sections run.py does not write: {sorted(notes)}")
    lines += standalone_sections()
    return "\n".join(lines).rstrip() + "\n"


def section_notes() -> dict[str, list[str]]:
    """What bench/notes.md says under each heading of a section run.py writes: paragraphs written
    by hand about a run (why a figure moved, what was tried), appended after that section's
    tables, so that a run keeps them."""
    path = Path(__file__).with_name("notes.md")
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    body = text.split("-->", 1)[1] if text.startswith("<!--") else text
    notes: dict[str, list[str]] = {}
    heading = None
    for line in body.strip().splitlines():
        if line.startswith("## "):
            heading = line
            notes[heading] = []
        elif heading is not None:
            notes[heading].append(line)
    return {h: "\n".join(block).strip().splitlines() for h, block in notes.items()}


def standalone_sections() -> list[str]:
    """The sections of the standalone scripts (bench/standalone.md), kept as they are: run.py
    does not run those scripts, so their last figures must survive its rewrite of the README."""
    path = Path(__file__).with_name("standalone.md")
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    body = text.split("-->", 1)[1] if text.startswith("<!--") else text
    return ["", *body.strip().splitlines()]
