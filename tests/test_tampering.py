"""Changed artifacts, forged records, malicious pickles and self-trusting skops files.

The threat model, in the order the defences apply at load:
1. an artifact changed on disk (bit rot, a swapped file) fails its SHA-256;
2. with a signing key, a record whose digests were rewritten to match a
   swapped artifact fails its HMAC signature (and so does a wrong key);
3. a pickle that reaches a global outside the set recorded at save, or on the
   deny-list, is refused before that global is imported;
4. skops files only construct types the caller trusts.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
from fractions import Fraction
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from modelkeep import (
    IntegrityError,
    ModelPersistence,
    SignatureError,
    UnsafeModelError,
    signing,
)
from modelkeep.config import load_settings
from modelkeep.formats._restricted import (
    GlobalsScanner,
    RestrictedUnpickler,
    TrustPolicy,
    joblib_load,
    scan_pickle_globals,
)
from modelkeep.layout import sidecar_bytes, sidecar_key
from modelkeep.metadata import ArtifactInfo, ModelMetadata
from modelkeep.signing import manifest

from ._workers import Custom, Gadget, SystemGadget

FORMATS = [
    pytest.param("joblib", True, id="joblib-zstd"),
    pytest.param("joblib", ("zlib", 3), id="joblib-zlib"),
    pytest.param("joblib", False, id="joblib-raw"),
    pytest.param("pickle", True, id="pickle-gz"),
    pytest.param("pickle", False, id="pickle-raw"),
    pytest.param("skops", True, id="skops"),
    pytest.param("native", False, id="native"),
]
PICKLE_FORMATS = [p for p in FORMATS if p.values[0] in ("joblib", "pickle", "native")]


def artifact_path(p: ModelPersistence, name: str, version: str) -> Path:
    art = p.get_version(name, version).artifact
    assert art is not None
    path = p.store.local_path(art.key)
    assert path is not None
    return path


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))


def serialize_like(fmt: str, compress: Any, obj: Any) -> bytes:
    """``obj`` in the bytes a modelkeep artifact of that format would hold (for swapping)."""
    buf = io.BytesIO()
    if fmt == "joblib" and compress is True:  # modelkeep's default: a zstd frame around a joblib stream
        import zstandard

        with zstandard.ZstdCompressor(level=1).stream_writer(buf, closefd=False) as zfile:
            joblib.dump(obj, zfile)
    elif fmt == "joblib":
        joblib.dump(obj, buf, compress=compress or 0)
    else:
        import gzip

        raw = pickle.dumps(obj, protocol=5)
        buf.write(gzip.compress(raw) if compress else raw)
    return buf.getvalue()


def forge_record(p: ModelPersistence, name: str, version: str, new_bytes: bytes, **extra_changes: Any) -> None:
    """What an attacker with write access to the store and the index does: replace the
    artifact and rewrite its digest (and size) in both the index row and the sidecar. The
    attacker holds no key, so the signature (by the per-user key) is dropped: a kept one
    would no longer verify."""
    import hashlib

    rec = p.get_version(name, version)
    art = rec.artifact
    assert art is not None
    path = artifact_path(p, name, version)
    os.chmod(path, 0o644)
    path.write_bytes(new_bytes)
    extra = {**art.extra, **extra_changes}
    forged = dataclasses.replace(
        rec,
        artifact=ArtifactInfo(
            art.key, art.format, art.compression, len(new_bytes), hashlib.sha256(new_bytes).hexdigest(), extra
        ),
        signature=rec.signature if p.keyring.explicit else None,
    )
    p.index.put(forged)
    p.store.write_bytes(sidecar_key(name, version), sidecar_bytes(forged))


@pytest.fixture
def model(classifier: Any) -> Any:
    return classifier


# -- 1. changed bytes ----------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "compress"), FORMATS)
def test_one_flipped_byte_fails_the_integrity_check(tmp_path: Path, model: Any, fmt: str, compress: Any) -> None:
    with ModelPersistence(tmp_path / "models", serialization_format=fmt, compress=compress) as p:
        p.save(model, "clf", "1.0.0")
        flip_byte(artifact_path(p, "clf", "1.0.0"))
        with pytest.raises(IntegrityError, match="integrity check failed"):
            p.load("clf", "1.0.0")
        assert p.verify().of_kind("corrupt")


def test_flipped_byte_is_caught_on_the_mmap_path_too(tmp_path: Path) -> None:
    with ModelPersistence(tmp_path / "models", compress=False) as p:
        p.save({"w": np.arange(100_000, dtype=np.float64)}, "arrays", "1.0.0")
        flip_byte(artifact_path(p, "arrays", "1.0.0"), offset=-8)
        with pytest.raises(IntegrityError):
            p.load("arrays", "1.0.0", mmap_mode="r")


def test_a_flipped_byte_in_a_native_blob_fails_the_integrity_check(tmp_path: Path) -> None:
    with ModelPersistence(tmp_path / "models", serialization_format="native", compress=False) as p:
        p.save({"w": np.arange(50_000, dtype=np.float64)}, "arrays", "1.0.0")
        blobs = p.store.list_keys(".blobs")
        assert len(blobs) == 1
        local = p.store.local_path(blobs[0])
        assert local is not None
        flip_byte(local)
        with pytest.raises(IntegrityError):
            p.load("arrays", "1.0.0")
        assert p.verify().of_kind("corrupt")


@pytest.mark.parametrize(("fmt", "compress"), PICKLE_FORMATS)
def test_a_swapped_in_pickle_is_refused_before_it_is_unpickled(
    tmp_path: Path, model: Any, fmt: str, compress: Any
) -> None:
    marker = tmp_path / "executed"
    with ModelPersistence(tmp_path / "models", serialization_format=fmt, compress=compress) as p:
        p.save(model, "clf", "1.0.0")
        path = artifact_path(p, "clf", "1.0.0")
        os.chmod(path, 0o644)
        path.write_bytes(serialize_like(fmt, compress, Gadget(str(marker))))
        with pytest.raises(IntegrityError, match="integrity check failed"):
            p.load("clf", "1.0.0")
    assert not marker.exists(), "the swapped pickle ran before the digest was checked"


# -- 2. rewritten digests: the recorded globals, then the signature ----------------------------


@pytest.mark.parametrize(("fmt", "compress"), PICKLE_FORMATS)
def test_rewritten_digests_do_not_let_a_gadget_run(tmp_path: Path, model: Any, fmt: str, compress: Any) -> None:
    """Without a key, the digests can be forged; the allow-list still stops a gadget that
    only uses harmless-looking globals (no deny-list would name them)."""
    marker = tmp_path / "executed"
    with ModelPersistence(tmp_path / "models", serialization_format=fmt, compress=compress) as p:
        p.save(model, "clf", "1.0.0")
        forge_record(p, "clf", "1.0.0", serialize_like(fmt, compress, Gadget(str(marker))))
        with pytest.raises(UnsafeModelError, match=r"tests\._workers\.mark_executed") as info:
            p.load("clf", "1.0.0")
        assert "allow-list" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(("fmt", "compress"), PICKLE_FORMATS)
def test_the_allow_list_stops_os_system_even_without_recorded_globals(
    tmp_path: Path, model: Any, fmt: str, compress: Any
) -> None:
    marker = tmp_path / "executed"
    with ModelPersistence(tmp_path / "models", serialization_format=fmt, compress=compress) as p:
        p.save(model, "clf", "1.0.0")
        gadget = serialize_like(fmt, compress, SystemGadget(f"touch {marker}"))
        forge_record(p, "clf", "1.0.0", gadget, globals=None)  # a record from before globals were recorded
        with pytest.raises(UnsafeModelError, match=r"posix\.system"):
            p.load("clf", "1.0.0")
    assert not marker.exists()


@pytest.mark.parametrize(("fmt", "compress"), PICKLE_FORMATS)
def test_without_a_key_a_swapped_legit_model_with_forged_digests_loads(
    tmp_path: Path, iris_data: Any, fmt: str, compress: Any
) -> None:
    """The limit of hashes alone (documented in the README): someone who can write both the
    store and the index can replace a model by another one built from the same classes."""
    from sklearn.linear_model import LogisticRegression

    X, y = iris_data
    honest = LogisticRegression(max_iter=500, C=1.0).fit(X, y)
    evil = LogisticRegression(max_iter=500, C=0.001).fit(X, y)
    with ModelPersistence(tmp_path / "models", serialization_format=fmt, compress=compress) as p:
        p.save(honest, "clf", "1.0.0")
        forge_record(p, "clf", "1.0.0", serialize_like(fmt, compress, evil))
        assert p.load("clf", "1.0.0").C == 0.001


@pytest.mark.parametrize(("fmt", "compress"), FORMATS)
def test_with_a_key_a_swap_with_digests_rewritten_in_index_and_sidecar_is_refused(
    tmp_path: Path, iris_data: Any, fmt: str, compress: Any
) -> None:
    from sklearn.linear_model import LogisticRegression

    X, y = iris_data
    honest = LogisticRegression(max_iter=500, C=1.0).fit(X, y)
    evil = LogisticRegression(max_iter=500, C=0.001).fit(X, y)
    models = tmp_path / "models"
    kwargs: dict[str, Any] = {"serialization_format": fmt, "compress": compress, "signing_key": "s3cret"}
    with ModelPersistence(models, **kwargs) as p:
        p.save(honest, "clf", "1.0.0")
        # the forger re-serializes with modelkeep itself, so every recorded field looks right
        with ModelPersistence(tmp_path / "scratch", serialization_format=fmt, compress=compress) as scratch:
            scratch.save(evil, "clf", "1.0.0")
            evil_bytes = artifact_path(scratch, "clf", "1.0.0").read_bytes()
            evil_extra = scratch.get_version("clf", "1.0.0").artifact.extra  # type: ignore[union-attr]
        forge_record(p, "clf", "1.0.0", evil_bytes, **evil_extra)
        with pytest.raises(SignatureError, match="signature check failed"):
            p.load("clf", "1.0.0")
        assert p.verify().of_kind("signature")
        # Rebuilding the index from the forged sidecar does not launder it.
        assert p.reindex() == 1
        with pytest.raises(SignatureError):
            p.load("clf", "1.0.0")


def test_a_wrong_key_refuses_every_version(tmp_path: Path, model: Any) -> None:
    with ModelPersistence(tmp_path / "models", signing_key="right") as p:
        p.save(model, "clf", "1.0.0")
        p.save(model, "clf", "1.0.1")
    with ModelPersistence(tmp_path / "models", signing_key="wrong") as p:
        for version in ("1.0.0", "1.0.1"):
            with pytest.raises(SignatureError, match="wrong key"):
                p.load("clf", version)
        assert len(p.verify().of_kind("signature")) == 2
    with ModelPersistence(tmp_path / "models", signing_key=b"right") as p:
        p.load("clf", "1.0.0")


def test_an_unsigned_version_is_refused_when_a_key_is_configured(tmp_path: Path, model: Any) -> None:
    with ModelPersistence(tmp_path / "models") as p:
        rec = p.save_version(model, "clf", "1.0.0")
        p.index.put(dataclasses.replace(rec, signature=None))  # as saved by 0.1 without a key
    with ModelPersistence(tmp_path / "models", signing_key="k") as p, pytest.raises(SignatureError, match="not signed"):
        p.load("clf", "1.0.0")


def test_the_signature_covers_digests_format_size_name_version_and_recorded_globals(tmp_path: Path, model: Any) -> None:
    with ModelPersistence(tmp_path / "models", signing_key="k", serialization_format="pickle") as p:
        rec = p.save_version(model, "clf", "1.0.0")
        art = rec.artifact
        assert art is not None
        signed = manifest(rec)
        assert {"model_name", "version", "sha256", "size", "format", "compression", "key", "extra"} <= set(signed)
        assert "sklearn.linear_model._logistic.LogisticRegression" in signed["extra"]["globals"]
        for change in (
            {"format": "joblib"},
            {"size": art.size + 1},
            {"sha256": "0" * 64},
            {"extra": {"globals": [*signed["extra"]["globals"], "posix.system"]}},
        ):
            forged = dataclasses.replace(rec, artifact=dataclasses.replace(art, **change))
            p.index.put(forged)
            with pytest.raises(SignatureError):
                p.load("clf", "1.0.0")
        for renamed in (dataclasses.replace(rec, model_name="other"), dataclasses.replace(rec, version="9.9.9")):
            with pytest.raises(SignatureError):
                signing.verify(renamed, "k")


def test_the_signing_key_comes_from_the_environment_or_the_config(
    tmp_path: Path, model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODELKEEP_SIGNING_KEY", "from-env")
    with ModelPersistence.from_settings(load_settings(models_dir=str(tmp_path / "models"))) as p:
        assert p.signing_key == "from-env"
        assert p.save_version(model, "clf", "1.0.0").signature
    monkeypatch.delenv("MODELKEEP_SIGNING_KEY")
    config = tmp_path / "config.yaml"
    config.write_text(f"persistence:\n  models_dir: {tmp_path / 'models'}\n  signing_key: from-config\n")
    with ModelPersistence.from_settings(load_settings(config)) as p:
        assert p.signing_key == "from-config"
        with pytest.raises(SignatureError):
            p.load("clf", "1.0.0")
    with ModelPersistence(tmp_path / "models", signing_key="from-env") as p:
        p.load("clf", "1.0.0")


# -- 3. restricted unpickling ----------------------------------------------------------------

DENIED = [
    ("os", "system"),
    ("posix", "system"),
    ("nt", "system"),
    ("subprocess", "Popen"),
    ("subprocess", "check_output"),
    ("builtins", "eval"),
    ("builtins", "exec"),
    ("builtins", "__import__"),
    ("builtins", "getattr"),
    ("builtins", "compile"),
    ("__builtin__", "eval"),  # a protocol 0-2 spelling the unpickler maps to builtins.eval
    ("importlib", "import_module"),
    ("marshal", "loads"),
    ("ctypes", "CDLL"),
    ("pickle", "loads"),
    ("_pickle", "loads"),
    ("runpy", "run_path"),
    ("shutil", "rmtree"),
    ("socket", "create_connection"),
    ("sys", "modules"),
]


def _global_pickle(module: str, name: str, protocol: int) -> bytes:
    """A pickle that imports ``module.name`` and calls it with one string."""
    if protocol < 4:
        return f"c{module}\n{name}\n(S'x'\ntR.".encode()
    m, n = module.encode(), name.encode()
    return (
        b"\x80\x04\x8c" + bytes([len(m)]) + m + b"\x8c" + bytes([len(n)]) + n + b"\x93\x8c\x01x\x85R."
    )  # PROTO 4, SHORT_BINUNICODE x2, STACK_GLOBAL, arg tuple, REDUCE


@pytest.mark.parametrize(("module", "name"), DENIED, ids=[f"{m}.{n}" for m, n in DENIED])
@pytest.mark.parametrize("protocol", [0, 4])
def test_denied_globals_are_refused_by_name(tmp_path: Path, module: str, name: str, protocol: int) -> None:
    data = _global_pickle(module, name, protocol)
    with pytest.raises(UnsafeModelError, match=rf"global \w+\.{name}\b"):
        RestrictedUnpickler(io.BytesIO(data)).load()
    path = tmp_path / "evil.pkl"
    path.write_bytes(data)
    with pytest.raises(UnsafeModelError, match=rf"\w+\.{name}"):
        joblib_load(str(path), TrustPolicy())


def test_restrictions_apply_only_inside_modelkeep(tmp_path: Path) -> None:
    """modelkeep's checks do not change joblib.load for the rest of the program."""
    path = tmp_path / "plain.joblib"
    joblib.dump({"f": os.getcwd}, path)
    with pytest.raises(UnsafeModelError):
        joblib_load(str(path), TrustPolicy())
    assert joblib.load(path) == {"f": os.getcwd}


# -- recorded globals -------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "compress"), PICKLE_FORMATS)
def test_save_records_the_globals_of_the_pickle(tmp_path: Path, model: Any, fmt: str, compress: Any) -> None:
    with ModelPersistence(tmp_path / "models", serialization_format=fmt, compress=compress) as p:
        rec = p.save_version(model, "clf", "1.0.0")
        found = rec.artifact.extra["globals"]  # type: ignore[union-attr]
        assert found == sorted(found)
        assert "sklearn.linear_model._logistic.LogisticRegression" in found
        assert "numpy.dtype" in found
        assert p.load("clf", "1.0.0").get_params() == model.get_params()


@pytest.mark.parametrize("compress", [True, False])
def test_joblib_object_arrays_record_the_globals_of_their_nested_pickle(tmp_path: Path, compress: bool) -> None:
    obj = {"mixed": np.array([Fraction(1, 3), "text", None], dtype=object), "plain": np.arange(3)}
    with ModelPersistence(tmp_path / "models", compress=compress) as p:
        rec = p.save_version(obj, "mixed", "1.0.0")
        assert "fractions.Fraction" in rec.artifact.extra["globals"]  # type: ignore[union-attr]
        loaded = p.load("mixed", "1.0.0")
        assert list(loaded["mixed"]) == [Fraction(1, 3), "text", None]


SCANNED = [
    {"a": np.arange(10), "b": [1, 2, 3], "c": "x" * 10_000},
    np.array([1, "x", None], dtype=object),
    [Fraction(1, 3), Fraction(2, 3), len, object, type(None), Ellipsis, b"y" * 100_000],
    {"nested": {"deep": [Custom(1), Custom(2)]}},
]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("obj", SCANNED, ids=["dict", "objarray", "mixed", "custom"])
def test_the_scanner_sees_exactly_the_globals_the_unpickler_imports(obj: Any, protocol: int) -> None:
    data = pickle.dumps(obj, protocol=protocol)
    imported: set[str] = set()

    class Recording(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            imported.add(f"{module}.{name}")
            return super().find_class(module, name)

    Recording(io.BytesIO(data)).load()
    assert scan_pickle_globals(data) == sorted(imported)
    trickle = GlobalsScanner()  # fed in odd-sized pieces, as a pickler's writes arrive
    for i in range(0, len(data), 7):
        trickle.feed(data[i : i + 7])
    assert trickle.globals == sorted(imported)


def test_a_global_outside_the_signed_recorded_set_is_refused_by_name() -> None:
    data = pickle.dumps({"c": Custom(2)}, protocol=5)
    other = TrustPolicy(recorded=frozenset({"numpy.dtype"}))
    with pytest.raises(UnsafeModelError, match=r"tests\._workers\.Custom"):
        RestrictedUnpickler(io.BytesIO(data), policy=other).load()
    signed = TrustPolicy(recorded=frozenset({"tests._workers.Custom"}))
    assert RestrictedUnpickler(io.BytesIO(data), policy=signed).load() == {"c": Custom(2)}


# -- 4. skops: trusted types come from the caller -------------------------------------------------


def test_skops_loads_scikit_learn_models_without_trusting_anything(tmp_path: Path, model: Any) -> None:
    with ModelPersistence(tmp_path / "models", serialization_format="skops") as p:
        path = p.save(model, "clf", "1.0.0")
        assert path.name.endswith(".skops")
        assert p.load("clf").get_params() == model.get_params()


def test_skops_refuses_untrusted_types_and_says_how_to_trust_them(tmp_path: Path) -> None:
    models = tmp_path / "models"
    with ModelPersistence(models, serialization_format="skops") as p:
        p.save({"custom": Custom(7)}, "obj", "1.0.0")
        with pytest.raises(UnsafeModelError, match=r"tests\._workers\.Custom") as info:
            p.load("obj", "1.0.0")
        assert "trusted_types" in str(info.value)
    with ModelPersistence(models, trusted_types=["tests._workers.Custom"]) as p:
        assert p.load("obj", "1.0.0") == {"custom": Custom(7)}


def test_a_skops_artifact_cannot_vouch_for_its_own_types(tmp_path: Path) -> None:
    """Unlike mlflow before PR #25686, nothing stored with the model can widen what is trusted."""
    with ModelPersistence(tmp_path / "models", serialization_format="skops") as p:
        p.save({"custom": Custom(7)}, "obj", "1.0.0", trusted_types=["tests._workers.Custom"])
        rec = p.get_version("obj", "1.0.0")
        art = rec.artifact
        assert art is not None
        forged = dataclasses.replace(
            rec, artifact=dataclasses.replace(art, extra={"trusted": ["tests._workers.Custom"]}), signature=None
        )
        p.index.put(forged)
        p.store.write_bytes(sidecar_key("obj", "1.0.0"), sidecar_bytes(forged))
        with pytest.raises(UnsafeModelError, match=r"tests\._workers\.Custom"):
            p.load("obj", "1.0.0")


def test_records_round_trip_their_extra(tmp_path: Path, model: Any) -> None:
    with ModelPersistence(tmp_path / "models", serialization_format="pickle") as p:
        rec = p.save_version(model, "clf", "1.0.0")
        again = ModelMetadata.from_dict(rec.to_dict())
        assert again.artifact == rec.artifact


def test_skops_trusted_types_come_from_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelkeep import ModelPersistenceManager

    models = tmp_path / "models"
    with ModelPersistence(models, serialization_format="skops") as p:
        p.save({"custom": Custom(7)}, "obj", "1.0.0")
    config = tmp_path / "config.yaml"
    config.write_text(f"persistence:\n  models_dir: {models}\n  trusted_types: [tests._workers.Custom]\n")
    manager = ModelPersistenceManager(config)
    try:
        assert manager.load_model("obj", "1.0.0") == {"custom": Custom(7)}
    finally:
        manager.close()
    monkeypatch.setenv("MODELKEEP_TRUSTED_TYPES", "tests._workers.Other")
    config.write_text(f"persistence:\n  models_dir: {models}\n")
    manager = ModelPersistenceManager(config)
    try:
        with pytest.raises(UnsafeModelError, match=r"tests\._workers\.Custom"):
            manager.load_model("obj", "1.0.0")
    finally:
        manager.close()
