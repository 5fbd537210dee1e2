"""Input signatures: what a model expects, captured at save and checked against new data.

:func:`infer` reads what the model itself knows (``feature_names_in_``,
``n_features_in_``, ``classes_`` and the xgboost / LightGBM / CatBoost /
statsmodels / Keras equivalents) and, from an optional ``input_example``
(a DataFrame, an array or a tensor), column names, dtypes and shapes. The
result is a plain JSON dict stored as ``ModelMetadata.input_signature``.

:func:`check` compares data with a signature and returns an :class:`InputCheck`:
missing, extra and reordered columns, a wrong number of features, and dtype
casts that would lose information. pandas' nullable dtypes (``Int64``,
``boolean``, ``string``) are kept as such (MLflow drops the signature for them,
mlflow #25593, #6767): an ``Int64`` column fits an ``int64`` signature unless it
holds missing values, and the other way round always fits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import InputSchemaError

__all__ = ["DtypeProblem", "InputCheck", "InputSchemaError", "check", "infer"]

#: Nullable pandas dtypes -> (numpy kind, the plain numpy dtype they widen to).
_NULLABLE = {
    **{f"Int{b}": ("i", f"int{b}") for b in (8, 16, 32, 64)},
    **{f"UInt{b}": ("u", f"uint{b}") for b in (8, 16, 32, 64)},
    "Float32": ("f", "float32"),
    "Float64": ("f", "float64"),
    "boolean": ("b", "bool"),
}
_STRINGY = {"object", "string", "str", "string[python]", "string[pyarrow]"}


@dataclass
class DtypeProblem:
    """A column whose dtype cannot be cast safely to the one the model was trained with."""

    column: str
    expected: str
    got: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"column": self.column, "expected": self.expected, "got": self.got, "reason": self.reason}


@dataclass
class InputCheck:
    """The result of checking data against an input signature. ``ok`` is true when
    nothing is missing or extra and no cast is unsafe (a reordered frame is reported
    but still ``ok``: select ``expected_columns`` to fix the order)."""

    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    reordered: bool = False
    dtype_problems: list[DtypeProblem] = field(default_factory=list)
    n_features: tuple[int, int] | None = None  # (expected, got) when they differ
    expected_columns: list[str] | None = None
    has_signature: bool = True

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.dtype_problems or self.n_features)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "missing": self.missing,
            "extra": self.extra,
            "reordered": self.reordered,
            "dtype_problems": [p.to_dict() for p in self.dtype_problems],
            "n_features": list(self.n_features) if self.n_features else None,
            "has_signature": self.has_signature,
        }

    def __str__(self) -> str:
        if not self.has_signature:
            return "the version has no input signature to check against"
        parts = []
        if self.missing:
            parts.append(f"missing columns: {', '.join(self.missing)}")
        if self.extra:
            parts.append(f"extra columns: {', '.join(self.extra)}")
        if self.reordered:
            parts.append("columns are in another order than at training")
        if self.n_features:
            parts.append(f"expected {self.n_features[0]} features, got {self.n_features[1]}")
        parts += [f"column {p.column!r}: {p.got} -> {p.expected}: {p.reason}" for p in self.dtype_problems]
        return "; ".join(parts) or "the input fits the signature"


def _list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    try:
        return [v.item() if hasattr(v, "item") else v for v in list(value)]
    except TypeError:
        return None


def _from_model(model: Any) -> dict[str, Any]:
    """What the model itself knows about its input and output."""
    out: dict[str, Any] = {}
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        names = getattr(model, "feature_names_", None)  # CatBoost
    if names is None and callable(getattr(model, "feature_name", None)):  # LightGBM Booster
        try:
            names = model.feature_name()
        except Exception:
            names = None
    if names is None and type(model).__module__.startswith("xgboost"):
        names = getattr(model, "feature_names", None)
    if names is None and hasattr(model, "model") and hasattr(model.model, "exog_names"):  # statsmodels results
        names = model.model.exog_names
    names = _list(names)
    if names:
        out["feature_names"] = [str(n) for n in names]
    n = getattr(model, "n_features_in_", None)
    if n is None and callable(getattr(model, "num_features", None)):  # xgboost Booster
        try:
            n = model.num_features()
        except Exception:
            n = None
    if n is None and callable(getattr(model, "num_feature", None)):  # LightGBM Booster
        try:
            n = model.num_feature()
        except Exception:
            n = None
    if n is None and names:
        n = len(names)
    if n is not None and hasattr(n, "__index__"):
        out["n_features"] = int(n.__index__())
    classes = _list(getattr(model, "classes_", None))
    if classes is not None:
        out["classes"] = [c if isinstance(c, (str, int, float, bool)) else str(c) for c in classes]
    shape = getattr(model, "input_shape", None)  # Keras
    if isinstance(shape, tuple):
        out["shape"] = [d if isinstance(d, int) else None for d in shape]
    return out


def _dtype_name(dtype: Any) -> str:
    return str(dtype)


def _from_example(example: Any) -> dict[str, Any]:
    """Column names, dtypes and shapes of an input example."""
    out: dict[str, Any] = {}
    if hasattr(example, "columns") and hasattr(example, "dtypes"):  # a DataFrame
        out["columns"] = [
            {"name": str(c), "dtype": _dtype_name(t), "nullable": bool(example[c].isna().any())}
            for c, t in example.dtypes.items()
        ]
        out["shape"] = [None, int(example.shape[1])]
        out["n_features"] = int(example.shape[1])
    elif hasattr(example, "dtype") and hasattr(example, "shape"):  # numpy array, torch tensor, pandas Series
        shape = [int(d) for d in example.shape]
        out["shape"] = [None, *shape[1:]] if shape else []
        out["dtype"] = _dtype_name(example.dtype).replace("torch.", "")
        if len(shape) == 2:
            out["n_features"] = shape[1]
    else:
        raise TypeError(f"input_example must be a DataFrame, an array or a tensor, got {type(example).__name__}")
    return out


def infer(model: Any, input_example: Any = None) -> dict[str, Any] | None:
    """The input signature of ``model`` (``None`` when nothing is known)."""
    sig = _from_model(model)
    if input_example is not None:
        example = _from_example(input_example)
        if "n_features" in sig and "n_features" in example and sig["n_features"] != example["n_features"]:
            from .errors import MetadataError

            raise MetadataError(
                f"input_example has {example['n_features']} columns but the model was fitted on {sig['n_features']}"
            )
        sig.update(example)
        sig["source"] = "model+example" if _from_model(model) else "example"
    elif sig:
        sig["source"] = "model"
    return sig or None


def _cast_problem(expected: str, got: str, has_missing: bool) -> str | None:
    """Why casting a column of dtype ``got`` to ``expected`` is unsafe, or ``None``."""
    import numpy as np

    if expected == got:
        return None
    if expected in _STRINGY or got in _STRINGY:
        if expected in _STRINGY and got in _STRINGY:
            return None
        return "text and numbers do not convert safely"
    exp_nullable = expected in _NULLABLE
    exp_np = _NULLABLE[expected][1] if exp_nullable else expected
    got_np = _NULLABLE[got][1] if got in _NULLABLE else got
    if has_missing and not exp_nullable and _is_numpy(exp_np) and np.dtype(exp_np).kind in "iub":
        return "the column holds missing values, which this dtype cannot represent"
    if not (_is_numpy(exp_np) and _is_numpy(got_np)):
        return None if exp_np == got_np else "different kinds of data"
    if np.can_cast(np.dtype(got_np), np.dtype(exp_np), "safe"):
        return None
    return "the cast may lose information"


def _is_numpy(name: str) -> bool:
    import numpy as np

    try:
        np.dtype(name)
    except TypeError:
        return False
    return True


def check(signature: dict[str, Any] | None, X: Any) -> InputCheck:
    """Compare data ``X`` (a DataFrame, an array or a tensor) with ``signature``."""
    if not signature:
        return InputCheck(has_signature=False)
    result = InputCheck()
    columns = signature.get("columns")
    names = [c["name"] for c in columns] if columns else signature.get("feature_names")
    result.expected_columns = list(names) if names else None
    if hasattr(X, "columns") and names:
        got = [str(c) for c in X.columns]
        result.missing = [n for n in names if n not in got]
        result.extra = [c for c in got if c not in names]
        result.reordered = [c for c in got if c in names] != [n for n in names if n in got]
        for col in columns or []:
            if col["name"] not in got:
                continue
            series = X[col["name"]]
            problem = _cast_problem(col["dtype"], str(series.dtype), bool(series.isna().any()))
            if problem:
                result.dtype_problems.append(DtypeProblem(col["name"], col["dtype"], str(series.dtype), problem))
        return result
    shape = getattr(X, "shape", None)
    expected_n = signature.get("n_features")
    if shape is not None and len(shape) == 2 and expected_n is not None and int(shape[1]) != expected_n:
        result.n_features = (int(expected_n), int(shape[1]))
    if signature.get("dtype") and hasattr(X, "dtype"):
        got_dtype = str(X.dtype).replace("torch.", "")
        problem = _cast_problem(signature["dtype"], got_dtype, False)
        if problem:
            result.dtype_problems.append(DtypeProblem("<array>", signature["dtype"], got_dtype, problem))
    return result
