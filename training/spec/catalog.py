"""The names a job spec may use, without importing torch: every network and every data set,
and the builder arguments (`model_args`) each network takes.

`training.spec` checks `model` and `data` against these lists, so the jobs API refuses an
unknown name when a job is submitted, not minutes later on a Ray worker. The registries
themselves (`training.models.list_models()`, `training.data.list_datasets()`) need torch;
tests/unit/test_spec_hardening.py checks that these lists equal them, so adding a network or a
data set without naming it here fails a test instead of drifting. `MODEL_ARGS` is checked
against the builders' signatures the same way (tests/unit/test_model_args.py).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Literal

Task = Literal["classify", "localize"]

MODEL_NAMES: tuple[str, ...] = (
    "alexnet", "cnn", "googlenet", "lenet5", "mlp", "resnet18", "resnet34", "resnet50",
    "vgg11", "vgg16", "vgg19",
)

# data set name -> the task whose targets it yields
DATASETS: dict[str, Task] = {
    "cifar10": "classify",
    "digits": "classify",
    "fashion-mnist": "classify",
    "folder": "classify",
    "localization-digits": "localize",
    "localization-folder": "localize",
    "localization-packed": "localize",
    "mnist": "classify",
    "mnist-5k": "classify",
    "packed": "classify",
}


# data set name -> what its pictures are, which decides what `--augment basic` does and the
# recipe's defaults (`training.spec.recipe`): centred digits (a small random affine, no flips)
# or photos (a random resized crop and a horizontal flip).
DataKind = Literal["digits", "photos"]
DATA_KINDS: dict[str, DataKind] = {
    "cifar10": "photos",
    "digits": "digits",
    "fashion-mnist": "digits",
    "folder": "photos",
    "localization-digits": "digits",
    "localization-folder": "photos",
    "localization-packed": "photos",
    "mnist": "digits",
    "mnist-5k": "digits",
    "packed": "photos",
}


# --- model_args: what a spec may pass to a network's builder -----------------------------------
@dataclass(frozen=True)
class ArgRule:
    """The values one builder argument takes: booleans, or numbers from `low` to `high`."""

    kind: type  # bool, int or float (an int is accepted where a float is meant)
    low: float | None = None
    high: float | None = None

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value` (a phrase), or None when it is accepted."""
        if self.kind is bool:
            return None if isinstance(value, bool) else "give true or false"
        kinds = (int, float) if self.kind is float else (int,)
        if (isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value)
                or not self.low <= value <= self.high):
            return f"give {self.accepted()}"
        return None

    def accepted(self) -> str:
        if self.kind is bool:
            return "true or false"
        what = "an integer" if self.kind is int else "a number"
        return f"{what} from {self.low:g} to {self.high:g}"


_BOOL = ArgRule(bool)
_DROPOUT = ArgRule(float, 0.0, 1.0)  # a probability
_VGG = {"batch_norm": _BOOL, "dropout": _DROPOUT}

# network -> its builder's keyword arguments that a spec may set. The rest of the builder's
# signature (DATA_DECIDED) comes from the data. tests/unit/test_model_args.py checks this table
# against the builders' signatures, so a new argument cannot be forgotten here.
MODEL_ARGS: dict[str, dict[str, ArgRule]] = {
    "alexnet": {"dropout": _DROPOUT},
    "cnn": {},
    "googlenet": {"aux_logits": _BOOL, "dropout": _DROPOUT, "transform_input": _BOOL},
    "lenet5": {},
    "mlp": {},
    "resnet18": {},
    "resnet34": {},
    "resnet50": {},
    "vgg11": _VGG,
    "vgg16": _VGG,
    "vgg19": _VGG,
}
# A localizer's head (`training.models.heads.create_localizer`) takes these besides.
LOCALIZER_ARGS: dict[str, ArgRule] = {"hidden": ArgRule(int, 1, 2**14)}
# Builder arguments the data decides, and where each comes from.
DATA_DECIDED: dict[str, str] = {
    "num_classes": "its number of classes",
    "in_channels": "its number of channels: 1 for grey images, 3 for colour",
    "image_size": "--image-size, else the data set's own size",
}


def model_arg_problems(model: str | None, task: str | None, args: dict[str, Any]) -> list[str]:
    """Why each of `args` cannot go to the builder of `model` (all of them, one phrase each):
    a name the data decides, a name the builder does not take, or a value out of its range.
    `model=None` (a name already refused) checks only the names the data decides."""
    accepted = {**MODEL_ARGS.get(model or "", {}), **(LOCALIZER_ARGS if task == "localize" else {})}
    problems = []
    for name, value in args.items():
        if name in DATA_DECIDED:
            problems.append(f"{name!r} is set by the data ({DATA_DECIDED[name]}); drop it")
        elif model is None:
            continue
        elif name not in accepted:
            takes = f"it takes {', '.join(sorted(accepted))}" if accepted else "it takes none"
            hint = difflib.get_close_matches(name, accepted, n=1)
            did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
            problems.append(f"{name!r} is not an argument of model {model!r}{did_you_mean}; {takes}")
        elif (problem := accepted[name].problem(value)) is not None:
            problems.append(f"{name!r} is {value!r}; {problem}")
    return problems


def datasets_for(task: str) -> list[str]:
    """The data sets whose targets suit `task`, sorted."""
    return sorted(name for name, kind in DATASETS.items() if kind == task)


__all__ = ["DATASETS", "DATA_DECIDED", "DATA_KINDS", "LOCALIZER_ARGS", "MODEL_ARGS", "MODEL_NAMES",
           "ArgRule", "DataKind", "Task", "datasets_for", "model_arg_problems"]
