"""The jobs API in-process: auth, spec validation against training.spec, a clear 503 when the
cluster is unreachable, the routes over RayJobs (with the fake Ray client, support.fakes), and
the error contract and token check it shares with the inference service."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from ray.job_submission import JobStatus
from support import FakeJobSubmission, free_port, waldo_meta

from services.jobs.app import create_app
from services.jobs.ray_jobs import RayJobs
from services.jobs.settings import JobsSettings
from training.spec import JOB_ENTRYPOINT, JOB_ENV

TOKEN = "a-token-of-sufficient-length"


@pytest.fixture(scope="module")
def client():
    settings = JobsSettings(token=TOKEN, ray_address=f"http://127.0.0.1:{free_port()}")
    with TestClient(create_app(settings)) as c:
        c.headers["Authorization"] = f"Bearer {TOKEN}"
        yield c


def test_a_token_is_required_to_start():
    with pytest.raises(ValidationError, match="token"):
        JobsSettings()
    with pytest.raises(ValidationError, match="at least 16"):
        JobsSettings(token="short")


@pytest.mark.parametrize("method, path", [("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/v1/jobs/x"),
                                          ("GET", "/v1/jobs/x/logs"), ("DELETE", "/v1/jobs/x")])
def test_every_jobs_route_needs_the_token(client, method, path):
    body = {"json": {"kind": "train", "spec": {}}} if method == "POST" else {}
    missing = client.request(method, path, headers={"Authorization": ""}, **body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = client.request(method, path, headers={"Authorization": "Bearer nope"}, **body)
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "forbidden"


def test_health_needs_no_token_and_readiness_reports_the_cluster(client):
    assert client.get("/healthz", headers={"Authorization": ""}).json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "unreachable" in ready.json()["error"]["message"]


@pytest.mark.parametrize("body, status, words", [
    ({"kind": "train", "spec": {"model": "cnn", "epochs": "many"}}, 422, ["'epochs'", "many"]),
    ({"kind": "train", "spec": {"modle": "cnn"}}, 422, ["'modle'", "did you mean 'model'"]),
    ({"kind": "sweep", "spec": {"model": "cnn", "search": {"lr": "gauss(1,2)"}}}, 422, ["gauss"]),
    ({"kind": "export", "spec": {}}, 422, ["exactly one of run"]),
    # Export validation lives in ExportSpec: refused at submit time, not minutes later on Ray.
    ({"kind": "export", "spec": {"run": "r", "opset": 99}}, 422, ["'opset'", "18 to 23"]),
    ({"kind": "export", "spec": {"run": "r", "alias": "latest"}}, 422, ["'alias'", "reserved"]),
    ({"kind": "export", "spec": {"run": "r", "name": "../x"}}, 422, ["'name'", "'../x'"]),
    ({"kind": "train", "spec": {"alias": "v1"}}, 422, ["'alias'", "reserved"]),
    ({"kind": "deploy", "spec": {}}, 422, ["kind", "train", "sweep", "export"]),
    ({"spec": {}}, 422, ["kind"]),
    ({"kind": "train", "spec": {}, "shell": "rm -rf /"}, 422, ["shell"]),
])
def test_bad_specs_are_refused_with_the_field_named(client, body, status, words):
    answer = client.post("/v1/jobs", json=body)
    assert answer.status_code == status, answer.text
    message = answer.json()["error"]["message"]
    for word in words:
        assert word in message, message


def test_a_valid_spec_meets_an_unreachable_cluster_with_503(client):
    answer = client.post("/v1/jobs", json={"kind": "train", "spec": {"model": "cnn", "epochs": 1}})
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
    assert "unreachable" in answer.json()["error"]["message"]


# --- the routes over RayJobs, with Ray's client faked ------------------------------------------
@pytest.fixture
def fake() -> FakeJobSubmission:
    return FakeJobSubmission()


@pytest.fixture
def api(fake):
    settings = JobsSettings(token=TOKEN, ray_address="http://ray-head.invalid:8265",
                            storage="s3://bucket/ckpt")
    app = create_app(settings)
    app.state.jobs = RayJobs(settings, connect=lambda address: fake)
    with TestClient(app, raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {TOKEN}"
        yield c


def test_a_submitted_job_reaches_ray_as_the_validated_spec(api, fake):
    answer = api.post("/v1/jobs", json={"kind": "train", "spec": {"model": "cnn", "epochs": 1}})
    assert answer.status_code == 201, answer.text
    job = answer.json()
    assert job["kind"] == "train" and job["status"] == "PENDING" and job["id"] in fake.jobs
    sent = json.loads(fake.jobs[job["id"]].runtime_env["env_vars"][JOB_ENV])
    assert fake.jobs[job["id"]].entrypoint == JOB_ENTRYPOINT
    # The API's defaults: no progress bar in logs, the settings' storage, a run name to find.
    assert sent["spec"]["progress_bar"] is False and sent["spec"]["storage"] == "s3://bucket/ckpt"
    assert sent["spec"]["run_name"].startswith("job-") and sent["spec"] == job["spec"]
    assert api.get("/readyz").json() == {"ready": True, "ray_address": "http://ray-head.invalid:8265"}


def test_a_job_acts_as_its_caller(api, fake):
    """A promotion records who moved the alias: the job runs with the caller as WALDO_USER."""
    body = {"kind": "promote", "spec": {"name": "cnn", "version": "2"}}
    named = api.post("/v1/jobs", json=body, headers={"Waldo-User": "ana"}).json()
    anonymous = api.post("/v1/jobs", json=body).json()
    assert fake.jobs[named["id"]].runtime_env["env_vars"]["WALDO_USER"] == "jobs-api:ana"
    assert fake.jobs[anonymous["id"]].runtime_env["env_vars"]["WALDO_USER"] == "jobs-api:caller"
    bad = api.post("/v1/jobs", json=body, headers={"Waldo-User": "ana; rm -rf"})
    assert bad.status_code == 400 and "Waldo-User" in bad.json()["error"]["message"]


def test_list_get_logs_and_stop_go_through_to_ray(api, fake):
    fake.add("waldo-train-a", metadata=waldo_meta(model="cnn"), start=1, logs="one\ntwo\nthree")
    fake.add("waldo-export-b", metadata=waldo_meta("export", run="r"), start=2,
             status=JobStatus.SUCCEEDED)
    fake.add("not-ours", metadata=None, start=3)

    assert [j["id"] for j in api.get("/v1/jobs").json()["jobs"]] == ["waldo-export-b", "waldo-train-a"]
    assert api.get("/v1/jobs/waldo-train-a").json()["spec"] == {"model": "cnn"}
    assert api.get("/v1/jobs/waldo-train-a/logs?tail=2").text == "two\nthree"
    assert api.delete("/v1/jobs/waldo-train-a").json() == {"id": "waldo-train-a", "stopped": True,
                                                           "status": "STOPPING"}


@pytest.mark.parametrize("method, path", [("GET", "/v1/jobs/not-ours"), ("GET", "/v1/jobs/nope/logs"),
                                          ("DELETE", "/v1/jobs/nope")])
def test_an_unknown_job_is_404_unknown_job(api, fake, method, path):
    fake.add("not-ours", metadata={"owner": "bob"})
    answer = api.request(method, path)
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert error["code"] == "unknown_job" and path.split("/")[3] in error["message"]


def test_a_bug_is_a_logged_500_without_details(api, fake, caplog):
    fake.fail("list_jobs", ZeroDivisionError("secret detail"))
    with caplog.at_level(logging.ERROR, logger="waldo.jobs"):
        answer = api.get("/v1/jobs")
    assert answer.status_code == 500
    assert answer.json() == {"error": {"code": "internal", "message": "internal error "
                                       "(ZeroDivisionError); see the service log"}}
    assert "GET /v1/jobs" in caplog.text and "secret detail" in caplog.text


# --- one contract with the inference service -----------------------------------------------------
@pytest.fixture(scope="module")
def both_apps(tmp_path_factory):
    """The jobs API and the inference service (with no models, repository control on), each guarded
    by TOKEN, and a path in each that needs it."""
    from serving.app import create_app as create_serving_app
    from serving.settings import Settings

    empty = tmp_path_factory.mktemp("no-models")
    serving = create_serving_app(Settings(models=[str(empty)], admin_key=TOKEN))  # reload: control on
    jobs = create_app(JobsSettings(token=TOKEN, ray_address=f"http://127.0.0.1:{free_port()}"))
    with TestClient(serving) as s, TestClient(jobs) as j:
        yield {"serving": (s, "/v1/models/cnn/reload"), "jobs": (j, "/v1/jobs/x/logs")}


@pytest.mark.parametrize("service", ["serving", "jobs"])
def test_both_services_check_the_token_alike(both_apps, service):
    client, guarded = both_apps[service]
    method = "POST" if service == "serving" else "GET"
    answers = {header: client.request(method, guarded, headers={"Authorization": header})
               for header in ("", "Basic dG9rZW4=", "Bearer wrong", f"Bearer {TOKEN}x")}
    for header, answer in answers.items():
        status = 401 if not header.startswith("Bearer") else 403
        assert answer.status_code == status, (header, answer.text)
    assert answers[""].headers["www-authenticate"] == "Bearer"
    assert answers[""].json() == {"error": {
        "code": "unauthorized", "message": "this endpoint needs an Authorization: Bearer <token> header"}}
    assert answers["Bearer wrong"].json() == {"error": {
        "code": "forbidden", "message": "the bearer token is not valid for this endpoint"}}


@pytest.mark.parametrize("service", ["serving", "jobs"])
def test_both_services_speak_the_same_error_contract(both_apps, service):
    client, _ = both_apps[service]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    missing = client.get("/v1/nowhere", headers=auth)
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "not_found", "message": "no route GET /v1/nowhere"}}
    wrong_method = client.put("/healthz", headers=auth)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


def test_a_bad_query_names_the_parameter_as_the_inference_service_does(client):
    answer = client.get("/v1/jobs/x/logs?tail=0")
    assert answer.status_code == 422
    assert answer.json() == {"error": {"code": "invalid_input",
                                       "message": "tail: Input should be greater than or equal to 1"}}
