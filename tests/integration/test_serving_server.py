"""The inference service as users run it: `waldo serve` as a real process (uvicorn) on 127.0.0.1,
spoken to over real HTTP, by a headless Chromium on its web page, and under load while a new
version is published and reloaded.

The models are the tiny `cnn` and `cnn-localize` of `tiny_repo` (support.tiny), whose answers
the tests know; one test serves the session's trained `model_repo` to check that a real model
predicts held-out digits over HTTP. Tests that add versions work on their own copy of the
repository, since it is shared.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import Server, start_server
from support.browser import chromium
from support.serving import metric, waldo_serve
from support.tiny import (
    BOX,
    expected_class,
    expected_p_c,
    expected_probabilities,
    grey,
    png_bytes,
    publish,
    publish_copy,
    sample_images,
)

pytestmark = pytest.mark.servers

# What a serving-only install lacks: importing any of these raises ImportError in that process.
HEAVY = ("torch", "torchvision", "lightning", "pytorch_lightning", "ray", "training", "services")


# --- a real server ----------------------------------------------------------------------------
@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    """`serve(models, *flags, **WALDO_env)` starts a server for this test; all are stopped at
    its end."""
    servers: list[Server] = []

    def _serve(models: Path, *extra: str, **env: str) -> Server:
        servers.append(waldo_serve(models, tmp_path / f"server{len(servers)}", *extra, env=env))
        return servers[-1]

    yield _serve
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def server(tiny_repo, tmp_path_factory) -> Iterator[Server]:
    """One `waldo serve` on the shared tiny repository (read-only use) for the whole module."""
    repo, _ = tiny_repo
    running = waldo_serve(repo, tmp_path_factory.mktemp("serving-server"))
    try:
        yield running
    finally:
        running.stop()


def copy_repo(repo: Path, to: Path) -> Path:
    shutil.copytree(repo, to)
    return to


def predict_png(url: str, model: str, png: bytes, client: httpx.Client | None = None) -> httpx.Response:
    post = client.post if client is not None else httpx.post
    return post(f"{url}/v1/models/{model}/predict", files={"file": ("digit.png", png, "image/png")},
                timeout=60)


def request_count(metrics_text: str, model: str, status: str = "200", protocol: str = "v1") -> float:
    """Requests of `model` with `status` over `protocol`, whichever version answered them."""
    prefix = f'waldo_requests_total{{model="{model}",protocol="{protocol}",status="{status}",version="'
    return sum(float(line.rpartition(" ")[2]) for line in metrics_text.splitlines()
               if line.startswith(prefix))


# --- over HTTP --------------------------------------------------------------------------------
def test_health_models_predict_and_metrics(server: Server) -> None:
    images = sample_images()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["ready"] is True
        assert set(ready.json()["models"]) == {"cnn", "cnn-localize"}

        listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert set(listed) == {"cnn", "cnn-localize"}
        for model in listed.values():
            assert model["loaded"] is True and model["error"] is None
            assert "CPUExecutionProvider" in model["providers"]  # what the session really runs on
        assert listed["cnn"]["task"] == "classify"
        assert listed["cnn-localize"]["task"] == "localize"
        assert listed["cnn"]["input"]["height"] == 28 and listed["cnn"]["labels"] == list("0123456789")

        before = request_count(client.get("/metrics").text, "cnn")
        for pixels in images:
            response = predict_png(server.url, "cnn", png_bytes(pixels), client)
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["model"] == "cnn" and answer["version"] == "1" and answer["task"] == "classify"
            (prediction,) = answer["predictions"]
            assert len(prediction["top_k"]) == 5
            assert prediction["label"] == str(expected_class(pixels))
            assert prediction["probability"] == pytest.approx(expected_probabilities(pixels).max(), abs=1e-5)

        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert request_count(metrics.text, "cnn") - before == len(images)
        assert metric(metrics.text, 'waldo_model_version{model="cnn"}') == 1

        # A bad request is a JSON 4xx, and the service goes on serving.
        bad = client.post("/v1/models/cnn/predict", files={"file": ("x.png", b"not an image", "image/png")})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_image"
        assert client.get("/v1/models/nope").status_code == 404
        assert predict_png(server.url, "cnn", png_bytes(images[0]), client).status_code == 200


@pytest.mark.trains
def test_the_trained_cnn_classifies_held_out_digits_over_http(model_repo, serve, digits) -> None:
    """The session's exported `cnn` (8 epochs on digits), served by a real process, gets at
    least 18 of 20 held-out digits right."""
    server = serve(model_repo[0], "--log-level", "warning")
    with httpx.Client(base_url=server.url, timeout=60) as client:
        answers = [predict_png(server.url, "cnn", png, client) for _, png in digits]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    right = sum(a.json()["predictions"][0]["label"] == str(label) for a, (label, _) in zip(answers, digits))
    print(f"\ncnn over HTTP: {right}/{len(digits)} held-out digits right")
    assert right >= 18, f"only {right}/20 digits classified right"


# --- without torch --------------------------------------------------------------------------
def test_serve_without_torch(tiny_repo, tmp_path: Path) -> None:
    """A serving-only install: torch, lightning, ray and training cannot be imported at all."""
    repo, _ = tiny_repo
    blocked = ", ".join(repr(m) for m in HEAVY)

    def argv(port: int) -> list[str]:
        args = ["--models", str(repo), "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        code = ("import sys\n"
                f"for m in ({blocked},): sys.modules[m] = None  # import m -> ImportError\n"
                "from serving.cli import main\n"
                f"sys.exit(main({args!r}))\n")
        return [sys.executable, "-c", code]

    server = start_server(argv, workdir=tmp_path)
    try:
        models = httpx.get(f"{server.url}/v1/models", timeout=60).json()["models"]
        assert sorted(m["name"] for m in models) == ["cnn", "cnn-localize"]
        for pixels in sample_images(4):
            response = predict_png(server.url, "cnn", png_bytes(pixels))
            assert response.status_code == 200, response.text
            assert response.json()["predictions"][0]["label"] == str(expected_class(pixels))
        (canvas,) = sample_images(1, size=32)
        b64 = base64.b64encode(png_bytes(canvas)).decode()
        response = httpx.post(f"{server.url}/v1/models/cnn-localize/predict",
                              json={"instances": [{"b64": b64}]}, timeout=60)
        assert response.status_code == 200, response.text
        found = response.json()["predictions"][0]
        assert found["p_c"] == pytest.approx(expected_p_c(canvas), abs=1e-5)
        assert found["box"] == pytest.approx(dict(zip("xywh", (32 * v for v in BOX))), abs=1e-4)
    finally:
        server.stop()
    # The guard was real: the same preamble makes `import torch` fail.
    guard = f"import sys\nfor m in ({blocked},): sys.modules[m] = None\nimport torch\n"
    check = subprocess.run([sys.executable, "-c", guard], capture_output=True, text=True, timeout=60)
    assert check.returncode != 0 and "import of torch halted" in check.stderr, check.stderr


def test_serve_missing_folder_is_one_line(waldo, tmp_path: Path) -> None:
    result = waldo.run("serve", "--models", "/does/not/exist", cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "/does/not/exist" in lines[0] and "Traceback" not in result.stderr


# --- the web page in a real browser -----------------------------------------------------------
@pytest.fixture
def browser(tmp_path: Path) -> Iterator:
    with chromium(tmp_path) as driver:
        yield driver


def _upload(driver, model: str, path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(driver, 90)
    wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) >= 2)
    Select(driver.find_element(By.ID, "model")).select_by_value(model)
    driver.execute_script("document.body.dataset.state = '';")
    driver.find_element(By.ID, "file").send_keys(str(path))
    finished = "body[data-state=done], body[data-state=error]"
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, finished)))
    state = driver.find_element(By.TAG_NAME, "body").get_attribute("data-state")
    assert state == "done", f"page ended in {state!r}: {driver.find_element(By.ID, 'error').text}"


def _probabilities(driver) -> list[tuple[str, float]]:
    from selenium.webdriver.common.by import By

    return [(row.find_element(By.CSS_SELECTOR, "td.name").text,
             float(row.find_element(By.CSS_SELECTOR, "td.value").text))
            for row in driver.find_elements(By.CSS_SELECTOR, "#probabilities tr.probability")]


def test_web_page_in_chromium(browser, server: Server, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    driver.get(server.url + "/")
    assert driver.title == "Waldo"

    # Classification: an image of a known class through the file input.
    pixels = grey(7)
    digit_file = tmp_path / "digit.png"
    digit_file.write_bytes(png_bytes(pixels))
    _upload(driver, "cnn", digit_file)
    assert driver.find_element(By.ID, "label").text == "7" == str(expected_class(pixels))
    rows = _probabilities(driver)
    assert len(rows) == 5, rows
    assert rows[0][0] == "7" and abs(rows[0][1] - expected_probabilities(pixels).max()) < 1e-4, rows
    shown = [p for _, p in rows]
    assert all(0 <= p <= 1 for p in shown) and shown == sorted(shown, reverse=True)
    assert "cnn v1" in driver.find_element(By.ID, "status").text
    assert "CPUExecutionProvider" in driver.find_element(By.ID, "model-info").text

    # Localization: p_c about 0.85, so the box is drawn.
    (canvas,) = sample_images(1, size=32)
    canvas_file = tmp_path / "canvas.png"
    canvas_file.write_bytes(png_bytes(canvas))
    _upload(driver, "cnn-localize", canvas_file)
    detail = driver.find_element(By.ID, "detail").text
    assert detail.startswith(f"p_c {expected_p_c(canvas):.3f}") and "box" in detail, detail
    assert len(_probabilities(driver)) == 1
    WebDriverWait(driver, 60).until(
        lambda d: d.execute_script("return document.getElementById('canvas').width") > 0)
    width, height, red = driver.execute_script("""
        const c = document.getElementById('canvas');
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let red = 0;
        for (let i = 0; i < data.length; i += 4)
          if (data[i] > 200 && data[i + 1] < 80 && data[i + 2] < 80) red++;
        return [c.width, c.height, red];""")
    assert width > 0 and height > 0
    assert red > 0, f"no box drawn for {detail!r}"


# --- under load, with a reload in the middle -------------------------------------------------
LOAD_REQUESTS = 5000
LOAD_CONCURRENCY = 32


async def _load(url: str, bodies: list, on_half) -> tuple[list, dict, float, float]:
    """LOAD_REQUESTS predicts by LOAD_CONCURRENCY workers; `on_half()` (a coroutine returning the
    reload answer) runs once half of them are answered. Returns (results, reload answer,
    reload-answered time, elapsed). Each result: (status or error, version, label, expected,
    sent at).

    Each worker has its own single-connection client: one shared pool of 32 connections costs
    httpcore more CPU than the server spends per request (it scans every connection for each
    request), which on 2 cores would measure the client, not the service.
    """
    results: list = [None] * LOAD_REQUESTS
    half = asyncio.Event()
    done = 0
    reloaded: dict = {}
    reload_done_at = float("inf")

    async def worker(first: int) -> None:
        nonlocal done
        async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=1),
                                     timeout=120) as client:
            for i in range(first, LOAD_REQUESTS, LOAD_CONCURRENCY):
                kind, expected, payload = bodies[i % len(bodies)]
                sent = time.monotonic()
                try:
                    if kind == "json":
                        response = await client.post("/v1/models/cnn/predict", content=payload,
                                                     headers={"content-type": "application/json"})
                    else:
                        response = await client.post("/v1/models/cnn/predict",
                                                     files={"file": ("digit.png", payload, "image/png")})
                except httpx.HTTPError as exc:  # recorded, so that the test says what went wrong
                    results[i] = (repr(exc), None, None, expected, sent)
                else:
                    if response.status_code == 200:
                        body = response.json()
                        results[i] = (200, body["version"], body["predictions"][0]["label"], expected, sent)
                    else:
                        results[i] = (f"{response.status_code} {response.text[:200]}", None, None,
                                      expected, sent)
                done += 1
                if done == LOAD_REQUESTS // 2:
                    half.set()

    async def reloader() -> None:
        nonlocal reload_done_at
        await half.wait()
        reloaded.update(await on_half())
        reload_done_at = time.monotonic()

    started = time.monotonic()
    await asyncio.gather(reloader(), *(worker(w) for w in range(LOAD_CONCURRENCY)))
    return results, reloaded, reload_done_at, time.monotonic() - started


@pytest.mark.slow  # about 40 s of load on 2 cores
def test_load_with_reload_in_the_middle(tiny_repo, serve, tmp_path: Path) -> None:
    repo = copy_repo(tiny_repo[0], tmp_path / "models")
    server = serve(repo, "--log-level", "warning",  # no access log: 5,000 lines of it cost CPU
                   WALDO_MODEL_CONTROL="explicit")  # reload is repository control: off by default
    bodies = []  # alternate JSON base64 and multipart PNG
    for pixels in sample_images():
        label, png = expected_class(pixels), png_bytes(pixels)
        bodies.append(("json", str(label),
                       json.dumps({"instances": [{"b64": base64.b64encode(png).decode()}]}).encode()))
        bodies.append(("multipart", str(label), png))
    before = request_count(httpx.get(f"{server.url}/metrics", timeout=60).text, "cnn")

    async def reload_v2() -> dict:
        await asyncio.to_thread(publish_copy, repo / "cnn", "1", "2")
        async with httpx.AsyncClient(timeout=120) as admin:
            response = await admin.post(f"{server.url}/v1/models/cnn/reload")
        assert response.status_code == 200, response.text
        return response.json()

    results, reloaded, reload_done_at, elapsed = asyncio.run(_load(server.url, bodies, reload_v2))
    rate = LOAD_REQUESTS / elapsed
    print(f"\nload: {LOAD_REQUESTS} predicts at concurrency {LOAD_CONCURRENCY} in {elapsed:.1f} s "
          f"= {rate:.0f} req/s (reload to v2 in the middle)")

    assert reloaded == {"name": "cnn", "version": "2", "previous_version": "1", "changed": True}
    assert all(r is not None for r in results), "some requests never completed"
    failures = [r[0] for r in results if r[0] != 200]
    assert not failures, f"{len(failures)} of {LOAD_REQUESTS} failed, e.g. {failures[:5]}"
    versions = [r[1] for r in results]
    seen = {v: versions.count(v) for v in set(versions)}
    print(f"load: answers by version {seen}")
    assert set(seen) == {"1", "2"}, seen
    # A request sent after the reload answered is computed by the new version, never the old.
    late = [r for r in results if r[4] > reload_done_at]
    assert late and all(r[1] == "2" for r in late), "a request after the reload got v1"
    wrong = [r for r in results if r[2] != r[3]]  # both versions are the same tiny model
    assert not wrong, f"{len(wrong)} wrong answers under load, e.g. {wrong[:3]}"
    # The server counted every one of them, as 200s: none lost, none double-counted.
    metrics = httpx.get(f"{server.url}/metrics", timeout=60).text
    assert request_count(metrics, "cnn") - before == LOAD_REQUESTS
    assert metric(metrics, 'waldo_model_version{model="cnn"}') == 2
    assert server.proc.poll() is None
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log and "ERROR" not in log, log[-4000:]


def test_failed_reload_keeps_the_served_model(tiny_repo, serve, tmp_path: Path) -> None:
    repo = copy_repo(tiny_repo[0], tmp_path / "models")
    server = serve(repo, WALDO_MODEL_CONTROL="explicit")
    pixels = sample_images()[3]
    label, png = expected_class(pixels), png_bytes(pixels)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        publish_copy(repo / "cnn", "1", "2")
        reloaded = client.post("/v1/models/cnn/reload")
        assert reloaded.status_code == 200 and reloaded.json()["version"] == "2", reloaded.text
        assert client.post("/v1/models/cnn/reload").json()["changed"] is False

        # Version 3: a valid card beside a model file of garbage.
        publish(repo / "cnn" / "3", {"model.onnx": os.urandom(4096) + b"garbage",
                                     "modelcard.json": repo / "cnn" / "1" / "modelcard.json"})
        failed = client.post("/v1/models/cnn/reload")
        assert failed.status_code == 409, failed.text
        assert failed.headers["content-type"].startswith("application/json")
        error = failed.json()["error"]
        assert error["code"] == "reload_failed"
        assert "model.onnx" in error["message"] and "v2 is still served" in error["message"]

        response = predict_png(server.url, "cnn", png, client)
        assert response.status_code == 200, response.text
        assert response.json()["version"] == "2"
        assert response.json()["predictions"][0]["label"] == str(label)
        assert client.get("/v1/models/cnn").json()["version"] == "2"
        assert client.get("/readyz").status_code == 200
        assert metric(client.get("/metrics").text, 'waldo_reloads_total{model="cnn",outcome="failed"}') == 1
        # Still refused on a second try, and still serving.
        assert client.post("/v1/models/cnn/reload").status_code == 409
        assert predict_png(server.url, "cnn", png, client).json()["version"] == "2"
