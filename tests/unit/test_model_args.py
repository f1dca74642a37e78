"""One rule for model arguments (issue 24, item 1), at every door: a spec (flags, a YAML file, a
jobs API body) refuses the builder arguments the data decides, names the builder does not take,
and values out of bounds, each as one line. The jobs API's side is in
tests/unit/test_jobs_api_hardening.py (it has the app's fixtures)."""

from __future__ import annotations

import inspect

import pytest

from training.errors import WaldoError
from training.spec import SweepSpec, TrainSpec, build_spec
from training.spec.catalog import DATA_DECIDED, LOCALIZER_ARGS, MODEL_ARGS, MODEL_NAMES
from waldo.cli import main


def refused(fields: dict, spec_cls=TrainSpec) -> str:
    with pytest.raises(WaldoError) as info:
        build_spec(spec_cls, None, fields)
    message = str(info.value)
    assert "\n" not in message and "'model_args'" in message, message
    return message


def keyword_only(function) -> dict[str, inspect.Parameter]:
    return {name: p for name, p in inspect.signature(function).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def test_the_torch_free_table_is_the_builders_signatures():
    """training.spec.catalog.MODEL_ARGS (what the spec checks, torch-free) can never drift from what
    the builders take: each builder's keyword-only parameters, less those the data decides, with
    a rule of the right kind for each default."""
    from training.models import create_localizer, get_model_info, list_models

    assert set(MODEL_ARGS) == set(MODEL_NAMES) == set(list_models())
    for name in MODEL_NAMES:
        params = keyword_only(get_model_info(name).builder)
        assert set(DATA_DECIDED) & set(params) <= set(DATA_DECIDED)
        assert {"num_classes", "in_channels"} <= set(params), name
        takes = {k: p for k, p in params.items() if k not in DATA_DECIDED}
        assert set(takes) == set(MODEL_ARGS[name]), name
        for arg, rule in MODEL_ARGS[name].items():
            assert isinstance(takes[arg].default, rule.kind), (name, arg)
            assert rule.problem(takes[arg].default) is None, (name, arg)  # the default is allowed
    head = {k for k in keyword_only(create_localizer) if k not in DATA_DECIDED}
    assert head == set(LOCALIZER_ARGS)


@pytest.mark.parametrize("name, where", [
    ("num_classes", "its number of classes"), ("in_channels", "channels"), ("image_size", "--image-size"),
])
@pytest.mark.parametrize("model", ["cnn", "resnet18", "googlenet"])
def test_arguments_the_data_decides_are_refused_saying_where_they_come_from(model, name, where):
    message = refused({"model": model, "model_args": {name: 3}})
    assert f"'{name}' is set by the data" in message and where in message and "drop it" in message


def test_an_unknown_model_still_gets_the_data_decided_names_refused():
    message = refused({"model": "nope", "model_args": {"num_classes": 3}})
    assert "'model'" in message and "'num_classes' is set by the data" in message


@pytest.mark.parametrize("model, args, words", [
    ("cnn", {"dropout": 0.5}, ["'dropout' is not an argument of model 'cnn'", "it takes none"]),
    ("alexnet", {"dropot": 0.5}, ["did you mean 'dropout'", "it takes dropout"]),
    ("resnet18", {"aux_logits": True}, ["'aux_logits'", "'resnet18'"]),
    ("lenet5", {"x": {"a": [1, 2]}}, ["'x' is not an argument"]),
    ("googlenet", {"hidden": 64}, ["'hidden' is not an argument"]),  # a localizer's, not a classifier's
])
def test_names_the_builder_does_not_take_are_refused(model, args, words):
    message = refused({"model": model, "model_args": args})
    assert all(word in message for word in words), message


@pytest.mark.parametrize("model, args, words", [
    ("alexnet", {"dropout": 2**62}, ["'dropout' is 4611686018427387904", "a number from 0 to 1"]),
    ("alexnet", {"dropout": -0.1}, ["from 0 to 1"]),
    ("alexnet", {"dropout": "0.5"}, ["'dropout' is '0.5'", "a number"]),
    ("googlenet", {"aux_logits": 1}, ["'aux_logits' is 1", "true or false"]),
    ("vgg11", {"batch_norm": "yes"}, ["true or false"]),
    ("vgg16", {"dropout": True}, ["'dropout' is True"]),
])
def test_values_are_bounded(model, args, words):
    message = refused({"model": model, "model_args": args})
    assert all(word in message for word in words), message


def test_a_localizers_head_width_is_bounded_and_only_for_localizers():
    box = {"task": "localize", "data": "localization-digits", "model": "cnn"}
    assert build_spec(overrides={**box, "model_args": {"hidden": 64}}).model_args == {"hidden": 64}
    assert "an integer from 1 to 16384" in refused({**box, "model_args": {"hidden": 2**40}})
    assert "an integer" in refused({**box, "model_args": {"hidden": 1.5}})


def test_every_problem_is_named_in_one_line():
    message = refused({"model": "alexnet", "model_args": {"num_classes": 3, "droput": 1, "dropout": 9}})
    assert "'num_classes'" in message and "'droput'" in message and "'dropout' is 9" in message


def test_what_the_builders_take_is_accepted_and_builds():
    from training.models import create_model

    for model, args in [("alexnet", {"dropout": 1.0}), ("googlenet", {"aux_logits": True, "dropout": 0,
                                                                      "transform_input": True}),
                        ("vgg11", {"batch_norm": True, "dropout": 0.0})]:
        spec = build_spec(overrides={"model": model, "model_args": args})
        assert spec.model_args == args
        net = create_model(model, num_classes=2, in_channels=3, **spec.model_args)
        assert net.num_classes == 2


def test_a_sweep_checks_the_base_and_every_choice():
    assert "'num_classes'" in refused({"model_args": {"num_classes": 3}, "search": {"lr": "uniform(0.1, 1)"}},
                                      SweepSpec)
    with pytest.raises(WaldoError, match="draws numbers, and model_args is no number"):
        build_spec(SweepSpec, None, {"search": {"model_args": "uniform(1, 2)"}})


# --- the CLI and a spec file: one line, exit 2 -----------------------------------------------
@pytest.mark.parametrize("argv, words", [
    (["train", "--model", "cnn", "--model-arg", "num_classes=3"], ["'num_classes' is set by the data"]),
    (["train", "--model", "resnet18", "--model-arg", "in_channels=1"], ["'in_channels' is set by the data"]),
    (["train", "--model", "cnn", "--model-arg", "image_size=32"], ["'image_size'", "--image-size"]),
    (["train", "--model", "alexnet", "--model-arg", "dropout=2"], ["'dropout' is 2", "from 0 to 1"]),
    (["train", "--config", "spec.yaml"], ["'num_classes' is set by the data"]),
    (["compare", "googlenet", "cnn", "--model-arg", "aux_logits=true"],
     ["'aux_logits' is not an argument of model 'cnn'"]),
    (["jobs", "--url", "http://127.0.0.1:9", "submit", "train", "--model-arg", "num_classes=3"],
     ["'num_classes' is set by the data"]),  # refused before the jobs API is dialled
])
def test_the_cli_refuses_them_in_one_line_with_exit_2(in_tmp, capsys, argv, words):
    (in_tmp / "spec.yaml").write_text("model: cnn\nmodel_args:\n  num_classes: 3\n")
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(word in lines[0] for word in words), lines[0]
    assert not (in_tmp / "mlflow.db").exists() and not (in_tmp / "waldo_runs").exists()
