"""The issue's performance targets, checked against a results dict. Reported, never asserted."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MB = 1024 * 1024
#: Typographic signs for the markdown report.
X = "\u00d7"  # multiplication sign, as in "1.15x"
DASH = "\u2013"  # en dash, for ranges and missing values
MK_SMALL_SAVE = "modelkeep (default) save"


@dataclass
class Verdict:
    """One target: what was measured, the goal, and whether it was met."""

    target: str
    measured: str
    goal: str
    met: bool | None  # None: could not be measured
    note: str = ""

    @property
    def status(self) -> str:
        if self.met is None:
            return f"not measured{': ' + self.note if self.note else ''}"
        if self.goal == "report only":
            return "reported"
        return "met" if self.met else f"**not met**{' (' + self.note + ')' if self.note else ''}"


def _get(results: dict[str, Any], *path: str) -> Any:
    """``results[p0][p1]...`` or None when any step is missing or holds an error."""
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _median(results: dict[str, Any], *path: str) -> float | None:
    stats = _get(results, *path)
    return stats.get("median") if isinstance(stats, dict) else None


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _ratio_verdict(target: str, num: float | None, den: float | None, limit: float) -> Verdict:
    """A "modelkeep / baseline <= limit" target."""
    goal = f"≤ {limit:.2f}{X}"
    if num is None or den is None:
        return Verdict(target, DASH, goal, None, "a side is missing")
    ratio = num / den
    note = f"{ratio / limit:.2f}{X} the allowed ratio" if ratio > limit else ""
    return Verdict(target, f"{ratio:.2f}{X} ({_ms(num)} vs {_ms(den)})", goal, ratio <= limit, note)


def _limit_verdict(target: str, value: float | None, limit: float, fmt: Callable[[float], str] = _ms) -> Verdict:
    """A "value <= limit" target."""
    if value is None:
        return Verdict(target, DASH, f"≤ {fmt(limit)}", None, "no measurement")
    note = f"{value / limit:.1f}{X} the limit" if value > limit else ""
    return Verdict(target, fmt(value), f"≤ {fmt(limit)}", value <= limit, note)


def _small(results: dict[str, Any]) -> list[Verdict]:
    mk = _median(results, "small", "save", MK_SMALL_SAVE)
    mlflow = _median(results, "mlflow", "small", "save_register")
    verdict = _limit_verdict("Small model save+register (median)", mk, 0.010)
    no_git = _median(results, "small", "save", "modelkeep (default) save, MODELKEEP_GIT=0")
    if verdict.met is False and no_git is not None:
        verdict = dataclasses.replace(
            verdict,
            note=f"{verdict.note}; it includes reading `git status` for the lineage, as the bench runs in a git "
            f"checkout: {_ms(no_git)} without (MODELKEEP_GIT=0)",
        )
    verdicts = [verdict]
    if mk is None or mlflow is None:
        reason = _get(results, "mlflow", "error") or "a side is missing"
        verdicts.append(Verdict("Small model: speed-up over MLflow", DASH, f"≥ 200{X}", None, reason))
    else:
        speedup = mlflow / mk
        note = f"{200 / speedup:.1f}{X} short" if speedup < 200 else ""
        verdicts.append(
            Verdict("Small model: speed-up over MLflow", f"{speedup:,.0f}{X}", f"≥ 200{X}", speedup >= 200, note)
        )
    return verdicts


def _large(results: dict[str, Any]) -> list[Verdict]:
    verdicts = []
    for workload in ("forest", "arrays"):
        for step, baseline, limit in (("save", "joblib.dump+fsync", 1.15), ("load", "joblib.load", 1.10)):
            base = _median(results, "large", workload, step, baseline)
            what = "save, uncompressed" if step == "save" else "load"
            verdict = _ratio_verdict(
                f"Large {what} ({workload}{', warm cache' if step == 'load' else ''}) vs {baseline}",
                _median(results, "large", workload, step, "modelkeep"),
                base,
                limit,
            )
            parts = ["SHA-256, one core"] if step == "save" else ["read into memory (page cache)", "BLAKE3, one core"]
            floors = [(name, _median(results, "large", workload, "floors", name)) for name in parts]
            if verdict.met is False and base and all(t is not None for _, t in floors):
                why = ", ".join(f"{name} {t / base:.2f}{X}" for name, t in floors if t is not None)
                verdict = dataclasses.replace(verdict, note=f"{verdict.note}; same bytes, same run: {why} {baseline}")
            verdicts.append(verdict)
    return verdicts


def _memory(results: dict[str, Any]) -> list[Verdict]:
    verdicts = []
    for workload in ("forest", "arrays"):
        for method in ("modelkeep", "modelkeep-native"):
            size = _get(results, "memory", workload, "model_bytes")
            delta = _get(results, "memory", workload, method, "save", "delta")
            target = f"Save peak memory, {method} ({workload}), over the built model"
            if size is None or delta is None:
                verdicts.append(Verdict(target, DASH, "≤ model size + 64 MB", None, "no measurement"))
                continue
            limit = size + 64 * MB
            note = f"{(delta - limit) / MB:.0f} MB over" if delta > limit else ""
            measured = f"{delta / MB:.0f} MB (model {size / MB:.0f} MB)"
            verdicts.append(Verdict(target, measured, f"≤ {limit / MB:.0f} MB", delta <= limit, note))
    return verdicts


def _compression(results: dict[str, Any]) -> list[Verdict]:
    verdicts = []
    for workload in ("forest", "arrays"):
        base = ("compression", workload)
        joblib_t = _median(results, *base, "save", "joblib zlib-3+fsync")
        mk_t = _median(results, *base, "save", "modelkeep compress=True")
        target = f"compress=True save speed vs joblib zlib-3 ({workload})"
        if joblib_t is None or mk_t is None:
            verdicts.append(Verdict(target, DASH, f"≥ 5{X} faster", None, "a side is missing"))
        else:
            speedup = joblib_t / mk_t
            note = f"{5 / speedup:.1f}{X} short" if speedup < 5 else ""
            verdicts.append(Verdict(target, f"{speedup:.1f}{X} faster", f"≥ 5{X} faster", speedup >= 5, note))
        size_target = f"compress=True file size vs joblib zlib-3 ({workload})"
        mk_b = _get(results, *base, "modelkeep_bytes")
        joblib_b = _get(results, *base, "joblib_bytes")
        if mk_b is None or joblib_b is None:
            verdicts.append(Verdict(size_target, DASH, f"≤ 1.10{X}", None, "a side is missing"))
        else:
            ratio = mk_b / joblib_b
            note = f"{ratio / 1.10:.2f}{X} the allowed ratio" if ratio > 1.10 else ""
            verdicts.append(Verdict(size_target, f"{ratio:.2f}{X}", f"≤ 1.10{X}", ratio <= 1.10, note))
    return verdicts


def _index(results: dict[str, Any]) -> list[Verdict]:
    index = results.get("index") or {}
    reads = index.get("reads") or []
    last = reads[-1] if reads else None
    at = f" at {last['versions']:,} versions" if last else ""
    ratio = _get(index, "save", "late_over_early")
    verdicts = [
        _limit_verdict(
            f"Save latency late/early (0 → {index.get('versions_reached', 0):,} versions)",
            ratio,
            1.5,
            lambda v: f"{v:.2f}{X}",
        ),
        _limit_verdict(f"list_versions{at}", _median(last or {}, "ops", "list_versions"), 0.200),
        _limit_verdict(
            f"get_metadata of one version{at}", _median(last or {}, "ops", "get_metadata(one version)"), 0.010
        ),
    ]
    return verdicts


def _mmap(results: dict[str, Any]) -> list[Verdict]:
    verdicts = []
    cases = {
        "modelkeep mmap_mode=r": "default joblib format, file checked before",
        "modelkeep mmap_mode=r, first check": "default joblib format, first check of the file",
        "modelkeep native mmap_mode=r": "native format",
    }
    for case, what in cases.items():
        value = _median(results, "large", "arrays", "load", case)
        verdict = _limit_verdict(f'load(..., mmap_mode="r") of the array dict, {what}', value, 0.005)
        if "first check" in case and verdict.met is False:
            floor = _median(results, "large", "arrays", "floors", "BLAKE3, all cores")
            if floor is not None:
                verdict = dataclasses.replace(
                    verdict, note=f"{verdict.note}; BLAKE3 of the array bytes alone takes {_ms(floor)} on all cores"
                )
        verdicts.append(verdict)
    return verdicts


def _dedup(results: dict[str, Any]) -> list[Verdict]:
    total = _get(results, "dedup", "joblib_bytes_total")
    native = _get(results, "dedup", "configs", "native, compress=False") or {}
    if total is None or "stored_bytes" not in native:
        reason = native.get("error", "no measurement")
        return [Verdict("Dedup: native format storage vs sum of artifacts", DASH, "report only", None, reason)]
    ratio = native["stored_bytes"] / total
    measured = f"{native['stored_bytes'] / MB:.1f} MB vs {total / MB:.1f} MB ({ratio:.2f}{X})"
    return [Verdict("Dedup: native format storage vs sum of artifacts", measured, "report only", True, "")]


def _startup(results: dict[str, Any]) -> list[Verdict]:
    """CLI start-up: every row of bench_startup.py that carries a ``target_s``."""
    rows = _get(results, "startup", "rows") or []
    verdicts = [
        _limit_verdict(f"`{row['name']}` (median, fresh process)", row.get("median_s"), row["target_s"])
        for row in rows
        if isinstance(row, dict) and row.get("target_s") is not None
    ]
    if not verdicts:
        reason = _get(results, "startup", "skipped") or _get(results, "startup", "error") or "no measurement"
        return [Verdict("CLI list/info/search at 1,000 versions", DASH, "≤ 150.00 ms", None, str(reason))]
    return verdicts


def _unpickle(results: dict[str, Any]) -> list[Verdict]:
    """Object-heavy pickles (bench/unpickle.py): format load within 1.5x of ``pickle.loads``."""
    rows = _get(results, "unpickle", "rows") or []
    verdicts = []
    for row in rows:
        if not isinstance(row, dict) or row.get("workload", "").startswith("forest"):
            continue
        verdict = _ratio_verdict(
            f"Unpickle {row['workload']}, {row['format']} format vs pickle.loads",
            row.get("format load_s"),
            row.get("pickle.loads_s"),
            row.get("target", 1.5),
        )
        if verdict.met is False:  # the floor: the pre-scan in Python plus the C unpickler
            verdict = dataclasses.replace(
                verdict, note=f"{verdict.note}; floor: pre-scan + pickle.loads = {row.get('floor_ratio')}{X}"
            )
        verdicts.append(verdict)
    if not verdicts:
        reason = _get(results, "unpickle", "error") or "no measurement"
        return [Verdict("Unpickle object-heavy pickles vs pickle.loads", DASH, f"≤ 1.50{X}", None, str(reason))]
    return verdicts


def evaluate(results: dict[str, Any]) -> list[Verdict]:
    """Every target, in the order of the issue."""
    return [
        *_small(results),
        *_large(results),
        *_memory(results),
        *_compression(results),
        *_index(results),
        *_mmap(results),
        *_dedup(results),
        *_startup(results),
        *_unpickle(results),
    ]
