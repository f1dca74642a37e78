"""The service's web page in headless Chromium, as a user drives it: a digit drawn on the pad with
real pointer input (predicted while it is drawn, framed like MNIST), what the model looks at
(POST .../explain: the heat map, the feature maps, the first layer's filters), the image-kernels
panel, and explain's errors on the page.

The pad and the kernels run on the tiny `cnn` of `tiny_repo` (support.tiny), whose answer the
test recomputes from the image the page sent; the pictures of the layers need a convolutional
network, the suite's small trained classifier (`tracked_cnn`) exported to ONNX.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import Server
from support.browser import chromium
from support.serving import waldo_serve
from support.tiny import CLASSIFIER, SIZES, expected_class

pytestmark = pytest.mark.servers

WAIT_S = 120
EDGES = np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], dtype=np.float64)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator:
    with chromium(tmp_path) as driver:
        yield driver


@pytest.fixture(scope="module")
def tiny_server(tiny_repo, tmp_path_factory) -> Iterator[Server]:
    """`waldo serve` on the shared tiny repository (read-only use)."""
    running = waldo_serve(tiny_repo[0], tmp_path_factory.mktemp("page-tiny"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def digit_server(tracked_cnn, tmp_path_factory) -> Iterator[Server]:
    """`waldo serve` on the suite's small trained cnn, exported as `cnn`."""
    from training.export import export_run
    from training.spec import ExportSpec

    output = tmp_path_factory.mktemp("page-digits") / "models"
    export_run(ExportSpec(run=tracked_cnn.run_id, name=CLASSIFIER, output=str(output),
                          tracking_uri=tracked_cnn.result.tracking_uri))
    running = waldo_serve(output, tmp_path_factory.mktemp("page-digits-server"))
    try:
        yield running
    finally:
        running.stop()


# --- driving the page ------------------------------------------------------------------------
def _wait(driver, condition, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition)
    except TimeoutException:
        page = driver.execute_script(
            "return [document.getElementById('status').textContent,"
            " document.getElementById('error').textContent]")
        raise AssertionError(f"waited {WAIT_S} s for {what}; status and error: {page}") from None


def _open(driver, server: Server, model: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(server.url + "/")
    _wait(driver, lambda d: model in [o.get_attribute("value") for o in
                                      Select(d.find_element(By.ID, "model")).options], "the models")
    Select(driver.find_element(By.ID, "model")).select_by_value(model)
    _wait(driver, lambda d: d.find_element(By.ID, "pad").is_displayed(), "the draw pad")


def _text(driver, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}').textContent")


# A seven: the top bar left to right, then the stem down and left (offsets from the pad's centre).
TOP_BAR = [(-50, -60)] + [(25, 0)] * 4
STEM = [(-15, 30)] * 4


def _draw_seven(driver) -> None:
    """Draws the top bar with the button held, waits for the answer the page gives while the
    stroke is still being drawn (and checks explain waits for its end), then draws the stem and
    lifts the pen."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    pad = driver.find_element(By.ID, "pad")
    driver.execute_script("delete document.body.dataset.state; delete document.body.dataset.explain;")
    (x, y), *moves = TOP_BAR
    chain = ActionChains(driver).move_to_element_with_offset(pad, x, y).click_and_hold()
    for dx, dy in moves:
        chain.move_by_offset(dx, dy)
    chain.perform()
    _wait(driver, lambda d: _text(d, "label") != "", "a prediction while drawing")
    assert driver.execute_script("return document.body.dataset.explain") is None, \
        "explain was asked before the stroke ended"
    chain = ActionChains(driver)
    for dx, dy in STEM:
        chain.move_by_offset(dx, dy)
    chain.release().perform()


def _sent_png(driver) -> np.ndarray:
    """The pixels of the image the page last sent (the `file` of its current answer)."""
    b64 = driver.execute_async_script("""
        const done = arguments[arguments.length - 1], reader = new FileReader();
        reader.onload = () => done(reader.result.split(",")[1]);
        reader.readAsDataURL(current.file);""")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("L"))


def _canvas_red(driver, element_id: str) -> np.ndarray:
    """The red channel of a canvas, as (height, width) uint8."""
    width, height, red = driver.execute_script(f"""
        const c = document.getElementById('{element_id}');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        return [c.width, c.height, Array.from(d.filter((_, i) => i % 4 === 0))];""")
    return np.asarray(red, dtype=np.uint8).reshape(height, width)


def _select(driver, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, element_id)).select_by_value(value)


def _loaded(driver, selector: str) -> int:
    """How many images match `selector` and have a PNG decoded (natural width > 0)."""
    return driver.execute_script(f"""
        return Array.from(document.querySelectorAll("{selector}")).filter((img) =>
            img.src.startsWith('data:image/png;base64,') && img.complete && img.naturalWidth > 0).length;""")


def _explained(driver, what: str) -> None:
    state = _wait(driver, lambda d: d.execute_script(
        "const s = document.body.dataset.explain; return s === 'done' || s === 'error' ? s : null;"),
        what)
    assert state == "done", f"explain failed: {_text(driver, 'error')}"


# --- the tests -------------------------------------------------------------------------------
def test_draw_pad_predicts_as_you_draw_and_kernels_apply(browser, tiny_server: Server) -> None:
    """The tiny cnn answers the class nearest 9 x the image's mean brightness: the label shown is
    the one for the image the page sent, a 28x28 white digit on black. The kernel panel's
    output is the image under the kernel, recomputed here in numpy."""
    from selenium.webdriver.common.by import By

    driver = browser
    _open(driver, tiny_server, CLASSIFIER)
    _draw_seven(driver)
    _explained(driver, "explain after the stroke")
    # Occlusion explains any model; one without convolutions has no filters or maps to show.
    assert _loaded(driver, "#heatmap") == 1 and _loaded(driver, "#stages img") == 0
    assert _text(driver, "filters-note").startswith("no first-layer filters")
    sent = _sent_png(driver)
    assert sent.shape == (SIZES[CLASSIFIER],) * 2
    assert sent[0, 0] == sent[-1, -1] == 0 and sent.max() > 200, "not white ink on black"
    assert _text(driver, "label") == str(expected_class(sent))

    # The kernels panel: identity gives the image back, edges its numpy convolution.
    _select(driver, "kernel-preset", "identity")
    image = _canvas_red(driver, "kernel-in")
    identity = _canvas_red(driver, "kernel-out")
    assert np.array_equal(identity, image) and image.std() > 10
    _select(driver, "kernel-preset", "edges")
    edges = _canvas_red(driver, "kernel-out")
    padded = np.pad(image.astype(np.float64), 1, mode="edge")
    raw = sum(EDGES[j, i] * padded[j:j + image.shape[0], i:i + image.shape[1]]
              for j in range(3) for i in range(3))
    assert not np.array_equal(edges, identity)
    assert np.abs(edges.astype(int) - raw.clip(0, 255).round()).max() <= 1

    # Editing a number makes the kernel custom: the centre 8 -> 9 adds the image once more.
    centre = driver.find_elements(By.CSS_SELECTOR, "#kernel-grid input")[4]
    centre.clear()
    centre.send_keys("9")
    assert driver.find_element(By.ID, "kernel-preset").get_attribute("value") == "custom"
    custom = _canvas_red(driver, "kernel-out")
    assert np.abs(custom.astype(int) - (raw + image).clip(0, 255).round()).max() <= 1

    # Clear empties the pad and the answer.
    driver.find_element(By.ID, "clear").click()
    assert _text(driver, "label") == "" and _canvas_red(driver, "pad").max() == 0


def test_explain_shows_the_maps_filters_and_its_errors(browser, digit_server: Server) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    _open(driver, digit_server, CLASSIFIER)
    _draw_seven(driver)
    _explained(driver, "the explanation of the drawing")
    label = _text(driver, "label")
    assert label != "" and f"class {label}" in _text(driver, "explain-info")
    assert _loaded(driver, "#heatmap") == 1, "no heat map"
    stages = _loaded(driver, "#stages img.stage")
    assert stages >= 2, f"{stages} feature-map grids"  # the cnn has two conv stages
    assert _loaded(driver, "#filters, #first-layer") == 2, _text(driver, "filters-note")

    # A click on another class asks about that class.
    rows = driver.find_elements(By.CSS_SELECTOR, "#probabilities tr.probability")
    other = rows[1].get_attribute("data-label")
    driver.execute_script("delete document.body.dataset.explain;")
    rows[1].click()
    _explained(driver, f"the explanation of class {other}")
    assert f"class {other}" in _text(driver, "explain-info")
    assert "target" in rows[1].get_attribute("class") and "target" not in rows[0].get_attribute("class")

    # An unknown class is the service's error on the page; the prediction stays.
    driver.execute_script("delete document.body.dataset.explain; askExplain('no-such-class');")
    _wait(driver, lambda d: d.execute_script("return document.body.dataset.explain === 'error'"),
          "explain's error")
    error = _text(driver, "error")
    assert error.startswith("explain: ") and "no-such-class" in error, error
    assert _text(driver, "label") == label
