"""End-to-end: the real ``modelkeep ui`` command, driven by a real headless Chromium.

The browser and server helpers are in ``tests/_browser.py`` (Debian's ``chromium``, nothing
downloaded at run time). Set ``MODELKEEP_UI_SCREENSHOTS=docs/screenshots`` to write the README's
screenshots while the test runs.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelkeep import ModelPersistence
from tests._browser import CHROMIUM, CHROMIUM_ARGS, LOW_CONTRAST_JS, _console_errors, _shot, start_ui


@pytest.fixture
def models_dir(tmp_path: Path, classifier: Any, iris_data: Any) -> Path:
    import pandas as pd

    folder = tmp_path / "models"
    features, target = iris_data
    frame = pd.DataFrame(features, columns=["sepal_length", "sepal_width", "petal_length", "petal_width"])
    with ModelPersistence(models_dir=folder) as p:
        for i, acc in enumerate([0.78, 0.83, 0.88, 0.86, 0.91]):
            p.save(
                classifier,
                "churn",
                f"1.{i}.0",
                input_example=frame,
                training_data=frame,
                training_target=target,
                parent=f"1.{i - 1}.0" if i else None,
                accuracy=acc,
                auc=round(acc + 0.04, 3),
                val_loss=round(1.05 - acc, 3),
                train_seconds=12.5 + 3 * i,
                dataset="v7",
            )
        for i, acc in enumerate([0.64, 0.69]):
            p.save(classifier, "fraud", f"2.{i}.0", accuracy=acc)
        p.set_alias("churn", "production", "1.2.0")
        p.set_alias("churn", "staging", "1.4.0")
        p.set_tag("churn", "owner", "growth-team", version="1.4.0")
        p.set_tag("churn", "reviewed", "yes", version="1.2.0")
        p.set_tag("churn", "team", "growth")
        p.set_description("churn", "Predicts which subscribers cancel in the next 30 days.")
    return folder


@pytest.fixture
def server(models_dir: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    url, proc = start_ui(models_dir)
    yield url, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def test_click_through_list_model_version_compare_promote_and_history(
    server: tuple[str, subprocess.Popen[str]],
) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, proc = server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = _console_errors(page)

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
        expect(page.locator("#small-multiples figure")).to_have_count(4)  # one scale per metric
        expect(page.locator('#comparison td.best:has-text("0.91")')).to_have_count(1)
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


def test_every_page_fits_has_no_console_errors_and_a_sane_chart_legend(
    server: tuple[str, subprocess.Popen[str]],
) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, _proc = server
    base = url.rstrip("/")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = _console_errors(page)

        for width in (1400, 1000):
            page.set_viewport_size({"width": width, "height": 900})
            page.goto(base + "/models/churn")
            expect(page.locator("#chart.ready canvas")).to_have_count(1)
            wrap = page.evaluate(
                "() => { const e = document.getElementById('versions-wrap');"
                " return [e.scrollWidth, e.clientWidth, document.documentElement.scrollWidth, window.innerWidth]; }"
            )
            assert wrap[0] <= wrap[1], f"the versions table overflows its box at {width} px: {wrap}"
            assert wrap[2] <= wrap[3], f"the page scrolls sideways at {width} px: {wrap}"
            expect(page.locator("#versions thead th", has_text="Tags")).to_be_visible()

        page.set_viewport_size({"width": 1400, "height": 900})
        for path in (
            "/",
            "/models/churn",
            "/models/churn/versions/1.4.0",
            "/models/churn/compare?v=1.0.0&v=1.4.0",
            "/history",
            "/?q=acuracy",
        ):
            page.goto(base + path)
            unlabelled = page.evaluate(
                "() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]"
                ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))"
                ".map(e => e.outerHTML)"
            )
            assert unlabelled == [], f"form fields without a label on {path}: {unlabelled}"
            low = page.evaluate(LOW_CONTRAST_JS)
            assert low == [], f"text below WCAG AA contrast on {path}: {low}"
        page.goto(base + "/models/churn")
        expect(page.locator("#chart.ready canvas")).to_have_count(1)
        legend = page.inner_text("#chart-legend")
        assert "accuracy" in legend and "aliased version" in legend
        assert "--" not in legend and "version:" not in legend
        page.hover("#chart .u-over", position={"x": 5, "y": 100})
        expect(page.locator("#chart-legend .readout")).to_contain_text("1.0.0")
        page.select_option("#chart-metric", "train_seconds")
        expect(page.locator("#chart-legend")).to_contain_text("train_seconds")

        # The column chooser hides a column, and the choice survives a reload.
        page.click("#column-chooser summary")
        page.uncheck('#column-chooser input[value="auc"]')
        expect(page.locator('#versions th[data-col="auc"]')).to_be_hidden()
        auc = page.evaluate("() => document.querySelector('#versions th[data-col=auc]').cellIndex")
        expect(page.locator("#versions tbody tr").first.locator("td").nth(auc)).to_be_hidden()
        page.reload()
        expect(page.locator('#versions th[data-col="auc"]')).to_be_hidden()
        expect(page.locator('#column-chooser input[value="auc"]')).not_to_be_checked()
        page.click("#column-chooser summary")
        page.check('#column-chooser input[value="auc"]')
        expect(page.locator('#versions th[data-col="auc"]')).to_be_visible()

        page.goto(base + "/models/churn/versions/1.3.0")
        expect(page.locator("#input-signature tbody tr")).to_have_count(4)
        expect(page.locator("#lineage")).to_contain_text("150 rows")
        expect(page.locator("#lineage-parent a")).to_have_text("1.2.0")
        time_el = page.locator("#artifact time").first
        assert "T" in (time_el.get_attribute("datetime") or "")
        assert "T" not in time_el.inner_text()

        # A typo in the search box: shown in place, the query kept, a fix offered.
        page.fill("#search", "acuracy > 0.8")
        page.press("#search", "Enter")
        expect(page.locator("#search-error")).to_contain_text("Did you mean accuracy?")
        expect(page.locator("#search")).to_have_value("acuracy > 0.8")
        _shot(page, "search")
        page.click("#search-fixed")
        expect(page.locator("#results")).to_contain_text("1.4.0")

        # Trashing the production version offers to move the alias first, or to force it.
        page.goto(base + "/models/churn/versions/1.2.0")
        page.click("#trash-form button")
        expect(page.locator("#trash-confirm")).to_contain_text("production")
        _shot(page, "trash")
        page.select_option("#move-first select", "1.4.0")
        page.click("#move-first button")
        expect(page.locator(".flash")).to_contain_text("production -> 1.4.0")
        page.click("#trash-form button")
        expect(page.locator(".flash")).to_contain_text("moved to the trash")

        page.keyboard.press("Tab")  # the skip link is the first stop, and it is visible when focused
        expect(page.locator("a.skip")).to_be_focused()
        assert errors == []
        browser.close()
