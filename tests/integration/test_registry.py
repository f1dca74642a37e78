"""Export, register and download against a real `mlflow server` on 127.0.0.1.

`waldo train --publish --alias production` (`training.running.pipeline.run`) registers a version
linked to its run; `waldo export --run ... --alias production` registers a new version and
moves the alias through the promotion gate; serving's repository downloads `models:/cnn@production` into
`<cache>/<name>/<version>/`; and plain onnxruntime + numpy (no torch in the process) predicts
the same classes as torch, with preprocessing taken only from the ModelCard.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from support import BIN, PUBLISHED_CNN, REPO_ROOT, TrainedRun, clean_env

from serving.modelcard import CARD_FILE, MODEL_FILE, ONNX_METADATA_KEY, ModelCard
from serving.repository import RepositoryError, fetch
from training.commands.predict import predict
from training.data import create_datamodule
from waldo.cli import main

NAME, ALIAS = PUBLISHED_CNN["model"], PUBLISHED_CNN["alias"]

# Serving's side, run as its own process: the repository, the card and onnxruntime only.
PLAIN_ORT = r"""
import json, sys
import numpy as np
import onnxruntime as ort
from PIL import Image
from serving.modelcard import ONNX_METADATA_KEY
from serving.processing import postprocess, preprocess
from serving.repository import fetch

uri, cache, tracking_uri, *images = sys.argv[1:]
version = fetch(uri, cache, tracking_uri=tracking_uri)
card = version.card()
session = ort.InferenceSession(str(version.model_path), providers=["CPUExecutionProvider"])
arrays, sizes = [], []
for name in images:
    with Image.open(name) as image:
        sizes.append(image.size)
        arrays.append(preprocess(card, image))
# the prediction is the card's output; the file's other outputs explain it (ModelCard.explain)
(out,) = session.run([card.outputs[0].name], {session.get_inputs()[0].name: np.stack(arrays)})
results = postprocess(card, out, sizes)
loaded = {m.split(".")[0] for m in sys.modules}
print(json.dumps({
    "version": version.version,
    "path": str(version.path),
    "results": [{"label": r["label"], "probability": r["probability"]} for r in results],
    "heavy": sorted(loaded & {"torch", "torchvision", "pytorch_lightning", "lightning",
                              "training", "ray"}),
    "metadata_card": json.loads(session.get_modelmeta().custom_metadata_map[ONNX_METADATA_KEY]),
}))
"""


@pytest.fixture(scope="module")
def trained(trained_run, mlflow_server) -> TrainedRun:
    """`waldo train --model cnn --epochs 3 --publish --alias production`: train, then export
    the run's best checkpoint and register it."""
    return trained_run(**PUBLISHED_CNN, tracking_uri=mlflow_server)


@pytest.fixture(scope="module")
def images(trained, tmp_path_factory) -> list[str]:
    """Test digits as PNG files: 28x28 grey as the data set has them, and a few enlarged to
    RGB 50x50, so that preprocessing converts and resizes."""
    folder = tmp_path_factory.mktemp("registry-images")
    dm = create_datamodule(trained.spec.data_spec())
    dm.setup("fit")
    paths = []
    for i in range(24):
        pixels = dm.test_set[i][0][0].numpy()  # (28, 28) uint8
        image = Image.fromarray(pixels)
        if i % 4 == 3:
            image = image.convert("RGB").resize((50, 50), Image.Resampling.NEAREST)
        path = folder / f"digit{i:02d}.png"
        image.save(path)
        paths.append(str(path))
    return paths


def test_train_export_registers_a_version_linked_to_its_run(mlflow_server, trained, tmp_path):
    result, work = trained.result, trained.folder
    exported = result.export
    assert exported is not None and exported.model_uri == f"models:/{NAME}/{exported.version}"
    client = MlflowClient(mlflow_server)
    mv = client.get_model_version_by_alias(NAME, ALIAS)
    assert int(mv.version) == exported.version
    assert mv.run_id == result.run_id
    # Over REST a ModelVersion does not carry model_id; its source names the LoggedModel.
    assert mv.source.startswith("models:/m-")
    logged = client.get_logged_model(mv.source.removeprefix("models:/"))
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [
        {"name": NAME, "version": exported.version}]
    assert logged.source_run_id == result.run_id and str(logged.status) == "READY"
    outputs = client.get_run(result.run_id).outputs
    assert logged.model_id in [o.model_id for o in outputs.model_outputs]

    # The registered artifacts are exactly the two files, at the root of models:/NAME@ALIAS, as
    # MLflow's own CLI downloads them in a fresh process (in this one, MLflow resolves a models:/
    # URI through the process-wide tracking URI that earlier in-process runs leave behind).
    dst = tmp_path / "downloaded"
    downloaded = subprocess.run(
        [str(BIN / "mlflow"), "artifacts", "download", "--artifact-uri",
         f"models:/{NAME}@{ALIAS}", "--dst-path", str(dst)],
        env=clean_env(MLFLOW_TRACKING_URI=mlflow_server), capture_output=True, text=True, timeout=300)
    assert downloaded.returncode == 0, downloaded.stderr[-2000:]
    local = Path(downloaded.stdout.strip().splitlines()[-1])
    assert {p.name for p in local.iterdir()} == {CARD_FILE, MODEL_FILE}
    # A published version is written only to the registry, not into ./models.
    assert exported.path is None and not (work / "models").exists()
    embedded = {p.key: p.value for p in onnx.load(local / MODEL_FILE).metadata_props}
    assert json.loads(embedded[ONNX_METADATA_KEY]) == json.loads((local / CARD_FILE).read_text())
    card = ModelCard.model_validate_json((local / CARD_FILE).read_text())
    assert card.version == str(exported.version) and card.source_run == result.run_id
    assert card.metrics["test_acc"] == pytest.approx(result.metrics["test_acc"])


def test_export_again_moves_the_alias(mlflow_server, trained, tmp_path, capsys):
    result = trained.result
    client = MlflowClient(mlflow_server)
    before = int(client.get_model_version_by_alias(NAME, ALIAS).version)
    code = main(["export", "--run", result.run_id, "--publish", "--alias", ALIAS,
                 "--tracking-uri", mlflow_server, "--output", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    after = client.get_model_version_by_alias(NAME, ALIAS)
    assert int(after.version) == before + 1 and after.run_id == result.run_id
    assert client.get_model_version(NAME, str(before)).run_id == result.run_id  # kept
    assert f"alias '{ALIAS}' -> version {before + 1}" in out and "verdict: passed" in out
    assert not any(tmp_path.iterdir())  # published: in the registry only


def test_plain_onnxruntime_predicts_what_torch_predicts(mlflow_server, trained, images,
                                                        tmp_path):
    result = trained.result
    cache = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN_ORT, f"models:/{NAME}@{ALIAS}", str(cache), mlflow_server,
         *images], capture_output=True, text=True, timeout=180, cwd=REPO_ROOT, env=clean_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    assert served["heavy"] == [], f"serving loaded {served['heavy']}"

    version = MlflowClient(mlflow_server).get_model_version_by_alias(NAME, ALIAS).version
    folder = cache / NAME / str(version)
    assert served["version"] == str(version) and Path(served["path"]) == folder
    assert {p.name for p in folder.iterdir()} == {CARD_FILE, MODEL_FILE}
    assert sorted(p.name for p in (cache / NAME).iterdir()) == [str(version)]
    assert served["metadata_card"] == json.loads((folder / CARD_FILE).read_text())

    expected = predict(result.best_checkpoint, images)
    assert [r["label"] for r in served["results"]] == [r["label"] for r in expected]
    np.testing.assert_allclose([r["probability"] for r in served["results"]],
                               [r["probability"] for r in expected], atol=1e-4)
    dm = create_datamodule(trained.spec.data_spec())
    dm.setup("fit")
    truth = [str(int(dm.test_set[i][1])) for i in range(len(images))]
    accuracy = np.mean([r["label"] == t for r, t in zip(served["results"], truth, strict=True)])
    assert accuracy > 0.7  # a trained network, not noise


def test_a_cached_version_is_reused(mlflow_server, trained, tmp_path):
    first = fetch(f"models:/{NAME}@{ALIAS}", tmp_path, tracking_uri=mlflow_server)
    (first.path / "marker").write_text("kept")
    again = fetch(f"models:/{NAME}/{first.version}", tmp_path, tracking_uri=mlflow_server)
    assert again.path == first.path and (again.path / "marker").exists()


def test_unknown_alias_or_model_is_a_clear_error(mlflow_server, trained, tmp_path):
    with pytest.raises(RepositoryError, match=r"no alias 'nope'.*production"):
        fetch(f"models:/{NAME}@nope", tmp_path, tracking_uri=mlflow_server)
    with pytest.raises(RepositoryError, match=r"unknown model 'no-such-model'"):
        fetch("models:/no-such-model@production", tmp_path, tracking_uri=mlflow_server)
    with pytest.raises(RepositoryError, match=r"malformed model URI"):
        fetch("models:/cnn", tmp_path, tracking_uri=mlflow_server)
    assert not any(tmp_path.iterdir())


def test_failed_exports_register_nothing(mlflow_server, trained, tmp_path, capsys):
    result = trained.result
    client = MlflowClient(mlflow_server)
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{NAME}'"))
    empty = client.create_run(client.get_run(result.run_id).info.experiment_id).info.run_id
    client.set_terminated(empty)
    alias_before = client.get_model_version_by_alias(NAME, ALIAS).version
    for argv, expected in [
        (["--run", empty, "--alias", ALIAS], "no checkpoint"),
        (["--run", "f" * 32, "--alias", ALIAS], "unknown run"),
        (["--run", result.run_id, "--alias", "Latest"], "reserved"),
    ]:
        code = main(["export", *argv, "--tracking-uri", mlflow_server, "--output", str(tmp_path)])
        err = capsys.readouterr().err
        assert code == 2 and expected in err and "Traceback" not in err, err
    after = sorted(int(v.version) for v in client.search_model_versions(f"name='{NAME}'"))
    assert after == versions
    assert client.get_model_version_by_alias(NAME, ALIAS).version == alias_before
    assert not any(tmp_path.iterdir())
