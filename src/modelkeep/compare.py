"""Side-by-side comparison of versions as a pandas DataFrame (imported lazily)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .metadata import ModelMetadata

if TYPE_CHECKING:
    import pandas as pd

BASE_COLUMNS = ["version", "created_at", "model_type"]


def comparison_frame(records: list[ModelMetadata]) -> pd.DataFrame:
    """One row per version: version, created_at, model_type, then every scalar field.

    ``model_params`` and nested values (lists, dicts) are left out; a field
    missing from a version is NaN in that row.
    """
    import pandas as pd

    rows = []
    extra: dict[str, None] = {}
    for rec in records:
        row: dict[str, object] = {"version": rec.version, "created_at": rec.created_at, "model_type": rec.model_type}
        for key, value in rec.metadata.items():
            if key == "model_params" or key in BASE_COLUMNS or isinstance(value, (dict, list)):
                continue
            row[key] = value
            extra.setdefault(key, None)
        rows.append(row)
    return pd.DataFrame(rows, columns=BASE_COLUMNS + list(extra))
