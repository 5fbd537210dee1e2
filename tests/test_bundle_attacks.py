"""Bundles and archives handed over by an attacker: they cannot fill the disk, smuggle
links or devices, reach models they do not carry, move aliases unasked, or pass a forged
manifest off as signed.

The attacker writes the bundle (or the ``archive`` artifact) but cannot reach the reader's
config folder, so cannot sign with a key the reader trusts.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from modelkeep import ModelPersistence, keys
from modelkeep.bundle import MANIFEST, SIGNATURE, BundleError, export_bundle, import_bundle
from modelkeep.cli import cli
from modelkeep.errors import IntegrityError, RegistryNotFoundError, SignatureError
from modelkeep.formats.archive import ModelArchive

GIB = 1 << 30
#: The file-size cap (RLIMIT_FSIZE) of the child processes that unpack a sparse member.
FSIZE_CAP = 16 << 20


# -- building hostile tars by hand ------------------------------------------------------------


def nothing_registered(p: ModelPersistence) -> bool:
    """No model in ``p``: a refused import leaves no registry behind (or an existing one unchanged)."""
    try:
        return p.list_models() == []
    except RegistryNotFoundError:
        return True


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


def _checksum(header: bytearray) -> bytearray:
    header[148:156] = b" " * 8
    header[148:155] = b"%06o\0" % sum(header)
    return header


def gnu_sparse_member(name: str, data: bytes, claimed: int) -> bytes:
    """A GNU sparse member (type ``S``) holding ``data`` and claiming ``claimed`` bytes: the
    rest is a "hole" that a reader fills with zeros. ``tarfile`` cannot write one, so the
    header is patched by hand (sparse map at 386, real size at 483, as GNU tar writes them)."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.type = tarfile.GNUTYPE_SPARSE
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header[386:398] = b"%011o\0" % 0  # sparse map entry 0: offset ...
    header[398:410] = b"%011o\0" % len(data)  # ... and length of the stored data
    header[482] = 0  # no extended sparse headers
    header[483:495] = b"%011o\0" % claimed  # the real size, holes included
    return bytes(_checksum(header)) + _pad(data)


def pax_sparse_member(name: str, data: bytes, claimed: int) -> bytes:
    """The same as a pax member (format 0.1: ``GNU.sparse.map``), which keeps type ``0``."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.pax_headers = {
        "GNU.sparse.size": str(claimed),
        "GNU.sparse.map": f"0,{len(data)}",
        "GNU.sparse.numblocks": "1",
    }
    return info.tobuf(format=tarfile.PAX_FORMAT) + _pad(data)


def plain_member(name: str, data: bytes, *, declared: int | None = None, **attrs: Any) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data) if declared is None else declared
    info.mode = 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info.tobuf(format=tarfile.PAX_FORMAT) + _pad(data)


def tar_bytes(*members: bytes) -> bytes:
    return b"".join(members) + b"\0" * (2 * tarfile.BLOCKSIZE)


# -- a real bundle to start from --------------------------------------------------------------
@pytest.fixture
def source(tmp_path: Path, classifier: Any) -> Path:
    """A registry with ``churn`` 1.0.0 and 1.1.0 (champion -> 1.1.0, tags, a description)."""
    with ModelPersistence(tmp_path / "source") as p:
        p.save(classifier, "churn", "1.0.0")
        p.save(classifier, "churn", "1.1.0", accuracy=0.9)
        p.set_alias("churn", "champion", "1.1.0")
        p.set_tag("churn", "team", "growth")
        p.set_tag("churn", "validated", "yes", version="1.0.0")
        p.set_description("churn", "Churn model")
    return tmp_path / "source"


@pytest.fixture
def bundle(tmp_path: Path, source: Path) -> Path:
    """``churn``'s bundle, signed with the per-user ECDSA key (the default)."""
    with ModelPersistence(source) as p:
        return export_bundle(p, "churn", tmp_path / "churn.mkb")


def members_of(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def artifact_of(members: dict[str, bytes]) -> str:
    return sorted(n for n in members if n.endswith(".joblib"))[0]


def rebuild(
    path: Path, members: dict[str, bytes], *, replace: dict[str, bytes] | None = None, extra: bytes = b""
) -> Path:
    """A bundle of ``members`` (without a signature: the attacker has no trusted key), where the
    raw tar bytes in ``replace`` stand in for a member and ``extra`` is appended."""
    parts = [(replace or {}).get(name) or plain_member(name, data) for name, data in members.items()]
    path.write_bytes(tar_bytes(*parts, extra))
    return path


def edit_manifest(members: dict[str, bytes], change: Callable[[dict[str, Any]], None]) -> None:
    manifest = json.loads(members[MANIFEST])
    change(manifest)
    members[MANIFEST] = json.dumps(manifest).encode()
    members.pop(SIGNATURE, None)


def sparse_bundle(tmp_path: Path, bundle: Path, member: Callable[[str, bytes, int], bytes] = gnu_sparse_member) -> Path:
    """The bundle with its first artifact replaced by a sparse member claiming 1 GiB; the
    manifest is rewritten to declare 1 GiB for it (and the signature dropped)."""
    members = members_of(bundle)
    name = artifact_of(members)

    def declare(manifest: dict[str, Any]) -> None:
        manifest["files"][name]["size"] = GIB

    edit_manifest(members, declare)
    return rebuild(tmp_path / "sparse.mkb", members, replace={name: member(name, members[name], GIB)})


def run_child(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter whose files may not grow past :data:`FSIZE_CAP`
    (RLIMIT_FSIZE; SIGXFSZ ignored so that a write past it fails with EFBIG)."""
    prelude = textwrap.dedent(
        f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({FSIZE_CAP}, {FSIZE_CAP}))
        """
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# -- 1. a 5.6 KB bundle that fills the disk -------------------------------------------------------
def test_a_sparse_member_claiming_a_gibibyte_is_refused_before_a_byte_is_written(tmp_path: Path, bundle: Path) -> None:
    """A few KB bundle whose artifact is a GNU sparse member claiming 1 GiB.

    Before: ``check_member`` accepted it (``TarInfo.isfile()`` is true for sparse members),
    and the import streamed ``tar.extractfile(member)`` to disk, hashing afterwards: a GiB of
    zeros per member, from a file of a few KB, before the digest was even compared. The first
    child process below runs that unguarded extraction under a 16 MiB file-size limit and
    hits the limit (EFBIG): it would have gone on to the full GiB. The second runs
    ``import_bundle`` under the same limit: refused by type, with nothing written.
    """
    hostile = sparse_bundle(tmp_path, bundle)
    assert hostile.stat().st_size < 32 << 10  # a few KB (with its history as event files)
    with tarfile.open(hostile) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".joblib"))
        assert member.isfile() and member.issparse() and member.size == GIB  # what the old check saw

    unguarded = run_child(
        f"""
        import tarfile
        written = 0
        with tarfile.open({str(hostile)!r}) as tar, open("out", "wb") as out:
            member = next(m for m in tar.getmembers() if m.name.endswith(".joblib"))
            source = tar.extractfile(member)
            try:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
                    written += len(chunk)
            except OSError as exc:
                print("EFBIG", written, exc.errno)
        """,
        tmp_path,
    )
    assert unguarded.stdout.startswith("EFBIG"), unguarded.stderr
    assert int(unguarded.stdout.split()[1]) >= FSIZE_CAP - (1 << 20)  # stopped by the limit, not by the tar

    guarded = run_child(
        f"""
        import sys
        from modelkeep import ModelPersistence
        from modelkeep.bundle import BundleError, import_bundle
        with ModelPersistence("dest") as dest:
            try:
                import_bundle(dest, {str(hostile)!r})
            except BundleError as exc:
                print("REFUSED", exc)
            import os
            print("CREATED", os.path.exists("dest"))
        """,
        tmp_path,
    )
    assert guarded.returncode == 0, guarded.stderr
    assert "REFUSED" in guarded.stdout and "a sparse file" in guarded.stdout
    assert "CREATED False" in guarded.stdout  # a refused import creates no registry


def test_the_cli_refuses_a_sparse_bundle_in_one_line(tmp_path: Path, bundle: Path) -> None:
    hostile = sparse_bundle(tmp_path, bundle)
    result = CliRunner().invoke(cli, ["--models-dir", str(tmp_path / "dest"), "import", str(hostile)])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "a sparse file" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("member", [gnu_sparse_member, pax_sparse_member], ids=["gnu", "pax"])
def test_both_sparse_encodings_are_refused(
    tmp_path: Path, bundle: Path, member: Callable[[str, bytes, int], bytes]
) -> None:
    hostile = sparse_bundle(tmp_path, bundle, member)
    with ModelPersistence(tmp_path / "dest") as dest:
        with pytest.raises(BundleError, match=r"a sparse file.*nothing was imported"):
            import_bundle(dest, hostile)
        assert nothing_registered(dest)


def _symlink(name: str) -> bytes:
    return plain_member(name, b"", type=tarfile.SYMTYPE, linkname="/etc/passwd")


def _hardlink(name: str) -> bytes:
    return plain_member(name, b"", type=tarfile.LNKTYPE, linkname="manifest.json")


def _device(name: str) -> bytes:
    return plain_member(name, b"", type=tarfile.CHRTYPE, devmajor=1, devminor=5)  # /dev/zero


def _fifo(name: str) -> bytes:
    return plain_member(name, b"", type=tarfile.FIFOTYPE)


def _contiguous(name: str) -> bytes:
    return plain_member(name, b"evil", type=tarfile.CONTTYPE)


@pytest.mark.parametrize(
    ("make", "kind"),
    [(_symlink, "a link"), (_hardlink, "a link"), (_device, "a device"), (_fifo, "a FIFO"), (_contiguous, "contig")],
)
def test_links_devices_fifos_and_other_types_are_refused(
    tmp_path: Path, bundle: Path, make: Callable[[str], bytes], kind: str
) -> None:
    """Each type, in place of the artifact (so the manifest still lists it) and as an extra member."""
    members = members_of(bundle)
    name = artifact_of(members)
    for hostile in (
        rebuild(tmp_path / "replaced.mkb", members, replace={name: make(name)}),
        rebuild(tmp_path / "extra.mkb", members, extra=make("store/churn/extra")),
    ):
        with ModelPersistence(tmp_path / "dest") as dest:
            with pytest.raises(BundleError, match=f"{kind}.*nothing was imported"):
                import_bundle(dest, hostile)
            assert nothing_registered(dest)


def test_a_member_larger_than_the_manifest_declares_is_refused_before_it_is_written(
    tmp_path: Path, bundle: Path
) -> None:
    members = members_of(bundle)
    name = artifact_of(members)
    members[name] += b"\0" * (4 << 20)  # 4 MiB more than the manifest says
    hostile = rebuild(tmp_path / "larger.mkb", members)
    with ModelPersistence(tmp_path / "dest") as dest:
        with pytest.raises(BundleError, match=r"holds \d+ bytes, but the bundle's manifest declares \d+"):
            import_bundle(dest, hostile)
        assert nothing_registered(dest)


def test_a_member_claiming_more_than_the_bundle_holds_is_refused(tmp_path: Path, bundle: Path) -> None:
    """A header that claims 1 GiB in a bundle of a few KB (the manifest agrees: the attacker wrote both):
    refused while listing, with nothing unpacked."""
    members = members_of(bundle)
    name = artifact_of(members)
    edit_manifest(members, lambda m: m["files"][name].update(size=GIB))
    hostile = rebuild(tmp_path / "claims.mkb", members, replace={name: plain_member(name, members[name], declared=GIB)})
    with ModelPersistence(tmp_path / "dest") as dest:
        with pytest.raises(BundleError, match=r"more than the bundle file holds|damaged"):
            import_bundle(dest, hostile)
        assert nothing_registered(dest)


def test_max_bundle_bytes_caps_the_total_before_unpacking(tmp_path: Path, bundle: Path) -> None:
    with ModelPersistence(tmp_path / "dest") as dest:
        with pytest.raises(BundleError, match="max_bundle_bytes"):
            import_bundle(dest, bundle, max_bundle_bytes=1000)
        assert nothing_registered(dest)
    runner = CliRunner()
    dest = str(tmp_path / "c")
    refused = runner.invoke(cli, ["--models-dir", dest, "import", str(bundle), "--max-bundle-bytes", "1K"])
    assert refused.exit_code == 1 and "max_bundle_bytes" in refused.output and "Traceback" not in refused.output
    fine = runner.invoke(cli, ["--models-dir", dest, "import", str(bundle), "--max-bundle-bytes", "1G"])
    assert fine.exit_code == 0, fine.output


# -- 2. lifecycle data stays with the models the bundle carries --------------------------------
def test_lifecycle_data_for_a_model_not_in_the_bundle_is_ignored(tmp_path: Path, bundle: Path, classifier: Any) -> None:
    """The attacker adds tags, a description and an alias for ``fraud``, which the bundle does
    not carry, and for ``churn 1.1.0``, a version it does carry... and ``churn 9.0.0``, which it does not."""
    with ModelPersistence(tmp_path / "dest") as dest:
        dest.save(classifier, "fraud", "1.0.0")
        dest.save(classifier, "fraud", "2.0.0")
        dest.set_alias("fraud", "champion", "2.0.0")
        members = members_of(bundle)

        def widen(manifest: dict[str, Any]) -> None:
            manifest["lifecycle"]["fraud"] = {
                "description": "pwned",
                "tags": {"owner": "attacker"},
                "aliases": {"champion": "1.0.0"},
                "version_tags": {"1.0.0": {"approved": "yes"}},
                "version_descriptions": {"1.0.0": "approved"},
            }
            manifest["lifecycle"]["churn"]["version_tags"]["9.0.0"] = {"approved": "yes"}

        edit_manifest(members, widen)
        report = import_bundle(dest, rebuild(tmp_path / "wide.mkb", members), with_aliases=True)
        assert sorted(report.imported) == [("churn", "1.0.0"), ("churn", "1.1.0")]
        assert dest.get_tags("fraud") == {} and dest.get_description("fraud") is None
        assert dest.get_tags("fraud", version="1.0.0") == {}
        assert dest.get_aliases("fraud") == {"champion": "2.0.0"}
        assert [e.action for e in dest.history("fraud")] == ["save", "save", "alias_set"]  # the owner's own
        assert any("'fraud', a model the bundle does not carry" in why for why in report.ignored)
        assert any("churn 9.0.0" in why for why in report.ignored)
        assert set(report.lifecycle) == {"churn"}
        assert dest.get_tags("churn") == {"team": "growth"}  # what it carries still applies


def test_alias_moves_are_reported_and_applied_only_with_with_aliases(tmp_path: Path, bundle: Path) -> None:
    runner = CliRunner()
    dest = str(tmp_path / "dest")
    plain = runner.invoke(cli, ["--models-dir", dest, "import", str(bundle)])
    assert plain.exit_code == 0, plain.output
    assert "churn champion: (unset) -> 1.1.0" in plain.output and "--with-aliases" in plain.output
    with ModelPersistence(dest) as p:
        assert p.get_aliases("churn") == {}
        assert p.get_tags("churn") == {"team": "growth"}
    as_json = runner.invoke(cli, ["--models-dir", dest, "import", str(bundle), "--json"])
    report = json.loads(as_json.output)
    assert report["alias_moves"] == {"churn": {"champion": {"from": None, "to": "1.1.0"}}}
    assert report["aliases_applied"] is False
    moved = runner.invoke(cli, ["--models-dir", dest, "import", str(bundle), "--with-aliases", "--json"])
    assert moved.exit_code == 0, moved.output
    assert json.loads(moved.output)["aliases_applied"] is True
    with ModelPersistence(dest) as p:
        assert p.get_aliases("churn") == {"champion": "1.1.0"}
        p.set_alias("churn", "champion", "1.0.0")  # the owner moves it back
    again = import_bundle(ModelPersistence(dest), bundle)
    assert again.alias_moves == {"churn": {"champion": {"from": "1.0.0", "to": "1.1.0"}}}
    with ModelPersistence(dest) as p:
        assert p.get_aliases("churn") == {"champion": "1.0.0"}


# -- 3. manifests signed with ECDSA keys ---------------------------------------------------------
def test_an_ecdsa_signed_manifest_is_verified_and_a_tampered_one_refused(tmp_path: Path, bundle: Path) -> None:
    members = members_of(bundle)
    signature = members[SIGNATURE].decode().strip()
    user = keys.user_key(create=False)
    assert user is not None and signature.startswith(f"ecdsa-p256:{user.fingerprint}:")
    with ModelPersistence(tmp_path / "dest") as dest:
        report = import_bundle(dest, bundle)
        assert report.signature_checked and report.signature["status"] == "trusted"
        assert report.signature["fingerprint"] == user.fingerprint

    manifest = json.loads(members[MANIFEST])
    manifest["lifecycle"]["churn"]["tags"]["owner"] = "attacker"
    members[MANIFEST] = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    tampered = tmp_path / "tampered.mkb"
    tampered.write_bytes(tar_bytes(*(plain_member(n, d) for n, d in members.items())))  # signature kept
    with ModelPersistence(tmp_path / "dest2") as dest:
        with pytest.raises(SignatureError, match=r"does not verify.*nothing was imported"):
            import_bundle(dest, tampered)
        assert nothing_registered(dest)


def test_a_signer_the_reader_does_not_trust_is_reported_and_refused_when_signatures_are_required(
    tmp_path: Path, classifier: Any
) -> None:
    mallory = keys.generate("mallory")
    key_file = tmp_path / "mallory.pem"
    keys.write_key_file(key_file, mallory.pem())
    public = tmp_path / "mallory.pub"
    public.write_bytes(mallory.public.pem())
    with ModelPersistence(tmp_path / "theirs", signing_key_file=key_file) as theirs:
        theirs.save(classifier, "churn", "1.0.0")
        signed = export_bundle(theirs, "churn", tmp_path / "theirs.mkb")
    with ModelPersistence(tmp_path / "mine") as mine:
        report = import_bundle(mine, signed)
        assert not report.signature_checked and report.signature["status"] == "untrusted"
        assert "mallory" in str(report) and "does not trust" in str(report)
    with ModelPersistence(tmp_path / "strict", require_signatures=True) as strict:
        with pytest.raises(SignatureError, match=r"not signed by a trusted key.*nothing was imported"):
            import_bundle(strict, signed)
        assert nothing_registered(strict)
    with ModelPersistence(tmp_path / "trusting", require_signatures=True, trusted_keys=[str(public)]) as trusting:
        report = import_bundle(trusting, signed)
        assert report.signature_checked and report.signature["name"] == "mallory"


def test_an_unsigned_bundle_is_refused_when_signatures_are_required(tmp_path: Path, bundle: Path) -> None:
    members = members_of(bundle)
    del members[SIGNATURE]
    with (
        ModelPersistence(tmp_path / "dest", require_signatures=True) as dest,
        pytest.raises(SignatureError, match=r"not signed.*nothing was imported"),
    ):
        import_bundle(dest, rebuild(tmp_path / "unsigned.mkb", members))


# -- 4. the archive format: the same checks in _tarsafe.extract_all -----------------------------
def _archive(*members: bytes) -> ModelArchive:
    return ModelArchive(gzip.compress(tar_bytes(*members)), "mlflow-model")


def _stored_and_loaded(persistence: ModelPersistence, archive: ModelArchive) -> ModelArchive:
    """Through a real registry: saved with the ``archive`` format and loaded back."""
    persistence.save_version(archive, "folder", "1.0.0", serialization_format="archive")
    loaded = persistence.load("folder", "1.0.0")
    assert isinstance(loaded, ModelArchive) and loaded.data == archive.data
    return loaded


def test_archive_with_a_sparse_member_is_refused(tmp_path: Path, local_persistence: ModelPersistence) -> None:
    """A 200-byte ``.tar.gz`` claiming a GiB; before, ``extract_all`` unpacked it in full."""
    hostile = _archive(plain_member("MLmodel", b"flavors: {}\n"), gnu_sparse_member("model.pkl", b"x", GIB))
    loaded = _stored_and_loaded(local_persistence, hostile)
    assert len(loaded.data) < 1024
    with tarfile.open(fileobj=io.BytesIO(loaded.data)) as tar:
        assert tar.getmember("model.pkl").isfile()  # what the old check asked
    dest = tmp_path / "unpacked"
    with pytest.raises(IntegrityError, match=r"'model.pkl'.*a sparse file"):
        loaded.extract(dest)
    assert not dest.exists() or not any(dest.rglob("*"))
    with pytest.raises(IntegrityError, match="a sparse file"):
        loaded.read("model.pkl")


def _zeros_archive(size: int) -> ModelArchive:
    """A real ``.tar.gz`` of one file of ``size`` zero bytes (compressed about 1000 to 1)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(plain_member("model.pkl", b"", declared=size))
        chunk = b"\0" * (1 << 20)
        for _ in range(size >> 20):
            gz.write(chunk)
        gz.write(b"\0" * (2 * tarfile.BLOCKSIZE))
    return ModelArchive(buf.getvalue(), "mlflow-model")


def test_archive_that_unpacks_past_its_limit_is_refused(tmp_path: Path, local_persistence: ModelPersistence) -> None:
    """A 300 KB ``.tar.gz`` that unpacks to 300 MiB: more than the default limit
    (max(256 MiB, 64 x the archive's size)); and an honest 1 MiB file under a ``max_bytes`` of 1000."""
    bomb = _stored_and_loaded(local_persistence, _zeros_archive(300 << 20))
    assert len(bomb.data) < 1 << 20
    dest = tmp_path / "unpacked"
    with pytest.raises(IntegrityError, match="unpacks to 314572800 bytes, more than the 268435456 allowed"):
        bomb.extract(dest)
    assert not dest.exists() or not any(dest.rglob("*"))
    honest = _archive(plain_member("MLmodel", b"flavors: {}\n"), plain_member("model.pkl", b"\1" * (1 << 20)))
    with pytest.raises(IntegrityError, match="raise max_bytes"):
        honest.extract(dest, max_bytes=1000)
    assert sorted(p.name for p in honest.extract(dest).iterdir()) == ["MLmodel", "model.pkl"]
    assert (dest / "model.pkl").read_bytes() == b"\1" * (1 << 20)


@pytest.mark.parametrize("make", [_symlink, _hardlink, _device, _fifo])
def test_archive_with_links_or_devices_is_refused(tmp_path: Path, make: Callable[[str], bytes]) -> None:
    with pytest.raises(IntegrityError, match="only regular files and folders"):
        _archive(plain_member("MLmodel", b"flavors: {}\n"), make("model.pkl")).extract(tmp_path / "out")
    assert not (tmp_path / "out" / "model.pkl").exists()
