"""Portable bundles: round trips local <-> PostgreSQL + S3, tampering refused before registering."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from modelkeep import ModelPersistence
from modelkeep.bundle import FORMAT_VERSION, MANIFEST, SIGNATURE, BundleError, export_bundle, import_bundle
from modelkeep.cli import cli
from modelkeep.errors import IntegrityError, SignatureError, VersionExistsError
from tests.s3_server import S3Bucket
from tests.test_team import team_persistence

KEY = "bundle-test-key"


def _fill(p: ModelPersistence, iris_data: Any) -> None:
    from sklearn.linear_model import LogisticRegression

    X, y = iris_data
    p.save(LogisticRegression(max_iter=500, C=1.0).fit(X, y), "churn", "1.0.0", accuracy=0.96)
    p.save(LogisticRegression(max_iter=500, C=0.1).fit(X, y), "churn", "1.1.0", accuracy=0.93)
    p.save_version({"weights": np.arange(50_000, dtype=np.float64)}, "churn", "2.0.0", serialization_format="native")
    p.save(LogisticRegression(max_iter=500).fit(X, y), "other", "1.0.0")


def _same_versions(a: ModelPersistence, b: ModelPersistence, name: str, X: Any) -> None:
    assert a.list_versions(name) == b.list_versions(name)
    for version in a.list_versions(name):
        ra, rb = a.get_version(name, version), b.get_version(name, version)
        assert ra.artifact is not None and rb.artifact is not None
        assert (ra.artifact.sha256, ra.created_at, ra.metadata) == (rb.artifact.sha256, rb.created_at, rb.metadata)
        ma, mb = a.load(name, version), b.load(name, version)
        if isinstance(ma, dict):
            assert np.array_equal(ma["weights"], mb["weights"])
        else:
            assert np.array_equal(ma.predict(X), mb.predict(X))


@pytest.mark.postgres
@pytest.mark.s3
def test_round_trip_local_to_postgres_s3_and_back(
    tmp_path: Path,
    s3_bucket: S3Bucket,
    pg_schema: str,
    iris_data: Any,
) -> None:
    X, _ = iris_data
    with ModelPersistence(tmp_path / "local", signing_key=KEY) as local:
        _fill(local, iris_data)
        bundle = export_bundle(local, "churn", tmp_path / "churn.mkb")
        with team_persistence(s3_bucket, pg_schema, signing_key=KEY) as team:
            report = import_bundle(team, bundle)
            assert sorted(report.imported) == [("churn", "1.0.0"), ("churn", "1.1.0"), ("churn", "2.0.0")]
            assert report.signature_checked
            _same_versions(local, team, "churn", X)
            assert team.list_models() == ["churn"]
            again = import_bundle(team, bundle)
            assert again.imported == [] and len(again.skipped) == 3
            back = export_bundle(team, "churn", tmp_path / "back.mkb", versions=["1.1.0", "2.0.0"])
        with ModelPersistence(tmp_path / "fresh", signing_key=KEY) as fresh:
            import_bundle(fresh, back)
            assert fresh.list_versions("churn") == ["1.1.0", "2.0.0"]
            assert np.array_equal(fresh.load("churn", "1.1.0").predict(X), local.load("churn", "1.1.0").predict(X))


@pytest.fixture
def signed_bundle(tmp_path: Path, iris_data: Any) -> Path:
    with ModelPersistence(tmp_path / "source", signing_key=KEY) as p:
        _fill(p, iris_data)
        return export_bundle(p, "churn", tmp_path / "churn.mkb")


def _members(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _write(path: Path, members: dict[str, bytes], extra: Callable[[tarfile.TarFile], None] | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            extra(tar)
    return path


def _artifacts(members: dict[str, bytes]) -> list[str]:
    return sorted(n for n in members if n.endswith(".joblib"))


def _flip_a_byte(members: dict[str, bytes]) -> None:
    name = _artifacts(members)[0]
    data = bytearray(members[name])
    data[len(data) // 2] ^= 0x01
    members[name] = bytes(data)


def _swap_files(members: dict[str, bytes]) -> None:
    a, b = _artifacts(members)[:2]
    members[a], members[b] = members[b], members[a]


def _rewrite_manifest_without_key(members: dict[str, bytes]) -> None:
    """An attacker swaps an artifact for a hostile pickle and fixes every digest, but has no key."""
    name = _artifacts(members)[0]
    members[name] = pickle.dumps({"not": "the model"})
    manifest = json.loads(members[MANIFEST])
    digest = hashlib.sha256(members[name]).hexdigest()
    manifest["files"][name] = {"sha256": digest, "size": len(members[name])}
    for entry in manifest["versions"]:
        if entry["artifact"] == name:
            entry["sha256"] = digest
    members[MANIFEST] = json.dumps(manifest).encode()


def _drop_signature(members: dict[str, bytes]) -> None:
    del members[SIGNATURE]


def _extra_member(members: dict[str, bytes]) -> None:
    members["store/churn/9.9.9/churn_v9.9.9.joblib"] = b"smuggled"


TAMPERING = {
    "one byte flipped": (_flip_a_byte, BundleError),
    "a file swapped": (_swap_files, BundleError),
    "manifest rewritten without the key": (_rewrite_manifest_without_key, SignatureError),
    "signature removed": (_drop_signature, SignatureError),
    "a member not in the manifest": (_extra_member, BundleError),
}


@pytest.mark.parametrize("attack", list(TAMPERING))
def test_a_tampered_bundle_is_refused_before_anything_is_registered(
    tmp_path: Path, signed_bundle: Path, attack: str
) -> None:
    change, error = TAMPERING[attack]
    members = _members(signed_bundle)
    change(members)
    tampered = _write(tmp_path / "tampered.mkb", members)
    with ModelPersistence(tmp_path / "dest", signing_key=KEY) as dest:
        with pytest.raises(error, match="nothing was imported"):
            import_bundle(dest, tampered)
        assert not (tmp_path / "dest").exists()  # a refused import creates no registry, no file


def _link(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("store/churn/link")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    tar.addfile(info)


def _named(name: str) -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))

    return add


@pytest.mark.parametrize(
    ("extra", "problem"),
    [(_named("../escaped"), "'..'"), (_named("/tmp/absolute"), "absolute path"), (_link, "a link")],
)
def test_unsafe_member_names_are_refused(
    tmp_path: Path, signed_bundle: Path, extra: Callable[[tarfile.TarFile], None], problem: str
) -> None:
    hostile = _write(tmp_path / "hostile.mkb", _members(signed_bundle), extra)
    with ModelPersistence(tmp_path / "dest", signing_key=KEY) as dest, pytest.raises(BundleError, match=problem):
        import_bundle(dest, hostile)
    assert not (tmp_path / "dest").exists()  # a refused import creates no registry, no file
    assert not (tmp_path / "escaped").exists()


def test_without_a_key_digests_are_still_checked_and_newer_formats_refused(tmp_path: Path, signed_bundle: Path) -> None:
    members = _members(signed_bundle)
    _flip_a_byte(members)
    with ModelPersistence(tmp_path / "dest") as dest:
        with pytest.raises(IntegrityError, match="does not match the bundle's manifest"):
            import_bundle(dest, _write(tmp_path / "flipped.mkb", members))
        members = _members(signed_bundle)
        manifest = json.loads(members[MANIFEST])
        manifest["format_version"] = FORMAT_VERSION + 1
        members[MANIFEST] = json.dumps(manifest).encode()
        with pytest.raises(BundleError, match="upgrade modelkeep"):
            import_bundle(dest, _write(tmp_path / "newer.mkb", members))
        assert not (tmp_path / "dest").exists()  # a refused import creates no registry, no file
        report = import_bundle(dest, signed_bundle)  # a signed bundle imports without a key, unchecked
        assert not report.signature_checked and len(report.imported) == 3


def test_a_conflicting_version_stops_the_import_before_anything_is_copied(
    tmp_path: Path, signed_bundle: Path, iris_data: Any
) -> None:
    from sklearn.linear_model import LogisticRegression

    X, y = iris_data
    with ModelPersistence(tmp_path / "dest", signing_key=KEY) as dest:
        dest.save(LogisticRegression(max_iter=500, C=5.0).fit(X, y), "churn", "1.1.0")
        with pytest.raises(VersionExistsError, match=r"churn 1\.1\.0"):
            import_bundle(dest, signed_bundle)
        assert dest.list_versions("churn") == ["1.1.0"]


def test_lifecycle_travels_with_the_bundle(tmp_path: Path, iris_data: Any) -> None:
    with ModelPersistence(tmp_path / "source") as src:
        _fill(src, iris_data)
        has_api = hasattr(src, "set_alias")
        if has_api:
            src.set_alias("churn", "champion", "1.1.0")  # type: ignore[attr-defined]
            src.set_tag("churn", "team", "growth")  # type: ignore[attr-defined]
            src.set_tag("churn", "validated", "yes", version="1.0.0")  # type: ignore[attr-defined]
            src.set_description("churn", "Churn model")  # type: ignore[attr-defined]
        bundle = export_bundle(src, "churn", tmp_path / "churn.mkb")
    manifest = json.loads(_members(bundle)[MANIFEST])
    assert set(manifest["lifecycle"]) == {"churn"} and "history" in manifest
    with ModelPersistence(tmp_path / "dest") as dest:
        report = import_bundle(dest, bundle, with_aliases=True)
        assert report.lifecycle_applied is has_api
        if has_api:
            assert report.aliases_applied
            assert report.alias_moves == {"churn": {"champion": {"from": None, "to": "1.1.0"}}}
            assert dest.get_aliases("churn") == {"champion": "1.1.0"}  # type: ignore[attr-defined]
            assert dest.get_tags("churn") == {"team": "growth"}  # type: ignore[attr-defined]
            assert dest.get_tags("churn", version="1.0.0") == {"validated": "yes"}  # type: ignore[attr-defined]
        else:
            assert report.lifecycle["churn"]["aliases"] == {}


def test_cli_export_and_import(tmp_path: Path, iris_data: Any) -> None:
    with ModelPersistence(tmp_path / "a") as a:
        _fill(a, iris_data)
    out = tmp_path / "churn.mkb"
    runner = CliRunner()
    result = runner.invoke(
        cli, ["--models-dir", str(tmp_path / "a"), "export", "--model-name", "churn", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        cli,
        ["--models-dir", str(tmp_path / "a"), "export", "--model-name", "churn", "--versions", "1.0.0", "-o", str(out)],
    )
    assert result.exit_code == 1 and "already exists" in result.output
    result = runner.invoke(cli, ["--models-dir", str(tmp_path / "b"), "import", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["imported"]) == 3
    out.write_bytes(out.read_bytes()[: out.stat().st_size // 2])  # truncated: the manifest is gone
    result = runner.invoke(cli, ["--models-dir", str(tmp_path / "c"), "import", str(out)])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "Traceback" not in result.output


def test_readme_bundle_examples_run_as_shown(tmp_path: Path, iris_data: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/mlflow.md's commands, then its standard-library reader in a Python without site-packages."""
    import subprocess
    import sys

    from tests._readme import readme_blocks, run_cli_lines

    monkeypatch.chdir(tmp_path)
    with ModelPersistence("models") as p:  # the default models_dir
        _fill(p, iris_data)
    for commands in readme_blocks("Moving out: portable bundles", "bash", "docs/mlflow.md"):
        run_cli_lines(commands)
    with ModelPersistence("other_models") as other:
        assert other.list_versions("churn") == ["1.0.0", "1.1.0", "2.0.0"]
    # The first python block fills a registry; the last one reads the bundle.
    reader = readme_blocks("Moving out: portable bundles", "python", "docs/mlflow.md")[-1]
    done = subprocess.run(
        [sys.executable, "-S", "-I", "-c", reader], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "churn 1.0.0 joblib store/churn/1.0.0/churn_v1.0.0.joblib",
        "churn 1.1.0 joblib store/churn/1.1.0/churn_v1.1.0.joblib",
        "churn 2.0.0 native store/churn/2.0.0/churn_v2.0.0.mkpkl",
    ]


def test_an_import_never_touches_the_index_in_modelkeep_registry_url(
    tmp_path: Path, classifier: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The import's scratch registry used to take MODELKEEP_REGISTRY_URL over its own folder, and
    rebuilt that index (the team's) from the bundle: the team's models were gone."""
    with ModelPersistence(tmp_path / "source") as p:
        p.save(classifier, "churn", "1.0.0")
        bundle = export_bundle(p, "churn", tmp_path / "churn.mkb")
    with ModelPersistence(tmp_path / "team") as team:
        team.save({"w": 1}, "fraud", "1.0.0")
    monkeypatch.setenv("MODELKEEP_REGISTRY_URL", f"sqlite:///{tmp_path / 'team' / 'registry.db'}")
    with ModelPersistence(tmp_path / "dest", registry_url=f"sqlite:///{tmp_path / 'dest.db'}") as dest:
        assert import_bundle(dest, bundle).imported == [("churn", "1.0.0")]
    monkeypatch.delenv("MODELKEEP_REGISTRY_URL")
    with ModelPersistence(tmp_path / "team") as team:
        assert team.list_models() == ["fraud"] and team.list_versions("fraud") == ["1.0.0"]


def test_an_import_stages_privately_whatever_the_environment_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bundle is checked in a private staging registry: MODELKEEP_REGISTRY_URL (here the
    destination's own index, as a CLI user's shell sets it) is the destination's, never the
    staging's, so the check cannot rebuild the destination's index from the bundle alone."""
    with ModelPersistence(tmp_path / "a") as a:
        a.save({"w": 1}, "churn", "1.0.0")
        bundle = export_bundle(a, "churn", tmp_path / "churn.mkb")
    (tmp_path / "b").mkdir()
    url = f"sqlite:///{tmp_path / 'b' / 'registry.db'}"
    with ModelPersistence(tmp_path / "b", registry_url=url) as b:
        b.save({"k": 1}, "keep", "1.0.0")
    monkeypatch.setenv("MODELKEEP_REGISTRY_URL", url)
    with ModelPersistence(tmp_path / "b") as b:
        report = import_bundle(b, bundle)
        assert [tuple(v) for v in report.imported] == [("churn", "1.0.0")]
        assert b.list_models() == ["churn", "keep"] and b.load("keep") == {"k": 1}
