"""The promotion gate against a real `mlflow server` on 127.0.0.1: `waldo promote`, and
`waldo export --publish --alias`, which goes through it.

The good model is the session's `tracked_cnn` (digits, exported under the name `promo`); the
poor one is the tiny ONNX classifier of support.tiny (it sees only an image's brightness), with
a card that matches the digits network's labels and input, published as another version of the
same name in a fraction of a second. Both are judged on the run's test split through ONNX
Runtime. The tests share one registered model and run in file order: each says which versions
and aliases it expects.
"""

from __future__ import annotations

import contextlib
import io
import json

import onnx
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from support import TrainedRun, error_line, tiny, waldo_main

from serving.modelcard import MODEL_FILE, ONNX_METADATA_KEY
from serving.registry.client import version_card
from serving.registry.moves import history
from serving.repository import fetch
from training.export import publish as publishing
from training.export.layout import write_version
from training.promotion.record import EVALUATION_RUN_TAG, EXPERIMENT
from waldo.cli import main

NAME = "promo"


def publish_tiny(server: str, run_id: str, model: onnx.ModelProto | None = None,
                 **card_fields) -> int:
    """Publish the tiny classifier (or `model`) as the next version of NAME, its card naming
    the digits run as its source (so the run's test split judges it) and `card_fields`."""
    model = model or tiny.classifier()

    def write(version, folder):
        def card_for(number):
            card = tiny.card(tiny.CLASSIFIER, number)
            return card.model_copy(update={"name": NAME, "source_run": run_id, **card_fields})

        return write_version(model, card_for, output=folder, name=NAME, version=version)[0]

    return publishing.publish(server, name=NAME, run_id=run_id, write=write)


def promote(capsys, server: str, *argv: str) -> tuple[int, str, str]:
    return waldo_main(capsys, "promote", NAME, *argv, "--tracking-uri", server)


def alias_of(client: MlflowClient, alias: str) -> str | None:
    return client.get_registered_model(NAME).aliases.get(alias)


def evaluation(client: MlflowClient, run_id: str):
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    return run


@pytest.fixture(scope="module")
def registry(tracked_cnn: TrainedRun, mlflow_server, tmp_path_factory) -> dict:
    """`waldo export --run RUN --name promo --alias production` (version 1, the first holder,
    promoted through the gate), then the tiny classifier published as version 2."""
    out = tmp_path_factory.mktemp("promo-out")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["export", "--run", tracked_cnn.run_id, "--name", NAME, "--alias",
                     "production", "--tracking-uri", mlflow_server, "--output", str(out)])
    poor = publish_tiny(mlflow_server, tracked_cnn.run_id)
    return {"code": code, "out": stdout.getvalue() + stderr.getvalue(), "output": out, "good": "1",
            "poor": str(poor), "run_id": tracked_cnn.run_id}


def test_export_with_an_alias_goes_through_the_gate(registry, mlflow_server):
    client = MlflowClient(mlflow_server)
    assert registry["code"] == 0, registry["out"]
    assert "(no holder yet)" in registry["out"] and "verdict: passed" in registry["out"]
    assert alias_of(client, "production") == registry["good"] and registry["poor"] == "2"
    # Published versions live in the registry only: nothing under --output.
    assert not any(registry["output"].iterdir())
    (move,) = [m for m in history(client, NAME, "production")]
    assert (move.action, move.from_version, move.to_version) == ("promote", None, "1")
    run = evaluation(client, move.evaluation_run)
    assert run.data.tags["waldo.verdict"] == "passed"
    assert client.get_model_version(NAME, "1").tags[EVALUATION_RUN_TAG] == move.evaluation_run


def test_a_first_promotion_is_judged_on_absolute_thresholds(registry, mlflow_server, capsys):
    client = MlflowClient(mlflow_server)
    code, out, _ = promote(capsys, mlflow_server, registry["poor"], "--alias", "staging",
                           "--min-accuracy", "0.5")
    assert code == 1 and "verdict: refused" in out and "acc threshold = 0.5" in out, out
    assert alias_of(client, "staging") is None
    code, out, err = promote(capsys, mlflow_server, registry["good"], "--alias", "staging",
                             "--min-accuracy", "0.5")
    assert code == 0 and "verdict: passed" in out, out + err
    assert alias_of(client, "staging") == registry["good"]


def test_a_worse_candidate_is_refused_with_the_evidence(registry, mlflow_server, capsys):
    client = MlflowClient(mlflow_server)
    moves_before = history(client, NAME, "production")
    code, out, err = promote(capsys, mlflow_server, registry["poor"])
    assert code == 1, out + err
    assert "verdict: refused" in out and "alias 'production' unchanged (version 1)" in out
    assert alias_of(client, "production") == registry["good"]
    assert history(client, NAME, "production") == moves_before
    run_id = client.get_model_version(NAME, registry["poor"]).tags[EVALUATION_RUN_TAG]
    run = evaluation(client, run_id)
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["waldo.verdict"] == "refused" and "acc_delta" in tags["waldo.verdict_reason"]
    assert (tags["waldo.candidate_version"], tags["waldo.holder_version"]) == ("2", "1")
    assert metrics["candidate_acc"] < metrics["holder_acc"]
    assert metrics["candidate_acc_delta"] == pytest.approx(metrics["candidate_acc"]
                                                           - metrics["holder_acc"])
    assert {"candidate_latency_ms", "holder_latency_ms", "holder_class_acc/7"} <= set(metrics)
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"confusion.json", "confusion_candidate.png", "confusion_holder.png"} <= artifacts
    confusion = json.loads(open(client.download_artifacts(run_id, "confusion.json")).read())
    assert len(confusion["candidate_v2"]) == 10 == len(confusion["labels"])
    # Both versions' LoggedModels are the run's inputs.
    sources = {client.get_model_version(NAME, v).source.removeprefix("models:/")
               for v in ("1", "2")}
    assert {m.model_id for m in run.inputs.model_inputs} == sources


def test_force_is_recorded_and_a_better_candidate_moves_the_alias(registry, mlflow_server,
                                                                  capsys):
    client = MlflowClient(mlflow_server)
    code, _, err = promote(capsys, mlflow_server, registry["poor"], "--force")
    assert code == 2 and "reason" in error_line(err, "promote")
    code, out, err = promote(capsys, mlflow_server, registry["poor"], "--force", "--reason",
                             "drill: serve the tiny one")
    assert code == 0 and "verdict: forced" in out, out + err
    assert alias_of(client, "production") == registry["poor"]
    forced = history(client, NAME, "production")[-1]
    assert (forced.action, forced.from_version, forced.to_version) == ("force", "1", "2")
    assert forced.reason == "drill: serve the tiny one" and forced.by
    assert evaluation(client, forced.evaluation_run).data.tags["waldo.verdict"] == "forced"

    code, out, err = promote(capsys, mlflow_server, registry["good"])
    assert code == 0 and "verdict: passed" in out, out + err
    assert alias_of(client, "production") == registry["good"]
    moved = history(client, NAME, "production")[-1]
    assert (moved.action, moved.from_version, moved.to_version) == ("promote", "2", "1")
    run = evaluation(client, moved.evaluation_run)
    assert run.data.tags["waldo.verdict"] == "passed"
    assert run.data.metrics["candidate_acc"] > run.data.metrics["holder_acc"]


def test_a_promote_job_reports_its_verdict(registry, mlflow_server):
    """The jobs API's `promote` kind, as its Ray job runs it (training.jobrunner)."""
    from training.running.jobrunner import run_job

    outcome = run_job("promote", {"name": NAME, "version": int(registry["poor"]),
                                  "tracking_uri": mlflow_server})
    assert (outcome["verdict"], outcome["alias"], outcome["holder_version"]) == (
        "refused", None, registry["good"])
    run = evaluation(MlflowClient(mlflow_server), outcome["evaluation_run"])
    assert run.data.tags["waldo.verdict"] == "refused"


def test_an_incompatible_candidate_is_refused_in_one_line(registry, mlflow_server, capsys):
    client = MlflowClient(mlflow_server)
    other_labels = publish_tiny(mlflow_server, registry["run_id"],
                                labels=[f"c{k}" for k in range(10)])
    localizer = tiny.card(tiny.LOCALIZER, 1)
    other_task = publish_tiny(mlflow_server, registry["run_id"], tiny.localizer(),
                              task="localize", outputs=localizer.outputs, input=localizer.input)
    for version, expected in [(other_labels, "labels differ"),
                              (other_task, "task 'localize' differs")]:
        code, out, err = promote(capsys, mlflow_server, str(version))
        line = error_line(err, "promote")
        assert code == 2 and expected in line and f"version {version}" in line, err
        assert out == ""
    assert alias_of(client, "production") == registry["good"]


@pytest.mark.parametrize("argv, expected", [
    (["99"], "no version 99"),
    (["x"], "not a version number"),
    (["1", "--alias", "latest"], "reserved"),
    (["1", "--alias", "no/slash"], "alias"),
])
def test_unknown_versions_and_bad_aliases_exit_2(registry, mlflow_server, capsys, argv,
                                                 expected):
    code, out, err = promote(capsys, mlflow_server, *argv)
    assert code == 2 and expected in error_line(err, "promote") and out == "", err


def test_publish_writes_only_to_the_registry(registry, mlflow_server, capsys, tmp_path):
    """A local export's folder holds the number the registry hands out next: no collision."""
    client = MlflowClient(mlflow_server)
    numbers = sorted(int(v.version) for v in client.search_model_versions(f"name='{NAME}'"))
    local = tmp_path / NAME / str(numbers[-1] + 1)
    local.mkdir(parents=True)
    (local / MODEL_FILE).write_bytes(b"a local export")
    code, out, err = waldo_main(capsys, "export", "--run", registry["run_id"], "--name", NAME,
                                "--publish", "--output", str(tmp_path), "--tracking-uri",
                                mlflow_server)
    assert code == 0, err
    new = str(numbers[-1] + 1)
    assert f"registered models:/{NAME}/{new}" in out and "to the registry" in out
    assert [p.name for p in (tmp_path / NAME).iterdir()] == [new]
    assert (local / MODEL_FILE).read_bytes() == b"a local export"
    version = fetch(f"models:/{NAME}/{new}", tmp_path / "cache", tracking_uri=mlflow_server)
    assert version.card().version == new and version.card().source_run == registry["run_id"]
    assert alias_of(client, "production") == registry["good"]  # no alias asked: none moved


def test_a_failed_publish_leaves_no_version_and_no_gap(registry, mlflow_server, monkeypatch):
    client = MlflowClient(mlflow_server)
    numbers = sorted(int(v.version) for v in client.search_model_versions(f"name='{NAME}'"))
    logged_before = len(client.search_logged_models(
        [client.get_run(registry["run_id"]).info.experiment_id]))

    def upload_fails(self, model_id, local_dir, artifact_path=None):
        raise MlflowException("the artifact store refused the upload")

    with monkeypatch.context() as mp:
        mp.setattr(MlflowClient, "log_model_artifacts", upload_fails)
        with pytest.raises(Exception, match="refused the upload.*nothing was registered"):
            publish_tiny(mlflow_server, registry["run_id"])
    after = sorted(int(v.version) for v in client.search_model_versions(f"name='{NAME}'"))
    assert after == numbers
    assert len(client.search_logged_models(
        [client.get_run(registry["run_id"]).info.experiment_id])) == logged_before
    assert publish_tiny(mlflow_server, registry["run_id"]) == numbers[-1] + 1  # no gap


def test_a_number_taken_meanwhile_is_fixed_in_the_card(registry, mlflow_server, monkeypatch,
                                                       tmp_path):
    """Another publish took the number this one expected: the files are written again."""
    monkeypatch.setattr(publishing, "next_number", lambda client, name: 1)
    number = publish_tiny(mlflow_server, registry["run_id"])
    assert number > 1
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    assert version_card(client, NAME, str(number)).version == str(number)
    version = fetch(f"models:/{NAME}/{number}", tmp_path, tracking_uri=mlflow_server)
    metadata = {p.key: p.value for p in onnx.load(version.model_path).metadata_props}
    assert json.loads(metadata[ONNX_METADATA_KEY])["version"] == str(number)
