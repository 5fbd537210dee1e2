"""Every public gadget in tests/_gadgets.py: proven to fire under plain pickle, refused by modelkeep.

For each gadget, as an attacker who can write the store and the index but holds
no key would do it: the payload replaces a version's artifact in every pickle
format, and the digest, size and recorded globals are rewritten in the index
row and the sidecar to match. The load must raise :class:`UnsafeModelError`
and the gadget's marker file must not appear. The same payloads go through
``modelkeep save --model-file``. One registry per format serves every gadget.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import subprocess
import sys
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from modelkeep import ModelPersistence, UnsafeModelError, quarantine
from modelkeep.cli import cli
from modelkeep.formats._restricted import RestrictedUnpickler, TrustPolicy, joblib_load, restricted_loads

from ._gadgets import GADGETS, Build, Ctx, Gadget, Glob, assemble, call, g, gadget_globals
from .test_tampering import forge_record

ROOT = Path(__file__).resolve().parents[1]
IDS = [gd.id for gd in GADGETS]


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=1).compress(data)


#: format variant -> (serialization_format, compress, how the payload becomes an artifact of it)
VARIANTS: dict[str, tuple[str, Any, Any]] = {
    "pickle": ("pickle", False, lambda b: b),
    "pickle-gz": ("pickle", True, gzip.compress),
    "joblib": ("joblib", False, lambda b: b),
    "joblib-zstd": ("joblib", True, _zstd),
    "joblib-zlib": ("joblib", ("zlib", 3), zlib.compress),
    "native": ("native", False, lambda b: b),
}


def test_the_corpus_holds_at_least_60_distinct_gadgets() -> None:
    assert len(set(IDS)) == len(IDS) >= 60


@pytest.fixture(scope="module")
def fired(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Fire every gadget under plain ``pickle.loads``, in a child process (they are real)."""
    out = tmp_path_factory.mktemp("fired")
    subprocess.run(
        [sys.executable, "-m", "tests._gadgets", str(out)],
        cwd=ROOT,
        check=True,
        timeout=900,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    return results


@pytest.mark.parametrize("gadget", GADGETS, ids=IDS)
def test_the_gadget_fires_under_plain_pickle(fired: dict[str, Any], gadget: Gadget) -> None:
    assert fired[gadget.id] is True


@pytest.fixture(scope="module")
def registries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ModelPersistence]]:
    """One registry per format variant, each holding a clean version 'victim' 1.0.0, with no key.

    Without the quarantine: the refusal under test is the loader's own, in this process (the
    quarantined child runs the very same load; each variant goes through it in
    :func:`test_a_forged_version_is_refused_in_the_quarantine_child_too`)."""
    root = tmp_path_factory.mktemp("registries")
    opened: dict[str, ModelPersistence] = {}
    try:
        for name, (fmt, compress, _wrap) in VARIANTS.items():
            p = ModelPersistence(root / name, serialization_format=fmt, compress=compress, quarantine="never")
            opened[name] = p
            p.save({"weights": [1.0, 2.0]}, "victim", "1.0.0")
        yield opened
    finally:
        for p in opened.values():
            p.close()


def _refusal_names_a_global_of(exc: BaseException, payload: bytes) -> bool:
    text = str(exc)
    named = any(name in text for name in gadget_globals(payload))
    return named or "getattr(" in text or "module" in text or "nested pickle" in text


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("gadget", GADGETS, ids=IDS)
def test_a_forged_version_carrying_the_gadget_is_refused(
    registries: dict[str, ModelPersistence], tmp_path: Path, gadget: Gadget, variant: str
) -> None:
    ctx = Ctx(tmp_path / "g")
    ctx.setup()
    payload = gadget.payload(ctx)
    p = registries[variant]
    forged_globals = gadget_globals(payload)  # the attacker records exactly what the payload uses
    forge_record(p, "victim", "1.0.0", VARIANTS[variant][2](payload), globals=forged_globals, blobs=[])
    with pytest.raises(UnsafeModelError) as info:
        p.load("victim", "1.0.0")
    assert _refusal_names_a_global_of(info.value, payload)
    assert not ctx.fired()


#: The gadget sent through the quarantine in every format variant: a shell command, the classic.
QUARANTINED = next(gd for gd in GADGETS if gd.id == "os.system")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_forged_version_is_refused_in_the_quarantine_child_too(
    registries: dict[str, ModelPersistence], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str
) -> None:
    """The default load (``quarantine="auto"``) of a forged, unsigned version: the child refuses
    it and the refusal comes back naming the global, with nothing fired on either side."""
    ctx = Ctx(tmp_path / "g")
    ctx.setup()
    payload = QUARANTINED.payload(ctx)
    p = registries[variant]
    forge_record(p, "victim", "1.0.0", VARIANTS[variant][2](payload), globals=gadget_globals(payload), blobs=[])
    monkeypatch.setattr(p, "quarantine", "auto")
    started = quarantine.children_started()
    with pytest.raises(UnsafeModelError) as info:
        p.load("victim", "1.0.0")
    assert quarantine.children_started() == started + 1
    assert _refusal_names_a_global_of(info.value, payload)
    assert not ctx.fired()


@pytest.fixture(scope="module")
def cli_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli") / "models"


@pytest.mark.parametrize("gadget", GADGETS, ids=IDS)
def test_save_model_file_refuses_the_gadget(cli_models: Path, tmp_path: Path, gadget: Gadget) -> None:
    ctx = Ctx(tmp_path / "g")
    ctx.setup()
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(gadget.payload(ctx))
    result = CliRunner().invoke(
        cli, ["--models-dir", str(cli_models), "save", "--model-name", "evil", "--model-file", str(evil)]
    )
    assert result.exit_code == 1
    assert "refused to load" in result.output
    assert "--trust-file" in result.output
    assert not ctx.fired()


def test_import_file_refuses_then_trust_file_accepts_your_own_file(tmp_path: Path) -> None:
    from ._workers import Custom

    own = tmp_path / "own.pkl"
    own.write_bytes(pickle.dumps({"custom": Custom(3), "f": Fraction(1, 3)}))
    with ModelPersistence(tmp_path / "models") as p:
        with pytest.raises(UnsafeModelError, match=r"tests\._workers\.Custom.*trust_file=True"):
            p.import_file(own, "own")
        assert p.import_file(own, "own", trusted_types=["tests._workers.Custom"]).version == "1.0.0"
        assert p.import_file(own, "own", trust_file=True).version == "1.0.1"
    with ModelPersistence(tmp_path / "models", trusted_types=["tests._workers.Custom"]) as p:
        assert p.load("own", "1.0.1")["custom"] == Custom(3)


def test_cli_trust_flag_admits_a_named_global(tmp_path: Path) -> None:
    from ._workers import Custom

    own = tmp_path / "own.pkl"
    own.write_bytes(pickle.dumps(Custom(5)))
    models = str(tmp_path / "models")
    base = ["--models-dir", models, "save", "--model-name", "own", "--model-file", str(own)]
    refused = CliRunner().invoke(cli, base)
    assert refused.exit_code == 1 and "tests._workers.Custom" in refused.output
    trusted = CliRunner().invoke(cli, [*base, "--trust", "tests._workers.Custom"])
    assert trusted.exit_code == 0, trusted.output
    own_file = CliRunner().invoke(cli, [*base, "--trust-file"])
    assert own_file.exit_code == 0, own_file.output


def test_a_file_that_is_not_a_pickle_gets_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"this is not a pickle\n")
    result = CliRunner().invoke(
        cli, ["--models-dir", str(tmp_path / "m"), "save", "--model-name", "x", "--model-file", str(bad)]
    )
    assert result.exit_code == 1
    assert "cannot read a model from" in result.output and "not a model file" in result.output
    assert "Traceback" not in result.output


# -- switching the checks off does not work --------------------------------------------------

LIMIT_DENOMINATOR = Fraction.limit_denominator
SWITCH_OFF = {
    "BUILD on modelkeep's unpickling module": Build(
        Glob("modelkeep.formats", "_restricted", "GLOBAL"), {"resolve_global": None}
    ),
    "BUILD on the allow-list module": Build(
        Glob("modelkeep.formats", "allowlist", "GLOBAL"), {"BUILTIN_ALLOWLIST": None}
    ),
    "BUILD (setattr) on the policy class": Build(
        g("modelkeep.formats._restricted:TrustPolicy"), (None, {"source": g("builtins:str")})
    ),
    "BUILD (setattr) on an allow-listed class": Build(
        g("fractions:Fraction"), (None, {"limit_denominator": g("builtins:str")})
    ),
    "BUILD on an allow-listed function": Build(g("copyreg:_reconstructor"), (None, {"__defaults__": (1,)})),
}


@pytest.mark.parametrize("variant", ["pickle", "joblib"])
@pytest.mark.parametrize("attempt", list(SWITCH_OFF), ids=list(SWITCH_OFF))
def test_a_payload_cannot_switch_the_checks_off_for_later_loads(
    registries: dict[str, ModelPersistence], tmp_path: Path, attempt: str, variant: str
) -> None:
    p = registries[variant]
    forge_record(p, "victim", "1.0.0", assemble([SWITCH_OFF[attempt], {"model": "real"}]), globals=[])
    with pytest.raises(UnsafeModelError):
        p.load("victim", "1.0.0")
    assert Fraction.limit_denominator is LIMIT_DENOMINATOR
    ctx = Ctx(tmp_path / "after")
    ctx.setup()
    forge_record(p, "victim", "1.0.0", ctx.nested, globals=["os.system"])
    with pytest.raises(UnsafeModelError, match=r"posix\.system|os\.system"):
        p.load("victim", "1.0.0")
    assert not ctx.fired()


def test_build_on_a_memo_copy_of_a_class_is_refused() -> None:
    data = b"\x80\x04" + b"ccollections\nOrderedDict\nq\x000" + b"h\x00(N}X\x01\x00\x00\x00x\x88stb."
    with pytest.raises(UnsafeModelError, match="sets the state"):
        restricted_loads(data)
    assert not hasattr(OrderedDict, "x")


def test_the_policy_is_frozen() -> None:
    policy = TrustPolicy(frozenset({"a.B"}))
    with pytest.raises(AttributeError):
        policy.trusted = frozenset()  # type: ignore[misc]


# -- trust sources ---------------------------------------------------------------------------


def test_recorded_globals_widen_trust_only_when_signed() -> None:
    from ._workers import Custom

    data = pickle.dumps(Custom(1), protocol=5)
    extra = {"globals": ["tests._workers.Custom"]}
    with pytest.raises(UnsafeModelError, match=r"records these globals.*tests\._workers\.Custom.*signed"):
        RestrictedUnpickler(io.BytesIO(data), policy=TrustPolicy.for_load({"extra": extra})).load()
    signed = TrustPolicy.for_load({"extra": extra, "signed": True})
    assert RestrictedUnpickler(io.BytesIO(data), policy=signed).load() == Custom(1)
    trusted = TrustPolicy.for_load({"trusted": ["tests._workers.Custom"]})
    assert RestrictedUnpickler(io.BytesIO(data), policy=trusted).load() == Custom(1)


def test_a_dotted_name_is_refused_even_when_trusted_if_it_walks_through_a_module() -> None:
    data = assemble(call("pathlib:os.getcwd"))
    policy = TrustPolicy(frozenset({"pathlib.os.getcwd"}))
    with pytest.raises(UnsafeModelError, match="module"):
        restricted_loads(data, policy)


def test_a_module_object_is_refused_even_when_trusted() -> None:
    data = assemble(Glob("pathlib", "os", "GLOBAL"))
    with pytest.raises(UnsafeModelError, match="module"):
        restricted_loads(data, TrustPolicy(frozenset({"pathlib.os"})))


def test_joblib_object_arrays_go_through_the_policy(tmp_path: Path) -> None:
    import joblib
    import numpy as np

    from ._workers import Custom

    path = tmp_path / "objects.joblib"
    joblib.dump({"a": np.array([Custom(1), None], dtype=object)}, path)
    with pytest.raises(UnsafeModelError, match=r"tests\._workers\.Custom"):
        joblib_load(str(path), TrustPolicy())
    loaded = joblib_load(str(path), TrustPolicy(frozenset({"tests._workers.Custom"})))
    assert loaded["a"][0] == Custom(1)


def test_a_joblib_object_array_cannot_build_on_a_class(tmp_path: Path) -> None:
    """The nested stream of an object array gets the same BUILD check as the outer one."""
    import joblib
    import numpy as np

    path = tmp_path / "objects.joblib"
    joblib.dump({"a": np.array([OrderedDict(), None], dtype=object)}, path)
    raw = path.read_bytes()
    inner = pickle.dumps(np.array([OrderedDict(), None], dtype=object), protocol=5)  # what joblib writes
    assert raw.count(inner) == 1
    path.write_bytes(raw.replace(inner, assemble(Build(g("collections:OrderedDict"), (None, {"x": 1})))))
    with pytest.raises(UnsafeModelError):
        joblib_load(str(path), TrustPolicy())
    assert not hasattr(OrderedDict, "x")


def test_the_save_time_warning_names_globals_a_reader_without_the_key_must_trust(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from ._workers import Custom

    with ModelPersistence(tmp_path / "models") as p, caplog.at_level("WARNING", logger="modelkeep"):
        p.save({"w": [1.0]}, "plain")
        assert not [r for r in caplog.records if "allow-list" in r.getMessage()]
        p.save({"c": Custom(1)}, "custom")
        warned = [r.getMessage() for r in caplog.records if "allow-list" in r.getMessage()]
    assert len(warned) == 1
    assert "tests._workers.Custom" in warned[0] and "signing key" in warned[0]
