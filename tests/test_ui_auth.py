"""Who may use the UI, and how: sign-in, roles, protected aliases, tokens, the SSO header,
the Host allow-list (DNS rebinding), cookies, sign-in limits, and compare-and-set forms.

Through Starlette's test client on one registry with three real users (argon2 does the
hashing, so each sign-in costs a real password check); ``test_ui_browser.py`` drives the
same flow in Chromium.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from modelkeep import AuthenticationError, ConfigError, ModelPersistence
from modelkeep.ui import create_app, serve
from modelkeep.ui.auth import SESSION_COOKIE, AuthSettings
from modelkeep.ui.security import FIELD

BASE = "http://127.0.0.1:8765"
PASSWORDS = {"vera": "viewer-pass-1", "eddie": "editor-pass-1", "ada": "admin-pass-1"}
ROLES = {"vera": "viewer", "eddie": "editor", "ada": "admin"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, classifier: Any) -> Iterator[ModelPersistence]:
    p = ModelPersistence(models_dir=tmp_path_factory.mktemp("auth") / "models")
    for i in range(3):
        p.save(classifier, "churn", f"1.{i}.0", accuracy=0.8 + i / 100)
    for name, password in PASSWORDS.items():
        p.users.add(name, password, ROLES[name])
    yield p
    p.close()


@pytest.fixture
def reg(registry: ModelPersistence) -> ModelPersistence:
    """The shared registry with its aliases back where each test expects them."""
    registry.set_alias("churn", "production", "1.1.0")
    registry.set_alias("churn", "staging", "1.1.0")
    return registry


@pytest.fixture
def app(reg: ModelPersistence) -> Any:
    return create_app(reg)


def _csrf(client: TestClient, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    found = re.search(rf'name="{FIELD}" value="([0-9a-f]+)"', page.text)
    assert found, "the page has no CSRF token"
    return found.group(1)


def _signed_in(app: Any, name: str, *, base_url: str = BASE) -> TestClient:
    client = TestClient(app, base_url=base_url)
    response = client.post(
        "/signin",
        data={FIELD: _csrf(client, "/signin"), "username": name, "password": PASSWORDS[name], "next": "/models/churn"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/models/churn"
    return client


def _move(client: TestClient, alias: str, version: str, *, seen: dict[str, str] | None = None) -> Any:
    token = _csrf(client, "/models/churn")
    data = {FIELD: token, "alias": alias, "version": version}
    if seen is not None:
        data["seen"] = json.dumps(seen)
    return client.post("/models/churn/aliases", data=data, follow_redirects=False)


def test_passwords_are_hashed_by_argon2_and_checked_by_it(reg: ModelPersistence) -> None:
    from argon2 import PasswordHasher
    from argon2.exceptions import VerifyMismatchError

    stored = reg.users.get("eddie")
    assert stored is not None and stored.password_hash is not None
    assert stored.password_hash.startswith("$argon2id$") and PASSWORDS["eddie"] not in stored.password_hash
    PasswordHasher().verify(stored.password_hash, PASSWORDS["eddie"])  # argon2 itself accepts it
    with pytest.raises(VerifyMismatchError):
        PasswordHasher().verify(stored.password_hash, "editor-pass-2")
    assert reg.users.check_password("eddie", PASSWORDS["eddie"]).role == "maintainer"
    for name, password in [("eddie", "editor-pass-2"), ("nobody", "whatever-1"), ("eddie", "")]:
        with pytest.raises(AuthenticationError, match="wrong user name or password"):
            reg.users.check_password(name, password)


def test_with_users_every_page_needs_a_sign_in(app: Any, reg: ModelPersistence) -> None:
    anonymous = TestClient(app, base_url=BASE)
    page = anonymous.get("/models/churn", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/signin?next=%2Fmodels%2Fchurn"
    assert anonymous.get("/api/models/churn/chart?metric=accuracy").status_code == 401
    refused = anonymous.post("/models/churn/aliases", data={"alias": "staging", "version": "1.0.0"})
    assert refused.status_code == 401
    assert reg.get_aliases("churn")["staging"] == "1.1.0"


def test_no_users_on_loopback_is_sign_in_free_and_says_so(tmp_path: Path, classifier: Any) -> None:
    with ModelPersistence(models_dir=tmp_path / "models") as p:
        p.save(classifier, "churn", "1.0.0")
        with TestClient(create_app(p), base_url=BASE) as c:
            page = c.get("/")
            assert page.status_code == 200 and "No sign-in: loopback only, no users configured" in page.text
        # Bound beyond loopback with no users, the server does not start at all.
        with pytest.raises(ConfigError, match="modelkeep users add NAME --role admin"):
            serve(p, "0.0.0.0", 0)


def test_viewer_sees_no_forms_and_every_change_is_refused(app: Any, reg: ModelPersistence) -> None:
    vera = _signed_in(app, "vera")
    page = vera.get("/models/churn")
    assert "vera (viewer)" in page.text
    assert "alias-form" not in page.text and "/aliases/delete" not in page.text
    assert "trash-form" not in vera.get("/models/churn/versions/1.0.0").text
    token = _csrf(vera, "/models/churn")
    for path, data in [
        ("/models/churn/aliases", {"alias": "staging", "version": "1.0.0"}),
        ("/models/churn/tags", {"key": "k", "value": "v"}),
        ("/models/churn/description", {"text": "mine"}),
        ("/models/churn/versions/1.0.0/delete", {}),
    ]:
        assert vera.post(path, data={FIELD: token, **data}).status_code == 403, path
    assert reg.get_aliases("churn")["staging"] == "1.1.0" and reg.get_tags("churn") == {}
    assert "1.0.0" in reg.list_versions("churn")


def test_editor_moves_staging_but_not_production_and_admin_does(app: Any, reg: ModelPersistence) -> None:
    eddie = _signed_in(app, "eddie")
    assert _move(eddie, "staging", "1.2.0", seen={"staging": "1.1.0"}).status_code == 303
    refused = _move(eddie, "production", "1.2.0", seen={"production": "1.1.0"})
    assert refused.status_code == 403 and "protected" in refused.text
    ada = _signed_in(app, "ada")
    assert _move(ada, "production", "1.2.0", seen={"production": "1.1.0"}).status_code == 303
    assert reg.get_aliases("churn") == {"production": "1.2.0", "staging": "1.2.0"}
    moves = [(e.actor, e.alias, e.after) for e in reg.history("churn", limit=2)]
    assert moves == [("eddie", "staging", "1.2.0"), ("ada", "production", "1.2.0")]
    history = ada.get("/history?model=churn").text
    assert "eddie" in history and "ada" in history


def test_a_stale_page_gets_a_409_with_both_targets_and_a_retry(app: Any, reg: ModelPersistence) -> None:
    eddie = _signed_in(app, "eddie")
    page = eddie.get("/models/churn/versions/1.2.0").text
    seen = re.search(r'id="version-alias-form".*?name="seen" value="([^"]*)"', page, re.S)
    assert seen is not None
    drawn = json.loads(seen.group(1).replace("&#34;", '"'))
    assert drawn == {"production": "1.1.0", "staging": "1.1.0"}
    reg.set_alias("churn", "staging", "1.0.0")  # someone else, meanwhile
    stale = eddie.post(
        "/models/churn/aliases",
        data={FIELD: _csrf(eddie, "/models/churn"), "alias": "staging", "version": "1.2.0", "seen": json.dumps(drawn)},
    )
    assert stale.status_code == 409
    assert reg.get_aliases("churn")["staging"] == "1.0.0"  # not overwritten
    assert re.search(r'id="conflict-seen">1\.1\.0<', stale.text) and 'id="conflict-current"><a' in stale.text
    retry = re.search(r'id="retry-form".*?name="seen" value=\'([^\']*)\'', stale.text, re.S)
    assert retry is not None
    again = eddie.post(
        "/models/churn/aliases",
        data={
            FIELD: _csrf(eddie, "/models/churn"),
            "alias": "staging",
            "version": "1.2.0",
            "seen": retry.group(1).replace("&#34;", '"'),
        },
        follow_redirects=False,
    )
    assert again.status_code == 303 and reg.get_aliases("churn")["staging"] == "1.2.0"
    # A new alias drawn as absent conflicts with one created meanwhile.
    reg.set_alias("churn", "canary", "1.0.0")
    assert _move(eddie, "canary", "1.2.0", seen={}).status_code == 409
    reg.delete_alias("churn", "canary")


def test_dns_rebinding_request_is_refused_by_the_host_allow_list(reg: ModelPersistence) -> None:
    """The attack: a page on attacker.example rebinds its name to 127.0.0.1, reads a form
    token from the UI, and posts with ``Host`` and ``Origin`` both attacker.example."""
    attack_host = "attacker.example:8765"

    def attack(app: Any) -> tuple[int, int]:
        browser = TestClient(app, base_url=f"http://{attack_host}")
        page = browser.get("/models/churn")
        found = re.search(rf'name="{FIELD}" value="([0-9a-f]+)"', page.text)
        if page.status_code != 200 or found is None:
            return page.status_code, 0
        post = browser.post(
            "/models/churn/aliases",
            data={FIELD: found.group(1), "alias": "staging", "version": "1.0.0"},
            headers={"Origin": f"http://{attack_host}"},
            follow_redirects=False,
        )
        return page.status_code, post.status_code

    with ModelPersistence(models_dir=reg.models_dir) as anonymous_view:
        # Without the allow-list (attacker.example let in), the CSRF check alone lets it through
        # in a sign-in-free UI: this is the request the issue reproduced.
        open_app = create_app(anonymous_view, auth=AuthSettings(mode="none", allowed_hosts=("attacker.example",)))
        assert attack(open_app) == (200, 303)
        assert reg.get_aliases("churn")["staging"] == "1.0.0"
        reg.set_alias("churn", "staging", "1.1.0")
        guarded = create_app(anonymous_view, auth=AuthSettings(mode="none"))
        assert attack(guarded) == (400, 0)
        refused = TestClient(guarded, base_url=f"http://{attack_host}").post(
            "/models/churn/aliases", data={"alias": "staging", "version": "1.0.0"}
        )
        assert refused.status_code == 400 and "--allowed-host attacker.example" in refused.text
        assert reg.get_aliases("churn")["staging"] == "1.1.0"
        for host in ("localhost:8765", "[::1]:8765", "127.0.0.1"):
            assert TestClient(guarded, base_url=f"http://{host}").get("/").status_code == 200, host
        named = create_app(anonymous_view, auth=AuthSettings(mode="none", allowed_hosts=("models.internal",)))
        assert TestClient(named, base_url="http://models.internal").get("/").status_code == 200


def test_forged_or_altered_session_cookies_are_refused(app: Any) -> None:
    ada = _signed_in(app, "ada")
    real = ada.cookies.get(SESSION_COOKIE)
    assert real
    for forged in (secrets.token_urlsafe(32), real[:-2] + ("AA" if not real.endswith("AA") else "BB"), "ada"):
        intruder = TestClient(app, base_url=BASE, cookies={SESSION_COOKIE: forged})
        assert intruder.get("/models/churn", follow_redirects=False).status_code == 303
    assert ada.get("/models/churn", follow_redirects=False).status_code == 200


def test_session_cookie_flags_and_sign_out(app: Any) -> None:
    client = TestClient(app, base_url=BASE)
    token = _csrf(client, "/signin")
    response = client.post(
        "/signin", data={FIELD: token, "username": "vera", "password": PASSWORDS["vera"]}, follow_redirects=False
    )
    cookie = response.headers["set-cookie"].lower()
    assert cookie.startswith(SESSION_COOKIE) and "httponly" in cookie and "samesite=strict" in cookie
    assert "secure" not in cookie  # plain HTTP on loopback: a Secure cookie would never come back
    tls = TestClient(app, base_url="https://127.0.0.1:8765")
    token = _csrf(tls, "/signin")
    secure = tls.post(
        "/signin", data={FIELD: token, "username": "vera", "password": PASSWORDS["vera"]}, follow_redirects=False
    )
    assert "secure" in secure.headers["set-cookie"].lower()
    out = client.post("/signout", data={FIELD: _csrf(client, "/models/churn")}, follow_redirects=False)
    assert out.status_code == 303
    assert client.get("/models/churn", follow_redirects=False).status_code == 303


def test_repeated_wrong_passwords_are_rate_limited(app: Any) -> None:
    client = TestClient(app, base_url=BASE)
    token = _csrf(client, "/signin")
    for _ in range(5):
        wrong = client.post("/signin", data={FIELD: token, "username": "ada", "password": "guess-guess"})
        assert wrong.status_code == 401
    blocked = client.post("/signin", data={FIELD: token, "username": "ada", "password": PASSWORDS["ada"]})
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    assert SESSION_COOKIE not in client.cookies


def test_api_tokens_act_as_their_owner_and_only_them(app: Any, reg: ModelPersistence) -> None:
    eddie_token = reg.users.new_token("eddie", "ci")
    vera_token = reg.users.new_token("vera", "laptop")
    api = TestClient(app, base_url=BASE)
    moved = api.post(
        "/models/churn/aliases",
        data={"alias": "staging", "version": "1.0.0", "expected": "1.1.0"},
        headers={"Authorization": f"Bearer {eddie_token}"},
        follow_redirects=False,
    )
    assert moved.status_code == 303 and reg.history("churn", limit=1)[0].actor == "eddie"
    viewer = api.post(
        "/models/churn/aliases",
        data={"alias": "staging", "version": "1.2.0"},
        headers={"Authorization": f"Bearer {vera_token}"},
    )
    assert viewer.status_code == 403
    for bad in ("mkt_" + secrets.token_urlsafe(32), "not-a-token", eddie_token[:-1]):
        assert api.get("/", headers={"Authorization": f"Bearer {bad}"}).status_code == 401
    # Signed in as vera, presenting eddie's token: two identities, refused.
    vera = _signed_in(app, "vera")
    assert vera.get("/", headers={"Authorization": f"Bearer {eddie_token}"}).status_code == 401
    # The library refuses a token for another user than MODELKEEP_USER names.
    with pytest.raises(AuthenticationError, match="belongs to another user"):
        reg.users.check_token(eddie_token, name="ada")
    reg.users.revoke_tokens("eddie")
    assert api.get("/", headers={"Authorization": f"Bearer {eddie_token}"}).status_code == 401


def test_password_change_and_removal_end_sessions(app: Any, reg: ModelPersistence) -> None:
    vera = _signed_in(app, "vera")
    assert vera.get("/", follow_redirects=False).status_code == 200
    reg.users.set_password("vera", "viewer-pass-2")
    try:
        assert vera.get("/", follow_redirects=False).status_code == 303
    finally:
        reg.users.set_password("vera", PASSWORDS["vera"])


def test_sso_proxy_header_is_believed_only_from_the_trusted_proxy(reg: ModelPersistence) -> None:
    auth = AuthSettings(mode="proxy", trusted_proxies=AuthSettings.networks(["10.0.0.5"]))
    app = create_app(reg, auth=auth)
    via_proxy = TestClient(app, base_url=BASE, client=("10.0.0.5", 40000))
    page = via_proxy.get("/models/churn", headers={"X-Forwarded-User": "ada"})
    assert page.status_code == 200 and "ada (admin)" in page.text
    assert "carol (viewer)" in via_proxy.get("/", headers={"X-Forwarded-User": "carol"}).text
    assert via_proxy.get("/").status_code == 401  # the proxy sent no user
    direct = TestClient(app, base_url=BASE, client=("10.0.0.9", 40000))
    assert direct.get("/", headers={"X-Forwarded-User": "ada"}).status_code == 403
    drawn = via_proxy.get("/models/churn", headers={"X-Forwarded-User": "ada"}).text
    found = re.search(rf'name="{FIELD}" value="([0-9a-f]+)"', drawn)
    assert found is not None
    direct.cookies.update(via_proxy.cookies)
    refused = direct.post(
        "/models/churn/aliases",
        data={FIELD: found.group(1), "alias": "production", "version": "1.0.0"},
        headers={"X-Forwarded-User": "ada"},
    )
    assert refused.status_code == 403 and reg.get_aliases("churn")["production"] == "1.1.0"
    # Through the proxy, ada (an admin account) moves production, and the history says so.
    moved = via_proxy.post(
        "/models/churn/aliases",
        data={FIELD: found.group(1), "alias": "production", "version": "1.0.0", "seen": '{"production": "1.1.0"}'},
        headers={"X-Forwarded-User": "ada"},
        follow_redirects=False,
    )
    assert moved.status_code == 303 and reg.history("churn", limit=1)[0].actor == "ada"


def test_sign_in_redirects_only_to_this_server(app: Any) -> None:
    client = TestClient(app, base_url=BASE)
    token = _csrf(client, "/signin")
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        response = client.post(
            "/signin",
            data={FIELD: token, "username": "vera", "password": PASSWORDS["vera"], "next": target},
            follow_redirects=False,
        )
        assert response.headers["location"] == "/", target


def test_only_admins_manage_users_in_the_ui(app: Any, reg: ModelPersistence) -> None:
    eddie = _signed_in(app, "eddie")
    assert 'id="users-link"' not in eddie.get("/").text
    assert eddie.get("/users").status_code == 403
    refused = eddie.post("/users/add", data={FIELD: _csrf(eddie, "/"), "name": "mallory", "role": "admin"})
    assert refused.status_code == 403 and reg.users.get("mallory") is None
    ada = _signed_in(app, "ada")
    page = ada.get("/users")
    assert page.status_code == 200 and 'data-user="vera"' in page.text and "$argon2" not in page.text
    token = _csrf(ada, "/users")
    added = ada.post("/users/add", data={FIELD: token, "name": "sso-sam", "role": "editor"}, follow_redirects=False)
    assert added.status_code == 303
    assert reg.users.identity("sso-sam") is not None and reg.users.get("sso-sam").password_hash is None  # type: ignore[union-attr]
    assert ada.post("/users/role", data={FIELD: token, "name": "ada", "role": "viewer"}).status_code == 403
    assert ada.post("/users/remove", data={FIELD: token, "name": "sso-sam"}).status_code == 200
    assert reg.users.get("sso-sam") is None
