"""The search page in a real headless browser: Debian's chromium driven by Playwright.

CI installs chromium (``.ci/run``); without it this test fails rather than skips. Playwright cannot download
its own browsers here, so it is pointed at /usr/bin/chromium. The screenshot is kept as a test artifact
(its path is printed); ``ALTCLIP_REFRESH_SCREENSHOT=1`` also copies it to docs/serve-page.png for README.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import SCENES

from altclip_adapters.inference.embedder import Embedder
from altclip_adapters.serve.app import ServeSettings
from altclip_adapters.serve.server import ServerThread, build_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
K = 6


@pytest.fixture(scope="module")
def server(tiny_dir, scene_collection, tmp_path_factory):
    folder, root = scene_collection
    app = build_app(Embedder.from_pretrained(tiny_dir, num_workers=0), ServeSettings(model_id="altclip-tiny"),
                    folder=folder, image_base=root, thumbnail_cache=tmp_path_factory.mktemp("thumbnails"))
    with ServerThread(app) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (CI installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def shown(page) -> list[dict]:
    """The result cards on the page once their thumbnails have loaded: score and caption of each."""
    page.wait_for_function(
        "k => { const imgs = [...document.querySelectorAll('.result img.thumb')];"
        " return imgs.length === k && imgs.every(img => img.complete && img.naturalWidth > 0); }",
        arg=K, timeout=30_000,
    )
    return page.eval_on_selector_all(
        ".result", "cards => cards.map(c => ({score: c.querySelector('.score').textContent,"
        " caption: c.querySelector('.caption').textContent, src: c.querySelector('img').getAttribute('src')}))")


def test_search_page(server, browser, scene_collection, tmp_path):
    captions = {caption for caption, *_ in SCENES}
    page = browser.new_page(viewport={"width": 1100, "height": 720})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    page.wait_for_selector("#about:has-text('altclip-tiny')")

    page.fill("#k", str(K))
    page.fill("#query", "一只红色的猫在沙发上")
    page.press("#query", "Enter")
    cards = shown(page)
    assert len(cards) == K and {c["caption"] for c in cards} <= captions
    assert all(c["src"].startswith("/thumbnails/scene_") for c in cards)
    scores = [float(c["score"]) for c in cards]
    assert scores == sorted(scores, reverse=True)
    assert "results for “一只红色的猫在沙发上”" in page.text_content("#status")
    screenshot = tmp_path / "serve-page-text.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot of the text search: {screenshot}")

    picked = scene_collection[1] / "images" / "scene_2.png"  # pick a file: the same image comes first, score 1
    page.set_input_files("#image-file", str(picked))
    page.wait_for_selector("#status:has-text('results for scene_2.png')")
    cards = shown(page)
    assert cards[0]["caption"] == SCENES[2][0] and float(cards[0]["score"]) == pytest.approx(1.0, abs=1e-3)
    assert page.is_visible("#query-image")

    page.evaluate("""async () => {  // drop a file on the drop zone, as a user dragging it from their desktop
        const blob = await (await fetch('/files/scene_5.png')).blob();
        const transfer = new DataTransfer();
        transfer.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
        document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
    }""")
    page.wait_for_selector("#status:has-text('results for dropped.png')")
    cards = shown(page)
    assert cards[0]["caption"] == SCENES[5][0]
    screenshot = tmp_path / "serve-page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot of the image search: {screenshot}")

    notes = tmp_path / "notes.txt"  # the server's error is shown, and the last results stay
    notes.write_text("not an image")
    page.set_input_files("#image-file", str(notes))
    page.wait_for_selector("#status.error:has-text(\"'notes.txt' is not a readable image\")")
    assert len(page.query_selector_all(".result")) == K
    assert errors == []
    page.close()
    if os.environ.get("ALTCLIP_REFRESH_SCREENSHOT") == "1":  # README's picture: docs/serve-page.png
        shutil.copy(tmp_path / "serve-page-text.png", Path(__file__).parents[1] / "docs" / "serve-page.png")


def test_a_search_opens_from_its_url_and_stays_in_it(server, browser):
    """``?q=`` opens the page on that search (bookmarks, shared links, screenshots); searching puts the query in the
    address; Back brings the previous search back."""
    from urllib.parse import parse_qs, quote, urlsplit

    page = browser.new_page(viewport={"width": 1100, "height": 720})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    page.fill("#k", str(K))
    page.fill("#query", "一只红色的猫在沙发上")
    page.press("#query", "Enter")
    typed = shown(page)
    assert parse_qs(urlsplit(page.url).query) == {"q": ["一只红色的猫在沙发上"], "k": [str(K)]}

    opened = browser.new_page(viewport={"width": 1100, "height": 720})
    opened.on("pageerror", lambda e: errors.append(str(e)))
    opened.goto(server.url + f"/?q={quote('一只红色的猫在沙发上')}&k={K}")
    assert shown(opened) == typed
    assert opened.input_value("#query") == "一只红色的猫在沙发上" and opened.input_value("#k") == str(K)

    opened.fill("#query", "a blue car")
    opened.press("#query", "Enter")
    opened.wait_for_selector("#status:has-text('results for “a blue car”')")
    assert parse_qs(urlsplit(opened.url).query)["q"] == ["a blue car"]
    opened.go_back()
    opened.wait_for_selector("#status:has-text('results for “一只红色的猫在沙发上”')")
    assert opened.input_value("#query") == "一只红色的猫在沙发上" and shown(opened) == typed
    assert errors == []
    page.close()
    opened.close()


def test_search_page_with_an_api_key(tiny_dir, scene_collection, browser, tmp_path):
    """With API keys on, the page asks for one once, keeps it for the tab, and every request (thumbnails too)
    carries it; a wrong key asks again."""
    folder, root = scene_collection
    app = build_app(Embedder.from_pretrained(tiny_dir, num_workers=0), ServeSettings(model_id="altclip-tiny", api_keys=["sk-page"]),
                    folder=folder, image_base=root, thumbnail_cache=tmp_path / "thumbnails")
    with ServerThread(app) as running:
        page = browser.new_page(viewport={"width": 1100, "height": 720})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(running.url + "/")
        page.wait_for_selector("#key-form:not([hidden])")
        page.fill("#api-key", "sk-wrong")
        page.press("#api-key", "Enter")
        page.wait_for_selector("#key-form:not([hidden])")  # refused: asked again
        page.fill("#api-key", "sk-page")
        page.press("#api-key", "Enter")
        page.wait_for_selector("#about:has-text('altclip-tiny')")
        assert page.is_hidden("#key-form")
        page.fill("#k", str(K))
        page.fill("#query", "a red cat")
        page.press("#query", "Enter")
        cards = shown(page)
        assert len(cards) == K and all(c["src"].startswith("blob:") for c in cards)  # fetched with the key
        page.reload()  # the key is kept for the tab, and the search is in the URL
        page.wait_for_selector("#about:has-text('altclip-tiny')")
        assert page.is_hidden("#key-form") and errors == []
        assert len(shown(page)) == K
        page.close()

        linked = browser.new_page(viewport={"width": 1100, "height": 720})  # a shared link: the key prompt first
        linked.on("pageerror", lambda e: errors.append(str(e)))
        linked.goto(running.url + f"/?q=a%20red%20cat&k={K}")
        linked.wait_for_selector("#key-form:not([hidden])")
        linked.fill("#api-key", "sk-page")
        linked.press("#api-key", "Enter")
        assert len(shown(linked)) == K and errors == []
        linked.close()
