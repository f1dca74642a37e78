"""The training recipe's spec fields: augmentation, regularization, warmup, weight averaging,
gradient handling and compilation. `TrainSpec` inherits them, so the CLI, YAML files, the jobs
API and sweeps all take them. `training.data.augment` and the data modules turn them into
transforms, `training.tasks` into losses and schedules, `training.running.steps` into Trainer arguments
and callbacks.

Some defaults depend on the task and on what the pictures are (`training.spec.catalog.DATA_KINDS`):
a field left out takes the value of `RECIPE_DEFAULTS` for the spec's task and data kind, filled
in before validation, so the run's params show what was used. They were chosen by
measurement (bench/recipes.py; the figures are in the README). Torch-free, like training.spec.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from training.spec.catalog import DATA_KINDS
from training.spec.fields import SpecBase

Augment = Literal["none", "basic", "trivialaugment", "randaugment", "autoaugment"]
AUGMENTS: tuple[str, ...] = Augment.__args__  # type: ignore[attr-defined]
# The policies choose among photometric and geometric operations that torchvision does not
# apply to boxes, so a localizer takes `none` or `basic` (which moves the box with the image).
BOX_AUGMENTS = ("none", "basic")

# (task, data kind) -> the fields that default differently there (bench/recipes.py measured
# them; the README has the figures). A spec that names a field keeps its value, None included.
RECIPE_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    # lenet5 and cnn on mnist-5k: 98.5% and 98.3% mean test accuracy over 3 seeds; lenet5 had
    # 96.1% with the old default (no augmentation, 30 epochs of batches of 32).
    ("classify", "digits"): {"augment": "basic", "label_smoothing": 0.1, "ema_decay": 0.999,
                             "epochs": 60, "batch_size": 64},
    # torchvision's reference recipes for photos: random resized crop, flip, smoothing 0.1.
    ("classify", "photos"): {"augment": "basic", "label_smoothing": 0.1},
    # Canvases already place digits at random positions and scales; moving boxes costs about
    # 4 ms an image on the CPU, more than the small networks' own step.
    ("localize", "digits"): {"augment": "none"},
    ("localize", "photos"): {"augment": "basic"},
}


class RecipeSpec(SpecBase):
    """How the network is trained beyond the optimizer and the schedule's shape."""

    augment: Augment = Field(
        "basic", description="per-image training augmentation: basic (digits: a small random "
        "affine; photos: random resized crop and horizontal flip), or torchvision's "
        "trivialaugment, randaugment, autoaugment policies")
    random_erasing: float = Field(
        0.0, ge=0, le=1, description="probability of erasing a random rectangle of a training image")
    mixup_alpha: NonNegativeFloat = Field(
        0.0, le=10, description="mixup: blend pairs of images and labels, weight ~ Beta(a, a) "
        "(0: off; classification)")
    cutmix_alpha: NonNegativeFloat = Field(
        0.0, le=10, description="cutmix: paste a patch of another image, labels by area "
        "(0: off; classification; with mixup, one of the two per batch)")
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="share of the target spread over all classes (classification)")
    warmup_epochs: NonNegativeInt = Field(
        0, description="epochs of linear learning-rate warmup (from a hundredth) before the schedule")
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="keep an exponential moving average of the weights with this "
        "decay (e.g. 0.999); the average is what is validated, tested and exported")
    grad_clip: PositiveFloat | None = Field(
        None, description="clip the gradients' global norm to this value")
    accumulate_grad_batches: PositiveInt = Field(
        1, le=1024, description="sum the gradients of this many batches per optimizer step")
    compile: bool = Field(False, description="compile the network with torch.compile")

    @model_validator(mode="before")
    @classmethod
    def _recipe_defaults(cls, data: Any) -> Any:
        """Fill the fields the spec leaves out from RECIPE_DEFAULTS for its task and data."""
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        task = data.get("task", fields["task"].default if "task" in fields else "classify")
        name = data.get("data", fields["data"].default if "data" in fields else None)
        defaults = RECIPE_DEFAULTS.get((str(task), DATA_KINDS.get(str(name), "")))
        if defaults is None:  # an unknown task or data set: its own validator says so
            return data
        return {**defaults, **data}


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


__all__ = ["AUGMENTS", "Augment", "BOX_AUGMENTS", "RECIPE_DEFAULTS", "RecipeSpec", "check_recipe"]
