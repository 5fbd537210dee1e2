"""Model names and version strings: validation, ordering, and allocation.

Ordering rule (also documented in the README):

* A version *parses* when it looks like ``[v]N(.N)*[-pre][+build]``; ``1.10.0``
  sorts after ``1.9.0``, missing parts count as zero, and a pre-release
  (``1.0.0-rc1``, ``1.0.0rc1``) sorts before its release.
* Versions that do not parse (``alpha-1``, ``production-v1``) sort before every
  parsed version, among themselves in creation order.
* "Latest" is therefore the highest parsed version, or, when none of a model's
  versions parse, the most recently created one.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

from .errors import InvalidNameError

MAX_NAME_LENGTH = 128
MAX_VERSION_LENGTH = 64

#: What a model name may hold (VERSION_RE: a version or an alias); api/routes.py gives the OpenAPI
#: document these same rules.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
# Names that Windows cannot create as files, and names modelkeep keeps for itself.
_RESERVED = {
    "con",
    "prn",
    "aux",
    "nul",
    *(f"com{i}" for i in range(10)),
    *(f"lpt{i}" for i in range(10)),
    "registry.db",
    "registry.db-wal",
    "registry.db-shm",
    "registry.db-journal",
    "registry.json",
    "latest",
}

_SEMVER_RE = re.compile(
    r"""
    [vV]?
    (?P<nums>\d+(?:\.\d+)*)
    (?:
        -(?P<pre>[0-9A-Za-z][0-9A-Za-z.-]*)        # semver pre-release: 1.0.0-rc.1
      | [._]?(?P<pep>[A-Za-z][0-9A-Za-z.]*)        # PEP 440 style: 1.0.0rc1, 1.0.0.dev2
    )?
    (?:\+(?P<build>[0-9A-Za-z.-]+))?
    """,
    re.VERBOSE,
)
_IDENT_SPLIT = re.compile(r"\d+|[A-Za-z]+")


def _check(value: object, what: str, pattern: re.Pattern[str], max_len: int) -> str:
    if not isinstance(value, str):
        raise InvalidNameError(f"{what} must be a string, got {type(value).__name__}")
    shown = repr(value) if len(value) <= 80 else repr(value[:77] + "...")
    if not value or not value.strip():
        raise InvalidNameError(f"{what} must not be empty")
    if len(value) > max_len:
        raise InvalidNameError(f"{what} {shown} is longer than {max_len} characters")
    if "\x00" in value:
        raise InvalidNameError(f"{what} {shown} contains a NUL byte")
    if "/" in value or "\\" in value:
        raise InvalidNameError(f"{what} {shown} contains a path separator")
    if ".." in value:
        raise InvalidNameError(f"{what} {shown} contains '..'")
    if not pattern.fullmatch(value):
        raise InvalidNameError(
            f"{what} {shown} is not allowed: use letters, digits, '.', '_' and '-' "
            "(and '+' in versions), starting with a letter or digit"
        )
    if value.lower() in _RESERVED or value.split(".")[0].lower() in _RESERVED - {"latest"}:
        raise InvalidNameError(f"{what} {shown} is a reserved name")
    return value


def validate_model_name(name: object) -> str:
    """Return ``name`` if it is a safe model name, else raise :class:`InvalidNameError`."""
    return _check(name, "model name", NAME_RE, MAX_NAME_LENGTH)


def validate_version(version: object) -> str:
    """Return ``version`` if it is a safe version string, else raise :class:`InvalidNameError`."""
    return _check(version, "version", VERSION_RE, MAX_VERSION_LENGTH)


def validate_alias(alias: object) -> str:
    """Return ``alias`` if it can name an alias, else raise :class:`InvalidNameError`.

    Aliases follow the version rules, must not look like a version (``1.0``, ``v2``),
    and ``latest`` is reserved.
    """
    name = _check(alias, "alias", VERSION_RE, MAX_VERSION_LENGTH)
    if parse_version(name) is not None:
        raise InvalidNameError(f"alias {name!r} looks like a version; pick a name such as 'production'")
    return name


@dataclass(frozen=True)
class ParsedVersion:
    """A version string that follows the ``[v]N(.N)*[-pre][+build]`` shape."""

    prefix: str
    numbers: tuple[int, ...]
    pre: tuple[int | str, ...]
    build: str | None


@functools.lru_cache(maxsize=4096)  # a save parses its versions several times; the result is immutable
def parse_version(version: str) -> ParsedVersion | None:
    """Parse ``version``; return ``None`` for custom strings such as ``alpha-1``."""
    m = _SEMVER_RE.fullmatch(version)
    if m is None:
        return None
    numbers = tuple(int(n) for n in m["nums"].split("."))
    pre_text = m["pre"] or m["pep"] or ""
    pre: tuple[int | str, ...] = tuple(
        int(tok) if tok.isdigit() else tok.lower() for tok in _IDENT_SPLIT.findall(pre_text)
    )
    return ParsedVersion(version[0] if version[0] in "vV" else "", numbers, pre, m["build"])


def _encode_int(n: int) -> bytes:
    digits = str(n).encode()
    return bytes([len(digits)]) + digits


@functools.lru_cache(maxsize=4096)  # as parse_version: bytes, immutable
def sort_key(version: str) -> bytes | None:
    """A byte string whose bytewise order is the version order, or ``None``.

    Stored in the index so that SQL can find the latest version with an
    ``ORDER BY ... LIMIT 1`` instead of loading every version.
    """
    parsed = parse_version(version)
    if parsed is None:
        return None
    numbers = list(parsed.numbers)
    while len(numbers) > 3 and numbers[-1] == 0:
        numbers.pop()  # 1.0.0.0 == 1.0.0
    numbers += [0] * (3 - len(numbers))
    out = bytearray()
    for n in numbers:
        out += b"\x02" + _encode_int(n)
    out += b"\x01"  # end of the numeric part: 1.0.0-x < 1.0.0.1
    if not parsed.pre:
        out += b"\x03"  # a release sorts after all of its pre-releases
    else:
        out += b"\x02"
        for ident in parsed.pre:
            if isinstance(ident, int):
                out += b"\x02" + _encode_int(ident)  # numbers before words, numerically
            else:
                out += b"\x03" + ident.encode("ascii")
            out += b"\x01"
        out += b"\x00"  # a shorter pre-release list sorts first
    return bytes(out)


def next_version(highest: str | None, is_taken: Callable[[str], bool] = lambda v: False) -> str:
    """The next patch after ``highest`` (the highest parsed version), or ``1.0.0``.

    After a pre-release comes its release (``2.0.0-rc1`` -> ``2.0.0``). Otherwise
    pre-release and build parts are dropped, missing parts count as zero, and a
    ``v`` prefix is kept: ``v1.2.3`` -> ``v1.2.4``. ``is_taken`` skips versions
    that already exist under another spelling (``1.0.1`` beside ``v1.0.1``).
    """
    parsed = parse_version(highest) if highest is not None else None
    if parsed is None:
        nums, prefix = [1, 0, 0], ""
    else:
        nums = list(parsed.numbers) + [0] * (3 - len(parsed.numbers))
        prefix = parsed.prefix
        release = prefix + ".".join(map(str, nums))
        if not parsed.pre or is_taken(release):  # after 2.0.0-rc1 comes the release 2.0.0 itself
            nums[-1] += 1
    text = prefix + ".".join(map(str, nums))
    while is_taken(text):
        nums[-1] += 1
        text = prefix + ".".join(map(str, nums))
    return text
