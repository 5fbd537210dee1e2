"""Server time of the UI's pages on a model with 10,000 versions (target: first page <= 200 ms).

Usage (from the repository root)::

    python bench/ui_pages.py [--versions 10000] [--repeats 15]

A SQLite registry gets one model with ``--versions`` versions and one with 100
(the baseline, measured in the same run), bulk-inserted through the index
layer like ``bench/search.py`` does (no artifacts are needed to render pages).
Each page is requested through Starlette's test client; the figure is the
server's own ``Server-Timing`` header (handler time, no network), median of
``--repeats`` requests after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent / "src"))
sys.path.insert(0, str(BENCH_DIR))

from sqlalchemy import func, insert, select  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from modelkeep import ModelPersistence  # noqa: E402
from modelkeep.index.schema import models, versions  # noqa: E402
from modelkeep.ui import create_app  # noqa: E402
from search import build  # noqa: E402

#: Alias moves and tag changes written to each registry, so the history page has 500 rows to show.
HISTORY_CHANGES = 300


def _register_models(p: ModelPersistence) -> None:
    """The models rows the lifecycle layer expects (bulk insertion skips them)."""
    with p.index.engine.begin() as conn:
        rows = conn.execute(
            select(versions.c.model_name, func.min(versions.c.created_at), func.max(versions.c.updated_at)).group_by(
                versions.c.model_name
            )
        ).all()
        conn.execute(
            insert(models),
            [{"model_name": n, "description": None, "created_at": a, "updated_at": b} for n, a, b in rows],
        )


def server_ms(client: TestClient, path: str, repeats: int) -> float:
    """Median server time of ``GET path`` in milliseconds (from the Server-Timing header)."""
    times = []
    for i in range(repeats + 1):
        response = client.get(path)
        expected = 400 if "acuracy" in path else 200
        assert response.status_code == expected, (path, response.status_code)
        if i:  # the first request warms caches
            times.append(float(response.headers["server-timing"].split("dur=")[1]))
    return statistics.median(times)


def run(n_versions: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="modelkeep-ui-bench-") as tmp:
        big = ModelPersistence(models_dir=Path(tmp) / "big")
        small = ModelPersistence(models_dir=Path(tmp) / "small")
        build(big.ensure_registry(), n_versions, 1)  # opening a registry creates nothing
        build(small.ensure_registry(), 100, 1)
        for p in (big, small):
            _register_models(p)
            p.set_alias("model_000", "production", "1.42.0")
            p.set_alias("model_000", "staging", "1.43.0")
            p.set_tag("model_000", "owner", "growth-team", version="1.43.0")
            p.set_alias("model_000", "production", "1.43.0", expected="1.42.0")
            for i in range(HISTORY_CHANGES):  # a history page with real rows to diff
                p.set_alias("model_000", "canary", f"1.{i % 100}.0")
                p.set_tag("model_000", "reviewed", f"round {i}", version=f"1.{i % 100}.0")
        out: dict[str, Any] = {"versions": n_versions}
        pages = {
            "model page (first page, newest first)": "/models/model_000",
            "model page sorted by a metric": "/models/model_000?order=-accuracy",
            "version page": "/models/model_000/versions/1.42.0",
            "chart data (newest 2,000 versions)": "/api/models/model_000/chart?metric=accuracy",
            "models page": "/",
            "compare page (3 versions)": "/models/model_000/compare?v=1.40.0&v=1.41.0&v=1.42.0",
            "history page (newest 500 entries)": "/history",
            "search results (first 50)": "/?q=accuracy+%3E+0.5",
            "search typo (error in place, suggestion)": "/?q=acuracy+%3E+0.5",
        }
        loopback = "http://127.0.0.1"  # the UI answers only allowed Host names
        with (
            TestClient(create_app(big), base_url=loopback) as cb,
            TestClient(create_app(small), base_url=loopback) as cs,
        ):
            for label, path in pages.items():
                out[label] = {"big": server_ms(cb, path, repeats), "baseline_100": server_ms(cs, path, repeats)}
        big.close()
        small.close()
    return out


def report(results: dict[str, Any]) -> str:
    lines = [
        f"| page | {results['versions']:,} versions (ms) | 100 versions (ms) | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, r in results.items():
        if label == "versions":
            continue
        lines.append(f"| {label} | {r['big']:.1f} | {r['baseline_100']:.1f} | {r['big'] / r['baseline_100']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    print(report(run(args.versions, args.repeats)))


if __name__ == "__main__":
    main()
