"""Attacks on the unpickler, as an attacker who can write the store and the index (issues 22 and 30).

Each attack is a real payload. It is first shown to work against a plain
``pickle.loads`` (in a child process capped with ``RLIMIT_AS`` when it would
allocate gigabytes or hang), then refused by modelkeep with
:class:`~modelkeep.errors.UnsafeModelError`: through ``restricted_loads``, and as
the artifact of a forged version in a real registry (SQLite and PostgreSQL).

- "named is not called": functions a model holds only as values (a kmeans kernel,
  ``f_classif``, ``numpy.mean``) and classes whose constructors read files
  (``xgboost``/``lightgbm`` ``Booster(model_file=...)``) cannot be called;
- files outside the store: ``dateutil/<path>`` time zones, ``ZoneInfo`` keys;
- bounded loads: ``bytearray(3e9)``, a 12-byte ``BYTEARRAY8`` claiming 3 GB,
  ``list(range(2e8))``, an object array's shape, zstd and gzip bombs, deep nesting.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelkeep import ModelPersistence, UnsafeModelError
from modelkeep.formats._restricted import TrustPolicy, joblib_load, restricted_loads
from modelkeep.formats.budget import FLOOR, LoadBudget

from ._gadgets import Build, assemble, call, g
from .test_tampering import forge_record

ROOT = Path(__file__).resolve().parents[1]
#: The address-space cap of the child processes: far below what the attacks claim.
LIMIT = 1536 << 20
GB3 = 3_000_000_000


def long1(n: int) -> bytes:
    """The ``LONG1`` opcode for ``n`` (``assemble`` only writes 32-bit ints)."""
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def global_op(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def call_with_long(module: str, name: str, n: int) -> bytes:
    """``module.name(n)`` for any integer ``n``: protocol 2, ``GLOBAL``, ``LONG1``, ``TUPLE1``, ``REDUCE``."""
    return b"\x80\x02" + global_op(module, name) + long1(n) + b"\x85R."


# -- running a load in a child process, capped ---------------------------------------------------

_CHILD = r"""
import os, pickle, resource, sys
limit = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
data = open(sys.argv[1], "rb").read()
mode = sys.argv[2]
try:
    if mode == "plain":
        pickle.loads(data)
    elif mode == "plain-gzip":
        import gzip
        pickle.load(gzip.GzipFile(fileobj=open(sys.argv[1], "rb")))
    elif mode == "plain-zstd":
        import io, zstandard
        pickle.load(io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(sys.argv[1], "rb"))))
    elif mode == "modelkeep":
        from modelkeep.formats._restricted import restricted_loads
        restricted_loads(data)
    else:
        from modelkeep.formats import get_format
        from modelkeep.formats.budget import LoadBudget
        fmt, _, codec = mode.partition(":")
        with open(sys.argv[1], "rb") as fh:
            get_format(fmt).load(fh, codec or None, artifact_size=os.path.getsize(sys.argv[1]))
except MemoryError:
    print("MemoryError")
except Exception as exc:
    print(type(exc).__name__, str(exc)[:400])
else:
    print("loaded")
# VmHWM: this process's own peak (ru_maxrss would include the parent's pages at fork)
status = open("/proc/self/status").read()
print("peak_kib", status.split("VmHWM:")[1].split()[0])
"""


def in_child(tmp_path: Path, payload: bytes, mode: str, *, timeout: float = 120) -> tuple[str, int]:
    """Load ``payload`` in a fresh interpreter capped at :data:`LIMIT`: (first output line, peak RSS in KiB)."""
    path = tmp_path / f"payload-{mode.replace(':', '-')}"
    path.write_bytes(payload)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), mode, str(LIMIT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, f"the child printed nothing (exit {done.returncode}): {done.stderr[-2000:]}"
    peak = int(lines[-1].split()[1]) if lines[-1].startswith("peak_kib") else -1
    return lines[0], peak


def assert_plain_dies_and_modelkeep_refuses(tmp_path: Path, payload: bytes, modelkeep_mode: str = "modelkeep") -> str:
    plain, _ = in_child(tmp_path, payload, "plain")
    assert plain == "MemoryError", plain
    refused, peak = in_child(tmp_path, payload, modelkeep_mode)
    assert refused.startswith("UnsafeModelError"), refused
    assert peak < 512 * 1024, f"modelkeep's refusal peaked at {peak} KiB"
    return refused


# -- a registry holding a victim version ---------------------------------------------------------


def plant(p: ModelPersistence, payload: bytes, fmt: str = "pickle") -> None:
    """Save an honest victim, then replace its artifact with ``payload`` as the attacker would."""
    p.save_version({"weights": [1.0, 2.0]}, "victim", "1.0.0", serialization_format=fmt, compress=False)
    forge_record(p, "victim", "1.0.0", payload, globals=[], blobs=[])


# -- 1. named, not called --------------------------------------------------------------------


KMEANS = "sklearn.cluster._kmeans:_kmeans_single_lloyd"


def _kmeans_on_crafted_csr() -> bytes:
    """``_kmeans_single_lloyd`` called on a csr_matrix whose column indices point far outside
    its centers: the Cython kernel runs with bounds checks off (issue 22). Built, never run here."""
    csr = Build(
        call("copyreg:__newobj__", g("scipy.sparse._csr:csr_matrix")),
        {
            "_shape": (2, 2),
            "data": call("numpy:ndarray", (2,), "f8"),
            "indices": call("numpy:ndarray", (2,), "i4"),
            "indptr": call("numpy:ndarray", (3,), "i4"),
            "maxprint": 50,
        },
    )
    return assemble(call(KMEANS, csr, None, None, None, None))


def test_a_named_only_function_is_called_by_plain_pickle_and_refused_by_modelkeep() -> None:
    payload = assemble(call("numpy:mean", [1.0, 2.0, 3.0]))
    assert pickle.loads(payload) == 2.0  # plain pickle calls whatever it names
    with pytest.raises(UnsafeModelError, match="may name as a value but not call"):
        restricted_loads(payload)


def test_the_kmeans_kernel_is_reached_by_plain_pickle_and_refused_by_modelkeep(persistence: ModelPersistence) -> None:
    kernel_call = assemble(call(KMEANS))  # no arguments: the kernel itself says it was called
    with pytest.raises(TypeError, match="_kmeans_single_lloyd"):
        pickle.loads(kernel_call)
    payload = _kmeans_on_crafted_csr()
    with pytest.raises(UnsafeModelError, match="_kmeans_single_lloyd"):
        restricted_loads(payload)
    plant(persistence, payload)
    with pytest.raises(UnsafeModelError, match="may name as a value but not call"):
        persistence.load("victim", "1.0.0")


def test_a_named_only_function_still_loads_as_a_value() -> None:
    from sklearn.feature_selection import SelectKBest, f_classif

    selector = SelectKBest(f_classif, k=1).fit(np.random.RandomState(0).rand(20, 3), np.arange(20) % 2)
    loaded = restricted_loads(pickle.dumps(selector, protocol=5))
    assert loaded.score_func is f_classif
    assert restricted_loads(pickle.dumps({"agg": np.median})) == {"agg": np.median}


def test_a_named_only_function_cannot_be_handed_to_a_callable_that_calls_it() -> None:
    # defaultdict calls its factory; numpy's generator ctor calls its second argument
    for payload in (
        assemble(call("collections:defaultdict", g("numpy:mean"))),
        assemble(call("numpy.random._pickle:__generator_ctor", "MT19937", g("numpy:mean"))),
        assemble(call("numpy.random._pickle:__generator_ctor", "MT19937", g("builtins:bytearray"))),
    ):
        with pytest.raises(UnsafeModelError):
            restricted_loads(payload)


def test_trusted_functions_may_still_be_called() -> None:
    payload = assemble(call("numpy:mean", [1.0, 3.0]))
    assert restricted_loads(payload, TrustPolicy(frozenset({"numpy.mean"}))) == 2.0


# -- 2. files outside the store ----------------------------------------------------------------


@pytest.fixture
def planted_tz(tmp_path: Path) -> Path:
    """A valid time-zone file outside the store and outside the system's zone folder."""
    import zoneinfo

    source = next(Path(p) / "UTC" for p in zoneinfo.TZPATH if (Path(p) / "UTC").is_file())
    target = tmp_path / "secret" / "tzfile"
    target.parent.mkdir()
    shutil.copy(source, target)
    return target


def _tz_payloads(path: Path) -> dict[str, bytes]:
    spec = f"dateutil/{path}"
    relative = "dateutil/" + "../" * 12 + str(path).lstrip("/")
    return {
        "DatetimeTZDtype": assemble(call("pandas:DatetimeTZDtype", "ns", spec)),
        "relative path": assemble(call("pandas:DatetimeTZDtype", "ns", relative)),
        "dtype string": assemble(call("pandas:Index", [], f"datetime64[ns, {spec}]")),
    }


@pytest.mark.parametrize("variant", ["DatetimeTZDtype", "relative path", "dtype string"])
def test_a_dateutil_time_zone_path_is_read_by_plain_pickle_and_refused(planted_tz: Path, variant: str) -> None:
    payload = _tz_payloads(planted_tz)[variant]
    loaded = pickle.loads(payload)
    assert "tzfile" in repr(getattr(loaded, "tz", None) or getattr(loaded, "dtype", loaded))  # the file was read
    with pytest.raises(UnsafeModelError, match="not an IANA zone name"):
        restricted_loads(payload)


def test_a_time_zone_path_in_a_registry_is_refused(persistence: ModelPersistence, planted_tz: Path) -> None:
    plant(persistence, _tz_payloads(planted_tz)["DatetimeTZDtype"])
    with pytest.raises(UnsafeModelError, match="time zone"):
        persistence.load("victim", "1.0.0")


def test_zoneinfo_keys_must_be_zone_names() -> None:
    unpickle = call(call("builtins:getattr", g("zoneinfo:ZoneInfo"), "_unpickle"), "zone1970.tab", 1)
    with pytest.raises(ValueError, match=r"TZif|magic"):  # plain pickle opens and parses a non-zone file
        pickle.loads(assemble(unpickle))
    for key in ("zone1970.tab", "../../../etc/passwd", "/etc/passwd"):
        for payload in (
            assemble(call(call("builtins:getattr", g("zoneinfo:ZoneInfo"), "_unpickle"), key, 1)),
            assemble(call("zoneinfo:ZoneInfo", key)),
        ):
            with pytest.raises(UnsafeModelError, match="not an IANA zone name"):
                restricted_loads(payload)
    import zoneinfo

    honest = zoneinfo.ZoneInfo("Europe/Paris")
    assert restricted_loads(pickle.dumps(honest)) is honest


def _xgboost_model_file(tmp_path: Path) -> Path:
    import xgboost as xgb

    X = np.random.RandomState(0).rand(30, 3)
    booster = xgb.train({"max_depth": 2}, xgb.DMatrix(X, label=X[:, 0] > 0.5), num_boost_round=2)
    path = tmp_path / "outside" / "model.ubj"
    path.parent.mkdir(exist_ok=True)
    booster.save_model(str(path))
    return path


def _lightgbm_model_file(tmp_path: Path) -> Path:
    import lightgbm as lgb

    X = np.random.RandomState(0).rand(60, 3)
    booster = lgb.train({"verbose": -1, "num_leaves": 4}, lgb.Dataset(X, label=X[:, 0]), num_boost_round=2)
    path = tmp_path / "outside" / "model.txt"
    path.parent.mkdir(exist_ok=True)
    booster.save_model(str(path))
    return path


BOOSTERS = {
    "xgboost": ("xgboost.core:Booster", _xgboost_model_file),
    "lightgbm": ("lightgbm.basic:Booster", _lightgbm_model_file),
}


@pytest.mark.parametrize("framework", list(BOOSTERS))
def test_booster_model_file_reads_any_path_under_plain_pickle_and_is_refused(
    persistence: ModelPersistence, tmp_path: Path, framework: str
) -> None:
    spec, make = BOOSTERS[framework]
    outside = make(tmp_path)
    payload = assemble(call(spec, None, None, str(outside)))
    assert len(payload) < 60 + len(str(outside))  # the 100-byte pickle of issue 30, plus this path
    assert type(pickle.loads(payload)).__name__ == "Booster"  # a model read from outside the store
    with pytest.raises(UnsafeModelError, match="Booster"):
        restricted_loads(payload)
    keyword = assemble(call("copyreg:_reconstructor", g(spec), g("builtins:object"), None))
    assert type(restricted_loads(keyword)).__name__ == "Booster"  # __new__ alone: no file, no code
    plant(persistence, payload)
    with pytest.raises(UnsafeModelError, match="Booster"):
        persistence.load("victim", "1.0.0")


_REFUSE_CHILD = r"""
import sys
from modelkeep.formats._restricted import restricted_loads
for path in sys.argv[1:]:
    try:
        restricted_loads(open(path, "rb").read())
    except Exception as exc:
        print(type(exc).__name__)
    else:
        print("loaded")
"""


@pytest.mark.parametrize("framework", list(BOOSTERS))
def test_booster_on_a_fifo_or_dev_zero_hangs_plain_pickle_and_is_refused_at_once(
    tmp_path: Path, framework: str
) -> None:
    spec, _ = BOOSTERS[framework]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    payloads = []
    for i, target in enumerate((str(fifo), "/dev/zero")):
        payloads.append(tmp_path / f"payload{i}.pkl")
        payloads[-1].write_bytes(assemble(call(spec, None, None, target)))
    plain = f"import pickle; pickle.loads(open({str(payloads[0])!r}, 'rb').read())"
    with pytest.raises(subprocess.TimeoutExpired):  # plain pickle hangs, waiting on the fifo
        subprocess.run([sys.executable, "-c", plain], capture_output=True, timeout=4)
    refused = subprocess.run(
        [sys.executable, "-c", _REFUSE_CHILD, *map(str, payloads)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert refused.stdout.split() == ["UnsafeModelError", "UnsafeModelError"], refused.stderr[-2000:]


# -- 3. bounded loads ----------------------------------------------------------------------------


def test_bytearray_of_3_gb_from_48_bytes(tmp_path: Path) -> None:
    payload = call_with_long("builtins", "bytearray", GB3)
    assert len(payload) < 48
    refused = assert_plain_dies_and_modelkeep_refuses(tmp_path, payload)
    assert "max_load_memory" in refused and "MODELKEEP_MAX_LOAD_MEMORY" in refused


def test_bytearray8_claiming_3_gb_in_12_bytes(tmp_path: Path) -> None:
    payload = b"\x80\x05\x96" + struct.pack("<Q", GB3) + b"."
    assert len(payload) == 12
    refused = assert_plain_dies_and_modelkeep_refuses(tmp_path, payload)
    assert "claims 3000000000 bytes" in refused


@pytest.mark.parametrize("opcode", [b"\x8e", b"\x8d"])  # BINBYTES8, BINUNICODE8
def test_length_opcodes_are_checked_against_the_bytes_left(opcode: bytes) -> None:
    payload = b"\x80\x05" + opcode + struct.pack("<Q", GB3) + b"abc."
    with pytest.raises(UnsafeModelError, match="only 4 remain"):
        restricted_loads(payload)


def test_list_of_range_2e8(tmp_path: Path) -> None:
    payload = b"\x80\x02" + global_op("builtins", "list") + global_op("builtins", "range")
    payload += long1(200_000_000) + b"\x85R\x85R."
    assert_plain_dies_and_modelkeep_refuses(tmp_path, payload)


TWO_GB = 2_000_000_000  # fits the 32-bit ints of assemble(), and exceeds the children's cap
OBJECT_ARRAY_STATE = Build(
    call("numpy._core.multiarray:_reconstruct", g("numpy:ndarray"), (0,), b"b"),
    (1, (400_000_000,), call("numpy:dtype", "O8", False, True), False, []),
)


@pytest.mark.parametrize(
    "payload",
    [
        assemble(call("numpy:void", TWO_GB)),
        assemble(call("builtins:bytes", TWO_GB)),
        assemble(call("numpy:ndarray", (TWO_GB,), "u1")),
        assemble(OBJECT_ARRAY_STATE),
    ],
    ids=["numpy.void", "bytes", "numpy.ndarray", "object-array-state"],
)
def test_allocating_callables_are_charged_to_the_budget(tmp_path: Path, payload: bytes) -> None:
    assert_plain_dies_and_modelkeep_refuses(tmp_path, payload)


def test_allocation_attacks_planted_in_a_registry_are_refused(persistence: ModelPersistence) -> None:
    """A claim just over the 256 MiB floor: refused in the caller's process (no child needed)."""
    payload = call_with_long("builtins", "bytearray", FLOOR + 1)
    plant(persistence, payload)
    with pytest.raises(UnsafeModelError, match="memory budget"):
        persistence.load("victim", "1.0.0")


def test_max_load_memory_is_a_setting(tmp_path: Path) -> None:
    with ModelPersistence(tmp_path / "models", serialization_format="pickle", max_load_memory="1KiB") as p:
        p.save(np.zeros(10_000), "big", "1.0.0")
        with pytest.raises(UnsafeModelError, match="configured max_load_memory"):
            p.load("big", "1.0.0")
    with ModelPersistence(tmp_path / "models", serialization_format="pickle") as p:
        assert p.load("big", "1.0.0").shape == (10_000,)  # the default scales with the artifact


def _zeros_line_bomb(size: int) -> bytes:
    """A pickle whose text opcode (``UNICODE``) is ``size`` bytes without a newline: readline keeps reading."""
    return b"\x80\x02V" + b"a" * size + b"\n."


def test_a_zstd_bomb_is_refused_within_the_budget(tmp_path: Path) -> None:
    import zstandard

    bomb = io.BytesIO()
    with zstandard.ZstdCompressor(level=1).stream_writer(bomb, closefd=False) as writer:
        writer.write(b"\x80\x02V")
        chunk = b"a" * (16 << 20)
        for _ in range(2_000_000_000 // len(chunk)):
            writer.write(chunk)
        writer.write(b"\n.")
    data = bomb.getvalue()
    assert len(data) < 1 << 20  # 2 GB from less than 1 MB
    plain, _ = in_child(tmp_path, data, "plain-zstd")
    assert plain == "MemoryError", plain
    refused, peak = in_child(tmp_path, data, "joblib:zstd:1")
    assert refused.startswith("UnsafeModelError") and "decompressed" in refused, refused
    assert peak < 900 * 1024


def test_a_gzip_bomb_is_refused_within_the_budget(tmp_path: Path, persistence: ModelPersistence) -> None:
    data = gzip.compress(_zeros_line_bomb(64 << 20), compresslevel=1)
    assert len(data) < 1 << 20
    assert len(pickle.load(gzip.GzipFile(fileobj=io.BytesIO(data)))) == 64 << 20  # plain: 64 MB from 300 KB
    persistence.max_load_memory = 16 << 20  # the default floor (256 MiB) works the same, more slowly
    persistence.save_version({"weights": [1.0]}, "victim", "1.0.0", serialization_format="pickle", compress=True)
    forge_record(persistence, "victim", "1.0.0", data, globals=[])
    with pytest.raises(UnsafeModelError, match="gzip-compressed artifact"):
        persistence.load("victim", "1.0.0")


def test_a_joblib_zlib_bomb_is_refused() -> None:
    from joblib import numpy_pickle

    buf = io.BytesIO()
    with numpy_pickle._write_fileobject(buf, compress=("zlib", 1)) as out:  # joblib's own zlib container
        out.write(_zeros_line_bomb(64 << 20))
    assert len(buf.getvalue()) < 1 << 20
    with pytest.raises(UnsafeModelError, match="decompressed"):
        joblib_load(io.BytesIO(buf.getvalue()), TrustPolicy(), budget=LoadBudget(16 << 20))


def _memo_chain(depth: int) -> bytes:
    """Lists nested ``depth`` deep through the memo: each level is a new list holding the last one,
    so the unpickler's stack and mark stack never grow."""
    out = [b"\x80\x04]\x94"]  # EMPTY_LIST, MEMOIZE 0
    level = b"]j%s\x61\x94\x30"  # EMPTY_LIST, LONG_BINGET i, APPEND, MEMOIZE, POP
    for i in range(depth):
        out.append(level % struct.pack("<I", i))
    out.append(b"j" + struct.pack("<I", depth) + b".")
    return b"".join(out)


def _stack_chain(depth: int) -> bytes:
    return b"\x80\x04" + b"]" * depth + b"a" * (depth - 1) + b"."


@pytest.mark.parametrize("build", [_memo_chain, _stack_chain], ids=["memo", "stack"])
def test_deep_nesting_is_refused(build: Any) -> None:
    payload = build(200_000)
    nested = pickle.loads(payload)  # plain pickle builds it; any recursive consumer then fails
    with pytest.raises(RecursionError):
        repr(nested)
    with pytest.raises(UnsafeModelError, match="nests"):
        restricted_loads(payload)
    assert restricted_loads(build(50)) is not None


def test_nesting_through_objects_is_bounded() -> None:
    out = [b"\x80\x04N\x94"]
    for i in range(20_000):
        out.append(
            global_op("types", "SimpleNamespace") + b")\x81}X\x01\x00\x00\x00aj" + struct.pack("<I", i) + b"sb\x94\x30"
        )
    out.append(b"j" + struct.pack("<I", 20_000) + b".")
    with pytest.raises(UnsafeModelError, match="nests"):
        restricted_loads(b"".join(out))


# -- 4. no side effects on the user's own libraries ----------------------------------------------


def test_saving_leaves_joblibs_pickler_alone(tmp_path: Path) -> None:
    import joblib
    from joblib import numpy_pickle

    own = numpy_pickle.NumpyPickler
    assert own.__module__ == "joblib.numpy_pickle"
    with ModelPersistence(tmp_path / "models") as p:
        p.save({"a": np.arange(100_000)}, "m", "1.0.0")
        assert p.get_version("m", "1.0.0").artifact.extra["globals"]  # still recorded
        assert numpy_pickle.NumpyPickler is own
        joblib.dump({"b": 1}, tmp_path / "mine.joblib")  # the user's own dump: joblib's class
        assert joblib.load(tmp_path / "mine.joblib") == {"b": 1}


# -- the max_load_memory setting -----------------------------------------------------------------


def test_max_load_memory_from_the_config_the_environment_and_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from modelkeep.cli import cli
    from modelkeep.config import load_settings

    config = tmp_path / "config.yaml"
    config.write_text("persistence:\n  max_load_memory: 512MiB\n")
    assert load_settings(config).persistence_options()["max_load_memory"] == 512 << 20
    monkeypatch.setenv("MODELKEEP_MAX_LOAD_MEMORY", "2GiB")
    assert load_settings(None).persistence.max_load_memory == 2 << 30
    monkeypatch.delenv("MODELKEEP_MAX_LOAD_MEMORY")
    with pytest.raises(ValueError, match="max_load_memory"):
        load_settings(None, max_load_memory="lots")

    models = tmp_path / "models"
    with ModelPersistence(models, serialization_format="pickle") as p:
        p.save(np.zeros(10_000), "big", "1.0.0")
    args = ["--models-dir", str(models), "load", "--model-name", "big", "--output", str(tmp_path / "out.pkl")]
    refused = CliRunner().invoke(cli, ["--max-load-memory", "1KiB", *args])
    assert refused.exit_code == 1
    assert "memory budget" in refused.output and "max_load_memory" in refused.output
    assert CliRunner().invoke(cli, args).exit_code == 0


def test_a_torch_parameter_state_cannot_set_dunder_attributes() -> None:
    import torch

    honest = torch.nn.Parameter(torch.zeros(3))
    honest.note = "kept"
    raw = pickle.dumps(honest, protocol=2)  # no frames: the name can be swapped in place
    assert restricted_loads(raw).note == "kept"
    payload = raw.replace(b"X\x04\x00\x00\x00note", b"X\t\x00\x00\x00__class__")
    assert payload != raw
    with pytest.raises(TypeError, match="__class__"):  # plain pickle reaches setattr(param, "__class__", ...)
        pickle.loads(payload)
    with pytest.raises(UnsafeModelError, match="__class__"):
        restricted_loads(payload)
