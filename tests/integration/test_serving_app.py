"""The inference service in-process (FastAPI's TestClient runs the lifespan) on the tiny models
of `tiny_repo` (support.tiny), whose answers the tests know: endpoints, malformed input, auth,
reload safety and metrics; and, on the session's trained `model_repo`, parity with the torch
model."""

from __future__ import annotations

import base64
import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from support.serving import metric
from support.tiny import (
    BOX,
    expected_class,
    expected_probabilities,
    publish,
    sample_images,
)
from support.tiny import png_bytes as png

from serving.app import create_app
from serving.modelcard import CARD_FILE, MODEL_FILE
from serving.settings import Settings


@pytest.fixture(scope="module")
def samples() -> tuple[list[np.ndarray], list[int]]:
    """Twelve 28x28 images and the class the tiny classifier gives each."""
    images = sample_images()
    return images, [expected_class(pixels) for pixels in images]


@pytest.fixture(scope="module")
def repo(tiny_repo, tmp_path_factory) -> Path:
    """A private copy of the shared tiny repository, so tests may add versions to it."""
    root = tmp_path_factory.mktemp("serving-app") / "models"
    shutil.copytree(tiny_repo[0], root)
    return root


def make_client(repo: Path, **overrides) -> TestClient:
    settings = Settings(models=[str(repo)], max_body_bytes=2**20, max_images=16, **overrides)
    return TestClient(create_app(settings))


@pytest.fixture(scope="module")
def client(repo):
    with make_client(repo) as c:
        yield c


def files(*blobs: bytes):
    return [("file", (f"img{i}.png", b, "image/png")) for i, b in enumerate(blobs)]


# --- health and model information -----------------------------------------------------------
def test_health_readiness_and_model_listing(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert set(models) == {"cnn", "cnn-localize"}
    cnn = client.get("/v1/models/cnn").json()
    assert cnn["task"] == "classify" and cnn["labels"] == [str(d) for d in range(10)]
    assert cnn["input"]["channels"] == 1 and cnn["input"]["height"] == 28
    assert cnn["providers"] == ["CPUExecutionProvider"]  # what the session uses, not what was asked
    assert cnn["version"] == "1" and cnn["loaded"] is True


def test_readyz_is_503_when_a_source_holds_nothing(tmp_path):
    with make_client(tmp_path) as c:  # an empty folder
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "holds no complete model version" in ready.json()["errors"][0]
        assert c.get("/healthz").status_code == 200  # alive, just not ready


# --- predict --------------------------------------------------------------------------------
def test_classifies_uploaded_images(client, samples):
    images, labels = samples
    answer = client.post("/v1/models/cnn/predict?top_k=3", files=files(*map(png, images)))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == "cnn" and body["version"] == "1" and len(body["predictions"]) == len(images)
    assert [int(p["label"]) for p in body["predictions"]] == labels
    for p, pixels in zip(body["predictions"], images):
        assert len(p["top_k"]) == 3 and p["top_k"][0]["label"] == p["label"]
        assert p["top_k"][0]["probability"] >= p["top_k"][1]["probability"]
        known = expected_probabilities(pixels)
        for top in p["top_k"]:
            assert top["probability"] == pytest.approx(known[int(top["label"])], abs=1e-5)


def test_json_base64_and_tensor_instances_agree_with_multipart(client, samples):
    image = samples[0][0]
    by_file = client.post("/v1/models/cnn/predict", files=files(png(image))).json()["predictions"][0]
    b64 = {"b64": base64.b64encode(png(image)).decode()}
    by_b64 = client.post("/v1/models/cnn/predict", json={"instances": [b64]}).json()["predictions"][0]
    card = client.get("/v1/models/cnn").json()["input"]
    tensor = ((image / 255.0 - card["mean"][0]) / card["std"][0])[None].tolist()
    by_tensor = client.post("/v1/models/cnn/predict", json={"instances": [tensor, b64]}).json()
    assert by_file == by_b64
    assert by_tensor["predictions"][0]["label"] == by_file["label"]
    assert by_tensor["predictions"][0]["probability"] == pytest.approx(by_file["probability"], abs=1e-5)


def test_localization_box_comes_back_in_the_pixels_of_the_original_image(client):
    canvas = np.zeros((32, 32), dtype=np.uint8)
    big = np.kron(canvas, np.ones((3, 3), dtype=np.uint8))  # 96x96, same picture
    small = client.post("/v1/models/cnn-localize/predict", files=files(png(canvas))).json()["predictions"][0]
    large = client.post("/v1/models/cnn-localize/predict", files=files(png(big))).json()["predictions"][0]
    assert set(small) == {"p_c", "object", "label", "probability", "box"}
    assert 0 <= small["p_c"] <= 1
    for key, fraction in zip("xywh", BOX):  # the tiny localizer's box, in each image's pixels
        assert small["box"][key] == pytest.approx(32 * fraction, abs=1e-4)
        assert large["box"][key] == pytest.approx(96 * fraction, abs=1e-4)


def digit_samples(count: int = 12) -> tuple[list[np.ndarray], list[int]]:
    """uint8 28x28 digits of the held-out test split, as the training data module builds them."""
    from training.data.digits import DigitsDataModule

    dm = DigitsDataModule()
    dm.setup("test")
    images, labels = [], []
    for i in range(count):
        x, y = dm.test_set[i]
        images.append(x[0].numpy())
        labels.append(int(y))
    return images, labels


@pytest.mark.trains
def test_service_outputs_equal_the_torch_model(model_repo):
    """Preprocessing parity: the probabilities the service returns for PNG uploads of held-out
    digits equal the trained torch model's on the training transform of the same pixels,
    within 1e-4, and it gets at least 7 of 8 right."""
    import torch

    from training.data.digits import DigitsDataModule
    from training.tasks import load_task

    task = load_task(str(model_repo[1]["cnn"].checkpoint)).eval()
    dm = DigitsDataModule()
    dm.setup("test")
    images, labels = digit_samples(8)
    with torch.no_grad():
        batch = dm.batch_transform()(torch.from_numpy(np.stack(images))[:, None])
        expected = torch.softmax(task(batch), dim=1).numpy()
    with make_client(model_repo[0]) as client:
        body = client.post("/v1/models/cnn/predict?top_k=10", files=files(*map(png, images))).json()
    assert sum(int(p["label"]) == y for p, y in zip(body["predictions"], labels)) >= len(labels) - 1
    for row, prediction in zip(expected, body["predictions"]):
        got = {int(t["label"]): t["probability"] for t in prediction["top_k"]}
        np.testing.assert_allclose([got[k] for k in range(10)], row, atol=1e-4, rtol=0)


# --- malformed requests ---------------------------------------------------------------------
def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height in its header, with only a few bytes of pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def bomb_png() -> bytes:
    """A real, tiny (deflate compresses zeros) PNG of 5000 x 5000 = 25 Mpx."""
    buf = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


GOOD = png(np.full((28, 28), 128, dtype=np.uint8))
ZERO_TENSOR = np.zeros((1, 28, 28)).tolist()
MP = "multipart/form-data; boundary=xyz"

# (case, method kwargs for client.request, expected status)
MALFORMED = [
    ("truncated png", dict(files=files(GOOD[: len(GOOD) // 2])), 400),
    ("zero bytes", dict(files=files(b"")), 400),
    ("text as image", dict(files=[("file", ("a.png", b"hello, I am text", "image/png"))]), 400),
    ("svg is not allowed", dict(files=files(b"<svg xmlns='http://www.w3.org/2000/svg'/>")), 400),
    ("header claims 20000x20000", dict(files=files(png_header(20000, 20000))), 413),
    ("header claims 60000x300", dict(files=files(png_header(60000, 300))), 413),
    ("decompression bomb", dict(files=files(bomb_png())), 413),
    ("jpeg header only", dict(files=files(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")), 400),
    ("wrong tensor shape", dict(json={"instances": [np.zeros((3, 28, 28)).tolist()]}), 422),
    ("flat tensor", dict(json={"instances": [[0.0] * 784]}), 422),
    ("ragged tensor", dict(json={"instances": [[[[0.0, 1.0], [0.0]]]]}), 422),
    ("strings in tensor", dict(json={"instances": [[[["a"] * 28] * 28]]}), 422),
    ("NaN in tensor", dict(content=json.dumps({"instances": [[[[float("nan")] * 28] * 28]]}),
                           headers={"content-type": "application/json"}), 422),
    ("infinity in tensor", dict(content=json.dumps({"instances": [[[[float("inf")] * 28] * 28]]}),
                                headers={"content-type": "application/json"}), 422),
    ("huge JSON", dict(json={"instances": [ZERO_TENSOR] * 100}), 413),
    ("content-length lies", dict(content=b"{}", headers={"content-type": "application/json",
                                                          "content-length": str(10**12)}), 413),
    ("invalid JSON", dict(content=b"{instances: ", headers={"content-type": "application/json"}), 400),
    ("deeply nested JSON", dict(content=b"[" * 100_000, headers={"content-type": "application/json"}), 400),
    ("no instances key", dict(json={"images": []}), 422),
    ("empty instances", dict(json={"instances": []}), 422),
    ("instances not a list", dict(json={"instances": "cat.png"}), 422),
    ("unknown field", dict(json={"instances": [ZERO_TENSOR], "extra": 1}), 422),
    ("bad base64", dict(json={"instances": [{"b64": "%%%"}]}), 400),
    ("base64 of text", dict(json={"instances": [{"b64": base64.b64encode(b"text").decode()}]}), 400),
    ("too many images", dict(files=files(*[GOOD] * 17)), 413),
    ("too many instances", dict(json={"instances": [{"b64": "AA=="}] * 17}), 413),
    ("wrong content type", dict(content=b"hello", headers={"content-type": "text/plain"}), 415),
    ("no content type", dict(content=b"hello"), 415),
    ("multipart without file field", dict(data={"image": "x"}, files=[("other", ("a.png", GOOD))]), 422),
    ("file field sent as text", dict(content=b'--xyz\r\nContent-Disposition: form-data; name="file"'
                                             b"\r\n\r\nnot a file\r\n--xyz--\r\n",
                                     headers={"content-type": MP}), 422),
    ("broken multipart", dict(content=b"--nope\r\ngarbage", headers={"content-type": MP}), 400),
    ("top_k zero", dict(files=files(GOOD), params={"top_k": 0}), 422),
    ("top_k not a number", dict(files=files(GOOD), params={"top_k": "many"}), 422),
    ("threshold above 1", dict(files=files(GOOD), params={"threshold": 2}), 422),
]


@pytest.mark.parametrize("case, kwargs, status", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_requests_get_a_4xx_json_error(client, case, kwargs, status):
    answer = client.request("POST", "/v1/models/cnn/predict", **kwargs)
    assert answer.status_code == status, (case, answer.text)
    error = answer.json()["error"]
    assert error["code"] and len(error["message"]) > 10


@pytest.mark.parametrize("method, path, status", [
    ("POST", "/v1/models/nope/predict", 404),
    ("GET", "/v1/models/nope", 404),
    ("POST", "/v1/models/nope/reload", 403),  # repository control is off by default
    ("GET", "/v1/models/cnn/predict", 405),
    ("GET", "/no/such/route", 404),
])
def test_unknown_models_and_routes(client, method, path, status):
    answer = client.request(method, path, files=files(GOOD) if method == "POST" else None)
    assert answer.status_code == status
    assert "error" in answer.json()
    if "nope" in path and status == 404:
        assert "'nope'" in answer.json()["error"]["message"] and "cnn" in answer.json()["error"]["message"]


def test_still_serving_after_every_malformed_request(client, samples):
    for _, kwargs, _ in MALFORMED:
        client.request("POST", "/v1/models/cnn/predict", **kwargs)
    answer = client.post("/v1/models/cnn/predict", files=files(png(samples[0][0])))
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == str(samples[1][0])
    metrics = client.get("/metrics").text
    assert 'waldo_requests_total{model="cnn",protocol="v1",status="422",version="1"}' in metrics
    assert 'waldo_requests_total{model="cnn",protocol="v1",status="500",version="1"}' not in metrics


# --- metrics --------------------------------------------------------------------------------
def test_prometheus_metrics_count_requests_batches_and_versions(client):
    before = client.get("/metrics").text
    for _ in range(3):
        assert client.post("/v1/models/cnn/predict", files=files(GOOD, GOOD)).status_code == 200
    after = client.get("/metrics").text
    ok = 'waldo_requests_total{model="cnn",protocol="v1",status="200",version="1"}'
    assert metric(after, ok) - metric(before, ok, default=0.0) == 3
    images = 'waldo_batch_size_sum{model="cnn",version="1"}'
    assert metric(after, images) - metric(before, images) == 6
    assert metric(after, 'waldo_model_version{model="cnn"}') == 1
    assert 'waldo_request_latency_seconds_bucket{le="0.1",model="cnn",protocol="v1",version="1"}' in after
    assert 'waldo_queue_depth{model="cnn"}' in after


# --- auth -----------------------------------------------------------------------------------
def test_bearer_token_guards_predict_and_reload(repo):
    with make_client(repo, api_key="user-secret", admin_key="admin-secret") as c:
        assert c.get("/healthz").status_code == 200 and c.get("/v1/models").status_code == 200
        missing = c.post("/v1/models/cnn/predict", files=files(GOOD))
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        wrong = c.post("/v1/models/cnn/predict", files=files(GOOD), headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "forbidden"
        user = {"Authorization": "Bearer user-secret"}
        assert c.post("/v1/models/cnn/predict", files=files(GOOD), headers=user).status_code == 200
        assert c.post("/v1/models/cnn/reload", headers=user).status_code == 403
        admin = {"Authorization": "Bearer admin-secret"}
        assert c.post("/v1/models/cnn/reload", headers=admin).status_code == 200


# --- reload ---------------------------------------------------------------------------------
def add_version(repo: Path, name: str, version: str, model_from: Path, card_from: Path) -> Path:
    folder = repo / name / version
    publish(folder, {MODEL_FILE: model_from, CARD_FILE: card_from})
    return folder


def test_reload_swaps_in_a_new_version_and_refuses_a_broken_one(repo, samples):
    v1 = repo / "cnn" / "1"
    with make_client(repo, model_control="explicit") as c:
        assert c.post("/v1/models/cnn/reload").json()["changed"] is False
        # A file that ONNX Runtime cannot open: refused, v1 keeps serving.
        bad = add_version(repo, "cnn", "2", v1 / CARD_FILE, v1 / CARD_FILE)
        refused = c.post("/v1/models/cnn/reload")
        assert refused.status_code == 409 and "v1 is still served" in refused.json()["error"]["message"]
        # Models that load but fail the smoke test: the localizer (32x32 input, 5 + 10 outputs)
        # under the classifier's card, first as it is, then with the input size corrected.
        shutil.rmtree(bad)
        wrong = add_version(repo, "cnn", "2", repo / "cnn-localize" / "1" / MODEL_FILE, v1 / CARD_FILE)
        refused = c.post("/v1/models/cnn/reload")
        assert refused.status_code == 409 and "fails a smoke inference" in refused.json()["error"]["message"]
        card = json.loads((v1 / CARD_FILE).read_text())
        card["input"].update(height=32, width=32)
        (wrong / CARD_FILE).write_text(json.dumps(card))
        refused = c.post("/v1/models/cnn/reload")
        assert refused.status_code == 409 and "output shape (2, 15)" in refused.json()["error"]["message"]
        answer = c.post("/v1/models/cnn/predict", files=files(png(samples[0][0]))).json()
        assert answer["version"] == "1" and answer["predictions"][0]["label"] == str(samples[1][0])
        # A good version 2 replaces v1.
        shutil.rmtree(wrong)
        add_version(repo, "cnn", "2", v1 / MODEL_FILE, v1 / CARD_FILE)
        loaded = c.post("/v1/models/cnn/reload").json()
        assert loaded == {"name": "cnn", "version": "2", "previous_version": "1", "changed": True}
        assert c.post("/v1/models/cnn/predict", files=files(GOOD)).json()["version"] == "2"
        assert c.get("/v1/models/cnn").json()["version"] == "2"
        assert metric(c.get("/metrics").text, 'waldo_model_version{model="cnn"}') == 2
    shutil.rmtree(repo / "cnn" / "2")


def test_settings_come_from_waldo_environment_variables(monkeypatch, repo):
    monkeypatch.setenv("WALDO_MODELS", f"{repo}, digits@production")
    monkeypatch.setenv("WALDO_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("WALDO_API_KEY", "k")
    settings = Settings()
    assert settings.models == [str(repo), "digits@production"]
    assert settings.max_batch_size == 4 and settings.api_key.get_secret_value() == "k"
    monkeypatch.setenv("WALDO_API_KEY", "")  # as compose passes an unset variable: no key
    assert Settings().api_key is None
    monkeypatch.setenv("WALDO_MAX_BATCH_SIZE", "0")
    with pytest.raises(ValueError, match="max_batch_size"):
        Settings()


def test_require_gpu_refuses_to_fall_back_to_the_cpu(repo):
    with make_client(repo, require_gpu=True) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503
        error = ready.json()["models"]["cnn"]["error"]
        assert "CUDAExecutionProvider" in error
        refused = c.post("/v1/models/cnn/predict", files=files(GOOD))
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_loaded"
