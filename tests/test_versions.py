"""Version strings and model names: ordering, "latest", allocation and validation.

Ordering and "latest" are tested where the library decides them: in the index's
SQL ``ORDER BY`` on SQLite and PostgreSQL (hypothesis against a reference
semver comparator, and explicit cases). Parsing and validation are pure
functions, tested directly.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from modelkeep import InvalidNameError, ModelKeepError, ModelNotFoundError, ModelPersistence
from modelkeep.index import SqlIndex
from modelkeep.metadata import ArtifactInfo, ModelMetadata, to_json_safe
from modelkeep.versions import (
    next_version,
    parse_version,
    validate_model_name,
    validate_version,
)

from .conftest import IndexTarget

#: Also run through a registry server (conftest.pytest_generate_tests): on SQLite + a folder, and on
#: PostgreSQL + S3 with presigned transfers (a server on PostgreSQL + a folder adds time, not cover).
ALSO_OVER_HTTP = ("sqlite-http", "postgresql-http-pg-s3")

# --------------------------------------------------------------------------------------
# A reference implementation of semver 2.0.0 precedence for x.y.z[-pre] (no build part).
# --------------------------------------------------------------------------------------


def _semver_split(version: str) -> tuple[tuple[int, int, int], list[str] | None]:
    core, _, pre = version.partition("-")
    major, minor, patch = (int(p) for p in core.split("."))
    return (major, minor, patch), (pre.split(".") if pre else None)


def _cmp(a: object, b: object) -> int:
    return (a > b) - (a < b)  # type: ignore[operator]


def semver_compare(a: str, b: str) -> int:
    """-1, 0 or 1 by semver precedence (rules 11.1-11.4)."""
    core_a, pre_a = _semver_split(a)
    core_b, pre_b = _semver_split(b)
    if core_a != core_b:
        return _cmp(core_a, core_b)
    if pre_a is None or pre_b is None:  # a release ranks above its pre-releases
        return _cmp(pre_a is None, pre_b is None)
    for x, y in zip(pre_a, pre_b, strict=False):
        if x == y:
            continue
        if x.isdigit() and y.isdigit():
            return _cmp(int(x), int(y))
        if x.isdigit() != y.isdigit():
            return -1 if x.isdigit() else 1  # numeric identifiers rank below alphanumeric ones
        return _cmp(x, y)  # ASCII order
    return _cmp(len(pre_a), len(pre_b))


def test_reference_comparator_matches_the_semver_spec_example() -> None:
    spec = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "2.0.0",
        "2.1.0",
        "2.1.1",
    ]
    assert sorted(reversed(spec), key=functools.cmp_to_key(semver_compare)) == spec


_numbers = st.integers(min_value=0, max_value=12)
_identifier = st.one_of(
    st.integers(min_value=0, max_value=15).map(str),
    st.sampled_from(["alpha", "beta", "rc", "a", "b", "pre", "dev", "zeta"]),
    st.text(alphabet="abcxyz", min_size=1, max_size=4),
)
_semver = st.builds(
    lambda nums, pre: ".".join(map(str, nums)) + ("-" + ".".join(pre) if pre else ""),
    st.tuples(_numbers, _numbers, _numbers),
    st.lists(_identifier, max_size=3),
)


class IndexOrder:
    """Registers versions of a fresh model in a real index and reads back the SQL's answers."""

    def __init__(self, index: SqlIndex) -> None:
        self.index = index

    def register(self, versions: list[str]) -> str:
        """A new model with ``versions`` created in the given order (one transaction); its name."""
        name = f"m{uuid.uuid4().hex[:10]}"
        records = [
            ModelMetadata(
                model_name=name,
                model_type="dict",
                version=v,
                created_at="2026-01-01T00:00:00+00:00",
                updated_at="2026-01-01T00:00:00+00:00",
                artifact=ArtifactInfo(f"{name}/{v}/{name}_v{v}.joblib", "joblib", None, 1, "0" * 64, {}),
            )
            for v in versions
        ]
        self.index.replace_all(records)
        return name

    def sorted(self, versions: list[str]) -> list[str]:
        """The index's ascending order of ``versions`` (``list_versions``)."""
        return self.index.list_versions(self.register(versions))

    def latest(self, versions: list[str]) -> str:
        """What the index resolves "latest" to."""
        return self.index.resolve(self.register(versions)).version


@pytest.fixture
def order(index_target: IndexTarget) -> Iterator[IndexOrder]:
    index = SqlIndex(index_target.url, schema=index_target.schema)
    yield IndexOrder(index)
    index.close()


_fixture_ok = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_fixture_ok
@given(versions=st.lists(_semver, max_size=12, unique=True))
def test_index_order_agrees_with_semver_precedence(order: IndexOrder, versions: list[str]) -> None:
    expected = sorted(versions, key=functools.cmp_to_key(semver_compare))
    assert order.sorted(versions) == expected


@_fixture_ok
@given(versions=st.lists(_semver, min_size=1, max_size=12, unique=True))
def test_index_latest_is_the_semver_maximum(order: IndexOrder, versions: list[str]) -> None:
    top = order.latest(versions)
    assert all(semver_compare(top, v) >= 0 for v in versions)


# --------------------------------------------------------------------------------------
# Ordering: explicit cases
# --------------------------------------------------------------------------------------


def test_numeric_parts_compare_as_numbers(order: IndexOrder) -> None:
    assert order.sorted(["1.10.0", "1.9.0", "1.2.0", "10.0.0", "2.0.0"]) == [
        "1.2.0",
        "1.9.0",
        "1.10.0",
        "2.0.0",
        "10.0.0",
    ]


def test_pre_releases_sort_before_their_release(order: IndexOrder) -> None:
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-beta", "1.0.0-rc.1", "1.0.0"]
    assert order.sorted(list(reversed(ordered))) == ordered
    assert order.sorted(["1.0.1-alpha", "1.0.0", "0.9.9"]) == ["0.9.9", "1.0.0", "1.0.1-alpha"]


def test_pep440_style_pre_release_sorts_like_semver_one(order: IndexOrder) -> None:
    assert order.sorted(["1.0.0", "1.0.0rc1", "1.0.0-alpha"]) == ["1.0.0-alpha", "1.0.0rc1", "1.0.0"]
    assert order.sorted(["1.0.0-rc2", "1.0.0rc1"]) == ["1.0.0rc1", "1.0.0-rc2"]


def test_v_prefix_is_ignored_for_ordering(order: IndexOrder) -> None:
    assert order.sorted(["v1.10.0", "1.9.0", "v1.2.3", "V0.1"]) == ["V0.1", "v1.2.3", "1.9.0", "v1.10.0"]
    parsed = parse_version("v1.2.3")
    assert parsed is not None and parsed.prefix == "v" and parsed.numbers == (1, 2, 3)


def test_missing_parts_count_as_zero(order: IndexOrder) -> None:
    # 1.0 and 1.0.0 are equal: their relative order is the input (creation) order.
    assert order.sorted(["1.0", "1.0.0"]) == ["1.0", "1.0.0"]
    assert order.sorted(["1.0.0", "1.0"]) == ["1.0.0", "1.0"]
    assert order.sorted(["1.1", "1.0.1", "1"]) == ["1", "1.0.1", "1.1"]
    assert order.sorted(["1.0.0.1", "1.0.0", "1.0.0-rc1"]) == ["1.0.0-rc1", "1.0.0", "1.0.0.1"]


def test_build_metadata_does_not_change_precedence(order: IndexOrder) -> None:
    assert order.sorted(["1.0.1", "1.0.0+build.5", "1.0.0-rc1"]) == ["1.0.0-rc1", "1.0.0+build.5", "1.0.1"]


def test_unparsed_versions_sort_first_in_input_order(order: IndexOrder) -> None:
    got = order.sorted(["2.0.0", "production-v1", "1.0.0", "alpha-1", "zzz", "abc"])
    assert got == ["production-v1", "alpha-1", "zzz", "abc", "1.0.0", "2.0.0"]


@pytest.mark.parametrize("custom", ["alpha-1", "production-v1", "release_candidate", "v", "1.0.0-", "best"])
def test_custom_strings_do_not_parse(custom: str) -> None:
    assert parse_version(custom) is None


@pytest.mark.parametrize(
    "semverish", ["1", "1.0", "1.0.0", "v1.2.3", "1.0.0-rc.1", "1.0.0rc1", "1.0.0+b1", "1.0.0.dev2"]
)
def test_semver_like_strings_parse(semverish: str) -> None:
    assert parse_version(semverish) is not None


def test_latest_ignores_unparsed_strings(order: IndexOrder) -> None:
    assert order.latest(["production-v1", "1.9.0", "1.10.0-rc1", "zzz"]) == "1.10.0-rc1"
    assert order.latest(["alpha-1", "beta"]) == "beta"  # none parses: the most recently created


# --------------------------------------------------------------------------------------
# next_version
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("highest", "expected"),
    [
        (None, "1.0.0"),
        ("1.2.3", "1.2.4"),
        ("v1.2.3", "v1.2.4"),
        ("1.9.9", "1.9.10"),
        ("1.2", "1.2.1"),
        ("2", "2.0.1"),
        ("1.2.3.4", "1.2.3.5"),
        ("1.0.0-rc1", "1.0.0"),  # the release after its pre-release, not 1.0.1
        ("v2.0-beta.2", "v2.0.0"),
        ("1.0.0+build7", "1.0.1"),
        ("production-v1", "1.0.0"),
    ],
)
def test_next_version(highest: str | None, expected: str) -> None:
    assert next_version(highest) == expected


def test_next_version_skips_taken_spellings() -> None:
    taken = {"1.0.1", "1.0.2"}
    assert next_version("1.0.0", taken.__contains__) == "1.0.3"
    assert next_version(None, {"1.0.0"}.__contains__) == "1.0.1"


# --------------------------------------------------------------------------------------
# Through the real API, on both index backends
# --------------------------------------------------------------------------------------


def _save_all(p: ModelPersistence, name: str, versions: list[str]) -> None:
    for i, v in enumerate(versions):
        p.save({"i": i}, name, v)


def test_list_versions_ascending_through_api(persistence: ModelPersistence) -> None:
    _save_all(persistence, "m", ["1.10.0", "1.0.0", "production-v1", "1.0.0-rc.1", "1.9.0", "alpha-1", "1.0.0-alpha"])
    assert persistence.list_versions("m") == [
        "production-v1",
        "alpha-1",
        "1.0.0-alpha",
        "1.0.0-rc.1",
        "1.0.0",
        "1.9.0",
        "1.10.0",
    ]
    assert [r.version for r in persistence.list_version_records("m")] == persistence.list_versions("m")


def test_latest_is_highest_parsed_version(persistence: ModelPersistence) -> None:
    _save_all(persistence, "m", ["1.10.0", "2.0.0-rc1", "1.9.0", "zzz-latest-created"])
    assert persistence.resolve_version("m") == "2.0.0-rc1"
    assert persistence.load("m") == {"i": 1}
    persistence.save({"i": 99}, "m", "2.0.0")
    assert persistence.resolve_version("m") == "2.0.0"
    assert persistence.load("m") == {"i": 99}


def test_latest_is_most_recent_when_no_version_parses(persistence: ModelPersistence) -> None:
    _save_all(persistence, "m", ["zeta", "alpha", "middle"])
    assert persistence.resolve_version("m") == "middle"
    assert persistence.load("m") == {"i": 2}
    assert persistence.get_metadata("m").version == "middle"  # type: ignore[union-attr]
    assert persistence.list_versions("m") == ["zeta", "alpha", "middle"]


def test_v_prefixed_versions_through_api(persistence: ModelPersistence) -> None:
    _save_all(persistence, "m", ["v1.10.0", "v1.9.0"])
    assert persistence.list_versions("m") == ["v1.9.0", "v1.10.0"]
    assert persistence.resolve_version("m") == "v1.10.0"
    assert persistence.save({"i": 5}, "m").parent.name == "v1.10.1"


def test_auto_version_sequence_through_api(persistence: ModelPersistence) -> None:
    versions = [persistence.save({"i": i}, "m").parent.name for i in range(3)]
    assert versions == ["1.0.0", "1.0.1", "1.0.2"]
    persistence.save({"i": 3}, "m", "1.9.0")
    persistence.save({"i": 4}, "m", "1.10.0-rc1")
    persistence.save({"i": 5}, "m", "custom")
    assert persistence.get_version("m", None).version == "1.10.0-rc1"
    assert persistence.save({"i": 6}, "m").parent.name == "1.10.0"  # the release after its rc (issue 14)
    assert persistence.save({"i": 7}, "m").parent.name == "1.10.1"


def test_auto_version_after_only_custom_versions(persistence: ModelPersistence) -> None:
    persistence.save({"i": 0}, "m", "production-v1")
    assert persistence.save({"i": 1}, "m").parent.name == "1.0.0"
    assert persistence.resolve_version("m") == "1.0.0"


def test_one_and_one_zero_zero_are_distinct_versions(persistence: ModelPersistence) -> None:
    persistence.save({"i": 0}, "m", "1.0")
    persistence.save({"i": 1}, "m", "1.0.0")
    assert persistence.list_versions("m") == ["1.0", "1.0.0"]
    assert persistence.load("m", "1.0") == {"i": 0}
    assert persistence.load("m", "1.0.0") == {"i": 1}
    assert persistence.resolve_version("m") == "1.0.0"  # equal precedence: the most recent wins
    assert persistence.save({"i": 2}, "m").parent.name == "1.0.1"


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------

BAD_NAMES = ["", "   ", "../x", "/abs", "a/b", "a\\b", "a\x00b", "x" * 129, "CON", "nul", "..", ".hidden", "a..b"]
BAD_VERSIONS = ["", " ", "../1", "/1.0", "1/0", "1\\0", "1\x00", "1" * 65, "CON", "..", ".1", "latest", "1.0 "]


def _snapshot(p: ModelPersistence) -> tuple[set[str], list[str]]:
    root = Path(p.models_dir)
    files = {str(f.relative_to(root)) for f in root.rglob("*")} if root.exists() else set()
    return files, p.list_models()


@pytest.mark.local_files("lists the registry's files on the local disk")
@pytest.mark.parametrize("bad", BAD_NAMES, ids=repr)
def test_invalid_model_names_are_refused_before_writing(persistence: ModelPersistence, bad: str) -> None:
    persistence.save({"i": 0}, "existing", "1.0.0")
    before = _snapshot(persistence)
    with pytest.raises(InvalidNameError) as info:
        persistence.save({"i": 1}, bad, "1.0.0")
    assert isinstance(info.value, ValueError) and isinstance(info.value, ModelKeepError)
    assert _snapshot(persistence) == before
    assert persistence.list_versions("existing") == ["1.0.0"]
    with pytest.raises(InvalidNameError):
        validate_model_name(bad)


@pytest.mark.local_files("lists the registry's files on the local disk")
@pytest.mark.parametrize("bad", BAD_VERSIONS, ids=repr)
def test_invalid_versions_are_refused_before_writing(persistence: ModelPersistence, bad: str) -> None:
    persistence.save({"i": 0}, "existing", "1.0.0")
    before = _snapshot(persistence)
    with pytest.raises(InvalidNameError):
        persistence.save({"i": 1}, "existing", bad)
    assert _snapshot(persistence) == before
    assert persistence.list_versions("existing") == ["1.0.0"]


@pytest.mark.parametrize("bad", ["../x", "a/b", "CON", ""], ids=repr)
def test_read_methods_validate_names(local_persistence: ModelPersistence, bad: str) -> None:
    for call in (
        lambda: local_persistence.load(bad),
        lambda: local_persistence.list_versions(bad),
        lambda: local_persistence.get_version(bad),
        lambda: local_persistence.delete(bad, "1.0.0"),
        lambda: local_persistence.delete("m", bad or " "),
    ):
        with pytest.raises(InvalidNameError):
            call()


def test_non_string_names_are_refused() -> None:
    with pytest.raises(InvalidNameError):
        validate_model_name(123)
    with pytest.raises(InvalidNameError):
        validate_version(None)


@pytest.mark.parametrize("good", ["m", "My_Model-2.v3", "x" * 128, "1", "a.b.c"])
def test_valid_model_names(good: str) -> None:
    assert validate_model_name(good) == good


@pytest.mark.parametrize("good", ["1.0.0", "v1.2.3", "1.0.0-rc.1+build.5", "production-v1", "9" * 64])
def test_valid_versions(good: str) -> None:
    assert validate_version(good) == good


@pytest.mark.parametrize("name", ["registry.db-wal", "registry.db-shm"])
def test_names_of_the_sqlite_index_files_are_refused(local_persistence: ModelPersistence, name: str) -> None:
    """The embedded index lives at <models_dir>/registry.db (+ -wal and -shm in WAL mode);
    a model called like one of those files would need a folder where a file already is."""
    local_persistence.save({"i": 0}, "m")  # make sure the WAL files exist
    with pytest.raises(InvalidNameError):
        local_persistence.save({"i": 1}, name)
    assert local_persistence.list_models() == ["m"]


_FORBIDDEN = re.compile(r"[/\\\x00]|\.\.")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("aZ09._-+/\\\x00 é")), max_size=20))
def test_validators_never_accept_path_tricks(text: str) -> None:
    for validate in (validate_model_name, validate_version):
        try:
            accepted = validate(text)
        except InvalidNameError:
            continue
        assert accepted == text
        assert not _FORBIDDEN.search(text)
        assert text.strip() == text and text


_unsafe_text = st.one_of(
    st.tuples(st.text(max_size=60), st.sampled_from(["/", "\\", "\x00", ".."]), st.text(max_size=60)).map("".join),
    st.text(alphabet=" \t\r\n\u00a0\u3000", max_size=5),
)


@settings(max_examples=150, deadline=None)
@given(_unsafe_text)
def test_validators_never_accept_arbitrary_unsafe_text(text: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_model_name(text)
    with pytest.raises(InvalidNameError):
        validate_version(text)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", fullmatch=True),
    version=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,20}", fullmatch=True),
)
def test_accepted_names_round_trip_through_save_and_load(
    local_persistence: ModelPersistence, name: str, version: str
) -> None:
    try:
        validate_model_name(name)
        validate_version(version)
    except InvalidNameError:
        assume(False)
    payload = {"name": name, "version": version}
    path = local_persistence.save(payload, name, version, overwrite=True)
    assert path.exists()
    assert path.parent.name == version and path.parent.parent.name == name
    assert local_persistence.load(name, version) == payload
    assert version in local_persistence.list_versions(name)
    assert name in local_persistence.list_models()


def test_unknown_model_in_api_raises_not_found(persistence: ModelPersistence) -> None:
    with pytest.raises(ModelNotFoundError, match="No versions found for model 'ghost'"):
        persistence.resolve_version("ghost")


# --------------------------------------------------------------------------------------
# to_json_safe (metadata conversion)
# --------------------------------------------------------------------------------------

_json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
)


def _numpy_leaves() -> st.SearchStrategy[object]:
    import numpy as np

    return st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).map(np.float64),
        st.floats(allow_nan=True, allow_infinity=True, width=32).map(np.float32),
        st.integers(min_value=-(2**62), max_value=2**62).map(np.int64),
        st.booleans().map(np.bool_),
        st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=5).map(np.array),
    )


_values = st.recursive(
    st.one_of(_json_leaves, _numpy_leaves()),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(
            st.one_of(st.text(max_size=5), st.integers(), st.floats(allow_nan=True), st.booleans()),
            children,
            max_size=4,
        ),
        st.frozensets(st.one_of(st.integers(), st.text(max_size=3)), max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(_values)
def test_to_json_safe_output_is_strict_json(value: object) -> None:
    out = to_json_safe(value)
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text) == out
    assert to_json_safe(out) == out  # already-safe values are left alone
