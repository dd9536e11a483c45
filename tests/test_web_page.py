"""The web page at `/`, in headless Chromium (Debian's chromium + chromedriver, which .ci/run installs):
it generates with the embedded model, the progress bar moves, and Cancel stops a job."""

import os
import shutil
import time
from pathlib import Path

import pytest

from server_util import Server

SCREENSHOT = os.environ.get("SUMIE_SCREENSHOT")  # e.g. docs/server.png, to refresh the picture in the docs


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        if os.environ.get("SUMIE_REQUIRE_BROWSER"):
            pytest.fail("chromium and chromedriver are required here (apt-get install chromium chromium-driver)")
        pytest.skip("needs Debian's chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(arg)
    d = webdriver.Chrome(service=Service(driver), options=options)
    yield d
    d.quit()


def wait(predicate, timeout=90, why=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out: {why()}")


def test_generate_progress_and_cancel(browser):
    from selenium.webdriver.common.by import By
    server = Server()  # the default model: sumie-tiny
    try:
        d = browser
        d.get(server.url + "/")
        field = lambda i: d.find_element(By.ID, i)
        wait(lambda: len(d.find_elements(By.CSS_SELECTOR, "#sampler_name option")) >= 10)
        field("steps").clear()
        field("steps").send_keys("150")
        field("seed").clear()
        field("seed").send_keys("7")
        field("generate").click()
        widths = set()
        def finished():
            widths.add(field("bar").value_of_css_property("width"))
            return d.find_elements(By.CSS_SELECTOR, "figure img.result")
        wait(finished, why=lambda: field("status").text)
        moving = {w for w in widths if w not in ("0px", "auto")}
        assert len(moving) >= 2, widths  # the bar was seen at two or more positions
        caption = d.find_element(By.CSS_SELECTOR, "figcaption").text
        assert "Steps: 150" in caption and "Seed: 7" in caption and "Model: sumie-tiny" in caption
        if SCREENSHOT:
            d.save_screenshot(str(Path(SCREENSHOT)))

        field("generate").click()
        wait(lambda: field("status").text.startswith("step "))
        field("cancel").click()
        wait(lambda: field("status").text == "cancelled")
        assert len(d.find_elements(By.CSS_SELECTOR, "figure img.result")) == 2  # the partial image is shown too
    finally:
        server.stop()
