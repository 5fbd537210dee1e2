"""The C unpickler for pickles proven to be plain data: a pre-scan, then ``pickle.loads``.

The restricted unpickler (:mod:`modelkeep.formats._restricted`) is pure Python, so a
pickle of many small objects (a dictionary of 300,000 tuples, a list of a million floats)
loads several times slower than with the C unpickler. The C unpickler cannot be policed
opcode by opcode, so it only runs on a stream that :func:`prove_plain` has walked first
and shown to be *plain data*: a tree of ``None``, booleans, numbers, strings, bytes,
tuples, lists, dicts, sets and frozensets. Anything else makes the proof fail and the
restricted unpickler load the stream as before. The proof refuses (falls back on):

- every opcode that names a global or calls (``GLOBAL``, ``STACK_GLOBAL``, ``INST``,
  ``OBJ``, ``REDUCE``, ``NEWOBJ``, ``NEWOBJ_EX``, ``EXT*``), ``BUILD``, persistent ids,
  ``DUP`` and the text opcodes of protocols 0 and 1: so no allow-list entry, call guard or
  state check can apply, and nothing in the result has a registered state check;
- a memo ``GET`` of anything but a scalar (so the graph is a tree, and the depth the scan
  computes is the depth of the result), and a memo ``PUT`` past the next free index (the C
  unpickler grows its memo array to twice the index, touching every slot);
- a length (``BINUNICODE``, ``BINBYTES8``, ``BYTEARRAY8``, ``LONG4``, ``FRAME`` ...) past the
  end of the stream (the C unpickler allocates what a length claims before it reads); for the
  prefix of a compressed stream (``partial=True``) that is "plain so far", as a cut opcode is;
- nesting deeper than :data:`FAST_DEPTH` (the C unpickler hashes a dict key or set item
  recursively: a million nested tuples as a key crash the interpreter), more than
  ``MAX_DEPTH`` marks or ``MAX_STACK`` stack items (the restricted unpickler's limits);
- more containers than :data:`~modelkeep.formats.state_checks.MAX_LOADED_OBJECTS` (the final
  state-check pass refuses a graph that big, so the restricted path decides);
- a stream whose bytes, with :data:`~modelkeep.formats._restricted.ITEM_BYTES` per item,
  could pass the load's :class:`~modelkeep.formats.budget.LoadBudget`.

The scan runs in C when the optional extension :mod:`modelkeep.formats._plainscan` was built
(``pip install`` compiles ``_plainscan.c``; :data:`SCANNER` says ``"c"``): the same proof,
opcode for opcode, at a small fraction of the C unpickler's time. Without a compiler the install
still succeeds and the scan is the loop over the opcodes in Python below (:data:`SCANNER` is
``"python"``), which costs about as much as the C unpickler itself (bench/unpickle.py measures both).
"""

from __future__ import annotations

import functools
import io
import mmap
import pickle
from typing import Any

from ..errors import UnsafeModelError
from . import state_checks
from ._restricted import ITEM_BYTES, MAX_DEPTH, MAX_STACK
from .budget import LoadBudget
from .state_checks import MAX_LOADED_OBJECTS

#: The proof refuses containers nested deeper than this (honest data nests a few levels).
FAST_DEPTH = 1_000
#: Streams smaller than this go to the restricted unpickler directly (the scan would not pay).
MIN_FAST_BYTES = 4096
#: How much of a compressed stream is decompressed to decide whether to decompress the rest
#: into memory for the proof (a stream that names a global early is streamed, as before).
PREFIX_BYTES = 1 << 20

_MISS = object()

try:
    from ._plainscan import walk as _c_walk
except ImportError:  # built without a compiler: the pure-Python scan
    _c_walk = None

#: Which scan :func:`prove_plain` runs: ``"c"`` (the compiled extension) or ``"python"``.
SCANNER = "python" if _c_walk is None else "c"


def _table() -> list[int]:
    """Per opcode byte: the size of the argument of a scalar push (``-1``: not a scalar push)."""
    sizes = [-1] * 256
    for op, size in (
        (pickle.NONE, 0),
        (pickle.NEWTRUE, 0),
        (pickle.NEWFALSE, 0),
        (pickle.EMPTY_TUPLE, 0),
        (pickle.BININT, 4),
        (pickle.BININT1, 1),
        (pickle.BININT2, 2),
        (pickle.BINFLOAT, 8),
    ):
        sizes[op[0]] = size
    return sizes


_SCALAR = _table()
_OP = {
    name: value[0]
    for name in dir(pickle)
    if name.isupper() and isinstance(value := getattr(pickle, name), bytes) and len(value) == 1
}
# the opcodes the loop tests for, as ints
(
    _MEMOIZE,
    _SHORT_BINUNICODE,
    _SHORT_BINBYTES,
    _TUPLE1,
    _TUPLE2,
    _TUPLE3,
    _MARK,
    _APPENDS,
    _SETITEMS,
    _ADDITEMS,
    _APPEND,
    _SETITEM,
    _EMPTY_LIST,
    _EMPTY_DICT,
    _EMPTY_SET,
    _TUPLE,
    _LIST,
    _DICT,
    _FROZENSET,
    _BINGET,
    _LONG_BINGET,
    _BINPUT,
    _LONG_BINPUT,
    _FRAME,
    _PROTO,
    _STOP,
    _POP,
    _POP_MARK,
    _LONG1,
    _LONG4,
    _BINUNICODE,
    _BINBYTES,
    _BINUNICODE8,
    _BINBYTES8,
    _BYTEARRAY8,
    _READONLY_BUFFER,
    _NEXT_BUFFER,
) = (
    _OP[name]
    for name in (
        "MEMOIZE",
        "SHORT_BINUNICODE",
        "SHORT_BINBYTES",
        "TUPLE1",
        "TUPLE2",
        "TUPLE3",
        "MARK",
        "APPENDS",
        "SETITEMS",
        "ADDITEMS",
        "APPEND",
        "SETITEM",
        "EMPTY_LIST",
        "EMPTY_DICT",
        "EMPTY_SET",
        "TUPLE",
        "LIST",
        "DICT",
        "FROZENSET",
        "BINGET",
        "LONG_BINGET",
        "BINPUT",
        "LONG_BINPUT",
        "FRAME",
        "PROTO",
        "STOP",
        "POP",
        "POP_MARK",
        "LONG1",
        "LONG4",
        "BINUNICODE",
        "BINBYTES",
        "BINUNICODE8",
        "BINBYTES8",
        "BYTEARRAY8",
        "READONLY_BUFFER",
        "NEXT_BUFFER",
    )
)
_SHORT_COUNTED = frozenset({_SHORT_BINUNICODE, _SHORT_BINBYTES, _LONG1})
_EXTEND = frozenset({_APPENDS, _SETITEMS, _ADDITEMS})
_EMPTY = frozenset({_EMPTY_DICT, _EMPTY_LIST, _EMPTY_SET})
_GETS = frozenset({_BINGET, _LONG_BINGET})
_ADD_ONE = frozenset({_APPEND, _SETITEM})
_FROM_MARK = frozenset({_TUPLE, _LIST, _DICT, _FROZENSET})
_PUTS = frozenset({_BINPUT, _LONG_BINPUT})
#: Length-prefixed opcodes: the size of the length field and whether it is signed.
_COUNTED = {
    _BINUNICODE: (4, False),
    _BINBYTES: (4, False),
    _LONG4: (4, True),
    _BINUNICODE8: (8, False),
    _BINBYTES8: (8, False),
    _BYTEARRAY8: (8, False),
}


def prove_plain(data: Any, *, partial: bool = False) -> bool | None:
    """Whether ``data`` (bytes or a memoryview) is a pickle of plain data the C unpickler may
    load (see the module doc).

    Walks every opcode up to ``STOP``, simulating the stack as the nesting depth of each item
    (0 for a scalar). ``False`` means "not proven", never "malicious": the caller then loads
    with the restricted unpickler, which refuses what is unsafe with its own error. With
    ``partial=True``, ``data`` is the start of a stream: running off its end gives ``None``
    ("plain so far")."""
    if _c_walk is not None:
        proven = _c_walk(data, FAST_DEPTH, MAX_DEPTH, MAX_STACK, MAX_LOADED_OBJECTS)
        if proven is None:  # where _walk raises IndexError
            return None if partial else False
        return bool(proven)
    return prove_plain_python(data, partial=partial)


def prove_plain_python(data: Any, *, partial: bool = False) -> bool | None:
    """:func:`prove_plain` by the pure-Python scan (what runs without the compiled extension)."""
    try:
        return _walk(data)
    except IndexError:  # a truncated argument or an empty stack: let the full unpickler say so
        return None if partial else False


def _walk(data: bytes) -> bool:
    scalar = _SCALAR
    end = len(data)
    stack: list[int] = []
    marks: list[int] = []
    memo: list[int] = []
    push, pop, remember = stack.append, stack.pop, memo.append
    pos = 0
    objects = 0  # containers and buffers created: what the final state-check pass would walk
    while True:
        op = data[pos]
        pos += 1
        size = scalar[op]
        if size >= 0:
            pos += size
            push(0)
        elif op == _MEMOIZE:
            remember(stack[-1])
        elif op in _SHORT_COUNTED:
            pos += 1 + data[pos]
            push(0)
        elif op == _TUPLE3:
            objects += 1
            depth = max(pop(), pop(), stack[-1]) + 1
            if depth > FAST_DEPTH:
                return False
            stack[-1] = depth
        elif op == _TUPLE2:
            objects += 1
            depth = max(pop(), stack[-1]) + 1
            if depth > FAST_DEPTH:
                return False
            stack[-1] = depth
        elif op == _TUPLE1:
            objects += 1
            depth = stack[-1] + 1
            if depth > FAST_DEPTH:
                return False
            stack[-1] = depth
        elif op == _MARK:
            if len(marks) >= MAX_DEPTH or len(stack) >= MAX_STACK:
                return False
            marks.append(len(stack))
        elif op in _EXTEND:
            start = marks.pop()
            if start < 1:
                return False  # no container below the mark
            if start < len(stack):
                depth = max(stack[start:]) + 1
                del stack[start:]
                if depth > stack[-1]:
                    if depth > FAST_DEPTH:
                        return False
                    stack[-1] = depth
        elif op in _EMPTY:
            if len(stack) >= MAX_STACK:
                return False
            objects += 1
            push(1)
        elif op in _GETS:
            width = 1 if op == _BINGET else 4
            index = int.from_bytes(data[pos : pos + width], "little")
            pos += width
            if index >= len(memo) or memo[index]:
                return False  # a container fetched twice: not a tree (or not in the memo)
            push(0)
        elif op in _ADD_ONE:
            depth = pop() + 1
            if op == _SETITEM:
                depth = max(depth, pop() + 1)
            if depth > stack[-1]:
                if depth > FAST_DEPTH:
                    return False
                stack[-1] = depth
        elif op in _FROM_MARK:
            start = marks.pop()
            objects += 1
            depth = max(stack[start:], default=0) + 1
            if depth > FAST_DEPTH:
                return False
            del stack[start:]
            push(depth)
        elif op == _FRAME:
            length = int.from_bytes(data[pos : pos + 8], "little")
            pos += 8
            if length > end - pos:  # past the end: not proven (for a prefix, plain so far)
                raise IndexError
        elif op in _COUNTED:
            width, signed = _COUNTED[op]
            length = int.from_bytes(data[pos : pos + width], "little", signed=signed)
            pos += width
            if pos > end or length > end - pos:  # the C unpickler would allocate the claimed length first:
                raise IndexError  # not proven (but a prefix cut in the middle of a string is plain so far)
            if length < 0:
                return False
            pos += length
            push(0)
        elif op in _PUTS:
            width = 1 if op == _BINPUT else 4
            index = int.from_bytes(data[pos : pos + width], "little")
            pos += width
            if index == len(memo):
                remember(stack[-1])
            elif index < len(memo):
                memo[index] = stack[-1]
            else:
                return False  # the C memo would grow to twice the index
        elif op == _POP:  # pops the mark when nothing was pushed since it, as pickle does
            if marks and marks[-1] == len(stack):
                marks.pop()
            else:
                pop()
        elif op == _POP_MARK:
            del stack[marks.pop() :]
        elif op == _NEXT_BUFFER:
            objects += 1
            push(0)
        elif op == _READONLY_BUFFER:
            if stack[-1]:
                return False
        elif op == _PROTO:
            pos += 1
        elif op == _STOP:  # a graph the final pass would refuse as too big to check: not proven
            return len(stack) == 1 and not marks and objects < MAX_LOADED_OBJECTS
        else:
            return False  # globals, calls, BUILD, DUP, persistent ids, protocol 0-1 text opcodes


class _Sealed(pickle.Unpickler):
    """The C unpickler, refusing every global (a proven stream names none: defence in depth)."""

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafeModelError(f"refused to load: the pickle global {module}.{name} in a stream proven plain")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeModelError("refused to load: a persistent id in a stream proven plain")


@functools.cache
def _plain_types_unchecked() -> bool:
    """Whether no state check is registered for a type a proven stream can produce (then the
    final :func:`~modelkeep.formats.state_checks.checked` pass has nothing to look at)."""
    return all(state_checks.build_check_for(kind) is None for kind in PLAIN_TYPES)


#: The types of everything a stream proven plain can hold.
PLAIN_TYPES = (
    type(None),
    bool,
    int,
    float,
    str,
    bytes,
    bytearray,
    tuple,
    list,
    dict,
    set,
    frozenset,
    pickle.PickleBuffer,
)


def load_plain(file: Any, budget: LoadBudget, buffers: Any = None) -> Any:
    """The object pickled in ``file`` (an in-memory stream: a memory map or ``BytesIO``), loaded
    by the C unpickler, if :func:`prove_plain` proves it plain data that fits ``budget``;
    else :data:`MISS`, with ``file`` where it was (the caller loads with the restricted
    unpickler). The result has been through the final state-check pass (it has nothing to check)."""
    if not isinstance(file, (mmap.mmap, io.BytesIO)):
        return MISS
    start = file.tell()
    whole = file.getbuffer() if isinstance(file, io.BytesIO) else memoryview(file)
    with whole, whole[start:] as view:
        size = len(view)
        if size < MIN_FAST_BYTES or (1 + ITEM_BYTES) * size > budget.limit - budget.used:
            return MISS
        if not prove_plain(view):
            return MISS
    try:
        obj = _Sealed(file, buffers=buffers).load()
    except Exception:
        file.seek(start)
        return MISS
    return obj if _plain_types_unchecked() else state_checks.checked(obj)


#: Returned by :func:`plain_loads` when the stream is not proven plain.
MISS: Any = _MISS
