"""The service serving `NAME@ALIAS` from a real `mlflow server`: it downloads the alias's
version, and its background poll picks up the alias when an export moves it."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings
from training.export import export_run
from training.spec import TrainSpec
from training.train import train

pytestmark = pytest.mark.slow

NAME = "digits-served"


def test_serves_an_alias_and_follows_it_when_it_moves(in_tmp, mlflow_server, samples_png):
    run = train(TrainSpec(model="cnn", epochs=3, tracking_uri=mlflow_server, experiment="serving-registry",
                          progress_bar=False))
    first = export_run(run.run_id, name=NAME, alias="production", tracking_uri=mlflow_server,
                       output=in_tmp / "exports")
    settings = Settings(models=[f"{NAME}@production", f"{NAME}-next@production"], tracking_uri=mlflow_server,
                        cache_dir=str(in_tmp / "cache"), poll_interval_s=1)
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

        second = export_run(run.run_id, name=NAME, alias="production", tracking_uri=mlflow_server,
                            output=in_tmp / "exports")
        assert second.version == first.version + 1
        deadline = time.monotonic() + 60
        while client.get(f"/v1/models/{NAME}").json()["version"] != str(second.version):
            assert time.monotonic() < deadline, "the poll did not pick up the moved alias"
            time.sleep(0.5)
        answer = client.post(f"/v1/models/{NAME}/predict", files=[("file", ("d.png", image, "image/png"))])
        assert answer.json()["version"] == str(second.version)
        assert answer.json()["predictions"][0]["label"] == label
        # Registered later, the missing model is brought in by the poll: the service turns ready.
        export_run(run.run_id, name=f"{NAME}-next", alias="production", tracking_uri=mlflow_server,
                   output=in_tmp / "exports")
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline + 60, client.get("/readyz").json()
            time.sleep(0.5)


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
