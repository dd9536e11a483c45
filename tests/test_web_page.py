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
        wait(lambda: field("status").text == "cancelled", why=lambda: field("status").text)
        assert len(d.find_elements(By.CSS_SELECTOR, "figure img.result")) == 2  # the partial image is shown too
    finally:
        server.stop()


def test_image_to_image_mode_paints_a_mask_and_repaints_only_under_it(browser, tmp_path):
    """Pick an init image, paint a stroke across its middle, generate: rows far from the stroke keep the init
    image's pixels exactly, pixels under it change; the result can be sent back as the next input."""
    import base64
    import io

    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from sumie.tiny.data import Scene
    scene = Scene("white", "red", "circle", "large", "center").render()
    init = tmp_path / "init.png"
    Image.fromarray(scene).save(init)
    server = Server()
    try:
        d = browser
        d.get(server.url + "/")
        field = lambda i: d.find_element(By.ID, i)
        wait(lambda: len(d.find_elements(By.CSS_SELECTOR, "#sampler_name option")) >= 10)
        Select(field("mode")).select_by_value("img2img")
        field("init_file").send_keys(str(init))
        wait(lambda: field("init_canvas").get_attribute("data-loaded") == "1")
        set_value = "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'));"
        d.execute_script(set_value, field("brush"), "12")
        d.execute_script(set_value, field("strength"), "1")
        field("prompt").clear()
        field("prompt").send_keys("a large green square in the center on a white background")
        field("seed").clear()
        field("seed").send_keys("1")
        canvas = field("mask_canvas")  # shown 256 px wide for 64 image pixels: 4 screen pixels each
        (ActionChains(d).move_to_element(canvas).move_by_offset(-64, 0).click_and_hold()
         .move_by_offset(32, 0).move_by_offset(32, 0).move_by_offset(32, 0).move_by_offset(32, 0).release().perform())
        field("generate").click()
        wait(lambda: d.find_elements(By.CSS_SELECTOR, "figure.pair img.result"), why=lambda: field("status").text)
        src = d.find_element(By.CSS_SELECTOR, "figure.pair img.result").get_attribute("src")
        out = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"), dtype=int)
        assert out.shape == (64, 64, 3)
        # the stroke covers rows 26-38 (x 16-48); blur 4 reaches 10 pixels further
        far = np.r_[0:14, 51:64]
        assert np.array_equal(out[far], scene[far].astype(int))
        assert np.abs(out[29:36, 20:45] - scene[29:36, 20:45]).mean() > 30
        assert "Denoising strength: 1" in d.find_element(By.CSS_SELECTOR, "figure.pair figcaption").text
        d.find_element(By.CSS_SELECTOR, "figure.pair .send").click()  # the result becomes the next init image
        wait(lambda: d.execute_script(
            "return document.getElementById('init_canvas').getContext('2d').getImageData(32, 32, 1, 1).data[0]")
            == int(out[32, 32, 0]))
    finally:
        server.stop()


@pytest.mark.parametrize("taesd", [False, True], ids=["approx-cheap", "taesd"])
def test_live_preview_by_approx_cheap_or_by_taesd(browser, tmp_path, taesd):
    """A long job on sumie-tiny at 256x256 (64x64 latents, past what the server decodes with the model's VAE):
    the page shows A1111's Approx cheap preview at latent size, or with --preview-vae (random weights here)
    TAESD's decode, 8 pixels per latent."""
    import base64
    import io

    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.by import By

    extra = []
    if taesd:
        from oracle import write_taesd
        write_taesd(tmp_path / "taesd")
        extra = ["--preview-vae", tmp_path / "taesd"]
    server = Server(*extra)
    try:
        d = browser
        d.get(server.url + "/")
        field = lambda i: d.find_element(By.ID, i)
        wait(lambda: len(d.find_elements(By.CSS_SELECTOR, "#sampler_name option")) >= 10)
        for name, value in (("steps", "150"), ("width", "256"), ("height", "256")):
            field(name).clear()
            field(name).send_keys(value)
        field("generate").click()
        src = wait(lambda: (field("preview").get_attribute("src") or "").split(",", 1)[-1] or None,
                   why=lambda: field("status").text)
        preview = np.asarray(Image.open(io.BytesIO(base64.b64decode(src))).convert("RGB"), dtype=int)
        field("cancel").click()
        wait(lambda: field("status").text == "cancelled", why=lambda: field("status").text)
        assert preview.shape == ((512, 512, 3) if taesd else (64, 64, 3))
        assert preview.std() > 1  # a picture, not a flat colour
    finally:
        server.stop()
