"""Cold start-up time of the ``modelkeep`` command line.

Runs each command many times in a fresh subprocess and reports the median wall
time next to ``python -c pass`` (the interpreter's own start-up)::

    python bench/bench_startup.py [--runs 15]

A bench runner can import this module and call :func:`run`, which returns one
dict per command: ``name``, ``argv``, ``runs``, ``median_s``, ``min_s`` and
``ratio`` (median over the ``python -c pass`` median).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

SRC_DIR = Path(__file__).resolve().parent.parent / "src"


def _modelkeep_command() -> list[str]:
    """The installed console script if there is one, else ``python -m modelkeep``."""
    script = Path(sysconfig.get_path("scripts")) / "modelkeep"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "modelkeep"]


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELKEEP_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC_DIR), env.get("PYTHONPATH")]))
    return env


def _time(argv: list[str], runs: int, cwd: str, env: dict[str, str]) -> list[float]:
    subprocess.run(argv, cwd=cwd, env=env, capture_output=True, check=True)  # warm the disk cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return times


def run(runs: int = 15) -> list[dict[str, Any]]:
    """Measure every command ``runs`` times; return one result dict per command."""
    modelkeep = _modelkeep_command()
    env = _environment()
    with tempfile.TemporaryDirectory(prefix="modelkeep-bench-") as tmp:
        models_dir = str(Path(tmp) / "models")
        # An empty registry (list refuses a folder that has none, to catch typos).
        subprocess.run(
            [sys.executable, "-c", f"from modelkeep import ModelPersistence; ModelPersistence({models_dir!r}).close()"],
            check=True,
            env=env,
        )
        commands = [
            ("python -c pass", [sys.executable, "-c", "pass"]),
            ("modelkeep --help", [*modelkeep, "--help"]),
            ("modelkeep list (empty registry)", [*modelkeep, "--models-dir", models_dir, "list"]),
        ]
        results: list[dict[str, Any]] = []
        for name, argv in commands:
            times = _time(argv, runs, tmp, env)
            results.append(
                {
                    "name": name,
                    "argv": argv,
                    "runs": runs,
                    "median_s": statistics.median(times),
                    "min_s": min(times),
                }
            )
    baseline: float = results[0]["median_s"]
    for result in results:
        result["ratio"] = result["median_s"] / baseline
    return results


def to_markdown(results: list[dict[str, Any]]) -> str:
    """A markdown table of the results."""
    lines = [
        "| command | median (ms) | min (ms) | ratio to python -c pass |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(f"| `{r['name']}` | {r['median_s'] * 1000:.0f} | {r['min_s'] * 1000:.0f} | {r['ratio']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: print the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per command (default: 15)")
    args = parser.parse_args(argv)
    print(to_markdown(run(args.runs)))


if __name__ == "__main__":
    main()
