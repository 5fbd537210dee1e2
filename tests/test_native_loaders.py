"""Crafted LightGBM and xgboost files crash their native loaders; modelkeep refuses them first.

Written as an attacker who can write the store and the index: each crafted file is first
shown to crash (or hang) the framework's own loader, in a child process, and then planted in a
real registry, where ``load`` refuses it with :class:`UnsafeModelError`. The loads of planted
versions also run in a child (with ``quarantine="never"``, so the structural checks alone are
tested): if a check missed, the crash fails the test instead of killing pytest.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest

from modelkeep import ModelPersistence
from modelkeep.errors import UnsafeModelError
from modelkeep.formats import native_checks
from tests._crafted import (
    data,
    lightgbm_booster,
    plant,
    run_child,
    set_header,
    set_tree_field,
    ubj_with_count,
    xgboost_booster,
)

lgb = pytest.importorskip("lightgbm")
xgb = pytest.importorskip("xgboost")


def lightgbm_mutations(text: str) -> dict[str, str]:
    """Crafted model strings; every one kills or hangs a process that loads it (asserted below)."""
    return {
        "tree_sizes past the end": set_header(text, "tree_sizes", "99999999 560 465"),
        "num_leaves above its arrays": set_tree_field(text, "num_leaves", "40"),
        "negative num_leaves": set_tree_field(text, "num_leaves", "-3"),
        "num_cat without category sets": set_tree_field(text, "num_cat", "2"),
        "split_feature far out of range": set_tree_field(text, "split_feature", "90000000 1 0"),
        "right_child looping to the root": set_tree_field(text, "right_child", "0 2 -4"),
    }


@pytest.fixture(scope="module")
def lgb_text() -> str:
    return str(lightgbm_booster().model_to_string())


@pytest.fixture(scope="module")
def xgb_booster() -> Any:
    return xgboost_booster()


UNGUARDED_LIGHTGBM = """
import json, sys, lightgbm as lgb, numpy as np
for name, text in json.load(open(sys.argv[1])).items():
    if name != sys.argv[2]:
        continue
    booster = lgb.Booster(model_str=text)
    print("LOADED", flush=True)
    booster.predict(np.ones((3, 4)))
    print("SURVIVED")
"""


@pytest.mark.parametrize(
    "mutation",
    [
        "tree_sizes past the end",
        "num_leaves above its arrays",
        "negative num_leaves",
        "num_cat without category sets",
        "split_feature far out of range",
        "right_child looping to the root",
    ],
)
def test_crafted_lightgbm_strings_crash_the_unguarded_loader(lgb_text: str, tmp_path: Path, mutation: str) -> None:
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps(lightgbm_mutations(lgb_text)))
    hangs = mutation == "right_child looping to the root"
    result = run_child(UNGUARDED_LIGHTGBM, str(cases), mutation, timeout=6 if hangs else 60)
    assert "SURVIVED" not in result.stdout
    if hangs:  # predict loops forever: killed after the timeout, having loaded
        assert "LOADED" in result.stdout and "TIMEOUT" in result.stdout, result
    else:
        assert result.signal in ("SIGSEGV", "SIGABRT"), result


def test_every_crafted_lightgbm_string_is_refused_by_the_checks(lgb_text: str) -> None:
    """Pure Python: nothing native runs, so this is safe in-process."""
    for name, text in lightgbm_mutations(lgb_text).items():
        with pytest.raises(UnsafeModelError, match="LightGBM model string"):
            native_checks.check_lightgbm_model(text)
        assert name


GUARDED_LOAD = """
import json, sys
from modelkeep import ModelPersistence
from modelkeep.errors import UnsafeModelError
out = {}
with ModelPersistence(sys.argv[1], quarantine="never") as p:
    for name in json.loads(sys.argv[2]):
        try:
            p.load(name, "1.0.0")
            out[name] = "LOADED"
        except UnsafeModelError as exc:
            out[name] = str(exc)
print(json.dumps(out))
"""


def _load_in_child(models: Path, names: list[str]) -> dict[str, str]:
    result = run_child(GUARDED_LOAD, str(models), json.dumps(names), timeout=60)
    assert result.returncode == 0, result  # a signal here: a check let a crafted file through
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def _pickled_with_state(obj: Any, state: dict[str, Any], monkeypatch: pytest.MonkeyPatch, use_joblib: bool) -> bytes:
    """``obj`` pickled (or joblib-dumped) with ``state`` as its ``__getstate__``: the bytes an
    attacker writes without ever loading the crafted model themselves."""
    import joblib

    buf = io.BytesIO()
    with monkeypatch.context() as m:
        m.setattr(type(obj), "__getstate__", lambda self: state)
        if use_joblib:
            joblib.dump(obj, buf)
        else:
            pickle.dump(obj, buf, protocol=4)
    return buf.getvalue()


def test_crafted_lightgbm_is_refused_as_artifact_and_as_pickled_booster(
    tmp_path: Path, lgb_text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    booster = lgb.Booster(model_str=lgb_text)
    models = tmp_path / "models"
    names = []
    with ModelPersistence(models, serialization_format="lightgbm") as p:
        for i, text in enumerate(lightgbm_mutations(lgb_text).values()):
            p.save(booster, f"lgb-{i}", "1.0.0")
            plant(p, f"lgb-{i}", "1.0.0", text.encode())
            names.append(f"lgb-{i}")
    with ModelPersistence(models, serialization_format="joblib", compress=False) as p:
        for i, text in enumerate(lightgbm_mutations(lgb_text).values()):
            p.save(booster, f"pickled-{i}", "1.0.0")
            state = {**booster.__getstate__(), "_handle": text}
            plant(p, f"pickled-{i}", "1.0.0", _pickled_with_state(booster, state, monkeypatch, use_joblib=True))
            names.append(f"pickled-{i}")
    outcome = _load_in_child(models, names)
    for name in names:
        assert "LightGBM model string" in outcome[name], (name, outcome[name])


def test_the_pickled_lightgbm_payload_crashes_plain_pickle(
    tmp_path: Path, lgb_text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    booster = lgb.Booster(model_str=lgb_text)
    state = {**booster.__getstate__(), "_handle": set_header(lgb_text, "tree_sizes", "99999999 560 465")}
    (tmp_path / "evil.pkl").write_bytes(_pickled_with_state(booster, state, monkeypatch, use_joblib=False))
    result = run_child(
        "import pickle, sys\npickle.load(open(sys.argv[1], 'rb'))\nprint('SURVIVED')", str(tmp_path / "evil.pkl")
    )
    assert result.signal == "SIGSEGV", result


def test_a_changed_ubjson_count_crashes_xgboost_and_is_refused(tmp_path: Path, xgb_booster: Any) -> None:
    honest = bytes(xgb_booster.save_raw("ubj"))
    crafted = ubj_with_count(honest)
    assert len(crafted) < 8192 and sum(a != b for a, b in zip(honest, crafted, strict=True)) == 1
    (tmp_path / "evil.ubj").write_bytes(crafted)
    unguarded = run_child(
        "import sys, xgboost as xgb\nxgb.Booster().load_model(bytearray(open(sys.argv[1], 'rb').read()))\n"
        "print('SURVIVED')",
        str(tmp_path / "evil.ubj"),
    )
    assert unguarded.signal == "SIGSEGV", unguarded

    models = tmp_path / "models"
    with ModelPersistence(models, serialization_format="xgboost") as p:
        p.save(xgb_booster, "xgb", "1.0.0")
        plant(p, "xgb", "1.0.0", crafted)
    outcome = _load_in_child(models, ["xgb"])
    assert re.search(r"typed array of 150\d{5} items of 4 bytes where \d+ bytes remain", outcome["xgb"])


def test_a_pickled_xgboost_booster_with_a_crafted_buffer_is_refused(
    tmp_path: Path, xgb_booster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = dict(xgb_booster.__getstate__())
    state["handle"] = bytearray(ubj_with_count(bytes(state["handle"])))
    (tmp_path / "evil.pkl").write_bytes(_pickled_with_state(xgb_booster, state, monkeypatch, use_joblib=False))
    unguarded = run_child(
        "import pickle, sys\npickle.load(open(sys.argv[1], 'rb'))\nprint('SURVIVED')", str(tmp_path / "evil.pkl")
    )
    assert "SURVIVED" not in unguarded.stdout and unguarded.signal in ("SIGSEGV", "SIGABRT"), unguarded

    models = tmp_path / "models"
    with ModelPersistence(models, serialization_format="joblib", compress=False) as p:
        p.save(xgb_booster, "xgb", "1.0.0")
        plant(p, "xgb", "1.0.0", _pickled_with_state(xgb_booster, state, monkeypatch, use_joblib=True))
    outcome = _load_in_child(models, ["xgb"])
    assert "xgboost UBJSON model declares a typed array" in outcome["xgb"]


def test_xgboost_tree_indices_are_checked(xgb_booster: Any) -> None:
    model = json.loads(bytes(xgb_booster.save_raw("json")))
    tree = model["learner"]["gradient_booster"]["model"]["trees"][0]

    def refused(change: Any, match: str) -> None:
        crafted = json.loads(json.dumps(model))
        change(crafted["learner"]["gradient_booster"]["model"]["trees"][0])
        with pytest.raises(UnsafeModelError, match=match):
            native_checks.check_xgboost_model(json.dumps(crafted).encode())

    n = int(tree["tree_param"]["num_nodes"])
    refused(lambda t: t["left_children"].__setitem__(0, n + 5), "child index outside")
    refused(lambda t: t["right_children"].__setitem__(0, 0), "two parents or a loop")
    refused(lambda t: t["split_indices"].__setitem__(0, 10**6), "splits on a feature outside")
    refused(lambda t: t["split_conditions"].pop(), "split_conditions has")
    refused(lambda t: t["tree_param"].__setitem__("num_nodes", str(n + 100)), "declares")
    native_checks.check_xgboost_model(json.dumps(model).encode())


def test_ubjson_nesting_and_lengths_are_bounded() -> None:
    with pytest.raises(UnsafeModelError, match="nests containers more than"):
        native_checks.parse_ubjson(b"[" * 100_000)
    with pytest.raises(UnsafeModelError, match="declares"):
        native_checks.parse_ubjson(b"SL" + struct.pack(">q", 1 << 40) + b"abc")
    with pytest.raises(UnsafeModelError, match="negative count"):
        native_checks.parse_ubjson(b"[$d#l" + struct.pack(">i", -1))


def test_honest_models_of_every_kind_pass_the_checks() -> None:
    import numpy as np
    import pandas as pd

    X, y = data()
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(X, columns=list("abcd")).assign(cat=pd.Categorical(rng.integers(0, 8, len(y))))
    y3 = rng.integers(0, 3, len(y))
    for params, target, frame_or_x in [
        ({"objective": "multiclass", "num_class": 3}, y3, frame),
        ({"objective": "binary", "linear_tree": True}, y, X),
        ({"objective": "regression", "max_cat_to_onehot": 2}, y, frame),
    ]:
        booster = lgb.train({**params, "verbose": -1, "num_leaves": 6}, lgb.Dataset(frame_or_x, label=target), 4)
        native_checks.check_lightgbm_model(booster.model_to_string())
    for params, target, kwargs in [
        ({"objective": "multi:softprob", "num_class": 3}, y3, {}),
        ({"objective": "binary:logistic", "booster": "dart"}, y, {}),
        ({"objective": "binary:logistic", "booster": "gblinear"}, y, {}),
        ({"objective": "reg:squarederror", "tree_method": "hist"}, y, {"enable_categorical": True}),
        ({"objective": "reg:squarederror", "multi_strategy": "multi_output_tree"}, np.c_[y, y3], {}),
    ]:
        source = frame if kwargs else X
        booster = xgb.train(params, xgb.DMatrix(source, label=target, **kwargs), num_boost_round=3)
        for raw in (booster.save_raw("ubj"), booster.save_raw("json")):
            native_checks.check_xgboost_model(bytes(raw))
        native_checks.check_xgboost_serialized(booster.__getstate__()["handle"])


def test_catboost_safetensors_and_keras_headers_are_checked() -> None:
    with pytest.raises(UnsafeModelError, match="CBM1"):
        native_checks.check_catboost_model(b"PK\x03\x04" + b"\0" * 20)
    with pytest.raises(UnsafeModelError, match="core"):
        native_checks.check_catboost_model(b"CBM1" + struct.pack("<I", 1 << 30) + b"\0" * 16)
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}).encode()
    with pytest.raises(UnsafeModelError, match="lies outside its data"):
        native_checks.check_safetensors(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(UnsafeModelError, match="claims"):
        native_checks.check_safetensors(struct.pack("<Q", 1 << 40) + b"{}")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("model.weights.h5", b"\0" * (80 << 20))
    with pytest.raises(UnsafeModelError, match="zip bomb"):
        native_checks.check_keras_archive(buf.getvalue())
    with pytest.raises(UnsafeModelError, match="not a readable zip"):
        native_checks.check_keras_archive(b"not a zip")


def test_the_checks_read_lines_tokens_and_keys_as_the_native_parsers_do(lgb_text: str, xgb_booster: Any) -> None:
    """Where Python and C++ would split differently, the crafted file is refused, so the checks
    never judge other content than the parser reads: LightGBM ends a line at a lone CR and
    splits arrays on single spaces only; an object that repeats a key is ambiguous."""
    with pytest.raises(UnsafeModelError, match="carriage return"):
        native_checks.check_lightgbm_model(lgb_text.replace("\n", "\r"))
    with pytest.raises(UnsafeModelError, match="split_feature"):
        native_checks.check_lightgbm_model(set_tree_field(lgb_text, "split_feature", "0\t1 0"))
    raw = bytes(xgb_booster.save_raw("ubj"))
    key = b"L" + struct.pack(">q", len(b"left_children")) + b"left_children"
    at = raw.index(key)
    end = raw.index(key[:1] + struct.pack(">q", len(b"loss_changes")) + b"loss_changes")
    with pytest.raises(UnsafeModelError, match="repeats the key 'left_children'"):
        native_checks.check_xgboost_model(raw[:end] + raw[at:end] + raw[end:])
    text = bytes(xgb_booster.save_raw("json")).replace(b'"left_children":', b'"left_children":[0],"left_children":', 1)
    with pytest.raises(UnsafeModelError, match="repeats a key"):
        native_checks.check_xgboost_model(text)
