"""The page at work in a real browser: Debian's chromium driven by Playwright, against the real
app under uvicorn (tiny checkpoints; the shipped models for the cat and the screenshot).

Skipped, saying why, without the `playwright` package or without /usr/bin/chromium
(`apt-get install -y chromium`; `.ci/run` installs it when it can). Playwright's own browser
download (`playwright install`) is never used.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image

from tests.app.conftest import LABELS, serve_in_thread, test_settings

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[3]
SCREENSHOT = ROOT / "docs" / "figures" / "ui.png"
KEY = "s3cret-key"
TIMEOUT_MS = 60_000  # a shared CI machine can be slow; nothing here is timed
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the browser tests need `pip install playwright`"
    )
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(
            f"no browser at {CHROMIUM}: `apt-get install -y chromium` "
            "(browser downloads such as `playwright install` are not used)"
        )
    sync_api.expect.set_options(timeout=TIMEOUT_MS)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def tiny(model_dir: Path) -> Iterator[str]:
    """The app on the tiny checkpoints (3 classes, 3-d latent), max_sample_n=8."""
    with serve_in_thread(test_settings(model_dir, max_sample_n=8)) as url:
        yield url


@pytest.fixture(scope="module")
def shipped() -> Iterator[str]:
    """The app on the shipped models (models/)."""
    with serve_in_thread(test_settings(ROOT / "models")) as url:
        yield url


class Page:
    """A fresh browser page on `url`, recording what must never happen: uncaught script
    errors, console errors other than the browser's own line for an HTTP error answer, and
    requests to anywhere but the server."""

    def __init__(self, browser: Any, url: str, **context: Any) -> None:
        self.url = url
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.problems: list[str] = []
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("console", self._console)
        self.page.on("request", self._request)
        self.page.goto(f"{url}/")

    def _console(self, message: Any) -> None:
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.problems.append(f"console: {message.text}")

    def _request(self, request: Any) -> None:
        if not request.url.startswith((self.url, "data:", "blob:")):
            self.problems.append(f"request outside the server: {request.url}")

    def close(self) -> None:
        self.context.close()
        assert self.problems == []


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    pages: list[Page] = []

    def open_(url: str, **context: Any) -> Any:
        pages.append(Page(browser, url, **context))
        return pages[-1].page

    yield open_
    for p in pages:
        p.close()


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as expect_

    return expect_(locator)


def models_loaded(page: Any) -> None:
    expect(page.locator("#status")).to_contain_text("model(s) served")


def draw(page: Any, pad: str, strokes: list[list[tuple[float, float]]]) -> None:
    """Draw with the mouse on `pad` (a CSS selector of a .pad): strokes of points in [0, 1]."""
    canvas = page.locator(f"{pad} canvas.ink")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()  # in the viewport, where the mouse moves
    for stroke in strokes:
        for i, (x, y) in enumerate(stroke):
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=4)
            if i == 0:
                page.mouse.down()
        page.mouse.up()


SEVEN = [[(0.3, 0.25), (0.7, 0.25), (0.45, 0.8)]]


def corner_mask() -> bytes:
    """A 28x28 mask PNG with the top-left pixel missing (white), the rest observed."""
    buf = io.BytesIO()
    mask = Image.new("L", (28, 28), 0)
    mask.putpixel((0, 0), 255)
    mask.save(buf, "PNG")
    return buf.getvalue()


def canvas_grey(page: Any, selector: str) -> list[list[int]]:
    """The red channel (the images are grey) of every canvas matching `selector`, in order."""
    return page.locator(selector).evaluate_all(
        """canvases => canvases.map(c => Array.from(
            c.getContext("2d").getImageData(0, 0, c.width, c.height).data.filter((_, i) => i % 4 === 0)))"""
    )


def bars(page: Any) -> list[tuple[str, str]]:
    items = page.locator("#classify-results li")
    return [
        (items.nth(i).locator(".label").inner_text(), items.nth(i).locator(".value").inner_text())
        for i in range(items.count())
    ]


# --- the tiny models ---------------------------------------------------------------------
def test_model_pickers_come_from_models(open_page: Any, tiny: str) -> None:
    page = open_page(tiny)
    models_loaded(page)
    expect(page.locator("#classifier option")).to_have_text(["alexnet-cifar10 (default)"])
    expect(page.locator("#vae option")).to_have_text(["vae-mnist (default)"])
    expect(page.locator("#vae-card")).to_contain_text("3-d latent")


def test_inpaint_panel_shows_exactly_when_the_schema_lists_impute(
    open_page: Any, tiny: str, model_dir: Path
) -> None:
    page = open_page(tiny)
    models_loaded(page)
    listed = "/impute" in httpx.get(f"{tiny}/openapi.json").json()["paths"]
    if listed:
        expect(page.locator("#inpaint")).to_be_visible()
    else:
        expect(page.locator("#inpaint")).to_be_hidden()
    # No schema served at all: no panel, and the rest of the page works.
    with serve_in_thread(test_settings(model_dir, docs=False)) as url:
        page = open_page(url)
        models_loaded(page)
        page.get_by_role("button", name="Sample").click()
        expect(page.locator("#sample-grid canvas")).to_have_count(16)
        expect(page.locator("#inpaint")).to_be_hidden()


def test_erased_digit_is_completed_as_impute_answers(open_page: Any, tiny: str) -> None:
    """Erase a stroke across an uploaded digit: the completion shown is /impute's answer for
    the pixels and mask the page holds, with the panel's steps, method and seed."""
    page = open_page(tiny)
    models_loaded(page)
    pad = "#inpaint [data-pad=inpaint]"
    page.get_by_role("button", name="Complete").click()  # nothing drawn yet
    expect(page.locator("#inpaint-error")).to_contain_text("is empty")
    page.set_input_files(f"{pad} input[type=file]", ROOT / "examples/digit.png")
    page.get_by_role("button", name="Complete").click()  # nothing erased yet
    expect(page.locator("#inpaint-error")).to_contain_text("Erase part of the digit first")
    page.locator(pad).get_by_label("Eraser").check()
    draw(page, pad, [[(0.1, 0.35), (0.9, 0.45)]])  # a band across the digit
    page.select_option("#inpaint-method", "mwg")
    page.fill("#inpaint-steps", "20")
    page.fill("#inpaint-seed", "5")
    with page.expect_response("**/impute?*") as sent:
        page.get_by_role("button", name="Complete").click()
    out = page.locator("#inpaint-out")
    expect(out).to_have_attribute("aria-label", "Completion of the erased digit")
    expect(page.locator("#inpaint-error")).to_be_empty()
    assert sent.value.status == 200
    query = parse_qs(urlsplit(sent.value.url).query)
    assert query == {"model": ["vae-mnist"], "steps": ["20"], "method": ["mwg"], "seed": ["5"]}

    # What the page sent: the erased band as the mask, the uploaded digit as the pixels.
    body = sent.value.request.post_data_json
    (pixels,), (mask,) = body["pixels"], body["mask"]
    assert len(pixels) == len(mask) == 28 * 28 and set(mask) == {0, 1}
    rows = [r for r in range(28) if any(mask[28 * r : 28 * r + 28])]
    assert rows[0] >= 8 and rows[-1] <= 15 and sum(mask) > 28  # the band, nothing more
    upload = httpx.post(
        f"{tiny}/impute",
        params={"steps": 1, "seed": 0},
        files=[
            ("image", ROOT.joinpath("examples/digit.png").read_bytes()),
            ("mask", corner_mask()),
        ],
        headers={"Accept": "application/json"},
    ).json()["images"][0]  # observed pixels come back as the server decodes the upload
    assert max(abs(a - b) for a, b in zip(pixels[1:], upload[1:], strict=True)) <= 0.5 / 255

    answer = httpx.post(
        f"{tiny}/impute",
        params={"steps": 20, "method": "mwg", "seed": 5},
        json={"pixels": [pixels], "mask": [mask]},
        headers={"Accept": "application/json"},
    ).json()
    (shown,) = canvas_grey(page, "#inpaint-out")
    want = [v * 255 for v in answer["images"][0]]
    assert max(abs(a - b) for a, b in zip(shown, want, strict=True)) <= 0.5 + 1e-6
    assert answer["method"] == "mwg" and answer["steps"] == 20 and answer["seed"] == 5
    filled = [i for i, m in enumerate(mask) if m]
    assert any(abs(shown[i] - round(255 * pixels[i])) > 2 for i in filled)  # erased, then filled


def test_dropped_image_shows_the_apis_top_classes_as_bars(open_page: Any, tiny: str) -> None:
    page = open_page(tiny)
    models_loaded(page)
    cat = (ROOT / "examples" / "cat.jpg").read_bytes()
    transfer = page.evaluate_handle(
        """b64 => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const t = new DataTransfer();
            t.items.add(new File([bytes], "cat.jpg", {type: "image/jpeg"}));
            return t;
        }""",
        base64.b64encode(cat).decode(),
    )
    page.dispatch_event("#classify-drop", "drop", {"dataTransfer": transfer})
    expect(page.locator("#classify-results li")).to_have_count(len(LABELS))
    answer = httpx.post(f"{tiny}/classify", files={"image": cat}).json()["predictions"]
    assert bars(page) == [(p["label"], f"{100 * p['probability']:.1f}%") for p in answer]
    expect(page.locator("#classify-preview")).to_have_attribute(
        "alt", "The image to classify: cat.jpg"
    )


def test_sample_grid_shows_the_apis_images_for_n_and_seed(open_page: Any, tiny: str) -> None:
    page = open_page(tiny)
    models_loaded(page)
    page.fill("#sample-n", "5")
    page.fill("#sample-seed", "3")
    page.get_by_role("button", name="Sample").click()
    expect(page.get_by_role("img", name="Sample 5 of 5")).to_be_visible()
    expect(page.locator("#sample-grid canvas")).to_have_count(5)
    expect(page.locator("#sample-caption")).to_contain_text("seed 3")
    answer = httpx.get(
        f"{tiny}/sample", params={"n": 5, "seed": 3}, headers={"Accept": "application/json"}
    ).json()
    want = [[round(v * 255) for v in image] for image in answer["images"]]
    assert canvas_grey(page, "#sample-grid canvas") == want


def test_interpolation_strip_has_the_number_of_images_asked_for(open_page: Any, tiny: str) -> None:
    page = open_page(tiny)
    models_loaded(page)
    page.get_by_role("button", name="Interpolate").click()  # nothing drawn yet
    expect(page.locator("#interpolate-error")).to_have_text(
        "Digit A is empty: draw, upload or pick a random digit first."
    )
    page.set_input_files("#interpolate [data-pad=a] input[type=file]", ROOT / "examples/digit.png")
    draw(page, "#interpolate [data-pad=b]", SEVEN)
    page.fill("#interpolate-steps", "7")
    page.get_by_role("button", name="Interpolate").click()
    expect(page.locator("#interpolate-strip canvas")).to_have_count(7)
    expect(page.get_by_role("img", name="Step 7 of 7")).to_be_visible()
    expect(page.locator("#interpolate-error")).to_be_empty()
    strip = canvas_grey(page, "#interpolate-strip canvas")
    assert strip[0] != strip[-1]  # the ends decode two different codes


def test_drawing_is_reconstructed_when_the_stroke_ends(open_page: Any, tiny: str) -> None:
    page = open_page(tiny)
    models_loaded(page)
    out = page.locator("#reconstruct-out")
    expect(out).to_have_attribute("aria-label", "Reconstruction (none yet)")
    draw(page, "#reconstruct [data-pad=draw]", SEVEN)
    expect(out).to_have_attribute("aria-label", "Reconstruction of your digit")
    (image,) = canvas_grey(page, "#reconstruct-out")
    assert len(image) == 28 * 28 and len(set(image)) > 1
    page.get_by_role("button", name="Clear Your digit").click()
    expect(out).to_have_attribute("aria-label", "Reconstruction (none yet)")


def test_server_errors_are_shown_readably(open_page: Any, tiny: str, tmp_path: Path) -> None:
    page = open_page(tiny)
    models_loaded(page)
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("not an image")
    page.set_input_files("#classify-file", not_an_image)
    expect(page.locator("#classify-error")).to_contain_text("415: ")
    expect(page.locator("#classify-error")).to_contain_text("request id")
    page.fill("#sample-n", "9")  # over this server's max_sample_n=8
    page.get_by_role("button", name="Sample").click()
    expect(page.locator("#sample-error")).to_contain_text("422: n=9 exceeds max_sample_n=8")


def test_keyboard_alone_reaches_and_runs_the_panels(open_page: Any, tiny: str) -> None:
    page = open_page(tiny)
    models_loaded(page)
    # Every control has an accessible name (a label, aria-label or its text).
    unnamed = page.locator("input, select, button").evaluate_all(
        """els => els.filter(e => !(e.labels && e.labels.length) && !e.getAttribute("aria-label")
                                  && !e.textContent.trim()).map(e => e.outerHTML)"""
    )
    assert unnamed == []
    # Tab through the page: what gets focus, in order.
    focused = []
    for _ in range(60):
        page.keyboard.press("Tab")
        focused.append(
            page.evaluate("""() => { const e = document.activeElement;
            return e.id || e.getAttribute("aria-label") || e.textContent.trim(); }""")
        )
    for control in (
        "api-key",
        "classifier",
        "vae",
        "classify-file",
        "sample-n",
        "Sample",
        "Random digit for Digit A",
        "Random digit for Digit B",
        "Interpolate",
    ):
        assert control in focused, control
    # Random digits for both pads and an interpolation, with keys only. Each step waits for what
    # the next needs (focus where the keys put it, the digit drawn): a slow machine is slower,
    # never wrong.
    focus = page.locator(":focus")
    page.get_by_role("button", name="Random digit for Digit A").focus()
    for pad, keys, press in (("A", [], "Enter"), ("B", ["Tab"] * 3, "Space")):
        for key in keys:  # Clear Digit A, Digit B's upload, Random digit for Digit B
            page.keyboard.press(key)
        expect(focus).to_have_accessible_name(f"Random digit for Digit {pad}")
        page.keyboard.press(press)
        expect(page.locator(f"#interpolate [data-pad={pad.lower()}]")).to_have_attribute(
            "data-empty", "false"
        )
    page.locator("#interpolate-steps").focus()
    page.keyboard.press("Control+A")
    page.keyboard.type("4")
    page.keyboard.press("Enter")
    expect(page.locator("#interpolate-strip canvas")).to_have_count(4)
    expect(page.locator("#interpolate-error")).to_be_empty()


def test_phone_width_needs_no_sideways_scrolling(open_page: Any, tiny: str) -> None:
    page = open_page(tiny, viewport=PHONE, is_mobile=True, has_touch=True)
    models_loaded(page)
    page.fill("#sample-n", "6")
    page.get_by_role("button", name="Sample").click()
    expect(page.locator("#sample-grid canvas")).to_have_count(6)
    page.get_by_role("button", name="Random digit for Digit A").click()
    page.get_by_role("button", name="Random digit for Digit B").click()
    page.get_by_role("button", name="Interpolate").click()
    expect(page.locator("#interpolate-strip canvas")).to_have_count(8)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


def test_api_key_typed_into_the_page_is_used(open_page: Any, browser: Any, model_dir: Path) -> None:
    with serve_in_thread(test_settings(model_dir, api_key=KEY)) as url:
        page = open_page(url)
        expect(page.locator("#status")).to_contain_text("The server needs an API key")
        page.fill("#api-key", KEY)
        page.keyboard.press("Enter")
        models_loaded(page)
        page.set_input_files("#classify-file", ROOT / "examples/cat.jpg")
        expect(page.locator("#classify-results li")).to_have_count(len(LABELS))


# --- the shipped models ------------------------------------------------------------------
def test_shipped_classifier_says_cat_and_the_screenshot(open_page: Any, shipped: str) -> None:
    """The whole page on the shipped models; its screenshot is docs/figures/ui.png."""
    page = open_page(shipped, viewport={"width": 1280, "height": 900})
    models_loaded(page)
    page.set_input_files("#classify-file", ROOT / "examples/cat.jpg")
    expect(page.locator("#classify-results li")).to_have_count(5)
    assert bars(page)[0][0] == "cat"
    page.fill("#sample-seed", "0")
    page.get_by_role("button", name="Sample").click()
    expect(page.locator("#sample-grid canvas")).to_have_count(16)
    page.set_input_files("#interpolate [data-pad=a] input[type=file]", ROOT / "examples/digit.png")
    draw(page, "#interpolate [data-pad=b]", [[(0.5, 0.2), (0.5, 0.8)]])
    page.get_by_role("button", name="Interpolate").click()
    expect(page.locator("#interpolate-strip canvas")).to_have_count(8)
    draw(page, "#reconstruct [data-pad=draw]", SEVEN)
    expect(page.locator("#reconstruct-out")).to_have_attribute(
        "aria-label", "Reconstruction of your digit"
    )
    page.screenshot(path=SCREENSHOT, full_page=True)
