"""What the pages show, computed from library records: no HTTP, no templates.

Kept apart from :mod:`modelkeep.ui.app` so that the table, chart and
comparison logic can be tested (and reused) without a server.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..metadata import ModelMetadata

#: Columns every versions table has, before the per-metric ones.
BASE_COLUMNS = ("version", "created_at", "model_type", "format", "size")
#: Metadata keys that are not metrics.
NOT_METRICS = frozenset({"model_params"})


def is_scalar(value: Any) -> bool:
    """A value that fits in one table cell and can be compared (not a dict or a list)."""
    return value is None or isinstance(value, (str, int, float, bool))


def metric_names(records: Iterable[ModelMetadata]) -> list[str]:
    """Every scalar custom field of ``records``, numeric ones first, each in first-seen order."""
    numeric: dict[str, None] = {}
    other: dict[str, None] = {}
    for rec in records:
        for key, value in rec.metadata.items():
            if key in NOT_METRICS or not is_scalar(value):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                numeric.setdefault(key, None)
            else:
                other.setdefault(key, None)
    return [*numeric, *(k for k in other if k not in numeric)]


def numeric_metrics(records: Iterable[ModelMetadata]) -> list[str]:
    """The fields that hold a number in at least one record (what a chart can plot)."""
    out: dict[str, None] = {}
    for rec in records:
        for key, value in rec.metadata.items():
            if key not in NOT_METRICS and isinstance(value, (int, float)) and not isinstance(value, bool):
                out.setdefault(key, None)
    return list(out)


def human_size(n: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def cell(value: Any) -> str:
    """How one value is written in a table cell."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


@dataclass
class ComparisonRow:
    """One field across the compared versions."""

    field: str
    values: list[str]

    @property
    def differs(self) -> bool:
        return len(set(self.values)) > 1


def comparison_rows(records: Sequence[ModelMetadata]) -> list[ComparisonRow]:
    """Every field of ``records`` side by side: identity, aliases, tags, metrics, params, environment."""
    rows: list[ComparisonRow] = []

    def add(field: str, values: list[Any]) -> None:
        rows.append(ComparisonRow(field, [cell(v) for v in values]))

    add("created_at", [r.created_at for r in records])
    add("model_type", [r.model_type for r in records])
    add("format", [r.artifact.format if r.artifact else None for r in records])
    add("size", [human_size(r.artifact.size) if r.artifact else None for r in records])
    add("sha256", [r.artifact.sha256[:16] if r.artifact else None for r in records])
    add("aliases", [", ".join(sorted(getattr(r, "aliases", []) or [])) for r in records])
    tag_keys: dict[str, None] = {}
    for r in records:
        tag_keys.update(dict.fromkeys(getattr(r, "tags", {}) or {}))
    for key in tag_keys:
        add(f"tags.{key}", [(getattr(r, "tags", {}) or {}).get(key) for r in records])
    for key in metric_names(records):
        add(key, [r.metadata.get(key) for r in records])
    param_keys: dict[str, None] = {}
    for r in records:
        param_keys.update(dict.fromkeys(r.metadata.get("model_params") or {}))
    for key in param_keys:
        add(f"params.{key}", [(r.metadata.get("model_params") or {}).get(key) for r in records])
    pkg_keys: dict[str, None] = {}
    for r in records:
        pkg_keys.update(dict.fromkeys((r.environment or {}).get("packages") or {}))
    add("python", [(r.environment or {}).get("python") for r in records])
    for key in pkg_keys:
        add(f"env.{key}", [((r.environment or {}).get("packages") or {}).get(key) for r in records])
    return rows


def chart_series(records: Sequence[ModelMetadata], metric: str, aliases: dict[str, str]) -> dict[str, Any]:
    """Data for the metric-across-versions chart: x positions, labels, values, alias marks.

    ``records`` are in version order. A version without the metric (or with a
    non-finite value) is a gap (``None``), not a zero.
    """
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)
    labels: list[str] = []
    values: list[float | None] = []
    marks: list[float | None] = []
    marked: list[dict[str, Any]] = []
    for i, rec in enumerate(records):
        raw = rec.metadata.get(metric)
        value = (
            float(raw)
            if isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(float(raw))
            else None
        )
        labels.append(rec.version)
        values.append(value)
        names = sorted(by_version.get(rec.version, []))
        marks.append(value if names else None)
        if names:
            marked.append({"x": i, "version": rec.version, "aliases": names, "value": value})
    return {
        "metric": metric,
        "x": list(range(len(records))),
        "labels": labels,
        "values": values,
        "marks": marks,
        "marked": marked,
    }


def load_snippet(record: ModelMetadata, models_dir: str, registry_url: str | None) -> str:
    """Copy-paste Python that loads exactly this version."""
    args = [f"models_dir={models_dir!r}"]
    if registry_url:
        args.append(f"registry_url={registry_url!r}")
    return (
        "from modelkeep import ModelPersistence\n\n"
        f"persistence = ModelPersistence({', '.join(args)})\n"
        f"model = persistence.load({record.model_name!r}, {record.version!r})\n"
    )
