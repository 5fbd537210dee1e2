"""Index operations as one model grows to 10,000 versions (1,000 with ``--quick``).

A tiny object is saved in a loop with explicit versions ``1, 2, ...`` and
``compress=False``, so the index dominates each save. Every save is timed; at
checkpoints the read operations are timed too: one version's metadata, the
latest version's metadata, listing versions, listing full records, and
resolving "latest".
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from common import Settings, compare_interleaved, error_text, log, scratch_dir, summarize
from subject import open_registry
from workloads import tiny_object

NAME = "grower"
BASE_CHECKPOINTS = (0, 1_000, 2_000, 5_000, 10_000)


def checkpoints(total: int) -> list[int]:
    """Version counts at which read operations are timed (always includes 0 and ``total``)."""
    points = {0, total, total // 4, total // 2, (3 * total) // 4}
    points.update(p for p in BASE_CHECKPOINTS if p <= total)
    return sorted(points)


def _read_cases(registry: Any, count: int) -> dict[str, Any]:
    """The read operations timed at a checkpoint with ``count`` versions stored."""

    def resolve_latest(i: int) -> object:
        try:
            return registry.resolve_version(NAME)
        except KeyError:  # no version yet: ModelNotFoundError
            return None

    some_version = str(max(1, count // 2))
    return {
        "get_metadata(one version)": lambda i: registry.get_metadata(NAME, some_version),
        "get_metadata(latest)": lambda i: registry.get_metadata(NAME),
        "list_versions": lambda i: registry.list_versions(NAME),
        "resolve_version(latest)": resolve_latest,
        "list_version_records": lambda i: _records_or_none(registry),
    }


def _records_or_none(registry: Any) -> object:
    """``list_version_records``, which raises for a model with no versions yet."""
    try:
        return registry.list_version_records(NAME)
    except KeyError:
        return None


def _save_range(registry: Any, start: int, stop: int, latencies: list[float], deadline: float) -> None:
    """Save versions ``start+1 .. stop`` (until ``deadline``), appending each latency."""
    for n in range(start, stop):
        if time.monotonic() > deadline:
            return
        began = time.perf_counter()
        registry.save(tiny_object(n), NAME, str(n + 1))
        latencies.append(time.perf_counter() - began)


def _save_summary(latencies: list[float], window: int) -> dict[str, Any]:
    """Early vs late save latency and a binned series for the plot."""
    early, late = latencies[:window], latencies[-window:]
    bins = max(1, len(latencies) // 40)
    series = [
        {"versions": start + bins // 2, "median": statistics.median(latencies[start : start + bins])}
        for start in range(0, len(latencies) - bins + 1, bins)
    ]
    return {
        "early": summarize(early),
        "late": summarize(late),
        "late_over_early": statistics.median(late) / statistics.median(early),
        "bin_size": bins,
        "worst_bin": max(point["median"] for point in series),
        "total_s": sum(latencies),
        "series": series,
    }


def _grow(registry: Any, settings: Settings) -> dict[str, Any]:
    """Grow the model, timing every save and the read operations at each checkpoint."""
    latencies: list[float] = []
    reads: list[dict[str, Any]] = []
    deadline = time.monotonic() + settings.index_time_budget_s
    out: dict[str, Any] = {"target_versions": settings.index_versions, "reads": reads}
    for point in checkpoints(settings.index_versions):
        try:
            _save_range(registry, len(latencies), point, latencies, deadline)
        except Exception as exc:
            out["error"] = f"save of version {len(latencies) + 1} failed: {error_text(exc)}"
            break
        if len(latencies) < point:
            out["stopped"] = f"time budget of {settings.index_time_budget_s:.0f} s ran out"
            break
        log(f"index: checkpoint {point}")
        ops = compare_interleaved(_read_cases(registry, point), settings.small_repeats)
        reads.append({"versions": point, "ops": ops})
    out["versions_reached"] = len(latencies)
    if len(latencies) >= 2 * settings.index_window:
        out["save"] = _save_summary(latencies, settings.index_window)
    return out


def run(settings: Settings, modelkeep: Any) -> dict[str, Any]:
    """Measure index scaling; returns an error record when modelkeep is not usable."""
    if modelkeep is None:
        return {"error": "modelkeep not importable"}
    with scratch_dir("index") as root:
        try:
            registry = open_registry(modelkeep, root, compress=False)
        except Exception as exc:
            return {"error": error_text(exc)}
        try:
            return _grow(registry, settings)
        except Exception as exc:
            return {"error": error_text(exc)}
        finally:
            registry.close()


def plot(result: dict[str, Any], path: Path) -> bool:
    """Draw latency against version count to ``path`` (PNG); False when there is nothing to draw."""
    if "reads" not in result or not result["reads"]:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    if "save" in result:
        series = result["save"]["series"]
        ax.plot([p["versions"] for p in series], [p["median"] * 1e3 for p in series], label="save (binned median)")
    for op in ("get_metadata(one version)", "list_versions", "resolve_version(latest)", "list_version_records"):
        points = [(r["versions"], r["ops"][op].get("median")) for r in result["reads"]]
        points = [(x, y * 1e3) for x, y in points if y is not None]
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=op)
    ax.set_yscale("log")
    ax.set_xlabel("versions of the model in the registry")
    ax.set_ylabel("latency, ms (median, log scale)")
    ax.set_title("modelkeep index operations vs number of versions")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
