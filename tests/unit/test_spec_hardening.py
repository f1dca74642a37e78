"""Specs refuse what cannot work: nan and inf, booleans for numbers, sizes and seeds the code
cannot handle, oversized keyword arguments, YAML alias bombs, and names that no registry
holds, each as one line that names the field and what it accepts."""

from __future__ import annotations

import time
import tracemalloc

import pytest
import yaml

from training.errors import WaldoError
from training.spec import ExportSpec, SweepSpec, TrainSpec, build_spec, load_yaml
from training.spec.flags import spec_from_args as _spec_from_args
from waldo.cli import build_parser

NAN, INF = float("nan"), float("inf")


def refused(fields: dict, spec_cls=TrainSpec) -> str:
    """The one-line message that refuses `fields`."""
    with pytest.raises(WaldoError) as info:
        build_spec(spec_cls, None, fields)
    message = str(info.value)
    assert "\n" not in message
    return message


def spec_from_flags(*flags: str) -> TrainSpec:
    return _spec_from_args(build_parser().parse_args(["train", *flags]))


# --- nan and inf ----------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("lr", INF), ("lr", "inf"), ("weight_decay", INF), ("weight_decay", "Infinity"),
    ("cpus_per_worker", INF), ("gpus_per_worker", INF), ("weight_decay", NAN),
    ("gpus_per_worker", "nan"),
])
def test_train_floats_refuse_nan_and_inf(field, value):
    message = refused({field: value})
    assert f"'{field}'" in message and "finite number" in message, message


@pytest.mark.parametrize("field", ["atol", "max_drop"])
def test_export_floats_refuse_inf(field):
    message = refused({"run": "r", field: INF}, ExportSpec)
    assert f"'{field}'" in message and "finite number" in message, message


def test_a_yaml_inf_is_refused_like_the_flag(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("weight_decay: .inf\n")
    with pytest.raises(WaldoError, match="'weight_decay'.*finite number"):
        build_spec(TrainSpec, path)
    with pytest.raises(WaldoError, match="'lr'.*finite number"):
        spec_from_flags("--lr", "inf")


@pytest.mark.parametrize("field,args,where", [
    ("model_args", {"dropout": NAN}, "'dropout' is nan"),
    ("model_args", {"a": {"b": [1.0, INF]}}, "'a.b[1]' is inf"),
    ("data_args", {"empty_fraction": -INF}, "'empty_fraction' is -inf"),
])
def test_keyword_args_refuse_nan_and_inf_at_any_depth(field, args, where):
    message = refused({field: args})
    assert f"'{field}'" in message and where in message and "finite number" in message, message


# --- booleans are not numbers ---------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("epochs", True), ("batch_size", True), ("workers", True), ("seed", False),
    ("image_size", True), ("lr", True), ("loader_workers", True),
])
def test_booleans_are_refused_where_numbers_are_meant(field, value):
    message = refused({field: value})
    assert f"'{field}'" in message and "not a boolean" in message, message
    # Flags arrive as text, and are still read as numbers; booleans stay booleans.
    spec = spec_from_flags("--epochs", "3", "--lr", "1e-3", "--seed", "7", "--image-size", "64",
                           "--no-download", "--model", "googlenet", "--model-arg", "aux_logits=true")
    assert (spec.epochs, spec.lr, spec.seed, spec.image_size) == (3, 1e-3, 7, 64)
    assert spec.download is False and spec.model_args == {"aux_logits": True}


def test_booleans_are_refused_in_sweep_and_export_specs_too():
    assert "'trials'" in refused({"search": {"lr": "uniform(0.1,1)"}, "trials": True}, SweepSpec)
    assert "'atol'" in refused({"run": "r", "atol": True}, ExportSpec)


# --- sizes and seeds the code can handle ----------------------------------------------------
@pytest.mark.parametrize("field,bad,good", [
    ("image_size", 100_000, 2048), ("image_size", 2049, 32),
    ("seed", 2**32, 2**32 - 1), ("seed", -1, 0),
])
def test_image_size_and_seed_have_bounds(field, bad, good):
    message = refused({field: bad})
    assert f"'{field}'" in message and str(bad) in message, message
    assert getattr(build_spec(overrides={field: good}), field) == good


def test_the_bounds_are_in_the_help(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "at most 2048" in help_text and "4294967295" in help_text


def nested(depth: int) -> dict:
    """A mapping `depth` levels deep, the outer one counted."""
    value: dict = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"x": value}
    return value


def test_keyword_args_are_small_and_shallow():
    spec = build_spec(overrides={"data_args": nested(4), "model_args": {}})
    assert TrainSpec.model_validate(yaml.safe_load(spec.to_yaml())) == spec
    assert "at most 4" in refused({"model_args": nested(5)})
    assert "at most 64" in refused({"data_args": {f"k{i}": i for i in range(65)}})
    assert "at most 64" in refused({"model_args": {"k": list(range(64))}})  # 65 entries
    assert "at most 1024" in refused({"model_args": {"path": "x" * 2000}})
    assert "'model_args'" in refused({"model_args": {"a": {1: 2}}})  # keys are text


def test_a_refused_value_is_shown_short():
    message = refused({"model_args": {f"k{i}": "v" * 900 for i in range(65)}})
    assert len(message) < 600, message


# --- YAML alias bombs, recursion, depth, size -----------------------------------------------
BOMB = "model_args:\n  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))  # 9**10 values


def write(tmp_path, text: str, name: str = "spec.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_an_alias_bomb_is_refused_quickly_and_in_little_memory(tmp_path):
    path = write(tmp_path, BOMB)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(WaldoError) as info:
            build_spec(TrainSpec, path)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "aliases" in message and "10,000" in message and "spec.yaml" in message, message
    assert elapsed < 2 and peak < 20 * 2**20, (elapsed, peak)
    # An anchor merged into a few places is still fine.
    text = "model_args: &args {dropout: 0.2}\ndata_args:\n  <<: *args\n  noise: 0.1\n"
    assert load_yaml(write(tmp_path, text)) == {"model_args": {"dropout": 0.2},
                                                 "data_args": {"dropout": 0.2, "noise": 0.1}}


def test_a_bomb_in_a_model_arg_flag_is_refused_too():
    levels = ["&l0 [" + ", ".join(["x"] * 9) + "]"] + [
        f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    with pytest.raises(WaldoError, match="--model-arg.*aliases"):
        spec_from_flags("--model-arg", "k=[" + ", ".join(levels) + "]")


@pytest.mark.parametrize("text,expected", [
    ("a: &a [*a]\n", "contains itself"),
    ("epochs: " + "[" * 5000 + "]" * 5000 + "\n", "levels deep"),
    ("seed: " + "9" * 5000 + "\n", "cannot be read"),
])
def test_recursive_deep_and_unreadable_yaml_is_one_line(tmp_path, text, expected):
    with pytest.raises(WaldoError, match=expected) as info:
        load_yaml(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_oversized_and_binary_spec_files_are_refused(tmp_path):
    with pytest.raises(WaldoError, match="larger than 1 MiB"):
        load_yaml(write(tmp_path, "# " + "x" * (1 << 20) + "\n"))
    binary = tmp_path / "spec.bin"
    binary.write_bytes(b"\xff\xfe\x00epochs: 3")
    with pytest.raises(WaldoError, match="not UTF-8"):
        load_yaml(binary)
    with pytest.raises(WaldoError, match="cannot read"):
        load_yaml(tmp_path)


# --- names: the torch-free catalog ----------------------------------------------------------
def test_unknown_model_names_the_valid_ones_and_the_close_match():
    message = refused({"model": "resnet19"})
    assert "'model'" in message and "did you mean 'resnet18'" in message
    assert all(name in message for name in ("cnn", "lenet5", "vgg16", "googlenet"))


def test_unknown_data_names_the_valid_ones():
    message = refused({"data": "minst"})
    assert "'data'" in message and "did you mean 'mnist'" in message and "digits" in message


@pytest.mark.parametrize("fields,named", [
    ({"task": "localize"}, ["'mnist-5k'", "'classify'", "localization-digits"]),  # the default data
    ({"task": "classify", "data": "localization-digits"}, ["'localize'", "cifar10"]),
])
def test_data_must_fit_the_task(fields, named):
    message = refused(fields)
    assert "'data'" in message and all(name in message for name in named), message
    assert build_spec(overrides={"task": "localize", "data": "localization-folder"}).task == "localize"


def test_catalog_equals_the_registries():
    """The torch-free lists and the registries that build from them can never drift apart."""
    from training.data import _registry, list_datasets
    from training.models import list_models
    from training.spec.catalog import DATA_KINDS, DATASETS, MODEL_NAMES

    assert list(MODEL_NAMES) == list_models()
    assert sorted(DATASETS) == list_datasets()
    assert DATASETS == {name: module.task for name, module in _registry().items()}
    assert DATA_KINDS == {name: module.kind for name, module in _registry().items()}
