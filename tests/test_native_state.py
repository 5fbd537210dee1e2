"""Native state is checked before native code sees it (issue 22).

Written as an attacker who can write the store and the index: each test plants an unsigned,
crafted model with the real globals of an allow-listed native type and state that makes its
Cython/C++ code read or write out of bounds. The crashing part always runs in a child process
(tests/_native_fuzz.py) under a memory cap, so a segfault fails the test, not the run.
"""

from __future__ import annotations

import copyreg
import functools
import gzip
import io
import os
import pickle
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelkeep import ModelPersistence, quarantine
from modelkeep.errors import UnsafeModelError
from modelkeep.formats import state_checks

from ._native_fuzz import (
    Reduced,
    binary_tree,
    binary_tree_payload,
    data,
    kdtree_attack,
    tree_attack,
    tree_model,
)
from .conftest import IndexTarget
from .test_tampering import forge_record

ROOT = Path(__file__).resolve().parents[1]


def _child(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-m", "tests._native_fuzz", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _plant(p: ModelPersistence, payload: bytes) -> None:
    """An unsigned version 'victim' 1.0.0 whose artifact is ``payload`` (a plain pickle, which
    the joblib and pickle formats both read), recorded as the honest save would record it."""
    p.save({"weights": [1.0, 2.0]}, "victim", "1.0.0")
    art = p.get_version("victim", "1.0.0").artifact
    assert art is not None
    codec = (art.compression or "").split(":")[0]
    if codec == "zstd":
        import zstandard

        payload = zstandard.ZstdCompressor(level=1).compress(payload)
    elif codec == "gzip":
        payload = gzip.compress(payload)
    elif codec:
        pytest.fail(f"no planting for compression {art.compression}")
    forge_record(p, "victim", "1.0.0", payload, globals=[], blobs=[])


# -- the attacks are real ------------------------------------------------------------------------


@pytest.mark.parametrize("attack", ["tree", "kdtree"])
def test_plain_load_and_predict_of_the_crafted_model_crashes(attack: str) -> None:
    result = _child("attack", attack)
    assert "LOADED" in result.stdout  # plain pickle / joblib.load accepts it without a word
    assert result.returncode < 0, (result.returncode, result.stdout, result.stderr[-2000:])
    assert -result.returncode in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT)
    assert "SURVIVED" not in result.stdout


def test_modelkeep_refuses_the_planted_decision_tree(persistence: ModelPersistence) -> None:
    payload, _ = tree_attack()
    _plant(persistence, payload)
    with pytest.raises(UnsafeModelError, match=r"Tree node 0 has left child 1000000000 outside 1\.\.\d+"):
        persistence.load("victim", "1.0.0")


def test_modelkeep_refuses_the_planted_knn_with_a_kdtree_pointing_outside_its_data(
    persistence: ModelPersistence,
) -> None:
    payload, _ = kdtree_attack()
    _plant(persistence, payload)
    with pytest.raises(
        UnsafeModelError, match=r"KDTree\w* idx_array\[0\] is 1000000000, outside the data rows 0\.\.199"
    ):
        persistence.load("victim", "1.0.0")


# -- one crafted payload per native type ---------------------------------------------------------


def _balltree_with_short_node_range() -> bytes:
    tree, _ = binary_tree("ball")
    state = list(tree.__getstate__())
    state[2] = state[2].copy()
    state[2]["idx_end"][0] = 10**6
    return binary_tree_payload(tree, tuple(state))


def _seuclidean_with_short_vector() -> bytes:
    from sklearn.metrics import DistanceMetric

    tree, _ = binary_tree("ball", "seuclidean", V=np.ones(4))
    state = list(tree.__getstate__())
    state[11] = DistanceMetric.get_metric("seuclidean", V=np.ones(2))
    return binary_tree_payload(tree, tuple(state))


def _mahalanobis_not_square() -> bytes:
    from sklearn.metrics import DistanceMetric

    metric = DistanceMetric.get_metric("mahalanobis", VI=np.eye(4))
    func, args, (p, vec, _) = metric.__reduce__()
    return pickle.dumps(Reduced(func, args, (p, vec, np.ones((4, 2)))))


def _hist_gradient_boosting_bad_child() -> bytes:
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor

    x, y = data(100)
    model = HistGradientBoostingRegressor(max_iter=3).fit(x, y)
    predictor = model._predictors[0][0]
    assert isinstance(predictor, TreePredictor)  # pure Python: it takes any nodes array as is
    predictor.nodes = predictor.nodes.copy()
    predictor.nodes["left"][0] = 50_000
    return pickle.dumps(model)


def _svc_inconsistent_support() -> bytes:
    from sklearn.svm import SVC

    x, y = data(60)
    model = SVC().fit(x, y)
    model._n_support = model._n_support * 3  # libsvm walks 3x the support vectors there are
    return pickle.dumps(model)


def _csr_out_of_range() -> bytes:
    import scipy.sparse as sp

    matrix = sp.random(20, 10, density=0.3, format="csr", random_state=0)
    matrix.indices[3] = 10**7
    return pickle.dumps(matrix)


def _tree_feature_past_the_input() -> bytes:
    """A decision tree whose n_features_in_ says 2 but whose tree splits on column 3."""
    model, _ = tree_model()
    model.n_features_in_ = 2
    return pickle.dumps(model)


def _isolation_forest_wide_subset() -> bytes:
    """Each tree of an isolation forest reads the columns estimators_features_[i] of the input;
    a list longer than the input has columns makes the tree read past the row."""
    from sklearn.ensemble import IsolationForest

    x, _ = data(100)
    model = IsolationForest(n_estimators=3, random_state=0).fit(x)
    model.estimators_features_[0] = np.arange(9)
    return pickle.dumps(model)


def _dumps_with(obj: Any, cls: type, change: Any) -> bytes:
    """``obj`` pickled with every ``cls`` instance's ``__reduce__`` state passed through ``change``:
    the real globals and constructor arguments, the attacker's state."""
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=4)

    def reduce(item: Any) -> Any:
        func, args, state = item.__reduce__()[:3]
        return func, args, change(dict(state))

    pickler.dispatch_table = {**copyreg.dispatch_table, cls: reduce}
    pickler.dump(obj)
    return buf.getvalue()


@functools.cache
def _arima() -> Any:
    import warnings

    import statsmodels.api as sm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sm.tsa.arima.ARIMA(np.random.RandomState(0).rand(40), order=(1, 0, 0)).fit()


def _kalman_filter_short_array() -> bytes:
    from statsmodels.tsa.statespace._kalman_filter import dKalmanFilter

    def change(state: dict[str, Any]) -> dict[str, Any]:
        state["predicted_state"] = np.zeros((1, 2), order="F")  # the recursions write nobs + 1 columns
        return state

    return _dumps_with(_arima(), dKalmanFilter, change)


def _kalman_filter_time_past_the_end() -> bytes:
    from statsmodels.tsa.statespace._kalman_filter import dKalmanFilter

    def change(state: dict[str, Any]) -> dict[str, Any]:
        state["t"] = 10**6
        return state

    return _dumps_with(_arima(), dKalmanFilter, change)


def _kmeans_narrow_centers() -> bytes:
    """KMeans.predict checks the input against n_features_in_, then the Lloyd kernel reads that
    many entries of each center."""
    from sklearn.cluster import KMeans

    x, _ = data(60)
    model = KMeans(3, n_init=1, random_state=0).fit(x)
    model.cluster_centers_ = np.ascontiguousarray(model.cluster_centers_[:, :1])
    return pickle.dumps(model)


def _spline_short_coefficients() -> bytes:
    """A SplineTransformer whose BSpline has fewer coefficients than basis functions (its
    constructor would refuse it; unpickling skips the constructor)."""
    from sklearn.preprocessing import SplineTransformer

    x, _ = data(60)
    model = SplineTransformer().fit(x)
    model.bsplines_[0]._c = model.bsplines_[0]._c[:2].copy()
    return pickle.dumps(model)


CRAFTED = {
    "balltree": (
        _balltree_with_short_node_range,
        r"BallTree\w* node 0 covers idx_array\[0:1000000\], outside 0\.\.200",
    ),
    "seuclidean": (_seuclidean_with_short_vector, r"BallTree\w* dist_metric does not fit its 4-feature data"),
    "mahalanobis": (_mahalanobis_not_square, r"MahalanobisDistance64 mat has shape \(4, 2\), expected a square"),
    "hgb": (_hist_gradient_boosting_bad_child, r"TreePredictor node 0 has left child 50000 outside 1\.\.\d+"),
    "svc": (_svc_inconsistent_support, r"SVC _n_support \[.*\] does not add up to its \d+ support vectors"),
    "csr": (_csr_out_of_range, r"csr_matrix indices\[\d+\] is 10000000, outside 0\.\.9"),
    "kmeans": (_kmeans_narrow_centers, r"KMeans cluster_centers_ has shape \(3, 1\), expected \(n_clusters, 4\)"),
    "bspline": (_spline_short_coefficients, r"BSpline has coefficients of shape \(2, \d+\) for \d+ basis functions"),
    "iforest": (_isolation_forest_wide_subset, r"IsolationForest estimators_features_\[0\] is not a set of columns"),
    "kalman-array": (
        _kalman_filter_short_array,
        r"dKalmanFilter predicted_state is float64 \(1, 2\), expected float64",
    ),
    "kalman-time": (_kalman_filter_time_past_the_end, r"dKalmanFilter t is 1000000, outside 0\.\.40"),
    "tree-width": (
        _tree_feature_past_the_input,
        r"DecisionTreeClassifier takes 2 features but its tree_ was built for 4",
    ),
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_modelkeep_refuses_crafted_native_state(
    persistence: ModelPersistence, index_target: IndexTarget, name: str
) -> None:
    """Each crafted payload is refused, naming the problem: on SQLite by the default load, in the
    quarantine child (an unsigned version), and on PostgreSQL by the check in this process, with
    the quarantine off (the same check the child runs; the index backend plays no part in it, and
    a quarantine child costs seconds per load). Every payload goes through both paths."""
    if index_target.kind == "postgresql":
        persistence.quarantine = "never"
    make, message = CRAFTED[name]
    _plant(persistence, make())
    children = quarantine.children_started()
    with pytest.raises(UnsafeModelError, match=message):
        persistence.load("victim", "1.0.0")
    assert quarantine.children_started() - children == (index_target.kind == "sqlite")


@pytest.mark.parametrize("fmt", ["pickle", "native"])
def test_every_pickling_format_checks_the_state(tmp_path: Path, fmt: str) -> None:
    with ModelPersistence(tmp_path / "models", serialization_format=fmt) as p:
        _plant(p, tree_attack()[0])
        with pytest.raises(UnsafeModelError, match="Tree node 0 has left child"):
            p.load("victim", "1.0.0")


def test_a_tree_constructor_with_fewer_class_counts_than_outputs_is_refused() -> None:
    from sklearn.tree._tree import Tree

    # Tree.__cinit__ copies n_classes[k] for every k < n_outputs, unchecked
    with pytest.raises(UnsafeModelError, match="Tree n_classes has 1 entries for 50 outputs"):
        state_checks.check_call(Tree, (4, np.array([2]), 50))
    state_checks.check_call(Tree, (4, np.array([2, 3]), 2))  # an honest call passes


def _rebuilt_after_its_check() -> bytes:
    """A csr_matrix that is valid at its own BUILD, whose indices array is then rebuilt (a second
    BUILD on the memoized ndarray) with an index far past the columns."""
    import pickletools

    import scipy.sparse as sp

    matrix = sp.random(20, 10, density=0.3, format="csr", random_state=0)
    honest = pickle.dumps([matrix], protocol=2)
    memo = None
    for op, arg, _ in pickletools.genops(honest):  # the memo slot of the indices array
        if op.name == "BINPUT" and memo is None and _is_indices_slot(honest, arg, matrix):
            memo = arg
    assert memo is not None
    bad = matrix.indices.copy()
    bad[0] = 10**7
    state = pickle.dumps(bad.__reduce__()[2], protocol=2)[2:-1]
    return honest[:-1] + b"h" + bytes([memo]) + state + b"b0."


def _is_indices_slot(honest: bytes, slot: int, matrix: Any) -> bool:
    probe = honest[:-1] + b"0h" + bytes([slot]) + b"."
    try:
        value = pickle.loads(probe)
    except Exception:
        return False
    return isinstance(value, np.ndarray) and np.array_equal(value, matrix.indices)


def test_an_array_rebuilt_after_its_holder_was_checked_is_refused(persistence: ModelPersistence) -> None:
    payload = _rebuilt_after_its_check()
    assert pickle.loads(payload)[0].indices[0] == 10**7  # plain pickle ends with the bad index
    _plant(persistence, payload)
    with pytest.raises(UnsafeModelError, match=r"rebuilds an array of shape \(\d+,\) that was already built"):
        persistence.load("victim", "1.0.0")


def test_skops_loads_get_the_same_checks(tmp_path: Path) -> None:
    """skops rebuilds a Tree from the arrays in its zip without modelkeep's unpicklers."""
    import skops.io
    from sklearn.tree import DecisionTreeClassifier

    model, _ = tree_model()
    honest = skops.io.dumps(model)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(honest)) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            raw = src.read(item.filename)
            if item.filename.endswith(".npy"):
                array = np.load(io.BytesIO(raw), allow_pickle=False)
                if array.dtype.names and "left_child" in array.dtype.names:
                    array = array.copy()
                    array["left_child"][0] = 10**9
                    buf = io.BytesIO()
                    np.save(buf, array, allow_pickle=False)
                    raw = buf.getvalue()
            dst.writestr(item, raw)
    trusted = ["sklearn.tree._tree.Tree"]  # skops asks the user to trust Tree by name
    with ModelPersistence(tmp_path / "models", serialization_format="skops", trusted_types=trusted) as p:
        p.save(DecisionTreeClassifier().fit(*data(20)), "victim", "1.0.0")
        forge_record(p, "victim", "1.0.0", out.getvalue())
        with pytest.raises(UnsafeModelError, match="Tree node 0 has left child 1000000000"):
            p.load("victim", "1.0.0")


def test_a_python_distance_function_from_the_builtin_list_is_not_called() -> None:
    from sklearn.feature_selection import f_classif
    from sklearn.metrics._dist_metrics import PyFuncDistance64

    state = (2.0, np.zeros(1), np.zeros((1, 1)), f_classif, {})
    with pytest.raises(UnsafeModelError, match="f_classif as a distance function"):
        state_checks.check_build(PyFuncDistance64.__new__(PyFuncDistance64), state)


def test_gradient_boosting_whose_init_predicts_fewer_columns_than_trees_per_stage_is_refused(tmp_path: Path) -> None:
    """predict_stages adds tree k of each stage into column k of the init predictions, unchecked."""
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import GradientBoostingClassifier

    x, _ = data(90)
    y = np.arange(90) % 3
    model = GradientBoostingClassifier(n_estimators=3).fit(x, y)
    model.init_ = DummyClassifier().fit(x, y % 2)  # two columns for three trees per stage
    # multiclass gradient boosting pickles its loss through this Cython helper, which the
    # built-in list does not hold yet: trusted here to reach the check
    trusted = ["sklearn._loss._loss.__pyx_unpickle_CyHalfMultinomialLoss"]
    with ModelPersistence(tmp_path / "models", trusted_types=trusted) as p:
        _plant(p, pickle.dumps(model))
        with pytest.raises(UnsafeModelError, match=r"init_ predicts \[2\] columns, not one per each of 3 classes"):
            p.load("victim", "1.0.0")


def test_a_python_distance_function_the_user_trusts_is_used(tmp_path: Path) -> None:
    from sklearn.neighbors import BallTree

    from ._native_fuzz import manhattan

    x, _ = data(50)
    tree = BallTree(x, metric=manhattan)
    trusted = ["tests._native_fuzz.manhattan"]
    with ModelPersistence(tmp_path / "models", trusted_types=trusted) as p:
        p.save(tree, "tree", "1.0.0")
        loaded = p.load("tree", "1.0.0")
    np.testing.assert_array_equal(loaded.query(x[:5], k=2)[1], tree.query(x[:5], k=2)[1])


def test_the_final_pass_is_cycle_safe_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import scipy.sparse as sp

    bad = pickle.loads(_csr_out_of_range())
    graph: list[Any] = [{"deep": [bad]}]
    graph.append(graph)  # a cycle
    with pytest.raises(UnsafeModelError, match="csr_matrix indices"):
        state_checks.check_loaded(graph)
    state_checks.check_loaded([sp.eye(3, format="csr"), graph[:0]])  # honest: passes
    monkeypatch.setattr(state_checks, "MAX_LOADED_OBJECTS", 100)
    with pytest.raises(UnsafeModelError, match="more than 100 objects"):
        state_checks.check_loaded([[i] for i in range(200)])


# -- honest models are untouched -----------------------------------------------------------------


def test_honest_native_models_round_trip_through_the_checks(local_persistence: ModelPersistence) -> None:
    import scipy.sparse as sp
    from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC

    x, y = data(120)
    models = {
        "forest": RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y),
        "gb": GradientBoostingClassifier(n_estimators=3).fit(x, y % 2),
        "hgb": HistGradientBoostingClassifier(max_iter=3).fit(x, y),
        "knn-ball": KNeighborsClassifier(
            algorithm="ball_tree", metric="mahalanobis", metric_params={"VI": np.eye(4)}
        ).fit(x, y),
        "svc-sparse": SVC(probability=False).fit(sp.csr_matrix(x), y),
        "sparse": sp.random(30, 8, density=0.2, format="csr", random_state=0),
    }
    for name, model in models.items():
        local_persistence.save(model, name, "1.0.0")
        loaded = local_persistence.load(name, "1.0.0")
        if hasattr(model, "predict"):
            np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
        else:
            assert (loaded != model).nnz == 0


# -- fuzzing: random mutations of honest states, loaded and used in child processes -------------


FUZZED = ["tree", "kdtree", "balltree", "metric", "hgb", "svc"]


def test_fuzzed_native_state_is_refused_or_harmless() -> None:
    """Seeded random mutations of honest states (indices out of range, shapes, dtypes, metric
    parameters), each loaded through modelkeep and then used (predict, query, pairwise...), all in
    one child process: a crash fails the test, naming the case that caused it."""
    seed, count = 22, 200
    result = _child("modelkeep", ",".join(FUZZED), str(seed), str(count), timeout=300)
    cases = [line for line in result.stdout.splitlines() if line.startswith("CASE")]
    last = cases[-1] if cases else "(none)"
    assert result.returncode == 0, f"the child died ({result.returncode}) on {last}: {result.stderr[-2000:]}"
    done = {line.split()[1]: line for line in result.stdout.splitlines() if line.startswith("DONE")}
    assert sorted(done) == sorted(FUZZED) and len(cases) == count * len(FUZZED)
    for line in done.values():
        refused = int(line.split("refused=")[1].split()[0])
        assert refused > count // 4, line  # many mutations are unsafe and refused


@pytest.mark.parametrize("kind", ["tree", "hgb"])
def test_the_fuzzer_finds_crashes_without_the_checks(kind: str) -> None:
    """The same mutations, loaded with plain pickle, crash a child: the fuzz test is not vacuous."""
    result = _child("plain", kind, "22", "200")
    assert result.returncode < 0, result.stdout[-2000:]


def test_mapped_index_arrays_are_private_so_a_later_write_cannot_move_them(tmp_path: Path) -> None:
    """With ``mmap_mode``, float arrays stay mapped to the store file, but integer arrays (a
    KD-tree's ``idx_array``, which its Cython query trusts as row indices) are copied into
    private memory before the state checks: a process that rewrites the artifact after the load
    changes neither the indices nor the answers, and cannot push ``query`` out of bounds."""
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.RandomState(0)
    X, y = rng.rand(20_000, 4), rng.randint(0, 3, 20_000)
    model = KNeighborsClassifier(algorithm="kd_tree").fit(X, y)
    with ModelPersistence(tmp_path / "reg", compress=False) as p:
        p.save(model, "knn", "1.0.0")
        loaded = p.load("knn", "1.0.0", mmap_mode="r")
        path = p.store.local_path(p.get_version("knn", "1.0.0").artifact.key)
    data, idx_array, _node_data, _bounds = loaded._tree.get_arrays()
    assert isinstance(np.asarray(data).base, np.memmap) or isinstance(data, np.memmap)  # floats stay mapped
    idx = np.asarray(idx_array)
    assert not isinstance(idx, np.memmap) and not isinstance(idx.base, np.memmap)
    expected = loaded.predict(X[:50])
    # Rewrite every aligned int64 equal to a row index with a huge value, in place in the file.
    raw = bytearray(Path(path).read_bytes())
    needle = np.ascontiguousarray(model._tree.get_arrays()[1]).tobytes()
    at = bytes(raw).find(needle)
    assert at > 0
    raw[at : at + len(needle)] = np.full(len(needle) // 8, 10**12, dtype=np.int64).tobytes()
    with open(path, "r+b") as f:
        f.write(raw)
    np.testing.assert_array_equal(loaded.predict(X[:50]), expected)
