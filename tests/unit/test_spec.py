"""TrainSpec: defaults, one validation for YAML and flags, useful errors, MLflow params."""

from __future__ import annotations

import re

import pydantic
import pytest
import yaml

from training.errors import WaldoError
from training.spec import TrainSpec, build_spec, load_yaml
from training.spec.flags import spec_from_args as _spec_from_args
from waldo.cli import build_parser


def spec_from_flags(*flags: str) -> TrainSpec:
    """What `waldo train FLAGS...` would hand to train()."""
    return _spec_from_args(build_parser().parse_args(["train", *flags]))


def write_yaml(tmp_path, data: dict | str, name: str = "spec.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_defaults():
    spec = TrainSpec()
    assert (spec.task, spec.model, spec.data) == ("classify", "cnn", "mnist-5k")
    # The declared defaults are mnist-5k's (digits); photos change epochs and batch size
    # (training.spec.recipe.RECIPE_DEFAULTS).
    assert (spec.epochs, spec.lr, spec.batch_size, spec.optimizer) == (100, 3e-3, 64, "adam")
    assert (TrainSpec(data="folder").epochs, TrainSpec(data="folder").batch_size) == (30, 32)
    assert (spec.lr_schedule, spec.precision, spec.accelerator) == ("cosine", "32", "auto")
    assert spec.model_args == {} and spec.image_size is None and spec.data_dir is None
    assert spec.experiment == "waldo" and spec.tracking_uri is None and spec.seed == 0
    assert spec.progress_bar is None and spec.download is True  # None: a bar on a terminal only


def test_no_flags_is_the_default_spec():
    assert spec_from_flags() == TrainSpec()
    assert build_spec() == TrainSpec()


def test_spec_is_frozen():
    with pytest.raises(pydantic.ValidationError):
        TrainSpec().epochs = 3


FIELDS = {
    "model": "googlenet", "data": "digits", "epochs": 3, "batch_size": 32, "optimizer": "sgd",
    "lr": 0.01, "momentum": 0.8, "weight_decay": 0.0001, "lr_schedule": "step",
    "lr_step_size": 2, "lr_gamma": 0.5, "image_size": 32, "download": False,
    "val_fraction": 0.2, "seed": 7, "experiment": "exp", "progress_bar": False,
    "model_args": {"aux_logits": True},
}
FLAGS = [
    "--model", "googlenet", "--data", "digits", "--epochs", "3", "--batch-size", "32",
    "--optimizer", "sgd", "--lr", "0.01", "--momentum", "0.8", "--weight-decay", "0.0001",
    "--lr-schedule", "step", "--lr-step-size", "2", "--lr-gamma", "0.5", "--image-size", "32",
    "--no-download", "--val-fraction", "0.2", "--seed", "7", "--experiment", "exp",
    "--no-progress-bar", "--model-arg", "aux_logits=true",
]


def test_yaml_and_flags_build_the_same_spec(tmp_path):
    from_yaml = build_spec(TrainSpec, write_yaml(tmp_path, FIELDS))
    from_flags = spec_from_flags(*FLAGS)
    assert from_yaml == from_flags
    assert from_yaml != TrainSpec()
    assert from_flags.model_dump() == {**TrainSpec().model_dump(), **FIELDS}
    # --config through the CLI gives the same object again.
    assert spec_from_flags("--config", str(write_yaml(tmp_path, FIELDS))) == from_yaml


def test_flags_override_the_file(tmp_path):
    path = write_yaml(tmp_path, {"epochs": 3, "model": "mlp"})
    spec = spec_from_flags("--config", str(path), "--epochs", "5")
    assert (spec.epochs, spec.model) == (5, "mlp")
    assert build_spec(TrainSpec, path, {"epochs": 5}) == spec


@pytest.mark.parametrize("yaml_text,flags", [
    ("precision: 32\n", ["--precision", "32"]),
    ("precision: bf16-mixed\n", ["--precision", "bf16-mixed"]),
    ("lr: 1e-3\n", ["--lr", "1e-3"]),
    ("epochs: 2\n", ["--epochs", "2"]),
])
def test_yaml_scalars_mean_what_the_same_flag_means(tmp_path, yaml_text, flags):
    """A value written naturally in YAML (`precision: 32` is an int there) must be accepted
    exactly when the same text as a flag is."""
    assert build_spec(TrainSpec, write_yaml(tmp_path, yaml_text)) == spec_from_flags(*flags)


def test_misspelled_field_names_it_and_the_close_match(tmp_path):
    with pytest.raises(WaldoError) as exc:
        build_spec(TrainSpec, write_yaml(tmp_path, {"epoch": 3}))
    message = str(exc.value)
    assert "'epoch'" in message and "did you mean 'epochs'" in message
    assert "\n" not in message


def test_misspelled_override_gives_the_same_error():
    with pytest.raises(WaldoError, match="did you mean 'batch_size'"):
        build_spec(overrides={"batchsize": 3})


@pytest.mark.parametrize("value", [-3, 0, "-3"])
def test_non_positive_epochs_is_an_error(value):
    with pytest.raises(WaldoError) as exc:
        build_spec(overrides={"epochs": value})
    assert "'epochs'" in str(exc.value) and str(value) in str(exc.value)


@pytest.mark.parametrize("field,value", [
    ("optimizer", "rmsprop"), ("val_fraction", 1.5), ("lr", 0), ("lr_schedule", "linear"),
])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(WaldoError) as exc:
        build_spec(overrides={field: value})
    assert repr(field) in str(exc.value) and str(value) in str(exc.value)


def test_to_params_flattens_model_args():
    spec = TrainSpec(model="googlenet", model_args={"aux_logits": True, "dropout": 0.3})
    params = spec.to_params()
    assert params["model_args.aux_logits"] == "True"
    assert params["model_args.dropout"] == "0.3"
    assert "model_args" not in params
    assert all(isinstance(v, str) for v in params.values())
    assert params["model"] == "googlenet" and params["epochs"] == str(spec.epochs)
    # Every scalar field is a param of its own; every mapping field is spread out by key.
    dict_fields = {k for k, v in spec.model_dump().items() if isinstance(v, dict)}
    assert "model_args" in dict_fields
    flattened = {f"{k}.{sub}" for k in dict_fields for sub in getattr(spec, k)}
    assert set(params) == (set(TrainSpec.model_fields) - dict_fields) | flattened


def test_yaml_round_trip():
    spec = TrainSpec(model="lenet5", epochs=2, lr=0.01, data_args={"k": [1, 2]},
                     image_size=32, tracking_uri="http://127.0.0.1:5000")
    assert TrainSpec.model_validate(yaml.safe_load(spec.to_yaml())) == spec


def test_load_yaml_errors(tmp_path):
    with pytest.raises(WaldoError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    with pytest.raises(WaldoError, match="mapping"):
        load_yaml(write_yaml(tmp_path, "- a\n- b\n"))
    with pytest.raises(WaldoError, match="not valid YAML"):
        load_yaml(write_yaml(tmp_path, "epochs: [3\n"))
    assert load_yaml(write_yaml(tmp_path, "")) == {}


# --- publish (was `register`), and the export spec's validators -----------------------------
@pytest.mark.parametrize("flag", ["--publish", "--register"])
def test_publish_flag_and_its_old_name(flag):
    spec = spec_from_flags("--export", flag)
    assert spec.publish is True and spec.exports
    assert "register" not in TrainSpec.model_fields  # no field shadows ABCMeta.register


def test_register_key_still_accepted_in_files_and_bodies(tmp_path):
    from training.spec import ExportSpec, SweepSpec

    assert build_spec(TrainSpec, write_yaml(tmp_path, {"register": True})).publish is True
    assert build_spec(ExportSpec, None, {"run": "r", "register": True}).registers
    assert SweepSpec(search={"lr": "uniform(0,1)"}).publish is False  # a plain default


@pytest.mark.parametrize("fields,expected", [
    ({"opset": 17}, ["opset", "17", "18 to 23"]),
    ({"opset": 99}, ["opset", "99"]),
    ({"name": "../etc"}, ["name", "'../etc'", "letters, digits"]),
    ({"alias": "latest"}, ["alias", "reserved"]),
    ({"alias": "v2"}, ["alias", "reserved"]),
    ({"alias": "a b"}, ["alias", "letters, digits"]),
    ({"atol": -1}, ["atol"]),
    ({"max_drop": -0.1}, ["max_drop"]),
    ({"precision": "int4"}, ["precision", "fp32", "int8"]),
    ({"checkpoint": "x.ckpt"}, ["exactly one of run"]),
])
def test_export_spec_refuses_bad_values_naming_the_field(fields, expected):
    from training.spec import ExportSpec

    with pytest.raises(WaldoError) as info:
        build_spec(ExportSpec, None, {"run": "r", **fields})
    message = str(info.value)
    assert all(part in message for part in expected), message


def test_train_spec_checks_the_alias_too():
    with pytest.raises(WaldoError, match="alias.*reserved"):
        build_spec(TrainSpec, None, {"alias": "V3"})


@pytest.mark.parametrize("fields,named", [
    ({"run": "r", "name": "cnn\n"}, "name"),  # `$` would match before a final newline
    ({"run": "r", "alias": "prod\n"}, "alias"),
])
def test_names_with_a_trailing_newline_are_refused(fields, named):
    from training.spec import ExportSpec

    with pytest.raises(WaldoError, match=f"'{named}'"):
        build_spec(ExportSpec, None, fields)


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "x" * 101])
def test_run_names_cannot_leave_the_storage_folder(name):
    with pytest.raises(WaldoError, match="'run_name'.*invalid run name"):
        build_spec(TrainSpec, None, {"run_name": name})


@pytest.mark.parametrize("flag,expected", [("--publish", True), ("--no-publish", False),
                                           ("--no-register", False)])
def test_register_in_a_file_and_a_publish_flag_together(tmp_path, flag, expected):
    path = write_yaml(tmp_path, {"register": True, "export": True})
    assert spec_from_flags("--config", str(path), flag).publish is expected
    assert spec_from_flags("--config", str(path)).publish is True


@pytest.mark.parametrize("given, workers, max_workers", [("2-4", 2, 4), ("1-1", 1, 1), (3, 3, None),
                                                          ("3", 3, None)])
def test_workers_take_a_count_or_an_elastic_range(given, workers, max_workers):
    spec = TrainSpec(workers=given)
    assert (spec.workers, spec.max_workers) == (workers, max_workers)


@pytest.mark.parametrize("given, message", [("4-2", "1 <= MIN <= MAX"), ("0-2", "1 <= MIN <= MAX"),
                                            ("two-4", "a count (2) or a range MIN-MAX")])
def test_a_bad_elastic_range_is_refused(given, message):
    with pytest.raises(pydantic.ValidationError, match=re.escape(message)):
        TrainSpec(workers=given)
