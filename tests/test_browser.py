"""The pages people look at, in a real browser: the demo page at ``GET /`` of `visionkit serve`
and a run's ``report.html``, opened in headless Chromium (Debian's ``chromium`` and
``chromium-driver``; .ci/run installs them) and driven through Selenium with nothing
downloaded. Each page must load without console errors, render every image, and (the demo page)
draw an uploaded image's result and show the server's error text for a bad file.

Screenshots go to $VISIONKIT_ARTIFACTS (default tests/artifacts/). The README's come from a
longer run (a few CPU minutes; val mAP50 0.48, short of the demo's, but its boxes find shapes):
``VISIONKIT_BROWSER_EPOCHS=16 VISIONKIT_BROWSER_IMAGES=400 pytest --timeout 0 tests/test_browser.py``
(the default, 1 epoch on 16 images, keeps the test at a few seconds of training).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import REPO
from servehelp import multipart, running_server, tiny_classifier

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("VISIONKIT_ARTIFACTS") or REPO / "tests" / "artifacts")
EPOCHS = int(os.environ.get("VISIONKIT_BROWSER_EPOCHS", "1"))
TRAIN_IMAGES = int(os.environ.get("VISIONKIT_BROWSER_IMAGES", "16"))
TIMEOUT_S = 30
#: served with small pixel limits, so that the "too many pixels" upload stays a small file
LIMITS = ("--max-megapixels", "0.5", "--max-request-megapixels", "0.5")


# --- the browser ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module. Missing, it is a failure, not a skip: CI installs it."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed: apt-get install -y chromium chromium-driver "
                    "(.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    before = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not fetch a browser or a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,820",
                "--force-device-scale-factor=1", "--hide-scrollbars", "--no-first-run", "--lang=en-US",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--disable-default-apps", "--force-color-profile=srgb"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()
        if before is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = before


def console_errors(driver, allowed: tuple[str, ...] = ()) -> list[str]:
    """The console's errors since the last call (reading the log empties it), less ``allowed``
    substrings (Chromium logs every 4xx answer to fetch() as an error, even a handled one)."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and not any(a in e["message"] for a in allowed)]


def broken_images(driver) -> tuple[int, list[str]]:
    """(number of <img>, those not rendered: not loaded, or zero natural size)."""
    images = driver.execute_script("return Array.from(document.images).map("
                                   "(i) => [i.complete && i.naturalWidth > 0 && i.naturalHeight > 0, i.src.slice(0, 90)])")
    return len(images), [src for ok, src in images if not ok]


def outside_requests(driver, origin: str) -> list[str]:
    """Resources the page fetched from anywhere but ``origin`` (data: URLs are not fetched)."""
    names = driver.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    return [n for n in names if not n.startswith(origin)]


def screenshot(driver, name: str, height: int | None = None) -> Path:
    """ARTIFACTS/name.png: the viewport, or the page from its top down to ``height`` px."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    if height is None:
        driver.save_screenshot(str(path))
        return path
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], height), "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                             "clip": clip})
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def wait(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, TIMEOUT_S, poll_frequency=0.1).until(lambda d: condition(d))
    except Exception:
        status = driver.execute_script("return [document.getElementById('status')?.textContent, "
                                       "document.getElementById('error')?.textContent]")
        raise AssertionError(f"timed out waiting for {what}; page status and error: {status}; console: "
                             f"{driver.get_log('browser')}") from None


# --- the models and images ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def detection_run(tmp_path_factory):
    """A tiny detection run on generated scenes, trained in this process and exported: a real
    model to serve, and a real run directory for its report."""
    from visionkit import cli
    from visionkit.data import synth
    from visionkit.train import launch

    root = tmp_path_factory.mktemp("browser")
    # a validation set large enough for best.pt to be the better epoch, not the luckier one
    scenes = synth.scenes(root / "scenes", num_train=TRAIN_IMAGES, num_val=max(6, TRAIN_IMAGES // 8), size=64, seed=4)
    run = launch.train(str(REPO / "configs/detection/shapes.yaml"), [
        "ray.num_workers=0", "train.progress=false", f"output.storage_path={root}", f"train.epochs={EPOCHS}",
        "output.name=det", f"data.root={scenes}", "model.min_size=64", "model.max_size=64",
        # one epoch: small steps, no augmentation; longer (the README's): the demo config's
        *(["train.batch_size=4", "data.train_transforms=[]"] if EPOCHS == 1 else [])])
    model = root / "detection.onnx"
    assert cli.main(["export", str(run), "-o", str(model), "--check-images", "1"]) == 0
    return {"run": Path(run), "model": model, "image": sorted((scenes / "images" / "val").glob("*"))[0]}


def tiny_segmenter(path: Path) -> Path:
    """A hand-made segmentation graph: each pixel's class is its brightest channel (red, green or
    blue) where that channel is over half, else background. Real ONNX through the real runtime."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from visionkit.runtime import Metadata

    half = numpy_helper.from_array(np.array([0.5], dtype=np.float32), "half")
    zero = numpy_helper.from_array(np.array([0.0], dtype=np.float32), "zero")
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["grey"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["grey", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "half"], ["background"]),
        helper.make_node("Concat", ["background", "images"], ["scores"], axis=1),
        helper.make_node("ArgMax", ["scores"], ["indices"], axis=1, keepdims=0),
        helper.make_node("Cast", ["indices"], ["class_map"], to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(
        nodes, "tiny_seg", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("class_map", TensorProto.UINT8, ["batch", "height", "width"])], [half, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = Metadata(task="segmentation", classes=["background", "red", "green", "blue"],
                    normalization={"mean": [0.0] * 3, "std": [1.0] * 3, "in_graph": True},
                    outputs=["class_map"], opset=17, version="test")
    onnx.helper.set_model_props(model, meta.to_props())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def shapes_picture(path: Path, size: tuple[int, int] = (128, 96)) -> Path:
    """Grey, with a red square, a green disc and a blue triangle: classes the tiny models know."""
    img = Image.new("RGB", size, (100, 100, 100))
    draw = ImageDraw.Draw(img)
    draw.rectangle((8, 10, 44, 46), fill=(230, 20, 10))
    draw.ellipse((52, 30, 92, 70), fill=(20, 200, 40))
    draw.polygon([(98, 80), (124, 80), (111, 52)], fill=(30, 40, 220))
    img.save(path)
    return path


def blue_picture(path: Path) -> Path:
    img = Image.new("RGB", (64, 48), (25, 40, 210))
    ImageDraw.Draw(img).rectangle((4, 4, 20, 20), fill=(200, 30, 30))
    img.save(path)
    return path


# --- driving the page -----------------------------------------------------------------------------
def open_page(driver, url: str) -> None:
    console_errors(driver)  # what earlier tests left in the log
    driver.get(url + "/")
    wait(driver, lambda d: d.execute_script(
        "const f = document.getElementById('file'); return f && !f.disabled"), "the page to read /metadata and /options")


def upload(driver, path: Path) -> dict:
    """``path`` through the page's own file input; returns what the page then shows."""
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.CSS_SELECTOR, "input[type=file]")
    driver.execute_script("arguments[0].value = ''; document.getElementById('json').textContent = '';"
                          "document.getElementById('results').replaceChildren();", field)
    field.send_keys(str(path))
    return settled(driver)


def settled(driver) -> dict:
    wait(driver, lambda d: d.execute_script(
        "return document.getElementById('json').textContent !== '' && !document.getElementById('run').disabled"),
         "the answer to be shown")
    return driver.execute_script("""
        const error = document.getElementById('error');
        return {json: document.getElementById('json').textContent, request: document.getElementById('request').textContent,
                error: error.hidden ? null : error.textContent, status: document.getElementById('status').textContent,
                canvases: document.querySelectorAll('#results canvas.drawn').length,
                plain: document.querySelectorAll('#results canvas.plain').length,
                bars: Array.from(document.querySelectorAll('.bars .track')).length,
                barLabels: Array.from(document.querySelectorAll('.bars > span:not(.num)')).map((s) => s.textContent),
                legend: Array.from(document.querySelectorAll('.legend li')).map((li) => li.textContent),
                caption: document.querySelector('#results figcaption')?.textContent};""")


def canvas_change(driver) -> dict:
    """The result canvas against the uploaded image drawn alone at the same size: how many pixels
    the page drew over (``changed``) and how many are not black (``lit``)."""
    return driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const canvas = document.querySelector('#results canvas.drawn');
        createImageBitmap(document.getElementById('file').files[0]).then((bitmap) => {
          const plain = document.createElement('canvas');
          plain.width = canvas.width; plain.height = canvas.height;
          const ctx = plain.getContext('2d');
          ctx.imageSmoothingEnabled = canvas.dataset.scale === '1';
          ctx.drawImage(bitmap, 0, 0, plain.width, plain.height);
          const a = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
          const b = ctx.getImageData(0, 0, plain.width, plain.height).data;
          let changed = 0, lit = 0;
          for (let i = 0; i < a.length; i += 4) {
            if (Math.abs(a[i] - b[i]) + Math.abs(a[i + 1] - b[i + 1]) + Math.abs(a[i + 2] - b[i + 2]) > 30) changed++;
            if (a[i] + a[i + 1] + a[i + 2] > 0) lit++;
          }
          done({changed, lit, pixels: a.length / 4, width: canvas.width, height: canvas.height});
        }, (e) => done({error: String(e)}));""")


def set_option(driver, name: str, value: str) -> dict:
    """Types ``value`` into the option's generated input; the page predicts again."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.ID, f"opt-{name}")
    driver.execute_script("document.getElementById('json').textContent = ''")
    field.clear()
    field.send_keys(value, Keys.TAB)  # leaving the field fires "change"
    return settled(driver)


def json_answer(shown: dict) -> dict:
    import json

    return json.loads(shown["json"])


def check_loaded_cleanly(driver, origin: str) -> None:
    assert console_errors(driver) == []
    count, broken = broken_images(driver)
    assert broken == [], f"{len(broken)} of {count} images do not render"
    assert outside_requests(driver, origin) == []


# --- the tests ------------------------------------------------------------------------------------
def test_the_page_is_self_contained():
    """No external script, style, font or image in the markup; the CSP forbids them besides."""
    from visionkit.serving import page

    for needle in ("http://", "https://", "//cdn", "@import", "url(", " src="):
        assert needle not in page.HTML, needle
    assert page.HTML.count('href="') == 1 and 'href="data:,"' in page.HTML  # no favicon request
    assert "default-src 'none'" in page.CSP and "connect-src 'self'" in page.CSP


def test_detection_page_draws_boxes_and_shows_server_errors(detection_run, browser, tmp_path):
    with running_server(detection_run["model"], *LIMITS) as server:
        open_page(browser, server.url)
        check_loaded_cleanly(browser, server.url)
        names = browser.execute_script("return Array.from(document.querySelectorAll('#options [name]')).map((e) => e.name)")
        assert "score_thresh" in names and "top_k" not in names

        shown = upload(browser, detection_run["image"])
        assert shown["error"] is None and shown["canvases"] == 1, shown
        answer = json_answer(shown)
        detections = answer["predictions"][0]["detections"]
        # what the page received is what curl gets for the same file
        body, ctype = multipart([("image", detection_run["image"].name, detection_run["image"].read_bytes(), "image/png")])
        assert server.call("POST", "/predict", body, {"Content-Type": ctype})[1] == answer
        screenshot(browser, "serve-detection", height=1000)
        assert console_errors(browser) == []

        # Every returned box drawn: the generated draw_thresh input reaches the drawing and the query.
        shown = set_option(browser, "draw_thresh", "0")
        assert shown["request"] == "POST /predict?draw_thresh=0" and shown["error"] is None
        assert f"{len(detections)} detection" in shown["caption"] and len(detections) > 0
        drawn = canvas_change(browser)
        assert drawn["lit"] > 0.5 * drawn["pixels"] and drawn["changed"] > 0, drawn
        # A bad value is refused by the server, and the page says what the server said.
        shown = set_option(browser, "score_thresh", "2")
        status, refused, _ = server.call("POST", "/predict?draw_thresh=0&score_thresh=2", body, {"Content-Type": ctype})
        assert status == 400 and shown["error"] == f"400: {refused['error']}"
        set_option(browser, "score_thresh", "")
        console_errors(browser, allowed=("/predict?draw_thresh=0&score_thresh=2 - Failed to load resource: the "
                                         "server responded with a status of 400",))

        # A text file named .png, and an image over --max-megapixels: the server's own words.
        text = tmp_path / "notes.png"
        text.write_text("this is a shopping list, not an image\n")
        big = tmp_path / "big.png"
        Image.new("1", (1000, 800), 1).save(big)  # 0.8 MP over 0.5, in a few hundred bytes
        for bad, code in ((text, 400), (big, 413)):
            shown = upload(browser, bad)
            body, ctype = multipart([("image", bad.name, bad.read_bytes(), "image/png")])
            status, refused, _ = server.call("POST", "/predict?draw_thresh=0", body, {"Content-Type": ctype})
            assert status == code and shown["error"] == f"{code}: {refused['error']}", (shown, refused)
            assert bad.name in shown["error"] and shown["canvases"] == 0
            assert json_answer(shown) == refused
            screenshot(browser, f"serve-detection-error-{code}")
            assert console_errors(browser, allowed=(
                f"/predict?draw_thresh=0 - Failed to load resource: the server responded with a status of {code}",)) == []
        assert "cannot decode image" in refused["error"] or "pixels" in refused["error"]


def test_classification_page_shows_top_k_bars(browser, tmp_path):
    model = tiny_classifier(tmp_path / "tiny.onnx")
    with running_server(model, *LIMITS) as server:
        open_page(browser, server.url)
        check_loaded_cleanly(browser, server.url)
        shown = upload(browser, blue_picture(tmp_path / "mostly-blue.png"))
        assert shown["error"] is None and shown["bars"] == 3 and shown["barLabels"][0] == "blue", shown
        drawn = canvas_change(browser)
        assert drawn["lit"] == drawn["pixels"] and drawn["changed"] == 0, drawn  # the image, drawn over by nothing
        shown = set_option(browser, "top_k", "2")
        assert shown["bars"] == 2 and len(json_answer(shown)["predictions"][0]["top_k"]) == 2
        assert shown["request"] == "POST /predict?top_k=2"
        screenshot(browser, "serve-classification", height=1000)
        assert console_errors(browser) == []

    # A body over --max-body-mb: the server's 413, not a dropped connection (Chromium sends it whole).
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(noise)
    with running_server(model, *LIMITS, "--max-body-mb", "0.05") as server:
        open_page(browser, server.url)
        shown = upload(browser, noise)
        body, ctype = multipart([("image", noise.name, noise.read_bytes(), "image/png")])
        status, refused, _ = server.call("POST", "/predict", body, {"Content-Type": ctype})
        limit = "bytes; this server takes at most 52,428"
        assert status == 413 and refused["error"].endswith(limit)
        assert shown["error"].startswith("413: request body of ") and shown["error"].endswith(limit), shown
        assert console_errors(browser, allowed=("/predict - Failed to load resource: the server responded with a "
                                                "status of 413",)) == []


def test_segmentation_page_overlays_the_mask(browser, tmp_path):
    model = tiny_segmenter(tmp_path / "seg.onnx")
    with running_server(model, *LIMITS) as server:
        open_page(browser, server.url)
        check_loaded_cleanly(browser, server.url)
        shown = upload(browser, shapes_picture(tmp_path / "shapes.png"))
        assert shown["error"] is None and shown["canvases"] == 1, shown
        result = json_answer(shown)["predictions"][0]
        assert sorted(result["classes_present"]) == ["background", "blue", "green", "red"]
        assert shown["plain"] == 1  # the image beside its overlay
        assert len(shown["legend"]) == 4
        # The overlay covers the pixels the mask labels, no more and no fewer.
        drawn = canvas_change(browser)
        labelled = 1.0 - result["pixel_fraction"]["background"]
        assert abs(drawn["changed"] / drawn["pixels"] - labelled) < 0.01, (drawn, labelled)
        screenshot(browser, "serve-segmentation", height=1000)
        assert console_errors(browser) == []


def test_report_page_renders(detection_run, browser):
    from visionkit import cli

    run = detection_run["run"]
    assert cli.main(["report", str(run)]) == 0
    report = run / "report.html"
    assert report.is_file()
    console_errors(browser)
    browser.get(report.as_uri())
    count, broken = broken_images(browser)
    assert count > 0 and broken == [], f"{len(broken)} of {count} images do not render: {broken}"
    assert outside_requests(browser, "data:") == []  # self-contained: nothing fetched
    assert console_errors(browser) == []
    screenshot(browser, "report", height=1400)  # the run and its curves: the README's
    screenshot(browser, "report-full", height=8000)
