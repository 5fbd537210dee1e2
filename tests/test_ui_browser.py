"""End-to-end: the real ``modelkeep ui`` command, driven by a real headless Chromium.

The browser is Debian's ``chromium`` (``.ci/run`` installs it with apt-get;
nothing is downloaded at run time), driven by Playwright through its
``executable_path``. Set ``MODELKEEP_UI_SCREENSHOTS=docs/screenshots`` to
write the README's screenshots while the test runs.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelkeep import ModelPersistence

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = os.environ.get("MODELKEEP_UI_SCREENSHOTS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def models_dir(tmp_path: Path, classifier: Any) -> Path:
    folder = tmp_path / "models"
    with ModelPersistence(models_dir=folder) as p:
        for i, acc in enumerate([0.78, 0.83, 0.88, 0.86, 0.91]):
            p.save(classifier, "churn", f"1.{i}.0", accuracy=acc, auc=acc + 0.04, dataset="v7")
        for i, acc in enumerate([0.64, 0.69]):
            p.save(classifier, "fraud", f"2.{i}.0", accuracy=acc)
        p.set_alias("churn", "production", "1.2.0")
        p.set_alias("churn", "staging", "1.4.0")
        p.set_tag("churn", "owner", "growth-team", version="1.4.0")
    return folder


@pytest.fixture
def server(models_dir: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelkeep", "--models-dir", str(models_dir), "ui", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"(http://\S+)", line)
    assert match, f"no URL printed: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
    url = match.group(1)
    _wait_until_serving(port)
    yield url, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def _wait_until_serving(port: int) -> None:
    import time

    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"the UI did not start listening on port {port}")


def _shot(page: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


def test_click_through_list_model_version_compare_promote_and_history(
    server: tuple[str, subprocess.Popen[str]],
) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, proc = server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))

        page.goto(url)
        expect(page.locator("#models")).to_contain_text("churn")
        _shot(page, "models")

        page.click("#models >> text=churn")
        expect(page.locator("h1")).to_have_text("churn")
        expect(page.locator("#chart.ready canvas")).to_have_count(1)  # uPlot drew the metric chart
        assert page.locator("#chart").get_attribute("data-points") == "5"
        assert "production@1.2.0" in (page.locator("#chart").get_attribute("data-marked") or "")
        _shot(page, "model")

        page.click("#versions >> text=1.4.0")
        expect(page.locator("#artifact")).to_contain_text("SHA-256")
        expect(page.locator("#tags")).to_contain_text("growth-team")
        _shot(page, "version")

        page.go_back()
        page.check('input[name="v"][value="1.0.0"]')
        page.check('input[name="v"][value="1.4.0"]')
        page.click("#compare-button")
        expect(page.locator("#comparison")).to_contain_text("accuracy")
        expect(page.locator("#compare-chart.ready canvas")).to_have_count(1)
        same_rows = page.locator("#comparison tr.same")
        assert same_rows.count() > 0
        page.check("#diff-only")
        expect(same_rows.first).to_be_hidden()
        _shot(page, "compare")

        page.goto(url.rstrip("/") + "/models/churn")
        page.fill('#alias-form input[name="alias"]', "production")
        page.fill('#alias-form input[name="version"]', "1.4.0")
        page.click("#alias-form button")
        expect(page.locator(".flash")).to_contain_text("production -> 1.4.0")
        expect(page.locator("#aliases")).to_contain_text("1.4.0")

        page.click("text=Full history of churn")
        first_row = page.locator("#history tbody tr").first
        expect(first_row).to_contain_text("production")
        expect(first_row).to_contain_text("1.4.0")
        _shot(page, "history")

        assert errors == []
        browser.close()

    proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert proc.wait(15) == 0
    assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
