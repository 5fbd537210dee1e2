"""The C unpickler's fast path for plain data (formats/_fastpath.py), attacked.

A stream reaches the C unpickler only when the pre-scan proves it plain data. Each attack
here is padded past the size under which the fast path is not tried, so the scan really
judges it: a callable fetched from the memo, a computed ``STACK_GLOBAL``, a named-only
function called, ``BUILD`` on a checked type, lengths past the end, a memo index that would
grow the C memo, a million nested tuples as a dict key (which crashes the C unpickler), and a
fuzz that compares the fast path with the restricted unpickler on mutated streams.
"""

from __future__ import annotations

import gzip
import io
import mmap
import pickle
import struct
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from modelkeep import ModelPersistence, UnsafeModelError
from modelkeep.formats._fastpath import MIN_FAST_BYTES, MISS, load_plain, prove_plain
from modelkeep.formats._restricted import RestrictedUnpickler
from modelkeep.formats.budget import LoadBudget
from modelkeep.formats.native import NativeFormat
from modelkeep.formats.pickle_format import PickleFormat

#: Plain data of every kind the scan accepts, big enough for the fast path.
PLAIN: dict[str, Any] = {
    "tuples": {f"key{i}": (i, i * 0.5, f"v{i}") for i in range(2_000)},
    "floats": [float(i) / 7 for i in range(3_000)],
    "ints": [0, 1, -1, 255, 256, 65535, 65536, 2**31, -(2**31), 2**64, -(2**200), *range(2_000)],
    "strings": ["", "é", "x" * 300, "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")]
    + [str(i) for i in range(2_000)],
    "bytes": [b"", b"\x00" * 300, bytearray(b"abc" * 100), *(bytes([i % 256]) * (i % 7) for i in range(2_000))],
    "nested": {"a": [[1, [2, [3, {"b": (4, 5, (6, frozenset({7, (8, 9)})))}]]]], "s": {1, 2, "three"}, "n": None},
    "shared_keys": [{"alpha": i, "beta": float(i), "gamma": [i, str(i)]} for i in range(1_000)],
    "big_tuple": tuple(range(1_000)),
    "bools": [True, False, None] * 1_000,
}


def _mapped(data: bytes) -> mmap.mmap:
    """The bytes in a private memory map, as a verified load hands them to a format."""
    buf = mmap.mmap(-1, len(data))
    buf.write(data)
    buf.seek(0)
    return buf


def _pad(body: bytes) -> bytes:
    """A protocol 5 stream: a list of floats past MIN_FAST_BYTES popped off, then ``body``."""
    filler = b"".join(b"G" + struct.pack(">d", float(i)) for i in range(MIN_FAST_BYTES // 9 + 10))
    return b"\x80\x05](" + filler + b"e0" + body


def _s(text: str) -> bytes:
    """SHORT_BINUNICODE ``text``."""
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def _restricted(data: bytes) -> Any:
    return RestrictedUnpickler(io.BytesIO(data), budget=LoadBudget.for_artifact(len(data))).load()


def _outcome(load: Any) -> tuple[str, Any]:
    try:
        return "ok", repr(load())
    except Exception as exc:
        return "error", type(exc).__name__


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_plain_data_takes_the_fast_path_and_loads_the_same(name: str) -> None:
    obj = PLAIN[name]
    # before protocol 5, bytearray (before 3, bytes; before 4, sets) are written as calls: not plain
    for protocol in {"bytes": (5,), "nested": (4, 5)}.get(name, (2, 3, 4, 5)):
        obj_here: Any = obj
        data = pickle.dumps(obj, protocol=protocol)
        if len(data) < MIN_FAST_BYTES:
            obj_here = [obj, list(range(2_000))]
            data = pickle.dumps(obj_here, protocol=protocol)
        assert prove_plain(data), (name, protocol)
        fast = load_plain(_mapped(data), LoadBudget.for_artifact(len(data)))
        assert fast is not MISS
        assert fast == obj_here == _restricted(data)
        assert PickleFormat().load(_mapped(data), None) == obj_here
        assert PickleFormat().load(io.BytesIO(gzip.compress(data)), "gzip:6") == obj_here


@pytest.mark.parametrize("fmt,compress", [("pickle", False), ("pickle", True), ("native", False)])
def test_the_registry_round_trips_plain_data(tmp_path: Any, fmt: str, compress: bool) -> None:
    obj = PLAIN["shared_keys"]
    with ModelPersistence(tmp_path / "m", serialization_format=fmt, compress=compress) as registry:
        registry.save(obj, "plain", "1.0.0")
        assert registry.load("plain", "1.0.0") == obj


def test_native_format_takes_the_fast_path_for_plain_data() -> None:
    data = pickle.dumps(PLAIN["tuples"], protocol=5)
    assert prove_plain(data)
    assert NativeFormat().load(_mapped(data), None, blobs=_NoBlobs(), extra={}) == PLAIN["tuples"]


class _NoBlobs:
    """A blob store holding nothing: the stream names no out-of-band buffer."""

    def read_many(self, digests: Any, **_: Any) -> list[Any]:
        assert not digests
        return []


# -- attacks ---------------------------------------------------------------------------------

#: (label, stream body after the padding) -- every one must be refused by the scan.
GADGETS = {
    "callable from a memo GET": b"cos\nsystem\n\x940h\x00" + _s("id") + b"\x85R.",
    "computed STACK_GLOBAL": _s("os") + b"\x940h\x00" + _s("system") + b"\x93" + _s("id") + b"\x85R.",
    "GLOBAL then REDUCE": b"cbuiltins\neval\n\x8c\x071+1\x85R.",
    "named-only function called": (
        _s("sklearn.feature_selection._univariate_selection") + _s("f_classif") + b"\x93]]\x86R."
    ),
    "INST": b"(\x8c\x02idios\nsystem\n.",
    "OBJ": b"(cos\nsystem\n\x8c\x02ido.",
    "NEWOBJ": b"cbuiltins\nobject\n)\x81.",
    "BUILD on a dict": b"}}b.",
    "BUILD on a class": b"ccollections\nOrderedDict\nN}" + _s("x") + _s("y") + b"s\x86b.",
    "EXT1": b"\x82\x01.",
    "persistent id": b"\x8c\x01x\x94Q.",
    "DUP of a list": b"]2a.",
    "text INT": b"I123\n.",
}


@pytest.mark.parametrize("label", sorted(GADGETS))
def test_the_scan_refuses_every_gadget_and_the_policy_still_applies(label: str) -> None:
    data = _pad(GADGETS[label])
    assert len(data) > MIN_FAST_BYTES
    assert prove_plain(data) is False
    assert load_plain(_mapped(data), LoadBudget.for_artifact(len(data))) is MISS
    assert _outcome(lambda: PickleFormat().load(_mapped(data), None)) == _outcome(lambda: _restricted(data))


@pytest.mark.parametrize(
    "label",
    ["callable from a memo GET", "computed STACK_GLOBAL", "GLOBAL then REDUCE", "named-only function called", "OBJ"],
)
def test_call_gadgets_are_refused_as_unsafe(label: str) -> None:
    data = _pad(GADGETS[label])
    with pytest.raises(UnsafeModelError, match="refused to load"):
        PickleFormat().load(_mapped(data), None)


def test_build_on_a_checked_type_goes_through_the_state_checks() -> None:
    """A tree whose node array points out of bounds: BUILD on a type with a state check."""
    sklearn_tree = pytest.importorskip("sklearn.tree")
    import numpy as np

    model = sklearn_tree.DecisionTreeClassifier(max_depth=3).fit(np.arange(40.0).reshape(20, 2), [0, 1] * 10)
    data = pickle.dumps({"pad": list(range(3_000)), "model": model}, protocol=5)
    assert prove_plain(data) is False  # globals and BUILD: never the fast path
    nodes = model.tree_.__getstate__()["nodes"]
    needle = nodes.tobytes()[:16]
    bad = nodes.copy()
    bad["left_child"][0] = 10_000
    tampered = data.replace(needle, bad.tobytes()[:16], 1)
    assert tampered != data
    with pytest.raises(UnsafeModelError, match="refused to load"):
        PickleFormat().load(_mapped(tampered), None)


@pytest.mark.parametrize(
    "label,body",
    [
        ("BINBYTES8 past the end", b"\x8e" + struct.pack("<Q", 1 << 40) + b"x."),
        ("BYTEARRAY8 past the end", b"\x96" + struct.pack("<Q", 3_000_000_000) + b"x."),
        ("BINUNICODE past the end", b"X" + struct.pack("<I", 1 << 31) + b"x."),
        ("negative LONG4", b"\x8b" + struct.pack("<i", -5) + b"."),
        ("FRAME past the end", b"\x95" + struct.pack("<Q", 1 << 50) + b"N."),
    ],
)
def test_lengths_past_the_end_are_not_given_to_the_c_unpickler(label: str, body: bytes) -> None:
    data = _pad(body)
    assert prove_plain(data) is False, label
    assert _outcome(lambda: PickleFormat().load(_mapped(data), None)) == _outcome(lambda: _restricted(data))


def test_a_memo_index_that_would_grow_the_c_memo_is_not_proven() -> None:
    """LONG_BINPUT 2**28 would make the C unpickler allocate and clear a 4 GiB memo array."""
    data = _pad(b"N" + b"r" + struct.pack("<I", 1 << 28) + b".")
    assert prove_plain(data) is False
    assert PickleFormat().load(_mapped(data), None) is None  # the restricted unpickler's dict memo


def test_a_budget_smaller_than_the_stream_can_justify_keeps_the_restricted_unpickler() -> None:
    data = pickle.dumps(PLAIN["floats"], protocol=5)
    assert prove_plain(data)
    assert load_plain(_mapped(data), LoadBudget(len(data) * 2, configured=True)) is MISS
    with pytest.raises(UnsafeModelError, match="memory budget"):
        PickleFormat().load(_mapped(data), None, max_load_memory=1024)


def test_shared_containers_and_deep_lists_are_left_to_the_restricted_unpickler() -> None:
    shared = [1, 2]
    data = pickle.dumps([shared, shared, list(range(2_000))], protocol=5)
    assert prove_plain(data) is False  # a list fetched from the memo twice: not a tree
    assert PickleFormat().load(_mapped(data), None) == [shared, shared, list(range(2_000))]
    # 20,000 nested lists: the restricted unpickler refuses the depth
    deep = _pad(b"]" + b"](" * 20_000 + b"e" * 20_000 + b".")
    assert prove_plain(deep) is False
    with pytest.raises(UnsafeModelError, match="nests"):
        PickleFormat().load(_mapped(deep), None)


def test_a_million_nested_tuples_as_a_key_do_not_crash_the_interpreter(tmp_path: Any) -> None:
    """The C unpickler hashes a dict key recursively: this stream crashes ``pickle.loads``
    (checked in a child). Through modelkeep it is refused, in a child too in case it is not."""
    stream = b"\x80\x04}K\x01" + b"\x85" * 1_000_000 + b"K\x02s."
    path = tmp_path / "deep.pkl"
    path.write_bytes(stream)
    crash = subprocess.run(
        [sys.executable, "-c", f"import pickle; pickle.loads(open({str(path)!r}, 'rb').read())"], check=False
    )
    assert crash.returncode != 0  # SIGSEGV: why the scan bounds tuple depth
    assert prove_plain(stream) is False
    script = textwrap.dedent(
        f"""
        import mmap
        from modelkeep import UnsafeModelError
        from modelkeep.formats.pickle_format import PickleFormat
        data = open({str(path)!r}, "rb").read()
        buf = mmap.mmap(-1, len(data)); buf.write(data); buf.seek(0)
        try:
            PickleFormat().load(buf, None)
        except UnsafeModelError as exc:
            print("refused:", exc)
        """
    )
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert child.returncode == 0, child.stderr
    assert "refused: refused to load" in child.stdout


_FUZZ = textwrap.dedent(
    """
    import io, mmap, pickle, random, sys
    from modelkeep.formats._fastpath import MISS, load_plain, prove_plain
    from modelkeep.formats._restricted import RestrictedUnpickler
    from modelkeep.formats.budget import LoadBudget

    protocol = int(sys.argv[1])
    base = pickle.dumps({"k%d" % i: (i, [i * 0.5, "v%d" % i], {"s": frozenset({i}) if protocol >= 4 else i})
                         for i in range(400)}, protocol=protocol)
    rng = random.Random(int(sys.argv[1]))
    proven = same = 0
    for _ in range(int(sys.argv[2])):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(2, len(data))
            if rng.random() < 0.5:
                data[pos] = rng.randrange(256)
            else:
                data[pos:pos] = bytes([rng.randrange(256)])
        data = bytes(data)
        if not prove_plain(data):
            continue
        proven += 1
        buf = mmap.mmap(-1, len(data)); buf.write(data); buf.seek(0)
        fast = load_plain(buf, LoadBudget.for_artifact(len(data)))
        try:
            slow = RestrictedUnpickler(io.BytesIO(data), budget=LoadBudget.for_artifact(len(data))).load()
        except Exception:
            slow = MISS
        if fast is not MISS and slow is not MISS:
            assert repr(fast) == repr(slow), data
            same += 1
        elif fast is not MISS:
            raise AssertionError(f"the fast path loaded what the restricted unpickler refuses: {data!r}")
    print(proven, same)
    """
)


@pytest.mark.parametrize("protocol", [2, 5])
def test_mutated_streams_load_the_same_or_not_at_all(protocol: int) -> None:
    """Random byte flips and insertions: whatever the scan proves, the C unpickler must load
    exactly as the restricted one does (run in a child, so a crash fails the test)."""
    child = subprocess.run(
        [sys.executable, "-c", _FUZZ, str(protocol), "1500"], capture_output=True, text=True, check=False
    )
    assert child.returncode == 0, child.stderr[-3000:]
    proven, same = (int(n) for n in child.stdout.split())
    assert proven > 20 and same > 20  # the fuzz really reached the C unpickler


def test_a_graph_too_big_for_the_final_check_is_refused_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """The restricted path's last pass refuses more than MAX_LOADED_OBJECTS containers; the
    scan counts them, so such a graph goes there (the limit lowered to keep the test small)."""
    import modelkeep.formats._fastpath as fastpath
    from modelkeep.formats import state_checks

    data = pickle.dumps([(i,) for i in range(2_000)], protocol=5)
    assert prove_plain(data)
    monkeypatch.setattr(fastpath, "MAX_LOADED_OBJECTS", 1_000)
    monkeypatch.setattr(state_checks, "MAX_LOADED_OBJECTS", 1_000)
    assert prove_plain(data) is False
    with pytest.raises(UnsafeModelError, match="too many to check"):
        PickleFormat().load(_mapped(data), None)
