"""Typed job specs: the one description of a training job (`TrainSpec`, and `DataSpec`, its data).

The CLI flags, a YAML file, the jobs API body and Ray Tune's overrides all build the same
`TrainSpec`. It is validated here, once, and logged to MLflow as the run's params. Each field
declares its rules where it is declared (`training.spec.fields.Rules`). A sweep's spec lives in
`training.spec.search`, an export's in `training.spec.export`. This module stays torch-free so
that light processes (the jobs API) can validate specs.
"""

from __future__ import annotations

import difflib
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from training.errors import WaldoError, unknown_choice
from training.spec.catalog import DATASETS, MODEL_NAMES, datasets_for, model_arg_problems
from training.spec.fields import (
    MAX_SEED,
    NOT_SEARCHED,
    TRACKING_URI,
    AliasName,
    KeywordArgs,
    Rules,
    RunName,
    Seed,
)
from training.spec.files import load_yaml
from training.spec.recipe import DECLARED, DataFields, RecipeSpec, check_recipe

Precision = Literal["32", "bf16-mixed", "16-mixed"]
WORKER_RANGE = re.compile(r"(\d+)\s*-\s*(\d+)", re.ASCII)  # `--workers MIN-MAX`

# `publish` is the field; `register` (its name before) is still accepted in files, bodies and
# as the `--register` flag. A field named `register` shadowed ABCMeta.register.
PUBLISH_HELP = "register the export as a new MLflow model version"


def publish_field(description: str) -> Any:
    return Field(False, description=description,
                 validation_alias=AliasChoices("publish", "register"),
                 json_schema_extra={"flags": ["--publish", "--register"]})


# DataSpec's names for three of the data fields, as the data modules read them.
_DATA_MODULE_NAMES = {"name": "data", "args": "data_args", "dir": "data_dir"}


class DataSpec(DataFields):
    """The data part of a job spec: what a data module is built from (`create_datamodule`),
    the data fields of `TrainSpec` (`TrainSpec.data_spec()`), with their declarations and
    defaults. It also takes `name`, `args` and `dir` for `data`, `data_args` and `data_dir`,
    and reads them back under those names. The name is checked in `create_datamodule`, against
    the live registry, not here."""

    @model_validator(mode="before")
    @classmethod
    def _recipe_defaults(cls, data: Any) -> Any:  # replaces DataFields' own, after renaming
        if isinstance(data, dict):
            data = {_DATA_MODULE_NAMES.get(key, key): value for key, value in data.items()}
        return super()._recipe_defaults(data)

    @property
    def name(self) -> str:
        return self.data

    @property
    def args(self) -> dict[str, Any]:
        return self.data_args

    @property
    def dir(self) -> str | None:
        return self.data_dir


class TrainSpec(RecipeSpec):
    """Everything that defines one training run. Field names double as CLI flags; the recipe's
    fields (augmentation, regularization, warmup, EMA, ...) come from `RecipeSpec`."""

    model_config = ConfigDict(protected_namespaces=())

    # What to train (the task and the data: DataFields).
    model: str = Field("cnn", description="network name from `waldo models`")
    model_args: KeywordArgs = Field(
        default_factory=dict, description="builder arguments of the network, e.g. aux_logits=true "
        "(googlenet) or dropout=0.3 (num_classes, in_channels and image_size come from the data)"
    )

    # Where the network starts (default: random weights).
    weights: Annotated[str | None, Rules(kind="location", root="data", not_a_path=r"[A-Z][A-Z0-9_]*",
                                         searchable=False)] = Field(
        None, min_length=1, description="pretrained weights: a torchvision weights name of the network "
        "(DEFAULT, IMAGENET1K_V1, ...; from the torch hub cache under TORCH_HOME when offline) or the "
        "path of a state dict; the classifier is re-created for the data's classes")
    init_from: Annotated[str | None, Rules(
        kind="location", root="storage", not_a_path=r"[0-9a-f]{32}|models:/[^/].*",
        searchable=False)] = Field(
        None, min_length=1, description="start from an earlier Waldo network: an MLflow run id, a .ckpt "
        "path, or models:/NAME@ALIAS (or models:/NAME/VERSION); the head is re-created when the "
        "task or the classes differ")
    freeze: Literal["none", "backbone"] = Field(
        "none", description="backbone: train only the head (BatchNorm statistics stay as loaded)")
    unfreeze_at_epoch: PositiveInt | None = Field(
        None, description="with --freeze backbone: train the backbone too from this epoch on, at a "
        "tenth of the learning rate")

    # Data (the data set and how it is read: DataFields).
    allow_split_overlap: Annotated[bool, NOT_SEARCHED] = Field(
        False, description="train even when more than 1 in 100 test images also lie in train or "
        "val (the same bytes); the run records how many (tag waldo.split_overlap)")

    # Optimisation (and batch_size: DataFields).
    epochs: Annotated[PositiveInt, Rules(bound="max_epochs")] = Field(
        DECLARED["epochs"], description="number of training epochs")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="optimizer")
    lr: PositiveFloat = Field(3e-3, description="learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: NonNegativeFloat = Field(0.0, description="weight decay")
    lr_schedule: Literal["none", "cosine", "step", "onecycle"] = Field(
        "cosine", description="LR schedule, stepped every optimizer step (onecycle: Smith's "
        "one-cycle policy, its warmup --warmup-epochs, else 0.3 of the run)")
    lr_step_size: PositiveInt = Field(10, description="epochs between steps (step schedule)")
    lr_gamma: float = Field(0.1, gt=0, le=1, description="LR factor per step (step schedule)")
    loss_variant: Literal["mse", "ce"] = Field(
        "mse", description="localization loss: the source's squared error, or cross-entropy"
    )
    box_loss: Literal["smooth_l1", "giou"] = Field(
        "smooth_l1", description="box term of the cross-entropy localization loss"
    )
    monitor: Annotated[str | None, Rules(kind="name")] = Field(
        None, description="validation metric that picks the best checkpoint "
        "(default: val_loss; it ranks epochs more finely than accuracy on small sets)"
    )
    early_stopping_patience: PositiveInt | None = Field(
        None, description="stop after this many epochs without improvement (off by default)"
    )
    seed: Seed = Field(0, description="random seed for weights, shuffling and splits, "
                       f"0 to {MAX_SEED}")

    # Hardware.
    accelerator: Literal["auto", "cpu", "gpu"] = Field("auto", description="device type")
    precision: Precision = Field("32", description="numeric precision")
    channels_last: bool = Field(False, description="use the channels_last memory format")

    # Ray (workers > 0 runs the same training as a Ray Train job).
    workers: Annotated[NonNegativeInt, Rules(bound="max_workers")] = Field(
        0, description="Ray Train workers (0: plain Lightning in-process), or MIN-MAX (e.g. 2-4) for "
                       "elastic training: start with what the cluster can place, grow as nodes join, "
                       "keep going from the last checkpoint when one leaves")
    max_workers: Annotated[PositiveInt | None, Rules(bound="max_workers")] = Field(
        None, description="elastic training's upper bound on workers (what --workers MIN-MAX sets)")
    cpus_per_worker: PositiveFloat = Field(1.0, description="CPUs reserved per Ray worker")
    gpus_per_worker: Annotated[NonNegativeFloat, Rules(bound="max_gpus_per_worker")] = Field(
        0.0, description="GPUs per Ray worker (0: CPU, gloo)")
    ray_address: Annotated[str | None, Rules(kind="location", server="ray_address",
                                             searchable=False, resume=True)] = Field(
        None, description="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)"
    )
    max_failures: Annotated[NonNegativeInt, NOT_SEARCHED] = Field(
        0, description="worker-group restarts after a failure, resuming from the last checkpoint"
    )

    # Tracking and storage.
    experiment: Annotated[str, NOT_SEARCHED] = Field(
        "waldo", min_length=1, description="MLflow experiment name")
    run_name: Annotated[RunName | None, Rules(kind="name", searchable=False)] = Field(
        None, description="MLflow run name, also the job's folder in storage (default: generated)")
    tracking_uri: Annotated[str | None, TRACKING_URI] = Field(
        None, description="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlflow.db)"
    )
    storage: Annotated[str | None, Rules(kind="location", root="storage", searchable=False,
                                         resume=True)] = Field(
        None, description="checkpoint storage: a folder (default ./waldo_runs) or s3://bucket/path"
    )
    progress_bar: Annotated[bool | None, NOT_SEARCHED] = Field(
        None, description="show Lightning's progress bar (default: only when the output is a "
        "terminal; otherwise one line per epoch with its metrics)")
    export: Annotated[bool, NOT_SEARCHED] = Field(
        False, description="after training, export the best checkpoint to ONNX into ./models"
    )
    publish: Annotated[bool, NOT_SEARCHED] = publish_field(PUBLISH_HELP + " (implies export)")
    alias: Annotated[AliasName | None, NOT_SEARCHED] = Field(
        None, description="then promote that version to this MLflow alias, e.g. production, "
        "through the promotion gate (implies publish; refused: exit 1, the version stays "
        "registered without the alias)",
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: Any) -> Any:
        # YAML reads `precision: 32` as a number; the flag gives the string "32".
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    # Names are checked against the torch-free catalog, so the jobs API refuses an unknown one
    # at submit time; `training.models` / `training.data` check again when they build.
    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        if name not in MODEL_NAMES:
            raise ValueError(str(unknown_choice("model", name, MODEL_NAMES)))
        return name

    @field_validator("model_args")
    @classmethod
    def _builder_args(cls, args: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """The one rule for model arguments, whichever door the spec came through: names the
        data decides are refused, the rest are checked against the network's builder
        (`training.spec.catalog.MODEL_ARGS`, equal to the builders' signatures) and its bounds."""
        problems = model_arg_problems(info.data.get("model"), info.data.get("task"), args)
        if problems:
            raise ValueError("; ".join(problems))
        return args

    @field_validator("data")
    @classmethod
    def _known_data(cls, name: str, info: ValidationInfo) -> str:
        if name not in DATASETS:
            raise ValueError(str(unknown_choice("data set", name, DATASETS)))
        task = info.data.get("task")  # absent when the task itself was refused
        if task is not None and DATASETS[name] != task:
            raise ValueError(f"data set {name!r} is for task {DATASETS[name]!r}, not {task!r}; "
                             f"data sets for {task!r}: {', '.join(datasets_for(task))}")
        return name

    @model_validator(mode="before")
    @classmethod
    def _elastic_range(cls, data: Any) -> Any:
        """`workers: 2-4` (or `--workers 2-4`) is workers=2, max_workers=4."""
        if isinstance(data, dict) and isinstance(data.get("workers"), str) and "-" in data["workers"]:
            match = WORKER_RANGE.fullmatch(data["workers"].strip())
            if not match:  # ASCII digits only: int() would take '²' as a digit, then fail
                raise ValueError(f"workers {data['workers']!r}: give a count (2) or a range MIN-MAX (2-4)")
            data = {**data, "workers": int(match[1]), "max_workers": int(match[2])}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TrainSpec:
        check_recipe(self)
        if self.max_workers is not None and not 1 <= self.workers <= self.max_workers:
            raise ValueError(f"workers {self.workers}-{self.max_workers}: an elastic range needs "
                             "1 <= MIN <= MAX")
        if self.weights is not None and self.init_from is not None:
            raise ValueError("give at most one of weights (pretrained weights) and init_from "
                             "(an earlier Waldo run or model)")
        if self.unfreeze_at_epoch is not None:
            if self.freeze != "backbone":
                raise ValueError("unfreeze_at_epoch needs freeze=backbone (nothing is frozen)")
            if self.unfreeze_at_epoch >= self.epochs:
                raise ValueError(f"unfreeze_at_epoch {self.unfreeze_at_epoch} is beyond the last "
                                 f"epoch ({self.epochs - 1}, as epochs count from 0): give a value "
                                 f"below epochs={self.epochs}")
        return self

    def data_spec(self) -> DataSpec:
        """The data part of this spec, for the data module."""
        return DataSpec.model_validate({name: getattr(self, name) for name in DataSpec.model_fields})

    @property
    def exports(self) -> bool:
        """Whether the run ends with an export (`publish` and `alias` imply one)."""
        return self.export or self.publish or self.alias is not None

    def to_params(self) -> dict[str, str]:
        """Flatten the spec into MLflow params (strings, nested args as `model_args.key`)."""
        params: dict[str, str] = {}
        for key, value in self.model_dump().items():
            if isinstance(value, dict):
                params.update({f"{key}.{k}": str(v) for k, v in value.items()})
            else:
                params[key] = str(value)
        return params


# The input, as the error shows it: a few items and characters, however large it is.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxtuple = 2, 4, 4, 4
_SHORT.maxstring = _SHORT.maxother = 80


def _short(value: Any, limit: int = 160) -> str:
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def format_validation_error(exc: ValidationError, spec_cls: type[BaseModel]) -> str:
    """Turn pydantic's report into one line that names each bad field and what it accepts."""
    fields = sorted(spec_cls.model_fields)
    parts = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]) or "<spec>"
        if err["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(name, fields, n=1)
            did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
            parts.append(f"unknown field {name!r}{did_you_mean}; valid fields: {', '.join(fields)}")
        else:
            message = err["msg"].removeprefix("Value error, ")
            parts.append(f"field {name!r}: {message} (got {_short(err.get('input'))})")
    return "invalid spec: " + "; ".join(parts)


def build_spec(
    spec_cls: type[BaseModel] = TrainSpec,
    config: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Any:
    """Build a spec from an optional YAML file plus overrides (flags win over the file)."""
    data = load_yaml(config) if config else {}
    data.update(overrides or {})
    try:
        return spec_cls.model_validate(data)
    except ValidationError as exc:
        raise WaldoError(format_validation_error(exc, spec_cls)) from None
