"""The real-browser harness (tests/browser.py) on pages written here: it must see good pages as
good, and broken images, console errors, uncaught exceptions, outside requests and
uncaptioned figures as such. One headless Chromium serves the whole module."""
import base64
import io

import pytest
from PIL import Image

import browser
from browser import Browser, require_browser


@pytest.fixture(scope="module")
def chromium():
    require_browser()
    b = Browser()
    yield b
    b.close()


def png_data_uri(w, h, colour):
    buf = io.BytesIO()
    img = Image.new("RGB", (w, h), colour)
    for x in range(w):                       # a diagonal line: a real picture, not a fill
        img.putpixel((x, x * h // w), (0, 0, 0))
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def write_page(tmp_path, name, body, title="vaelab test page"):
    page = tmp_path / name
    page.write_text(f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{title}</title>"
                    f"</head><body>\n{body}\n</body></html>\n", encoding="utf-8")
    return page


def test_good_page(chromium, tmp_path):
    a, b = png_data_uri(64, 48, (200, 30, 30)), png_data_uri(32, 32, (30, 30, 200))
    page = write_page(tmp_path, "good.html", f"""
<h1>Run report</h1>
<figure><img src="{a}" alt="samples"><figcaption>Samples after 10 epochs</figcaption></figure>
<figure><img src="{b}" alt="loss"><figcaption>
   Training loss </figcaption></figure>
<div style="height:2500px"></div>
<div id="end" style="height:100px;background:rgb(0,255,0)"></div>
""", title="Good report")
    shot = tmp_path / "shots" / "good.png"
    check = chromium.open_page(page, shot)

    assert check.title == "Good report"
    assert [(w, h, c) for _, w, h, c in check.images] == [(64, 48, True), (32, 32, True)]
    assert all(src.startswith("data:image/png;base64,") for src, *_ in check.images)
    assert all(len(src) <= 60 for src, *_ in check.images)
    assert check.broken_images == []
    assert check.console_errors == []
    assert check.requests == []
    assert check.figures == [(True, "Samples after 10 epochs"), (True, "Training loss")]
    assert check.uncaptioned_figures == []

    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(shot) as im:
        assert im.width == 1280
        assert im.height > 2500                    # the whole page, not the 900 px window
        # the green block at the very bottom made it into the picture
        assert im.convert("RGB").getpixel((640, im.height - 20)) == (0, 255, 0)


def test_broken_image_and_uncaptioned_figures(chromium, tmp_path):
    good = png_data_uri(16, 16, (0, 128, 0))
    page = write_page(tmp_path, "broken.html", f"""
<figure><img src="{good}"><figcaption>fine</figcaption></figure>
<figure><img src="data:image/png;base64,AAAAbm90IGEgcG5n"></figure>
<figure><img src="{good}"><figcaption>   </figcaption></figure>
""")
    check = chromium.open_page(page, tmp_path / "broken.png")
    widths = [w for _, w, _, _ in check.images]
    assert widths == [16, 0, 16]
    assert all(c for *_, c in check.images)        # a broken image is "complete" too
    assert [src for src, *_ in check.broken_images] == ["data:image/png;base64,AAAAbm90IGEgcG5n"]
    assert check.figures == [(True, "fine"), (False, ""), (False, "")]
    assert check.uncaptioned_figures == [1, 2]
    assert check.requests == []


def test_console_error_is_reported(chromium, tmp_path):
    page = write_page(tmp_path, "console.html", "<script>console.error('x');</script><p>hi</p>")
    check = chromium.open_page(page, tmp_path / "console.png")
    assert len(check.console_errors) == 1
    assert check.console_errors[0].startswith("console-api: ")
    assert check.console_errors[0].endswith('"x"')


def test_uncaught_exception_is_reported(chromium, tmp_path):
    page = write_page(tmp_path, "throws.html",
                      "<script>throw new Error('figure table missing');</script><p>hi</p>")
    check = chromium.open_page(page, tmp_path / "throws.png")
    assert len(check.console_errors) == 1
    assert "Uncaught Error: figure table missing" in check.console_errors[0]


def test_outside_request_is_reported(chromium, tmp_path):
    page = write_page(tmp_path, "remote.html",
                      '<img src="http://example.invalid/x.png"><p>remote image</p>')
    check = chromium.open_page(page, tmp_path / "remote.png")
    assert check.requests == ["http://example.invalid/x.png"]
    assert check.images == [("http://example.invalid/x.png", 0, 0, True)]
    assert any("example.invalid" in e for e in check.console_errors)   # failed to load


def test_pages_do_not_leak_into_each_other(chromium, tmp_path):
    # a page after a noisy one starts clean: logs are per page
    noisy = write_page(tmp_path, "noisy.html",
                       '<img src="http://example.invalid/y.png"><script>console.error(1)</script>')
    quiet = write_page(tmp_path, "quiet.html", "<p>quiet</p>")
    chromium.open_page(noisy, tmp_path / "noisy.png")
    check = chromium.open_page(quiet, tmp_path / "quiet.png")
    assert (check.console_errors, check.requests, check.images) == ([], [], [])


def test_one_off_open_page(tmp_path):
    require_browser()
    page = write_page(tmp_path, "one.html", "<p>one</p>", title="One off")
    check = browser.open_page(page, tmp_path / "one.png")
    assert check.title == "One off" and check.console_errors == []
    assert (tmp_path / "one.png").stat().st_size > 0


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception),
                                         ("", pytest.skip.Exception)])
def test_missing_browser_skips_or_fails_under_ci(monkeypatch, ci, outcome):
    monkeypatch.setattr(browser, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setenv("CI", ci)
    assert "/nonexistent/chromium" in browser.chromium_missing()
    with pytest.raises(outcome, match="browser missing"):
        require_browser()
