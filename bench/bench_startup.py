"""Cold start-up time of the ``modelkeep`` command line.

Runs each command many times in a fresh subprocess and reports the median wall
time next to ``python -c pass`` (the interpreter's own start-up), on an empty
registry and on one with 1,000 versions (10 models x 100 versions, each with two
metrics and a tag, one alias per model)::

    python bench/bench_startup.py [--runs 15]

Issue 29's rows run the same commands with settings from many ``MODELKEEP_*``
variables, from a config file, on PostgreSQL (when ``MODELKEEP_BENCH_POSTGRES_URL``
names a database) and through a registry server (``modelkeep server`` on the same folder),
and a few of them again through the library (``MODELKEEP_CLI_FAST_PATH=0``) for comparison.

A bench runner can import this module and call :func:`run`, which returns one
dict per command: ``name``, ``argv``, ``runs``, ``median_s``, ``min_s``,
``cpu_median_s`` (user + system CPU of the process: less sensitive to a busy
machine than wall time) and ``ratio`` (median over the ``python -c pass``
median), and ``target_s`` for the commands issues 17 and 29 set a time for (see
:data:`TARGETS`).
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
    # issue 29: the same answers with settings from the environment, a config file, or PostgreSQL
    "modelkeep list (1,000 versions, MODELKEEP_MODELS_DIR)": 0.150,
    "modelkeep search --limit 10 (1,000 versions, MODELKEEP_MODELS_DIR)": 0.150,
    "modelkeep list (1,000 versions, MODELKEEP_MODELS_DIR and MODELKEEP_LOG_LEVEL)": 0.150,
    "modelkeep list (1,000 versions, config file)": 0.150,
    "modelkeep info --model-name (1,000 versions, config file)": 0.150,
    "modelkeep list (1,000 versions, 20 MODELKEEP_* settings)": 0.150,
    "modelkeep info --model-name (1,000 versions, 20 MODELKEEP_* settings)": 0.150,
    "modelkeep search --limit 10 (1,000 versions, 20 MODELKEEP_* settings)": 0.150,
    "modelkeep list (1,000 versions, full config file)": 0.150,
    "modelkeep info --model-name (1,000 versions, full config file)": 0.150,
    "modelkeep search --limit 10 (1,000 versions, full config file)": 0.150,
}
#: Issue 29: settings as a deployment sets them (all valid, none changing what a read prints).
MANY_SETTINGS = {
    "MODELKEEP_LOG_LEVEL": "warning",
    "MODELKEEP_SERIALIZATION_FORMAT": "joblib",
    "MODELKEEP_COMPRESS": "zstd:3",
    "MODELKEEP_STORAGE_OPTIONS": "{}",
    "MODELKEEP_TRUSTED_TYPES": "mypkg.Model",
    "MODELKEEP_CONNECT_TIMEOUT": "5",
    "MODELKEEP_READ_TIMEOUT": "30",
    "MODELKEEP_PROTECTED_ALIASES": "production,prod-eu",
    "MODELKEEP_PROTECTED_ALIAS_USERS": "alice",
    "MODELKEEP_TRUSTED_RELEASERS": "",
    "MODELKEEP_REQUIRE_SIGNATURES": "auto",
    "MODELKEEP_QUARANTINE": "auto",
    "MODELKEEP_QUARANTINE_TIMEOUT": "60",
    "MODELKEEP_QUARANTINE_MEMORY_MB": "auto",
    "MODELKEEP_MAX_LOAD_MEMORY": "4GiB",
    "MODELKEEP_MAX_CONCURRENCY": "8",
    "MODELKEEP_PART_SIZE": "16MiB",
    "MODELKEEP_CACHE_MAX_BYTES": "20GiB",
    "MODELKEEP_TOKEN": "",
}
FULL_CONFIG = """\
logging:
  level: WARNING
persistence:
  models_dir: {models_dir}
  registry_path: null
  serialization_format: joblib
  compress: true
  storage_options: {{}}
  trusted_keys: []
  require_signatures: auto
  connect_timeout: 5
  read_timeout: 30
  protected_aliases: [production]
  quarantine: auto
  max_load_memory: 4GiB
  cache_max_bytes: 20GiB
"""
#: Set to "0" in a row's environment to time the library's path (modelkeep/cli_readonly.py).
FAST_PATH_VAR = "MODELKEEP_CLI_FAST_PATH"
#: PostgreSQL rows: 150 ms plus one round trip (measured in the same run and added to the target).
PG_TARGET_S = 0.150
#: Rows through a registry server (``modelkeep server`` on the 1,000-version folder, named by
#: ``MODELKEEP_REGISTRY_URL`` and ``MODELKEEP_TOKEN``): 150 ms plus the same command's own work
#: run warm (in one process, after a warm-up: its requests to the server and their answers),
#: measured in the same run and added to the target.
SERVER_TARGET_S = 0.150
#: The database the PostgreSQL rows use (skipped when unset); each run uses a fresh schema.
PG_URL_VAR = "MODELKEEP_BENCH_POSTGRES_URL"
#: Creates an empty registry (reading never creates one, and list refuses a folder without one).
_EMPTY = "from modelkeep import ModelPersistence\nwith ModelPersistence({models_dir!r}) as p:\n    p.ensure_registry()"
#: Builds the 1,000-version registry in a subprocess (so this process never imports modelkeep).
_BUILD = """
import sys
from modelkeep import ModelPersistence
with ModelPersistence(sys.argv[1], compress=False, registry_url=(sys.argv[2] if len(sys.argv) > 2 else None)) as p:
    for m in range({models}):
        name = f"model_{{m}}"
        for v in range({versions}):
            version = f"1.0.{{v}}"
            p.save({{"weights": v}}, name, version, accuracy=0.5 + v / 250, loss=1.0 - v / 200)
            p.set_tag(name, "stage", "prod" if v % 10 == 0 else "dev", version=version)
        p.set_alias(name, "production", f"1.0.{{{versions} // 2}}")
"""


#: Makes an admin token on a registry (argv: its models dir) and prints it.
_TOKEN = """
import sys
from modelkeep import ModelPersistence
with ModelPersistence(sys.argv[1]) as p:
    if p.users.get("bench") is None:
        p.users.add("bench", None, "admin")
    print(p.users.new_token("bench", "bench"))
"""
#: Times a command run warm: argv = the command's arguments as JSON; prints the median seconds.
_WARM = """
import json, statistics, sys, time
from click.testing import CliRunner
from modelkeep.cli import cli
args, runner = json.loads(sys.argv[1]), CliRunner()
for _ in range(3):
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
times = []
for _ in range(15):
    started = time.perf_counter()
    runner.invoke(cli, args)
    times.append(time.perf_counter() - started)
print(statistics.median(times))
"""


def _server(big: str, tmp: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], str, str]:
    """``modelkeep server`` on the registry ``big``: the process, its URL and an admin token."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    made = subprocess.run([sys.executable, "-c", _TOKEN, big], env=env, cwd=tmp, capture_output=True, text=True)
    token = made.stdout.strip().splitlines()[-1]
    process = subprocess.Popen(
        [*_modelkeep_command(), "--models-dir", big, "server", "--port", str(port)],
        env=env,
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/api/v1/openapi.json", timeout=2):
                return process, url, token
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("modelkeep server did not start") from None
            time.sleep(0.1)


def _warm(args: list[str], env: dict[str, str], cwd: str) -> float:
    """Median seconds of ``modelkeep ARGS`` run in one warm process (no start-up)."""
    import json

    out = subprocess.run(
        [sys.executable, "-c", _WARM, json.dumps(args)], env=env, cwd=cwd, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


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


def _postgres(tmp: str, env: dict[str, str]) -> tuple[str, float, str] | None:
    """A PostgreSQL URL on a fresh schema holding the 1,000-version registry (analyzed, see
    :func:`_analyze`), one round trip's time (median of ``SELECT 1``) and the schema
    (:func:`_drop`); ``None`` when :data:`PG_URL_VAR` is unset."""
    base = os.environ.get(PG_URL_VAR)
    if not base:
        return None
    import uuid

    import psycopg

    schema = f"bench_cli_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        trips = []
        for _ in range(20):
            began = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            trips.append(time.perf_counter() - began)
    sep = "&" if "?" in base else "?"
    url = f"{base}{sep}options=-csearch_path%3D{schema}"
    build = _BUILD.format(models=MODELS, versions=VERSIONS_PER_MODEL)
    try:
        subprocess.run([sys.executable, "-c", build, str(Path(tmp) / "pg-store"), url], check=True, env=env)
        _analyze(base, schema)
    except BaseException:
        _drop(schema)
        raise
    return url, statistics.median(trips), schema


def _analyze(base: str, schema: str) -> None:
    """Statistics for the new schema's tables, as autovacuum gathers them soon after a database
    fills (the bench's server may run without it): without them the planner takes the search
    row's query for one on empty tables, and the server spends ~200 ms on what takes ~10 ms
    (bench/search.py analyzes its registries too)."""
    import psycopg

    with psycopg.connect(base, autocommit=True) as conn:
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", [schema]).fetchall()
        for (table,) in tables:
            conn.execute(f'ANALYZE "{schema}"."{table}"')


def _drop(schema: str) -> None:
    """Remove the schema :func:`_postgres` made."""
    import psycopg

    with psycopg.connect(os.environ[PG_URL_VAR], autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _time(argv: list[str], runs: int, cwd: str, env: dict[str, str]) -> tuple[list[float], list[float]]:
    """Wall times and CPU times (user + system of the child) of ``runs`` runs."""
    import resource

    subprocess.run(argv, cwd=cwd, env=env, capture_output=True, check=True)  # warm the disk cache
    times, cpu = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return times, cpu


def run(runs: int = 15) -> list[dict[str, Any]]:
    """Measure every command ``runs`` times; return one result dict per command."""
    modelkeep = _modelkeep_command()
    env = _environment()
    with tempfile.TemporaryDirectory(prefix="modelkeep-bench-") as tmp:
        models_dir = str(Path(tmp) / "models")
        # An empty registry (list refuses a folder that has none, to catch typos).
        subprocess.run(
            [sys.executable, "-c", _EMPTY.format(models_dir=models_dir)],
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
        # the same registry named by MODELKEEP_* variables, then by a config file
        dir_env = {**env, "MODELKEEP_MODELS_DIR": big}
        settings_env = {**dir_env, "MODELKEEP_LOG_LEVEL": "WARNING"}
        config = Path(tmp) / "bench-config.yaml"
        config.write_text(f"persistence:\n  models_dir: {big}\nlogging:\n  level: WARNING\n")
        on_config = [*modelkeep, "--config", str(config)]
        search = ["search", "accuracy > 0.5 AND tags.stage = 'dev'", "--limit", "10"]
        runs_with: list[tuple[str, list[str], dict[str, str], float | None]] = [
            (name, argv, env, TARGETS.get(name)) for name, argv in commands
        ]
        info = ["info", "--model-name", "model_3"]
        with_dir, with_config = "(1,000 versions, MODELKEEP_MODELS_DIR)", "(1,000 versions, config file)"
        with_settings = "(1,000 versions, MODELKEEP_MODELS_DIR and MODELKEEP_LOG_LEVEL)"
        runs_with += [
            (f"modelkeep list {with_dir}", [*modelkeep, "list"], dir_env, None),
            (f"modelkeep search --limit 10 {with_dir}", [*modelkeep, *search], dir_env, None),
            (f"modelkeep list {with_settings}", [*modelkeep, "list"], settings_env, None),
            (f"modelkeep list {with_config}", [*on_config, "list"], env, None),
            (f"modelkeep info --model-name {with_config}", [*on_config, *info], env, None),
        ]
        # issue 29: many settings from the environment, a full config file, and the library's path
        many_env = {**dir_env, **MANY_SETTINGS}
        full = Path(tmp) / "full-config.yaml"
        full.write_text(FULL_CONFIG.format(models_dir=big))
        on_full = [*modelkeep, "--config", str(full)]
        with_many, with_full = "(1,000 versions, 20 MODELKEEP_* settings)", "(1,000 versions, full config file)"
        library_env = {**many_env, FAST_PATH_VAR: "0"}
        runs_with += [
            (f"modelkeep list {with_many}", [*modelkeep, "list"], many_env, None),
            (f"modelkeep info --model-name {with_many}", [*modelkeep, *info], many_env, None),
            (f"modelkeep search --limit 10 {with_many}", [*modelkeep, *search], many_env, None),
            (f"modelkeep list {with_full}", [*on_full, "list"], env, None),
            (f"modelkeep info --model-name {with_full}", [*on_full, *info], env, None),
            (f"modelkeep search --limit 10 {with_full}", [*on_full, *search], env, None),
            (f"modelkeep list {with_many} through the library", [*modelkeep, "list"], library_env, None),
            (f"modelkeep info --model-name {with_many} through the library", [*modelkeep, *info], library_env, None),
        ]
        postgres = _postgres(tmp, env)
        if postgres is not None:
            url, trip, _schema = postgres
            on_pg = [*modelkeep, "--models-dir", str(Path(tmp) / "pg-store"), "--registry-url", url]
            for name, argv in (
                ("modelkeep list (1,000 versions, PostgreSQL)", [*on_pg, "list"]),
                ("modelkeep info --model-name (1,000 versions, PostgreSQL)", [*on_pg, *info]),
                ("modelkeep search --limit 10 (1,000 versions, PostgreSQL)", [*on_pg, *search]),
            ):
                runs_with.append((name, argv, env, PG_TARGET_S + trip))
            runs_with += [
                (
                    "modelkeep list (1,000 versions, PostgreSQL, 20 MODELKEEP_* settings)",
                    [*on_pg, "list"],
                    {**env, **MANY_SETTINGS},
                    PG_TARGET_S + trip,
                ),
                (
                    "modelkeep list (1,000 versions, PostgreSQL) through the library",
                    [*on_pg, "list"],
                    {**env, FAST_PATH_VAR: "0"},
                    None,
                ),
            ]
        server, url, token = _server(big, tmp, env)
        try:
            served_env = {**env, "MODELKEEP_REGISTRY_URL": url, "MODELKEEP_TOKEN": token}
            for name, args in (
                ("modelkeep list (1,000 versions, through a server)", ["list"]),
                ("modelkeep info --model-name (1,000 versions, through a server)", info),
                ("modelkeep search --limit 10 (1,000 versions, through a server)", search),
            ):
                target = SERVER_TARGET_S + _warm(args, served_env, tmp)
                runs_with.append((name, [*modelkeep, *args], served_env, target))
            runs_with.append(
                (
                    "modelkeep list (1,000 versions, through a server) through the library",
                    [*modelkeep, "list"],
                    {**served_env, FAST_PATH_VAR: "0"},
                    None,
                )
            )
            results = [_row(name, argv, runs, tmp, run_env, target) for name, argv, run_env, target in runs_with]
            _add_floors(results, [run_env for _, _, run_env, _ in runs_with], runs, tmp)
        finally:
            server.terminate()
            server.wait(30)
            if postgres is not None:
                _drop(postgres[2])
    baseline: float = results[0]["median_s"]
    for result in results:
        result["ratio"] = result["median_s"] / baseline
    return results


#: Imports, in a fresh interpreter, every module named in argv[1] (JSON): a command's floor.
_IMPORT_ALL = """
import importlib, json, sys
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception:
        pass
"""


def _libraries(argv: list[str], env: dict[str, str], cwd: str) -> list[str]:
    """Every module a command imports that is not modelkeep's own (``-X importtime``), in order."""
    script = argv[0] if argv[0] != sys.executable else None
    command = [sys.executable, "-X", "importtime", *([script] if script else []), *argv[1:]]
    out = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, check=True)
    names = []
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            name = line.rsplit("|", 1)[1].strip()
            if name.split(".")[0] not in ("modelkeep", "__main__"):
                names.append(name)
    return names


def _add_floors(results: list[dict[str, Any]], envs: list[dict[str, str]], runs: int, cwd: str) -> None:
    """Give each row with a target its floor, measured as the rows are: a fresh interpreter that
    imports every library module the command imports (the standard library's, click's,
    cryptography's...) and none of modelkeep's, so the rest is modelkeep's code and the work."""
    import json

    floors: dict[tuple[str, ...], dict[str, float]] = {}
    for row, env in zip(results, envs, strict=True):
        if row.get("target_s") is None:
            continue
        names = tuple(_libraries(row["argv"], env, cwd))
        if names not in floors:
            times, _cpu = _time([sys.executable, "-c", _IMPORT_ALL, json.dumps(names)], runs, cwd, env)
            floors[names] = {"median_s": statistics.median(times), "modules": len(names)}
        row["floor_s"] = floors[names]["median_s"]
        row["floor_modules"] = floors[names]["modules"]


def _row(name: str, argv: list[str], runs: int, cwd: str, env: dict[str, str], target: float | None) -> dict[str, Any]:
    """One command's result dict."""
    times, cpu = _time(argv, runs, cwd, env)
    return {
        "name": name,
        "argv": argv,
        "runs": runs,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "cpu_median_s": statistics.median(cpu),
        "target_s": target if target is not None else TARGETS.get(name),
    }


def to_markdown(results: list[dict[str, Any]]) -> str:
    """A markdown table of the results."""
    lines = [
        "| command | median (ms) | min (ms) | CPU median (ms) | ratio to python -c pass | target |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        target = r.get("target_s")
        verdict = "" if target is None else "met" if r["median_s"] <= target else "**not met**"
        goal = "" if target is None else f"≤ {target * 1000:.0f} ms: {verdict}"
        lines.append(
            f"| `{r['name']}` | {r['median_s'] * 1000:.0f} | {r['min_s'] * 1000:.0f} | "
            f"{r.get('cpu_median_s', float('nan')) * 1000:.0f} | {r['ratio']:.1f} | {goal} |"
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
