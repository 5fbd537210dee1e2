"""Shared by the browser tests: Debian's Chromium, the real ``modelkeep ui`` command on a free
loopback port, console-error capture, contrast check, screenshots, and signing in.

The browser is Debian's ``chromium`` (``.ci/run`` installs it with apt-get; nothing is
downloaded at run time), driven by Playwright through its ``executable_path``. Set
``MODELKEEP_UI_SCREENSHOTS=docs/screenshots`` to write the README's screenshots while the tests run.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from modelkeep.identity import validate_role

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

#: The accounts of the team tests: name -> (role, password).
USERS = {"vera": ("viewer", "viewer-pass-1"), "eddie": ("editor", "editor-pass-1"), "ada": ("admin", "admin-pass-1")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until_serving(port: int) -> None:
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"the UI did not start listening on port {port}")


def start_ui(models_dir: Path, env: dict[str, str] | None = None) -> tuple[str, subprocess.Popen[str]]:
    """Start ``modelkeep ui`` on ``models_dir`` (with ``env`` added to this environment); return
    the URL it printed, once it listens, and the process (the caller stops it)."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelkeep", "--models-dir", str(models_dir), "ui", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"(http://\S+)", line)
    assert match, f"no URL printed: {line!r} {proc.stderr.read() if proc.stderr and proc.poll() is not None else ''}"
    _wait_until_serving(port)
    return match.group(1), proc


def _shot(page: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


#: Text whose colour has less than the WCAG AA contrast with its background (4.5:1, 3:1 for large text).
LOW_CONTRAST_JS = r"""
() => {
  function rgb(s) { const m = s.match(/[\d.]+/g); return m ? m.map(Number) : [0, 0, 0, 1]; }
  function lum(c) {
    const a = c.slice(0, 3).map(v => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * a[0] + 0.7152 * a[1] + 0.0722 * a[2];
  }
  function bg(el) {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length < 4 || c[3] > 0.5) return c;
    }
    return [255, 255, 255, 1];
  }
  const bad = [];
  document.querySelectorAll("body *").forEach(el => {
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.offsetParent) return;
    const st = getComputedStyle(el);
    if (st.visibility === "hidden" || el.closest(".sr-only, .skip")) return;
    const l1 = lum(rgb(st.color)), l2 = lum(bg(el));
    const ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
    const size = parseFloat(st.fontSize), bold = parseInt(st.fontWeight) >= 700;
    const need = (size >= 24 || (bold && size >= 18.66)) ? 3 : 4.5;
    const text = el.textContent.trim().slice(0, 30);
    if (ratio < need) bad.push(`${el.tagName}.${el.className} "${text}" ${ratio.toFixed(2)}`);
  });
  return bad;
}
"""


def _console_errors(page: Any) -> list[str]:
    """Console errors and failed requests of ``page``, except the status of a page that is
    meant to be an error page (a 400 search error, a 409 trash confirmation, a 403 refused move)
    and the icon fetch Chromium abandons when the page navigates away."""
    errors: list[str] = []

    def on_console(msg: Any) -> None:
        if msg.type != "error":
            return
        if msg.text.startswith("Failed to load resource") and msg.location.get("url") == page.url:
            return  # the document's own 4xx status, checked by the test itself
        errors.append(f"console: {msg.text} at {msg.location.get('url')}")

    def on_failed(req: Any) -> None:
        if req.failure == "net::ERR_ABORTED" and req.url.endswith("/favicon.svg"):
            return  # the browser drops the previous page's icon fetch when a click navigates on
        errors.append(f"request failed: {req.url} {req.failure} on {page.url}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on("requestfailed", on_failed)
    return errors


def _sign_in(page: Any, url: str, name: str) -> None:
    page.goto(url + "models/churn")
    assert "/signin" in page.url
    page.fill("#username", name)
    page.fill("#password", USERS[name][1])
    page.click("#signin-form button")
    page.wait_for_url(url + "models/churn")
    # The header names the role as stored: "editor" is stored as what it now means, maintainer.
    assert page.locator("#signed-in-as").inner_text() == f"{name} ({validate_role(USERS[name][0])})"


def _set_alias(page: Any, alias: str, version: str) -> None:
    page.fill('#alias-form input[name="alias"]', alias)
    page.fill('#alias-form input[name="version"]', version)
    page.click("#alias-form button")


def _sign_out(page: Any) -> None:
    page.click("#signout-form button")
    page.wait_for_url(re.compile(r".*/signin.*"))
