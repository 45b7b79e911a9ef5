"""The web page in a real headless Chromium: search by text and image, add, remove, errors.

Serves a tiny generated index (tests/service_fixtures.py) with uvicorn on a free local port
and drives the page through Playwright's sync API. Skipped when no Chromium is installed
(`make test` installs it); set GENIR_CHROMIUM to use a specific binary and
GENIR_SCREENSHOT_DIR to keep the page's screenshot as service.png.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

from genir.service.app import create_app  # noqa: E402
from service_fixtures import make_service_index, pattern_image, png_bytes  # noqa: E402


def _chromium() -> str:
    path = os.environ.get("GENIR_CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.skip("no Chromium: set GENIR_CHROMIUM or run `make test`, which installs it")
    return path


@pytest.fixture()
def base_url(tmp_path: Path) -> Iterator[str]:
    """The app over a fresh 90-item index, served by uvicorn in a background thread."""
    app = create_app(make_service_index(tmp_path / "index"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))       # the OS picks a free port; uvicorn serves this socket
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 15
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the service did not answer /health"
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_page_search_add_remove_and_errors(base_url: str, tmp_path: Path) -> None:
    query_png = tmp_path / "query.png"
    query_png.write_bytes(png_bytes(pattern_image(2, seed=1000)))   # checks
    new_png = tmp_path / "new-item.png"
    new_png.write_bytes(png_bytes(pattern_image(1, seed=5000)))     # columns
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("not an image")

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), headless=True,
                                     args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.set_default_timeout(10_000)
        page_errors: list[str] = []
        page.on("pageerror", lambda exc: page_errors.append(str(exc)))
        page.goto(base_url)
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        stats = page.locator("#stats")
        expect(stats).to_contain_text("90 items")
        instructions = page.locator("#q-instruction option")
        expect(instructions.first).to_have_text("none")
        expect(instructions).to_contain_text(["none", "retrieve a similar image"])

        # text search: cards with rank, score, codes, caption and a loaded thumbnail
        cards = page.get_by_test_id("result")
        page.get_by_label("Text query").fill("stripes number 3")
        page.locator("#search-btn").click()
        expect(cards).to_have_count(10)
        first = cards.first
        expect(first.locator(".rank")).to_have_text("#1")
        expect(first.locator(".codes")).to_have_text(re.compile(r"^\d+(-\d+)+$"))
        expect(first.locator(".caption")).not_to_be_empty()
        thumbs_ok = "imgs => imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0)"
        page.wait_for_function(f"({thumbs_ok})([...document.querySelectorAll('#results img')])")
        expect(stats).to_contain_text("1 queries served")

        # image search, through the file input
        page.get_by_label("Text query").fill("")
        page.locator("#q-image").set_input_files(query_png)
        expect(page.locator("#q-preview")).to_be_visible()
        page.locator("#q-k").fill("5")
        page.locator("#search-btn").click()
        expect(page.get_by_test_id("summary")).to_contain_text("5 results · image query")
        expect(cards).to_have_count(5)

        # dropping a file on the drop zone puts it in the image input
        data_transfer = page.evaluate_handle(
            """() => { const dt = new DataTransfer();
                       dt.items.add(new File(["x"], "dropped.png", {type: "image/png"}));
                       return dt; }""")
        page.get_by_test_id("drop-zone").dispatch_event("drop", {"dataTransfer": data_transfer})
        assert page.eval_on_selector("#q-image", "i => i.files[0].name") == "dropped.png"

        # add an item through the panel: its id and codes are shown, the count goes up
        page.locator("#add-image").set_input_files(new_png)
        page.get_by_label("Caption").fill("my new item")
        page.get_by_label("ID").fill("added-1")
        page.locator("#add-btn").click()
        expect(page.get_by_test_id("added-id")).to_have_text("added-1")
        expect(page.get_by_test_id("added-codes")).to_have_text(re.compile(r"^\d+(-\d+)+$"))
        expect(stats).to_contain_text("91 items")

        # searching with the same image, reranked, finds the new item
        page.locator("#q-image").set_input_files(new_png)
        page.locator("#q-k").fill("20")
        page.get_by_label("Rerank").check()
        page.locator("#search-btn").click()
        expect(page.get_by_test_id("summary")).to_contain_text("reranked")
        added = page.locator('[data-testid="result"][data-id="added-1"]')
        expect(added).to_be_visible()
        expect(added.locator(".caption")).to_have_text("my new item")

        # a bad upload shows the API's 415 detail in an alert; the results stay
        page.locator("#q-image").set_input_files(not_an_image)
        expect(page.locator("#q-preview")).to_be_hidden()
        with page.expect_response(re.compile(r"/search$")) as response:
            page.locator("#search-btn").click()
        assert response.value.status == 415
        alert = page.get_by_role("alert").filter(has_text="not an image")
        expect(alert).to_be_visible()
        expect(alert).to_contain_text("notes.txt")
        expect(added).to_be_visible()

        page.screenshot(path=tmp_path / "service.png", full_page=True)
        if os.environ.get("GENIR_SCREENSHOT_DIR"):
            out = Path(os.environ["GENIR_SCREENSHOT_DIR"])
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / "service.png", out / "service.png")

        # removing the new item takes its card away and the count back down
        added.get_by_role("button", name="Remove added-1").click()
        expect(added).to_have_count(0)
        expect(stats).to_contain_text("90 items")

        browser.close()
    assert not page_errors, page_errors
