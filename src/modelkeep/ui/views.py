"""What the pages show, computed from library records: no HTTP, no templates.

Kept apart from :mod:`modelkeep.ui.app` so that the table, chart and
comparison logic can be tested (and reused) without a server.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from markupsafe import Markup, escape

from ..metadata import ModelMetadata

#: The multiplication sign, as in "1,000 rows by 8 columns".
TIMES = "\u00d7"
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
    """One field across the compared versions.

    ``best`` holds the column indexes of the best value of a numeric metric row
    (see :func:`lower_is_better`), empty for other rows and for ties across all columns.
    """

    field: str
    values: list[str]
    best: list[int] = dataclasses.field(default_factory=list)
    direction: str = ""

    @property
    def differs(self) -> bool:
        return len(set(self.values)) > 1


#: Words in a metric name that mean a smaller value is better (matched as whole
#: ``_``/``-``/``.``-separated parts, or as a suffix such as ``val_loss``).
LOWER_IS_BETTER = (
    "loss",
    "error",
    "err",
    "mse",
    "rmse",
    "mae",
    "mape",
    "seconds",
    "secs",
    "sec",
    "ms",
    "time",
    "latency",
    "duration",
    "perplexity",
    "size",
    "bytes",
    "fpr",
    "fnr",
)


def lower_is_better(metric: str) -> bool:
    """``True`` when a smaller ``metric`` is better: its name has a part that means a
    loss, an error or a cost (``val_loss``, ``rmse``, ``train_seconds``, ``latency_ms``);
    every other metric counts as higher-is-better (accuracy, auc, f1, r2...)."""
    parts = [p for p in re.split(r"[^a-z0-9]+", metric.lower()) if p]
    return any(p in LOWER_IS_BETTER for p in parts)


def _best_columns(values: list[Any], lower: bool) -> list[int]:
    numbers = {i: float(v) for i, v in enumerate(values) if _is_number(v)}
    if len(numbers) < 2:
        return []
    target = min(numbers.values()) if lower else max(numbers.values())
    best = [i for i, v in numbers.items() if v == target]
    return [] if len(best) == len(values) else best


def _as_number(value: Any) -> float | None:
    return float(value) if _is_number(value) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


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
        raw = [r.metadata.get(key) for r in records]
        add(key, raw)
        if any(_is_number(v) for v in raw):
            lower = lower_is_better(key)
            rows[-1].best = _best_columns(raw, lower)
            rows[-1].direction = "lower" if lower else "higher"
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


def chart_series(points: Sequence[tuple[str, float | None]], metric: str, aliases: dict[str, str]) -> dict[str, Any]:
    """Data for the metric-across-versions chart: x positions, labels, values, alias marks.

    ``points`` are (version, value) in version order
    (:meth:`~modelkeep.ModelPersistence.metric_history`). A version without the
    metric (or with a non-finite value) is a gap (``None``), not a zero.
    """
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)
    labels: list[str] = []
    values: list[float | None] = []
    marks: list[float | None] = []
    marked: list[dict[str, Any]] = []
    for i, (version, raw) in enumerate(points):
        value = raw if raw is not None and math.isfinite(raw) else None
        labels.append(version)
        values.append(value)
        names = sorted(by_version.get(version, []))
        marks.append(value if names else None)
        if names:
            marked.append({"x": i, "version": version, "aliases": names, "value": value})
    return {
        "metric": metric,
        "x": list(range(len(points))),
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


def small_multiples(records: Sequence[ModelMetadata], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One small bar chart per numeric metric (each on its own scale), for the compare page.

    Each entry has the metric, its direction, and per version the value, the bar's
    share of the row's largest magnitude (0..1) and whether it is the best value.
    """
    out = []
    for metric in metrics:
        raw = [r.metadata.get(metric) for r in records]
        nums = [_as_number(v) for v in raw]
        present = [abs(v) for v in nums if v is not None]
        top = max(present) if present else 0.0
        lower = lower_is_better(metric)
        best = set(_best_columns(raw, lower))
        bars = [
            {
                "version": r.version,
                "value": cell(v) if v is not None else "",
                "share": (abs(v) / top if top else 0.0) if v is not None else None,
                "best": i in best,
            }
            for i, (r, v) in enumerate(zip(records, nums, strict=True))
        ]
        out.append({"metric": metric, "direction": "lower" if lower else "higher", "bars": bars})
    return out


# -- times ----------------------------------------------------------------------


def parse_time(value: Any) -> datetime | None:
    """An ISO-8601 string (as the index stores it) as an aware UTC datetime, else ``None``."""
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, str) and value:
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc)


def ago(when: datetime, now: datetime) -> str:
    """``"3 hours ago"``, ``"just now"``, ``"yesterday"``; ``""`` past a week (show the date)."""
    seconds = (now - when).total_seconds()
    if seconds < -60:
        return ""
    if seconds < 45:
        return "just now"
    for limit, size, unit in ((3600, 60, "minute"), (86400, 3600, "hour"), (7 * 86400, 86400, "day")):
        if seconds < limit:
            n = max(1, round(seconds / size))
            if unit == "day" and n == 1:
                return "yesterday"
            return f"{n} {unit}{'' if n == 1 else 's'} ago"
    return ""


def short_time(when: datetime) -> str:
    """``2026-12-05 14:02`` (UTC, to the minute)."""
    return when.strftime("%Y-%m-%d %H:%M")


def time_html(value: Any, now: datetime | None = None) -> Markup:
    """A ``<time>`` element: a human time ("3 hours ago", or "2026-12-05 14:02" past a
    week), with the exact ISO time in ``datetime`` and on hover (``title``)."""
    when = parse_time(value)
    if when is None:
        return Markup("") if value in (None, "") else Markup(escape(str(value)))
    exact = when.isoformat()
    label = ago(when, now or datetime.now(timezone.utc)) or short_time(when)
    title = f"{short_time(when)}:{when.strftime('%S')} UTC ({exact})"
    return Markup('<time datetime="{}" title="{}">{}</time>').format(exact, title, label)


# -- version details ----------------------------------------------------------


@dataclass
class SignatureView:
    """An input signature as rows of (name, dtype, nullable) and a few facts about it."""

    columns: list[dict[str, Any]]
    facts: list[tuple[str, str]]


def signature_view(signature: dict[str, Any] | None) -> SignatureView | None:
    """The table the version page shows for ``record.input_signature``."""
    if not signature:
        return None
    columns: list[dict[str, Any]] = []
    for col in signature.get("columns") or []:
        if isinstance(col, dict):
            nullable = col.get("nullable")
            columns.append(
                {
                    "name": str(col.get("name", "")),
                    "dtype": str(col.get("dtype", "")),
                    "nullable": "" if nullable is None else ("yes" if nullable else "no"),
                }
            )
    if not columns:
        for name in signature.get("feature_names") or []:
            columns.append({"name": str(name), "dtype": "", "nullable": ""})
    facts: list[tuple[str, str]] = []
    if signature.get("n_features") is not None:
        facts.append(("features", str(signature["n_features"])))
    shape = signature.get("shape")
    if isinstance(shape, list):
        facts.append(("shape", f" {TIMES} ".join("any" if d is None else str(d) for d in shape)))
    if signature.get("dtype"):
        facts.append(("dtype", str(signature["dtype"])))
    classes = signature.get("classes")
    if isinstance(classes, list):
        shown = ", ".join(str(c) for c in classes[:10]) + (f" … ({len(classes)})" if len(classes) > 10 else "")
        facts.append(("classes", shown))
    if signature.get("source"):
        facts.append(("from", str(signature["source"])))
    known = {"columns", "feature_names", "n_features", "shape", "dtype", "classes", "source"}
    for key, value in signature.items():
        if key not in known:
            facts.append((key, cell(value)))
    return SignatureView(columns, facts)


def _fingerprint_view(fp: Any) -> dict[str, Any] | None:
    if not isinstance(fp, dict):
        return None
    shape = fp.get("shape") or []
    rows = shape[0] if len(shape) >= 1 else None
    cols = shape[1] if len(shape) >= 2 else (len(fp["columns"]) if isinstance(fp.get("columns"), list) else None)
    dims = f" {TIMES} ".join(f"{d:,}" if isinstance(d, int) else str(d) for d in shape) if shape else ""
    if len(shape) == 1 and isinstance(rows, int):
        dims = f"{rows:,} values"
    if rows is not None and cols is not None:
        dims = f"{rows:,} rows {TIMES} {cols:,} columns" if isinstance(rows, int) and isinstance(cols, int) else dims
    sha = str(fp.get("sha256") or "")
    return {
        "sha256": sha,
        "short": sha[:12],
        "dims": dims,
        "type": str(fp.get("type") or fp.get("dtype") or ""),
        "bytes": human_size(fp["bytes"]) if isinstance(fp.get("bytes"), int) else "",
    }


def lineage_view(lineage: dict[str, Any] | None) -> dict[str, Any] | None:
    """The lineage card: data and target fingerprints, git commit and dirty flag, parent."""
    if not lineage:
        return None
    git = lineage.get("git") if isinstance(lineage.get("git"), dict) else None
    parent = lineage.get("parent") if isinstance(lineage.get("parent"), dict) else None
    known = {"training_data", "training_target", "git", "parent"}
    return {
        "data": _fingerprint_view(lineage.get("training_data")),
        "target": _fingerprint_view(lineage.get("training_target")),
        "git": None
        if git is None
        else {
            "commit": str(git.get("commit") or ""),
            "short": str(git.get("commit") or "")[:10],
            "dirty": bool(git.get("dirty")),
            "branch": git.get("branch") or "",
        },
        "parent": None
        if parent is None
        else {"model_name": str(parent.get("model_name", "")), "version": str(parent.get("version", ""))},
        "other": [(k, cell(v)) for k, v in lineage.items() if k not in known],
    }


# -- history --------------------------------------------------------------------


@dataclass
class Change:
    """One line of a history diff: ``key`` went from ``before`` to ``after``."""

    key: str
    before: str
    after: str
    kind: str  # "added", "removed", "changed" or "same"


def history_diff(before: Any, after: Any) -> list[Change]:
    """``before`` -> ``after`` of a history entry as lines: one per changed key of a dict,
    or a single line for plain values (an alias target, a tag value, a description)."""
    if isinstance(before, dict) or isinstance(after, dict):
        b = before if isinstance(before, dict) else {}
        a = after if isinstance(after, dict) else {}
        out = []
        for key in dict.fromkeys([*b, *a]):
            old, new = b.get(key), a.get(key)
            kind = "added" if key not in b else "removed" if key not in a else "same" if old == new else "changed"
            if kind == "same":
                continue
            shown_old, shown_new = cell(old), cell(new)
            if key == "sha256":
                shown_old, shown_new = shown_old[:12], shown_new[:12]
            out.append(Change(str(key), shown_old, shown_new, kind))
        return out
    if before is None and after is None:
        return []
    kind = "added" if before is None else "removed" if after is None else "changed"
    return [Change("", cell(before), cell(after), kind)]


# -- search ---------------------------------------------------------------------

#: Filters the search box suggests when a query does not parse.
SEARCH_EXAMPLES = (
    "accuracy > 0.9",
    'tags.dataset = "v7" AND accuracy >= 0.8',
    "alias = 'production'",
    "created_at >= '2026-01-01'",
)


def search_hint(query: str, message: str, known_fields: Sequence[str]) -> tuple[str, str | None]:
    """A suggestion for a query that failed with ``message``, and a corrected query to
    link to when there is one (a close field name for an unknown field)."""
    unknown = re.search(r"unknown field '([^']+)'", message)
    if unknown:
        bad = unknown.group(1)
        close = difflib.get_close_matches(bad, list(known_fields), n=1, cutoff=0.6)
        if close:
            return f"Did you mean {close[0]}?", query.replace(bad, close[0], 1)
        fields = ", ".join(list(known_fields)[:8])
        return (f"Fields on recent versions: {fields}." if fields else ""), None
    return "A filter is: field operator value, joined with AND / OR. For example:", None


def short_type(model_type: Any) -> str:
    """``sklearn.linear_model._logistic.LogisticRegression`` -> ``LogisticRegression``."""
    text = "" if model_type is None else str(model_type)
    return text.rsplit(".", 1)[-1]


def breakable(name: Any) -> Markup:
    """``train_seconds`` with a line-break opportunity after each ``_`` or ``.``, so
    long column names wrap in a header instead of widening the table."""
    text = str(escape("" if name is None else str(name)))
    return Markup(re.sub(r"([_.])", r"\1<wbr>", text))
