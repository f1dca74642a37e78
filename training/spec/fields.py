"""Spec field types that carry their checks, the bounds of what the code can handle, and the
rules each field declares where it is declared (`Rules`, read with `rules_of`/`fields_with`).

Every spec (training.spec) builds its fields from these; the jobs API checks run names with
`check_run_name` and builds its admission from the rules. Torch-free, like training.spec.
"""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import asdict, dataclass, fields
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

MIN_OPSET = DEFAULT_OPSET = 18  # the dynamo exporter writes 18 and up natively
MAX_OPSET = 23  # the newest opset torch 2.14's exporters write
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def check_model_name(name: str) -> str:
    """A name that is safe as a repository folder and an MLflow registered model."""
    if not _MODEL_NAME.fullmatch(name):
        raise ValueError(f"invalid model name {name!r}: use letters, digits, '_', '-' and '.', "
                         "starting with a letter or digit (at most 100 characters)")
    return name


def check_alias(alias: str) -> str:
    """MLflow's rules for alias names (`serving.registry.names.alias_problem`), checked before
    anything is exported or registered."""
    from serving.registry.names import alias_problem

    if (problem := alias_problem(alias)) is not None:
        raise ValueError(problem)
    return alias


def check_opset(opset: int) -> int:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset {opset} is not supported: use {MIN_OPSET} to {MAX_OPSET}")
    return opset


def check_run_name(name: str) -> str:
    """A Ray job's folder in storage is named after its run: no '/', no '..'."""
    if not _MODEL_NAME.fullmatch(name):
        raise ValueError(f"invalid run name {name!r}: use letters, digits, '_', '-' and '.', "
                         "starting with a letter or digit (at most 100 characters)")
    return name


# --- bounds on what the code can handle -------------------------------------------------------
# 9x the 224 px the ImageNet classics were designed for. At 2048 px VGG's first activation is
# 1 GB per image, so only small batches on a large GPU still train; larger sizes (the issue's
# 100000) end in an allocation error minutes in. Operators may allow less (the jobs API).
MAX_IMAGE_SIZE = 2048
MAX_SEED = 2**32 - 1  # numpy's and Lightning's seeds are unsigned 32-bit
# `model_args` / `data_args` are keyword arguments: a few flat values. The bounds keep a
# pasted document (or a JSON body) out of MLflow params and out of the Ray job's environment.
MAX_ARGS_DEPTH = 4  # levels of mappings and lists, the args mapping itself counted
MAX_ARGS_ENTRIES = 64  # keys and list items, counted through every level
MAX_ARGS_TEXT = 1024  # characters in one string


def _check_args_value(value: Any, path: str, depth: int, budget: list[int]) -> None:
    if isinstance(value, (dict, list, tuple)):
        if depth > MAX_ARGS_DEPTH:
            raise ValueError(f"nests more than {MAX_ARGS_DEPTH} levels of mappings and lists; "
                             f"at most {MAX_ARGS_DEPTH} are accepted")
        for key, item in value.items() if isinstance(value, dict) else enumerate(value):
            budget[0] -= 1
            if budget[0] < 0:
                raise ValueError(f"holds more than {MAX_ARGS_ENTRIES} entries (keys and list "
                                 f"items through every level); at most {MAX_ARGS_ENTRIES} are "
                                 "accepted")
            if isinstance(value, dict) and not isinstance(key, str):
                raise ValueError(f"key {key!r} at {path or 'the top'!r} is not text; "
                                 "mapping keys are strings")
            _check_args_value(key, path, depth, budget)  # a key's length, a list index
            where = f"{path}.{key}" if isinstance(value, dict) else f"{path}[{key}]"
            _check_args_value(item, where.removeprefix("."), depth + 1, budget)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path!r} is {value}; give a finite number")
    elif isinstance(value, int) and not isinstance(value, bool):
        if not -2**63 <= value < 2**63:
            raise ValueError(f"{path!r} is an integer beyond 64 bits")
    elif isinstance(value, str):
        if len(value) > MAX_ARGS_TEXT:
            raise ValueError(f"{path!r} holds {len(value):,} characters; at most "
                             f"{MAX_ARGS_TEXT} are accepted")
    elif value is not None and not isinstance(value, bool):
        raise ValueError(f"{path!r} is a {type(value).__name__}; give a number, string, "
                         "boolean, null, list or mapping")


def check_args(args: dict[str, Any]) -> dict[str, Any]:
    """Builder or data-set keyword arguments: finite numbers, plain JSON-like values, small."""
    _check_args_value(args, "", 1, [MAX_ARGS_ENTRIES])
    return args


# Field types that carry their checks, for every spec that has such a field.
ModelName = Annotated[str, AfterValidator(check_model_name)]
AliasName = Annotated[str, AfterValidator(check_alias)]
RunName = Annotated[str, AfterValidator(check_run_name)]
Opset = Annotated[int, AfterValidator(check_opset)]
ImageSize = Annotated[int, Field(gt=0, le=MAX_IMAGE_SIZE)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
KeywordArgs = Annotated[dict[str, Any], AfterValidator(check_args)]


# --- the rules a field declares ---------------------------------------------------------------
Root = Literal["data", "storage", "model"]  # the operator's roots (the jobs API's `*_roots`)


@dataclass(frozen=True)
class Rules:
    """What a spec field declares besides its type, as `Annotated` metadata of the field:
    `data_dir: Annotated[str | None, Rules(kind="location", root="data")] = Field(None, ...)`.
    The jobs API's admission, a sweep's search check and `waldo train --resume` are built from
    these, so a new field states its rules where it is declared, and the JSON schema shows them
    (`x-waldo`). A field that declares none gets `Rules()`.

    - kind: "location" for a path or URI that a job reads or writes (it must declare a `root`,
      or be set by the server); "name" for text that names something but no file (a run name,
      an MLflow run id). tests/unit/test_field_rules.py requires one of them of every text field
      whose name or description speaks of folders, files, paths, storage or URIs.
    - root: the operator root a location must lie under (`WALDO_JOBS_<ROOT>_ROOTS`).
    - not_a_path: a regular expression of values of a location that name no file (a torchvision
      weights name, an MLflow run id, a models:/ URI); they are not checked against the roots.
    - server: the jobs API setting that sets this field; a spec submitted there may not.
    - searchable: whether a sweep may search it (`--search NAME=...`).
    - bound: the jobs API setting that bounds it from above (`max_epochs`, ...).
    - resume: whether `waldo train --resume` takes it (where to find and track the job).
    """

    kind: Literal["value", "location", "name"] = "value"
    root: Root | None = None
    not_a_path: str | None = None
    server: str | None = None
    searchable: bool = True
    bound: str | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        if self.kind == "location" and self.root is None and self.server is None:
            raise ValueError("a location declares its root, or that the server sets it")
        if self.root is not None and self.kind != "location":
            raise ValueError("only a location has a root")

    def is_not_a_path(self, value: str) -> bool:
        """Whether `value` is one of the values of this location that name no file."""
        return self.not_a_path is not None and re.fullmatch(self.not_a_path, value) is not None

    def shown(self) -> dict[str, Any]:
        """The rules that differ from a plain value's, for the JSON schema."""
        return {f.name: value for f, value in zip(fields(self), asdict(self).values())
                if value != f.default}

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = handler(core_schema)
        if self.shown():
            schema["x-waldo"] = self.shown()
        return schema


def rules_of(spec_cls: type[BaseModel], name: str) -> Rules:
    """The rules field `name` of `spec_cls` declares (`Rules()` when it declares none)."""
    found = [item for item in spec_cls.model_fields[name].metadata if isinstance(item, Rules)]
    return found[-1] if found else Rules()


def fields_with(spec_cls: type[BaseModel], rule: str, value: Any = None) -> dict[str, Rules]:
    """Every field of `spec_cls` whose rule `rule` is set (true, not None), or equals `value`
    when one is given: `fields_with(TrainSpec, "root")`, `fields_with(TrainSpec, "searchable")`."""
    out = {}
    for name in spec_cls.model_fields:
        rules = rules_of(spec_cls, name)
        have = getattr(rules, rule)
        if (have == value) if value is not None else (have is not None and have is not False):
            out[name] = rules
    return out


NOT_SEARCHED = Rules(searchable=False)  # how a run is named, tracked or shown, not what it learns
# Where runs are tracked: the jobs API's own MLflow, and what `--resume` may name again.
TRACKING_URI = Rules(kind="location", server="tracking_uri", searchable=False, resume=True)


def number_kind(annotation: Any) -> str | None:
    """'an integer' or 'a number' for an int or float field (Optional and Annotated too)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return number_kind(args[0])
    if origin in (typing.Union, types.UnionType):
        kinds = {number_kind(arg) for arg in args} - {None}
        return kinds.pop() if len(kinds) == 1 else None
    return {int: "an integer", float: "a number"}.get(annotation)


class SpecBase(BaseModel):
    """What every spec refuses: unknown fields, nan and inf in a float field, and a boolean
    where a number is meant. Pydantic would read `epochs: true` as 1 and `lr: .inf` as a
    learning rate. Flags arrive as text ("3", "1e-3"), which stays accepted: only a real
    boolean (YAML `true`, JSON `true`) is refused, so strict types would be too strict."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            kind = number_kind(cls.model_fields[info.field_name].annotation)
            if kind is not None:
                raise ValueError(f"expects {kind}, not a boolean")
        return value

    def to_yaml(self) -> str:
        """Every field, as YAML a `--config` file takes back."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
