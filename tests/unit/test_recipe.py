"""The training recipe without a Trainer: defaults per task and data, per-image augmentation,
the batched affine for digits, mixup and cutmix targets, and label smoothing. Runs through
`train()` with the recipe on are in tests/integration/test_recipe_training.py."""

from __future__ import annotations

import pytest
import torch
from support.tasks import classification_task, digits_module

from training.data.augment import Augmented, per_image_transform, random_affine
from training.spec import SweepSpec, TrainSpec
from training.spec.catalog import DATA_KINDS
from training.spec.recipe import DEFAULT_KIND, RECIPE_DEFAULTS, VARYING
from waldo.cli import main


# --- defaults per task and data kind ----------------------------------------------------------
@pytest.mark.parametrize("fields, kind", [
    ({}, ("classify", "digits")),
    ({"data": "folder"}, ("classify", "photos")),
    ({"task": "localize", "data": "localization-digits"}, ("localize", "digits")),
    ({"task": "localize", "data": "localization-folder"}, ("localize", "photos")),
])
def test_left_out_recipe_fields_take_the_defaults_of_their_task_and_data(fields, kind):
    spec = TrainSpec(**fields)
    for name, value in RECIPE_DEFAULTS[kind].items():
        assert getattr(spec, name) == value
        assert spec.to_params()[name] == str(value)  # the run's params show what was used


def test_a_given_recipe_value_wins_over_the_default_also_when_it_is_falsy():
    assert TrainSpec(augment="none").augment == "none"
    assert TrainSpec(data="folder", label_smoothing=0).label_smoothing == 0
    assert TrainSpec(epochs=5).epochs == 5
    assert TrainSpec.model_validate({"ema_decay": None}).ema_decay is None  # YAML null: off
    assert TrainSpec().ema_decay == RECIPE_DEFAULTS[("classify", "digits")]["ema_decay"]


def test_the_declared_defaults_are_the_ones_used_for_the_default_task_and_data():
    declared = {name: field.get_default(call_default_factory=True)
                for name, field in TrainSpec.model_fields.items()}
    assert (declared["task"], DATA_KINDS[declared["data"]]) == DEFAULT_KIND
    assert TrainSpec().model_dump() == declared  # nothing filled in differs from the declaration
    for name in VARYING:
        assert declared[name] == RECIPE_DEFAULTS[DEFAULT_KIND][name]
    for kind, row in RECIPE_DEFAULTS.items():  # the other rows hold only what they change
        if kind != DEFAULT_KIND:
            assert row and all(declared[name] != value for name, value in row.items()), kind


# One data set of each task and kind of pictures.
EXAMPLES = {("classify", "digits"): "mnist-5k", ("classify", "photos"): "cifar10",
            ("localize", "digits"): "localization-digits", ("localize", "photos"): "localization-folder"}


def test_the_json_schema_shows_the_declared_defaults_and_how_they_vary():
    assert set(EXAMPLES) == set(RECIPE_DEFAULTS)
    schema = TrainSpec.model_json_schema()
    for name in VARYING:
        prop = schema["properties"][name]
        assert prop["default"] == TrainSpec.model_fields[name].default
        assert prop["x-waldo-defaults"] == {f"{task}/{kind}": getattr(TrainSpec(task=task, data=data), name)
                                            for (task, kind), data in EXAMPLES.items()}
    assert schema["x-waldo-data-kinds"] == DATA_KINDS


@pytest.mark.parametrize("command", [["train"], ["sweep"], ["jobs", "submit", "train"]])
@pytest.mark.parametrize("flags, data", [([], "mnist-5k"), (["--data", "cifar10"], "cifar10"),
                                         (["--task", "localize", "--data", "localization-folder"],
                                          "localization-folder")])
def test_help_shows_the_defaults_for_the_data_given(capsys, command, flags, data):
    with pytest.raises(SystemExit) as exited:
        main([*command, *flags, "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    spec = TrainSpec(**{"data": data, **({"task": "localize"} if "localize" in flags else {})})
    for name in ("epochs", "batch_size", "ema_decay"):
        shown = "null" if getattr(spec, name) is None else str(getattr(spec, name))
        assert f"(default for {spec.task} on {data}: {shown}; see --data)" in text, (name, text)
    assert "(default: 0.003)" in text and "chosen per task" not in text


def test_print_spec_prints_every_field_resolved_and_exits_without_training(capsys, tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)  # a run would leave mlflow.db and waldo_runs here

    assert main(["train", "--data", "cifar10", "--lr", "0.01", "--print-spec"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == TrainSpec(data="cifar10", lr=0.01).model_dump(mode="json")
    assert printed["epochs"] == RECIPE_DEFAULTS[("classify", "photos")]["epochs"]
    assert main(["sweep", "--search", "lr=uniform(0.1,1)", "--print-spec"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == SweepSpec(search={"lr": "uniform(0.1,1)"}).model_dump(
        mode="json")
    assert main(["train", "--epochs", "0", "--print-spec"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "'epochs'" in err
    assert not list(tmp_path.iterdir())


# --- per-image augmentation -------------------------------------------------------------------
def test_random_affine_draws_its_own_transform_for_each_image():
    torch.manual_seed(0)
    image = torch.zeros(1, 28, 28)
    image[:, 8:20, 12:16] = 1.0  # a bar
    out = random_affine(image.expand(16, 1, 28, 28).clone())
    flat = out.flatten(1)
    assert out.shape == (16, 1, 28, 28)
    distinct = {tuple(row.round(decimals=3).tolist()) for row in flat}
    assert len(distinct) == 16  # no two images of the batch moved alike
    assert not torch.allclose(out, image.expand_as(out), atol=1e-3)
    # Bilinear resampling keeps the values in range and the bar's mass roughly (scale 0.9-1.1).
    assert out.min() >= 0 and out.max() <= 1
    assert flat.sum(1).min() > 0.7 * image.sum() and flat.sum(1).max() < 1.3 * image.sum()


def test_random_affine_with_no_range_is_the_identity():
    x = torch.rand(4, 3, 20, 20)
    same = random_affine(x, degrees=0.0, translate=0.0, scale=(1.0, 1.0))
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("augment", ["basic", "trivialaugment", "randaugment", "autoaugment"])
def test_photo_augmentations_keep_shape_and_dtype_and_vary_per_image(augment):
    torch.manual_seed(0)
    transform = per_image_transform(augment, "photos", 32)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    outs = [transform(image) for _ in range(16)]
    assert all(o.shape == image.shape and o.dtype == torch.uint8 for o in outs)
    assert len({o.numpy().tobytes() for o in outs}) > 4  # autoaugment: 25 sub-policies, some no-ops


def test_digits_basic_runs_on_the_batch_not_per_image_and_none_is_nothing():
    assert per_image_transform("basic", "digits", 28) is None
    assert per_image_transform("none", "photos", 32) is None
    erasing = per_image_transform("none", "digits", 28, random_erasing=1.0)
    image = torch.full((1, 28, 28), 200, dtype=torch.uint8)
    assert (erasing(image) == 0).any() and (erasing(image) == 200).any()


def test_the_data_module_augments_training_batches_only():
    dm = digits_module(batch_size=16)  # augment basic on digits: the batched affine
    dm.augment = "basic"
    images = next(iter(dm.train_dataloader()))[0]
    plain = dm.batch_transform(training=False)(images)
    torch.manual_seed(1)
    augmented = dm.batch_transform(training=True)(images)
    assert augmented.shape == plain.shape
    changed = (augmented - plain).flatten(1).abs().amax(1) > 0.1
    assert changed.float().mean() > 0.8
    # The evaluation path is exactly the serving path: no augmentation.
    torch.testing.assert_close(dm.batch_transform()(images), plain)


def test_policies_wrap_the_training_set_per_image():
    from training.data import create_datamodule

    spec = TrainSpec(data="digits", augment="trivialaugment", random_erasing=0.5, batch_size=8)
    dm = create_datamodule(spec.data_spec())  # the spec's recipe reaches the data module
    assert (dm.augment, dm.random_erasing) == ("trivialaugment", 0.5)
    dm.setup("fit")
    assert isinstance(dm.train_set, Augmented)
    assert not isinstance(dm.val_set, Augmented) and not isinstance(dm.test_set, Augmented)
    image, label = dm.train_set[0]
    assert image.dtype == torch.uint8 and image.shape == (1, 28, 28) and 0 <= int(label) < 10


# --- mixup, cutmix, label smoothing -----------------------------------------------------------
@pytest.mark.parametrize("mix", [{"mixup_alpha": 0.4}, {"cutmix_alpha": 1.0},
                                 {"mixup_alpha": 0.4, "cutmix_alpha": 1.0}])
def test_mixing_turns_class_indices_into_probabilities_of_two_classes(mix):
    torch.manual_seed(0)
    dm = digits_module()
    task = classification_task(dm, "cnn", **mix)
    x = torch.randn(8, 1, 28, 28)
    y = torch.arange(8)
    mixed, target = task.mix(x, y)
    assert mixed.shape == x.shape and target.shape == (8, 10)
    torch.testing.assert_close(target.sum(1), torch.ones(8))
    assert ((target > 0).sum(1) <= 2).all() and (target.amax(1) < 1).any()
    loss = task.training_step((x, y), 0)
    assert torch.isfinite(loss) and loss.requires_grad


def test_no_mixing_by_default_and_label_smoothing_raises_the_loss_of_a_confident_net():
    dm = digits_module()
    plain, smooth = classification_task(dm, "cnn"), classification_task(dm, "cnn", label_smoothing=0.2)
    assert plain.mix is None
    logits = torch.full((4, 10), -20.0)
    logits[torch.arange(4), torch.arange(4)] = 20.0  # sure and right
    y = torch.arange(4)
    assert plain._loss(logits, y)[0] < 1e-6
    assert smooth._loss(logits, y)[0] > 1.0


# --- every preset for every task and data kind -------------------------------------------------
def _photo_classes(root):
    from support.images import BLUE, RED, solid

    for i in range(6):
        solid(root / "red" / f"{i}.png", RED, (20, 20))
        solid(root / "blue" / f"{i}.png", BLUE, (20, 20))
    return root


def _photo_boxes(root):
    import numpy as np
    from PIL import Image

    lines = ["image,x,y,w,h,label"]
    for i in range(6):
        pixels = np.zeros((24, 24, 3), dtype=np.uint8)
        pixels[4:14, 6:16] = 255
        Image.fromarray(pixels).save(root / f"{i}.png")
        lines.append(f"{i}.png,6,4,10,10,square")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


PRESETS = ["none", "basic", "trivialaugment", "randaugment", "autoaugment"]
CASES = ([("classify", "digits", a) for a in PRESETS] + [("classify", "folder", a) for a in PRESETS]
         + [("localize", "localization-digits", a) for a in ("none", "basic")]
         + [("localize", "localization-folder", a) for a in ("none", "basic")])


@pytest.mark.parametrize("task, data, augment", CASES)
def test_each_preset_yields_training_batches_for_each_task_and_data_kind(tmp_path, task, data, augment):
    from training.data import create_datamodule

    data_dir = {"folder": _photo_classes, "localization-folder": _photo_boxes}.get(data)
    args = {"train_size": 16, "eval_size": 8} if data == "localization-digits" else {}
    spec = TrainSpec(task=task, data=data, augment=augment, batch_size=4, image_size=32,
                     data_dir=str(data_dir(tmp_path)) if data_dir else None, data_args=args)
    dm = create_datamodule(spec.data_spec())
    dm.setup("fit")
    images, target = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8
    x = dm.batch_transform(training=True)(images)
    assert x.shape == (4, dm.in_channels, 32, 32) and torch.isfinite(x).all()
    if task == "localize":
        assert target.shape == (4, 5 + dm.num_classes)
        present = target[:, 0] > 0.5
        assert (target[present, 1:5] >= 0).all() and (target[present, 1:5] <= 1).all()
