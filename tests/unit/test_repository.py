"""serving.repository on local folders: the layout, newest versions, URIs. (That it imports no
torch or mlflow is in test_import_rules.py; a real registry, in tests/integration.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.modelcard import CARD_FILE, CLASSIFY_OUTPUTS, MODEL_FILE, InputSpec, ModelCard
from serving.repository import RepositoryError, parse_models_uri, resolve, scan


def add_version(root: Path, name: str, version: str, files=(MODEL_FILE, CARD_FILE)) -> Path:
    folder = root / name / version
    folder.mkdir(parents=True)
    card = ModelCard(name=name, version=version, task="classify", labels=["a", "b"],
                     input=InputSpec(channels=1, height=8, width=8, mean=[0.0], std=[1.0]),
                     outputs=CLASSIFY_OUTPUTS)
    for file in files:
        (folder / file).write_text(card.model_dump_json() if file == CARD_FILE else "onnx")
    return folder


def test_scan_takes_the_newest_complete_version_of_each_model(tmp_path):
    add_version(tmp_path, "cnn", "2")
    add_version(tmp_path, "cnn", "10")
    add_version(tmp_path, "cnn", "11", files=(MODEL_FILE,))  # half written: no card
    add_version(tmp_path, "lenet5", "1")
    (tmp_path / "cnn" / ".incoming-abc").mkdir()
    (tmp_path / "empty").mkdir()
    found = scan(tmp_path)
    assert sorted(found) == ["cnn", "lenet5"]
    assert found["cnn"].version == "10" and found["cnn"].path == tmp_path / "cnn" / "10"
    card = found["cnn"].card()
    assert card.name == "cnn" and card.version == "10"
    assert resolve(tmp_path) == found


def test_scan_errors(tmp_path):
    with pytest.raises(RepositoryError, match="is not a folder"):
        scan(tmp_path / "missing")
    folder = add_version(tmp_path, "cnn", "1")
    (folder / CARD_FILE).write_text(json.dumps({"name": "cnn"}))
    with pytest.raises(RepositoryError, match="not a valid model card"):
        scan(tmp_path)["cnn"].card()


@pytest.mark.parametrize("uri, parsed", [
    ("models:/cnn@production", ("cnn", "production", None)),
    ("models:/digits-cnn/12", ("digits-cnn", None, "12")),
])
def test_parse_models_uri(uri, parsed):
    assert parse_models_uri(uri) == parsed


@pytest.mark.parametrize("uri", ["models:/cnn", "models:/cnn@", "models:/cnn/latest",
                                 "runs:/abc/model", "models:/a/b@c"])
def test_malformed_models_uri(uri):
    with pytest.raises(RepositoryError, match="malformed model URI"):
        parse_models_uri(uri)


def test_a_models_uri_needs_a_cache():
    with pytest.raises(RepositoryError, match="cache"):
        resolve("models:/cnn@production")
