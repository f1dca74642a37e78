"""Repository control and access over the Open Inference Protocol, with Triton's released
clients against real `waldo serve --grpc-port` servers (each test starts its own, configured for
it): unload and load and what readiness says meanwhile, a broken version that never replaces the
served one, the bearer tokens of inference and repository control, and `WALDO_PROTECT_INFO`.
Each serves a copy of the tiny `cnn` of `tiny_repo` (support.tiny)."""

from __future__ import annotations

import base64
import json
import shutil

import httpx
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from support.tiny import sample_pngs
from support.v2 import image_input, infer_body, start_v2, status_of
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.servers


def test_unload_load_and_a_broken_version_that_never_replaces_the_served_one(tiny_repo, tmp_path) -> None:
    pngs = sample_pngs(1)
    repo = tmp_path / "models"
    shutil.copytree(tiny_repo[0] / "cnn", repo / "cnn")
    server = start_v2(repo, tmp_path / "server", env={"WALDO_MODEL_CONTROL": "explicit"})
    try:
        image = [image_input(tgrpc, pngs[:1])]
        server.grpc.unload_model("cnn")
        assert not server.http.is_model_ready("cnn")
        # The server was started to serve cnn: without it, it is not ready, on every probe.
        ready = httpx.get(f"{server.url}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["not_ready"] == ["cnn"], ready.text
        assert "unloaded" in ready.json()["models"]["cnn"]["error"]
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 400
        assert not server.grpc.is_server_ready() and not server.http.is_server_ready()
        assert status_of(lambda: server.grpc.infer("cnn", image)) == "StatusCode.UNAVAILABLE"
        response = httpx.post(f"{server.url}/v2/models/cnn/infer", timeout=60, json=infer_body(
            [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
              "data": [base64.b64encode(pngs[0]).decode()]}]))
        assert response.status_code == 503 and "unloaded" in response.json()["error"]
        assert server.http.get_model_repository_index()[0]["state"] == "UNAVAILABLE"
        server.http.load_model("cnn")
        assert server.grpc.is_model_ready("cnn", "1")
        assert server.grpc.is_server_ready() and server.http.is_server_ready()
        assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200

        broken = repo / "cnn" / "2"
        broken.mkdir()
        (broken / "model.onnx").write_bytes(b"not an onnx file")
        shutil.copy2(repo / "cnn" / "1" / "modelcard.json", broken / "modelcard.json")
        with pytest.raises(InferenceServerException) as caught:
            server.http.load_model("cnn")
        assert "does not load" in str(caught.value) and "v1 is still served" in str(caught.value)
        assert "models/cnn/2/model.onnx" in str(caught.value)  # named within its source folder,
        assert str(tmp_path) not in str(caught.value)  # not by where the server keeps it
        assert status_of(lambda: server.grpc.load_model("cnn")) == "StatusCode.INVALID_ARGUMENT"
        assert server.grpc.infer("cnn", image).get_response().model_version == "1"

        shutil.rmtree(broken)
        shutil.copytree(repo / "cnn" / "1", repo / "cnn" / "3")
        server.grpc.load_model("cnn")
        assert server.http.get_model_metadata("cnn")["versions"] == ["3"]
        assert status_of(lambda: server.grpc.load_model("nope")) == "StatusCode.NOT_FOUND"
    finally:
        server.stop()


def test_bearer_token_guards_infer_and_the_repository_on_both_protocols(tiny_repo, tmp_path) -> None:
    pngs = sample_pngs(1)
    repo = tmp_path / "models"
    shutil.copytree(tiny_repo[0] / "cnn", repo / "cnn")
    token, admin = "v2-token-0123456789", "v2-admin-0123456789"
    server = start_v2(repo, tmp_path / "server", env={"WALDO_API_KEY": token, "WALDO_ADMIN_KEY": admin})
    try:
        image = [image_input(tgrpc, pngs[:1])]
        assert status_of(lambda: server.grpc.infer("cnn", image)) == "StatusCode.UNAUTHENTICATED"
        wrong = {"authorization": "Bearer nope"}
        status = status_of(lambda: server.grpc.infer("cnn", image, headers=wrong))
        assert status == "StatusCode.PERMISSION_DENIED"
        # The admin key turns repository control on, for the admin key only.
        assert status_of(lambda: server.grpc.unload_model("cnn")) == "StatusCode.UNAUTHENTICATED"
        user = {"authorization": f"Bearer {token}"}
        assert status_of(lambda: server.grpc.unload_model("cnn", headers=user)) \
            == "StatusCode.PERMISSION_DENIED"
        assert status_of(lambda: server.http.unload_model("cnn", headers=user)) == "403"
        assert server.grpc.is_model_ready("cnn")  # metadata stays open, as on /v1
        server.grpc.load_model("cnn", headers={"authorization": f"Bearer {admin}"})
        server.http.load_model("cnn", headers={"authorization": f"Bearer {admin}"})
        with pytest.raises(InferenceServerException) as caught:
            server.http.infer("cnn", [image_input(thttp, pngs[:1])])
        assert "401" in str(caught.value.status())
        auth = {"authorization": f"Bearer {token}"}
        assert server.grpc.infer("cnn", image, headers=auth).as_numpy("probabilities").shape == (1, 10)
        assert server.http.infer("cnn", [image_input(thttp, pngs[:1])], headers=auth) \
            .as_numpy("probabilities").shape == (1, 10)
    finally:
        server.stop()


def test_protect_info_puts_metadata_behind_the_key_on_both_protocols(tiny_repo, tmp_path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(tiny_repo[0] / "cnn", repo / "cnn")
    token, admin = "info-token-0123456789", "info-admin-0123456789"
    server = start_v2(repo, tmp_path / "server", env={"WALDO_API_KEY": token, "WALDO_ADMIN_KEY": admin,
                                                      "WALDO_PROTECT_INFO": "true"})
    user, boss = {"authorization": f"Bearer {token}"}, {"authorization": f"Bearer {admin}"}
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for method, path in (("GET", "/metrics"), ("GET", "/v1/models"), ("GET", "/v1/models/cnn"),
                                 ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/redoc"),
                                 ("GET", "/v2"), ("GET", "/v2/models/cnn"), ("GET", "/v2/models/cnn/config"),
                                 ("GET", "/v2/models/cnn/stats"), ("POST", "/v2/repository/index")):
                assert client.request(method, path).status_code == 401, path
                assert client.request(method, path, headers=user).status_code == 200, path
            for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready",
                         "/v2/models/cnn/ready"):
                assert client.get(path).status_code == 200, path  # probes stay open
            # Without the admin key, a folder source is named, not located.
            listed = client.get("/v1/models", headers=user).json()["models"]
            assert [m["source"] for m in listed] == ["models"] and str(tmp_path) not in json.dumps(listed)
            assert client.get("/v1/models/cnn", headers=boss).json()["source"] == str(repo)

        assert status_of(lambda: server.http.get_server_metadata()) == "401"
        assert server.http.get_model_metadata("cnn", headers=user)["name"] == "cnn"
        calls = {
            "ServerMetadata": lambda **kw: server.grpc.get_server_metadata(**kw),
            "ModelMetadata": lambda **kw: server.grpc.get_model_metadata("cnn", **kw),
            "ModelConfig": lambda **kw: server.grpc.get_model_config("cnn", **kw),
            "ModelStatistics": lambda **kw: server.grpc.get_inference_statistics("cnn", **kw),
            "RepositoryIndex": lambda **kw: server.grpc.get_model_repository_index(**kw),
        }
        for name, call in calls.items():
            assert status_of(call) == "StatusCode.UNAUTHENTICATED", name
            assert status_of(lambda call=call: call(headers={"authorization": "Bearer nope"})) \
                == "StatusCode.PERMISSION_DENIED", name
            assert call(headers=user) is not None and call(headers=boss) is not None, name
        assert server.grpc.is_server_live() and server.grpc.is_server_ready()
        assert server.grpc.is_model_ready("cnn")
    finally:
        server.stop()
