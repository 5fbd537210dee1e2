"""Listing 10,000 versions with their aliases and tags, against listing them without.

One registry holds two models of ``--versions`` versions each (10,000 by default):
``plain`` has no aliases or tags, ``tagged`` has two tags on every version and five
aliases. Timed side by side, interleaved, in the same run:

* ``0.1 query``: what ``list_version_records`` did before the lifecycle (one
  ``SELECT record ... ORDER BY``, JSON-decoded), on ``plain``;
* ``list_version_records(plain)`` and ``list_version_records(tagged)``: today's call,
  which also reads trash state, descriptions, aliases and tags (three queries);
* ``list_versions`` of both.

Usage (from the repository root)::

    python bench/lifecycle_listing.py [--versions 10000] [--repeats 15] [--pg-url postgresql://...]
"""

from __future__ import annotations

import argparse
import json
import uuid
from pathlib import Path
from typing import Any

from common import compare_interleaved, ensure_modelkeep_importable, scratch_dir

ensure_modelkeep_importable()

from sqlalchemy import insert, select, text  # noqa: E402

from modelkeep import ModelMetadata, ModelPersistence  # noqa: E402
from modelkeep.index.schema import aliases, tags, versions  # noqa: E402
from modelkeep.metadata import ArtifactInfo  # noqa: E402


def _record(name: str, i: int) -> ModelMetadata:
    version = f"1.{i // 1000}.{i % 1000}"
    return ModelMetadata(
        model_name=name,
        model_type="LogisticRegression",
        version=version,
        created_at="2026-01-01T00:00:00+00:00",
        updated_at="2026-01-01T00:00:00+00:00",
        metadata={"accuracy": 0.9, "f1": 0.8, "model_params": {"C": 1.0, "max_iter": 100}},
        artifact=ArtifactInfo(f"{name}/{version}/{name}_v{version}.joblib", "joblib", "zstd:1", 1234, "0" * 64),
    )


def populate(p: ModelPersistence, count: int) -> None:
    """Both models in one transaction (the index as a long-lived registry would have it)."""
    records = [_record(name, i) for name in ("plain", "tagged") for i in range(count)]
    p.index.replace_all(records)
    tagged = [r.version for r in records if r.model_name == "tagged"]
    with p.index.engine.begin() as conn:
        conn.execute(
            insert(tags),
            [
                {"model_name": "tagged", "version": v, "key": key, "value": f"{key}-{n}"}
                for n, v in enumerate(tagged)
                for key in ("stage", "owner")
            ],
        )
        conn.execute(
            insert(aliases),
            [
                {"model_name": "tagged", "alias": a, "version": tagged[k * (count // 5)], "updated_at": "now"}
                for k, a in enumerate(("production", "staging", "champion", "challenger", "shadow"))
            ],
        )


def old_listing(p: ModelPersistence, name: str) -> list[ModelMetadata]:
    """The 0.1 ``list_records``: one query, every record decoded."""
    order = (versions.c.parsed.asc(), versions.c.sort_key.asc(), versions.c.id.asc())
    with p.index.engine.connect() as conn:
        rows = conn.execute(select(versions.c.record).where(versions.c.model_name == name).order_by(*order))
        return [ModelMetadata.from_dict(json.loads(r[0])) for r in rows]


def measure(p: ModelPersistence, count: int, repeats: int) -> dict[str, Any]:
    populate(p, count)
    tagged = p.list_version_records("tagged")
    assert len(tagged) == count and all(len(r.tags) == 2 for r in tagged)
    assert sum(bool(r.aliases) for r in tagged) == 5
    cases = {
        "0.1 query (plain)": lambda i: old_listing(p, "plain"),
        "list_version_records(plain)": lambda i: p.list_version_records("plain"),
        "list_version_records(tagged)": lambda i: p.list_version_records("tagged"),
        "list_versions(plain)": lambda i: p.list_versions("plain"),
        "list_versions(tagged)": lambda i: p.list_versions("tagged"),
    }
    return compare_interleaved(cases, repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--pg-url", help="also measure on this PostgreSQL database (a scratch schema is used)")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    with scratch_dir("lifecycle") as root:
        with ModelPersistence(models_dir=Path(root) / "models") as p:
            results["SQLite"] = measure(p, args.versions, args.repeats)
        if args.pg_url:
            schema = f"mk_bench_{uuid.uuid4().hex[:8]}"
            p = ModelPersistence(models_dir=Path(root) / "pg", registry_url=args.pg_url, index_schema=schema)
            try:
                results["PostgreSQL"] = measure(p, args.versions, args.repeats)
            finally:
                with p.index.engine.begin() as conn:
                    conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                p.close()
    print(f"{args.versions} versions per model, median of {args.repeats} interleaved runs\n")
    print("| backend | operation | median | vs 0.1 query |")
    print("|---|---|---|---|")
    for backend, cases in results.items():
        base = cases["0.1 query (plain)"]["median"]
        for name, stats in cases.items():
            print(f"| {backend} | {name} | {stats['median'] * 1000:.1f} ms | {stats['median'] / base:.2f}x |")


if __name__ == "__main__":
    main()
