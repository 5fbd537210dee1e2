"""Public-key signatures, the per-user key, trusted keys, rotation and re-signing.

Writers hold private keys; readers hold public keys. A reader's verdict on a
version decides whether the format may trust the globals recorded at save
(the ``signed`` option), so these tests watch that option through a small
format registered for the test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from modelkeep import ConfigError, ModelPersistence, SignatureError, keys, signing
from modelkeep.formats import FORMATS, _cache
from modelkeep.formats.pickle_format import PickleFormat
from modelkeep.layout import sidecar_bytes, sidecar_key
from modelkeep.maintenance import SIGNATURE

from ._http_server import HttpServer, ServerSide, running_server
from .conftest import IndexTarget

SEEN: list[bool | None] = []


class Registries:
    """Opens the test's registry with a reader's or writer's options: directly (``direct``), or as
    a client of a registry server in front of it (``http``; started on first use, in process). Over
    HTTP the keys are the client's; :meth:`served` is the server's own registry, what a
    compromised server (or anyone with its index and store) writes to."""

    def __init__(self, kind: str, index_target: IndexTarget, workdir: Path, stack: contextlib.ExitStack) -> None:
        self.kind, self.target, self.workdir, self.stack = kind, index_target, workdir, stack
        self.servers: dict[str, HttpServer] = {}

    def __call__(self, models: Path, **options: Any) -> Any:
        if self.kind == "direct":
            return self.target.persistence(models, **options)
        if str(models) not in self.servers:
            side = ServerSide(str(models), self.target.url, self.target.schema)
            workdir = self.workdir / f"server-{len(self.servers)}"
            self.servers[str(models)] = self.stack.enter_context(running_server(side, workdir, in_process=True))
        return self.servers[str(models)].client(**options)

    def served(self, registry: Any) -> ModelPersistence:
        """The registry itself: ``registry`` when direct, else the one its server uses."""
        if self.kind == "direct":
            return registry  # type: ignore[no-any-return]
        found = next(s.served for s in self.servers.values() if s.url == registry.url)
        assert found is not None
        return found


@pytest.fixture
def registries(index_target: IndexTarget, registry_kind: str, tmp_path: Path) -> Iterator[Registries]:
    """:class:`Registries` of this test, on each index backend, direct and over HTTP."""
    with contextlib.ExitStack() as stack:
        yield Registries(registry_kind, index_target, tmp_path, stack)


class SpyFormat(PickleFormat):
    """The pickle format, remembering the ``signed`` option each load receives."""

    name = "spy"

    def load(self, file: IO[bytes], compression: str | None, **options: Any) -> Any:
        SEEN.append(options.get("signed"))
        return super().load(file, compression, **options)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[bool | None]:
    monkeypatch.setitem(FORMATS, "spy", f"{__name__}:SpyFormat")
    monkeypatch.delitem(_cache, "spy", raising=False)
    SEEN.clear()
    yield SEEN
    _cache.pop("spy", None)


def key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """A private key file and its public key file, written as ``modelkeep keys generate --out`` does."""
    key = keys.generate(name)
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    assert keys.write_key_file(private, key.pem())
    keys.write_key_file(public, key.public.pem(), mode=0o644)
    return private, public


@pytest.fixture
def other_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Become another user: a config folder of one's own (so another per-user key)."""
    folder = tmp_path / "other-user-config"
    monkeypatch.setenv("MODELKEEP_CONFIG_DIR", str(folder))
    return folder


# -- readers with public keys only -------------------------------------------------------------


def test_a_reader_with_only_the_public_key_verifies_and_loads_but_cannot_sign(
    registries: Registries, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spy: list[bool | None]
) -> None:
    private, public = key_pair(tmp_path, "ci-writer")
    models = tmp_path / "models"
    with registries(models, signing_key_file=str(private), serialization_format="spy") as writer:
        writer.save({"w": 1}, "m", "1.0.0")
    monkeypatch.setenv("MODELKEEP_CONFIG_DIR", str(tmp_path / "server-config"))  # a production server
    with registries(models, trusted_keys=[str(public)], require_signatures=True) as reader:
        assert reader.load("m", "1.0.0") == {"w": 1}
        assert spy == [True]
        status = reader.signature_status("m", "1.0.0")
        assert (status.status, status.name) == ("trusted", "ci-writer")
        assert status.fingerprint == keys.load_public_key(public).fingerprint
        # What a compromised reader can do: save with its own (per-user) key ...
        reader.save_version({"evil": 1}, "m", "1.0.1", serialization_format="spy")
        # ... or rewrite a version and sign it under the writer's fingerprint with the key it has.
        rec = reader.get_version("m", "1.0.0")
        assert rec.artifact is not None
        forged = dataclasses.replace(rec, artifact=dataclasses.replace(rec.artifact, size=rec.artifact.size + 1))
        own = keys.user_key(create=False)
        assert own is not None
        fake = signing.sign(forged, own).split(":")
        fake[1] = status.fingerprint  # claim to be the writer
        registries.served(reader).index.put(dataclasses.replace(forged, signature=":".join(fake)))
    monkeypatch.setenv("MODELKEEP_CONFIG_DIR", str(tmp_path / "second-server-config"))
    with registries(models, trusted_keys=[str(public)]) as second:
        with pytest.raises(SignatureError, match="the manifest was altered"):
            second.load("m", "1.0.0")
        assert second.signature_status("m", "1.0.1").status == "untrusted"
        assert second.load("m", "1.0.1") == {"evil": 1}
        assert spy == [True, False]  # loads, but its recorded globals are not trusted
    with (
        registries(models, trusted_keys=[str(public)], require_signatures=True) as strict,
        pytest.raises(SignatureError, match="not signed by a trusted key"),
    ):
        strict.load("m", "1.0.1")


def test_a_version_signed_with_an_untrusted_key_is_treated_as_unsigned(
    tmp_path: Path, other_user: Path, spy: list[bool | None]
) -> None:
    a_private, a_public = key_pair(tmp_path, "alice")
    _, b_public = key_pair(tmp_path, "bob")
    models = tmp_path / "models"
    with ModelPersistence(models, serialization_format="spy", signing_key_file=str(a_private)) as alice:
        alice.save({"x": 1}, "m", "1.0.0")
        assert alice.load("m", "1.0.0") == {"x": 1}
    rec = ModelPersistence(models).get_version("m", "1.0.0")
    with ModelPersistence(models, trusted_keys=[str(b_public)]) as p:
        verdict = p.signature_status("m", "1.0.0")
        assert (verdict.status, verdict.trusted, verdict.name) == ("untrusted", False, "alice")
        assert p.load("m", "1.0.0") == {"x": 1}
        p.index.put(dataclasses.replace(rec, signature=None))
        assert p.load("m", "1.0.0") == {"x": 1}  # plainly unsigned: the same answer
        p.index.put(rec)
    with ModelPersistence(models, trusted_keys=[str(a_public)]) as p:
        assert p.load("m", "1.0.0") == {"x": 1}
    assert spy == [True, False, False, True]


def test_the_users_own_key_signs_every_save_and_is_trusted_by_their_readers(
    tmp_path: Path, private_config_dir: Path, spy: list[bool | None]
) -> None:
    assert not private_config_dir.exists()  # nothing until the first save
    with ModelPersistence(tmp_path / "models", serialization_format="spy") as p:
        rec = p.save_version({"a": 1}, "m")
    key_file = private_config_dir / keys.USER_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(private_config_dir.stat().st_mode) == 0o700
    assert rec.signature is not None and rec.signature.startswith("ecdsa-p256:")
    with ModelPersistence(tmp_path / "models") as again:  # a new reader, the same user
        assert again.load("m") == {"a": 1}
    assert spy == [True]
    assert not [f for f in (tmp_path / "models").rglob("*") if f.suffix in (".pem", ".pub")]
    assert b"PRIVATE" not in b"".join(f.read_bytes() for f in (tmp_path / "models").rglob("*.json"))


def test_the_per_user_key_is_created_once_by_racing_processes(private_config_dir: Path, tmp_path: Path) -> None:
    start = tmp_path / "start"
    code = (
        "import os, sys, time\n"
        "from modelkeep import keys\n"
        "while not os.path.exists(sys.argv[1]): time.sleep(0.001)\n"
        "print(keys.user_key(create=True).fingerprint)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(start)], stdout=subprocess.PIPE, text=True) for _ in range(8)
    ]
    time.sleep(0.5)
    start.touch()
    outputs = [proc.communicate(timeout=120)[0].strip() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert len(set(outputs)) == 1 and len(outputs[0]) == 64
    assert keys.user_key(create=False).fingerprint == outputs[0]  # type: ignore[union-attr]
    assert sorted(os.listdir(private_config_dir)) == [keys.USER_KEY_FILE]  # no temp files left
    assert stat.S_IMODE((private_config_dir / keys.USER_KEY_FILE).stat().st_mode) == 0o600


# -- tampering, HMAC and ECDSA -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["hmac", "ecdsa", "per-user"])
def test_a_tampered_manifest_fails_under_every_scheme(registries: Registries, tmp_path: Path, kind: str) -> None:
    private, _ = key_pair(tmp_path, "writer")
    options: dict[str, Any] = {
        "hmac": {"signing_key": "team-secret"},
        "ecdsa": {"signing_key_file": str(private)},
        "per-user": {},
    }[kind]
    with registries(tmp_path / "models", serialization_format="pickle", **options) as p:
        served = registries.served(p)  # the attacker writes the index and the store
        rec = p.save_version({"v": 1}, "m", "1.0.0")
        assert rec.artifact is not None
        assert rec.signature is not None and rec.signature.startswith("hmac" if kind == "hmac" else "ecdsa-p256")
        for change in (
            {"sha256": "0" * 64},
            {"size": rec.artifact.size + 1},
            {"extra": {"globals": [*rec.artifact.extra["globals"], "posix.system"]}},
        ):
            forged = dataclasses.replace(rec, artifact=dataclasses.replace(rec.artifact, **change))
            served.index.put(forged)
            served.store.write_bytes(sidecar_key("m", "1.0.0"), sidecar_bytes(forged))
            with pytest.raises(SignatureError, match="signature check failed"):
                p.load("m", "1.0.0")
            if registries.kind == "direct":  # a server's verify judges with the server's keys, not these
                assert [x.version for x in p.verify().of_kind(SIGNATURE)] == ["1.0.0"]
        served.index.put(rec)
        served.store.write_bytes(sidecar_key("m", "1.0.0"), sidecar_bytes(rec))
        assert p.load("m", "1.0.0") == {"v": 1}
        assert p.verify().ok


def test_hmac_signatures_made_by_0_1_still_verify(tmp_path: Path) -> None:
    """A store written by modelkeep 0.1 with a key: the sidecar carries an HMAC-SHA256 over
    the canonical JSON of the manifest fields (computed here as 0.1 did, independently)."""
    with ModelPersistence(tmp_path / "models", signing_key="old-team-key") as p:
        rec = p.save_version({"legacy": True}, "m", "1.0.0")
    art = rec.artifact
    assert art is not None
    fields = {
        "model_name": "m",
        "version": "1.0.0",
        "key": art.key,
        "format": art.format,
        "compression": art.compression,
        "size": art.size,
        "sha256": art.sha256,
        "extra": art.extra,
    }
    payload = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    old = "hmac-sha256:" + hmac.new(b"old-team-key", payload, hashlib.sha256).hexdigest()
    assert rec.signature == old
    sidecar = tmp_path / "models" / sidecar_key("m", "1.0.0")
    data = json.loads(sidecar.read_text())
    data["signature"] = old
    sidecar.write_text(json.dumps(data))
    (tmp_path / "models" / "registry.db").unlink()
    with ModelPersistence(tmp_path / "models", signing_key="old-team-key") as p:
        assert p.reindex() == 1
        assert p.load("m") == {"legacy": True}
        assert p.signature_status("m").signer == "shared HMAC key"
    with ModelPersistence(tmp_path / "models") as no_key:  # without the secret: untrusted, still loads
        assert no_key.signature_status("m").status == "untrusted"
        assert no_key.load("m") == {"legacy": True}


# -- where keys come from ------------------------------------------------------------------------


def test_model_persistence_reads_the_key_variables_like_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODELKEEP_SIGNING_KEY", "from-env")
    with ModelPersistence(tmp_path / "models") as p:  # issue 10: this used to ignore the variable
        assert p.keyring.required
        rec = p.save_version({"a": 1}, "m")
        assert rec.signature == signing.sign(rec, "from-env")
    monkeypatch.setenv("MODELKEEP_SIGNING_KEY", "another")
    with ModelPersistence(tmp_path / "models") as p, pytest.raises(SignatureError, match="wrong key"):
        p.load("m")
    monkeypatch.delenv("MODELKEEP_SIGNING_KEY")
    private, public = key_pair(tmp_path, "ops")
    monkeypatch.setenv("MODELKEEP_SIGNING_KEY_FILE", str(private))
    with ModelPersistence(tmp_path / "models") as p:
        assert p.save_version({"a": 2}, "m").signature.startswith("ecdsa-p256:")  # type: ignore[union-attr]
    monkeypatch.delenv("MODELKEEP_SIGNING_KEY_FILE")
    monkeypatch.setenv("MODELKEEP_CONFIG_DIR", str(tmp_path / "reader-config"))
    monkeypatch.setenv("MODELKEEP_TRUSTED_KEYS", str(public))
    monkeypatch.setenv("MODELKEEP_REQUIRE_SIGNATURES", "true")
    with ModelPersistence(tmp_path / "models") as p:
        assert p.load("m", "1.0.1") == {"a": 2}
        with pytest.raises(SignatureError):
            p.load("m", "1.0.0")  # HMAC, and this reader has no secret
    from modelkeep.config import load_settings

    settings = load_settings().persistence
    assert settings.trusted_keys == [str(public)] and settings.require_signatures is True


def test_bad_key_files_are_config_errors_naming_the_file(tmp_path: Path) -> None:
    private, public = key_pair(tmp_path, "k")
    with pytest.raises(ConfigError, match="holds a private key"):
        ModelPersistence(tmp_path / "models", trusted_keys=[str(private)])
    with pytest.raises(ConfigError, match=r"missing\.pub.*not found"):
        ModelPersistence(tmp_path / "models", trusted_keys=[str(tmp_path / "missing.pub")])
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        ModelPersistence(tmp_path / "models", signing_key_file=str(public))
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    ed = tmp_path / "ed.pem"
    ed.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ConfigError, match="not an ECDSA P-256 key"):
        ModelPersistence(tmp_path / "models", signing_key_file=str(ed))


def test_keys_are_read_by_cryptographys_own_loaders_without_its_ssh_support(tmp_path: Path) -> None:
    """Reading keys skips ``serialization``'s ``__init__`` (its SSH support: ciphers, bcrypt;
    ~10 ms of ``modelkeep info``), with the very loaders and encodings that package exports."""
    from cryptography.hazmat.primitives import serialization

    reading = keys._reading()
    for name in ("load_pem_private_key", "load_pem_public_key", "Encoding", "PublicFormat"):
        assert getattr(reading, name) is getattr(serialization, name)
    private, public = key_pair(tmp_path, "k")
    script = (
        "import sys\n"
        "from modelkeep import keys\n"
        f"priv = keys.load_private_key({str(private)!r})\n"
        f"pub = keys.load_public_key({str(public)!r})\n"
        "print(priv.fingerprint, pub.fingerprint, pub.name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('cryptography.hazmat.primitives.serialization')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    fingerprints, loaded = out.splitlines()
    key = serialization.load_pem_public_key(public.read_bytes())
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    expected = hashlib.sha256(der).hexdigest()
    assert fingerprints == f"{expected} {expected} k"
    assert loaded == "[]"


def test_keys_are_read_through_serialization_when_cryptography_is_laid_out_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``cryptography`` without the modules :func:`keys._reading` takes its loaders from
    still reads keys, through the ``serialization`` package, with the same fingerprints."""
    from cryptography.hazmat.primitives import serialization

    private, public = key_pair(tmp_path, "k")
    expected = keys.load_public_key(public).fingerprint
    monkeypatch.setattr(keys, "_READING", [])
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.bindings._rust", None)  # import fails
    assert keys._reading() is serialization
    assert keys.load_private_key(private).fingerprint == keys.load_public_key(public).fingerprint == expected
    with pytest.raises(ConfigError, match="holds a private key"):
        keys.load_public_key(private)


# -- rotation ----------------------------------------------------------------------------------


def test_after_rotating_a_key_file_old_and_new_versions_verify_until_re_signed(
    registries: Registries, tmp_path: Path, other_user: Path
) -> None:
    old_private, old_public = key_pair(tmp_path, "2025")
    new_private, new_public = key_pair(tmp_path, "2026")
    models = tmp_path / "models"
    with registries(models, signing_key_file=str(old_private)) as p:
        p.save({"v": 1}, "m", "1.0.0")
        p.save({"v": 2}, "m", "1.0.1")
    rotated = {"signing_key_file": str(new_private), "trusted_keys": [str(old_public)]}
    with registries(models, **rotated) as p:
        p.save({"v": 3}, "m", "1.0.2")
        assert [p.load("m", v)["v"] for v in ("1.0.0", "1.0.1", "1.0.2")] == [1, 2, 3]
        assert {p.signature_status("m", v).name for v in ("1.0.0", "1.0.2")} == {"2025", "2026"}
        report = p.sign()
        assert (report.signed, report.unchanged) == ([("m", "1.0.0"), ("m", "1.0.1")], [("m", "1.0.2")])
        assert p.verify().ok
    with registries(models, trusted_keys=[str(new_public)], require_signatures=True) as reader:
        assert [reader.load("m", v)["v"] for v in ("1.0.0", "1.0.1", "1.0.2")] == [1, 2, 3]
        assert {reader.signature_status("m", v).name for v in ("1.0.0", "1.0.1", "1.0.2")} == {"2026"}
        sidecar = json.loads((models / sidecar_key("m", "1.0.0")).read_text())
        assert sidecar["signature"] == reader.get_version("m", "1.0.0").signature  # reindex keeps it


def test_re_signing_skips_versions_nobody_here_vouches_for(registries: Registries, tmp_path: Path) -> None:
    intruder_private, _ = key_pair(tmp_path, "intruder")
    models = tmp_path / "models"
    with registries(models, signing_key_file=str(intruder_private)) as intruder:
        intruder.save({"planted": 1}, "m", "1.0.0")
    with registries(models) as p:
        p.save({"mine": 1}, "m", "1.0.1")
        report = p.sign("m")
        assert report.signed == [] and report.unchanged == [("m", "1.0.1")]
        assert [(m, v) for m, v, _ in report.skipped] == [("m", "1.0.0")]
        assert p.signature_status("m", "1.0.0").status == "untrusted"
        assert p.sign("m", "1.0.0", include_untrusted=True).signed == [("m", "1.0.0")]
        assert p.signature_status("m", "1.0.0").trusted


def test_re_signing_skips_a_version_replaced_while_it_was_being_signed(
    registries: Registries, index_target: IndexTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    with registries(models) as p:
        p.save({"v": 1}, "m", "1.0.0")
    with registries(models, signing_key_file=str(key_pair(tmp_path, "new")[0])) as p:
        # Where the bytes are re-hashed: the registry's store, or (over HTTP) the client's download.
        from modelkeep.api.client_transfers import VersionFiles

        owner: Any = p.store if registries.kind == "direct" else VersionFiles
        verify = owner.verify

        def verify_then_overwrite(*args: Any) -> None:
            verify(*args)  # the bytes re-hashed, then another writer replaces the version
            with index_target.persistence(models) as other:
                other.save({"v": 2}, "m", "1.0.0", overwrite=True)

        monkeypatch.setattr(owner, "verify", verify_then_overwrite)
        report = p.sign("m", include_untrusted=True)
        assert report.signed == [] and [(m, v, why) for m, v, why in report.skipped] == [
            ("m", "1.0.0", "changed while signing; run again")
        ]
        assert p.load("m", "1.0.0") == {"v": 2}  # the other writer's version, not re-signed over
