"""The rules each spec field declares (training.spec.Rules) and what is built from them: the jobs
API's admission (roots, server fields, bounds), a sweep's searchable fields, `--resume`, and the
typed request body of the jobs API's OpenAPI document.

The tests iterate the declarations, so a field declared tomorrow is covered without a new test;
and a text field that looks like a location must say whether it is one.
"""

from __future__ import annotations

import json
import os
import re
import types
import typing
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError
from support import FakeJobSubmission

from services.jobs.app import create_app
from services.jobs.ray_jobs import RayJobs
from services.jobs.settings import JobsSettings
from training.spec import JOB_ENV, JOB_SPECS, DataSpec, Rules, SweepSpec, TrainSpec, fields_with, rules_of
from training.spec.fields import Root
from training.spec.search import SEARCHABLE
from waldo.cli import main

TOKEN = "a-token-of-sufficient-length"
SPECS: list[type[BaseModel]] = [*JOB_SPECS.values(), DataSpec]
# A text field whose name or description says any of these is taken to be a location.
LOCATION_WORDS = re.compile(r"dir|path|file|folder|storage|output|checkpoint|\buri\b|url|address",
                            re.IGNORECASE)


def _takes_text(annotation) -> bool:
    if annotation is str:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_takes_text(arg) for arg in typing.get_args(annotation))
    return False


def _every_field():
    return [(spec_cls, name) for spec_cls in SPECS for name in spec_cls.model_fields]


# --- the declarations ----------------------------------------------------------------------------
@pytest.mark.parametrize("spec_cls, name", _every_field(),
                         ids=[f"{c.__name__}.{n}" for c, n in _every_field()])
def test_a_text_field_that_looks_like_a_location_says_whether_it_is_one(spec_cls, name):
    field = spec_cls.model_fields[name]
    rules = rules_of(spec_cls, name)
    if _takes_text(field.annotation) and LOCATION_WORDS.search(f"{name} {field.description or ''}"):
        assert rules.kind in ("location", "name"), (
            f"{spec_cls.__name__}.{name} looks like a location: declare Rules(kind='location', "
            "root=...) (or server=...), or Rules(kind='name') if it names no file")
    if rules.kind == "location":
        assert rules.root is not None or rules.server is not None


def test_a_location_without_a_root_cannot_be_declared():
    with pytest.raises(ValueError, match="root"):
        Rules(kind="location")
    with pytest.raises(ValueError, match="only a location"):
        Rules(root="data")


def test_every_rule_names_a_setting_of_the_jobs_api():
    settings = JobsSettings.model_fields
    for spec_cls in SPECS:
        for name in spec_cls.model_fields:
            rules = rules_of(spec_cls, name)
            for setting in (rules.server, rules.bound, rules.root and f"{rules.root}_roots"):
                assert setting is None or setting in settings, (spec_cls.__name__, name, setting)


def test_the_rules_are_in_the_json_schema():
    for spec_cls in JOB_SPECS.values():
        properties = spec_cls.model_json_schema()["properties"]
        for name in spec_cls.model_fields:
            shown = rules_of(spec_cls, name).shown()
            assert properties[name].get("x-waldo", {}) == shown, name


def test_data_spec_shares_the_declarations_of_train_spec():
    for name, field in DataSpec.model_fields.items():
        assert repr(TrainSpec.model_fields[name]) == repr(field), name  # one declaration: type, default, help
    data = TrainSpec(data="cifar10", data_dir="/d", image_size=32).data_spec()
    assert (data.name, data.dir, data.batch_size) == ("cifar10", "/d", TrainSpec(data="cifar10").batch_size)
    assert DataSpec(task="classify", name="cifar10") == data.model_copy(update={"data_dir": None,
                                                                               "image_size": None})


# --- admission, built from the declarations ------------------------------------------------------
@pytest.fixture
def fake() -> FakeJobSubmission:
    return FakeJobSubmission()


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, str]:
    base = Path(os.path.realpath(tmp_path))
    made = {}
    for root in typing.get_args(Root):
        (base / root).mkdir()
        made[root] = str(base / root)
    return made


@pytest.fixture
def client(fake, roots):
    settings = JobsSettings(token=TOKEN, ray_address="http://ray-head.invalid:8265",
                            **{f"{root}_roots": path for root, path in roots.items()})
    app = create_app(settings)
    app.state.jobs = RayJobs(settings, connect=lambda address: fake)
    with TestClient(app, raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {TOKEN}"
        yield c


BASES = [{}, {"run": "0123456789abcdef0123456789abcdef"}, {"name": "cnn", "version": "1"},
         {"search": {"lr": "uniform(0.1, 1)"}},
         {"workers": 1}, {"workers": 1, "search": {"lr": "uniform(0.1, 1)"}}]


def valid_with(spec_cls, fields: dict, roots: dict[str, str] | None = None) -> dict:
    """The smallest spec of `spec_cls` that holds `fields` and validates; with `roots`, also a
    predict job's, whose required locations lie under them."""
    predict = [{"model": "models:/cnn@production", "sources": [f"{roots['data']}/images"],
                "output": f"{roots['storage']}/scores"}] if roots else []
    for base in BASES + predict:
        try:
            spec_cls.model_validate({**base, **fields})
            return {**base, **fields}
        except ValidationError:
            continue
    raise AssertionError(f"no valid {spec_cls.__name__} holds {fields}")


def _declared(rule: str):
    return [(kind, name, rules) for kind, spec_cls in JOB_SPECS.items()
            for name, rules in fields_with(spec_cls, rule).items()]


def _sent(fake, answer) -> dict:
    assert answer.status_code == 201, answer.text
    return json.loads(fake.jobs[answer.json()["id"]].runtime_env["env_vars"][JOB_ENV])["spec"]


@pytest.mark.parametrize("kind, name, rules", _declared("root"), ids=lambda v: getattr(v, "root", v))
def test_every_located_field_is_refused_outside_its_root_and_normalized_inside(client, fake, roots,
                                                                                kind, name, rules):
    spec_cls = JOB_SPECS[kind]
    listed = typing.get_origin(spec_cls.model_fields[name].annotation) is list  # a predict job's sources

    def value(location: str):
        return [f"{roots[rules.root]}/fine", location] if listed else location

    for outside in ("/etc/passwd", f"{roots[rules.root]}/../elsewhere", "relative/path",
                    *(f"{path}/x" for root, path in roots.items() if root != rules.root)):
        answer = client.post("/v1/jobs", json={"kind": kind, "spec": valid_with(
            spec_cls, {name: value(outside)}, roots)})
        assert answer.status_code == 422, (name, outside, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "path_not_allowed" and f"field {name!r}" in error["message"], error
    assert not fake.jobs
    inside = valid_with(spec_cls, {name: value(f"{roots[rules.root]}/a/../b/")}, roots)
    assert _sent(fake, client.post("/v1/jobs", json={"kind": kind, "spec": inside}))[name] == \
        value(f"{roots[rules.root]}/b")


@pytest.mark.parametrize("kind, name, rules", _declared("server"), ids=lambda v: getattr(v, "server", v))
def test_every_server_field_is_refused(client, fake, roots, kind, name, rules):
    answer = client.post("/v1/jobs", json={"kind": kind, "spec": valid_with(JOB_SPECS[kind],
                                                                             {name: "http://x:1"}, roots)})
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] == "server_field" and f"field {name!r}" in error["message"]
    assert f"WALDO_JOBS_{rules.server.upper()}" in error["message"]
    assert not fake.jobs


@pytest.mark.parametrize("kind, name, rules", _declared("bound"), ids=lambda v: getattr(v, "bound", v))
def test_every_bounded_field_is_refused_over_its_bound_and_taken_at_it(client, fake, roots, kind, name,
                                                                       rules):
    limit = getattr(JobsSettings(token=TOKEN), rules.bound)
    over = valid_with(JOB_SPECS[kind], {name: limit + 1}, roots)
    answer = client.post("/v1/jobs", json={"kind": kind, "spec": over})
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "over_limit", answer.text
    assert f"field {name!r}" in answer.json()["error"]["message"]
    assert not fake.jobs
    at = valid_with(JOB_SPECS[kind], {name: limit}, roots)
    assert _sent(fake, client.post("/v1/jobs", json={"kind": kind, "spec": at}))[name] == limit


# --- a sweep's search, and --resume --------------------------------------------------------------
def test_a_sweep_searches_exactly_the_fields_that_allow_it():
    assert SEARCHABLE == set(fields_with(TrainSpec, "searchable", True))
    refused = set(TrainSpec.model_fields) - SEARCHABLE
    assert {"data_dir", "storage", "tracking_uri", "ray_address", "weights", "init_from"} <= refused
    for name in refused:
        with pytest.raises(ValidationError, match=f"unknown search parameter {name!r}"):
            SweepSpec(search={name: "choice(1, 2)"})
    for name in ("lr", "batch_size", "epochs", "augment"):
        assert name in SweepSpec(search={name: "choice(1, 2)"}).search


def test_resume_takes_only_the_fields_that_say_so(capsys):
    keeps = fields_with(TrainSpec, "resume")
    assert set(keeps) == {"storage", "tracking_uri", "ray_address"}
    assert main(["train", "--resume", "job-1", "--epochs", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "(got --epochs)" in err
    for name in keeps:
        assert "--" + name.replace("_", "-") in err


# --- the typed body in the OpenAPI document ------------------------------------------------------
def test_the_openapi_document_has_each_specs_schema_in_the_request_body(client):
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    body = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    jobs = [schemas[ref["$ref"].rsplit("/", 1)[1]] for ref in body["oneOf"]]
    assert body["discriminator"]["propertyName"] == "kind"
    by_kind = {job["properties"]["kind"]["const"]: job["properties"]["spec"]["$ref"].rsplit("/", 1)[1]
               for job in jobs}
    assert by_kind == {kind: spec_cls.__name__ for kind, spec_cls in JOB_SPECS.items()}
    for spec_cls in JOB_SPECS.values():
        assert set(schemas[spec_cls.__name__]["properties"]) == set(spec_cls.model_fields)
    answer = doc["paths"]["/v1/jobs"]["post"]["responses"]["201"]["content"]["application/json"]
    assert answer["schema"]["$ref"].endswith("/Job")
