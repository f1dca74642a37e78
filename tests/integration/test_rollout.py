"""Rollouts against a real `mlflow server`: the service serves `NAME@production` and, by the
registry's rollout policy, a candidate beside it (canary or shadow), pulls a broken candidate
automatically, and keeps serving when the policy names a version that does not exist.

The versions are tiny ONNX models (support.tiny) registered through Waldo's publish, no
training: v1 holds the alias; v2 is the same network, v3 one that disagrees (it predicts
class k + 1), v4 one whose outputs are NaN and v5 one that errors on every non-black image.
Each test runs the real app in process (TestClient) with a short poll and short windows.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from support import wait_until
from support.serving import metric
from support.tiny import CLASSIFIER, card, classifier, expected_class, faulty_classifier, grey, png_bytes

from serving.app import create_app
from serving.registry.client import RegistryError, registry_client
from serving.registry.moves import history, move_alias, rollback
from serving.registry.policy import RolloutPolicy, get_policy, set_policy
from serving.settings import Settings
from training.export.layout import write_version
from training.export.publish import publish

NAME = "rollout-cnn"
VERSIONS = {"1": classifier(), "2": classifier(), "3": classifier(shift=1),
            "4": faulty_classifier("nan"), "5": faulty_classifier("error")}
# Grey images of classes 1..8: none is black, so the faulty versions fail on every one.
IMAGES = [grey(k) for k in range(1, 9)]
PNGS = [png_bytes(pixels) for pixels in IMAGES]


@pytest.fixture(scope="module")
def registry(mlflow_server, tmp_path_factory) -> str:
    """NAME with versions 1-5 registered, @production on v1; yields the tracking URI."""
    for number, model in VERSIONS.items():
        def write(version: int, folder: Path, model=model) -> Path:
            made = card(CLASSIFIER, version).model_copy(update={"name": NAME})
            return write_version(model, lambda n: made, output=folder, name=NAME, version=version)[0]

        assert str(publish(mlflow_server, name=NAME, run_id=None, write=write)) == number
    move_alias(registry_client(mlflow_server), NAME, "production", "1", action="publish", by="tests")
    return mlflow_server


def rollout(uri: str, candidate: str, mode: str, percent: float, **bounds) -> RolloutPolicy:
    policy = RolloutPolicy(candidate=candidate, mode=mode, percent=percent, **bounds)
    return set_policy(registry_client(uri), NAME, policy, by="tests")


def service(uri: str, tmp: Path) -> TestClient:
    settings = Settings(models=[f"{NAME}@production"], tracking_uri=uri, cache_dir=str(tmp / "cache"),
                        poll_interval_s=0.3, model_control="explicit")
    return TestClient(create_app(settings))


def predict(client: TestClient, i: int = 0, **headers):
    return client.post(f"/v1/models/{NAME}/predict", headers=headers,
                       files=[("file", ("g.png", PNGS[i % len(PNGS)], "image/png"))])


def described(client: TestClient) -> dict:
    return client.get(f"/v1/models/{NAME}").json()


def candidate_of(client: TestClient) -> str | None:
    rollout = described(client)["rollout"]
    return rollout and rollout["version"]


def test_a_canary_gets_its_share_and_a_keyed_client_stays_on_one_version(registry, tmp_path):
    rollout(registry, "2", "canary", 10, window_s=60)
    with service(registry, tmp_path) as client:
        wait_until(lambda: candidate_of(client) == "2", what="the canary is loaded", timeout=30)
        model = described(client)
        roles = [(v["version"], v["role"]) for v in model["versions"]]
        assert roles == [("1", "primary"), ("2", "candidate")]
        assert model["rollout"]["policy"]["mode"] == "canary" and model["rollout"]["active"]

        def one(i: int) -> str:
            answer = predict(client, i)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            # Every answer names its version, in the body and the header, and answers correctly.
            assert answer.headers["Waldo-Model-Version"] == body["version"]
            assert body["predictions"][0]["label"] == str(expected_class(IMAGES[i % len(IMAGES)]))
            return body["version"]

        with ThreadPoolExecutor(8) as pool:  # eight clients at once: batches form, as in service
            seen = list(pool.map(one, range(5000)))
        share = seen.count("2") / len(seen)
        assert set(seen) == {"1", "2"} and abs(share - 0.10) <= 0.02, share

        by_key = {}
        for key in range(100):
            versions = {predict(client, key, **{"waldo-route-key": f"client-{key}"}).json()["version"]
                        for _ in range(4)}
            assert len(versions) == 1, (key, versions)  # a keyed client never switches
            by_key[key] = versions.pop()
        assert set(by_key.values()) == {"1", "2"}  # and keys are spread over both

        # v2 names its version too, and a request may name one; Prometheus counts per version.
        pinned = client.post(f"/v2/models/{NAME}/versions/2/infer", json={"inputs": [{
            "name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
            "data": (IMAGES[0] / 255).astype(np.float32).ravel().tolist()}]})
        assert pinned.status_code == 200, pinned.text
        assert pinned.json()["model_version"] == "2" == pinned.headers["Waldo-Model-Version"]
        assert predict(client, 0, **{"Waldo-Model-Version": "1"}).json()["version"] == "1"
        unknown = predict(client, 0, **{"Waldo-Model-Version": "7"})
        assert unknown.status_code == 404 and "7" in unknown.json()["error"]["message"]
        metrics = client.get("/metrics").text
        ok = 'waldo_requests_total{{model="{}",protocol="v1",status="200",version="{}"}}'
        assert metric(metrics, ok.format(NAME, "2")) >= seen.count("2")
        assert metric(metrics, ok.format(NAME, "1")) >= seen.count("1")
        stats = client.get(f"/v2/models/{NAME}/stats").json()["model_stats"]
        assert [s["version"] for s in stats] == ["1", "2"]


def test_shadow_clients_see_the_primary_and_agreement_is_exported(registry, tmp_path):
    rollout(registry, "3", "shadow", 100, window_s=60)
    with service(registry, tmp_path) as client:
        wait_until(lambda: candidate_of(client) == "3", what="the shadow is loaded", timeout=30)
        sent = 40
        for i in range(sent):
            answer = predict(client, i)
            assert answer.status_code == 200 and answer.json()["version"] == "1"
            assert answer.headers["Waldo-Model-Version"] == "1"
        shadow = f'waldo_shadow_rows_total{{model="{NAME}",version="3"}}'
        wait_until(lambda: metric(client.get("/metrics").text, shadow, default=0) == sent,
                   what="every request mirrored to the shadow", timeout=20)
        images = [IMAGES[i % len(IMAGES)] for i in range(sent)]
        agreeing = sum(expected_class(x) == expected_class(x, shift=1) for x in images)
        metrics = client.get("/metrics").text
        assert metric(metrics, f'waldo_shadow_agreement{{model="{NAME}",version="3"}}') == pytest.approx(
            agreeing / sent)
        assert metric(metrics, f'waldo_requests_total{{model="{NAME}",protocol="shadow",status="200",'
                               f'version="3"}}') == sent
        assert described(client)["rollout"]["agreement"] == pytest.approx(agreeing / sent)


@pytest.mark.parametrize(("mode", "fault"), [("shadow", "4"), ("shadow", "5"), ("canary", "4"),
                                             ("canary", "5")])
def test_a_broken_candidate_is_pulled_within_a_window(registry, tmp_path, mode, fault):
    window_s = 5.0
    policy = rollout(registry, fault, mode, 100 if mode == "shadow" else 50, window_s=window_s,
                     min_requests=5)
    with service(registry, tmp_path) as client:
        wait_until(lambda: candidate_of(client) == fault, what="the candidate is loaded", timeout=30)
        failed, answered, i = 0, [], 0
        while not described(client)["rollout"]["pulled"]:
            answer = predict(client, i)
            i += 1
            failed += answer.status_code != 200
            answered.append(answer.json().get("version"))
            assert i < 500, "the broken candidate was never pulled"
        # No client saw the failure: shadow answers never reach one, a canary's are retried.
        assert failed == 0 and set(answered) == {"1"}
        rolled = described(client)["rollout"]
        assert "success rate" in rolled["pulled"] and not rolled["active"]
        after = [predict(client, i).json()["version"] for i in range(20)]
        assert after == ["1"] * 20

        client_ = registry_client(registry)
        wait_until(lambda: history(client_, NAME, "production")[-1].action == "auto-rollback",
                   what="the registry's history records the rollback", timeout=20)
        assert get_policy(client_, NAME).state == "rolled-back"
        move = history(client_, NAME, "production")[-1]
        assert move.detail["candidate"] == fault
        assert move.at > policy.set_at and "automatic rollback" in move.reason
        # The poll reads the rolled-back policy: the candidate is dropped.
        wait_until(lambda: candidate_of(client) is None, what="the candidate is dropped", timeout=20)
        assert [v["version"] for v in described(client)["versions"]] == ["1"]
        rollbacks = f'waldo_rollbacks_total{{model="{NAME}",version="{fault}"}}'
        assert metric(client.get("/metrics").text, rollbacks) == 1


def test_a_policy_naming_a_missing_version_keeps_the_current_one(registry, tmp_path):
    policy = rollout(registry, "2", "canary", 50, window_s=60)
    with service(registry, tmp_path) as client:
        wait_until(lambda: candidate_of(client) == "2", what="the canary is loaded", timeout=30)
        uri_client = registry_client(registry)
        with pytest.raises(RegistryError, match="99"):
            set_policy(uri_client, NAME, policy.model_copy(update={"candidate": "99"}), by="tests")
        # A policy written past the checks (by hand, or a version deleted since) is not followed.
        broken = policy.model_copy(update={"candidate": "99", "set_at": datetime.now(timezone.utc)})
        uri_client.set_registered_model_tag(NAME, "waldo.rollout.production", broken.model_dump_json())
        wait_until(lambda: "99" in (described(client)["rollout"]["error"] or ""),
                   what="the service says why it keeps its policy", timeout=20,
                   detail=lambda: described(client))
        assert candidate_of(client) == "2"
        assert {predict(client, i).json()["version"] for i in range(60)} == {"1", "2"}


def test_the_service_follows_a_promotion_and_a_rollback_within_its_poll(registry, tmp_path):
    uri_client = registry_client(registry)
    uri_client.delete_registered_model_tag(NAME, "waldo.rollout.production")  # no rollout now
    with service(registry, tmp_path) as client:
        assert described(client)["version"] == "1"
        move_alias(uri_client, NAME, "production", "2", action="promote", by="tests")
        wait_until(lambda: described(client)["version"] == "2", what="the service follows the "
                   "promotion", timeout=10, interval=0.1)
        rollback(uri_client, NAME, "production", by="tests", reason="the test rolls back")
        wait_until(lambda: described(client)["version"] == "1", what="the service follows the "
                   "rollback", timeout=10, interval=0.1)
        answer = predict(client)
        assert answer.headers["Waldo-Model-Version"] == answer.json()["version"] == "1"
    moves = history(uri_client, NAME, "production")[-2:]
    assert [(m.action, m.from_version, m.to_version) for m in moves] == [
        ("promote", "1", "2"), ("rollback", "2", "1")]


@pytest.mark.parametrize("control", ["/v1/models/{}/reload", "/v2/repository/models/{}/load"])
def test_reload_and_load_agree_on_a_model_exported_after_the_service_started(tmp_path, control):
    from support.tiny import LOCALIZER, localizer

    repo = tmp_path / "models"
    write_version(classifier(), lambda n: card(CLASSIFIER, n), output=repo, name=CLASSIFIER, version=1)
    settings = Settings(models=[str(repo)], poll_interval_s=0, model_control="explicit")
    with TestClient(create_app(settings)) as client:
        assert client.post(control.format(LOCALIZER)).status_code == 404  # no source holds it yet
        write_version(localizer(), lambda n: card(LOCALIZER, n), output=repo, name=LOCALIZER, version=1)
        answer = client.post(control.format(LOCALIZER))
        assert answer.status_code == 200, answer.text
        served = client.get(f"/v1/models/{LOCALIZER}").json()
        assert served["loaded"] and served["version"] == "1"
