"""Side-by-side comparison of versions as a pandas DataFrame (imported lazily)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import FilterError
from .metadata import ModelMetadata
from .params import PARAMS_KEY

if TYPE_CHECKING:
    import pandas as pd

BASE_COLUMNS = ["version", "created_at", "model_type"]
#: Which ``params.<name>`` columns :func:`comparison_frame` shows.
PARAMS_MODES = ("differing", "all", "none")
_MISSING = object()


def comparison_frame(records: list[ModelMetadata], params: str = "differing") -> pd.DataFrame:
    """One row per version: version, created_at, model_type, every scalar field, then parameters.

    Nested values (lists, dicts) are left out; a field missing from a version
    is NaN in that row. Scalar model parameters (``model_params``, e.g. a
    pipeline's ``logisticregression__C``) become ``params.<name>`` columns, named
    as in a search filter: with ``params="differing"`` (the default) only those
    whose value differs between the versions compared, with ``"all"`` every
    one, with ``"none"`` none.
    """
    import pandas as pd

    if params not in PARAMS_MODES:
        raise FilterError(f"params must be one of {', '.join(PARAMS_MODES)}, got {params!r}")
    rows = []
    extra: dict[str, None] = {}
    for rec in records:
        row: dict[str, object] = {"version": rec.version, "created_at": rec.created_at, "model_type": rec.model_type}
        for key, value in rec.metadata.items():
            if key == PARAMS_KEY or key in BASE_COLUMNS or isinstance(value, (dict, list)):
                continue
            row[key] = value
            extra.setdefault(key, None)
        rows.append(row)
    columns = BASE_COLUMNS + list(extra)
    if params != "none":
        for name, values in _param_columns(records, keep_all=params == "all").items():
            for row, value in zip(rows, values, strict=True):
                row[name] = value
            columns.append(name)
    return pd.DataFrame(rows, columns=columns)


def _param_columns(records: list[ModelMetadata], *, keep_all: bool) -> dict[str, list[Any]]:
    """``{"params.<name>": [value per record]}`` for the scalar parameters to show."""
    per_record = [_scalar_params(rec) for rec in records]
    names: dict[str, None] = {}
    for found in per_record:
        names.update(dict.fromkeys(found))
    out: dict[str, list[Any]] = {}
    for name in names:
        values = [found.get(name, _MISSING) for found in per_record]
        if keep_all or any(v != values[0] or type(v) is not type(values[0]) for v in values):
            out[f"params.{name}"] = [None if v is _MISSING else v for v in values]
    return out


def _scalar_params(rec: ModelMetadata) -> dict[str, Any]:
    params = rec.metadata.get(PARAMS_KEY)
    if not isinstance(params, dict):
        return {}
    return {str(k): v for k, v in params.items() if v is None or isinstance(v, (bool, int, float, str))}
