"""What writing each lifecycle change to the store as an event file costs an alias move and a tag set.

Run: ``python bench/store_events.py [--repeats N] [--pg-url URL]``. Three variants of the same
registry in one run, interleaved operation by operation so that machine load hits them alike:

* ``index only``: the index transaction alone (``SqlIndex.journal`` unset), the release before;
* ``event file``: what modelkeep does: one small file created and written before COMMIT (no
  temporary file, no rename, no ``fsync``: a file a power cut loses is rewritten by ``gc``);
* ``event file + dir fsync``: the file staged, renamed into place and its directory ``fsync``'ed,
  as sidecars are written (``ArtifactStore.write_bytes``).

Medians, and ratios against ``index only``. Paste the output into bench/standalone.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

VARIANTS = ("index only", "event file", "event file + dir fsync")


def _open(variant: str, root: Path, pg_url: str | None, schema: str | None) -> object:
    from modelkeep import ModelPersistence

    options: dict[str, object] = {}
    if pg_url:
        options = {"registry_url": pg_url, "index_schema": schema}
    p = ModelPersistence(root, signing_key="bench-key", **options)  # type: ignore[arg-type]
    p.ensure_registry()
    p.save({"v": 0}, "m")
    p.save({"v": 1}, "m")
    if variant == "index only":
        p.index.journal = None
    elif variant == "event file + dir fsync":
        store = p.store
        store.write_new = store.write_bytes  # type: ignore[method-assign]
    return p


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--pg-url", default=None)
    args = parser.parse_args()
    os.environ.setdefault("MODELKEEP_CONFIG_DIR", tempfile.mkdtemp())
    times: dict[tuple[str, str], list[float]] = {(v, op): [] for v in VARIANTS for op in ("alias", "tag")}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        schemas = {}
        if args.pg_url:
            from sqlalchemy import create_engine, text

            from modelkeep.index.sql import normalize_url

            engine = create_engine(normalize_url(args.pg_url))
            with engine.begin() as conn:
                for i, _ in enumerate(VARIANTS):
                    schemas[i] = f"bench_events_{os.getpid()}_{i}"
                    conn.execute(text(f'CREATE SCHEMA "{schemas[i]}"'))
        try:
            registries = {v: _open(v, Path(tmp) / str(i), args.pg_url, schemas.get(i)) for i, v in enumerate(VARIANTS)}
            ops: dict[str, Callable[[object, int], None]] = {
                "alias": lambda p, i: p.set_alias("m", "production", f"1.0.{i % 2}"),  # type: ignore[attr-defined]
                "tag": lambda p, i: p.set_tag("m", "round", str(i)),  # type: ignore[attr-defined]
            }
            for i in range(args.repeats):
                for op, fn in ops.items():
                    for variant in VARIANTS if i % 2 else reversed(VARIANTS):
                        started = time.perf_counter()
                        fn(registries[variant], i)
                        times[(variant, op)].append((time.perf_counter() - started) * 1000)
            for p in registries.values():
                p.close()  # type: ignore[attr-defined]
        finally:
            if args.pg_url:
                with engine.begin() as conn:
                    for schema in schemas.values():
                        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                engine.dispose()
    backend = "PostgreSQL" if args.pg_url else "SQLite"
    print("| backend | variant | alias move (median ms) | ratio | tag set (median ms) | ratio |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    base = {op: statistics.median(times[("index only", op)]) for op in ("alias", "tag")}
    for variant in VARIANTS:
        a, t = (statistics.median(times[(variant, op)]) for op in ("alias", "tag"))
        print(f"| {backend} | {variant} | {a:.2f} | {a / base['alias']:.2f} | {t:.2f} | {t / base['tag']:.2f} |")


if __name__ == "__main__":
    main()
