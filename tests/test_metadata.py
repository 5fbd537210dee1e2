"""ModelMetadata, ArtifactInfo, ModelSummary and the JSON conversion of custom metadata."""

from __future__ import annotations

import datetime as dt
import enum
import json
import math
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pytest

from modelkeep import ArtifactInfo, MetadataError, ModelMetadata, ModelPersistence, ModelSummary
from modelkeep.metadata import MAX_ARRAY_ELEMENTS, SIDECAR_SCHEMA, to_json_safe, utc_now

#: Also run through a registry server (conftest.pytest_generate_tests): on SQLite + a folder, and on
#: PostgreSQL + S3 with presigned transfers (a server on PostgreSQL + a folder adds time, not cover).
ALSO_OVER_HTTP = ("sqlite-http", "postgresql-http-pg-s3")


def _record(**changes: Any) -> ModelMetadata:
    base: dict[str, Any] = {
        "model_name": "churn",
        "model_type": "LogisticRegression",
        "version": "1.2.3",
        "created_at": "2024-01-01T12:00:00+00:00",
        "updated_at": "2024-01-02T12:00:00+00:00",
        "metadata": {"accuracy": 0.93, "model_params": {"C": 1.0}, "features": ["a", "b"], "nested": {"k": [1]}},
        "artifact": ArtifactInfo(
            "churn/1.2.3/churn_v1.2.3.joblib", "joblib", "zlib:3", 1234, "ab" * 32, {"globals": ["x.y"]}
        ),
        "environment": {"python": "3.11.7", "platform": "Linux-x86_64", "packages": {"numpy": "2.0.0"}},
        "signature": None,
    }
    base.update(changes)
    return ModelMetadata(**base)


def test_to_dict_layout() -> None:
    d = _record().to_dict()
    assert d["schema"] == SIDECAR_SCHEMA
    assert d["model_name"] == "churn" and d["version"] == "1.2.3" and d["model_type"] == "LogisticRegression"
    assert d["metadata"]["accuracy"] == 0.93
    assert d["artifact"] == {
        "key": "churn/1.2.3/churn_v1.2.3.joblib",
        "format": "joblib",
        "compression": "zlib:3",
        "size": 1234,
        "sha256": "ab" * 32,
        "extra": {"globals": ["x.y"]},
    }
    assert "signature" not in d  # only present when signed
    json.dumps(d, allow_nan=False)


@pytest.mark.parametrize(
    "record",
    [
        _record(),
        _record(signature="hmac-sha256:" + "0" * 64),
        _record(artifact=None, environment={}, metadata={}),
        _record(artifact=ArtifactInfo("k", "pickle", None, 0, "0" * 64)),
    ],
    ids=["full", "signed", "bare", "no-extra"],
)
def test_to_dict_from_dict_round_trip(record: ModelMetadata) -> None:
    d = record.to_dict()
    back = ModelMetadata.from_dict(d)
    assert back == record
    assert back.to_dict() == d
    assert ModelMetadata.from_dict(json.loads(json.dumps(d))) == record  # through real JSON


def test_artifact_info_round_trip_and_empty_extra() -> None:
    art = ArtifactInfo("k", "pickle", None, 10, "f" * 64)
    assert "extra" not in art.to_dict()
    assert ArtifactInfo.from_dict(art.to_dict()) == art
    full = ArtifactInfo("k", "joblib", "zlib:3", 10, "f" * 64, {"a": 1})
    assert ArtifactInfo.from_dict(full.to_dict()) == full


def test_from_dict_ignores_unknown_keys_and_fills_defaults() -> None:
    d = {"model_name": "m", "version": "1.0.0", "created_at": "2024-01-01T00:00:00+00:00", "future_field": 1}
    rec = ModelMetadata.from_dict(d)
    assert rec.model_name == "m" and rec.version == "1.0.0"
    assert rec.model_type == "" and rec.metadata == {} and rec.artifact is None and rec.environment == {}
    assert rec.updated_at == rec.created_at


@pytest.mark.parametrize(
    "bad",
    [
        {"version": "1.0.0"},
        {"model_name": "m"},
        {"model_name": "m", "version": "1", "artifact": {"key": "k"}},
        {"model_name": "m", "version": "1", "artifact": {"key": "k", "format": "f", "size": "x", "sha256": "s"}},
    ],
)
def test_from_dict_rejects_incomplete_records(bad: dict[str, Any]) -> None:
    with pytest.raises(MetadataError) as info:
        ModelMetadata.from_dict(bad)
    assert isinstance(info.value, ValueError)


def test_model_summary_to_dict() -> None:
    s = ModelSummary("m", 3, "1.0.2", "2024-01-01T00:00:00+00:00")
    assert s.to_dict() == {
        "name": "m",
        "version_count": 3,
        "latest_version": "1.0.2",
        "updated_at": "2024-01-01T00:00:00+00:00",
    }


def test_utc_now_is_iso_utc() -> None:
    now = dt.datetime.fromisoformat(utc_now())
    assert now.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.timezone.utc) - now).total_seconds()) < 5


@pytest.mark.local_files("reads the sidecar file from the local disk")
def test_saved_record_round_trips(persistence: ModelPersistence, classifier: Any) -> None:
    persistence.save(classifier, "clf", accuracy=0.9, dataset={"name": "iris", "rows": 150})
    meta = persistence.get_version("clf")
    assert ModelMetadata.from_dict(meta.to_dict()) == meta
    sidecar = Path(persistence.models_dir) / "clf" / "1.0.0" / "clf_v1.0.0_metadata.json"
    assert ModelMetadata.from_dict(json.loads(sidecar.read_text())) == meta
    for stamp in (meta.created_at, meta.updated_at):
        assert dt.datetime.fromisoformat(stamp).utcoffset() == dt.timedelta(0)


# --------------------------------------------------------------------------------------
# to_json_safe: explicit conversions
# --------------------------------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    NUM = 2


def _stable_id(value: Any) -> str:
    """``repr``, with a set's items sorted: its order follows the hash seed, which differs between
    pytest-xdist's workers, and every worker must collect the same test ids."""
    if isinstance(value, (set, frozenset)):
        return f"{type(value).__name__}({sorted(value)!r})"
    return repr(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        (3, 3),
        (0.5, 0.5),
        (float("nan"), None),
        (float("inf"), None),
        (-float("inf"), None),
        ("s", "s"),
        ((1, 2), [1, 2]),
        ({3, 1, 2}, [1, 2, 3]),
        (frozenset({"b", "a"}), ["a", "b"]),
        ({1: "a", 2.5: "b", False: "c"}, {"1": "a", "2.5": "b", "False": "c"}),
        (dt.datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05"),
        (dt.date(2024, 1, 2), "2024-01-02"),
        (dt.timedelta(minutes=2), 120.0),
        (PurePosixPath("/data/x.csv"), "/data/x.csv"),
        (Color.RED, "red"),
        (Color.NUM, 2),
        (np.float32(0.5), 0.5),
        (np.float64("nan"), None),
        (np.int64(7), 7),
        (np.bool_(True), True),
        (np.array([[1, 2], [3, 4]]), [[1, 2], [3, 4]]),
        (np.array([1.0, np.nan, np.inf]), [1.0, None, None]),
        (np.array(5), 5),
        ({"nested": [{"x": np.float64(1.5)}]}, {"nested": [{"x": 1.5}]}),
    ],
    ids=_stable_id,
)
def test_to_json_safe_conversions(value: Any, expected: Any) -> None:
    out = to_json_safe(value)
    assert out == expected
    assert type(out) is type(expected)
    json.dumps(out, allow_nan=False)


def test_numpy_scalars_become_python_types() -> None:
    out = to_json_safe({"a": np.float32(1.5), "b": np.int32(2), "c": np.bool_(False)})
    assert [type(v) for v in out.values()] == [float, int, bool]


def test_pandas_timestamp_is_converted() -> None:
    import pandas as pd

    assert to_json_safe(pd.Timestamp("2024-01-02T03:04:05")) == "2024-01-02T03:04:05"


@pytest.mark.parametrize(
    ("value", "path_in_message"),
    [
        ({"ok": 1, "bad": b"bytes"}, "metadata.bad"),
        ({"list": [1, object()]}, "metadata.list[1]"),
        ({(1, 2): "tuple key"}, "key of type tuple"),
        ({"c": 1 + 2j}, "metadata.c"),
        ({"arr": np.zeros(MAX_ARRAY_ELEMENTS + 1)}, "metadata.arr"),
    ],
)
def test_to_json_safe_refuses_with_the_field_path(value: Any, path_in_message: str) -> None:
    with pytest.raises(MetadataError) as info:
        to_json_safe(value)
    assert path_in_message in str(info.value)


def test_array_at_the_size_limit_is_accepted() -> None:
    out = to_json_safe(np.zeros(MAX_ARRAY_ELEMENTS))
    assert len(out) == MAX_ARRAY_ELEMENTS and not any(math.isnan(x) for x in out)


def test_metadata_nan_is_stored_as_null(local_persistence: ModelPersistence) -> None:
    local_persistence.save({"a": 1}, "m", score=float("nan"), scores=[1.0, float("inf")])
    meta = local_persistence.get_version("m")
    assert meta.metadata == {"score": None, "scores": [1.0, None]}
    df = local_persistence.compare_versions("m")
    assert df["score"].isna().all()


def test_circular_metadata_is_refused_with_its_path() -> None:
    loop: dict[str, object] = {"a": 1}
    loop["self"] = loop
    with pytest.raises(MetadataError, match=r"metadata\.inner\.self contains itself"):
        to_json_safe({"inner": loop})
    shared = [1, 2]
    assert to_json_safe({"x": shared, "y": shared}) == {"x": [1, 2], "y": [1, 2]}  # shared, not circular
