# ruff: noqa: F811  (the server fixture is imported from test_http_api and taken by name)
"""A pipeline's nested parameters are recorded flat (``step__param``), bounded, searchable,
comparable, and backfilled for versions saved before 0.2 (issue 23, "Searchable pipelines").

Every test saves real scikit-learn estimators into a real registry (SQLite and PostgreSQL
through the ``persistence`` fixture; the CLI tests use the embedded SQLite registry).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import StackingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import FeatureUnion, Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from modelkeep import FilterError, ModelPersistence, quarantine
from modelkeep.cli import cli
from modelkeep.errors import MetadataError, PermissionDeniedError
from modelkeep.layout import sidecar_bytes, sidecar_key
from modelkeep.metadata import to_json_safe
from modelkeep.params import MAX_KEYS, MAX_STRING, bounded, capture
from tests.test_http_api import server  # noqa: F401  (the fixture: a filled registry's server, in process)

C_VALUES = (0.01, 0.1, 1.0, 10.0)


def _pipeline(C: float) -> Pipeline:
    return Pipeline(
        [("standardscaler", StandardScaler()), ("logisticregression", LogisticRegression(C=C, max_iter=300))]
    )


def _save_pipelines(p: ModelPersistence, iris_data: Any, name: str = "pipe") -> list[str]:
    """One fitted pipeline per C in :data:`C_VALUES`; their versions, in order."""
    X, y = iris_data
    for C in C_VALUES:
        p.save(_pipeline(C).fit(X, y), name, accuracy=0.9 + C / 100)
    return p.list_versions(name)


def _found(p: ModelPersistence, text: str, **options: Any) -> list[str]:
    return [r.version for r in p.search_versions(text, **options).items]


# -- capture -----------------------------------------------------------------------------


def test_pipeline_params_are_flat_readable_and_searchable(persistence: ModelPersistence, iris_data: Any) -> None:
    versions = _save_pipelines(persistence, iris_data)
    params = persistence.get_version("pipe", versions[0]).metadata["model_params"]
    # the top level reads as the pipeline's shape, not as reprs of fitted estimators
    assert params["steps"] == [["standardscaler", "StandardScaler"], ["logisticregression", "LogisticRegression"]]
    assert params["logisticregression"] == "LogisticRegression"
    assert params["logisticregression__C"] == 0.01 and params["standardscaler__with_mean"] is True
    assert list(params)[:4] == ["memory", "steps", "transform_input", "verbose"]  # shallowest keys first
    json.dumps(params, allow_nan=False)
    assert "model_params_truncated" not in persistence.get_version("pipe", versions[0]).metadata

    assert _found(persistence, "params.logisticregression__C < 1") == versions[:2]
    assert (
        _found(persistence, "params.logisticregression__C >= 1 AND params.logisticregression = 'LogisticRegression'")
        == versions[2:]
    )
    assert (
        _found(persistence, "params.standardscaler__with_mean = TRUE", order_by="-params.logisticregression__C")
        == versions[::-1]
    )
    assert persistence.best_version("pipe", "params.logisticregression__C", mode="min").version == versions[0]


def test_compare_shows_the_parameters_that_differ(persistence: ModelPersistence, iris_data: Any) -> None:
    versions = _save_pipelines(persistence, iris_data)
    table = persistence.compare_versions("pipe")
    assert list(table["params.logisticregression__C"]) == list(C_VALUES)
    assert "params.standardscaler__with_mean" not in table.columns  # the same in every version
    assert not [c for c in table.columns if str(c).startswith("model_params")]

    every = persistence.compare_versions("pipe", versions[:2], params="all")
    assert list(every["params.standardscaler__with_mean"]) == [True, True]
    assert list(every["params.logisticregression__solver"]) == ["lbfgs", "lbfgs"]
    assert "params.steps" not in every.columns  # lists stay out of the table, as for metadata
    none = persistence.compare_versions("pipe", params="none")
    assert not [c for c in none.columns if str(c).startswith("params.")]
    with pytest.raises(FilterError, match="differing, all, none"):
        persistence.compare_versions("pipe", params="some")


def test_nested_estimators_get_their_own_keys(persistence: ModelPersistence) -> None:
    columns = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), [0, 1]),
            ("cat", OneHotEncoder(handle_unknown="ignore", dtype=np.float32), [2]),
        ]
    )
    model = make_pipeline(columns, LogisticRegression(C=0.3))
    persistence.save(model, "ct")
    stack = StackingClassifier(
        [("lr", LogisticRegression(C=2.0)), ("tree", DecisionTreeClassifier(max_depth=3))],
        final_estimator=LogisticRegression(C=5.0),
    )
    persistence.save(stack, "stack")

    params = persistence.get_version("ct").metadata["model_params"]
    assert params["columntransformer__transformers"] == [["num", "Pipeline", [0, 1]], ["cat", "OneHotEncoder", [2]]]
    assert params["columntransformer__num__simpleimputer__strategy"] == "median"
    assert params["columntransformer__num__simpleimputer__missing_values"] == "nan"  # NaN stays comparable
    assert params["columntransformer__cat__dtype"] == "numpy.float32"
    assert _found(persistence, "params.columntransformer__num__simpleimputer__strategy = 'median'") == ["1.0.0"]
    assert _found(
        persistence, "params.columntransformer__cat__handle_unknown = 'ignore' AND params.logisticregression__C < 0.5"
    ) == ["1.0.0"]

    stacked = persistence.get_version("stack").metadata["model_params"]
    assert stacked["estimators"] == [["lr", "LogisticRegression"], ["tree", "DecisionTreeClassifier"]]
    assert stacked["final_estimator"] == "LogisticRegression"
    assert (stacked["lr__C"], stacked["tree__max_depth"], stacked["final_estimator__C"]) == (2.0, 3, 5.0)
    hits = persistence.search_versions("params.tree__max_depth = 3 AND params.final_estimator__C > 1")
    assert [r.model_name for r in hits.items] == ["stack"]


def test_a_large_array_parameter_is_summarised_not_stored(persistence: ModelPersistence, tmp_path: Path) -> None:
    alphas = np.linspace(0.1, 1.0, 200_000)
    persistence.save(Ridge(alpha=alphas), "ridge")
    persistence.save(Ridge(alpha=np.array([0.5, 2.0])), "small")
    weights = np.random.default_rng(0).normal(size=(300, 300))
    persistence.save(make_pipeline(FunctionTransformer(np.multiply, kw_args={"x2": weights}), Ridge()), "fn")

    record = persistence.get_version("ridge")
    assert record.metadata["model_params"]["alpha"] == "ndarray(shape=(200000,), dtype=float64)"
    assert record.metadata["model_params_truncated"] == {"summarised": 1, "summarised_keys": ["alpha"]}
    assert len(json.dumps(record.to_dict())) < 5_000  # 1.6 MB of floats are not in the index
    sidecar = (tmp_path / "models" / sidecar_key("ridge", record.version)).read_bytes()
    assert len(sidecar) < 5_000
    assert persistence.get_version("small").metadata["model_params"]["alpha"] == [0.5, 2.0]  # small ones are kept

    fn = persistence.get_version("fn").metadata
    assert fn["model_params"]["functiontransformer__kw_args"] == {"x2": "ndarray(shape=(300, 300), dtype=float64)"}
    assert fn["model_params"]["functiontransformer__func"] == "numpy.multiply"
    assert fn["model_params_truncated"]["summarised_keys"] == ["functiontransformer__kw_args"]
    # what was summarised is itself searchable
    names = {r.model_name for r in persistence.search_versions("model_params_truncated.summarised > 0").items}
    assert names == {"ridge", "fn"}


def test_size_caps_on_a_real_registry(persistence: ModelPersistence) -> None:
    union = FeatureUnion([(f"s{i}", StandardScaler()) for i in range(300)])  # 1,204 parameters
    note = "x" * 10_000
    persistence.save(make_pipeline(FunctionTransformer(kw_args={"note": note}), Ridge()), "long")
    persistence.save(union, "wide")

    wide = persistence.get_version("wide").metadata
    raw = union.get_params(deep=True)
    assert len(raw) > MAX_KEYS and len(wide["model_params"]) == MAX_KEYS
    report = wide["model_params_truncated"]
    assert report["dropped"] == len(raw) - MAX_KEYS and len(report["dropped_keys"]) == 20
    assert report["limits"]["max_keys"] == MAX_KEYS
    # the shallow keys survive: the list of steps and every step's class
    assert wide["model_params"]["transformer_list"] == "list(len=300)"  # more items than MAX_ITEMS
    assert report["summarised_keys"] == ["transformer_list"]
    assert all(wide["model_params"][f"s{i}"] == "StandardScaler" for i in range(300))
    assert all("__" in key for key in report["dropped_keys"])

    long = persistence.get_version("long").metadata
    kept = long["model_params"]["functiontransformer__kw_args"]["note"]
    assert kept == "x" * MAX_STRING + "… (10000 chars)"
    assert long["model_params_truncated"] == {"shortened": 1, "shortened_keys": ["functiontransformer__kw_args"]}


def test_bounded_limits_each_kind_of_value() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "Opaque(" + "y" * 1000 + ")"

    class SymbolicShape:
        shape = (None, 3)  # e.g. a tensor spec: its size is unknown

    raw: dict[str, Any] = {
        "spec": SymbolicShape(),
        "k" * 300: 1,  # longer than a search key may be
        "nan": float("nan"),
        "inf": -float("inf"),
        "ints": np.int64(7),
        "big_list": list(range(1000)),
        "deep": [[[[[1]]]]],
        "opaque": Opaque(),
        "cls": LogisticRegression,
        "func": np.log1p,
        "set": {"b", "a"},
    }
    out = bounded(raw)
    params, report = out["model_params"], out["model_params_truncated"]
    assert "k" * 300 not in params and report["dropped_keys"] == ["k" * 300]
    assert params["nan"] == "nan" and params["inf"] == "-inf" and params["ints"] == 7
    assert params["big_list"] == "list(len=1000)"
    assert params["deep"] == [[[["list(len=1)"]]]]
    assert params["opaque"] == "Opaque"
    assert params["cls"] == "sklearn.linear_model._logistic.LogisticRegression"
    assert params["func"] == "numpy.log1p" and params["set"] == ["a", "b"]
    assert params["spec"] == "SymbolicShape"  # summarising it failed: the class name, and saving goes on
    assert report["summarised_keys"] == ["spec", "big_list", "deep", "opaque"]
    json.dumps(out, allow_nan=False)


def test_every_scikit_learn_estimator_is_recorded_whole() -> None:
    """No estimator scikit-learn ships hits a limit or yields a value JSON cannot hold."""
    import warnings

    from sklearn.utils import all_estimators

    checked = []
    for name, cls in all_estimators():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                estimator = cls()
        except TypeError:  # meta-estimators need their inner estimators (covered above)
            continue
        fields = capture(estimator)
        assert set(fields) == {"model_params"}, (name, fields.get("model_params_truncated"))
        assert set(fields["model_params"]) == set(estimator.get_params(deep=True)), name
        json.dumps(fields, allow_nan=False)
        checked.append(name)
    assert len(checked) > 150


# -- CLI ---------------------------------------------------------------------------------


def _cli(models: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--models-dir", str(models), *args])


def test_cli_search_and_compare_show_pipeline_params(tmp_path: Path, iris_data: Any) -> None:
    models = tmp_path / "models"
    with ModelPersistence(models_dir=models) as p:
        versions = _save_pipelines(p, iris_data)
    found = _cli(models, "search", "params.logisticregression__C < 1", "--json")
    assert found.exit_code == 0, found.output
    rows = json.loads(found.output)["items"]
    assert [(r["version"], r["params.logisticregression__C"]) for r in rows] == [
        (versions[0], 0.01),
        (versions[1], 0.1),
    ]

    table = _cli(models, "compare", "--model-name", "pipe", "--json")
    assert table.exit_code == 0, table.output
    assert [r["params.logisticregression__C"] for r in json.loads(table.output)] == list(C_VALUES)
    plain = _cli(models, "compare", "--model-name", "pipe")
    assert "params.logisticregression__C" in plain.output and "params.standardscaler__copy" not in plain.output
    picked = _cli(models, "compare", "--model-name", "pipe", "--metrics", "params.standardscaler__copy", "--json")
    assert picked.exit_code == 0, picked.output
    assert json.loads(picked.output)[0] == {"version": versions[0], "params.standardscaler__copy": True}
    every = _cli(models, "compare", "--model-name", "pipe", "--params", "all", "--json")
    assert "params.logisticregression__solver" in json.loads(every.output)[0]


# -- backfill ----------------------------------------------------------------------------


def _params_0_1(model: Any) -> dict[str, Any]:
    """What modelkeep 0.1 recorded: get_params(deep=False), nested estimators as one-line reprs."""
    out: dict[str, Any] = {}
    for key, value in model.get_params(deep=False).items():
        try:
            out[key] = to_json_safe(value, f"model_params.{key}")
        except MetadataError:
            out[key] = " ".join(repr(value).split())
    return out


def _rewrite_as_0_1(p: ModelPersistence, name: str, version: str, params: dict[str, Any]) -> None:
    """Give a stored version the record an 0.1 save wrote (sidecar and index row)."""
    record = p.get_version(name, version)
    metadata = {k: v for k, v in record.metadata.items() if k != "model_params_truncated"}
    old = replace(record, metadata={**metadata, "model_params": params})
    p.store.write_bytes(sidecar_key(name, version), sidecar_bytes(old))
    p.index.put(old)


def test_backfill_makes_old_pipeline_params_searchable(
    persistence: ModelPersistence, iris_data: Any, tmp_path: Path
) -> None:
    versions = _save_pipelines(persistence, iris_data)
    persistence.save(LogisticRegression(C=0.5), "flat")  # already complete: never loaded
    for v, C in zip(versions, C_VALUES, strict=True):
        _rewrite_as_0_1(persistence, "pipe", v, _params_0_1(_pipeline(C)))
    assert (
        persistence.get_version("pipe", versions[0])
        .metadata["model_params"]["steps"]
        .startswith("[('standardscaler', StandardScaler())")
    )
    with pytest.raises(FilterError, match="modelkeep backfill-params"):
        persistence.search_versions("params.logisticregression__C < 1")

    dry = persistence.backfill_params(dry_run=True)
    assert (dry.checked, dry.updated, dry.skipped) == (5, [("pipe", v) for v in versions], [])
    assert "steps" in persistence.get_version("pipe", versions[0]).metadata["model_params"]
    assert "logisticregression__C" not in persistence.get_version("pipe", versions[0]).metadata["model_params"]

    report = persistence.backfill_params()
    assert report.updated == [("pipe", v) for v in versions] and not report.skipped and not report.unchanged
    assert _found(persistence, "params.logisticregression__C < 1") == versions[:2]
    record = persistence.get_version("pipe", versions[0])
    assert record.metadata["model_params"]["steps"] == [
        ["standardscaler", "StandardScaler"],
        ["logisticregression", "LogisticRegression"],
    ]
    assert record.metadata["accuracy"] == pytest.approx(0.9001)  # the rest of the record is kept
    sidecar = json.loads((tmp_path / "models" / sidecar_key("pipe", versions[0])).read_bytes())
    assert sidecar["metadata"]["model_params"] == record.metadata["model_params"]  # reindex keeps it
    assert persistence.signature_status("pipe", versions[0]).trusted  # the signature covers the artifact only
    assert persistence.verify().ok
    assert [e.version for e in persistence.history("pipe", actions=("backfill_params",))] == versions

    again = persistence.backfill_params()
    assert (again.checked, again.updated, again.skipped, again.unchanged, again.given) == (5, [], [], [], [])


def test_backfill_loads_only_what_the_reader_trusts(
    persistence: ModelPersistence, index_target: Any, iris_data: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever can write the store dresses a payload up as an old pipeline, so that a
    backfill would unpickle it: backfill loads it as any load would, and refuses it."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.mkdir, (str(marker),))

    payload = pickle.dumps(Payload())
    code = "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"
    fired = subprocess.run([sys.executable, "-c", code], input=payload, check=False)
    assert fired.returncode == 0 and marker.is_dir()  # plain pickle runs it
    marker.rmdir()

    old_shape = {"memory": None, "steps": "[('clf', LogisticRegression())]", "verbose": False}
    with monkeypatch.context() as attacker_env:  # the attacker's own key, which the reader does not trust
        attacker_env.setenv("MODELKEEP_CONFIG_DIR", str(tmp_path / "attacker-config"))
        with index_target.persistence(tmp_path / "models") as attacker:
            attacker.save(Payload(), "evil", model_params=old_shape)
    assert not marker.exists()

    versions = _save_pipelines(persistence, iris_data)
    _rewrite_as_0_1(persistence, "pipe", versions[0], _params_0_1(_pipeline(C_VALUES[0])))
    _rewrite_as_0_1(persistence, "pipe", versions[1], _params_0_1(_pipeline(C_VALUES[1])))
    artifact = tmp_path / "models" / persistence.get_version("pipe", versions[1]).artifact.key  # type: ignore[union-attr]
    artifact.write_bytes(artifact.read_bytes()[:-8] + b"\0" * 8)  # the store was tampered with
    persistence.save(_pipeline(3.0), "hand", model_params={"steps": "Pipeline(...)"})  # given at save

    report = persistence.backfill_params()
    assert not marker.exists()
    assert report.updated == [("pipe", versions[0])]
    reasons = {(s.model_name, s.version): s.reason for s in report.skipped}
    assert set(reasons) == {("evil", "1.0.0"), ("pipe", versions[1])}
    assert report.given == [("hand", "1.0.0")]
    assert "posix.mkdir" in reasons[("evil", "1.0.0")]
    assert "integrity check failed" in reasons[("pipe", versions[1])]
    assert persistence.get_version("evil").metadata["model_params"] == old_shape  # left alone
    assert persistence.get_version("hand").metadata["model_params"] == {"steps": "Pipeline(...)"}


def test_cli_backfill_reports_and_exits_1_on_skips(tmp_path: Path, iris_data: Any) -> None:
    models = tmp_path / "models"
    with ModelPersistence(models_dir=models) as p:
        versions = _save_pipelines(p, iris_data)
        for v, C in zip(versions, C_VALUES, strict=True):
            _rewrite_as_0_1(p, "pipe", v, _params_0_1(_pipeline(C)))
        artifact = models / p.get_version("pipe", versions[1]).artifact.key  # type: ignore[union-attr]
    artifact.write_bytes(artifact.read_bytes()[:-8] + b"\0" * 8)

    missing = _cli(models, "search", "params.logisticregression__C < 1")
    assert missing.exit_code != 0 and "modelkeep backfill-params" in missing.output, missing.output
    dry = _cli(models, "backfill-params", "--dry-run", "--json")
    assert dry.exit_code == 1 and json.loads(dry.output)["updated"] == [
        ["pipe", v] for v in versions if v != versions[1]
    ]
    done = _cli(models, "backfill-params")
    assert done.exit_code == 1
    assert f"recorded pipe {versions[0]}" in done.output and f"skipped pipe {versions[1]}" in done.output
    found = _cli(models, "search", "params.logisticregression__C < 1", "--json")
    assert found.exit_code == 0, found.output


def test_backfill_of_a_0_1_registry_loads_nothing_it_does_not_need(tmp_path: Path) -> None:
    import shutil

    store = tmp_path / "registry_0_1"
    shutil.copytree(Path(__file__).resolve().parent / "data" / "registry_0_1", store)
    before = {p: p.read_bytes() for p in store.rglob("*_metadata.json")}
    with ModelPersistence(models_dir=store) as p:
        report = p.backfill_params()
        assert (report.checked, report.updated, report.skipped, report.unchanged) == (7, [], [], [])
        assert p.get_version("churn", "1.0.0").metadata["model_params"]["C"] == 1.0  # flat params were complete
    assert {p: p.read_bytes() for p in store.rglob("*_metadata.json")} == before


def test_backfill_of_pipelines_saved_by_0_1(index_target: Any, tmp_path: Path, iris_data: Any) -> None:
    """Artifacts and sidecars written by modelkeep 0.1 (tests/data/make_pipelines_0_1.py), indexed by reindex."""
    import shutil

    store = tmp_path / "models"
    shutil.copytree(Path(__file__).resolve().parent / "data" / "pipelines_0_1", store)
    # The unsigned old versions are loaded through the quarantine child on SQLite, and on PostgreSQL
    # in this process only (the index backend plays no part in loading them; a child costs seconds).
    on_postgres = index_target.kind == "postgresql"
    children = quarantine.children_started()
    with index_target.persistence(store, quarantine="never" if on_postgres else "auto") as p:
        assert p.reindex() == 4
        steps = p.get_version("pipe", "1.0.0").metadata["model_params"]["steps"]
        assert (
            steps
            == "[('standardscaler', StandardScaler()), ('logisticregression', LogisticRegression(C=0.1, max_iter=300))]"
        )
        with pytest.raises(FilterError, match="backfill-params"):
            p.search_versions("params.logisticregression__C < 1")

        report = p.backfill_params()
        assert report.updated == [("ct", "1.0.0"), ("pipe", "1.0.0"), ("pipe", "1.0.1"), ("pipe", "1.0.2")]
        assert _found(p, "params.logisticregression__C < 1") == ["1.0.0", "1.0.1"]
        assert _found(p, "params.columntransformer__num__simpleimputer__strategy = 'median'") == ["1.0.0"]
        assert list(p.compare_versions("pipe")["params.logisticregression__C"]) == [0.1, 0.5, 2.0]
        X, _ = iris_data
        assert p.load("pipe", "1.0.2").predict(X[:5]).shape == (5,)  # the artifacts are untouched
        assert p.verify().ok
    assert (quarantine.children_started() > children) is not on_postgres


# -- backfill through a registry server ---------------------------------------------------


def _old_pipelines_on(server: Any, iris_data: Any) -> list[str]:
    """Four pipelines on the server's registry, with the records modelkeep 0.1 wrote."""
    with server.direct() as direct:
        versions = _save_pipelines(direct, iris_data)
        for v, C in zip(versions, C_VALUES, strict=True):
            _rewrite_as_0_1(direct, "pipe", v, _params_0_1(_pipeline(C)))
    return versions


def test_backfill_through_a_server_loads_on_the_client_and_records_on_the_server(server: Any, iris_data: Any) -> None:
    """``backfill-params`` against a server: the client loads each old version (its own keys and
    allow-list), the server records what it captured, as the admin who asked."""
    versions = _old_pipelines_on(server, iris_data)
    for role in ("viewer", "writer", "maintainer"):
        with server.client(server.add_user(f"{role}-user", role)) as p, pytest.raises(PermissionDeniedError):
            p.backfill_params()
    with server.client() as p:
        dry = p.backfill_params(dry_run=True)
        assert dry.updated == [("pipe", v) for v in versions] and not dry.skipped
        assert "logisticregression__C" not in p.get_version("pipe", versions[0]).metadata["model_params"]
        report = p.backfill_params()
        assert report.updated == [("pipe", v) for v in versions] and not report.skipped
        assert _found(p, "params.logisticregression__C < 1") == versions[:2]
        again = p.backfill_params()
        assert (again.updated, again.skipped) == ([], [])
    with server.direct() as direct:
        rows = direct.history("pipe", actions=("backfill_params",))
        assert [(e.version, e.actor) for e in rows] == [(v, "admin") for v in versions]
        assert direct.get_version("pipe", versions[0]).metadata["accuracy"] == pytest.approx(0.9001)
        assert direct.verify().ok


def test_cli_backfill_through_a_server(server: Any, iris_data: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    versions = _old_pipelines_on(server, iris_data)
    monkeypatch.setenv("MODELKEEP_REGISTRY_URL", server.url)
    monkeypatch.setenv("MODELKEEP_TOKEN", server.token)
    done = CliRunner().invoke(cli, ["backfill-params"])
    assert done.exit_code == 0, done.output
    assert f"recorded pipe {versions[0]}" in done.output
    found = CliRunner().invoke(cli, ["search", "params.logisticregression__C < 1", "--json"])
    assert found.exit_code == 0, found.output
    assert [r["version"] for r in json.loads(found.output)["items"]] == versions[:2]


def _post_backfill(server: Any, body: dict[str, Any]) -> Any:
    import httpx

    from modelkeep.api.wire import API_PREFIX

    headers = {"Authorization": f"Bearer {server.token}"}
    return httpx.post(server.url + API_PREFIX + "/admin/backfill-params", json=body, headers=headers, timeout=30)


def test_a_backfill_request_takes_only_what_a_backfill_could_produce(server: Any, iris_data: Any) -> None:
    """Sent as raw HTTP, even by an admin: the route is no back door for rewriting a record. It
    refuses other fields, parameters that drop a name recorded before, a version whose record
    changed since the client read it, and one whose parameters are not in the 0.1 shape."""
    versions = _old_pipelines_on(server, iris_data)
    with server.direct() as direct:
        record = direct.get_version("pipe", versions[0])
        flat = direct.save_version(LogisticRegression(C=2.0), "flat")
        flat_record = direct.get_version("flat", flat.version)
    expect = json.loads(json.dumps(record.to_dict()))
    deep = capture(_pipeline(C_VALUES[0]))
    base = {"model_name": "pipe", "version": versions[0], "expect": expect}
    refused = {
        "another field": {**base, "fields": {**deep, "accuracy": 1.0}},
        "a name dropped": {**base, "fields": {"model_params": {"logisticregression__C": 0.01}}},
        "not an object": {**base, "fields": {"model_params": "[('clf', Evil())]"}},
        "changed since read": {**base, "fields": deep, "expect": {**expect, "metadata": {}}},
        "not the 0.1 shape": {
            "model_name": "flat",
            "version": flat.version,
            "fields": capture(LogisticRegression(C=3.0)),
            "expect": json.loads(json.dumps(flat_record.to_dict())),
        },
    }
    for why, body in refused.items():
        answer = _post_backfill(server, body)
        assert answer.status_code in (400, 409), (why, answer.text)
        expected = "VersionExistsError" if why == "changed since read" else "MetadataError"
        assert answer.json()["error"]["class"] == expected, (why, answer.text)
    with server.direct() as direct:
        assert direct.get_version("pipe", versions[0]).to_dict() == record.to_dict()
        assert direct.get_version("flat", flat.version).to_dict() == flat_record.to_dict()
        assert not direct.history("pipe", actions=("backfill_params",))
    answer = _post_backfill(server, {**base, "fields": deep})
    assert answer.status_code == 200, answer.text
    with server.direct() as direct:
        assert direct.get_version("pipe", versions[0]).metadata["model_params"]["logisticregression__C"] == 0.01
