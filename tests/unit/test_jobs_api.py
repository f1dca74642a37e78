"""The jobs API in-process, before any job reaches Ray: auth, spec validation against
training.spec, and a clear 503 when the cluster is unreachable."""

from __future__ import annotations

import socket

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from services.jobs.app import create_app
from services.jobs.settings import JobsSettings

TOKEN = "a-token-of-sufficient-length"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client():
    settings = JobsSettings(token=TOKEN, ray_address=f"http://127.0.0.1:{closed_port()}")
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
