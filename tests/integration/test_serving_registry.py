"""The service serving `NAME@ALIAS` from a real `mlflow server`: it downloads the alias's
version, and its background poll picks up the alias when an export moves it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from support import wait_until

from serving.app import create_app
from serving.settings import Settings
from training.export import export_run
from training.spec import ExportSpec

pytestmark = pytest.mark.trains

NAME = "digits-served"


def test_serves_an_alias_and_follows_it_when_it_moves(in_tmp, mlflow_server, tracked_cnn, samples_png):
    def export(name: str):
        return export_run(ExportSpec(run=tracked_cnn.run_id, name=name, alias="production",
                                     tracking_uri=mlflow_server, output=str(in_tmp / "exports")))

    first = export(NAME)
    settings = Settings(models=[f"{NAME}@production", f"{NAME}-next@production"], tracking_uri=mlflow_server,
                        cache_dir=str(in_tmp / "cache"), poll_interval_s=1, model_control="explicit")
    with TestClient(create_app(settings)) as client:
        model = client.get(f"/v1/models/{NAME}").json()
        assert model["version"] == str(first.version) and model["source"] == f"{NAME}@production"
        assert (in_tmp / "cache" / NAME / str(first.version) / "model.onnx").is_file()
        # The second source names a model that is not registered (yet): not ready, and it says why.
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert f"unknown model '{NAME}-next'" in ready.json()["models"][f"{NAME}-next"]["error"]
        missing = client.post(f"/v1/models/{NAME}-next/predict",
                              files=[("file", ("d.png", b"x", "image/png"))])
        assert missing.status_code == 503 and missing.json()["error"]["code"] == "not_loaded"

        image, label = samples_png
        answer = client.post(f"/v1/models/{NAME}/predict", files=[("file", ("d.png", image, "image/png"))])
        assert answer.status_code == 200 and answer.json()["version"] == str(first.version)
        assert client.post(f"/v1/models/{NAME}/reload").json()["changed"] is False

        second = export(NAME)
        assert second.version == first.version + 1
        wait_until(lambda: client.get(f"/v1/models/{NAME}").json()["version"] == str(second.version),
                   what="the poll picks up the moved alias", timeout=60, interval=0.5,
                   detail=lambda: client.get(f"/v1/models/{NAME}").json())
        answer = client.post(f"/v1/models/{NAME}/predict", files=[("file", ("d.png", image, "image/png"))])
        assert answer.json()["version"] == str(second.version)
        assert answer.json()["predictions"][0]["label"] == label
        # Registered later, the missing model is brought in by the poll: the service turns ready.
        export(f"{NAME}-next")
        wait_until(lambda: client.get("/readyz").status_code == 200, what="the poll brings the "
                   "newly registered model in", timeout=60, interval=0.5,
                   detail=lambda: client.get("/readyz").json())


@pytest.fixture
def samples_png():
    import io

    from PIL import Image

    from training.data.digits import DigitsDataModule

    dm = DigitsDataModule()
    dm.setup("test")
    x, y = dm.test_set[0]
    buf = io.BytesIO()
    Image.fromarray(x[0].numpy()).save(buf, "PNG")
    return buf.getvalue(), str(int(y))
