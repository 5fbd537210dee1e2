"""Shared fixtures: every index test runs on SQLite and on PostgreSQL.

PostgreSQL is used when ``MODELKEEP_TEST_POSTGRES_URL`` is set (``.ci/run``
sets it), or else when the machine's own server answers on 127.0.0.1:5432.
Each test gets a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelkeep import ModelPersistence

pytest_plugins = ["tests.s3_server", "tests._http_server"]

LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/test"


def _local_postgres() -> str | None:
    """The machine's own PostgreSQL (trust auth, database ``test``), if one answers."""
    try:
        import psycopg

        with psycopg.connect(LOCAL_PG, connect_timeout=2):
            return LOCAL_PG
    except Exception:
        return None


# Set once here, before the test modules read it, so that a plain `pytest` on a machine with
# PostgreSQL running exercises the PostgreSQL backend as well (subprocess workers inherit it).
if "MODELKEEP_TEST_POSTGRES_URL" not in os.environ and (_found := _local_postgres()):
    os.environ["MODELKEEP_TEST_POSTGRES_URL"] = _found
PG_URL = os.environ.get("MODELKEEP_TEST_POSTGRES_URL")

#: The seed README's config.yaml, as written there.
SEED_CONFIG = """\
logging:
  level: INFO
  file: logs/app.log

persistence:
  models_dir: models
  registry_path: null
  serialization_format: joblib
  compress: true
"""


#: Settings that would change what every test signs and trusts, if the developer's shell has them.
KEY_VARIABLES = (
    "MODELKEEP_SIGNING_KEY",
    "MODELKEEP_SIGNING_KEY_FILE",
    "MODELKEEP_TRUSTED_KEYS",
    "MODELKEEP_REQUIRE_SIGNATURES",
)


def _private_settings(mp: pytest.MonkeyPatch, folder: Path) -> None:
    mp.setenv("MODELKEEP_CONFIG_DIR", str(folder))
    mp.setenv("MODELKEEP_CACHE_DIR", str(folder.parent / "cache"))  # never the real ~/.cache
    for name in KEY_VARIABLES:
        mp.delenv(name, raising=False)


@pytest.fixture(scope="session", autouse=True)
def session_config_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The config folder module- and session-scoped fixtures see (they are set up before a
    test's :func:`private_config_dir`): the session's own, never the real home."""
    folder = tmp_path_factory.mktemp("session-config") / "modelkeep"
    with pytest.MonkeyPatch.context() as mp:
        _private_settings(mp, folder)
        yield folder


@pytest.fixture(autouse=True)
def private_config_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Each test gets its own per-user config folder (and so its own per-user signing key),
    never the real home; subprocess workers inherit it through the environment.

    Set with a MonkeyPatch of its own, so that a test calling ``monkeypatch.undo()`` to remove
    its hooks keeps this folder (it fell back to the real home: keys and caches written there,
    and every later load quarantined in a child process as signed by an untrusted key)."""
    folder = tmp_path_factory.mktemp("config") / "modelkeep"
    with pytest.MonkeyPatch.context() as mp:
        _private_settings(mp, folder)
        yield folder


@dataclass
class IndexTarget:
    """Where a test's index lives: a URL plus, for PostgreSQL, a private schema."""

    kind: str
    url: str
    schema: str | None = None

    def persistence(self, models_dir: Path, **kwargs: object) -> ModelPersistence:
        """A registry on this index, created empty if it does not exist yet (opening alone creates nothing)."""
        p = ModelPersistence(models_dir=models_dir, registry_url=self.url, index_schema=self.schema, **kwargs)  # type: ignore[arg-type]
        p.ensure_registry()
        return p


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A new, empty PostgreSQL schema on :data:`PG_URL`, dropped with everything in it afterwards.

    The one place tests create and drop schemas; skips the test when no PostgreSQL is configured.
    """
    if not PG_URL:
        pytest.skip("MODELKEEP_TEST_POSTGRES_URL is not set (.ci/run sets it)")
    from sqlalchemy import create_engine, text

    from modelkeep.index.sql import normalize_url

    schema = f"mk_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(normalize_url(PG_URL))
    try:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        yield schema
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A private PostgreSQL schema for this test (see :func:`postgres_schema`)."""
    with postgres_schema() as schema:
        yield schema


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def index_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IndexTarget]:
    """An empty index on each backend."""
    if request.param == "sqlite":
        yield IndexTarget("sqlite", f"sqlite:///{tmp_path / 'registry.db'}")
        return
    with postgres_schema() as schema:
        assert PG_URL is not None
        yield IndexTarget("postgresql", PG_URL, schema)


#: How a module with ``ALSO_OVER_HTTP`` reaches ``persistence``, per index backend: directly, through
#: an in-process server on the same index and a local folder, and (PostgreSQL only: the S3 variant
#: is about the store, a SQLite copy of it would add time and nothing else) through a server on
#: PostgreSQL + a moto S3 bucket with presigned transfers (``tests/_http_server.py``).
OVER_HTTP_VARIANTS = {
    "sqlite-direct": ("sqlite", "direct"),
    "postgresql-direct": pytest.param("postgresql", "direct", marks=pytest.mark.postgres),
    "sqlite-http": ("sqlite", "http"),
    "postgresql-http": pytest.param("postgresql", "http", marks=pytest.mark.postgres),
    "postgresql-http-pg-s3": pytest.param("postgresql", "http-pg-s3", marks=pytest.mark.postgres),
}


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module that sets ``ALSO_OVER_HTTP`` runs its ``persistence`` tests on the registry itself
    and through a ``modelkeep server`` in front of it (:data:`OVER_HTTP_VARIANTS`): ``True`` for
    every variant, or a collection of the ``*-http*`` variants' names to run (the direct ones
    always run).

    A test marked ``direct_only(reason)`` (it needs the registry's internals) runs directly only;
    one marked ``local_files(reason)`` (it reads or writes the registry's files as local paths)
    not on the S3 variant. The pairs are given as a ``parametrize`` mark (not
    ``metafunc.parametrize``) so that pytest's own fixture parametrization sees ``index_target``
    taken and does not add its params again."""
    over_http = getattr(metafunc.module, "ALSO_OVER_HTTP", False)
    if "persistence" not in metafunc.fixturenames or not over_http:
        return
    names = [n for n in OVER_HTTP_VARIANTS if "direct" in n or over_http is True or n in over_http]
    if metafunc.definition.get_closest_marker("direct_only") is not None:
        names = [n for n in names if "direct" in n]
    if metafunc.definition.get_closest_marker("local_files") is not None:
        names = [n for n in names if not n.endswith("pg-s3")]
    metafunc.definition.add_marker(
        pytest.mark.parametrize(
            ("index_target", "registry_via"), [OVER_HTTP_VARIANTS[n] for n in names], indirect=["index_target"]
        )
    )


@pytest.fixture
def registry_via() -> str:
    """How ``persistence`` is reached: ``"direct"``, ``"http"`` or ``"http-pg-s3"`` (see
    :func:`pytest_generate_tests`)."""
    return "direct"


@pytest.fixture
def persistence(
    index_target: IndexTarget, tmp_path: Path, registry_via: str, request: pytest.FixtureRequest
) -> Iterator[ModelPersistence]:
    """A ModelPersistence on a fresh local folder, over each index backend (and, in modules
    with ``ALSO_OVER_HTTP``, through a registry server too)."""
    if registry_via == "http":
        from tests._http_server import ServerSide, over_http

        side = ServerSide(str(tmp_path / "models"), index_target.url, index_target.schema)
        with over_http(side, tmp_path / "server") as registry:
            yield registry  # type: ignore[misc]
        return
    if registry_via == "http-pg-s3":
        from tests._http_server import over_http_pg_s3

        with over_http_pg_s3(index_target, request, tmp_path / "server") as registry:
            yield registry  # type: ignore[misc]
        return
    p = index_target.persistence(tmp_path / "models")
    yield p
    p.close()


@pytest.fixture
def local_persistence(tmp_path: Path) -> Iterator[ModelPersistence]:
    """The embedded default: SQLite beside the models in a fresh folder."""
    p = ModelPersistence(models_dir=tmp_path / "models")
    p.ensure_registry()
    yield p
    p.close()


@pytest.fixture(scope="session")
def iris_data():  # type: ignore[no-untyped-def]
    from sklearn.datasets import load_iris

    return load_iris(return_X_y=True)


@pytest.fixture(scope="session")
def classifier(iris_data):  # type: ignore[no-untyped-def]
    from sklearn.linear_model import LogisticRegression

    X, y = iris_data
    return LogisticRegression(max_iter=500).fit(X, y)


@pytest.fixture(scope="session")
def regressor():  # type: ignore[no-untyped-def]
    import numpy as np
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 5))
    y = X @ rng.normal(size=5) + rng.normal(size=100) * 0.1
    return LinearRegression().fit(X, y), X
