"""The jobs API as a trust boundary (issue 12, item 4), in process: a token holder gets only what
the operator allows, and a stranger gets nothing read.

- the token is checked before a byte of the body is read; bodies have a size limit; nesting
  that would break serialization is a 4xx;
- `tracking_uri` and `ray_address` are the server's; every path a spec names lies under the
  configured roots (`..`, `//`, symlinks, prefix siblings, file: URIs, relative paths, S3 URIs
  that carry credentials or endpoints); the operator's bounds hold, in a sweep's search too;
- unknown model and data set names and non-finite numbers are refused at submit time;
- listing jobs never opens a store a spec names;
- settings that do not validate are one line, not a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from support import FakeJobSubmission, waldo_meta

from services.jobs.app import create_app
from services.jobs.ray_jobs import RayJobs
from services.jobs.settings import JobsSettings, get_settings
from training.spec import JOB_ENV

TOKEN = "a-token-of-sufficient-length"
RAY = "http://ray-head.invalid:8265"  # never dialled: the fake stands in for Ray's client
SWEEP = {"search": {"lr": "loguniform(1e-4,1e-1)"}}
BASE = {"train": {}, "sweep": SWEEP, "export": {"run": "r"}}


@pytest.fixture
def fake() -> FakeJobSubmission:
    return FakeJobSubmission()


class NoRuns:
    """An MLflow client of a server that has no runs yet (and is down for get_run)."""

    def get_experiment_by_name(self, name):
        return None

    def get_run(self, run_id):
        raise ConnectionError("down")


@pytest.fixture
def opened() -> list[str]:
    """The tracking URIs RayJobs opened an MLflow client for."""
    return []


@pytest.fixture
def api(fake, opened):
    """`api(**settings)`: a TestClient with the token, on the fake Ray client and a stand-in for
    MLflow's that records the URIs it is opened with."""
    clients = []

    def tracking(uri: str) -> NoRuns:
        opened.append(uri)
        return NoRuns()

    def build(**overrides) -> TestClient:
        settings = JobsSettings(**{"token": TOKEN, "ray_address": RAY, **overrides})
        app = create_app(settings)
        app.state.jobs = RayJobs(settings, connect=lambda address: fake, tracking=tracking)
        client = TestClient(app, raise_server_exceptions=False)
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        clients.append(client.__enter__())
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


def sent_spec(fake: FakeJobSubmission, answer) -> dict:
    assert answer.status_code == 201, answer.text
    return json.loads(fake.jobs[answer.json()["id"]].runtime_env["env_vars"][JOB_ENV])["spec"]


def refused(answer, code: str, *words: str) -> str:
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == code, error
    for word in words:
        assert word in error["message"], error["message"]
    return error["message"]


# --- the token before the body, and the body's size ---------------------------------------------
def asgi_post(app, headers: list[tuple[bytes, bytes]], declared: int = 50 * 2**20):
    """POST /v1/jobs straight to the ASGI app, with a body of `declared` bytes offered in 1 MiB
    chunks; (status, JSON body, response headers, how many times the app called receive)."""
    reads, sent = [], []
    chunk, chunks = b" " * 2**20, max(1, declared // 2**20)

    async def receive():
        reads.append(1)
        return {"type": "http.request", "body": chunk, "more_body": len(reads) < chunks}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/jobs", "raw_path": b"/v1/jobs", "root_path": "",
             "query_string": b"", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8001),
             "headers": [(b"host", b"jobs"), (b"content-type", b"application/json"),
                         (b"content-length", str(declared).encode()), *headers]}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), dict(start["headers"]), len(reads)


@pytest.mark.parametrize("authorization, status, code", [
    (None, 401, "unauthorized"), (b"Basic dG9rZW4=", 401, "unauthorized"), (b"Bearer", 401, "unauthorized"),
    (b"Bearer wrong-token-of-some-length", 403, "forbidden"),
])
def test_the_token_is_checked_before_a_byte_of_the_body_is_read(authorization, status, code):
    app = create_app(JobsSettings(token=TOKEN, ray_address=RAY))
    headers = [(b"authorization", authorization)] if authorization else []
    answer, body, response_headers, reads = asgi_post(app, headers)
    assert (answer, body["error"]["code"], reads) == (status, code, 0)
    assert response_headers[b"connection"] == b"close"  # the 50 MB are not read off the socket either


def test_an_oversized_declared_body_is_413_before_it_is_read():
    app = create_app(JobsSettings(token=TOKEN, ray_address=RAY, max_body_bytes=4096))
    answer, body, _, reads = asgi_post(app, [(b"authorization", f"Bearer {TOKEN}".encode())], 2 * 2**20)
    assert (answer, body["error"]["code"], reads) == (413, "too_large", 0)
    assert "limit of 4096" in body["error"]["message"]


def test_bodies_over_the_limit_are_413_declared_or_chunked(api, fake):
    client = api(max_body_bytes=2**16)
    pad = {"kind": "train", "spec": {"model_args": {"pad": "x" * 2**17}}}
    declared = client.post("/v1/jobs", json=pad)
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "too_large"

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"kind": "train", "spec": {"model_args": {"pad": "'
        for _ in range(32):
            yield b"x" * 2**12
        yield b'"}}}'

    chunked = client.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "too_large"
    assert not fake.jobs
    # The default limit is 1 MiB: a 600 kB body still goes through.
    big = api().post("/v1/jobs", content=b'{"kind": "train", "spec": {}}' + b" " * 600_000,
                     headers={"Content-Type": "application/json"})
    assert big.status_code == 201, big.text[:300]


@pytest.mark.parametrize("path", ["/v1", "/v1/", "/v1/nowhere", "/v1/jobs/x/logs"])
def test_everything_under_v1_needs_the_token_even_unrouted_paths(api, path):
    answer = api().get(path, headers={"Authorization": ""})
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("opening, closing", [('{"a": ', "}"), ("[", "]")])
@pytest.mark.parametrize("depth", [500, 100_000])
def test_deep_nesting_is_a_4xx_json_error_never_a_500(api, fake, depth, opening, closing):
    body = ('{"kind": "train", "spec": {"model": "cnn", "model_args": {"x": '
            + opening * depth + "1" + closing * depth + "}}}")
    answer = api().post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert 400 <= answer.status_code < 500, answer.text[:300]
    error = answer.json()["error"]
    assert error["code"] in ("invalid_spec", "bad_request") and error["message"]
    if depth == 500:  # parsed by JSON, refused by the API, naming the field
        assert answer.status_code == 422 and "'model_args' nests deeper than 32" in error["message"]
    assert not fake.jobs


@pytest.mark.parametrize("body", [{"kind": "x" * 100_000, "spec": {}}, {"spec": {}}, [1],
                                  {"kind": {"a": "train"}, "spec": {}}])
def test_a_body_of_no_known_kind_is_refused_in_a_short_line(api, fake, body):
    answer = api().post("/v1/jobs", json=body)
    assert answer.status_code == 422
    assert answer.json() == {"error": {"code": "invalid_input",
                                       "message": "body: give kind: one of train, sweep, export, promote, "
                                                  "predict"}}
    assert not fake.jobs


def test_only_the_spec_of_the_bodys_kind_is_tried(api, fake):
    answer = api().post("/v1/jobs", json={"kind": "train", "spec": {"run": "r"}})
    refused(answer, "invalid_spec", "unknown field 'run'")  # ExportSpec's field, not TrainSpec's
    assert "exactly one of run" not in answer.json()["error"]["message"]


def test_nesting_within_the_limits_is_accepted(api, fake):
    args = {"x": {"a": [1, 2]}}  # training.spec allows data_args 4 levels deep
    assert sent_spec(fake, api().post("/v1/jobs", json={"kind": "train", "spec": {"data_args": args}}))[
        "data_args"] == args


# --- the server decides where jobs track and run -------------------------------------------------
@pytest.mark.parametrize("kind, field, value", [
    ("train", "tracking_uri", "sqlite:////anywhere.db"),
    ("train", "tracking_uri", "http://169.254.169.254/latest/meta-data/"),
    ("sweep", "tracking_uri", "file:///tmp/mlruns"),
    ("export", "tracking_uri", "http://mlflow.elsewhere:5000"),
    ("train", "ray_address", "http://another-cluster:8265"),
    ("sweep", "ray_address", "ray://another-cluster:10001"),
])
def test_a_spec_may_not_name_the_tracking_server_or_the_cluster(api, fake, kind, field, value):
    client = api(tracking_uri="http://mlflow.internal:5000")
    answer = client.post("/v1/jobs", json={"kind": kind, "spec": {**BASE[kind], field: value}})
    refused(answer, "server_field", f"field {field!r}", "set by the server")
    assert not fake.jobs
    # Without it, the job tracks to the server's MLflow: in its spec and its environment.
    job = fake.jobs[client.post("/v1/jobs", json={"kind": kind, "spec": BASE[kind]}).json()["id"]]
    env = job.runtime_env["env_vars"]
    assert env["MLFLOW_TRACKING_URI"] == json.loads(env[JOB_ENV])["spec"]["tracking_uri"] \
        == "http://mlflow.internal:5000"


# --- paths under the operator's roots --------------------------------------------------------------
@pytest.fixture
def roots(tmp_path: Path) -> dict[str, str]:
    base = Path(os.path.realpath(tmp_path))
    for name in ("data", "runs", "models", "data-evil"):
        (base / name).mkdir()
    (base / "data" / "etc-link").symlink_to("/etc")
    return {"data": str(base / "data"), "runs": str(base / "runs"), "models": str(base / "models")}


@pytest.fixture
def rooted(api, roots):
    return api(data_roots=f"{roots['data']},s3://waldo/data", storage_roots=f"{roots['runs']},s3://waldo/ray",
               model_roots=roots["models"], storage="s3://waldo/ray")


OUTSIDE = [
    ("train", "data_dir", "/etc"),
    ("train", "data_dir", "{data}/../data-evil"),  # '..' out of the root
    ("train", "data_dir", "{data}/../../../../../../etc"),
    ("train", "data_dir", "{data}-evil/x"),  # a sibling that shares the root's prefix
    ("train", "data_dir", "{data}/etc-link/ssl"),  # a symlink out of the root
    ("train", "data_dir", "file:///etc"),
    ("train", "data_dir", "file://evil.example{data}/x"),  # a file: URI of another host
    ("train", "data_dir", "data/mnist"),  # relative: meaningless in a Ray job's temp folder
    ("train", "data_dir", "./mnist"),
    ("train", "data_dir", "~/mnist"),
    ("train", "data_dir", "s3://waldo/data-evil/x"),
    ("train", "data_dir", "s3://waldo/data/../ray/x"),  # under a storage root, not a data root
    ("train", "data_dir", "s3://key:secret@waldo/data/x"),
    ("train", "data_dir", "s3://waldo/data/x?endpoint_override=evil.example"),
    ("train", "data_dir", "s3://waldo/data/%2e%2e/x"),
    ("train", "data_dir", "gs://waldo/data/x"),
    ("train", "data_dir", "http://169.254.169.254/latest/meta-data/"),
    ("train", "data_dir", "/data\x00/x"),
    ("train", "storage", "/"),
    ("train", "storage", "{runs}//..//..//"),
    ("train", "storage", "s3://other-bucket/ray"),
    ("sweep", "storage", "s3://waldo/ray-evil"),
    ("sweep", "data_dir", "{models}"),
    ("export", "checkpoint", "/etc/passwd"),
    ("export", "checkpoint", "{data}/best.ckpt"),  # checkpoints come from storage roots only
    ("export", "output", "/"),
    ("export", "output", "{runs}"),
    ("export", "output", "models"),
    ("train", "weights", "/etc/passwd"),  # a state dict to start from: under the data roots
    ("train", "weights", "{runs}/w.pth"),
    ("train", "init_from", "/etc/x.ckpt"),  # a checkpoint to start from: under the storage roots
    ("sweep", "init_from", "{data}/best.ckpt"),
]


@pytest.mark.parametrize("kind, field, template", OUTSIDE)
def test_a_path_outside_the_roots_is_refused_naming_field_value_and_roots(rooted, fake, roots, kind, field,
                                                                            template):
    value = template.format(**roots)
    spec = {**BASE[kind], field: value}
    if kind == "export" and field == "checkpoint":
        spec.pop("run")
    message = refused(rooted.post("/v1/jobs", json={"kind": kind, "spec": spec}), "path_not_allowed",
                      f"field {field!r}", repr(value), "allowed roots")
    allowed = {"data_dir": roots["data"], "storage": roots["runs"], "checkpoint": roots["runs"],
               "output": roots["models"], "weights": roots["data"], "init_from": roots["runs"]}[field]
    assert allowed in message
    assert not fake.jobs


INSIDE = [
    ("train", "data_dir", "{data}/mnist/", "{data}/mnist"),
    ("train", "data_dir", "{data}//a/../mnist", "{data}/mnist"),
    ("train", "data_dir", "file://{data}/mnist", "{data}/mnist"),
    ("train", "data_dir", "file://localhost{data}/mnist", "{data}/mnist"),
    ("train", "data_dir", "{data}", "{data}"),
    ("train", "data_dir", "S3://waldo//data/x/./y/", "s3://waldo/data/x/y"),
    ("train", "storage", "{runs}/mine", "{runs}/mine"),
    ("sweep", "storage", "s3://waldo/ray/sweeps/", "s3://waldo/ray/sweeps"),
    ("export", "checkpoint", "s3://waldo/ray/job-1/best.ckpt", "s3://waldo/ray/job-1/best.ckpt"),
    ("export", "checkpoint", "{runs}/job-1/../job-2/best.ckpt", "{runs}/job-2/best.ckpt"),
    ("export", "output", "{models}/", "{models}"),
    ("train", "weights", "{data}/w/resnet18.pth", "{data}/w/resnet18.pth"),
    ("train", "weights", "IMAGENET1K_V1", "IMAGENET1K_V1"),  # a name, not a path
    ("train", "init_from", "{runs}/job-1/best.ckpt", "{runs}/job-1/best.ckpt"),
    ("train", "init_from", "0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"),
    ("sweep", "init_from", "models:/cnn@production", "models:/cnn@production"),
]


@pytest.mark.parametrize("kind, field, template, expected", INSIDE)
def test_a_path_under_a_root_goes_to_the_job_normalized(rooted, fake, roots, kind, field, template, expected):
    spec = {**BASE[kind], field: template.format(**roots)}
    if kind == "export" and field == "checkpoint":
        spec.pop("run")
    assert sent_spec(fake, rooted.post("/v1/jobs", json={"kind": kind, "spec": spec}))[field] == \
        expected.format(**roots)


def test_without_roots_a_spec_names_no_path_and_the_servers_defaults_apply(api, fake):
    client = api(storage="s3://waldo/ray", output="/srv/models")
    for kind, field, value in [("train", "data_dir", "/data"), ("sweep", "storage", "s3://waldo/ray"),
                               ("export", "output", "/srv/models")]:
        answer = client.post("/v1/jobs", json={"kind": kind, "spec": {**BASE[kind], field: value}})
        refused(answer, "path_not_allowed", f"field {field!r}", "accepts no path",
                {"data_dir": "WALDO_JOBS_DATA_ROOTS", "storage": "WALDO_JOBS_STORAGE_ROOTS",
                 "output": "WALDO_JOBS_MODEL_ROOTS"}[field])
    assert not fake.jobs
    assert sent_spec(fake, client.post("/v1/jobs", json={"kind": "train", "spec": {}}))["storage"] == \
        "s3://waldo/ray"
    assert sent_spec(fake, client.post("/v1/jobs", json={"kind": "export", "spec": {"run": "r"}}))[
        "output"] == "/srv/models"


def test_roots_come_from_the_environment_comma_separated_and_normalized(monkeypatch):
    from services.jobs.settings import error_line

    monkeypatch.setenv("WALDO_JOBS_TOKEN", TOKEN)
    monkeypatch.setenv("WALDO_JOBS_DATA_ROOTS", " /srv/data/, s3://waldo//data/ ,/srv/x/../data")
    assert JobsSettings().data_roots == ["/srv/data", "s3://waldo/data"]
    monkeypatch.setenv("WALDO_JOBS_STORAGE_ROOTS", "runs")
    with pytest.raises(ValidationError) as info:
        JobsSettings()
    assert error_line(info.value) == ("waldo-jobs: error: WALDO_JOBS_STORAGE_ROOTS: root 'runs' is a "
                                      "relative path; give an absolute one")


# --- the operator's bounds -------------------------------------------------------------------------
@pytest.mark.parametrize("kind, spec, field, shown, limit", [
    ("train", {"workers": 100_000}, "workers", "100000", "16 (WALDO_JOBS_MAX_WORKERS)"),
    ("train", {"workers": "2-64"}, "max_workers", "64", "16 (WALDO_JOBS_MAX_WORKERS)"),
    ("train", {"gpus_per_worker": 9}, "gpus_per_worker", "9", "8.0 (WALDO_JOBS_MAX_GPUS_PER_WORKER)"),
    ("train", {"epochs": 10**12}, "epochs", str(10**12), "1000 (WALDO_JOBS_MAX_EPOCHS)"),
    ("train", {"image_size": 2048}, "image_size", "2048", "1024 (WALDO_JOBS_MAX_IMAGE_SIZE)"),
    ("train", {"loader_workers": 10_000}, "loader_workers", "10000", "16 (WALDO_JOBS_MAX_LOADER_WORKERS)"),
    ("sweep", {**SWEEP, "trials": 257}, "trials", "257", "256 (WALDO_JOBS_MAX_TRIALS)"),
    ("sweep", {"search": {"epochs": "randint(1, 1000000)"}}, "search.epochs", "reaches 999999",
     "1000 (WALDO_JOBS_MAX_EPOCHS)"),
    ("sweep", {"search": {"workers": "choice(1, 2, 64)"}}, "search.workers", "reaches 64", "16"),
    ("sweep", {"search": {"epochs": "choice(1, '100000')"}}, "search.epochs", "reaches 100000", "1000"),
    ("sweep", {"search": {"image_size": "quniform(32, 2048, 32)"}}, "search.image_size", "reaches 2048",
     "1024"),
])
def test_a_spec_over_a_bound_is_refused_naming_field_value_and_bound(api, fake, kind, spec, field, shown,
                                                                      limit):
    answer = api().post("/v1/jobs", json={"kind": kind, "spec": spec})
    refused(answer, "over_limit", f"field {field!r}", shown, f"limit of {limit}")
    assert not fake.jobs


def test_bounds_are_the_operators_and_the_limit_itself_is_allowed(api, fake):
    client = api(max_epochs=5, max_workers=2, max_trials=3)
    over = client.post("/v1/jobs", json={"kind": "train", "spec": {"epochs": 6}})
    refused(over, "over_limit", "field 'epochs': 6 is over this server's limit of 5 (WALDO_JOBS_MAX_EPOCHS)")
    at_limit = {"epochs": 5, "workers": 2, "gpus_per_worker": 8, "image_size": 1024, "loader_workers": 16}
    assert sent_spec(fake, client.post("/v1/jobs", json={"kind": "train", "spec": at_limit}))["epochs"] == 5
    sweep = {"trials": 3, "epochs": 5, "search": {"epochs": "randint(1, 6)", "workers": "choice(1, 2)"}}
    assert sent_spec(fake, client.post("/v1/jobs", json={"kind": "sweep", "spec": sweep}))["trials"] == 3


# --- names and numbers the CLI would refuse ------------------------------------------------------
@pytest.mark.parametrize("kind, spec, words", [
    ("train", {"model": "nope"}, ["'model'", "nope"]),
    ("train", {"data": "nope"}, ["'data'", "nope"]),
    ("sweep", {"search": {"model": "choice(cnn, nope)"}}, ["search.model", "nope"]),
])
def test_unknown_model_and_data_set_names_are_refused_at_submit_time(api, fake, kind, spec, words):
    """Needs training.spec to know the names (training/spec/catalog.py, torch-free)."""
    refused(api().post("/v1/jobs", json={"kind": kind, "spec": spec}), "invalid_spec", *words)
    assert not fake.jobs


@pytest.mark.parametrize("kind, spec, words", [
    ("train", {"model": "cnn", "model_args": {"num_classes": 3}},
     ["'model_args'", "'num_classes' is set by the data", "drop it"]),
    ("train", {"model": "cnn", "model_args": {"in_channels": 2**62}}, ["'in_channels' is set by the data"]),
    ("train", {"model": "resnet18", "model_args": {"image_size": 32}}, ["'image_size' is set by the data"]),
    ("train", {"model": "cnn", "model_args": {"depth": 3}}, ["'depth' is not an argument of model 'cnn'"]),
    ("train", {"model": "alexnet", "model_args": {"dropout": 2**62}}, ["'dropout'", "from 0 to 1"]),
    ("train", {"model": "googlenet", "model_args": {"aux_logits": "yes"}}, ["true or false"]),
    ("sweep", {"model_args": {"num_classes": 3}, "search": {"lr": "uniform(0.1, 1)"}}, ["'num_classes'"]),
    ("sweep", {"search": {"model_args": "uniform(1, 2)"}}, ["'search'", "draws numbers"]),
])
def test_model_args_follow_the_clis_rule(api, fake, kind, spec, words):
    """The rule lives on TrainSpec (training.spec), so the API refuses what the CLI refuses:
    names the data decides, names the builder does not take, values out of bounds."""
    refused(api().post("/v1/jobs", json={"kind": kind, "spec": spec}), "invalid_spec", *words)
    assert not fake.jobs
    good = {"model": "googlenet", "model_args": {"aux_logits": True, "dropout": 0.3}}
    assert sent_spec(fake, api().post("/v1/jobs", json={"kind": "train", "spec": good}))["model_args"] == \
        good["model_args"]


@pytest.mark.parametrize("kind, spec, field", [
    ("train", '{"lr": 1e999}', "'lr'"),  # JSON has no inf; Python's parser makes one of this
    ("train", '{"lr": NaN}', "'lr'"),
    ("train", '{"weight_decay": -Infinity}', "'weight_decay'"),
    ("train", '{"model_args": {"dropout": [0.1, 1e999]}}', "'dropout[1]'"),
    ("sweep", '{"search": {"lr": "loguniform(1e-4, 1e999)"}}', "'search"),  # a string, parsed later
])
def test_non_finite_numbers_are_refused(api, fake, kind, spec, field):
    body = f'{{"kind": "{kind}", "spec": {spec}}}'
    answer = api().post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    refused(answer, "invalid_spec", field, "finite")
    assert not fake.jobs


# --- listing reads runs only from the server's MLflow -----------------------------------------------
def test_listing_never_opens_a_store_that_a_spec_names(api, fake, tmp_path):
    store = tmp_path / "spec.db"
    named = f"sqlite:///{store}"
    fake.add("waldo-train-a", metadata=waldo_meta(model="cnn", run_name="job-a", tracking_uri=named))
    fake.add("waldo-sweep-b", metadata=waldo_meta("sweep", run_name="job-b", tracking_uri=named))
    fake.add("waldo-export-c", metadata=waldo_meta("export", run="r1", tracking_uri=named))
    client = api(mlflow_ui_url="http://mlflow.example")
    assert len(client.get("/v1/jobs").json()["jobs"]) == 3
    assert client.get("/v1/jobs/waldo-train-a").status_code == 200
    assert not store.exists()
    assert list(tmp_path.iterdir()) == []


def test_listing_looks_runs_up_in_the_servers_mlflow_only(api, fake, opened, tmp_path):
    named = f"sqlite:///{tmp_path / 'spec.db'}"
    fake.add("waldo-train-a", metadata=waldo_meta(run_name="job-a", tracking_uri=named))
    fake.add("waldo-export-b", metadata=waldo_meta("export", run="r1", tracking_uri=named))
    fake.add("waldo-train-c", metadata=waldo_meta(run_name="x' OR name = 'y"))  # not a run name
    listed = api(tracking_uri="http://mlflow.internal:5000").get("/v1/jobs").json()["jobs"]
    assert opened and set(opened) == {"http://mlflow.internal:5000"}
    assert {j["id"]: j["mlflow_run_url"] for j in listed}["waldo-export-b"] == \
        "http://mlflow.internal:5000/#/runs/r1?workflowType=machine_learning"


# --- settings that do not validate: one line --------------------------------------------------------
@pytest.mark.parametrize("token, word", [(None, "is required"), ("tok3n", "is too short")])
def test_without_a_valid_token_the_app_says_so_in_one_line(monkeypatch, capsys, token, word):
    if token is None:
        monkeypatch.delenv("WALDO_JOBS_TOKEN", raising=False)
    else:
        monkeypatch.setenv("WALDO_JOBS_TOKEN", token)
    from services.jobs import __main__ as entry

    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as exited:
            create_app()  # as `uvicorn services.jobs.app:create_app --factory` calls it
        assert exited.value.code == 2
        assert entry.main([]) == 2  # as `python -m services.jobs` runs
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0] == lines[1], err
    assert lines[0].startswith(f"waldo-jobs: error: WALDO_JOBS_TOKEN: {word}")
    assert "Traceback" not in err and (token is None or token not in lines[0])


def test_the_entry_point_hands_the_app_to_one_serve_function(monkeypatch):
    from services.jobs import __main__ as entry

    monkeypatch.setenv("WALDO_JOBS_TOKEN", TOKEN)
    served = {}
    monkeypatch.setattr(entry, "serve", lambda app, **kw: served.update(kw, app=app))
    assert entry.main(["--host", "0.0.0.0", "--port", "8123", "--log-level", "warning"]) == 0
    assert served.pop("app").state.settings.token.get_secret_value() == TOKEN
    assert served == {"host": "0.0.0.0", "port": 8123, "log_level": "warning"}
