"""A model's parameters as ``save`` records them: ``get_params(deep=True)``, bounded and JSON-safe.

A scikit-learn ``Pipeline`` (``ColumnTransformer``, ``FeatureUnion``, ``GridSearchCV``,
stacking, ...) reports its nested parameters under its own ``step__param`` keys; they are
kept flat, so that ``params.logisticregression__C`` is one searchable, comparable field.
Every value becomes plain JSON, within limits:

- numbers, booleans, ``None`` and strings are kept (strings longer than
  :data:`MAX_STRING` characters are cut, ending in ``… (N chars)``; NaN and
  infinities become ``"nan"``, ``"inf"``, ``"-inf"``, so they stay comparable);
- a nested estimator becomes its class name (its own parameters are the ``name__*`` keys);
  ``steps``, ``transformers`` and the like become lists such as
  ``[["scaler", "StandardScaler"], ["clf", "LogisticRegression"]]``;
- functions and classes become their dotted name (``sklearn.feature_selection.f_classif``);
- arrays, data frames, sparse matrices and containers of more than :data:`MAX_ITEMS`
  items become a summary such as ``ndarray(shape=(1000, 1000), dtype=float64)``;
- at most :data:`MAX_KEYS` keys are kept, the shallowest first.

Whatever was dropped, summarised or cut is named in a second field,
``model_params_truncated`` (present only when something was).
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from enum import Enum
from pathlib import PurePath
from typing import Any

from .index.rows import MAX_KEY_LENGTH as _MAX_FIELD_KEY

#: The metadata field holding the parameters.
PARAMS_KEY = "model_params"
#: The metadata field naming what was left out of :data:`PARAMS_KEY` (only when something was).
TRUNCATED_KEY = "model_params_truncated"
#: At most this many parameters are kept (the shallowest first: top level, then ``step__param``, ...).
MAX_KEYS = 1000
#: Longer strings are cut to this many characters.
MAX_STRING = 500
#: Lists, tuples, sets, dicts and arrays with more items than this are summarised.
MAX_ITEMS = 100
#: Containers nested deeper than this are summarised.
MAX_NESTING = 4
#: Longer parameter names are dropped: ``params.<name>`` must fit the search index's key column.
MAX_KEY_LENGTH = _MAX_FIELD_KEY - len("params.")
#: How many names each list of ``model_params_truncated`` shows.
MAX_NAMED = 20
#: A short repr of any other object is kept; a longer one is replaced by the class name.
MAX_REPR = 200

# The repr of an object, as modelkeep before 0.2 stored a nested estimator (``Pipeline(steps=[...``).
_REPR = re.compile(r"^<|[A-Za-z_][\w.]*\(")


class _Truncation:
    def __init__(self) -> None:
        self.dropped: list[str] = []
        self.summarised: list[str] = []
        self.shortened: list[str] = []

    def note(self, kind: list[str], key: str) -> None:
        if not kind or kind[-1] != key:
            kind.append(key)

    def to_dict(self) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        for name, keys in (("dropped", self.dropped), ("summarised", self.summarised), ("shortened", self.shortened)):
            if keys:
                out[name] = len(keys)
                out[f"{name}_keys"] = keys[:MAX_NAMED]
        if self.dropped:
            out["limits"] = {"max_keys": MAX_KEYS, "max_key_length": MAX_KEY_LENGTH}
        return out or None


def capture(model: Any) -> dict[str, Any]:
    """The metadata fields ``save`` records for ``model``.

    ``{"model_params": {...}}`` (plus ``"model_params_truncated"`` when a limit was
    hit) for an object with a working ``get_params()``; ``{}`` otherwise. Never
    raises for a broken ``get_params``: it must not block saving the model.
    """
    raw = _get_params(model, deep=True)
    return {} if raw is None else bounded(raw)


def shallow_keys(model: Any) -> set[str] | None:
    """The names ``get_params(deep=False)`` reports (what modelkeep before 0.2 recorded), or ``None``."""
    raw = _get_params(model, deep=False)
    return None if raw is None else {str(k) for k in raw}


def _get_params(model: Any, *, deep: bool) -> dict[Any, Any] | None:
    get_params = getattr(model, "get_params", None)
    if not callable(get_params) or isinstance(model, type):
        return None
    try:
        try:
            params = get_params(deep=deep)
        except TypeError:  # a get_params() without the ``deep`` argument
            params = get_params()
        return dict(params)
    except Exception:  # a broken get_params must not block saving (nor backfilling) the model
        return None


def bounded(raw: dict[Any, Any]) -> dict[str, Any]:
    """``{"model_params": ...}`` (and ``"model_params_truncated"``) for a ``get_params()`` dict."""
    truncation = _Truncation()
    out: dict[str, Any] = {}
    # Shallowest first, so the limits drop the deepest parameters; sorted() is stable,
    # so each level keeps the estimator's own order.
    for key in sorted(raw, key=lambda k: str(k).count("__")):
        name = str(key)
        if len(name) > MAX_KEY_LENGTH or len(out) >= MAX_KEYS or name in out:
            truncation.note(truncation.dropped, name)
            continue
        try:
            out[name] = summarise(raw[key], name, truncation)
        except Exception:  # an odd object must not block saving the model: keep its class name
            truncation.note(truncation.summarised, name)
            out[name] = type(raw[key]).__name__
    fields: dict[str, Any] = {PARAMS_KEY: out}
    report = truncation.to_dict()
    if report is not None:
        fields[TRUNCATED_KEY] = report
    return fields


def summarise(value: Any, key: str, truncation: _Truncation, depth: int = 0) -> Any:
    """``value`` as bounded JSON (see the module docstring); ``key`` names it in ``truncation``."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else str(value)
    if isinstance(value, str):
        if len(value) <= MAX_STRING:
            return value
        truncation.note(truncation.shortened, key)
        return f"{value[:MAX_STRING]}… ({len(value)} chars)"
    if isinstance(value, type) or _is_function(value):
        return _dotted(value)
    if callable(getattr(value, "get_params", None)):
        return type(value).__name__  # a nested estimator: its parameters are the ``key__*`` fields
    if isinstance(value, Enum):
        return summarise(value.value, key, truncation, depth)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, PurePath):
        return summarise(str(value), key, truncation, depth)
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return summarise(value.item(), key, truncation, depth)  # a numpy scalar
    shape = getattr(value, "shape", None)
    if isinstance(shape, tuple):
        size = math.prod(int(n) for n in shape)
        if type(value).__module__ == "numpy" and size <= MAX_ITEMS and depth < MAX_NESTING:
            return summarise(value.tolist(), key, truncation, depth)
        truncation.note(truncation.summarised, key)
        return _shape_summary(value, shape)
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        if len(value) > MAX_ITEMS or depth >= MAX_NESTING:
            truncation.note(truncation.summarised, key)
            return f"{type(value).__name__}(len={len(value)})"
        if isinstance(value, dict):
            return {str(k): summarise(v, key, truncation, depth + 1) for k, v in value.items()}
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [summarise(v, key, truncation, depth + 1) for v in items]
    return _short_repr(value, key, truncation)


def _is_function(value: Any) -> bool:
    return callable(value) and hasattr(value, "__qualname__") and hasattr(value, "__module__")


def _dotted(value: Any) -> str:
    module = getattr(value, "__module__", None) or ""
    name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None) or type(value).__name__
    return f"{module}.{name}" if module and module != "builtins" else str(name)


def _shape_summary(value: Any, shape: tuple[Any, ...]) -> str:
    dtype = getattr(value, "dtype", None)
    dims = "(" + ", ".join(str(int(n)) for n in shape) + ("," if len(shape) == 1 else "") + ")"
    return f"{type(value).__name__}(shape={dims}" + (f", dtype={dtype})" if dtype is not None else ")")


def _short_repr(value: Any, key: str, truncation: _Truncation) -> str:
    """A short one-line repr (``KFold(n_splits=5, ...)``), else the class name."""
    try:
        text = " ".join(repr(value).split())
    except Exception:
        text = ""
    if text and len(text) <= MAX_REPR and " at 0x" not in text:
        return text
    truncation.note(truncation.summarised, key)
    return type(value).__name__


def looks_recorded_before_0_2(params: Any) -> bool:
    """Whether ``model_params`` has the shape modelkeep before 0.2 wrote for a nested estimator.

    That is ``get_params(deep=False)`` with each nested estimator (and list of
    steps) as its repr: no ``step__param`` key, and some value that
    reads like a repr. Only such versions gain anything from :func:`capture` on
    the loaded model (see :func:`modelkeep.params_backfill.backfill_params`).
    """
    if not isinstance(params, dict) or not params or any("__" in str(k) for k in params):
        return False
    return any(isinstance(v, str) and _REPR.search(v) for v in params.values())
