"""The Open Inference Protocol (KServe v2) as standard clients speak it: Triton's released
`tritonclient` (HTTP and gRPC) and `perf_analyzer`, against a real `waldo serve --grpc-port` on
127.0.0.1, on the tiny `cnn` and `cnn-localize` of `tiny_repo` (support.tiny), whose answers the
tests know.

The answers must be the friendly API's (`/v1/models/{m}/predict`) to within 1e-6, and malformed
requests must get a 4xx (`{"error": ...}`) or the matching gRPC status while the service stays up.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import subprocess
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from support import BIN
from support.tiny import bar, expected_p_c, expected_probabilities, png_bytes, sample_images
from support.v2 import V2Server, image_input, infer_body, start_v2, status_of, tensor_input
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.servers

PERF_ANALYZER = BIN / "perf_analyzer"


@pytest.fixture(scope="module")
def v2(tiny_repo, tmp_path_factory) -> Iterator[V2Server]:
    running = start_v2(tiny_repo[0], tmp_path_factory.mktemp("serving-v2"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    """Four 28x28 images of different classes (support.tiny.sample_images)."""
    return sample_images(4)


@pytest.fixture(scope="module")
def pngs(images) -> list[bytes]:
    return [png_bytes(pixels) for pixels in images]


def friendly_probabilities(url: str, model: str, png: bytes) -> np.ndarray:
    """The friendly API's class probabilities for one image, in label order."""
    labels = httpx.get(f"{url}/v1/models/{model}", timeout=30).json()["labels"]
    answer = httpx.post(f"{url}/v1/models/{model}/predict", params={"top_k": len(labels)},
                        files={"file": ("d.png", png, "image/png")}, timeout=60).json()
    by_label = {t["label"]: t["probability"] for t in answer["predictions"][0]["top_k"]}
    return np.array([by_label[label] for label in labels])


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
def test_images_and_tensors_give_the_friendly_apis_probabilities(v2: V2Server, images, pngs,
                                                                  protocol) -> None:
    from PIL import Image

    from serving.processing import preprocess
    from serving.repository import load_card

    module, client = (thttp, v2.http) if protocol == "http" else (tgrpc, v2.grpc)
    expected = np.stack([friendly_probabilities(v2.url, "cnn", png) for png in pngs])
    known = np.stack([expected_probabilities(pixels) for pixels in images])
    np.testing.assert_allclose(expected, known, atol=1e-5, rtol=0)  # the friendly API is right
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


def test_localizer_answers_as_the_friendly_api(v2: V2Server) -> None:
    pixels = bar(3, size=32)  # p_c about 0.85: far from 0 and 1, where a wrong one would hide
    png = png_bytes(pixels)
    y = v2.grpc.infer("cnn-localize", [image_input(tgrpc, [png])]).as_numpy("y")
    friendly = httpx.post(f"{v2.url}/v1/models/cnn-localize/predict",
                          files={"file": ("c.png", png, "image/png")}, timeout=60).json()["predictions"][0]
    assert y.shape == (1, 15)
    assert abs(float(y[0, 0]) - friendly["p_c"]) < 1e-6
    assert abs(friendly["p_c"] - expected_p_c(pixels)) < 1e-5
    assert str(int(np.argmax(y[0, 5:]))) == friendly["label"]


# --- malformed requests -------------------------------------------------------------------------
# Numbers FP32 cannot hold, as JSON text: integers of 300 and 5,000 digits (a 500 and two
# tracebacks before issue 24), beyond float32's range, not finite, and not numbers at all.
BAD_VALUES = ["1" * 300, "9" * 5000, "1e39", "-Infinity", "NaN", "true", "null", '"0.5"']


def with_value(text: str, v1: bool = False) -> bytes:
    """A 1x28x28 tensor of zeros as JSON (v2 `data`, flat, or a v1 instance) with `text` at
    flat position 100, i.e. [0, 3, 16]."""
    rows = [["0"] * 28 for _ in range(28)]
    rows[3][16] = text
    nested = "[[" + ",".join("[" + ",".join(row) + "]" for row in rows) + "]]"
    if v1:
        return b'{"instances": [' + nested.encode() + b"]}"
    flat = "[" + ",".join(value for row in rows for value in row) + "]"
    head = {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": "DATA"}]}
    return json.dumps(head).encode().replace(b'"DATA"', flat.encode())


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
    zeros = {**tensor, "data": [0.0] * 784}
    cases: dict[str, tuple[str, bytes | dict, dict | list | None, int]] = {
        "wrong datatype": ("cnn", infer_body([{**tensor, "datatype": "INT64", "data": [0] * 784}]), None,
                           400),
        "shape and data disagree": ("cnn", infer_body([{**tensor, "data": [0.0] * 783}]), None, 400),
        "binary_data_size larger than the body": (
            "cnn", *_binary(infer_body([{**image, "parameters": {"binary_data_size": len(framed) + 9}}]),
                            framed), 400),
        "binary_data_size smaller than the body": (
            "cnn", *_binary(infer_body([{**tensor, "parameters": {"binary_data_size": 100}}]), floats), 400),
        "a billion elements with tiny data": (
            "cnn", infer_body([{**tensor, "shape": [1_000_000_000, 1, 28, 28], "data": [0.0] * 784}]), None,
            400),
        "unknown input": ("cnn", infer_body([{**tensor, "name": "pixels", "data": [0.0] * 784}]), None, 400),
        "unknown output": ("cnn", infer_body([{**tensor, "data": [0.0] * 784}], [{"name": "logits"}]), None,
                           400),
        "BYTES element that is not an image": (
            "cnn", *_binary(infer_body([{**image, "parameters": {"binary_data_size": 9}}]),
                            struct.pack("<I", 5) + b"hello"), 400),
        "both inputs at once": ("cnn", infer_body([{**tensor, "data": [0.0] * 784},
                                                    {**image, "data": [base64.b64encode(png).decode()]}]),
                                None, 400),
        "NaN in a binary tensor": (
            "cnn", *_binary(infer_body([{**tensor, "parameters": {"binary_data_size": 3136}}]),
                            np.full((1, 1, 28, 28), np.nan, np.float32).tobytes()), 400),
        "header length that is not a number": ("cnn", b"{}", {"Inference-Header-Content-Length": "abc"}, 400),
        "not JSON": ("cnn", b"{inputs", {"content-type": "application/json"}, 400),
        "classification of a localizer": (
            "cnn-localize", infer_body([{**image, "data": [base64.b64encode(png).decode()]}],
                                        [{"name": "y", "parameters": {"classification": 2}}]), None, 400),
        "more images than the limit": (
            "cnn", *_binary(infer_body([{**image, "shape": [65, 1],
                                          "parameters": {"binary_data_size": 65 * len(framed)}}]),
                            framed * 65), 413),
        "a version that does not exist": ("cnn/versions/7", infer_body([{**tensor, "data": [0.0] * 784}]),
                                          None, 404),
        "an unknown model": ("nope", infer_body([{**tensor, "data": [0.0] * 784}]), None, 404),
        # Issue 24: numbers the decoder cannot hold, answers a request multiplies, echoed names.
        **{f"{value[:12]!r} as value 100": ("cnn", with_value(value), None, 400) for value in BAD_VALUES},
        "an output named twice": ("cnn", infer_body([{**tensor, "data": [0.0] * 784}],
                                                     [{"name": "probabilities"}] * 2), None, 400),
        "an output named 5,000 times": ("cnn", infer_body([{**tensor, "data": [0.0] * 784}],
                                                           [{"name": "probabilities"}] * 5000), None, 400),
        **{f"classification {count!r}": (
            "cnn", infer_body([zeros], [{"name": "probabilities", "parameters": {"classification": count}}]),
            None, 400) for count in (10**30, -1, True, "3")},
        "more JSON values than max_json_values": (
            "cnn", infer_body([{**tensor, "shape": [1400, 1, 28, 28], "data": [0] * (1400 * 784)}]), None,
            413),
        "an id that is half a surrogate pair": ("cnn", {"id": "\ud800", **infer_body([zeros])}, None, 400),
        "a 10,000-character input name": ("cnn", infer_body([{**zeros, "name": "n" * 10_000}]), None, 400),
        "a 10,000-character model name": ("m" * 10_000, infer_body([zeros]), None, 404),
        "two Authorization headers": (
            "cnn", infer_body([zeros]), [("Authorization", "Bearer a"), ("Authorization", "Bearer b")], 400),
    }
    positions = {f"{value[:12]!r} as value 100": "input 'input': value 100 (index [0, 0, 3, 16] of shape"
                 for value in BAD_VALUES}
    with httpx.Client(base_url=v2.url, timeout=60) as client:
        for what, (model, body, headers, status) in cases.items():
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            response = client.post(f"/v2/models/{model}/infer", content=content, headers=headers or {})
            assert response.status_code == status, (what, response.text)
            error = response.json()["error"]
            assert isinstance(error, str) and error and len(error) < 600, (what, error[:1000])
            assert positions.get(what, "") in error, (what, error)
            assert client.get("/healthz").status_code == 200, what
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/models/cnn/versions/7").status_code == 404
        assert "error" in client.get("/v2/models/nope").json()
    assert v2.http.is_server_ready()
    assert "Traceback" not in v2.server.tail(10_000_000)


def test_malformed_v1_tensors_get_a_4xx_naming_the_value_and_the_service_stays_up(v2: V2Server) -> None:
    """The friendly API's JSON tensors go through the same checks: 422 naming the instance and
    the nested position of the first bad value, 413 past the JSON values budget."""
    cases: dict[str, tuple[bytes, list | None, int, str]] = {
        **{f"{value[:12]!r} at [0][0][3][16]": (with_value(value, v1=True), None, 422,
                                                "instances[0][0][3][16] is ") for value in BAD_VALUES},
        "more JSON values than max_json_values": (
            json.dumps({"instances": [[[[0] * 28] * 28]] * 1400}).encode(), None, 413,
            "the limit is 1048576"),
        "two Authorization headers": (json.dumps({"instances": [[[[0] * 28] * 28]]}).encode(),
                                      [("Authorization", "Bearer a"), ("Authorization", "Bearer b")], 400,
                                      "2 Authorization headers"),
    }
    with httpx.Client(base_url=v2.url, timeout=60) as client:
        for what, (body, headers, status, said) in cases.items():
            response = client.post("/v1/models/cnn/predict", content=body,
                                   headers=[("content-type", "application/json"), *(headers or [])])
            assert response.status_code == status, (what, response.text[:1000])
            assert said in response.json()["error"]["message"], (what, response.text[:1000])
            assert client.get("/healthz").status_code == 200, what
    assert "Traceback" not in v2.server.tail(10_000_000)


def test_malformed_grpc_requests_get_the_matching_status(v2: V2Server) -> None:
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


def _grpc_request(field: str = "fp32_contents", values=(0.0,) * 784, datatype: str = "FP32",
                  name: str = "input", shape=(1, 1, 28, 28), model: str = "cnn") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return request


def test_hostile_grpc_requests_get_the_matching_status_and_a_short_message(v2: V2Server) -> None:
    """What tritonclient cannot send, as raw messages (issue 24): values in a contents field the
    datatype does not use, NaN at a position, an output named twice, a classification count
    that is no integer, a 1 MB model name, 100,000 BYTES elements, two authorization entries.
    Each gets its status with a message under 600 characters, and the service stays up."""
    nan = [0.0] * 784
    nan[100] = float("nan")
    both = _grpc_request()
    both.raw_input_contents.append(np.zeros((1, 1, 28, 28), np.float32).tobytes())
    twice = _grpc_request()
    twice.outputs.add(name="probabilities")
    twice.outputs.add(name="probabilities")
    as_text = _grpc_request()
    as_text.outputs.add(name="probabilities").parameters["classification"].string_param = "3"
    huge = _grpc_request()
    huge.outputs.add(name="probabilities").parameters["classification"].uint64_param = 2**64 - 1
    two_tokens = (("authorization", "Bearer a"), ("authorization", "Bearer b"))
    invalid, exhausted, missing = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   grpc.StatusCode.NOT_FOUND)
    cases = {
        "FP32 in int64_contents": (_grpc_request("int64_contents", [0] * 784), (), invalid,
                                   "FP32 values travel in fp32_contents"),
        "FP32 in bool_contents": (_grpc_request("bool_contents", [True] * 784), (), invalid,
                                  "FP32 values travel in fp32_contents"),
        "an image in fp32_contents": (_grpc_request("fp32_contents", [0.0], "BYTES", "image", [1, 1]), (),
                                      invalid, "BYTES values travel in bytes_contents"),
        "NaN at value 100": (_grpc_request(values=nan), (), invalid, "value 100 (index [0, 0, 3, 16] of"),
        "raw and typed contents at once": (both, (), invalid, "send them in one place"),
        "an output named twice": (twice, (), invalid, "requested more than once"),
        "classification as a string": (as_text, (), invalid, "must be an int64_param count"),
        "classification past int64": (huge, (), invalid, "classification must be a count from 1"),
        "a 1 MB model name": (_grpc_request(model="m" * 2**20), (), missing, "(1048576 characters)"),
        "100,000 BYTES elements": (_grpc_request("bytes_contents", [b"x"] * 100_000, "BYTES", "image",
                                                 [100_000, 1]), (), exhausted, "the limit is 64"),
        "two authorization entries": (_grpc_request(), two_tokens, invalid, "2 Authorization headers"),
    }
    with grpc.insecure_channel(v2.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for what, (request, metadata, code, said) in cases.items():
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(request, metadata=metadata, timeout=60)
            assert caught.value.code() == code, (what, caught.value.details())
            assert said in caught.value.details() and len(caught.value.details()) < 600, \
                (what, caught.value.details())
            assert httpx.get(f"{v2.url}/healthz", timeout=10).status_code == 200, what
        assert stub.ModelInfer(_grpc_request(), timeout=60).outputs[0].shape == [1, 10]
    assert "Traceback" not in v2.server.tail(10_000_000)


# --- perf_analyzer ------------------------------------------------------------------------------
def _perf_analyzer_works() -> bool:
    if not PERF_ANALYZER.exists():
        return False
    return subprocess.run([str(PERF_ANALYZER), "--version"], capture_output=True).returncode == 0


@pytest.mark.slow  # about 30 s of load on 2 cores
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


# --- repository control and protected information ------------------------------------------------
def test_repository_control_is_refused_by_default_on_both_protocols(v2: V2Server) -> None:
    """No admin key, no WALDO_MODEL_CONTROL: load, unload and reload answer 403 /
    PERMISSION_DENIED, naming the settings that turn them on, and nothing changes."""
    for path in ("/v2/repository/models/cnn/unload", "/v2/repository/models/cnn/load"):
        refused = httpx.post(f"{v2.url}{path}", timeout=10)
        assert refused.status_code == 403, refused.text
        assert "WALDO_ADMIN_KEY" in refused.json()["error"]
        assert "WALDO_MODEL_CONTROL=explicit" in refused.json()["error"]
    reload = httpx.post(f"{v2.url}/v1/models/cnn/reload", timeout=10)
    assert reload.status_code == 403 and reload.json()["error"]["code"] == "model_control_off"
    assert status_of(lambda: v2.http.unload_model("cnn")) == "403"
    assert status_of(lambda: v2.http.load_model("cnn")) == "403"
    for call in (lambda: v2.grpc.unload_model("cnn"), lambda: v2.grpc.load_model("cnn")):
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert str(caught.value.status()) == "StatusCode.PERMISSION_DENIED"
        assert "WALDO_MODEL_CONTROL=explicit" in caught.value.message()
    assert v2.grpc.is_model_ready("cnn") and v2.grpc.is_server_ready() and v2.http.is_server_ready()
