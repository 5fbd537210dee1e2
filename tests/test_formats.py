"""The format conformance suite: every general-purpose registered format
(``modelkeep.formats.FORMATS``) round-trips models and arrays with identical predictions, records its protocol, refuses
newer protocols, and refuses tampered bytes. Codec details of joblib and pickle follow."""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelkeep import ConfigError, IntegrityError, ModelPersistence
from modelkeep.errors import FormatVersionError
from modelkeep.formats import FORMATS as REGISTERED
from modelkeep.formats import Format, format_for_suffix, get_format
from modelkeep.layout import sidecar_bytes, sidecar_key
from modelkeep.metadata import ModelMetadata

#: Every general-purpose registered format: a new one joins the suite by registering. The formats
#: for one framework's models (and MLflow archives) have suites of their own, where their types are.
FORMATS = [name for name in REGISTERED if get_format(name).general_purpose]
SPECIFIC = {"archive": "test_mlflow_import", "auto": "test_framework_formats"} | {
    name: "test_framework_formats" for name in ("xgboost", "lightgbm", "catboost", "torch", "keras")
}


def test_every_registered_format_is_tested_somewhere() -> None:
    """A type-specific format must be named here with the suite that tests it."""
    specific = {name for name in REGISTERED if not get_format(name).general_purpose}
    assert specific == set(SPECIFIC)
    assert {"joblib", "pickle", "skops", "native"} <= set(FORMATS)


#: Formats that pickle, so they take any picklable object (skops builds only trusted types).
PICKLING = [name for name in FORMATS if name != "skops"]
COMPRESS = [True, False]
#: What ``compress=True``/``False`` must normalize to, per format (written out, not computed).
EXPECTED_COMPRESSION = {
    ("joblib", True): "zstd:1",
    ("pickle", True): "gzip:6",
    ("skops", True): "deflate:6",
    ("native", True): None,  # native keeps blobs raw, for dedup and mmap
}


def _estimators() -> dict[str, Callable[[], Any]]:
    from sklearn.cluster import KMeans
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return {
        "LogisticRegression": lambda: LogisticRegression(max_iter=500),
        "RandomForestClassifier": lambda: RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0),
        "Pipeline": lambda: Pipeline([("scale", StandardScaler()), ("svc", SVC())]),
        "KMeans": lambda: KMeans(n_clusters=3, n_init=2, random_state=0),
    }


@pytest.fixture(scope="module")
def fitted(iris_data: Any) -> dict[str, Any]:
    X, y = iris_data
    return {name: make().fit(X, y) for name, make in _estimators().items()}


def _outputs(model: Any, X: np.ndarray) -> list[np.ndarray]:
    """Everything the estimator can predict, so a round trip must preserve all of it."""
    outs = [model.predict(X)]
    for method in ("predict_proba", "decision_function", "transform"):
        if hasattr(model, method):  # False for SVC.predict_proba without probability=True
            outs.append(getattr(model, method)(X))
    return outs


@pytest.fixture
def make_persistence(tmp_path: Path) -> Iterator[Callable[..., ModelPersistence]]:
    opened: list[ModelPersistence] = []

    def make(**kwargs: Any) -> ModelPersistence:
        p = ModelPersistence(models_dir=tmp_path / "models", **kwargs)
        opened.append(p)
        return p

    yield make
    for p in opened:
        p.close()


EXPECTED_SUFFIX = {"joblib": ".joblib", "pickle": ".pkl", "skops": ".skops", "native": ".mkpkl"}


def _suffix(fmt: str, compressed: bool) -> str:
    return ".pkl.gz" if (fmt, compressed) == ("pickle", True) else EXPECTED_SUFFIX[fmt]


def _magic_ok(fmt: str, compressed: bool, head: bytes) -> bool:
    if fmt == "skops":
        return head[:2] == b"PK"  # a zip
    if fmt == "native":
        return head[:1] == b"\x80"  # the pickle stream; arrays are blobs
    if fmt == "pickle" and compressed:
        return head[:2] == b"\x1f\x8b"  # gzip
    if compressed:
        return head[:1] != b"\x80"  # some codec's header, not a bare pickle
    return head[:1] == b"\x80"  # a bare pickle (protocol >= 2)


@pytest.mark.parametrize("estimator", list(_estimators()))
@pytest.mark.parametrize("compress", COMPRESS, ids=["compressed", "raw"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_sklearn_round_trip_keeps_predictions(
    make_persistence: Callable[..., ModelPersistence],
    fitted: dict[str, Any],
    iris_data: Any,
    fmt: str,
    compress: bool,
    estimator: str,
) -> None:
    X, _ = iris_data
    model = fitted[estimator]
    # skops builds only types it trusts; a forest's trees are trusted by the user, as its docs show
    trust = {"trusted_types": ["sklearn.tree._tree.Tree"]} if fmt == "skops" else {}
    p = make_persistence(serialization_format=fmt, compress=compress, **trust)
    path = p.save(model, "est", accuracy=0.5)
    assert isinstance(path, Path) and path.name == "est_v1.0.0" + _suffix(fmt, compress)
    assert _magic_ok(fmt, compress, path.read_bytes()[:4])

    loaded, meta = p.load("est", return_metadata=True)
    assert type(loaded) is type(model) and loaded is not model
    for got, want in zip(_outputs(loaded, X), _outputs(model, X), strict=True):
        np.testing.assert_array_equal(got, want)

    assert meta.model_type == type(model).__name__
    assert meta.artifact.format == fmt  # type: ignore[union-attr]
    assert meta.artifact.compression == EXPECTED_COMPRESSION.get((fmt, compress))  # type: ignore[union-attr]
    assert meta.artifact.extra["protocol"] == get_format(fmt).protocol  # type: ignore[union-attr]
    assert set(meta.metadata["model_params"]) == set(model.get_params(deep=True))  # a pipeline: step__param keys too


def test_compression_makes_artifacts_smaller(make_persistence: Callable[..., ModelPersistence]) -> None:
    data = {"w": np.zeros(50_000)}
    raw = make_persistence(compress=False).save(data, "raw")
    small = make_persistence(compress=True).save(data, "small")
    assert isinstance(raw, Path) and isinstance(small, Path)
    assert small.stat().st_size * 10 < raw.stat().st_size


# --------------------------------------------------------------------------------------
# objects that are not scikit-learn estimators
# --------------------------------------------------------------------------------------


@dataclass
class Point:
    """A plain dataclass: picklable, no get_params()."""

    x: float
    y: float
    tags: list[str] = field(default_factory=list)


class ParamsOnly:
    """Not an estimator, but it has get_params(): its parameters are captured."""

    def __init__(self, alpha: float = 0.5, layers: tuple[int, ...] = (3, 4)) -> None:
        self.alpha = alpha
        self.layers = layers

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"alpha": self.alpha, "layers": self.layers}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParamsOnly) and (self.alpha, self.layers) == (other.alpha, other.layers)


class BrokenParams:
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        raise RuntimeError("broken")


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "weights": rng.normal(size=(20, 3)),
        "bias": rng.normal(size=3).astype(np.float32),
        "ids": np.arange(7, dtype=np.int64),
        "mask": np.array([True, False, True]),
        "empty": np.empty((0, 2)),
    }


@pytest.mark.parametrize("compress", COMPRESS, ids=["compressed", "raw"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_dict_of_arrays_round_trips(
    make_persistence: Callable[..., ModelPersistence], fmt: str, compress: bool
) -> None:
    arrays = _arrays()
    p = make_persistence(serialization_format=fmt, compress=compress)
    p.save(arrays, "arrays", "1.0.0")
    loaded, meta = p.load("arrays", return_metadata=True)
    assert set(loaded) == set(arrays)
    for key, value in arrays.items():
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape
        np.testing.assert_array_equal(loaded[key], value)
    assert meta.model_type == "dict"
    assert "model_params" not in meta.metadata


@pytest.mark.parametrize("compress", COMPRESS, ids=["compressed", "raw"])
@pytest.mark.parametrize("fmt", PICKLING)
def test_dataclass_round_trips(make_persistence: Callable[..., ModelPersistence], fmt: str, compress: bool) -> None:
    point = Point(1.5, -2.0, ["a", "b"])
    # a custom class: loading it without a signing key needs the user's trust (tests/test_gadgets.py)
    p = make_persistence(serialization_format=fmt, compress=compress, trusted_types=["tests.test_formats.Point"])
    p.save(point, "point", source="test")
    loaded, meta = p.load("point", return_metadata=True)
    assert loaded == point and isinstance(loaded, Point)
    assert meta.model_type == "Point"
    assert meta.metadata == {"source": "test"}  # no get_params(): no model_params


@pytest.mark.parametrize("fmt", FORMATS)
def test_format_declares_its_interface(fmt: str) -> None:
    """What the registry relies on is declared on the class, not discovered with getattr."""
    f = get_format(fmt)
    assert isinstance(f, Format) and f.name == fmt
    assert isinstance(f.uses_blobs, bool) and f.uses_blobs == (fmt == "native")
    assert isinstance(f.protocol, int) and f.protocol >= 1
    assert f.extension(None).startswith(".")


@pytest.mark.parametrize("fmt", FORMATS)
def test_tampered_artifact_is_refused(make_persistence: Callable[..., ModelPersistence], fmt: str) -> None:
    p = make_persistence(serialization_format=fmt, compress=False)
    path = p.save(_arrays(), "m")
    assert isinstance(path, Path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="integrity check failed"):
        p.load("m")


def _rewrite_extra(p: ModelPersistence, name: str, **changes: Any) -> None:
    """Change a version's recorded ``extra`` in the index and the sidecar, as another release would
    write it (and sign it: the same user's key signs whatever release they run)."""
    from dataclasses import replace

    rec = p.get_version(name)
    assert rec.artifact is not None
    extra = {k: v for k, v in {**rec.artifact.extra, **changes}.items() if v is not None}
    forged = replace(rec, artifact=replace(rec.artifact, extra=extra))
    forged.signature = p.keyring.sign(forged)
    with p.index.reserve(name, rec.version, overwrite=True) as slot:
        slot.put(forged)
    p.store.write_bytes(sidecar_key(name, rec.version), sidecar_bytes(forged))


@pytest.mark.parametrize("fmt", FORMATS)
def test_newer_protocol_is_refused_older_loads(make_persistence: Callable[..., ModelPersistence], fmt: str) -> None:
    """A loader refuses a protocol above its own, naming the release needed; an artifact
    without a protocol (written by 0.1) is protocol 1 and loads."""
    p = make_persistence(serialization_format=fmt, compress=False)
    p.save(_arrays(), "m")
    newer = get_format(fmt).protocol + 1
    _rewrite_extra(p, "m", protocol=newer, requires="9.1.0")
    with pytest.raises(FormatVersionError, match=rf"protocol {newer}.*upgrade to modelkeep 9\.1\.0"):
        p.load("m")
    _rewrite_extra(p, "m", protocol=newer, requires=None)
    with pytest.raises(FormatVersionError, match="upgrade modelkeep"):
        p.load("m")
    _rewrite_extra(p, "m", protocol=None)  # as modelkeep 0.1 wrote it
    np.testing.assert_array_equal(p.load("m")["weights"], _arrays()["weights"])


def test_newer_sidecar_schema_is_refused() -> None:
    record = ModelMetadata(model_name="m", model_type="dict", version="1.0.0", created_at="", updated_at="")
    data = record.to_dict()
    assert data["schema"] == 1 and ModelMetadata.from_dict(data) == record
    with pytest.raises(FormatVersionError, match=r"schema 2.*upgrade to modelkeep 3\.0"):
        ModelMetadata.from_dict({**data, "schema": 2, "requires": "3.0"})
    with pytest.raises(FormatVersionError, match="upgrade modelkeep"):
        ModelMetadata.from_dict({**data, "schema": 2})
    assert ModelMetadata.from_dict({k: v for k, v in data.items() if k != "schema"}) == record  # older: loads


def test_model_params_captured_only_with_get_params(make_persistence: Callable[..., ModelPersistence]) -> None:
    p = make_persistence(trusted_types=["tests.test_formats.ParamsOnly"])
    p.save(ParamsOnly(0.25), "params")
    meta = p.get_metadata("params")
    assert meta is not None
    assert meta.metadata["model_params"] == {"alpha": 0.25, "layers": [3, 4]}
    assert p.load("params") == ParamsOnly(0.25)

    p.save(BrokenParams(), "broken")  # a failing get_params() must not block saving
    broken = p.get_metadata("broken")
    assert broken is not None and "model_params" not in broken.metadata

    p.save([1, 2, 3], "plain")
    assert "model_params" not in p.get_metadata("plain").metadata  # type: ignore[union-attr]


def test_explicit_model_params_are_not_overridden(make_persistence: Callable[..., ModelPersistence]) -> None:
    p = make_persistence()
    p.save(ParamsOnly(), "m", model_params={"mine": True})
    assert p.get_metadata("m").metadata["model_params"] == {"mine": True}  # type: ignore[union-attr]


def test_nested_estimator_params_stay_json(make_persistence: Callable[..., ModelPersistence], fitted: Any) -> None:
    import json

    p = make_persistence()
    p.save(fitted["Pipeline"], "pipe")
    params = p.get_metadata("pipe").metadata["model_params"]  # type: ignore[union-attr]
    assert "steps" in params
    json.dumps(params, allow_nan=False)


# --------------------------------------------------------------------------------------
# per-call format, codecs, suffixes
# --------------------------------------------------------------------------------------


def test_per_call_format_and_compress(make_persistence: Callable[..., ModelPersistence]) -> None:
    p = make_persistence()  # joblib, compressed by default
    rec = p.save_version({"a": 1}, "m", serialization_format="pickle", compress=False)
    assert rec.artifact is not None and (rec.artifact.format, rec.artifact.compression) == ("pickle", None)
    assert rec.artifact.key.endswith("m_v1.0.0.pkl")
    rec2 = p.save_version({"a": 2}, "m", compress=("bz2", 2))
    assert rec2.artifact is not None and (rec2.artifact.format, rec2.artifact.compression) == ("joblib", "bz2:2")
    assert p.load("m", "1.0.0") == {"a": 1} and p.load("m", "1.0.1") == {"a": 2}


@pytest.mark.parametrize(
    ("fmt", "compress", "expected"),
    [
        ("joblib", False, None),
        ("joblib", 0, None),
        ("joblib", None, None),
        ("joblib", "gzip:4", "gzip:4"),
        ("joblib", "lzma:2", "lzma:2"),
        ("joblib", ("bz2", 1), "bz2:1"),
        ("pickle", True, "gzip:6"),
        ("pickle", False, None),
        ("pickle", 4, "gzip:4"),
        ("pickle", "gzip:1", "gzip:1"),
    ],
)
def test_normalize_compression(fmt: str, compress: Any, expected: str | None) -> None:
    assert get_format(fmt).normalize_compression(compress) == expected


def test_joblib_default_codec_and_levels() -> None:
    fmt = get_format("joblib")
    default = fmt.normalize_compression(True)
    assert default is not None
    codec, _, level = default.partition(":")
    assert level.isdigit()
    assert fmt.normalize_compression(5) == f"{codec}:5"  # a bare level uses the default codec
    assert (fmt.normalize_compression("gzip") or "").startswith("gzip:")


@pytest.mark.parametrize(
    ("fmt", "compress"),
    [("joblib", "snappy"), ("joblib", ("zlib", 10)), ("joblib", 0.5), ("pickle", "zlib"), ("pickle", 11)],
)
def test_bad_compression_is_a_config_error(fmt: str, compress: Any) -> None:
    with pytest.raises(ConfigError):
        get_format(fmt).normalize_compression(compress)


@pytest.mark.parametrize("codec", ["gzip", "bz2", "lzma", "xz"])
def test_joblib_codecs_round_trip(make_persistence: Callable[..., ModelPersistence], codec: str) -> None:
    arrays = _arrays()
    p = make_persistence(compress=(codec, 1))
    p.save(arrays, "m")
    loaded = p.load("m")
    np.testing.assert_array_equal(loaded["weights"], arrays["weights"])
    assert p.get_metadata("m").artifact.compression == f"{codec}:1"  # type: ignore[union-attr]


def test_unknown_format_name() -> None:
    with pytest.raises(ConfigError, match="'joblib', 'pickle'"):
        get_format("xml")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("m.joblib", ("joblib", False)),
        ("m.pkl", ("pickle", False)),
        ("M.PICKLE", ("pickle", False)),
        ("m.pkl.gz", ("pickle", True)),
        ("m.pickle.gz", ("pickle", True)),
    ],
)
def test_format_for_suffix(name: str, expected: tuple[str, bool]) -> None:
    assert format_for_suffix(name) == expected


def test_format_for_unknown_suffix() -> None:
    with pytest.raises(ConfigError):
        format_for_suffix("model.txt")


def test_gzip_pickle_is_readable_by_standard_tools(make_persistence: Callable[..., ModelPersistence]) -> None:
    p = make_persistence(serialization_format="pickle")
    path = p.save({"a": [1, 2]}, "m")
    with gzip.open(path, "rb") as f:
        assert pickle.load(f) == {"a": [1, 2]}


def test_same_object_gives_same_bytes(make_persistence: Callable[..., ModelPersistence]) -> None:
    p = make_persistence(serialization_format="pickle")
    a = p.save_version({"a": 1}, "m")
    b = p.save_version({"a": 1}, "m")
    assert a.artifact is not None and b.artifact is not None
    assert a.artifact.sha256 == b.artifact.sha256  # gzip header without a timestamp
