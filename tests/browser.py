"""A real-browser check of the self-contained HTML pages vaelab writes (helper for tests).

Driver: Selenium 4 with Debian's ``chromium`` and ``chromium-driver`` packages
(/usr/bin/chromium, /usr/bin/chromedriver), headless. Console messages come from the
``browser`` log, network requests from the ``performance`` log (Network.requestWillBeSent);
the full-page screenshot is taken over the DevTools protocol (the viewport is stretched to
the page's height with Emulation.setDeviceMetricsOverride, capped at MAX_SHOT_HEIGHT px, so
lazily loaded images below the fold load too, then Page.captureScreenshot).

The browser never reaches the network: ``--host-resolver-rules`` makes every host name fail
to resolve, so a page that asks for http://... still shows that URL in ``requests`` (and a
"Failed to load resource" console error) but nothing leaves the machine.

    from browser import Browser, open_page, require_browser
    require_browser()                     # skip, or fail under CI=true, without chromium
    check = open_page(Path("report.html"), tmp_path / "report.png")   # one-off browser
    with Browser() as b:                  # or one browser for many pages
        check = b.open_page(html, png)
"""
from __future__ import annotations

import base64
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1280, 900)
MAX_SHOT_HEIGHT = 20000
LOAD_TIMEOUT_S = 30.0

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",              # the tests run as root in containers; the sandbox refuses root
    "--disable-gpu",
    "--disable-dev-shm-usage",   # containers often have a tiny /dev/shm
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # no DNS: pages are checked offline
)

# every <img> after load: (src prefix, naturalWidth, naturalHeight, complete)
_IMAGES_JS = """
return Array.from(document.images).map(i => [
    (i.currentSrc || i.src || i.getAttribute('src') || '').slice(0, 60),
    i.naturalWidth, i.naturalHeight, i.complete]);
"""
# every <figure>: (has a <figcaption> child with non-empty text, that text)
_FIGURES_JS = """
return Array.from(document.querySelectorAll('figure')).map(f => {
    const c = Array.from(f.children).find(e => e.tagName === 'FIGCAPTION');
    const t = c ? c.textContent.replace(/\\s+/g, ' ').trim() : '';
    return [t.length > 0, t];
});
"""
_SETTLED_JS = """
return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete);
"""


@dataclass
class PageCheck:
    """What a real browser saw on one page."""
    title: str
    images: list[tuple[str, int, int, bool]] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)   # "source: message"
    requests: list[str] = field(default_factory=list)          # URLs, in request order
    figures: list[tuple[bool, str]] = field(default_factory=list)
    screenshot: Path | None = None

    @property
    def broken_images(self) -> list[tuple[str, int, int, bool]]:
        return [i for i in self.images if not i[3] or i[1] == 0 or i[2] == 0]

    @property
    def uncaptioned_figures(self) -> list[int]:
        return [k for k, (ok, _) in enumerate(self.figures) if not ok]


def chromium_missing() -> str | None:
    """Why the browser checks cannot run here, or None when they can."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        return (f"browser missing: {', '.join(missing)} "
                "(apt-get install chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "browser missing: the selenium package (pip install -e '.[test]')"
    return None


def require_browser() -> None:
    """Skip the calling test when there is no browser; under CI=true, fail it instead."""
    reason = chromium_missing()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)


class Browser:
    """One headless Chromium (through chromedriver) for any number of pages; close() it."""

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self._profile = tempfile.TemporaryDirectory(prefix="vaelab-chromium-",
                                                    ignore_cleanup_errors=True)
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS:
            opts.add_argument(flag)
        opts.add_argument(f"--user-data-dir={self._profile.name}")
        opts.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        try:
            self.driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
        except BaseException:
            self._profile.cleanup()
            raise
        self.driver.set_page_load_timeout(LOAD_TIMEOUT_S)

    def close(self) -> None:
        driver, self.driver = getattr(self, "driver", None), None
        try:
            if driver is not None:
                driver.quit()
        finally:
            self._profile.cleanup()

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _wait_settled(self) -> bool:
        end = time.monotonic() + LOAD_TIMEOUT_S
        while time.monotonic() < end:
            if self.driver.execute_script(_SETTLED_JS):
                return True
            time.sleep(0.05)
        return False

    def open_page(self, html: Path, screenshot: Path) -> PageCheck:
        d = self.driver
        url = Path(html).resolve().as_uri()
        # start from a blank tab and throw away what earlier pages (or the first tab) logged
        d.get("about:blank")
        d.get_log("browser")
        d.get_log("performance")

        d.get(url)                     # returns after the load event
        # stretch the viewport over the whole page, so that lazily loaded images load and
        # the screenshot covers everything; images that load may lengthen the page, so measure
        # again until the height holds
        height = 0
        try:
            for _ in range(4):
                new = d.execute_script(
                    "return Math.max(document.documentElement.scrollHeight,"
                    " document.body ? document.body.scrollHeight : 0);")
                new = max(WINDOW[1], min(int(new or 0), MAX_SHOT_HEIGHT))
                if new == height:
                    break
                height = new
                d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                    "width": WINDOW[0], "height": height, "deviceScaleFactor": 1,
                    "mobile": False})
                self._wait_settled()
            shot = d.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": False, "fromSurface": True})
            screenshot = Path(screenshot)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            images = [(str(s), int(w), int(h), bool(c))
                      for s, w, h, c in d.execute_script(_IMAGES_JS)]
            figures = [(bool(ok), str(t)) for ok, t in d.execute_script(_FIGURES_JS)]
            title = d.title
        finally:
            d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

        errors = [f"{e.get('source', '?')}: {e.get('message', '')}"
                  for e in d.get_log("browser")
                  if str(e.get("level", "")).upper() in ("SEVERE", "ERROR")]
        requests: list[str] = []
        for entry in d.get_log("performance"):
            msg = json.loads(entry["message"]).get("message", {})
            if msg.get("method") != "Network.requestWillBeSent":
                continue
            req = msg["params"]["request"]["url"]
            if unquote(req) == unquote(url) or req.startswith("data:") or req == "about:blank":
                continue
            requests.append(req)
        return PageCheck(title=title, images=images, console_errors=errors,
                         requests=requests, figures=figures, screenshot=screenshot)


def open_page(html: Path, screenshot: Path) -> PageCheck:
    """Open one local HTML file in a fresh headless Chromium; see Browser.open_page."""
    with Browser() as b:
        return b.open_page(html, screenshot)


__all__ = ["Browser", "PageCheck", "chromium_missing", "open_page", "require_browser",
           "CHROMIUM", "CHROMEDRIVER", "CHROMIUM_FLAGS"]
