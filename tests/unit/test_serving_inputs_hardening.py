"""The inference service's parsers against hostile requests (issue 24), called directly: no
server, no model.

- every number of a tensor is checked as FP32 allows (a number by type, finite, within range)
  before an array is built, and the error names the input and the position of the first bad
  value: /v1 JSON (`serving.inputs.parse_json`), /v2 JSON and binary (`parse_body` + `to_items`),
  gRPC typed contents (`_parse_infer`), which also refuses values in a field the datatype does
  not use;
- JSON bodies are parsed within a budget of values, counted before parsing, and large ones one
  at a time;
- an output may be named once, its classification count is a sane integer, and the size of the
  answer is reckoned (at least what the encoders write) and capped before any work;
- client text echoed in messages is cut, and gRPC status messages are capped;
- two Authorization headers (or gRPC metadata entries) are refused.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from pydantic import SecretStr
from tritonclient.grpc import service_pb2 as pb

from httpapi.auth import Credentials, check_authorization, check_bearer
from httpapi.errors import ApiError, install, shown
from serving.inputs import check_answer_bytes, json_values, parse_json, parse_off_loop
from serving.modelcard import CLASSIFY_OUTPUTS, InputSpec, ModelCard
from serving.processing import postprocess
from serving.routes import predict
from serving.routes.v2 import parse_body, write_response
from serving.v2 import protocol
from serving.v2.grpc import MAX_MESSAGE_CHARS, _message, _parse_infer

CARD = ModelCard(name="tiny", task="classify", labels=[f"class {i}" for i in range(10)],
                 input=InputSpec(channels=1, height=2, width=3, mean=[0.0], std=[1.0]),
                 outputs=CLASSIFY_OUTPUTS)
SHAPE = [1, 1, 2, 3]  # one row of (C, H, W) = (1, 2, 3)
BUDGET = 10_000


def refused(call) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()
    return caught.value


# --- numbers: /v1 -------------------------------------------------------------------------------
def v1(value: str) -> bytes:
    """One (1, 2, 3) instance whose value at [0][1][2] is `value`, as JSON text."""
    return ('{"instances": [[[[0, 1.5, -2], [3, 4, ' + value + ']]]]}').encode()


@pytest.mark.parametrize("value, said", [
    ("1" * 300, "is 1.11111e+299"),  # numpy raised OverflowError on this: a 500
    ("9" * 5000, "is inf"),  # int() refuses more than 4,300 digits mid-parse
    ("1e39", "is 1e+39"),  # a float64, but no float32
    ("-3.5e38", "is -3.5e+38"),
    ("NaN", "is nan"),
    ("-Infinity", "is -inf"),
    ("true", "is true"),  # numpy takes True for 1.0
    ("null", "is null"),
    ('"7"', "is the string '7'"),  # numpy takes "7" for 7.0
    ("{}", "is an object"),
])
def test_v1_tensor_values_are_checked_and_the_first_bad_one_is_named(value, said):
    error = refused(lambda: parse_json(v1(value), CARD, 64, max_values=BUDGET))
    assert (error.status, error.code) == (422, "invalid_input")
    assert error.message.startswith(f"instances[0][0][1][2] {said}"), error.message


def test_v1_integers_in_range_and_floats_make_the_float32_array():
    (x,) = parse_json(v1("12345678901234567890"), CARD, 64, max_values=BUDGET)
    assert x.dtype == np.float32 and x.shape == (1, 2, 3)
    assert x.ravel().tolist() == [0, 1.5, -2, 3, 4, np.float32(12345678901234567890)]


def test_v1_shape_errors_still_say_the_shape():
    error = refused(lambda: parse_json(b'{"instances": [[[0, 1, 2]]]}', CARD, 64, max_values=BUDGET))
    assert error.status == 422 and "has shape [1, 3]; this model takes [1, 2, 3]" in error.message
    error = refused(lambda: parse_json(b'{"instances": [[[0, 1, 2], [3]]]}', CARD, 64, max_values=BUDGET))
    assert error.status == 422 and "not a rectangular array" in error.message


# --- numbers: /v2 over HTTP ---------------------------------------------------------------------
def v2_body(data, shape=SHAPE, outputs=None, **extra) -> bytes:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": data}], **extra}
    if outputs is not None:
        body["outputs"] = outputs
    return json.dumps(body).encode()


def v2_items(body: bytes, header: str | None = None):
    return protocol.to_items(parse_body(body, header, max_values=BUDGET), CARD, 64)


@pytest.mark.parametrize("value, said", [
    ("1" * 300, "is 1.11111e+299"), ("9" * 5000, "is inf"), ("3.5e38", "is 3.5e+38"), ("NaN", "is nan"),
    ("false", "is false"), ("null", "is null"), ('"x"', "is the string 'x'"), ('{"a": 1}', "is an object"),
])
def test_v2_json_values_are_checked_and_the_first_bad_one_is_named(value, said):
    for data in ("[0, 1, 2, 3, 4, V]", "[[0, 1, 2], [3, 4, V]]"):  # flat, or nested in row-major order
        body = v2_body("DATA").replace(b'"DATA"', data.replace("V", value).encode())
        error = refused(lambda body=body: v2_items(body))
        assert (error.status, error.code) == (400, "invalid_input")
        assert error.message == (f"input 'input': value 5 (index [0, 0, 1, 2] of shape {SHAPE}) {said}; "
                                 + error.message.split("; ", 1)[1]), error.message


def test_v2_binary_values_are_checked_too():
    x = np.zeros(SHAPE, np.float32)
    x[0, 0, 1, 0] = np.inf
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": SHAPE,
                                   "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    error = refused(lambda: v2_items(head + x.tobytes(), str(len(head))))
    assert error.status == 400
    assert "value 3 (index [0, 0, 1, 0] of shape [1, 1, 2, 3]) is inf" in error.message


def test_v2_good_values_make_the_float32_batch():
    (x,) = v2_items(v2_body([[0, 1, 2], [3, 4.5, 10**20]]))
    assert x.dtype == np.float32 and x.shape == tuple(SHAPE)
    assert x.ravel().tolist() == [0, 1, 2, 3, 4.5, np.float32(1e20)]


def test_v2_shape_integers_past_40_digits_are_not_integers():
    body = v2_body([0] * 6).replace(b"[1, 1, 2, 3]", b"[" + b"9" * 50 + b", 1, 2, 3]")
    error = refused(lambda: v2_items(body))
    assert error.status == 400 and "shape.0" in error.message


# --- numbers: gRPC typed contents ----------------------------------------------------------------
def grpc_request(field: str = "fp32_contents", values=(0.0,) * 6, datatype: str = "FP32",
                 name: str = "input", shape=SHAPE) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="tiny")
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return request


def test_grpc_fp32_contents_are_checked_with_the_position():
    error = refused(lambda: protocol.to_items(
        _parse_infer(grpc_request(values=[0, 1, 2, 3, float("nan"), 5])), CARD, 64))
    assert error.status == 400 and "input 'input': value 4 (index [0, 0, 1, 1] of shape" in error.message
    (x,) = protocol.to_items(_parse_infer(grpc_request(values=[0, 1, 2, 3, 4, 5])), CARD, 64)
    assert x.dtype == np.float32 and x.ravel().tolist() == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("field, values, datatype, name, accepted", [
    ("int64_contents", [0] * 6, "FP32", "input", "fp32_contents"),
    ("bool_contents", [True] * 6, "FP32", "input", "fp32_contents"),
    ("fp64_contents", [0.0] * 6, "FP32", "input", "fp32_contents"),
    ("fp32_contents", [0.0], "BYTES", "image", "bytes_contents"),  # a BYTES tensor of numbers
    ("int_contents", [1], "BYTES", "image", "bytes_contents"),
])
def test_grpc_values_in_a_field_the_datatype_does_not_use_are_refused(field, values, datatype, name,
                                                                      accepted):
    error = refused(lambda: _parse_infer(grpc_request(field, values, datatype, name, [len(values)])))
    assert error.status == 400
    assert f"input {name!r} is {datatype} but its values came in {field}" in error.message
    assert f"{datatype} values travel in {accepted} or raw_input_contents" in error.message


def test_grpc_values_in_raw_and_typed_contents_at_once_are_refused():
    request = grpc_request()
    request.raw_input_contents.append(np.zeros(SHAPE, np.float32).tobytes())
    error = refused(lambda: _parse_infer(request))
    assert error.status == 400 and "raw_input_contents and in contents (fp32_contents)" in error.message


def test_grpc_bytes_contents_are_read_no_further_than_the_shape_and_the_image_limit():
    many = grpc_request("bytes_contents", [b"x"] * 100_000, "BYTES", "image", [100_000, 1])
    error = refused(lambda: protocol.to_items(_parse_infer(many), CARD, 64))
    assert (error.status, error.code) == (413, "too_many")
    more = grpc_request("bytes_contents", [b"x"] * 100_000, "BYTES", "image", [2, 1])
    error = refused(lambda: protocol.to_items(_parse_infer(more), CARD, 64))
    assert error.status == 400 and "holds 2 elements but the data has more" in error.message


# --- the JSON budget -----------------------------------------------------------------------------
def test_json_values_are_counted_before_parsing_and_over_the_budget_is_413():
    assert json_values(b"[0,1,2]") == 4 and json_values(b'{"a":[{}]}') == 5  # an upper bound: 4 values
    for body in (v1("0").replace(b"0, 1.5", b"0" + b",0" * BUDGET + b", 1.5"),
                 b"[" + b"{}," * BUDGET + b"{}]"):
        error = refused(lambda body=body: parse_json(body, CARD, 64, max_values=BUDGET))
        assert (error.status, error.code) == (413, "too_large") and "the limit is 10000" in error.message
        error = refused(lambda body=body: parse_body(body, None, max_values=BUDGET))
        assert error.status == 413
    assert refused(lambda: parse_json(b"{nope", CARD, 64, max_values=BUDGET)).status == 400


def test_large_json_bodies_wait_for_a_slot_and_small_ones_do_not():
    async def scenario():
        slots = asyncio.Semaphore(1)
        await slots.acquire()  # a large body is being parsed
        small = await parse_off_loop(lambda: "small", size=2**20, json_size=2**20, slots=slots, timeout_s=0.1)
        binary = await parse_off_loop(lambda: "binary", size=16 * 2**20, json_size=100, slots=slots,
                                      timeout_s=0.1)
        with pytest.raises(ApiError) as caught:
            await parse_off_loop(lambda: "large", size=2**21, json_size=2**21, slots=slots, timeout_s=0.1)
        slots.release()
        large = await parse_off_loop(lambda: "large", size=2**21, json_size=2**21, slots=slots, timeout_s=0.1)
        return small, binary, caught.value, large, slots.locked()

    small, binary, error, large, locked = asyncio.run(scenario())
    assert (small, binary, large, locked) == ("small", "binary", "large", False)
    assert (error.status, error.code) == (503, "overloaded") and error.headers == {"Retry-After": "1"}


# --- outputs and the size of the answer ----------------------------------------------------------
def test_an_output_named_twice_is_refused():
    request = parse_body(v2_body([0] * 6, outputs=[{"name": "probabilities"}] * 2), None, max_values=BUDGET)
    error = refused(lambda: protocol.check_outputs(request, CARD))
    assert error.status == 400 and "'probabilities' is requested more than once" in error.message
    grpc = grpc_request()
    grpc.outputs.add(name="probabilities")
    grpc.outputs.add(name="probabilities")
    assert refused(lambda: protocol.check_outputs(_parse_infer(grpc), CARD)).status == 400


@pytest.mark.parametrize("count", [10**30, -1, True, "3", 2.5])
def test_the_classification_count_is_a_sane_integer_over_http(count):
    def check():
        body = v2_body([0] * 6, outputs=[{"name": "probabilities", "parameters": {"classification": count}}])
        protocol.check_outputs(parse_body(body, None, max_values=BUDGET), CARD)

    assert refused(check).status == 400


@pytest.mark.parametrize("kind, value", [("int64_param", -1), ("uint64_param", 2**64 - 1),
                                         ("bool_param", True), ("string_param", "3"), ("double_param", 3.0)])
def test_the_classification_count_is_a_sane_integer_over_grpc(kind, value):
    request = grpc_request()
    setattr(request.outputs.add(name="probabilities").parameters["classification"], kind, value)
    error = refused(lambda: protocol.check_outputs(_parse_infer(request), CARD))
    assert error.status == 400 and "classification" in error.message


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("classification", [0, 3, 1000])
def test_the_reckoned_answer_size_is_at_least_what_is_written(binary, classification):
    outputs = [{"name": "probabilities", "parameters": {"classification": classification}}]
    request = parse_body(v2_body([0] * 6, outputs=outputs, id="\u00e9" * 50,
                                 parameters={"binary_data_output": binary}), None, max_values=BUDGET)
    rows = 64
    logits = np.random.default_rng(0).normal(0, 30, (rows, 10)).astype(np.float32)
    logits[0, 0] = 1e-30
    written = write_response(protocol.InferResponse("tiny", "1", request.id,
                                                    protocol.encode(request, CARD, logits))).body
    reckoned = protocol.answer_bytes(request, CARD, rows)
    assert len(written) <= reckoned < 2 * len(written) + 2048
    assert protocol.rows_of([np.zeros((rows, 1, 2, 3), np.float32)]) == rows
    check_answer_bytes(reckoned, reckoned)
    error = refused(lambda: check_answer_bytes(reckoned, reckoned - 1))
    assert (error.status, error.code) == (413, "too_large") and "max_response_bytes" in error.message


@pytest.mark.parametrize("task, top_k", [("classify", 1), ("classify", 1000), ("localize", 5)])
def test_the_reckoned_v1_answer_size_is_at_least_what_is_written(task, top_k):
    card = CARD.model_copy(update={"task": task, "labels": ["\u00e9\"\n" * 5, *CARD.labels[1:]]})
    rows = 64
    out = np.random.default_rng(0).normal(0, 30, (rows, len(card.labels) + (5 if task == "localize" else 0)))
    results = postprocess(card, out.astype(np.float32), [(4096, 4096)] * rows, top_k=top_k)
    written = JSONResponse({"model": "m" * 64, "version": "12345", "task": task, "predictions": results}).body
    assert len(written) <= predict.answer_bytes(card, rows, top_k) < 3 * len(written)


# --- client text in messages ---------------------------------------------------------------------
def test_client_text_is_cut_in_messages():
    long = "n" * 1_000_000
    assert shown("short") == "'short'"
    assert shown(long) == f"{long[:64]!r}... (1000000 characters)"
    assert len(shown(list(range(10**6)))) < 100
    body = v2_body([0] * 6).replace(b'"input"', json.dumps(long).encode())
    error = refused(lambda: v2_items(body))
    assert error.status == 400 and len(error.message) < 300 and "(1000000 characters)" in error.message
    grpc = grpc_request(name=long)
    assert len(refused(lambda: protocol.to_items(_parse_infer(grpc), CARD, 64)).message) < 300
    assert len(refused(lambda: v2_items(v2_body([0] * 6, shape=[1] * 100_000))).message) < 300
    assert _message(long).endswith("... (message cut from 1000000 characters)")
    assert len(_message(long)) < MAX_MESSAGE_CHARS + 100 and _message("fine") == "fine"


def test_an_id_that_cannot_be_utf8_is_refused():
    body = v2_body([0] * 6).replace(b'"inputs"', b'"id": "\\ud800", "inputs"')
    assert refused(lambda: parse_body(body, None, max_values=BUDGET)).status == 400


# --- two Authorization headers ---------------------------------------------------------------------
def test_two_authorization_values_are_refused():
    token = SecretStr("the-token")
    check_authorization(token, ["Bearer the-token"])
    check_authorization(token, "Bearer the-token")
    error = refused(lambda: check_authorization(token, ["Bearer the-token", "Bearer other"]))
    assert error.status == 400 and "2 Authorization headers" in error.message
    assert refused(lambda: check_authorization(token, [])).status == 401

    app = FastAPI()
    install(app)

    @app.get("/guarded")
    async def guarded(credentials: Credentials) -> dict:
        check_bearer(token, credentials)
        return {}

    with TestClient(app) as client:
        assert client.get("/guarded", headers={"Authorization": "Bearer the-token"}).status_code == 200
        both = client.get("/guarded", headers=[("Authorization", "Bearer the-token"),
                                               ("Authorization", "Bearer other")])
        assert both.status_code == 400 and "2 Authorization headers" in both.json()["error"]["message"]
