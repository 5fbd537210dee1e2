"""Run every modelkeep benchmark side by side with its baselines and write bench/README.md.

Usage (from the repository root)::

    python bench/run.py            # full run, about 10 minutes; rewrites bench/README.md
    python bench/run.py --quick    # smoke run; writes bench/.tmp/README.quick.md
    python bench/run.py --only small,large
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import baselines  # first, so it records joblib's own classes before modelkeep can swap them
from common import BENCH_DIR, TMP_ROOT, Settings, error_text, load_modelkeep, log

SECTIONS = ("small", "large", "compression", "memory", "index", "dedup", "mlflow", "startup", "search", "unpickle")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="modelkeep benchmark suite")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (smoke run)")
    parser.add_argument("--only", default="", help="comma-separated sections to run")
    parser.add_argument("--skip", default="", help="comma-separated sections to leave out")
    parser.add_argument(
        "--output", type=Path, help="README to write, its results JSON beside it (default depends on --quick)"
    )
    args = parser.parse_args(argv)
    for name in filter(None, (args.only + "," + args.skip).split(",")):
        if name not in SECTIONS:
            parser.error(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")
    return args


def selected_sections(args: argparse.Namespace) -> list[str]:
    only = [s for s in args.only.split(",") if s] or list(SECTIONS)
    skip = set(filter(None, args.skip.split(",")))
    return [s for s in SECTIONS if s in only and s not in skip]


def _package_versions() -> dict[str, str]:
    versions = {}
    for name in ("modelkeep", "numpy", "scikit-learn", "joblib", "zstandard", "SQLAlchemy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed" if name != "modelkeep" else "from src/ (not installed)"
    return versions


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def environment(args: argparse.Namespace, modelkeep_error: str | None) -> dict[str, Any]:
    """What the report says about the machine and the run."""
    command = "python bench/run.py" + (" --quick" if args.quick else "")
    command += f" --only {args.only}" if args.only else ""
    command += f" --skip {args.skip}" if args.skip else ""
    return {
        "command": command,
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3,
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "packages": _package_versions(),
        "modelkeep_error": modelkeep_error,
    }


def run_startup() -> dict[str, Any]:
    """The CLI cold-start rows from bench/bench_startup.py, if that module exists."""
    if not (BENCH_DIR / "bench_startup.py").exists():
        return {"skipped": "bench/bench_startup.py is not present yet"}
    import bench_startup

    return {"rows": bench_startup.run()}


class Runner:
    """Runs the selected sections, sharing the large objects between them."""

    def __init__(self, settings: Settings, modelkeep: Any) -> None:
        self.settings = settings
        self.modelkeep = modelkeep
        self._objects: dict[str, Any] | None = None
        self.load_average: dict[str, list[float]] = {}

    def objects(self) -> dict[str, Any]:
        if self._objects is None:
            import large

            log("building the large workloads (the forest is cached in bench/.tmp/cache)")
            self._objects = large.workloads(self.settings)
        return self._objects

    def model_bytes(self) -> dict[str, int]:
        from workloads import pickled_size

        return {label: pickled_size(obj) for label, obj in self.objects().items()}

    def section(self, name: str) -> Callable[[], dict[str, Any]]:
        """The callable that measures section ``name``."""
        import compression
        import dedup
        import index_scaling
        import large
        import memory
        import mlflow_baseline
        import search_scale
        import small
        import unpickle

        s, mk = self.settings, self.modelkeep
        return {
            "small": lambda: small.run(s, mk),
            "large": lambda: large.run(s, mk, self.objects()),
            "compression": lambda: compression.run(s, mk, self.objects()),
            "memory": lambda: memory.run(s, mk, self.model_bytes()),
            "index": lambda: index_scaling.run(s, mk),
            "dedup": lambda: dedup.run(s, mk),
            "mlflow": lambda: mlflow_baseline.run(s),
            "startup": run_startup,
            "search": lambda: search_scale.run_section(s.quick),
            "unpickle": lambda: unpickle.run(rounds=3 if s.quick else 5, quick=s.quick),
        }[name]

    def run(self, names: list[str]) -> tuple[dict[str, Any], dict[str, float]]:
        """Results per section, and the seconds each section took."""
        results: dict[str, Any] = {}
        seconds: dict[str, float] = {}
        for name in names:
            log(f"section {name}")
            began = time.monotonic()
            load_before = os.getloadavg()[0]
            try:
                results[name] = self.section(name)()
            except Exception as exc:
                results[name] = {"error": error_text(exc)}
            seconds[name] = round(time.monotonic() - began, 1)
            # How busy the machine was (1-minute load average before and after): timings mean little under load.
            self.load_average[name] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        return results, seconds


def keep_other_sections(results: dict[str, Any], previous_path: Path) -> None:
    """A run of some sections (``--only``/``--skip``) keeps the other sections' figures of the
    last run in ``results`` (with when and under what load they were measured), so the page
    still shows every section, each with its own date."""
    try:
        previous = json.loads(previous_path.read_text())
    except (OSError, ValueError):
        return
    meta, old = results["meta"], previous.get("meta", {})
    for name in SECTIONS:
        if name in results or name not in previous:
            continue
        results[name] = previous[name]
        meta["section_dates"][name] = old.get("section_dates", {}).get(name, old.get("date", "unknown date"))
        for key in ("section_seconds", "load_average"):
            if name in old.get(key, {}):
                meta[key][name] = old[key][name]


def write_outputs(results: dict[str, Any], quick: bool, output: Path | None) -> Path:
    """Write results JSON, the index plot and the README; returns the README path."""
    import index_scaling
    import report

    out_dir = TMP_ROOT if quick else BENCH_DIR
    suffix = ".quick" if quick else ""
    readme = output or out_dir / f"README{suffix}.md"
    stem = "" if output is None else f"{output.stem}."
    if output is not None:  # beside that README: bench/results.json stays the one bench/README.md renders
        out_dir = output.resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}results{suffix}.json").write_text(json.dumps(results, indent=1) + "\n")
    plot = out_dir / f"{stem}index_scaling{suffix}.png"
    plotted = "index" in results and index_scaling.plot(results["index"], plot)
    plot_name = os.path.relpath(plot, readme.resolve().parent) if plotted else None
    readme.write_text(report.render(results, plot_name))
    return readme


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings.for_mode(args.quick)
    modelkeep, modelkeep_error = load_modelkeep()
    if modelkeep_error:
        log(f"modelkeep unavailable ({modelkeep_error}); measuring baselines only")
    began = time.monotonic()
    results: dict[str, Any] = {"meta": environment(args, modelkeep_error)}
    runner = Runner(settings, modelkeep)
    sections, seconds = runner.run(selected_sections(args))
    results.update(sections)
    results["meta"]["section_seconds"] = seconds
    results["meta"]["load_average"] = runner.load_average
    results["meta"]["section_dates"] = {name: results["meta"]["date"] for name in sections}
    if not args.quick and args.output is None:
        keep_other_sections(results, BENCH_DIR / "results.json")
    results["meta"]["joblib_classes_replaced"] = baselines.joblib_patched_by_others()
    results["meta"]["duration_s"] = time.monotonic() - began
    readme = write_outputs(results, args.quick, args.output)
    log(f"done in {results['meta']['duration_s'] / 60:.1f} min; report: {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
