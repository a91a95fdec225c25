"""`boneage serve` in a real browser: headless Chromium (Debian's package) uploads a phantom radiograph
and reads the predicted age and the heat map from the page. Skipped, with the reason, without Chromium
or Playwright (.ci/run installs Chromium; Playwright drives it and never downloads a browser)."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest
from predict_helpers import tiny_runs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
uvicorn = pytest.importorskip("uvicorn")

# flags for a headless browser in a container, without network use of its own
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--no-first-run", "--disable-extensions", "--disable-sync", "--disable-component-update"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from boneage.predict import load_predictor
    from boneage.serve import create_app

    runs_dir, regressor, tjnet, data = tiny_runs(tmp_path_factory.getbasetemp())
    app = create_app([load_predictor(regressor, runs_dir), load_predictor(tjnet, runs_dir)])
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "the server did not start"
    yield f"http://127.0.0.1:{port}", data
    srv.should_exit = True
    thread.join(timeout=10)


def test_upload_in_chromium_shows_age_and_heat_map(server):
    url, data = server
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            page.set_input_files("#file", str(data / "boneage-training-dataset" / "1377.png"))
            page.select_option("#sex", "F")
            page.click("#submit")
            page.wait_for_selector("#result", state="visible", timeout=30_000)
            age = page.text_content("#age")
            heat_width = page.eval_on_selector("#heatmap", "img => img.complete ? img.naturalWidth : 0")
            heat_src = page.get_attribute("#heatmap", "src")
            error = page.text_content("#error")
        finally:
            browser.close()
    assert error == ""
    years = float(age.split(" years")[0])
    assert 0 < years < 25 and "months" in age
    assert heat_src.startswith("data:image/png;base64,") and heat_width > 0
