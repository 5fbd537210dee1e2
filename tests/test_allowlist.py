"""The built-in allow-list: what it holds, and that real models load under it alone.

Every model here is saved and loaded with no signing key and no trusted types
(``signed=False``): only the built-in allow-list applies.
"""

from __future__ import annotations

import importlib
import inspect
import io
import pickle
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from modelkeep import ModelPersistence, UnsafeModelError
from modelkeep.formats._restricted import TrustPolicy, restricted_loads
from modelkeep.formats.allowlist import (
    BUILTIN_ALLOWLIST,
    CONSTANT_SECTIONS,
    FRAMEWORKS,
    FUNCTION_SECTIONS,
)

from ._gadgets import GADGETS, Ctx, gadget_globals


def _resolve(module: str, qualname: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _installed(framework: str) -> bool:
    root = {"python": "builtins"}.get(framework, framework)
    try:
        importlib.import_module(root)
    except ImportError:
        return False
    return True


def _entries() -> Iterator[tuple[str, str, str, str]]:
    for framework, sections in FRAMEWORKS.items():
        for section in sections:
            kind = (
                "function"
                if any(section is s for s in FUNCTION_SECTIONS)
                else "constant"
                if any(section is s for s in CONSTANT_SECTIONS)
                else "class"
            )
            for module, names in section.items():
                for name in names:
                    yield framework, kind, module, name


ENTRIES = [e for e in _entries() if _installed(e[0])]


def test_every_entry_resolves_to_what_its_section_says() -> None:
    wrong = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for framework, kind, module, name in ENTRIES:
            try:
                obj = _resolve(module, name)
            except (ImportError, AttributeError) as exc:
                wrong.append(f"{module}.{name}: {exc}")
                continue
            if isinstance(obj, types.ModuleType):
                wrong.append(f"{module}.{name} is a module")
            elif kind == "class" and not inspect.isclass(obj):
                wrong.append(f"{module}.{name} ({framework}) is listed as a class but is {type(obj).__name__}")
            elif kind == "function" and inspect.isclass(obj):
                wrong.append(f"{module}.{name} is a class listed among functions")
    assert not wrong, "\n".join(wrong)


def test_every_gadget_of_the_corpus_needs_a_global_off_the_allow_list(tmp_path: Path) -> None:
    """Gadgets may use allow-listed building blocks (numpy.ndarray, pandas.DataFrame), never only
    those; the one exception, torch.storage._load_from_bytes, is replaced at load."""
    ctx = Ctx(tmp_path)
    listed = {f"{m}.{n}" for m, n in BUILTIN_ALLOWLIST}
    only_listed = [gd.id for gd in GADGETS if set(gadget_globals(gd.payload(ctx))) <= listed]
    assert only_listed == ["torch.storage._load_from_bytes"]


def test_every_scikit_learn_estimator_is_allow_listed() -> None:
    from sklearn.utils import all_estimators

    missing = [
        f"{cls.__module__}.{cls.__qualname__}"
        for _name, cls in all_estimators()
        if (cls.__module__, cls.__qualname__) not in BUILTIN_ALLOWLIST
    ]
    assert not missing, f"run tools/gen_allowlist.py and review: {missing}"


# -- real objects load under the allow-list alone --------------------------------------------


def _sklearn_models() -> dict[str, Callable[[], Any]]:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        HistGradientBoostingRegressor,
        IsolationForest,
        RandomForestClassifier,
    )
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.model_selection import GridSearchCV
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from sklearn.svm import SVC

    rng = np.random.RandomState(0)
    X, y = rng.rand(60, 4), rng.randint(0, 2, 60)
    frame = pd.DataFrame({"num": rng.rand(60), "cat": rng.choice(["a", "b"], 60)})
    return {
        "logistic": lambda: LogisticRegression().fit(X, y),
        "forest": lambda: RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y),
        "gbm": lambda: GradientBoostingClassifier(n_estimators=5).fit(X, y),
        "hgb": lambda: HistGradientBoostingRegressor(max_iter=5).fit(X, X[:, 0]),
        "iforest": lambda: IsolationForest(n_estimators=5, random_state=0).fit(X),
        "knn-balltree": lambda: KNeighborsClassifier(algorithm="ball_tree").fit(X, y),
        "sgd": lambda: SGDClassifier(loss="log_loss", random_state=0).fit(X, y),
        "svc-grid": lambda: GridSearchCV(SVC(), {"C": [1, 2]}, cv=2).fit(X, y),
        "pipeline": lambda: make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y),
        "column-transformer": lambda: make_pipeline(
            ColumnTransformer([("n", StandardScaler(), ["num"]), ("c", OneHotEncoder(), ["cat"])]),
            LogisticRegression(),
        ).fit(frame, y),
        "tfidf": lambda: TfidfVectorizer().fit(["alpha beta", "beta gamma delta"]),
    }


def _data_objects() -> dict[str, Callable[[], Any]]:
    return {
        "numpy": lambda: {
            "f": np.arange(10.0),
            "i": np.int32(3),
            "rec": np.zeros(2, dtype=[("a", "i4"), ("b", "f8")]),
            "dt": np.array(["2020-01-01"], dtype="datetime64[ns]"),
            "obj": np.array([1, "x", None], dtype=object),
            "masked": np.ma.masked_array([1, 2], mask=[0, 1]),
            "rng": np.random.RandomState(0),
            "gen": np.random.default_rng(0),
        },
        "pandas": lambda: {
            "frame": pd.DataFrame(
                {
                    "a": [1, 2],
                    "b": ["x", "y"],
                    "c": pd.Categorical(["u", "v"]),
                    "d": pd.to_datetime(["2020-01-01", "2020-01-02"]).tz_localize("Europe/Paris"),
                    "e": pd.array([1, None], dtype="Int64"),
                    "f": pd.array(["s", None], dtype="string"),
                }
            ).set_index("b"),
            "series": pd.Series([1.0, 2.0], index=pd.date_range("2020", periods=2)),
            "multi": pd.MultiIndex.from_product([[1, 2], ["a"]]),
            "scalars": [pd.Timestamp("2020"), pd.Timedelta(1), pd.NaT, pd.NA, pd.Period("2020-01")],
        },
        "scipy.sparse": lambda: (
            [sp.random(5, 5, 0.3, format=f, random_state=0) for f in ("csr", "csc", "coo")] + [sp.csr_array(np.eye(3))]
        ),
    }


def _framework_models() -> dict[str, Callable[[], Any]]:
    rng = np.random.RandomState(0)
    X, y = rng.rand(60, 4), rng.randint(0, 2, 60)
    out: dict[str, Callable[[], Any]] = {}
    if _installed("xgboost"):
        import xgboost

        out["xgboost"] = lambda: xgboost.XGBClassifier(n_estimators=3).fit(X, y)
    if _installed("lightgbm"):
        import lightgbm

        out["lightgbm"] = lambda: lightgbm.LGBMRegressor(n_estimators=3, verbose=-1).fit(X, X[:, 0])
    if _installed("catboost"):
        import catboost

        quiet = {"iterations": 3, "verbose": 0, "allow_writing_files": False}
        out["catboost"] = lambda: catboost.CatBoostClassifier(**quiet).fit(X, y)
    if _installed("statsmodels"):
        import statsmodels.api as sm

        out["statsmodels"] = lambda: sm.OLS(X[:, 0], sm.add_constant(X[:, 1:])).fit()
    if _installed("torch"):
        import torch

        out["torch"] = lambda: {
            "tensor": torch.arange(6.0).reshape(2, 3),
            "state": torch.nn.Linear(3, 2).state_dict(),
            "module": torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()),
        }
    return out


OBJECTS = {**_sklearn_models(), **_data_objects(), **_framework_models()}


@pytest.fixture(scope="module")
def plain_registries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ModelPersistence]]:
    """One key-less registry per pickle format, no trusted types."""
    root = tmp_path_factory.mktemp("allow")
    opened = {
        "joblib": ModelPersistence(root / "joblib"),
        "pickle": ModelPersistence(root / "pickle", serialization_format="pickle", compress=False),
        "native": ModelPersistence(root / "native", serialization_format="native", compress=False),
    }
    yield opened
    for p in opened.values():
        p.close()


@pytest.mark.parametrize("fmt", ["joblib", "pickle", "native"])
@pytest.mark.parametrize("name", list(OBJECTS))
def test_saved_objects_load_under_the_allow_list_alone(
    plain_registries: dict[str, ModelPersistence], caplog: pytest.LogCaptureFixture, name: str, fmt: str
) -> None:
    p = plain_registries[fmt]
    assert p.signing_key is None and not p.trusted_types
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = OBJECTS[name]()
    with caplog.at_level("WARNING", logger="modelkeep"):
        rec = p.save_version(obj, name.replace(".", "-"))
    assert not [r for r in caplog.records if "allow-list" in r.getMessage()], "no save-time warning expected"
    loaded = p.load(rec.model_name, rec.version)
    assert type(loaded) is type(obj)
    if hasattr(obj, "get_params"):
        assert loaded.get_params().keys() == obj.get_params().keys()


def test_a_real_torch_tensor_loads_and_its_nested_pickle_is_weights_only(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    tensor = torch.arange(4.0)
    assert torch.equal(restricted_loads(pickle.dumps(tensor)), tensor)
    gadget = next(gd for gd in GADGETS if gd.id == "torch.storage._load_from_bytes")
    ctx = Ctx(tmp_path / "g")
    ctx.setup()
    with pytest.raises(UnsafeModelError, match="weights-only"):
        restricted_loads(gadget.payload(ctx))
    assert not ctx.fired()


def test_trusted_types_admit_a_custom_class_for_every_pickle_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ._workers import Custom

    for fmt in ("joblib", "pickle", "native"):
        with ModelPersistence(tmp_path / fmt, serialization_format=fmt, compress=False) as p:
            p.save({"c": Custom(4)}, "custom", "1.0.0")
            assert p.load("custom", "1.0.0") == {"c": Custom(4)}  # the author's own key vouches for it
    # Another user holds no key that signed these versions: only the allow-list and trusted types apply.
    monkeypatch.setenv("MODELKEEP_CONFIG_DIR", str(tmp_path / "another-user"))
    for fmt in ("joblib", "pickle", "native"):
        with (
            ModelPersistence(tmp_path / fmt, serialization_format=fmt, compress=False) as p,
            pytest.raises(UnsafeModelError, match=r"tests\._workers\.Custom"),
        ):
            p.load("custom", "1.0.0")
        with ModelPersistence(tmp_path / fmt, serialization_format=fmt, trusted_types=["tests._workers.Custom"]) as p:
            assert p.load("custom", "1.0.0") == {"c": Custom(4)}


def test_a_signed_version_loads_its_recorded_custom_globals(tmp_path: Path) -> None:
    from ._workers import Custom

    with ModelPersistence(tmp_path / "m", signing_key="k") as p:
        p.save({"c": Custom(5)}, "custom", "1.0.0")
        assert p.load("custom", "1.0.0") == {"c": Custom(5)}


def test_the_policy_for_a_load_ignores_recorded_globals_unless_signed() -> None:
    extra = {"globals": ["os.system"]}
    assert TrustPolicy.for_load({"extra": extra}).source("os", "system") is None
    assert TrustPolicy.for_load({"extra": extra, "signed": True}).source("os", "system") == "signed"
    assert TrustPolicy.for_load({"trusted": ["os.system"]}).source("os", "system") == "trusted"
    data = io.BytesIO(pickle.dumps(np.arange(3)))
    assert TrustPolicy.for_load({}).source("numpy", "ndarray") == "builtin"
    assert list(restricted_loads(data.getvalue())) == [0, 1, 2]


def test_multiclass_gradient_boosting_loads_for_another_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Multiclass (Hist)GradientBoosting pickles its loss through Cython's generated
    ``__pyx_unpickle_CyHalfMultinomialLoss``: a reader without the author's key must still load
    them with no setting (the reconstructor only ``__new__``s its allow-listed class)."""
    from sklearn.datasets import load_iris
    from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier

    X, y = load_iris(return_X_y=True)
    models = {
        "gbc": GradientBoostingClassifier(n_estimators=5, random_state=0).fit(X, y),
        "hgb": HistGradientBoostingClassifier(max_iter=5, random_state=0).fit(X, y),
    }
    with ModelPersistence(tmp_path / "reg") as p:
        for name, model in models.items():
            p.save(model, name, "1.0.0")
    monkeypatch.setenv("MODELKEEP_CONFIG_DIR", str(tmp_path / "another-user"))
    with ModelPersistence(tmp_path / "reg", quarantine="never") as p:
        for name, model in models.items():
            assert p.signature_status(name, "1.0.0").status == "untrusted"
            loaded = p.load(name, "1.0.0")
            np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
