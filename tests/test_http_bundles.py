"""Bundles through a registry server: export and import with the library and the CLI, signatures
kept end to end, the roles they need, and the hostile bundles of test_bundle_attacks.py sent with
raw HTTP (the server refuses them as a local import does, before it registers anything).

Servers run in this process (tests/_http_server.py, ``in_process=True``).
"""

from __future__ import annotations

import inspect
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from modelkeep import ModelPersistence, keys
from modelkeep.bundle import MANIFEST, SIGNATURE, BundleError
from modelkeep.cli import cli
from modelkeep.errors import ModelNotFoundError, PermissionDeniedError, SignatureError

from ._http_server import HttpServer, ServerSide, running_server
from .test_bundle_attacks import (
    _symlink,
    artifact_of,
    edit_manifest,
    members_of,
    nothing_registered,
    rebuild,
    sparse_bundle,
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HttpServer]:
    with running_server(ServerSide(str(tmp_path / "models")), tmp_path / "server", in_process=True) as srv:
        yield srv


@pytest.fixture
def other(tmp_path: Path) -> Iterator[HttpServer]:
    """A second, empty server (the bundle's destination)."""
    with running_server(ServerSide(str(tmp_path / "other")), tmp_path / "other-server", in_process=True) as srv:
        yield srv


def key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    key = keys.generate(name)
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    assert keys.write_key_file(private, key.pem())
    keys.write_key_file(public, key.public.pem(), mode=0o644)
    return private, public


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post_bundle(server: HttpServer, token: str, path: Path, models: str = "churn", **params: str) -> httpx.Response:
    """A raw ``POST /bundles`` of the file at ``path`` (what an attacker sends, no client checks)."""
    return httpx.post(
        f"{server.url}/api/v1/bundles",
        params={"models": models, **params},
        content=path.read_bytes(),
        headers=auth(token),
        timeout=60,
    )


@pytest.mark.parametrize("name", ["export_bundle", "import_bundle"])
def test_bundle_methods_take_the_arguments_of_a_local_registry(name: str) -> None:
    from modelkeep.api.client import HttpRegistry

    def params(fn: Any) -> list[tuple[str, Any, Any]]:
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    assert params(getattr(HttpRegistry, name)) == params(getattr(ModelPersistence, name))


def test_a_bundle_travels_between_servers_and_keeps_the_clients_signatures(
    tmp_path: Path, server: HttpServer, other: HttpServer, classifier: Any
) -> None:
    """Alice signs her saves with her own key; the bundle made over HTTP is signed by her, carries
    her signatures, and a reader who trusts only her key loads what was imported on another server."""
    private, public = key_pair(tmp_path, "alice")
    with server.client(signing_key_file=str(private)) as alice:
        alice.save(classifier, "churn", "1.0.0")
        alice.save(classifier, "churn", "1.1.0", accuracy=0.9)
        alice.set_tag("churn", "team", "growth")
        alice.set_alias("churn", "champion", "1.1.0")
        out = alice.export_bundle("churn", tmp_path / "churn.mkb")
        assert out == tmp_path / "churn.mkb" and not list(tmp_path.glob(".churn.mkb*"))
        with pytest.raises(FileExistsError):
            alice.export_bundle("churn", out)
        alice.export_bundle("churn", tmp_path / "one.mkb", versions=["1.0.0"], force=True)
    members = members_of(out)
    fingerprint = keys.load_private_key(private).fingerprint
    assert members[SIGNATURE].decode().startswith(f"ecdsa-p256:{fingerprint}:")  # signed by the client
    assert len(json.loads(members_of(tmp_path / "one.mkb")[MANIFEST])["versions"]) == 1

    with other.client(trusted_keys=[str(public)], require_signatures=True) as reader:
        report = reader.import_bundle(out)
        assert sorted(report.imported) == [("churn", "1.0.0"), ("churn", "1.1.0")]
        assert report.signature_checked and report.signature["fingerprint"] == fingerprint
        assert report.alias_moves == {"churn": {"champion": {"from": None, "to": "1.1.0"}}}
        assert reader.get_aliases("churn") == {}  # aliases only with with_aliases
        assert reader.load("churn", "1.1.0").predict([[5.1, 3.5, 1.4, 0.2]]) is not None
        assert reader.signature_status("churn", "1.1.0").trusted
        again = reader.import_bundle(out, with_aliases=True)
        assert again.imported == [] and len(again.skipped) == 2 and again.aliases_applied
        assert reader.get_aliases("churn") == {"champion": "1.1.0"}
        assert reader.get_tags("churn") == {"team": "growth"}
        assert {e.actor for e in reader.history("churn") if e.action == "alias_set"} == {"admin"}
    with other.direct() as d:
        assert d.verify().ok


def test_the_cli_exports_and_imports_through_a_server(
    tmp_path: Path, server: HttpServer, other: HttpServer, classifier: Any
) -> None:
    with server.client() as c:
        c.save(classifier, "churn", "1.0.0")
    runner = CliRunner()
    bundle = tmp_path / "cli.mkb"

    def config(srv: HttpServer) -> list[str]:  # a config file: the servers here share this process's environment
        path = tmp_path / f"{srv.url.rsplit(':', 1)[1]}.json"
        path.write_text(json.dumps({"persistence": {"registry_url": srv.url, "token": srv.token}}))
        return ["--config", str(path)]

    done = runner.invoke(cli, [*config(server), "export", "--model-name", "churn", "-o", str(bundle)])
    assert done.exit_code == 0, done.output
    done = runner.invoke(cli, [*config(other), "import", str(bundle), "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["imported"] == [["churn", "1.0.0"]]
    missing = runner.invoke(cli, [*config(other), "export", "--model-name", "nope", "-o", str(tmp_path / "x.mkb")])
    assert missing.exit_code != 0 and "Traceback" not in missing.output and "nope" in missing.output
    assert not (tmp_path / "x.mkb").exists()


def test_a_compromised_server_cannot_slip_a_forged_version_into_an_export(
    tmp_path: Path, server: HttpServer, classifier: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server answers with a consistent bundle of its own making (mallory's key, other bytes):
    the client checks each version's signature with its own keys and writes no file."""
    import modelkeep.bundle as bundle_module

    private, public = key_pair(tmp_path, "alice")
    mallory, _ = key_pair(tmp_path, "mallory")
    with server.client(signing_key_file=str(private)) as alice:
        alice.save(classifier, "churn", "1.0.0")
    with ModelPersistence(tmp_path / "evil", signing_key_file=mallory) as evil:
        evil.save({"backdoor": True}, "churn", "1.0.0")
    real = bundle_module.write_bundle

    def forged(persistence: Any, model_name: str, output: Any, **kwargs: Any) -> Path:
        with ModelPersistence(tmp_path / "evil") as evil:
            return real(evil, model_name, output, **kwargs)

    monkeypatch.setattr(bundle_module, "write_bundle", forged)
    with (
        server.client(trusted_keys=[str(public)], require_signatures=True) as reader,
        pytest.raises(SignatureError),
    ):
        reader.export_bundle("churn", tmp_path / "got.mkb")
    assert not (tmp_path / "got.mkb").exists() and not list(tmp_path.glob(".got.mkb*"))


# -- roles -------------------------------------------------------------------------------------
def test_exports_need_only_the_viewer_role_and_only_models_the_user_sees(
    tmp_path: Path, server: HttpServer, classifier: Any
) -> None:
    with server.client() as admin:
        admin.save(classifier, "churn", "1.0.0")
        admin.save(classifier, "fraud", "1.0.0")
    viewer = server.add_user("vera", "viewer")
    with server.direct() as d:
        d.users.add("gina", None, "none")
        d.users.grant("gina", "churn*", "viewer")
        gina = d.users.new_token("gina", "tests")
    with server.client(viewer) as c:
        c.export_bundle("fraud", tmp_path / "fraud.mkb")
    with server.client(gina) as c:
        c.export_bundle("churn", tmp_path / "churn.mkb")
        for versions in (None, ["1.0.0"]):  # named versions too: not a way around visibility
            with pytest.raises(ModelNotFoundError):
                c.export_bundle("fraud", tmp_path / "stolen.mkb", versions=versions)
    raw = httpx.get(f"{server.url}/api/v1/models/fraud/bundle", headers=auth(gina), timeout=30)
    assert raw.status_code == 404 and b"ustar" not in raw.content
    assert not (tmp_path / "stolen.mkb").exists()


def test_imports_need_the_writer_role_on_every_model_before_the_body_is_read(
    tmp_path: Path, server: HttpServer, other: HttpServer, classifier: Any
) -> None:
    with server.client() as c:
        c.save(classifier, "churn", "1.0.0")
        bundle = c.export_bundle("churn", tmp_path / "churn.mkb")
    viewer = other.add_user("vera", "viewer")
    with other.direct() as d:
        d.users.add("gina", None, "none")
        d.users.grant("gina", "fraud*", "writer")
        gina = d.users.new_token("gina", "tests")
    with other.client(viewer) as c, pytest.raises(PermissionDeniedError, match="writer"):
        c.import_bundle(bundle)
    refused = post_bundle(other, gina, bundle)  # declared honestly: churn, which gina may not write
    assert refused.status_code == 403
    lied = post_bundle(other, gina, bundle, models="fraud")  # declares fraud, carries churn
    assert lied.status_code == 422 and "did not declare" in lied.json()["error"]["message"]
    with other.direct() as d:
        assert nothing_registered(d)
    writer = other.add_user("walt", "writer")
    with other.client(writer) as c:
        assert c.import_bundle(bundle).imported == [("churn", "1.0.0")]


# -- hostile bundles over raw HTTP ---------------------------------------------------------------
@pytest.fixture
def local_bundle(tmp_path: Path, classifier: Any) -> Path:
    with ModelPersistence(tmp_path / "source") as p:
        p.save(classifier, "churn", "1.0.0")
        p.save(classifier, "churn", "1.1.0")
        return p.export_bundle("churn", tmp_path / "churn.mkb")


def _hostile(tmp_path: Path, bundle: Path) -> dict[str, Path]:
    members = members_of(bundle)
    name = artifact_of(members)
    larger = dict(members)
    larger[name] = members[name] + b"\0" * (1 << 20)
    tampered = dict(members)
    edit_manifest(tampered, lambda m: m["lifecycle"]["churn"]["tags"].update(owner="attacker"))
    tampered[SIGNATURE] = members[SIGNATURE]  # the old signature, over the old manifest
    return {
        "sparse": sparse_bundle(tmp_path, bundle),
        "symlink": rebuild(tmp_path / "link.mkb", members, replace={name: _symlink(name)}),
        "larger": rebuild(tmp_path / "larger.mkb", larger),
        "tampered": rebuild(tmp_path / "tampered.mkb", tampered),
        "not-a-tar": _write(tmp_path / "junk.mkb", b"junk" * 1000),
    }


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_hostile_bundles_are_refused_over_http_with_nothing_registered(
    tmp_path: Path, server: HttpServer, local_bundle: Path
) -> None:
    with ModelPersistence(tmp_path / "source") as p:  # the server trusts the bundle's signer
        assert p.keyring.signer() is not None
    for kind, hostile in _hostile(tmp_path, local_bundle).items():
        answer = post_bundle(server, server.token, hostile)
        assert answer.status_code == 422, (kind, answer.text)
        error = answer.json()["error"]
        assert error["class"] in ("BundleError", "SignatureError"), (kind, error)
        assert "nothing was imported" in error["message"] or kind == "not-a-tar", (kind, error)
        with server.direct() as d:
            assert nothing_registered(d), kind
    with server.client() as c, pytest.raises(BundleError):  # the client refuses to send junk at all
        c.import_bundle(tmp_path / "junk.mkb")
    with tarfile.open(local_bundle) as tar:
        assert tar.getmember(MANIFEST).size > 0
    assert post_bundle(server, server.token, local_bundle).status_code == 201  # the real one passes


def test_an_import_moves_and_trashes_only_what_the_importer_may(tmp_path: Path, server: HttpServer) -> None:
    """A bundle's history is replayed into the registry: its alias moves need the roles a move
    needs (production is protected: admins), and its trash rows the maintainer role; a writer's
    import of a bundle that would do more is refused before anything is registered."""
    with ModelPersistence(tmp_path / "source") as p:
        p.save({"w": 1}, "churn", "1.0.0")
        p.save({"w": 2}, "churn", "1.1.0")
        p.set_alias("churn", "production", "1.1.0")
        aliased = p.export_bundle("churn", tmp_path / "aliased.mkb")
        p.delete("churn", "1.0.0")
        trashing = p.export_bundle("churn", tmp_path / "trashing.mkb", versions=["1.0.0"])
    writer, maintainer = server.add_user("walt", "writer"), server.add_user("mo", "maintainer")
    for token in (writer, maintainer):
        with server.client(token) as c, pytest.raises(PermissionDeniedError, match="production"):
            c.import_bundle(aliased, with_aliases=True)
    with server.direct() as d:
        assert nothing_registered(d)
    with server.client(writer) as c:  # without with_aliases, the moves are only reported
        report = c.import_bundle(aliased)
        assert report.imported == [("churn", "1.0.0"), ("churn", "1.1.0")] and c.get_aliases("churn") == {}
        with pytest.raises(PermissionDeniedError, match="maintainer"):  # would trash 1.0.0, which is here
            c.import_bundle(trashing)
        assert c.list_versions("churn") == ["1.0.0", "1.1.0"]
    with server.client() as admin:
        admin.import_bundle(aliased, with_aliases=True)
        assert admin.get_aliases("churn") == {"production": "1.1.0"}
    from modelkeep.identity import Identity

    with ModelPersistence(tmp_path / "local", identity=Identity("walt", "writer")) as local:  # the library's rule
        with pytest.raises(PermissionDeniedError, match="production"):
            local.import_bundle(aliased, with_aliases=True)
        assert nothing_registered(local)
