"""The same wrong input, the same answer, locally and through a registry server (issue 28).

Each case runs one ``modelkeep`` command twice: on a local registry, and with
``MODELKEEP_REGISTRY_URL`` and ``MODELKEEP_TOKEN`` naming a real server (real HTTP on loopback)
over an equivalent registry; the exit code and the one ``Error:`` line must be the same. Then the
server's registry must be as it was: a name the URL could not carry (``..``, ``a/b``, an empty
tag key) once reached another route or none (``users revoke vic --token ..`` removed the user
``vic``; ``tag set churn "" v`` printed success and set nothing). The Python API cases compare
the class and message of what is raised, as the issue asks.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from modelkeep import ModelPersistence
from modelkeep.errors import ConfigError
from tests._cli_in_process import run_cli
from tests._http_server import HttpServer, ServerSide, running_server
from tests.test_http_api import fill


@dataclass
class Twins:
    """A local registry and a server over an equivalent one; ``vic`` (a viewer) has one token on each."""

    local: Path
    server: HttpServer

    def run(self, where: str, *args: str) -> Any:
        """``modelkeep ARGS`` on the local registry (``where="local"``) or through the server."""
        if where == "local":
            env = {"MODELKEEP_MODELS_DIR": str(self.local), "MODELKEEP_REGISTRY_URL": None, "MODELKEEP_TOKEN": None}
        else:
            env = {"MODELKEEP_MODELS_DIR": None, "MODELKEEP_REGISTRY_URL": self.server.url}
            env["MODELKEEP_TOKEN"] = self.server.token
        return run_cli(*args, env=env)


def _fill(p: ModelPersistence) -> None:
    fill(p)
    p.users.add("vic", None, "viewer")
    p.users.new_token("vic", "tests")


@pytest.fixture
def twins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Twins]:
    monkeypatch.chdir(tmp_path)  # a command that wrongly wrote a file would write it here
    with ModelPersistence(tmp_path / "local") as p:
        _fill(p)
    side = ServerSide(str(tmp_path / "served"))
    with ModelPersistence(**side.options()) as p:
        _fill(p)
    with running_server(side, tmp_path / "server", in_process=True) as server:
        yield Twins(tmp_path / "local", server)


def _state(p: ModelPersistence) -> tuple[Any, ...]:
    """What a refused command must leave alone."""
    return (
        {m: p.list_versions(m) for m in p.list_models()},
        p.list_trash(),
        p.get_aliases("churn"),
        p.get_tags("churn"),
        [(u.name, u.role) for u in p.users.list()],
        len(p.users.tokens("vic")),
    )


WRONG = [
    ("info", "--model-name", "churn", "--version", "../x"),
    ("info", "--model-name", "churn", "--version", ".."),
    ("load", "--model-name", "churn", "--version", "a/b", "--output", "out.joblib"),
    ("describe", "--model-name", "churn", "--version", "..", "text"),
    ("tag", "set", "--model-name", "churn", "", "v"),
    ("tag", "rm", "--model-name", "churn", ".."),
    ("tag", "list", "--model-name", "churn", "--version", "."),
    ("alias", "set", "--model-name", "churn", "--alias", "a/b", "--version", "1.0.0"),
    ("alias", "rm", "--model-name", "churn", "--alias", ".."),
    ("alias", "history", "--model-name", "churn", "--alias", "."),
    ("delete", "--model-name", "churn", "--version", "1.0.2"),  # in the trash already
    ("delete", "--model-name", "churn", "--version", ".."),
    ("restore", "--model-name", "churn", "--version", ".."),
    ("approve", "churn", "..", "--for", "production"),
    ("users", "revoke", "vic", "--token", ".."),
    ("users", "revoke", "vic", "--token", "."),
    ("users", "role", "..", "viewer"),
]


@pytest.mark.parametrize("args", WRONG, ids=[" ".join(a) for a in WRONG])
def test_same_error_line_locally_and_through_a_server(twins: Twins, args: tuple[str, ...]) -> None:
    with twins.server.direct() as p:
        before = _state(p)
    local, remote = twins.run("local", *args), twins.run("server", *args)
    assert local.returncode == 1 and local.stderr.startswith("Error: ") and local.stderr.count("\n") == 1
    assert (remote.returncode, remote.stderr, remote.stdout) == (local.returncode, local.stderr, local.stdout)
    with twins.server.direct() as p:
        assert _state(p) == before
    assert not (Path.cwd() / "out.joblib").exists()


API_WRONG: dict[str, Callable[[Any], object]] = {
    "version ''": lambda p: p.get_version("churn", ""),
    "load version ''": lambda p: p.load("churn", ""),
    "version '..'": lambda p: p.get_version("churn", ".."),
    "version '../x'": lambda p: p.get_version("churn", "../x"),
    "trash a trashed version": lambda p: p.delete("churn", "1.0.2"),
    "tag key ''": lambda p: p.set_tag("churn", "", "v"),
    "remove tag '.'": lambda p: p.delete_tag("churn", "."),
    "alias 'a/b'": lambda p: p.set_alias("churn", "a/b", "1.0.0"),
    "token id '..'": lambda p: p.users.revoke_token("vic", ".."),
    "token id '.'": lambda p: p.users.revoke_token("vic", "."),
    "user name '..'": lambda p: p.users.set_role("..", "viewer"),
}


def _raised_both_ways(twins: Twins, call: Callable[[Any], object]) -> list[tuple[type, str]]:
    """The class and message of what ``call`` raises on the local registry, then through the server."""
    raised: list[tuple[type, str]] = []
    with ModelPersistence(twins.local) as local, twins.server.client() as remote:
        for p in (local, remote):
            with pytest.raises(Exception) as caught:
                call(p)
            raised.append((type(caught.value), str(caught.value)))
    return raised


@pytest.mark.parametrize("call", list(API_WRONG.values()), ids=list(API_WRONG))
def test_same_exception_locally_and_through_a_server(twins: Twins, call: Callable[[Any], object]) -> None:
    local, remote = _raised_both_ways(twins, call)
    assert remote == local
    with twins.server.direct() as p:
        assert len(p.users.tokens("vic")) == 1 and p.users.get("vic") is not None and "" not in p.get_tags("churn")


class _Redirects(BaseHTTPRequestHandler):
    """Answers every request with a redirect, as a proxy sending http to https does."""

    def _redirect(self) -> None:
        self.send_response(307)
        self.send_header("Location", "https://models.example" + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_PUT = do_POST = do_DELETE = _redirect

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def redirecting_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirects)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_redirect_is_no_success(redirecting_url: str) -> None:
    """An unfollowed redirect did nothing: it was taken as success (an empty answer), so a tag
    "was set" and reads crashed on the missing body."""
    from modelkeep.api.client import HttpRegistry

    said = re.escape("redirected PUT /api/v1/models/churn/tags/k to https://models.example")
    with HttpRegistry(redirecting_url, token="mkt_x") as client, pytest.raises(ConfigError, match=said):
        client.set_tag("churn", "k", "v")
    done = run_cli("tag", "set", "--model-name", "churn", "k", "v", env={"MODELKEEP_REGISTRY_URL": redirecting_url})
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "redirected PUT" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:9", "file:///tmp/models", "127.0.0.1:8766"])
def test_a_registry_url_of_no_kind_is_a_user_error(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A URL neither a database nor a server (a wrong scheme, none) was an internal error with a
    traceback (SQLAlchemy's NoSuchModuleError): it is the user's to fix, and says what fits."""
    monkeypatch.chdir(tmp_path)
    done = run_cli("list", env={"MODELKEEP_REGISTRY_URL": url, "MODELKEEP_MODELS_DIR": None})
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"Error: registry_url {url!r}") and "a registry server's https://" in done.stderr


# -- any text a local registry takes, through the server too ----------------------------------------
@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twins]:
    """Twins shared by the cases below, which leave both registries as they found them."""
    tmp = tmp_path_factory.mktemp("parity")
    with ModelPersistence(tmp / "local") as p:
        _fill(p)
    side = ServerSide(str(tmp / "served"))
    with ModelPersistence(**side.options()) as p:
        _fill(p)
    with running_server(side, tmp / "server", in_process=True) as server:
        yield Twins(tmp / "local", server)


#: Tag keys a local registry takes that a URL path does not carry as they are: '/' anywhere (and
#: dot segments after one), what a URL reads as its query or fragment, a percent sign, spaces,
#: a newline (a route's '.*' stops at one), non-ASCII, a leading '-', the longest key.
TEXTS = [
    "a/b",
    "/a",
    "a/",
    "a//b",
    "../x",
    "a/..",
    "/",
    "%2F",
    "a%b",
    "?x=1#y",
    " k ",
    "a\nb",
    "é/日本",
    "-k",
    "k" * 256,
]


def _tag_round(p: Any, key: str) -> tuple[Any, ...]:
    """Set ``key`` on the model and on a version, read both back, remove both: what each step gives."""
    p.set_tag("churn", key, "v")
    p.set_tag("churn", key, "w", version="1.0.0")
    seen = (p.get_tags("churn").get(key), p.get_tags("churn", version="1.0.0").get(key))
    p.delete_tag("churn", key)
    p.delete_tag("churn", key, version="1.0.0")
    return (seen, key in p.get_tags("churn"), key in p.get_tags("churn", version="1.0.0"))


@pytest.mark.parametrize("key", TEXTS, ids=[repr(k[:12]) for k in TEXTS])
def test_every_tag_key_a_registry_takes_goes_through_a_server(shared: Twins, key: str) -> None:
    """A tag key with '/' was refused by the client ("cannot be sent to a registry server");
    a key with a newline reached no route, or the route with the empty key."""
    with ModelPersistence(shared.local) as local, shared.server.client() as remote:
        assert _tag_round(local, key) == _tag_round(remote, key) == (("v", "w"), False, False)


API_TEXT: dict[str, Callable[[Any], object]] = {
    "revoke token 'a/b'": lambda p: p.users.revoke_token("vic", "a/b"),
    "revoke token ''": lambda p: p.users.revoke_token("vic", ""),
    "revoke token 'a\\nb'": lambda p: p.users.revoke_token("vic", "a\nb"),
    "revoke token '/..'": lambda p: p.users.revoke_token("vic", "/.."),
    "remove policy of 'team/*'": lambda p: p.remove_policy("team/*", "production"),
    "remove policy of ''": lambda p: p.remove_policy("", "production"),
    "remove policy, bad alias first": lambda p: p.remove_policy("x" * 9000, "a/b"),
    "redeliver 'a/b'": lambda p: p.webhooks.redeliver("a/b"),
    "redeliver '..'": lambda p: p.webhooks.redeliver(".."),
    "tag key too long": lambda p: p.set_tag("churn", "é" * 3000, "v"),
    "remove tag key too long": lambda p: p.delete_tag("churn", "k" * 257),
    "tag key only spaces": lambda p: p.set_tag("churn", "  ", "v"),
    "tag key '\\n'": lambda p: p.delete_tag("churn", "\n"),
    "version too long": lambda p: p.get_version("churn", "1" * 9000),
    "user name too long": lambda p: p.users.set_role("u" * 9000, "viewer"),
    # A webhook id that is not a whole number: a bare TypeError ("'<=' not supported") locally,
    # "no webhook x" or int()'s ValueError through a server.
    "webhook 'x'": lambda p: p.webhooks.get("x"),
    "webhook None": lambda p: p.webhooks.get(None),
    "webhook True": lambda p: p.webhooks.get(True),
    "remove webhook '1'": lambda p: p.webhooks.remove("1"),
    "test webhook 1.5": lambda p: p.webhooks.test(1.5),
    "deliveries of webhook 'x'": lambda p: p.webhooks.deliveries("x"),
}


@pytest.mark.parametrize("call", list(API_TEXT.values()), ids=list(API_TEXT))
def test_any_text_raises_the_same_locally_and_through_a_server(shared: Twins, call: Callable[[Any], object]) -> None:
    local, remote = _raised_both_ways(shared, call)
    assert remote == local


def test_a_webhook_id_that_is_no_number_is_named(shared: Twins) -> None:
    with ModelPersistence(shared.local) as local, shared.server.client() as remote:
        for p in (local, remote):
            with pytest.raises(TypeError, match=r"a webhook id is a whole number .*, not 'x'"):
                p.webhooks.test("x")


def test_a_metric_name_with_a_slash_goes_through_a_server(shared: Twins) -> None:
    with shared.server.direct() as p, ModelPersistence(shared.local) as local:
        for registry in (p, local):
            registry.save({"w": 5}, "fraud", "2", **{"val/loss": 0.25, "a\nb": 1.0})
    try:
        with ModelPersistence(shared.local) as local, shared.server.client() as remote:
            for metric in ("val/loss", "a\nb", "", "nope/"):
                assert remote.metric_history("fraud", metric) == local.metric_history("fraud", metric)
            assert remote.metric_history("fraud", "val/loss") == [("1", None), ("2", 0.25)]
    finally:
        with shared.server.direct() as p, ModelPersistence(shared.local) as local:
            for registry in (p, local):
                registry.delete("fraud", "2")
                registry.purge("fraud", "2")


def test_a_value_too_long_for_a_url_is_refused_before_it_is_sent(shared: Twins) -> None:
    """A token id has no length limit; encoded for a URL, this one would be 90000 characters
    (httpx raised its own InvalidURL; proxies refuse request lines over 8 KiB)."""
    from modelkeep.errors import InvalidNameError

    with shared.server.client() as remote, pytest.raises(InvalidNameError, match="too long to send to a registry"):
        remote.users.revoke_token("vic", "é" * 15000)
    with shared.server.direct() as p:
        assert len(p.users.tokens("vic")) == 1


CLI_TEXT = [
    ("tag", "set", "--model-name", "churn", "team/a", "x y"),
    ("tag", "list", "--model-name", "churn", "--json"),
    ("tag", "rm", "--model-name", "churn", "team/a"),
    ("tag", "set", "--model-name", "churn", "--version", "1.0.0", "../k?#", "v"),
    ("tag", "rm", "--model-name", "churn", "--version", "1.0.0", "../k?#"),
    ("tag", "list", "--model-name", "churn", "--version", "1.0.0", "--json"),
    ("tag", "rm", "--model-name", "churn", "no/such"),
    ("users", "revoke", "vic", "--token", "a/b"),
    ("users", "revoke", "vic", "--token", "%2F.."),
    ("policy", "rm", "--model-name", "team/*", "--alias", "production"),
    ("webhooks", "redeliver", "a/b"),
]


def test_the_command_line_says_the_same_for_any_text(shared: Twins) -> None:
    """In this order: a tag set, listed and removed, on the model and on a version."""
    for args in CLI_TEXT:
        local, remote = shared.run("local", *args), shared.run("server", *args)
        assert (remote.returncode, remote.stderr, remote.stdout) == (local.returncode, local.stderr, local.stdout), args
        assert "Traceback" not in local.stderr and local.stderr.count("\n") <= 1
