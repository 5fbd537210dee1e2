"""Promotions in Debian's Chromium: a policy on ``churn@production`` (accuracy >= 0.9 and one
approval), an editor's refused moves listing each failed condition exactly as the library's
``PolicyError`` / ``check_alias_move`` state them, another user's **Approve** on the version page,
then the move going through; no console errors, and every page fits the viewport.

One real ``modelkeep ui`` server (SQLite; the policy engine itself runs on both backends in
``test_policies.py``), one browser, real accounts; helpers shared in ``tests/_browser.py``.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from modelkeep import ModelPersistence, PolicyError
from tests._browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LOW_CONTRAST_JS,
    USERS,
    _console_errors,
    _set_alias,
    _shot,
    _sign_in,
    _sign_out,
    start_ui,
)

FITS_JS = "() => [document.documentElement.scrollWidth, window.innerWidth]"
UNLABELLED_JS = (
    "() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]"
    ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.outerHTML)"
)


def _fits_and_reads(page: Any, where: str) -> None:
    """The page scrolls no sideways at 1400 and 1000 px, labels its fields and meets WCAG AA contrast."""
    for width in (1000, 1400):
        page.set_viewport_size({"width": width, "height": 900})
        scroll, inner = page.evaluate(FITS_JS)
        assert scroll <= inner, f"{where} scrolls sideways at {width} px: {scroll} > {inner}"
    assert page.evaluate(UNLABELLED_JS) == [], f"form fields without a label on {where}"
    assert page.evaluate(LOW_CONTRAST_JS) == [], f"text below WCAG AA contrast on {where}"


def _refusal(page: Any) -> list[tuple[str, str]]:
    """The (condition, seen) rows of the refused-move page."""
    rows = page.locator("#policy-failures tbody tr")
    return [(r.locator(".condition").inner_text(), r.locator(".seen").inner_text()) for r in rows.all()]


def _library_refusal(p: ModelPersistence, version: str) -> list[tuple[str, str]]:
    """What the library says about the same move: the dry run and ``set_alias``'s PolicyError agree."""
    check = p.check_alias_move("churn", "production", version)
    with pytest.raises(PolicyError) as refused:
        p.set_alias("churn", "production", version)
    assert refused.value.failures == check.failures and check.failures
    for condition, seen in check.failures:
        assert f"{condition}: seen {seen}" in str(refused.value)
    return check.failures


def test_refused_move_approval_and_promotion_in_chromium(
    tmp_path: Path, classifier: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from playwright.sync_api import expect, sync_playwright

    folder = tmp_path / "models"
    monkeypatch.setenv("MODELKEEP_USER", "eddie")  # eddie is the author of every version
    p = ModelPersistence(models_dir=folder)
    for version, accuracy in (("1.0.0", 0.91), ("1.1.0", 0.85), ("1.2.0", 0.93)):
        p.save(classifier, "churn", version, metrics={"accuracy": accuracy})
    p.set_alias("churn", "production", "1.0.0")
    for name, (role, password) in USERS.items():
        p.users.add(name, password, role)
    p.set_policy("churn", "production", filter="metrics.accuracy >= 0.9", approvals=1)
    too_weak = _library_refusal(p, "1.1.0")
    assert [c for c, _ in too_weak] == ["filter metrics.accuracy >= 0.9", "approvals 1"]
    unapproved = _library_refusal(p, "1.2.0")
    assert [c for c, _ in unapproved] == ["approvals 1"]

    # Production is a protected alias: eddie may move it, so the policy is what judges him.
    url, proc = start_ui(folder, env={"MODELKEEP_PROTECTED_ALIAS_USERS": "eddie"})
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors = _console_errors(page)
            statuses: list[int] = []
            page.on("response", lambda r: statuses.append(r.status) if r.request.resource_type == "document" else None)

            # The editor is refused a version that fails both conditions, then one that lacks approval.
            _sign_in(page, url, "eddie")
            _set_alias(page, "production", "1.1.0")
            expect(page.locator("h1")).to_contain_text("production cannot point at 1.1.0")
            assert statuses[-1] == 403 and _refusal(page) == too_weak
            _shot(page, "policy-refused")
            _fits_and_reads(page, "the refused move")
            page.click("#policy-back")
            _set_alias(page, "production", "1.2.0")
            expect(page.locator("#policy-failures")).to_be_visible()
            assert statuses[-1] == 403 and _refusal(page) == unapproved

            # His own approval is recorded, and the move is still refused: it does not count.
            page.goto(url + "models/churn/versions/1.2.0")
            page.fill('#approve-form input[name="alias"]', "production")
            page.click("#approve-form button")
            expect(page.locator(".flash")).to_contain_text("eddie approved version 1.2.0 for production")
            expect(page.locator("#approvals tbody tr")).to_have_count(1)
            page.goto(url + "models/churn")
            _set_alias(page, "production", "1.2.0")
            expect(page.locator("#policy-failures")).to_be_visible()
            assert statuses[-1] == 403
            assert _refusal(page) == p.check_alias_move("churn", "production", "1.2.0").failures
            _sign_out(page)

            # Someone else approves on the version page; the approvals table shows both.
            _sign_in(page, url, "ada")
            page.goto(url + "models/churn/versions/1.2.0")
            page.fill('#approve-form input[name="alias"]', "production")
            page.click("#approve-form button")
            expect(page.locator(".flash")).to_contain_text("ada approved version 1.2.0 for production")
            approvals = page.locator("#approvals tbody tr")
            expect(approvals).to_have_count(2)
            expect(approvals.filter(has_text="ada")).to_contain_text("production")
            _shot(page, "approvals")
            _fits_and_reads(page, "the version page with approvals")
            _sign_out(page)

            # Now the editor's move goes through, and the model page shows it.
            _sign_in(page, url, "eddie")
            _set_alias(page, "production", "1.2.0")
            expect(page.locator(".flash")).to_contain_text("production -> 1.2.0")
            expect(page.locator("#aliases tr", has_text="production")).to_contain_text("1.2.0")
            _fits_and_reads(page, "the model page")
            assert errors == []
            browser.close()
    finally:
        p.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(15)
    again = ModelPersistence(models_dir=folder)
    assert again.get_aliases("churn")["production"] == "1.2.0"
    assert sorted(a["user"] for a in again.approvals("churn", "1.2.0", alias="production")) == ["ada", "eddie"]
    assert [(e.actor, e.alias) for e in again.history("churn", limit=1)] == [("eddie", "production")]
    again.close()
