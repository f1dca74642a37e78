"""The service's explanations (`POST /v1/models/{name}/explain`, v2 requests for the extra
outputs) on a real `waldo serve --grpc-port` over HTTP and gRPC with the released tritonclient:

- `resnet18` (seeded, untrained, 96 px) exported with its explain outputs: its head pools
  globally, so the service answers with CAM, which must agree with torch's Grad-CAM (Captum);
- the suite's small trained digits cnn (`tracked_cnn`) exported by `export_run`: a dense head,
  so the service occludes, and the map must point at the strokes.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from support.v2 import V2Server, start_v2

pytestmark = pytest.mark.servers

RESNET_SIZE = 96  # the last stage is 3x3: a map with something to compare


def resnet_version(root: Path) -> torch.nn.Module:
    """A seeded resnet18 written as `resnet/1` with its explain outputs, as `waldo export` writes
    them (the export's own steps); returns the network."""
    from serving.modelcard import InputSpec, ModelCard
    from training.export.card import card_outputs
    from training.export.explain import attach_constants, explain_graph
    from training.export.layout import write_version
    from training.export.parity import export_checked
    from training.models import create_model

    torch.manual_seed(3)
    net = create_model("resnet18", num_classes=10, in_channels=3, image_size=RESNET_SIZE).eval()
    shape = (3, RESNET_SIZE, RESNET_SIZE)
    graph = explain_graph(net, shape)
    exported = export_checked(graph.net, shape, output_names=["logits", *graph.outputs])
    model = attach_constants(exported.model, graph.constants)

    def card(version: int) -> ModelCard:
        return ModelCard(name="resnet", version=str(version), task="classify",
                         labels=[f"class{k}" for k in range(10)], architecture="resnet18",
                         input=InputSpec(channels=3, height=RESNET_SIZE, width=RESNET_SIZE,
                                         mean=[0.5] * 3, std=[0.25] * 3),
                         outputs=card_outputs("classify"), explain=graph.spec)

    write_version(model, card, output=root, name="resnet", version=1)
    return net


@pytest.fixture(scope="module")
def explained(tracked_cnn, tmp_path_factory) -> Iterator[tuple[V2Server, torch.nn.Module]]:
    """`waldo serve --grpc-port` on `resnet/1` and the trained digits cnn as `digits/1`, with
    a budget of 26 forward passes per explanation (a 5 x 5 occlusion grid)."""
    from training.export import export_run
    from training.spec import ExportSpec

    root = tmp_path_factory.mktemp("explain") / "models"
    net = resnet_version(root)
    export_run(ExportSpec(run=tracked_cnn.run_id, name="digits", output=str(root),
                          tracking_uri=tracked_cnn.result.tracking_uri))
    server = start_v2(root, tmp_path_factory.mktemp("explain-server"),
                      env={"WALDO_EXPLAIN_PASSES": "26", "WALDO_MAX_IMAGE_PIXELS": str(1024 * 1024)})
    try:
        yield server, net
    finally:
        server.stop()


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def explain(url: str, model: str, files=None, json=None, **params) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/{model}/explain", params=params, files=files, json=json,
                      timeout=60)


def inference_count(url: str, model: str) -> int:
    stats = httpx.get(f"{url}/v2/models/{model}/stats", timeout=10).json()
    return stats["model_stats"][0]["inference_count"]


def test_the_services_cam_equals_torchs_grad_cam_on_a_globally_pooled_model(explained):
    """Grad-CAM (Captum's LayerGradCam at the last stage, on the same normalized input) and the
    service's CAM (one ONNX Runtime run, numpy) correlate at 0.9 or more for the top class and
    two others: for a head that averages and then is linear they are the same map, so anything
    lower means the export took the wrong stage, weights or class."""
    from captum.attr import LayerGradCam

    server, net = explained
    x = np.random.default_rng(0).standard_normal((1, 3, RESNET_SIZE, RESNET_SIZE)).astype(np.float32)
    compared = 0
    for target in ("", "#0", "#7"):
        r = explain(server.url, "resnet", json={"instances": x.tolist()}, target=target)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["method"] == "cam" and body["cost"]["forward_passes"] == 1
        service = np.asarray(body["heatmap"]["values"])
        k = body["target"]["index"]
        torch_map = LayerGradCam(net, net.layer4).attribute(torch.from_numpy(x), target=k,
                                                            relu_attributions=True)
        torch_map = torch_map.detach()[0, 0].numpy()
        assert service.shape == torch_map.shape == (3, 3)
        if torch_map.max() <= 0:  # no positive evidence for this class: nothing to correlate
            assert service.max() == 0
            continue
        compared += 1
        r_value = np.corrcoef(service.ravel(), torch_map.ravel())[0, 1]
        assert r_value >= 0.9, (target, r_value, service.round(3), torch_map.round(4))
    assert compared >= 2
    stages = body["stages"]
    assert [s["name"] for s in stages] == [f"stage_{n}" for n in range(1, 6)]
    assert stages[-1]["shape"] == [512, 3, 3] and body["filters"]["shape"] == [64, 3, 7, 7]


def test_occlusion_on_the_trained_cnn_points_at_the_strokes_and_counts_its_passes(
        explained, digits):
    """The cnn's head is dense, so the service occludes (5 x 5 places, 26 passes, each counted
    as an inference). Over 10 held-out digits, the map for the answer is brighter on the strokes
    than off them: median ratio of its mean on stroke pixels to its mean elsewhere above 1.2
    (a map that ignored the image gives about 1)."""
    from serving import pictures

    server, _ = explained
    before = inference_count(server.url, "digits")
    shares = []
    for _, image in digits[::2]:
        r = explain(server.url, "digits", files={"file": ("d.png", image, "image/png")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["method"] == "occlusion" and body["cost"]["forward_passes"] == 26
        assert body["prediction"]["label"] == body["target"]["label"]
        heat = np.asarray(body["heatmap"]["values"])
        strokes = np.asarray(Image.open(io.BytesIO(image)), dtype=np.float32) / 255 > 0.5
        shares.append(pictures.peak_share(heat, strokes))
        for part in ("input", "heatmap", "filters", "first_layer", *body["stages"]):
            blob = (body[part] if isinstance(part, str) else part)["png"]
            with Image.open(io.BytesIO(base64.b64decode(blob))) as picture:
                assert min(picture.size) >= 28 and np.asarray(picture.convert("L")).std() > 5
    assert np.median(shares) > 1.2, np.round(shares, 2)
    assert inference_count(server.url, "digits") - before == 26 * len(shares)
    arrays = explain(server.url, "digits", files={"file": ("d.png", digits[0][1], "image/png")},
                     stage="stage_2", arrays="true").json()
    (stage,) = arrays["stages"]
    assert np.asarray(stage["values"]).shape == tuple(stage["shape"]) == (16, 10, 10)


def test_v2_requests_can_ask_for_the_extra_outputs(explained):
    """Over HTTP and gRPC, tritonclient names `stage_2` and `cam_weight` beside the
    probabilities; the metadata lists them; an unknown output is refused."""
    import tritonclient.grpc as tgrpc
    import tritonclient.http as thttp
    from tritonclient.utils import InferenceServerException

    server, _ = explained
    meta = server.http.get_model_metadata("resnet")
    shapes = {o["name"]: o["shape"] for o in meta["outputs"]}
    assert shapes["stage_2"] == [-1, 64, 24, 24] and shapes["cam_weight"] == [10, 512]
    x = np.random.default_rng(1).standard_normal((2, 3, RESNET_SIZE, RESNET_SIZE)).astype(np.float32)
    for client, lib in ((server.http, thttp), (server.grpc, tgrpc)):
        tensor = lib.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        wanted = [lib.InferRequestedOutput(n) for n in ("probabilities", "stage_2", "cam_weight")]
        result = client.infer("resnet", [tensor], outputs=wanted)
        assert result.as_numpy("probabilities").shape == (2, 10)
        assert result.as_numpy("stage_2").shape == (2, 64, 24, 24)
        assert result.as_numpy("cam_weight").shape == (10, 512)
        with pytest.raises(InferenceServerException, match="stage_9"):
            client.infer("resnet", [tensor], outputs=[lib.InferRequestedOutput("stage_9")])


def test_bad_explain_requests_are_4xx_and_the_service_stays_up(explained, digits):
    server, _ = explained
    image = digits[0][1]
    one = {"file": ("d.png", image, "image/png")}
    big = png(np.zeros((1100, 1000), dtype=np.uint8))  # over the 1 Mpx set for this server
    cases = [
        (dict(files=one, target="eleven"), 422, "eleven"),
        (dict(files=one, target="#10"), 422, "#10"),
        (dict(files=one, stage="stage_7"), 422, "stage_7"),
        (dict(files={"file": ("big.png", big, "image/png")}), 413, "big.png"),
        (dict(files=[("file", ("a.png", image, "image/png"))] * 2), 422, "one image"),
        (dict(json={"instances": np.zeros((2, 1, 28, 28)).tolist()}), 422, "one image"),
        (dict(json={"instances": [[1, 2]]}), 422, "instance"),
    ]
    for kwargs, status, named in cases:
        r = explain(server.url, "digits", **kwargs)
        assert r.status_code == status, (kwargs.get("params"), r.status_code, r.text)
        error = r.json()["error"]
        assert named in error["message"], error
    r = httpx.post(f"{server.url}/v1/models/digits/explain", content=b"x",
                   headers={"content-type": "text/plain"}, timeout=10)
    assert r.status_code == 415
    r = httpx.post(f"{server.url}/v1/models/nope/explain", files=one, timeout=10)
    assert r.status_code == 404
    r = httpx.post(f"{server.url}/v1/models/digits/predict", files=one, timeout=30)
    assert r.status_code == 200 and r.json()["predictions"][0]["label"]
