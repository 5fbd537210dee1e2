"""``modelkeep keys``, ``sign``, ``--trusted-key`` and ``export-signed`` (checked by OpenSSF's
real ``model-signing`` verifier, through its Python API and its command line)."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from modelkeep import ModelPersistence, keys
from modelkeep.cli import cli


def mk(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def test_keys_generate_list_export_and_trust(tmp_path: Path, private_config_dir: Path) -> None:
    made = mk("keys", "generate", "--name", "ana")
    assert made.exit_code == 0, made.output
    user_key = private_config_dir / keys.USER_KEY_FILE
    assert stat.S_IMODE(user_key.stat().st_mode) == 0o600
    fingerprint = keys.load_private_key(user_key).fingerprint
    assert fingerprint in made.output
    again = mk("keys", "generate")
    assert again.exit_code == 1 and "already exists; use --rotate" in again.output

    listed = json.loads(mk("keys", "list", "--json").output)
    assert listed["signing_key"]["fingerprint"] == fingerprint and listed["signing_key"]["name"] == "ana"
    assert [k["fingerprint"] for k in listed["trusted_keys"]] == [fingerprint]
    assert listed["required"] is False

    exported = mk("keys", "export-public")
    assert exported.output.startswith("# modelkeep key name: ana\n-----BEGIN PUBLIC KEY-----")
    assert mk("keys", "export-public", "--out", str(tmp_path / "ana.pub")).exit_code == 0
    assert keys.load_public_key(tmp_path / "ana.pub").fingerprint == fingerprint

    out = tmp_path / "keys" / "deploy.pem"
    written = mk("keys", "generate", "--name", "deploy", "--out", str(out))
    assert written.exit_code == 0, written.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and (tmp_path / "keys" / "deploy.pub").is_file()
    refused = mk("keys", "generate", "--out", str(out))
    assert refused.exit_code == 1 and "--force" in refused.output
    trusted = mk("keys", "trust", str(tmp_path / "keys" / "deploy.pub"))
    assert trusted.exit_code == 0, trusted.output
    names = {k["name"] for k in json.loads(mk("keys", "list", "--json").output)["trusted_keys"]}
    assert names == {"ana", "deploy"}
    wrong = mk("keys", "trust", str(out))
    assert wrong.exit_code == 1 and "holds a private key" in wrong.output and "Traceback" not in wrong.output


def test_rotate_the_per_user_key_then_sign_all(tmp_path: Path) -> None:
    models = tmp_path / "models"
    with ModelPersistence(models) as p:
        p.save({"v": 1}, "a")
        p.save({"v": 2}, "b")
        old = p.signature_status("a").fingerprint
    rotated = mk("keys", "generate", "--rotate", "--name", "next")
    assert rotated.exit_code == 0, rotated.output
    assert "stays trusted" in rotated.output
    with ModelPersistence(models) as p:  # old signatures still verify through the trusted folder
        assert p.load("a") == {"v": 1} and p.signature_status("a").fingerprint == old
        p.save({"v": 3}, "a")
    signed = mk("--models-dir", str(models), "sign", "--all", "--json")
    assert signed.exit_code == 0, signed.output
    report = json.loads(signed.output)
    assert sorted(map(tuple, report["signed"])) == [("a", "1.0.0"), ("b", "1.0.0")]
    assert report["unchanged"] == [["a", "1.0.1"]]
    info = json.loads(mk("--models-dir", str(models), "info", "--model-name", "b", "--json").output)
    assert info["signature_status"]["name"] == "next" and info["signature_status"]["trusted"] is True
    text = mk("--models-dir", str(models), "info", "--model-name", "b").output
    assert "trusted" in text and "next (" in text
    usage = mk("--models-dir", str(models), "sign")
    assert usage.exit_code == 2 and "--all or --model-name" in usage.output


def test_trusted_key_flag_and_required_signatures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"
    assert mk("keys", "generate", "--out", str(tmp_path / "w.pem"), "--name", "writer").exit_code == 0
    monkeypatch.setenv("MODELKEEP_SIGNING_KEY_FILE", str(tmp_path / "w.pem"))
    with ModelPersistence(models) as p:
        p.save({"v": 1}, "m")
    monkeypatch.delenv("MODELKEEP_SIGNING_KEY_FILE")
    monkeypatch.setenv("MODELKEEP_CONFIG_DIR", str(tmp_path / "server"))
    monkeypatch.setenv("MODELKEEP_REQUIRE_SIGNATURES", "1")
    refused = mk("--models-dir", str(models), "load", "--model-name", "m", "--output", str(tmp_path / "m.joblib"))
    assert refused.exit_code == 1 and "not signed by a trusted key" in refused.output
    verify = mk("--models-dir", str(models), "verify")
    assert verify.exit_code == 1 and "signature:" in verify.output
    flag = ("--models-dir", str(models), "--trusted-key", str(tmp_path / "w.pub"))
    loaded = mk(*flag, "load", "--model-name", "m", "--output", str(tmp_path / "m.joblib"))
    assert loaded.exit_code == 0, loaded.output
    verified = mk(*flag, "verify")
    assert verified.exit_code == 0 and "signatures: 1 trusted" in verified.output


def test_export_signed_passes_openssf_model_signing_verification(tmp_path: Path) -> None:
    model_signing = pytest.importorskip("model_signing", reason="install modelkeep[signing-interop]")
    models = tmp_path / "models"
    with ModelPersistence(models, serialization_format="native") as p:
        import numpy as np

        p.save({"weights": np.arange(10_000, dtype=np.float64)}, "net", "1.0.0")
    out = tmp_path / "export" / "net-1.0.0"
    done = mk("--models-dir", str(models), "export-signed", "--model-name", "net", "--out", str(out))
    assert done.exit_code == 0, done.output
    public = tmp_path / "me.pub"
    assert mk("keys", "export-public", "--out", str(public)).exit_code == 0
    signature = out.with_name("net-1.0.0.sig")
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert files[-2:] == ["net_v1.0.0.mkpkl", "net_v1.0.0_metadata.json"]
    assert len(list((out / "blobs").iterdir())) == 1

    verifier = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public)
    verifier.verify(out, signature)  # raises on failure
    cli = [sys.executable, "-m", "model_signing", "verify", "key", str(out), "--signature", str(signature)]
    ok = subprocess.run([*cli, "--public_key", str(public)], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "Verification succeeded" in ok.stdout, ok.stderr

    # A different key, or one changed byte, fails the same verifier.
    assert mk("keys", "generate", "--out", str(tmp_path / "other.pem")).exit_code == 0
    bad = subprocess.run([*cli, "--public_key", str(tmp_path / "other.pub")], capture_output=True, text=True)
    assert bad.returncode == 1
    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    artifact = tampered / "net_v1.0.0.mkpkl"
    artifact.write_bytes(artifact.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ValueError, match="Hash mismatch") as info:
        verifier.verify(tampered, signature)
    assert "net_v1.0.0.mkpkl" in str(info.value)
    again = mk("--models-dir", str(models), "export-signed", "--model-name", "net", "--out", str(out))
    assert again.exit_code == 1 and "already exists" in again.output


def test_export_signed_refuses_a_version_it_cannot_vouch_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("model_signing", reason="install modelkeep[signing-interop]")
    models = tmp_path / "models"
    with ModelPersistence(models) as p:
        p.save({"v": 1}, "m")
    monkeypatch.setenv("MODELKEEP_CONFIG_DIR", str(tmp_path / "someone-else"))
    out = mk("--models-dir", str(models), "export-signed", "--model-name", "m", "--out", str(tmp_path / "x"))
    assert out.exit_code == 1 and "is untrusted" in out.output and not (tmp_path / "x").exists()
    monkeypatch.setenv("MODELKEEP_SIGNING_KEY", "team")
    hmac_only = mk("--models-dir", str(models), "export-signed", "--model-name", "m", "--out", str(tmp_path / "x"))
    assert hmac_only.exit_code == 1 and "Error:" in hmac_only.output
