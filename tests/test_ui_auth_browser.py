"""The team flow in Debian's Chromium: sign in, roles, protected ``production``, a stale
page's 409, history by name, a wrong ``Host``, sign-out, and no console errors.

One test, one server (the real ``modelkeep ui`` command), one browser; started by the helpers in
``tests/_browser.py``. Chromium resolves ``attacker.example`` to 127.0.0.1
(``--host-resolver-rules``), which is what DNS rebinding achieves.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from modelkeep import ModelPersistence
from modelkeep.index.audit import actor
from tests._browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    USERS,
    _set_alias,
    _shot,
    _sign_in,
    _sign_out,
    start_ui,
)


def test_team_flow_in_chromium(tmp_path: Path, classifier: Any) -> None:
    from playwright.sync_api import expect, sync_playwright

    folder = tmp_path / "models"
    p = ModelPersistence(models_dir=folder)
    for i in range(4):
        p.save(classifier, "churn", f"1.{i}.0", accuracy=0.8 + i / 50)
    p.set_alias("churn", "production", "1.1.0")
    p.set_alias("churn", "staging", "1.1.0")
    for name, (role, password) in USERS.items():
        p.users.add(name, password, role)
    url, proc = start_ui(folder)
    port = urlsplit(url).port
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM,
                args=[*CHROMIUM_ARGS, "--host-resolver-rules=MAP attacker.example 127.0.0.1"],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            statuses: list[int] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(f"{m.text} {m.location}") if m.type == "error" else None)
            page.on("response", lambda r: statuses.append(r.status) if r.request.resource_type == "document" else None)

            # A viewer: no forms, and a hand-made POST with a valid form token is refused.
            _sign_in(page, url, "vera")
            expect(page.locator("#aliases")).to_contain_text("production")
            assert page.locator("#alias-form").count() == 0
            token = page.locator('#signout-form input[name="csrf_token"]').get_attribute("value")
            forged = page.request.post(
                url + "models/churn/aliases", form={"csrf_token": token or "", "alias": "staging", "version": "1.0.0"}
            )
            assert forged.status == 403
            _sign_out(page)

            # An editor moves staging, and is refused production.
            _sign_in(page, url, "eddie")
            _set_alias(page, "staging", "1.2.0")
            expect(page.locator(".flash")).to_contain_text("staging -> 1.2.0")
            _set_alias(page, "production", "1.2.0")
            expect(page.locator("#error-detail")).to_contain_text("protected")
            assert statuses[-1] == 403
            _sign_out(page)

            # An admin moves production; a stale page then gets a 409 with both targets and a retry.
            _sign_in(page, url, "ada")
            _set_alias(page, "production", "1.2.0")
            expect(page.locator(".flash")).to_contain_text("production -> 1.2.0")
            page.goto(url + "models/churn/versions/1.3.0")
            p.set_alias("churn", "production", "1.0.0")  # someone else, after the page was drawn
            page.fill('#version-alias-form input[name="alias"]', "production")
            page.click("#version-alias-form button")
            expect(page.locator("#conflict-seen")).to_have_text("1.2.0")
            expect(page.locator("#conflict-current")).to_have_text("1.0.0")
            _shot(page, "conflict")
            assert statuses[-1] == 409 and p.get_aliases("churn")["production"] == "1.0.0"
            page.click("#retry-form button")
            expect(page.locator(".flash")).to_contain_text("production -> 1.3.0")

            # The history names each person.
            page.goto(url + "history?model=churn")
            history = page.locator("#history").inner_text()
            assert "eddie" in history and "ada" in history
            if "/users" in page.content():
                page.goto(url + "users")
                expect(page.locator("#users")).to_contain_text("eddie")
                _shot(page, "users")

            # A rebinding page's Host is refused; then sign out.
            page.goto(f"http://attacker.example:{port}/models/churn")
            assert statuses[-1] == 400 and "Invalid Host header" in page.content()
            page.goto(url + "models/churn")
            _sign_out(page)
            page.goto(url + "models/churn")
            assert "/signin" in page.url
            _shot(page, "signin")
            browser.close()
        assert p.get_aliases("churn") == {"production": "1.3.0", "staging": "1.2.0"}
        assert [(e.actor, e.alias) for e in p.history("churn", limit=4)] == [
            ("eddie", "staging"),
            ("ada", "production"),
            (actor(), "production"),  # this test process, as "someone else"
            ("ada", "production"),
        ]
        # Only the refusals this flow provoked on purpose show up, as failed loads of the page.
        unexpected = [e for e in errors if not re.search(r"status of (400|403|409) ", e)]
        assert unexpected == [], unexpected
    finally:
        p.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(15)
