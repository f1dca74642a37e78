"""Alias history, rollback and the rollout policy against a real `mlflow server` on 127.0.0.1:
through serving.registry, the `waldo history / rollback / rollout` commands (subprocesses) and
the jobs API (`python -m services.jobs`, a real uvicorn process) with its token.

One registered model of tiny versions (support.registry, no training) serves the module; each
test moves an alias of its own, so the tests stay independent.
"""

from __future__ import annotations

import json
import secrets
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone

import httpx
import pytest
from support import Server, clean_env, free_port, start_server
from support.waldo import user_error_line, waldo_main

from serving.registry.client import RegistryError, UnknownModel, holder, registry_client
from serving.registry.moves import history, move_alias, rollback
from serving.registry.policy import RolloutPolicy, end_policy, get_policy, set_policy

TOKEN = secrets.token_hex(24)
# The module's versions: 1-3 may replace each other; the others may not replace any of them.
COMPATIBLE = ("1", "2", "3")
OTHER_LABELS, OTHER_TASK, OTHER_SHAPE = "4", "5", "6"


@pytest.fixture(scope="module")
def model(mlflow_server) -> str:
    """The name of a registered model with versions 1-6 (see COMPATIBLE and the others)."""
    from support.registry import register_tiny

    name = f"hist-{uuid.uuid4().hex[:8]}"
    made = [register_tiny(mlflow_server, name) for _ in COMPATIBLE]
    made.append(register_tiny(mlflow_server, name, labels=[f"c{k}" for k in range(10)]))
    made.append(register_tiny(mlflow_server, name, task="localize"))
    made.append(register_tiny(mlflow_server, name, size=32))
    assert made == [*COMPATIBLE, OTHER_LABELS, OTHER_TASK, OTHER_SHAPE]
    return name


@pytest.fixture
def client(mlflow_server):
    return registry_client(mlflow_server)


def test_move_alias_records_who_when_from_and_to_and_why(client, model):
    before = datetime.now(timezone.utc)
    first = move_alias(client, model, "moved", "1", action="publish", by="alice")
    second = move_alias(client, model, "moved", "2", action="promote", by="bob", reason="better top-1",
                        evaluation_run="run-123", detail={"accuracy": "0.98"})
    after = datetime.now(timezone.utc)
    assert holder(client, model, "moved") == "2"
    recorded = history(client, model, "moved")
    assert recorded == [first, second]  # what the registry holds is what was returned
    assert [(m.from_version, m.to_version, m.action, m.by) for m in recorded] == [
        (None, "1", "publish", "alice"), ("1", "2", "promote", "bob")]
    assert second.reason == "better top-1" and second.evaluation_run == "run-123"
    assert second.detail == {"accuracy": "0.98"}
    assert all(before <= m.at <= after for m in recorded)


def test_history_lists_every_move_of_every_alias_oldest_first(client, model):
    made = [("order-a", "1"), ("order-b", "3"), ("order-a", "2"), ("order-b", "1"), ("order-a", "3")]
    for alias, version in made:
        move_alias(client, model, alias, version, action="promote", by="tester")
    everything = [(m.alias, m.to_version) for m in history(client, model)
                  if m.alias.startswith("order-")]
    assert everything == made
    assert [m.to_version for m in history(client, model, "order-b")] == ["3", "1"]


def test_rollback_restores_the_previous_holder_walks_back_and_then_stops(client, model):
    for version in COMPATIBLE:
        move_alias(client, model, "walk", version, action="promote", by="tester")
    back = rollback(client, model, "walk", by="carol", reason="bad canary")
    assert (back.from_version, back.to_version, back.action, back.by, back.reason) == (
        "3", "2", "rollback", "carol", "bad canary")
    assert holder(client, model, "walk") == "2"
    assert history(client, model, "walk")[-1] == back
    assert rollback(client, model, "walk", by="carol").to_version == "1"
    assert holder(client, model, "walk") == "1"
    with pytest.raises(RegistryError, match=r"no earlier holder to roll back to; its history: ") as caught:
        rollback(client, model, "walk", by="carol")
    assert "\n" not in str(caught.value)
    assert holder(client, model, "walk") == "1"  # a refused rollback moves nothing
    assert len(history(client, model, "walk")) == 5


def test_rollback_of_a_first_holder_or_a_missing_alias_is_one_clear_error(client, model):
    move_alias(client, model, "only", "2", action="publish", by="tester")
    with pytest.raises(RegistryError, match=r"@only \(version 2\) has no earlier holder"):
        rollback(client, model, "only", by="tester")
    with pytest.raises(UnknownModel, match=r"has no alias 'nowhere'; its aliases: .*only \(version 2\)"):
        rollback(client, model, "nowhere", by="tester")
    with pytest.raises(UnknownModel, match=r"has no version 99; its versions: 1, 2, 3, 4, 5, 6"):
        move_alias(client, model, "only", "99", action="promote", by="tester")
    with pytest.raises(UnknownModel, match=r"unknown model 'no-such-model'"):
        history(client, "no-such-model")


def test_set_policy_refuses_bad_policies_and_the_current_one_stays(client, model):
    move_alias(client, model, "live", "1", action="publish", by="tester")
    good = set_policy(client, model, RolloutPolicy(alias="live", candidate="2", mode="canary",
                                                   percent=10), by="dave")
    assert (good.state, good.set_by, good.candidate) == ("active", "dave", "2")
    refusals = {
        "99": r"has no version 99",
        OTHER_LABELS: r"version 4 .* cannot replace version 1 \(@live\): labels differ",
        OTHER_TASK: r"version 5 .* cannot replace version 1 \(@live\): task 'localize'",
        OTHER_SHAPE: r"version 6 .* cannot replace version 1 \(@live\): input shape C,H,W 1,32,32",
        "1": r"version 1 already holds",
    }
    for candidate, message in refusals.items():
        with pytest.raises(RegistryError, match=message):
            set_policy(client, model, RolloutPolicy(alias="live", candidate=candidate, mode="shadow",
                                                    percent=50), by="mallory")
    with pytest.raises(UnknownModel, match=r"no alias 'absent'"):
        set_policy(client, model, RolloutPolicy(alias="absent", candidate="2", mode="canary",
                                                percent=10), by="mallory")
    unchecked = RolloutPolicy.model_construct(**{**good.model_dump(), "percent": 150.0})
    with pytest.raises(RegistryError, match=r"percent 150 is outside 0-100"):
        set_policy(client, model, unchecked, by="mallory")
    assert get_policy(client, model, "live") == good  # every refusal left the policy as it was

    rollouts = [m for m in history(client, model, "live") if m.action == "rollout"]
    assert len(rollouts) == 1 and rollouts[0].by == "dave"
    assert rollouts[0].detail == {"mode": "canary", "percent": "10", "candidate": "2", "state": "active"}

    end_policy(client, model, "live", by="erin", state="rolled-back", reason="p99 over bound")
    ended = get_policy(client, model, "live")
    assert (ended.state, ended.reason, ended.candidate) == ("rolled-back", "p99 over bound", "2")
    last = history(client, model, "live")[-1]
    assert (last.action, last.from_version, last.to_version, last.by) == ("auto-rollback", "1", "1", "erin")
    with pytest.raises(RegistryError, match=r"no active rollout to end \(it is rolled-back\)"):
        end_policy(client, model, "live", by="erin", state="off", reason="again")
    assert holder(client, model, "live") == "1"


# --- the command --------------------------------------------------------------------------------
def test_the_commands_print_history_roll_back_and_refuse_bad_input_in_one_line(
        waldo, capsys, client, model, mlflow_server, tmp_path):
    for version in ("1", "2"):
        move_alias(client, model, "cli", version, action="promote", by="frank", reason=f"to {version}")
    uri = ["--tracking-uri", mlflow_server]
    # As a user runs them (subprocesses) ...
    ran = waldo.run_all({
        "history": ["history", model, "--alias", "cli", *uri],
        "unknown": ["history", "no-such-model", *uri],
        "task": ["rollout", model, "--alias", "cli", "--version", OTHER_TASK, "--shadow", "10", *uri],
    }, cwd=tmp_path)
    status, out, err = ran["history"]
    assert status == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and "1 -> 2" in lines[1] and "by frank" in lines[1] and "(to 2)" in lines[1]
    # ... and, where the process itself is not the point, through the same main in this process.
    status, out, _ = waldo_main(capsys, "history", model, "--alias", "cli", "--json", *uri)
    assert status == 0
    assert [m["to_version"] for m in json.loads(out)] == ["1", "2"]
    for case, argv in {"percent": ["rollout", model, "--alias", "cli", "--version", "3", "--canary", "150"],
                       "version": ["rollout", model, "--alias", "cli", "--version", "99", "--canary", "10"],
                       "alias": ["rollback", model, "--alias", "absent"],
                       "off": ["rollout", model, "--alias", "cli", "--off"]}.items():
        ran[case] = waldo_main(capsys, *argv, *uri)
    for case, expected in {"unknown": "unknown model 'no-such-model'",
                           "percent": "percent 150.0: Input should be less than or equal to 100",
                           "version": "has no version 99",
                           "task": "cannot replace version 2 (@cli): task 'localize'",
                           "alias": "has no alias 'absent'",
                           "off": "has no active rollout to end (none)"}.items():
        status, _, err = ran[case]
        assert expected in user_error_line(status, err), case

    back = waldo.run("rollback", model, "--alias", "cli", "--reason", "by hand", *uri,
                     cwd=tmp_path, env=clean_env(WALDO_USER="grace"))
    assert back.returncode == 0, back.stderr
    assert back.stdout.strip() == f"{model}@cli: version 2 -> 1 (rollback)"
    last = history(client, model, "cli")[-1]
    assert (last.action, last.by, last.reason, last.to_version) == ("rollback", "grace", "by hand", "1")
    again = waldo.run("rollback", model, "--alias", "cli", *uri, cwd=tmp_path)
    assert "@cli (version 1) has no earlier holder" in user_error_line(again.returncode, again.stderr)

    started = waldo.run("rollout", model, "--alias", "cli", "--version", "2", "--canary", "10",
                        "--window-s", "5", *uri, cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    policy = get_policy(client, model, "cli")
    assert (policy.mode, policy.percent, policy.candidate, policy.window_s) == ("canary", 10, "2", 5)


# --- the jobs API -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jobs_api(tmp_path_factory, mlflow_server) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("jobs-api-models")
    env = clean_env(WALDO_JOBS_TOKEN=TOKEN, WALDO_JOBS_TRACKING_URI=mlflow_server,
                    WALDO_JOBS_RAY_ADDRESS=f"http://127.0.0.1:{free_port()}")
    server = start_server(lambda port: [sys.executable, "-m", "services.jobs", "--host", "127.0.0.1",
                                        "--port", str(port), "--log-level", "warning"],
                          workdir=root, ready="/healthz", env=env, timeout=60)
    try:
        yield server
    finally:
        server.stop()


def test_the_jobs_api_reads_history_rolls_back_and_sets_rollouts_with_its_token(
        jobs_api, client, model):
    for version in ("1", "3"):
        move_alias(client, model, "api", version, action="promote", by="tester")
    base = f"/v1/models/{model}"
    with httpx.Client(base_url=jobs_api.url, timeout=60) as anonymous:
        for method, path in [("GET", f"{base}/history"), ("POST", f"{base}/rollback"),
                             ("PUT", f"{base}/rollout"), ("DELETE", f"{base}/rollout")]:
            answer = anonymous.request(method, path, json={"alias": "api"})
            assert answer.status_code == 401 and answer.json()["error"]["code"] == "unauthorized"
    assert holder(client, model, "api") == "3"

    headers = {"Authorization": f"Bearer {TOKEN}", "Waldo-User": "heidi"}
    with httpx.Client(base_url=jobs_api.url, headers=headers, timeout=60) as api:
        listed = api.get(f"{base}/history", params={"alias": "api"})
        assert listed.status_code == 200
        assert [m["to_version"] for m in listed.json()["moves"]] == ["1", "3"]
        assert listed.json()["aliases"]["api"] == "3"

        back = api.post(f"{base}/rollback", json={"alias": "api", "reason": "through the API"})
        assert back.status_code == 200, back.text
        assert (back.json()["to_version"], back.json()["by"]) == ("1", "jobs-api:heidi")
        assert holder(client, model, "api") == "1"
        assert history(client, model, "api")[-1].reason == "through the API"

        put = api.put(f"{base}/rollout", json={"alias": "api", "candidate": 2, "mode": "shadow",
                                               "percent": 100})
        assert put.status_code == 200, put.text
        assert (put.json()["state"], put.json()["set_by"]) == ("active", "jobs-api:heidi")
        bad = {
            "percent": ({"alias": "api", "candidate": "2", "mode": "canary", "percent": 101}, 422,
                        "invalid_input", "percent"),
            "state": ({"alias": "api", "candidate": "2", "mode": "canary", "percent": 5,
                       "state": "off"}, 422, "invalid_input", "state"),
            "version": ({"alias": "api", "candidate": "99", "mode": "canary", "percent": 5}, 404,
                        "unknown_model", "has no version 99"),
            "task": ({"alias": "api", "candidate": OTHER_TASK, "mode": "canary", "percent": 5}, 422,
                     "registry_refused", "task 'localize'"),
            "alias": ({"alias": "absent", "candidate": "2", "mode": "canary", "percent": 5}, 404,
                      "unknown_model", "no alias 'absent'"),
        }
        for case, (body, status, code, message) in bad.items():
            answer = api.put(f"{base}/rollout", json=body)
            assert answer.status_code == status, (case, answer.text)
            assert answer.json()["error"]["code"] == code and message in answer.json()["error"]["message"]
        assert api.get(f"{base}/rollout", params={"alias": "api"}).json() == put.json()

        nobody = api.post(f"{base}/rollback", json={"alias": "api"})
        assert nobody.status_code == 422 and "no earlier holder" in nobody.json()["error"]["message"]
        unknown = api.get("/v1/models/no-such-model/history")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_model"
        odd_user = api.post(f"{base}/rollback", json={"alias": "api"}, headers={"Waldo-User": "a b"})
        assert odd_user.status_code == 400 and "Waldo-User" in odd_user.json()["error"]["message"]

        ended = api.delete(f"{base}/rollout", params={"alias": "api"})
        assert ended.status_code == 200, ended.text
        assert ended.json()["state"] == "off" and get_policy(client, model, "api").state == "off"
        again = api.delete(f"{base}/rollout", params={"alias": "api"})
        assert again.status_code == 422 and again.json()["error"]["code"] == "registry_refused"
    assert holder(client, model, "api") == "1"
