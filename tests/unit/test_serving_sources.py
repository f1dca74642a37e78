"""A model name that two sources hold (`waldo serve --models ./models cnn@production` where
./models holds cnn too): `waldo serve` refuses to start with one line naming the model and both
sources; a service started otherwise serves the first source and says so; a reload that meets a
new conflict keeps what it serves. Real ONNX models in real folders (a tiny network written with
onnx's helper), the app through FastAPI's TestClient; the registry is never contacted, since a
registry source whose name a folder already serves is not asked."""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from support import free_port

from serving.app import create_app
from serving.cli import add_arguments, build_settings
from serving.manager import source_conflicts
from serving.modelcard import CARD_FILE, CLASSIFY_OUTPUTS, MODEL_FILE, InputSpec, ModelCard
from serving.settings import Settings

LABELS = ["a", "b"]


def add_model(root: Path, name: str, version: str) -> Path:
    """`root/name/version/{model.onnx, modelcard.json}`: a classifier of 1x8x8 images (flatten,
    then a matrix to two logits) that ONNX Runtime loads and the smoke test passes."""
    folder = root / name / version
    folder.mkdir(parents=True)
    weights = numpy_helper.from_array(np.full((64, len(LABELS)), 0.01, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", len(LABELS)])],
        initializer=[weights])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              folder / MODEL_FILE)
    card = ModelCard(name=name, version=version, task="classify", labels=LABELS,
                     input=InputSpec(channels=1, height=8, width=8, mean=[0.0], std=[1.0]),
                     outputs=CLASSIFY_OUTPUTS)
    (folder / CARD_FILE).write_text(card.model_dump_json())
    return folder


def conflict_records(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR and f"model {name!r} comes from two sources" in r.getMessage()]


def test_waldo_serve_refuses_a_name_from_two_sources(waldo, tmp_path: Path) -> None:
    add_model(tmp_path / "models", "cnn", "1")
    result = waldo.run("serve", "--models", "./models", "cnn@production", "--port", str(free_port()),
                       cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for part in ("'cnn'", "'./models' (./models/cnn)", "'cnn@production'", "drop the other from --models"):
        assert part in lines[0], lines[0]


def test_conflicts_are_found_across_folders_and_registry_sources(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for name in ("cnn", "lenet5"):
        add_model(first, name, "1")
    add_model(second, "lenet5", "3")
    (second / "cnn" / "2").mkdir(parents=True)  # a version half written: not held yet
    (second / "cnn" / "2" / MODEL_FILE).write_bytes(b"")
    sources = [str(first), "cnn@production", str(second), "digits@production", str(first)]
    conflicts = source_conflicts(sources)
    assert sorted(conflicts) == ["cnn", "lenet5"], conflicts
    assert "'cnn@production'" in conflicts["cnn"] and str(second) not in conflicts["cnn"]
    assert f"{str(first)!r}" in conflicts["lenet5"] and f"{str(second)!r}" in conflicts["lenet5"]
    assert source_conflicts([str(first), "digits@production", str(first)]) == {}
    # Two registry sources of one name need no folder to clash; the CLI turns it into its error.
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(ValueError, match=r"model 'cnn' comes from two sources, the registry model "
                                         r"'cnn@production' and the registry model 'cnn/3'"):
        build_settings(parser.parse_args(["--models", "cnn@production", "cnn/3"]))


def test_a_service_started_with_a_conflict_serves_the_first_source_and_says_why(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    add_model(tmp_path / "models", "cnn", "1")
    add_model(tmp_path / "models", "lenet5", "1")
    settings = Settings(models=[str(tmp_path / "models"), "cnn@production"],
                        tracking_uri=(tmp_path / "no-registry").as_uri(), cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO, logger="waldo.serving"), TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        cnn = ready.json()["models"]["cnn"]
        assert cnn["version"] == "1" and "'cnn@production'" in cnn["error"], cnn
        assert ready.json()["models"]["lenet5"]["error"] is None
        assert client.get("/v1/models/cnn").json()["error"] == cnn["error"]
    (line,) = conflict_records(caplog, "cnn")
    assert str(tmp_path / "models") in line and "serving it from" in line, line
    assert not (tmp_path / "cache").exists()  # the registry source was never fetched


def test_a_reload_that_meets_a_new_conflict_keeps_the_served_version(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    add_model(first, "cnn", "1")
    add_model(second, "lenet5", "1")
    settings = Settings(models=[str(first), str(second)], model_control="explicit")
    with caplog.at_level(logging.INFO, logger="waldo.serving"), TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        add_model(first, "cnn", "2")
        add_model(second, "cnn", "1")  # now the second folder holds cnn too
        refused = client.post("/v1/models/cnn/reload")
        assert refused.status_code == 409, refused.text
        message = refused.json()["error"]["message"]
        assert "model 'cnn' comes from two sources" in message and "v1 is still served" in message
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text  # what works keeps working and stays ready
        assert ready.json()["models"]["cnn"]["version"] == "1"
        assert "comes from two sources" in ready.json()["models"]["cnn"]["error"]
        assert client.post("/v1/models/cnn/reload").status_code == 409
        (line,) = conflict_records(caplog, "cnn")  # logged once, not at every reload
        assert str(first) in line and str(second) in line and "v1 from" in line, line

        shutil.rmtree(second / "cnn")  # one source again: the reload goes through
        reloaded = client.post("/v1/models/cnn/reload")
        assert reloaded.status_code == 200 and reloaded.json()["version"] == "2", reloaded.text
        assert client.get("/readyz").json()["models"]["cnn"] == {"version": "2", "error": None}
