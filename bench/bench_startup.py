"""Cold start-up time of the ``modelkeep`` command line.

Runs each command many times in a fresh subprocess and reports the median wall
time next to ``python -c pass`` (the interpreter's own start-up), on an empty
registry and on one with 1,000 versions (10 models x 100 versions, each with two
metrics and a tag, one alias per model)::

    python bench/bench_startup.py [--runs 15]

A bench runner can import this module and call :func:`run`, which returns one
dict per command: ``name``, ``argv``, ``runs``, ``median_s``, ``min_s`` and
``ratio`` (median over the ``python -c pass`` median), and ``target_s`` for the
commands issue 17 sets a time for (see :data:`TARGETS`).
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
MODELS, VERSIONS_PER_MODEL = 10, 100
#: Issue 17: command name -> the most it may take (median, seconds).
TARGETS = {
    "modelkeep --help": 0.100,
    "modelkeep list (1,000 versions)": 0.150,
    "modelkeep list --model-name (1,000 versions)": 0.150,
    "modelkeep info --model-name (1,000 versions)": 0.150,
    "modelkeep search --limit 10 (1,000 versions)": 0.150,
}
#: Builds the 1,000-version registry in a subprocess (so this process never imports modelkeep).
_BUILD = """
import sys
from modelkeep import ModelPersistence
with ModelPersistence(sys.argv[1], compress=False) as p:
    for m in range({models}):
        name = f"model_{{m}}"
        for v in range({versions}):
            version = f"1.0.{{v}}"
            p.save({{"weights": v}}, name, version, accuracy=0.5 + v / 250, loss=1.0 - v / 200)
            p.set_tag(name, "stage", "prod" if v % 10 == 0 else "dev", version=version)
        p.set_alias(name, "production", f"1.0.{{{versions} // 2}}")
"""


def _modelkeep_command() -> list[str]:
    """The installed console script if there is one, else ``python -m modelkeep``."""
    script = Path(sysconfig.get_path("scripts")) / "modelkeep"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "modelkeep"]


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELKEEP_")}
    # As in an installed package, modules load from cached bytecode: the warm-up run of each
    # command writes it (a shell with PYTHONDONTWRITEBYTECODE would compile every module every run).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
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
        big = str(Path(tmp) / "big")
        build = _BUILD.format(models=MODELS, versions=VERSIONS_PER_MODEL)
        subprocess.run([sys.executable, "-c", build, big], check=True, env=env)
        on_big = [*modelkeep, "--models-dir", big]
        commands = [
            ("python -c pass", [sys.executable, "-c", "pass"]),
            ("modelkeep --help", [*modelkeep, "--help"]),
            ("modelkeep list (empty registry)", [*modelkeep, "--models-dir", models_dir, "list"]),
            ("modelkeep list (1,000 versions)", [*on_big, "list"]),
            ("modelkeep list --model-name (1,000 versions)", [*on_big, "list", "--model-name", "model_3"]),
            ("modelkeep info --model-name (1,000 versions)", [*on_big, "info", "--model-name", "model_3"]),
            (
                "modelkeep search --limit 10 (1,000 versions)",
                [*on_big, "search", "accuracy > 0.5 AND tags.stage = 'dev'", "--limit", "10"],
            ),
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
                    "target_s": TARGETS.get(name),
                }
            )
    baseline: float = results[0]["median_s"]
    for result in results:
        result["ratio"] = result["median_s"] / baseline
    return results


def to_markdown(results: list[dict[str, Any]]) -> str:
    """A markdown table of the results."""
    lines = [
        "| command | median (ms) | min (ms) | ratio to python -c pass | target |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        target = r.get("target_s")
        verdict = "" if target is None else "met" if r["median_s"] <= target else "**not met**"
        goal = "" if target is None else f"≤ {target * 1000:.0f} ms: {verdict}"
        lines.append(
            f"| `{r['name']}` | {r['median_s'] * 1000:.0f} | {r['min_s'] * 1000:.0f} | {r['ratio']:.1f} | {goal} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: print the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per command (default: 15)")
    args = parser.parse_args(argv)
    print(to_markdown(run(args.runs)))


if __name__ == "__main__":
    main()
