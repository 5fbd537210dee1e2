"""Request bodies of the scoring protocol, read into what a model's ``predict`` takes.

MLflow's ``/invocations`` protocol: a JSON object with exactly one of ``dataframe_split``
(``{"columns": [...], "data": [[...]]}``), ``dataframe_records`` (``[{col: value}]``),
``instances`` or ``inputs`` (rows, records, or ``{col: [values]}``), or a CSV body
(``text/csv``, a header line first). :func:`parse` returns a DataFrame or an array;
:func:`check` compares it with the version's input signature. A bad body raises
:class:`BadInput` with the HTTP status (400 for a malformed body, 422 for one that does
not fit the signature) and a JSON-ready detail, so the model never sees it.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np
import pandas as pd

from .. import input_signature

#: The JSON keys the protocol understands.
ORIENTS = ("dataframe_split", "dataframe_records", "instances", "inputs")
EXPECTED = (
    "a JSON object with one of "
    + ", ".join(repr(k) for k in ORIENTS)
    + ' (e.g. {"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2]]}}), or a text/csv body with a header line'
)


class BadInput(ValueError):
    """A request body the server refuses before the model sees it."""

    def __init__(self, status: int, error: str, **detail: Any) -> None:
        super().__init__(error)
        self.status = status
        self.detail = {"error": error, **detail}


def _columns(signature: dict[str, Any] | None) -> list[str] | None:
    if not signature:
        return None
    cols = signature.get("columns")
    names = [c["name"] for c in cols] if cols else signature.get("feature_names")
    return list(names) if names else None


def _named(frame: pd.DataFrame, signature: dict[str, Any] | None) -> pd.DataFrame:
    """Records and column maps name their columns, so their key order means nothing: put them in the signature's."""
    names = _columns(signature)
    if names and set(map(str, frame.columns)) == set(names):
        frame = frame[names]
    return frame


def _frame(records: Any, what: str, signature: dict[str, Any] | None) -> pd.DataFrame:
    try:
        frame = pd.DataFrame.from_records(records)
    except Exception as exc:
        raise BadInput(400, f"{what} must be a list of objects ({{column: value}}): {exc}", expected=EXPECTED) from None
    return _named(frame, signature)


def _rows(value: Any, signature: dict[str, Any] | None, what: str) -> Any:
    """``instances`` / ``inputs``: records, a dict of columns, or rows (a frame when the signature names columns)."""
    if isinstance(value, dict):
        try:
            return _named(pd.DataFrame({k: v if isinstance(v, list) else [v] for k, v in value.items()}), signature)
        except Exception as exc:
            raise BadInput(400, f"{what} as an object must map columns to equal-length lists: {exc}") from None
    if not isinstance(value, list) or not value:
        raise BadInput(400, f"{what} must be a non-empty list of rows or records", expected=EXPECTED)
    if all(isinstance(r, dict) for r in value):
        return _frame(value, what, signature)
    if any(isinstance(r, dict) for r in value):
        raise BadInput(400, f"{what} mixes records and rows", expected=EXPECTED)
    try:
        array = np.asarray(value)
    except ValueError as exc:
        raise BadInput(400, f"{what} rows must all have the same length: {exc}") from None
    if array.dtype == object:
        raise BadInput(400, f"{what} rows must all have the same length and hold numbers or strings")
    if array.ndim == 1:
        array = array.reshape(1, -1) if _columns(signature) else array
    names = _columns(signature)
    if names and array.ndim == 2:
        if array.shape[1] != len(names):
            raise BadInput(
                422,
                f"expected {len(names)} values per row ({', '.join(names)}), got {array.shape[1]}",
                expected_columns=names,
            )
        return _table(array, names, signature)
    return array


def _all_float64(signature: dict[str, Any] | None) -> bool:
    cols = (signature or {}).get("columns") or []
    return bool(cols) and all(c.get("dtype") == "float64" for c in cols)


def _table(rows: Any, columns: list[str], signature: dict[str, Any] | None) -> pd.DataFrame:
    """Rows as a frame. When the signature wants float64 everywhere and the rows are all numbers
    (no strings, no nulls), one float64 array is built and wrapped, instead of pandas inferring
    a dtype column by column; the result is the frame :func:`check` would cast to anyway."""
    if _all_float64(signature) and columns == _columns(signature):
        try:
            array = rows if isinstance(rows, np.ndarray) else np.array(rows)
        except ValueError:
            array = None
        if array is not None and array.dtype.kind in "fiu" and array.ndim == 2 and array.shape[1] == len(columns):
            return pd.DataFrame(array.astype(np.float64, copy=False), columns=columns, copy=False)
    return pd.DataFrame(rows.tolist() if isinstance(rows, np.ndarray) else rows, columns=columns)


def parse(body: bytes, content_type: str, signature: dict[str, Any] | None) -> Any:
    """The model input a request body holds (a DataFrame or an array); :class:`BadInput` otherwise."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind in ("text/csv", "application/csv"):
        try:
            return pd.read_csv(io.BytesIO(body))
        except Exception as exc:
            raise BadInput(
                400, f"malformed CSV: {exc}", expected="a CSV body with a header line of column names"
            ) from None
    if kind not in ("application/json", ""):
        raise BadInput(400, f"unsupported content type {kind!r}", expected="application/json or text/csv")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(400, f"malformed JSON: {exc}", expected=EXPECTED) from None
    if not isinstance(data, dict):
        raise BadInput(400, f"the body is a JSON {type(data).__name__}, not an object", expected=EXPECTED)
    keys = [k for k in ORIENTS if k in data]
    if len(keys) != 1:
        got = ", ".join(repr(k) for k in data) or "none"
        raise BadInput(400, f"expected exactly one of {', '.join(ORIENTS)}; got keys {got}", expected=EXPECTED)
    key = keys[0]
    value = data[key]
    if key == "dataframe_split":
        if not isinstance(value, dict) or "data" not in value:
            raise BadInput(400, "dataframe_split must be an object with 'columns' and 'data'", expected=EXPECTED)
        try:
            columns = value.get("columns")
            frame = (
                _table(value["data"], columns, signature)
                if isinstance(columns, list) and isinstance(value["data"], list)
                else pd.DataFrame(value["data"], columns=columns)
            )
        except Exception as exc:
            raise BadInput(400, f"dataframe_split does not make a table: {exc}", expected=EXPECTED) from None
        return frame
    if key == "dataframe_records":
        if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
            raise BadInput(400, "dataframe_records must be a list of objects", expected=EXPECTED)
        return _frame(value, key, signature)
    return _rows(value, signature, key)


def check(X: Any, signature: dict[str, Any] | None) -> Any:
    """``X`` made ready for the model: 400 for missing values where the signature says none,
    422 for missing, extra or misordered columns and unsafe casts; columns cast to the signature's dtypes."""
    if (isinstance(X, pd.DataFrame) and len(X) == 0) or getattr(X, "size", 1) == 0:
        raise BadInput(400, "the body holds no rows", expected=EXPECTED)
    if not signature:
        return X
    cols = signature.get("columns") or []
    if isinstance(X, pd.DataFrame) and cols and _exact(X, cols):
        return _filled(X, cols)
    if isinstance(X, pd.DataFrame):
        holes = [
            c["name"] for c in cols if not c.get("nullable", True) and c["name"] in X and X[c["name"]].isna().any()
        ]
        if holes:
            raise BadInput(
                400,
                f"missing values (null or NaN) in columns the model needs filled: {', '.join(holes)}",
                columns=holes,
            )
    elif (
        isinstance(X, np.ndarray)
        and X.dtype.kind == "f"
        and cols
        and not any(c.get("nullable") for c in cols)
        and np.isnan(X).any()
    ):
        raise BadInput(400, "the input holds NaN values, and the model's signature has no nullable column")
    if isinstance(X, pd.DataFrame):
        X = _whole_floats_to_int(X, cols)
    result = input_signature.check(signature, X)
    if not result.ok or result.reordered:
        detail = result.to_dict()
        detail.pop("ok", None)
        raise BadInput(
            422,
            f"the input does not fit the model's signature: {result}",
            expected_columns=result.expected_columns,
            **detail,
        )
    if isinstance(X, pd.DataFrame) and cols:
        wanted = {c["name"]: c["dtype"] for c in cols}
        try:
            X = X.astype({k: v for k, v in wanted.items() if str(X[k].dtype) != v})
        except (TypeError, ValueError) as exc:
            raise BadInput(422, f"cannot cast the input to the signature's dtypes: {exc}") from None
    return X


def _exact(X: pd.DataFrame, cols: list[dict[str, Any]]) -> bool:
    """Whether ``X`` has the signature's columns, in its order, each already of its dtype (then
    the signature check has nothing to find but missing values; this costs one pass over the
    column names instead of a Series per column)."""
    if len(cols) != X.shape[1]:
        return False
    pairs = zip(X.columns, X.dtypes, cols, strict=True)
    return all(str(name) == c["name"] and str(dtype) == c["dtype"] for name, dtype, c in pairs)


def _filled(X: pd.DataFrame, cols: list[dict[str, Any]]) -> pd.DataFrame:
    """``X``, or a 400 naming the non-nullable columns that hold missing values (one vectorised pass)."""
    if all(c.get("nullable", True) for c in cols):
        return X
    missing = X.isna().to_numpy().any(axis=0)
    holes = [c["name"] for c, m in zip(cols, missing, strict=True) if m and not c.get("nullable", True)]
    if holes:
        raise BadInput(
            400,
            f"missing values (null or NaN) in columns the model needs filled: {', '.join(holes)}",
            columns=holes,
        )
    return X


def _whole_floats_to_int(X: pd.DataFrame, cols: list[dict[str, Any]]) -> pd.DataFrame:
    """JSON writes ``2`` as ``2.0`` often enough (``DataFrame.values.tolist()``): a float column whose
    values are all whole numbers fits an integer column without losing anything."""
    for c in cols:
        name = c["name"]
        if name not in X or X[name].dtype.kind != "f":
            continue
        try:
            kind = np.dtype(c["dtype"]).kind
        except TypeError:
            continue
        values = X[name].to_numpy()
        if kind in "iu" and np.isfinite(values).all() and (values == np.round(values)).all():
            X = X.assign(**{name: values.astype(c["dtype"])})
    return X


def jsonable(value: Any) -> Any:
    """Predictions as JSON values (arrays, Series and frames become lists; NaN becomes null)."""
    if isinstance(value, pd.DataFrame):
        value = value.to_dict(orient="records")
    elif hasattr(value, "tolist"):  # Series, Index, arrays, numpy scalars
        value = value.tolist()
    return _clean(value)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


def example_from(signature: dict[str, Any] | None) -> Any:
    """One row that fits ``signature`` (zeros, empty strings), to warm a model; ``None`` when unknown."""
    if not signature:
        return None
    cols = signature.get("columns")
    if cols:
        row = {}
        for c in cols:
            dtype = c["dtype"]
            try:
                kind = np.dtype(dtype).kind
            except TypeError:
                kind = "O"
            row[c["name"]] = pd.Series([0 if kind in "iufb" else ""]).astype(dtype if kind != "O" else object)
        return pd.DataFrame({k: v for k, v in row.items()})
    n = signature.get("n_features")
    names = signature.get("feature_names")
    if names:
        return pd.DataFrame([[0.0] * len(names)], columns=names)
    if n:
        return np.zeros((1, int(n)), dtype=signature.get("dtype") or "float64")
    return None
