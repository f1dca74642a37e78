"""The data options and the training recipe's spec fields: augmentation, regularization, warmup,
weight averaging, gradient handling and compilation. `TrainSpec` inherits them, so the CLI, YAML
files, the jobs API and sweeps all take them, and `DataSpec` shares the data options
(`DataFields`), declared once. `training.data.augment` and the data modules turn them into
transforms, `training.tasks` into losses and schedules, `training.running.steps` into Trainer
arguments and callbacks.

The declared defaults are the values used for the default task and data (classify on
`mnist-5k`, digits). Some fields default otherwise for other tasks and pictures
(`training.spec.catalog.DATA_KINDS`): a field left out takes the value of `RECIPE_DEFAULTS` for
the spec's task and data kind, filled in before validation, so the run's params show what was
used. The values were chosen by measurement (bench/recipes.py; the figures are in the README).
Torch-free, like training.spec.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)

from training.spec.catalog import DATA_KINDS, DATASETS, Task
from training.spec.fields import MAX_IMAGE_SIZE, ImageSize, KeywordArgs, Rules, SpecBase

Augment = Literal["none", "basic", "trivialaugment", "randaugment", "autoaugment"]
AUGMENTS: tuple[str, ...] = Augment.__args__  # type: ignore[attr-defined]
# The policies choose among photometric and geometric operations that torchvision does not
# apply to boxes, so a localizer takes `none` or `basic` (which moves the box with the image).
BOX_AUGMENTS = ("none", "basic")

DEFAULT_TASK, DEFAULT_DATA = "classify", "mnist-5k"
DEFAULT_KIND = (DEFAULT_TASK, DATA_KINDS[DEFAULT_DATA])
# (task, data kind) -> the fields that default differently there (bench/recipes.py measured
# them; the README has the figures). The default task and data's row holds the fields' declared
# defaults (the declarations read it, so this is the one place those values live); every other
# row holds only what that task and kind change. A spec that names a field keeps its value,
# None included.
RECIPE_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    # lenet5 and cnn on mnist-5k, seeds 0-4: 98.56% and 98.42% mean test accuracy (60 epochs
    # gave 98.50% and 98.32%); lenet5 had 96.1% with no augmentation, 30 epochs of 32.
    DEFAULT_KIND: {"augment": "basic", "label_smoothing": 0.1, "ema_decay": 0.999,
                   "epochs": 100, "batch_size": 64},
    # torchvision's reference recipes for photos: random resized crop, flip, smoothing 0.1.
    ("classify", "photos"): {"ema_decay": None, "epochs": 30, "batch_size": 32},
    # Canvases already place digits at random positions and scales; moving boxes costs about
    # 4 ms an image on the CPU, more than the small networks' own step. Label smoothing mixes
    # class labels, which a localizer refuses.
    ("localize", "digits"): {"augment": "none", "label_smoothing": 0.0, "ema_decay": None,
                             "epochs": 30, "batch_size": 32},
    ("localize", "photos"): {"label_smoothing": 0.0, "ema_decay": None, "epochs": 30,
                             "batch_size": 32},
}
DECLARED = RECIPE_DEFAULTS[DEFAULT_KIND]  # the declared defaults of the fields that vary
VARYING: tuple[str, ...] = tuple(dict.fromkeys(n for row in RECIPE_DEFAULTS.values() for n in row))


def recipe_row(task: Any, data: Any) -> dict[str, Any] | None:
    """What the recipe fills in for `task` and `data` (None: an unknown task or data set)."""
    return RECIPE_DEFAULTS.get((str(task), DATA_KINDS.get(str(data), "")))


def _show_varying(schema: dict[str, Any]) -> None:
    """The JSON schema says which fields vary with the task and data kind, and how."""
    properties = schema.get("properties", {})
    for name in VARYING:
        if name in properties:
            properties[name]["x-waldo-defaults"] = {
                f"{task}/{kind}": row.get(name, DECLARED[name])
                for (task, kind), row in RECIPE_DEFAULTS.items()}
    schema["x-waldo-data-kinds"] = dict(DATA_KINDS)


class DataFields(SpecBase):
    """What the data module is built from, declared once for `TrainSpec` and `DataSpec`, and
    the filling-in of the recipe's defaults for the spec's task and data."""

    model_config = ConfigDict(json_schema_extra=_show_varying)

    task: Task = Field(
        DEFAULT_TASK, description="what the network predicts: a class, or a class and its box")
    data: Annotated[str, Rules(kind="name", searchable=False)] = Field(
        DEFAULT_DATA, validate_default=True,  # it must fit `task`, default or not
        description=f"data set: one of {', '.join(sorted(DATASETS))} (mnist-5k: 5,000 real "
        "MNIST digits in the package, no download)")
    data_args: KeywordArgs = Field(
        default_factory=dict, description="data set options, e.g. empty_fraction=0.3")
    data_dir: Annotated[str | None, Rules(kind="location", root="data", searchable=False)] = Field(
        None, description="folder holding (or receiving) the data")
    image_size: Annotated[ImageSize | None, Rules(bound="max_image_size")] = Field(
        None, description=f"resize images to this square size, at most {MAX_IMAGE_SIZE} "
        "(default: the data set's own)")
    download: bool = Field(True, description="download torchvision data sets when online")
    val_fraction: float = Field(0.15, gt=0, lt=1, description="share of training data held out")
    loader_workers: Annotated[NonNegativeInt, Rules(bound="max_loader_workers")] = Field(
        0, description="DataLoader worker processes")
    batch_size: PositiveInt = Field(DECLARED["batch_size"], description="images per step (per worker)")
    augment: Augment = Field(
        DECLARED["augment"], description="per-image training augmentation: basic (digits: a "
        "small random affine; photos: random resized crop and horizontal flip), or torchvision's "
        "trivialaugment, randaugment, autoaugment policies")
    random_erasing: float = Field(
        0.0, ge=0, le=1, description="probability of erasing a random rectangle of a training image")

    @model_validator(mode="before")
    @classmethod
    def _recipe_defaults(cls, data: Any) -> Any:
        """Fill the fields the spec leaves out from RECIPE_DEFAULTS for its task and data."""
        if not isinstance(data, dict):
            return data
        defaults = recipe_row(data.get("task", DEFAULT_TASK), data.get("data", DEFAULT_DATA))
        if defaults is None:  # an unknown task or data set: its own validator says so
            return data
        return {**{k: v for k, v in defaults.items() if k in cls.model_fields}, **data}


class RecipeSpec(DataFields):
    """How the network is trained beyond the optimizer and the schedule's shape."""

    mixup_alpha: NonNegativeFloat = Field(
        0.0, le=10, description="mixup: blend pairs of images and labels, weight ~ Beta(a, a) "
        "(0: off; classification)")
    cutmix_alpha: NonNegativeFloat = Field(
        0.0, le=10, description="cutmix: paste a patch of another image, labels by area "
        "(0: off; classification; with mixup, one of the two per batch)")
    label_smoothing: float = Field(
        DECLARED["label_smoothing"], ge=0, lt=1,
        description="share of the target spread over all classes (classification)")
    warmup_epochs: NonNegativeInt = Field(
        0, description="epochs of linear learning-rate warmup (from a hundredth) before the schedule")
    ema_decay: float | None = Field(
        DECLARED["ema_decay"], gt=0, lt=1, description="keep an exponential moving average of "
        "the weights with this decay (null: off); the average is what is validated, tested and "
        "exported")
    grad_clip: PositiveFloat | None = Field(
        None, description="clip the gradients' global norm to this value")
    accumulate_grad_batches: PositiveInt = Field(
        1, le=1024, description="sum the gradients of this many batches per optimizer step")
    compile: bool = Field(False, description="compile the network with torch.compile")


# The recipe's fields, for `waldo train --help`'s "recipe" group: the augmentation options of
# the data and RecipeSpec's own.
RECIPE_FIELDS: frozenset[str] = frozenset(
    {"augment", "random_erasing"} | (RecipeSpec.model_fields.keys() - DataFields.model_fields.keys()))


def check_recipe(spec: Any) -> None:
    """What a recipe cannot do for the spec's task and epochs (ValueError naming the field)."""
    if spec.task == "localize":
        if spec.random_erasing:
            raise ValueError(f"random_erasing={spec.random_erasing} can erase the object a "
                             "localizer must find; it is for classification")
        if spec.augment not in BOX_AUGMENTS:
            raise ValueError(f"augment {spec.augment!r} cannot move boxes: a localizer takes "
                             f"{' or '.join(BOX_AUGMENTS)}")
        given = [f"{name}={getattr(spec, name)}" for name in
                 ("mixup_alpha", "cutmix_alpha", "label_smoothing") if getattr(spec, name)]
        if given:
            raise ValueError(f"{', '.join(given)}: mixup, cutmix and label smoothing mix class "
                             "labels and are for classification, not localization")
    if spec.warmup_epochs >= spec.epochs:
        raise ValueError(f"warmup_epochs {spec.warmup_epochs} leaves no epoch for the schedule: "
                         f"give fewer than epochs={spec.epochs}")


__all__ = ["AUGMENTS", "Augment", "BOX_AUGMENTS", "DATA_KINDS", "DECLARED", "DEFAULT_DATA",
           "DEFAULT_KIND", "DEFAULT_TASK", "DataFields", "RECIPE_DEFAULTS", "RECIPE_FIELDS",
           "RecipeSpec", "VARYING", "check_recipe", "recipe_row"]
