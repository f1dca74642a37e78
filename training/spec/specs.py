"""Typed job specs: the one description of a training job.

The CLI flags, a YAML file, the jobs API body and Ray Tune's overrides all build the same
`TrainSpec`. It is validated here, once, and logged to MLflow as the run's params. This module
stays torch-free so that light processes (the jobs API) can validate specs.
"""

from __future__ import annotations

import ast
import difflib
import math
import re
import reprlib
from pathlib import Path
from typing import Any, Literal

import yaml
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
from training.spec.catalog import DATASETS, MODEL_NAMES, Task, datasets_for, model_arg_problems
from training.spec.fields import (  # noqa: F401  (names importers take from training.spec)
    DEFAULT_OPSET,
    MAX_IMAGE_SIZE,
    MAX_OPSET,
    MAX_SEED,
    MIN_OPSET,
    AliasName,
    ImageSize,
    KeywordArgs,
    ModelName,
    Opset,
    RunName,
    Seed,
    SpecBase,
    check_alias,
    check_model_name,
    check_opset,
    check_run_name,
    number_kind,
)
from training.spec.files import load_yaml
from training.spec.recipe import Augment, RecipeSpec, check_recipe

Precision = Literal["32", "bf16-mixed", "16-mixed"]
WORKER_RANGE = re.compile(r"(\d+)\s*-\s*(\d+)", re.ASCII)  # `--workers MIN-MAX`

# --- the choice lists of an export (one place; `training.export` imports them) ---------------
EXPORT_PRECISIONS = ("fp32", "fp16", "int8")
ExportPrecision = Literal["fp32", "fp16", "int8"]
EXPORTERS = ("auto", "torchscript", "dynamo")
Exporter = Literal["auto", "torchscript", "dynamo"]
DEFAULT_ATOL = 1e-4
DEFAULT_MAX_DROP = 0.01  # validation accuracy (as a fraction) that fp16/int8 may lose
# `publish` is the field; `register` (its name before) is still accepted in files, bodies and
# as the `--register` flag. A field named `register` shadowed ABCMeta.register.
_PUBLISH_HELP = "register the export as a new MLflow model version"


def _publish_field(description: str) -> Any:
    return Field(False, description=description,
                 validation_alias=AliasChoices("publish", "register"),
                 json_schema_extra={"flags": ["--publish", "--register"]})


class DataSpec(SpecBase):
    """The data part of a job spec: what a data module is built from (`create_datamodule`).
    Its name is checked there, against the live registry."""

    task: Task = "classify"
    name: str = "digits"
    args: KeywordArgs = Field(default_factory=dict)
    dir: str | None = None
    image_size: ImageSize | None = None
    download: bool = True
    val_fraction: float = Field(0.15, gt=0, lt=1)
    loader_workers: NonNegativeInt = 0
    batch_size: PositiveInt = 32
    augment: Augment = "none"
    random_erasing: float = Field(0.0, ge=0, le=1)


class TrainSpec(RecipeSpec):
    """Everything that defines one training run. Field names double as CLI flags; the recipe's
    fields (augmentation, regularization, warmup, EMA, ...) come from `RecipeSpec`."""

    model_config = ConfigDict(protected_namespaces=())

    # What to train.
    task: Task = Field(
        "classify", description="what the network predicts: a class, or a class and its box"
    )
    model: str = Field("cnn", description="network name from `waldo models`")
    model_args: KeywordArgs = Field(
        default_factory=dict, description="builder arguments of the network, e.g. aux_logits=true "
        "(googlenet) or dropout=0.3 (num_classes, in_channels and image_size come from the data)"
    )

    # Where the network starts (default: random weights).
    weights: str | None = Field(
        None, min_length=1, description="pretrained weights: a torchvision weights name of the network "
        "(DEFAULT, IMAGENET1K_V1, ...; from the torch hub cache under TORCH_HOME when offline) or the "
        "path of a state dict; the classifier is re-created for the data's classes")
    init_from: str | None = Field(
        None, min_length=1, description="start from an earlier Waldo network: an MLflow run id, a .ckpt "
        "path, or models:/NAME@ALIAS (or models:/NAME/VERSION); the head is re-created when the "
        "task or the classes differ")
    freeze: Literal["none", "backbone"] = Field(
        "none", description="backbone: train only the head (BatchNorm statistics stay as loaded)")
    unfreeze_at_epoch: PositiveInt | None = Field(
        None, description="with --freeze backbone: train the backbone too from this epoch on, at a "
        "tenth of the learning rate")

    # Data.
    data: str = Field("mnist-5k", validate_default=True,  # it must fit `task`, default or not
                      description="data set name (default: 5,000 real MNIST digits, offline)")
    data_args: KeywordArgs = Field(
        default_factory=dict, description="data set options, e.g. empty_fraction=0.3"
    )
    data_dir: str | None = Field(None, description="folder holding (or receiving) the data")
    image_size: ImageSize | None = Field(
        None, description=f"resize images to this square size, at most {MAX_IMAGE_SIZE} "
        "(default: the data set's own)"
    )
    download: bool = Field(True, description="download torchvision data sets when online")
    allow_split_overlap: bool = Field(
        False, description="train even when more than 1 in 100 test images also lie in train or "
        "val (the same bytes); the run records how many (tag waldo.split_overlap)")
    val_fraction: float = Field(0.15, gt=0, lt=1, description="share of training data held out")
    loader_workers: NonNegativeInt = Field(0, description="DataLoader worker processes")

    # Optimisation.
    epochs: PositiveInt = Field(30, description="number of training epochs")
    batch_size: PositiveInt = Field(32, description="images per step (per worker)")
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
    monitor: str | None = Field(
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
    workers: NonNegativeInt = Field(
        0, description="Ray Train workers (0: plain Lightning in-process), or MIN-MAX (e.g. 2-4) for "
                       "elastic training: start with what the cluster can place, grow as nodes join, "
                       "keep going from the last checkpoint when one leaves")
    max_workers: PositiveInt | None = Field(
        None, description="elastic training's upper bound on workers (what --workers MIN-MAX sets)")
    cpus_per_worker: PositiveFloat = Field(1.0, description="CPUs reserved per Ray worker")
    gpus_per_worker: NonNegativeFloat = Field(0.0, description="GPUs per Ray worker (0: CPU, gloo)")
    ray_address: str | None = Field(
        None, description="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)"
    )
    max_failures: NonNegativeInt = Field(
        0, description="worker-group restarts after a failure, resuming from the last checkpoint"
    )

    # Tracking and storage.
    experiment: str = Field("waldo", min_length=1, description="MLflow experiment name")
    run_name: RunName | None = Field(
        None, description="MLflow run name, also the job's folder in storage (default: generated)")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlflow.db)"
    )
    storage: str | None = Field(
        None, description="checkpoint storage: a folder (default ./waldo_runs) or s3://bucket/path"
    )
    progress_bar: bool = Field(True, description="show a progress bar")
    export: bool = Field(
        False, description="after training, export the best checkpoint to ONNX into ./models"
    )
    publish: bool = _publish_field(_PUBLISH_HELP + " (implies export)")
    alias: AliasName | None = Field(
        None, description="move this MLflow alias, e.g. production, to that version (implies publish)",
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
        return DataSpec(task=self.task, name=self.data, args=self.data_args, dir=self.data_dir,
                        image_size=self.image_size, download=self.download,
                        val_fraction=self.val_fraction, loader_workers=self.loader_workers,
                        batch_size=self.batch_size, augment=self.augment,
                        random_erasing=self.random_erasing)

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

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


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


# --- sweeps -----------------------------------------------------------------------------------

# name -> number of arguments (None: one or more), as in Ray Tune's search-space API.
DISTRIBUTIONS: dict[str, int | None] = {
    "uniform": 2, "loguniform": 2, "quniform": 3, "qloguniform": 3, "randint": 2, "choice": None,
}
_CALL = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.S)
# Sweep fields and Ray/tracking settings are not hyperparameters.
_NOT_SEARCHABLE = {"experiment", "run_name", "tracking_uri", "storage", "ray_address",
                   "progress_bar", "max_failures", "task", "data", "data_dir",
                   "export", "publish", "alias", "weights", "init_from", "allow_split_overlap"}


def _scalar(text: str) -> Any:
    """A search argument: a Python literal (1e-4, 64, True, 'adam') or a bare word (adam)."""
    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_distribution(name: str, text: str) -> tuple[str, list[Any]]:
    """`loguniform(1e-4,1e-1)` -> ("loguniform", [0.0001, 0.1]), with errors naming the choices."""
    match = _CALL.match(str(text))
    if not match:
        raise ValueError(f"search {name}={text!r} is not DIST(ARGS); distributions: "
                         f"{', '.join(DISTRIBUTIONS)}, e.g. lr=loguniform(1e-4,1e-1)")
    dist, body = match.groups()
    if dist not in DISTRIBUTIONS:
        hint = difflib.get_close_matches(dist, DISTRIBUTIONS, n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ValueError(f"unknown search distribution {dist!r}{did_you_mean} for {name!r}; "
                         f"valid: {', '.join(DISTRIBUTIONS)}")
    args = [_scalar(piece) for piece in body.split(",")] if body.strip() else []
    if any(isinstance(arg, float) and not math.isfinite(arg) for arg in args):
        raise ValueError(f"{dist}() takes finite numbers (got {name}={text!r})")
    arity = DISTRIBUTIONS[dist]
    if (arity is None and not args) or (arity is not None and len(args) != arity):
        need = "one or more" if arity is None else str(arity)
        raise ValueError(f"{dist}() takes {need} arguments (got {len(args)} in {name}={text!r})")
    return dist, args


class SweepSpec(TrainSpec):
    """A TrainSpec plus the search: each `search` entry replaces one field per trial."""

    search: dict[str, str] = Field(
        default_factory=dict, description="NAME=DIST(ARGS), e.g. lr=loguniform(1e-4,1e-1)"
    )
    trials: PositiveInt = Field(8, description="number of trials")
    scheduler: Literal["asha", "none"] = Field("asha", description="early stopping of trials")
    search_alg: Literal["random", "optuna"] = Field("random", description="search algorithm")
    max_concurrent: PositiveInt | None = Field(None, description="trials running at once")
    grace_period: PositiveInt = Field(1, description="epochs before ASHA may stop a trial")

    @field_validator("search")
    @classmethod
    def _known_parameters(cls, search: dict[str, str]) -> dict[str, str]:
        if not search:
            raise ValueError("give at least one --search NAME=DIST(ARGS)")
        searchable = sorted(set(TrainSpec.model_fields) - _NOT_SEARCHABLE)
        for name, text in search.items():
            if name not in searchable:
                hint = difflib.get_close_matches(name, searchable, n=1)
                did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ValueError(f"unknown search parameter {name!r}{did_you_mean}; "
                                 f"searchable: {', '.join(searchable)}")
            dist, _ = parse_distribution(name, text)
            if dist != "choice" and number_kind(TrainSpec.model_fields[name].annotation) is None:
                raise ValueError(f"search {name}={text!r}: {dist}() draws numbers, and {name} "
                                 "is no number; give it choice(...)")
        return search

    def base_spec(self) -> TrainSpec:
        """The training spec every trial starts from."""
        fields = {k: v for k, v in self.model_dump().items() if k in TrainSpec.model_fields}
        return TrainSpec.model_validate(fields)


# --- export -----------------------------------------------------------------------------------
class ExportSpec(SpecBase):
    """What `waldo export` and an export job do: which checkpoint, and how to write, check and
    register it. Validated here, so the CLI and the jobs API refuse a bad value up front."""

    run: str | None = Field(None, min_length=1, description="MLflow run whose best checkpoint to export")
    checkpoint: str | None = Field(None, min_length=1, description="a .ckpt file written by `waldo train`")
    name: ModelName | None = Field(
        None, description="model name in the repository and the registry "
        "(default: the architecture, e.g. cnn, or cnn-localize)")
    opset: Opset = Field(DEFAULT_OPSET, description=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET}")
    precision: ExportPrecision = Field(
        "fp32", description="fp16 and int8 are scored against fp32 on the validation split")
    output: str = Field("models", min_length=1, description="model repository folder")
    publish: bool = _publish_field(_PUBLISH_HELP)
    alias: AliasName | None = Field(
        None, description="move this MLflow alias (e.g. production) to the new version; implies publish")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlflow.db)")
    atol: PositiveFloat = Field(DEFAULT_ATOL, description="largest |onnxruntime - torch| accepted")
    max_drop: NonNegativeFloat = Field(
        DEFAULT_MAX_DROP, description="validation accuracy fp16/int8 may lose, as a fraction")
    exporter: Exporter = Field(
        "auto", description="auto: TorchScript (fast), dynamo where it cannot")

    @model_validator(mode="after")
    def _one_source(self) -> ExportSpec:
        if (self.checkpoint is None) == (self.run is None):
            raise ValueError("give exactly one of run (an MLflow run id) or checkpoint (a .ckpt path)")
        return self

    @property
    def registers(self) -> bool:
        """Whether this export becomes a registered model version (`alias` implies it)."""
        return self.publish or self.alias is not None


# --- jobs: the contract between the jobs API and the Ray job it submits -----------------------
JOB_SPECS: dict[str, type[BaseModel]] = {"train": TrainSpec, "sweep": SweepSpec, "export": ExportSpec}
JOB_ENTRYPOINT = "python -m training.jobrunner"  # fixed; the job itself travels as data:
JOB_ENV = "WALDO_JOB"  # {"kind": ..., "spec": {...}} as JSON in this environment variable
JOB_RESULT_PREFIX = "WALDO_RESULT "  # the runner's last line: this prefix, then JSON
