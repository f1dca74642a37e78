"""The Open Inference Protocol (KServe v2) as standard clients speak it: Triton's released
`tritonclient` (HTTP and gRPC) and `perf_analyzer`, against a real `waldo serve --grpc-port` on
127.0.0.1, on the session's trained `cnn` and `cnn-localize`.

The answers must be the friendly API's (`/v1/models/{m}/predict`) to within 1e-6, and malformed
requests must get a 4xx (`{"error": ...}`) or the matching gRPC status while the service stays up.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from support import BIN, Server, clean_env, free_port, start_server, waldo_command
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.slow

PERF_ANALYZER = BIN / "perf_analyzer"


class V2Server:
    """`waldo serve` with HTTP and gRPC, and a tritonclient for each."""

    def __init__(self, server: Server, grpc_port: int, repo: Path):
        self.server, self.url, self.repo = server, server.url, repo
        self.grpc_address = f"127.0.0.1:{grpc_port}"
        self.http = thttp.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)
        self.grpc = tgrpc.InferenceServerClient(self.grpc_address)

    def stop(self) -> None:
        self.http.close()
        self.grpc.close()
        self.server.stop()


def start_v2(models: Path, workdir: Path, env: dict[str, str] | None = None) -> V2Server:
    grpc_ports: list[int] = []

    def argv(port: int) -> list[str]:
        grpc_ports.append(free_port())
        return [*waldo_command(), "serve", "--models", str(models), "--host", "127.0.0.1",
                "--port", str(port), "--grpc-port", str(grpc_ports[-1])]

    return V2Server(start_server(argv, workdir=workdir, env=clean_env(**(env or {}))), grpc_ports[-1], models)


@pytest.fixture(scope="module")
def v2(model_repo, tmp_path_factory) -> Iterator[V2Server]:
    running = start_v2(model_repo[0], tmp_path_factory.mktemp("serving-v2"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def pngs(digits) -> list[bytes]:
    return [png for _, png in digits[:4]]


def friendly_probabilities(url: str, model: str, png: bytes) -> np.ndarray:
    """The friendly API's class probabilities for one image, in label order."""
    labels = httpx.get(f"{url}/v1/models/{model}", timeout=30).json()["labels"]
    answer = httpx.post(f"{url}/v1/models/{model}/predict", params={"top_k": len(labels)},
                        files={"file": ("d.png", png, "image/png")}, timeout=60).json()
    by_label = {t["label"]: t["probability"] for t in answer["predictions"][0]["top_k"]}
    return np.array([by_label[label] for label in labels])


def image_input(module, pngs: list[bytes], *, binary: bool = True, b64: bool = False):
    tensor = module.InferInput("image", [len(pngs), 1], "BYTES")
    values = [base64.b64encode(p) if b64 else p for p in pngs]
    array = np.array(values, dtype=object).reshape(len(pngs), 1)
    if module is thttp:
        tensor.set_data_from_numpy(array, binary_data=binary)
    else:
        tensor.set_data_from_numpy(array)
    return tensor


def tensor_input(module, x: np.ndarray, *, binary: bool = True):
    tensor = module.InferInput("input", list(x.shape), "FP32")
    if module is thttp:
        tensor.set_data_from_numpy(x, binary_data=binary)
    else:
        tensor.set_data_from_numpy(x)
    return tensor


def status_of(call) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return str(caught.value.status())


# --- metadata, ready, infer ---------------------------------------------------------------------
def test_metadata_ready_config_and_index_over_both_protocols(v2: V2Server) -> None:
    for client in (v2.http, v2.grpc):
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("cnn") and client.is_model_ready("cnn", "1")
        assert not client.is_model_ready("cnn", "9")
    meta = v2.http.get_server_metadata()
    assert meta["name"] == "waldo"
    wanted = {"binary_tensor_data", "classification", "model_repository", "statistics"}
    assert wanted <= set(meta["extensions"])
    assert v2.grpc.get_server_metadata(as_json=True)["extensions"] == meta["extensions"]

    model = v2.http.get_model_metadata("cnn")
    assert model["versions"] == ["1"]
    assert {i["name"]: (i["datatype"], i["shape"]) for i in model["inputs"]} == {
        "image": ("BYTES", [-1, 1]), "input": ("FP32", [-1, 1, 28, 28])}
    assert model["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    grpc_model = v2.grpc.get_model_metadata("cnn", "1", as_json=True)
    assert [int(d) for d in grpc_model["inputs"][1]["shape"]] == [-1, 1, 28, 28]
    localizer = v2.http.get_model_metadata("cnn-localize")
    assert localizer["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 15]}]

    for config in (v2.http.get_model_config("cnn"), v2.grpc.get_model_config("cnn", as_json=True)["config"]):
        assert int(config["max_batch_size"]) == 32
        assert [i["optional"] for i in config["input"]] == [True, True]

    index = {m["name"]: m for m in v2.http.get_model_repository_index()}
    assert index["cnn"]["state"] == "READY" and index["cnn"]["version"] == "1"
    grpc_index = v2.grpc.get_model_repository_index(as_json=True)["models"]
    assert {m["name"] for m in grpc_index} == {"cnn", "cnn-localize"}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_images_and_tensors_give_the_friendly_apis_probabilities(v2: V2Server, pngs, protocol) -> None:
    from PIL import Image

    from serving.processing import preprocess
    from serving.repository import load_card

    module, client = (thttp, v2.http) if protocol == "http" else (tgrpc, v2.grpc)
    expected = np.stack([friendly_probabilities(v2.url, "cnn", png) for png in pngs])
    before = client.get_inference_statistics("cnn") if protocol == "http" else None

    sends = {"binary images": [image_input(module, pngs)]}
    if protocol == "http":
        sends["JSON images (base64)"] = [image_input(module, pngs, binary=False, b64=True)]
    card = load_card(v2.repo / "cnn" / "1" / "modelcard.json")
    x = np.stack([preprocess(card, Image.open(io.BytesIO(p))) for p in pngs]).astype(np.float32)
    sends["binary tensors"] = [tensor_input(module, x)]
    if protocol == "http":
        sends["JSON tensors"] = [tensor_input(module, x, binary=False)]
    for what, inputs in sends.items():
        result = client.infer("cnn", inputs)
        got = result.as_numpy("probabilities")
        assert got.shape == (len(pngs), 10), what
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0, err_msg=what)

    out = module.InferRequestedOutput("probabilities", class_count=3)
    top = client.infer("cnn", [image_input(module, pngs)], outputs=[out]).as_numpy("probabilities")
    assert top.shape == (len(pngs), 3)
    for row, probs in zip(top, expected):
        score, index, label = row[0].decode().split(":")
        assert int(index) == int(np.argmax(probs)) and label == str(int(np.argmax(probs)))
        assert abs(float(score) - probs.max()) < 1e-6

    if before is not None:
        after = client.get_inference_statistics("cnn")
        count = lambda stats: stats["model_stats"][0]["inference_stats"]["success"]["count"]  # noqa: E731
        assert count(after) - count(before) == len(sends) + 1


def test_localizer_answers_as_the_friendly_api(v2: V2Server, canvas_png) -> None:
    _, png, _ = canvas_png
    y = v2.grpc.infer("cnn-localize", [image_input(tgrpc, [png])]).as_numpy("y")
    friendly = httpx.post(f"{v2.url}/v1/models/cnn-localize/predict",
                          files={"file": ("c.png", png, "image/png")}, timeout=60).json()["predictions"][0]
    assert y.shape == (1, 15)
    assert abs(float(y[0, 0]) - friendly["p_c"]) < 1e-6
    assert str(int(np.argmax(y[0, 5:]))) == friendly["label"]


# --- malformed requests -------------------------------------------------------------------------
def _infer_body(inputs: list[dict], outputs: list[dict] | None = None) -> dict:
    return {"inputs": inputs, **({"outputs": outputs} if outputs is not None else {})}


def _binary(head: dict, blob: bytes) -> tuple[bytes, dict]:
    text = json.dumps(head).encode()
    return text + blob, {"Inference-Header-Content-Length": str(len(text)),
                         "content-type": "application/octet-stream"}


def test_malformed_http_requests_get_a_4xx_error_and_the_service_stays_up(v2: V2Server, pngs) -> None:
    png = pngs[0]
    framed = struct.pack("<I", len(png)) + png
    floats = np.zeros((1, 1, 28, 28), np.float32).tobytes()
    image = {"name": "image", "shape": [1, 1], "datatype": "BYTES"}
    tensor = {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32"}
    cases: dict[str, tuple[str, bytes | dict, dict | None, int]] = {
        "wrong datatype": ("cnn", _infer_body([{**tensor, "datatype": "INT64", "data": [0] * 784}]), None,
                           400),
        "shape and data disagree": ("cnn", _infer_body([{**tensor, "data": [0.0] * 783}]), None, 400),
        "binary_data_size larger than the body": (
            "cnn", *_binary(_infer_body([{**image, "parameters": {"binary_data_size": len(framed) + 9}}]),
                            framed), 400),
        "binary_data_size smaller than the body": (
            "cnn", *_binary(_infer_body([{**tensor, "parameters": {"binary_data_size": 100}}]), floats), 400),
        "a billion elements with tiny data": (
            "cnn", _infer_body([{**tensor, "shape": [1_000_000_000, 1, 28, 28], "data": [0.0] * 784}]), None,
            400),
        "unknown input": ("cnn", _infer_body([{**tensor, "name": "pixels", "data": [0.0] * 784}]), None, 400),
        "unknown output": ("cnn", _infer_body([{**tensor, "data": [0.0] * 784}], [{"name": "logits"}]), None,
                           400),
        "BYTES element that is not an image": (
            "cnn", *_binary(_infer_body([{**image, "parameters": {"binary_data_size": 9}}]),
                            struct.pack("<I", 5) + b"hello"), 400),
        "both inputs at once": ("cnn", _infer_body([{**tensor, "data": [0.0] * 784},
                                                    {**image, "data": [base64.b64encode(png).decode()]}]),
                                None, 400),
        "NaN in a binary tensor": (
            "cnn", *_binary(_infer_body([{**tensor, "parameters": {"binary_data_size": 3136}}]),
                            np.full((1, 1, 28, 28), np.nan, np.float32).tobytes()), 400),
        "header length that is not a number": ("cnn", b"{}", {"Inference-Header-Content-Length": "abc"}, 400),
        "not JSON": ("cnn", b"{inputs", {"content-type": "application/json"}, 400),
        "classification of a localizer": (
            "cnn-localize", _infer_body([{**image, "data": [base64.b64encode(png).decode()]}],
                                        [{"name": "y", "parameters": {"classification": 2}}]), None, 400),
        "more images than the limit": (
            "cnn", *_binary(_infer_body([{**image, "shape": [65, 1],
                                          "parameters": {"binary_data_size": 65 * len(framed)}}]),
                            framed * 65), 413),
        "a version that does not exist": ("cnn/versions/7", _infer_body([{**tensor, "data": [0.0] * 784}]),
                                          None, 404),
        "an unknown model": ("nope", _infer_body([{**tensor, "data": [0.0] * 784}]), None, 404),
    }
    with httpx.Client(base_url=v2.url, timeout=60) as client:
        for what, (model, body, headers, status) in cases.items():
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            response = client.post(f"/v2/models/{model}/infer", content=content, headers=headers or {})
            assert response.status_code == status, (what, response.text)
            error = response.json()["error"]
            assert isinstance(error, str) and error, what
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/models/cnn/versions/7").status_code == 404
        assert "error" in client.get("/v2/models/nope").json()
    assert v2.http.is_server_ready()


def test_malformed_grpc_requests_get_the_matching_status(v2: V2Server, pngs) -> None:
    good = np.zeros((1, 1, 28, 28), np.float32)
    wrong_type = tgrpc.InferInput("input", [1, 1, 28, 28], "INT64")
    wrong_type.set_data_from_numpy(good.astype(np.int64))
    short = tensor_input(tgrpc, good)
    short._raw_content = good.tobytes()[:100]
    billion = tensor_input(tgrpc, good)
    billion._input.ClearField("shape")
    billion._input.shape.extend([1_000_000_000, 1, 28, 28])
    unknown = tgrpc.InferInput("pixels", [1, 1, 28, 28], "FP32")
    unknown.set_data_from_numpy(good)
    not_image = image_input(tgrpc, [b"hello"])
    invalid = {
        "wrong datatype": [wrong_type], "raw contents of the wrong size": [short],
        "a billion elements with tiny data": [billion], "unknown input": [unknown],
        "BYTES element that is not an image": [not_image],
    }
    for what, inputs in invalid.items():
        status = status_of(lambda inputs=inputs: v2.grpc.infer("cnn", inputs))
        assert status == "StatusCode.INVALID_ARGUMENT", what
    outputs = [tgrpc.InferRequestedOutput("logits")]
    assert status_of(lambda: v2.grpc.infer("cnn", [tensor_input(tgrpc, good)], outputs=outputs)) \
        == "StatusCode.INVALID_ARGUMENT"
    assert status_of(lambda: v2.grpc.infer("nope", [tensor_input(tgrpc, good)])) == "StatusCode.NOT_FOUND"
    assert status_of(lambda: v2.grpc.infer("cnn", [tensor_input(tgrpc, good)], model_version="7")) \
        == "StatusCode.NOT_FOUND"
    assert status_of(lambda: v2.grpc.get_model_metadata("nope")) == "StatusCode.NOT_FOUND"
    assert v2.grpc.is_server_live()
    assert v2.grpc.infer("cnn", [tensor_input(tgrpc, good)]).as_numpy("probabilities").shape == (1, 10)


# --- the model repository and auth ----------------------------------------------------------------
def test_unload_load_and_a_broken_version_that_never_replaces_the_served_one(model_repo, tmp_path,
                                                                              pngs) -> None:
    repo = tmp_path / "models"
    shutil.copytree(model_repo[0] / "cnn", repo / "cnn")
    server = start_v2(repo, tmp_path / "server")
    try:
        image = [image_input(tgrpc, pngs[:1])]
        server.grpc.unload_model("cnn")
        assert not server.http.is_model_ready("cnn")
        assert status_of(lambda: server.grpc.infer("cnn", image)) == "StatusCode.UNAVAILABLE"
        response = httpx.post(f"{server.url}/v2/models/cnn/infer", timeout=60, json=_infer_body(
            [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
              "data": [base64.b64encode(pngs[0]).decode()]}]))
        assert response.status_code == 503 and "unloaded" in response.json()["error"]
        assert server.http.get_model_repository_index()[0]["state"] == "UNAVAILABLE"
        server.http.load_model("cnn")
        assert server.grpc.is_model_ready("cnn", "1")

        broken = repo / "cnn" / "2"
        broken.mkdir()
        (broken / "model.onnx").write_bytes(b"not an onnx file")
        shutil.copy2(repo / "cnn" / "1" / "modelcard.json", broken / "modelcard.json")
        with pytest.raises(InferenceServerException) as caught:
            server.http.load_model("cnn")
        assert "does not load" in str(caught.value) and "v1 is still served" in str(caught.value)
        assert status_of(lambda: server.grpc.load_model("cnn")) == "StatusCode.INVALID_ARGUMENT"
        assert server.grpc.infer("cnn", image).get_response().model_version == "1"

        shutil.rmtree(broken)
        shutil.copytree(repo / "cnn" / "1", repo / "cnn" / "3")
        server.grpc.load_model("cnn")
        assert server.http.get_model_metadata("cnn")["versions"] == ["3"]
        assert status_of(lambda: server.grpc.load_model("nope")) == "StatusCode.NOT_FOUND"
    finally:
        server.stop()


def test_bearer_token_guards_infer_and_the_repository_on_both_protocols(model_repo, tmp_path, pngs) -> None:
    repo = tmp_path / "models"
    shutil.copytree(model_repo[0] / "cnn", repo / "cnn")
    token = "v2-token-0123456789"
    server = start_v2(repo, tmp_path / "server", env={"WALDO_API_KEY": token})
    try:
        image = [image_input(tgrpc, pngs[:1])]
        assert status_of(lambda: server.grpc.infer("cnn", image)) == "StatusCode.UNAUTHENTICATED"
        wrong = {"authorization": "Bearer nope"}
        status = status_of(lambda: server.grpc.infer("cnn", image, headers=wrong))
        assert status == "StatusCode.PERMISSION_DENIED"
        assert status_of(lambda: server.grpc.unload_model("cnn")) == "StatusCode.UNAUTHENTICATED"
        assert server.grpc.is_model_ready("cnn")  # metadata stays open, as on /v1
        with pytest.raises(InferenceServerException) as caught:
            server.http.infer("cnn", [image_input(thttp, pngs[:1])])
        assert "401" in str(caught.value.status())
        auth = {"authorization": f"Bearer {token}"}
        assert server.grpc.infer("cnn", image, headers=auth).as_numpy("probabilities").shape == (1, 10)
        assert server.http.infer("cnn", [image_input(thttp, pngs[:1])], headers=auth) \
            .as_numpy("probabilities").shape == (1, 10)
    finally:
        server.stop()


# --- perf_analyzer ------------------------------------------------------------------------------
def _perf_analyzer_works() -> bool:
    if not PERF_ANALYZER.exists():
        return False
    return subprocess.run([str(PERF_ANALYZER), "--version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _perf_analyzer_works(),
                    reason="perf_analyzer is not set up (scripts/perf_analyzer.sh prints why)")
def test_perf_analyzer_loads_both_protocols_from_1_to_64_without_errors(v2: V2Server, pngs,
                                                                        tmp_path) -> None:
    data = tmp_path / "image.json"
    framed = struct.pack("<I", len(pngs[0])) + pngs[0]
    data.write_text(json.dumps({"data": [{"image": {"content": {"b64": base64.b64encode(framed).decode()},
                                                    "shape": [1]}}]}))
    for protocol, address in (("http", v2.url.removeprefix("http://")), ("grpc", v2.grpc_address)):
        csv = tmp_path / f"{protocol}.csv"
        run = subprocess.run([str(PERF_ANALYZER), "-m", "cnn", "-u", address, "-i", protocol,
                              "--input-data", str(data), "--concurrency-range", "1:64:21",
                              "--measurement-mode", "count_windows", "--measurement-request-count", "200",
                              # errors, not steadiness, are the point: a shared CI machine is noisy
                              "--stability-percentage", "1000", "-f", str(csv)],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        rows = csv.read_text().splitlines()
        assert rows[0].startswith("Concurrency,Inferences/Second")
        levels = [int(r.split(",")[0]) for r in rows[1:]]
        assert sorted(levels) == [1, 22, 43, 64], (protocol, levels)  # rows come by throughput
        assert all(float(r.split(",")[1]) > 0 for r in rows[1:])
