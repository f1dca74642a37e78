"""A sweep's spec: a `TrainSpec` plus the search, each entry a Ray Tune distribution of one
field, parsed here (`parse_distribution`) so that the CLI and the jobs API refuse a bad one
before Ray starts. Which fields may be searched is each field's rule (`Rules.searchable`).
Torch-free, like training.spec.
"""

from __future__ import annotations

import ast
import difflib
import math
import re
from typing import Annotated, Any, Literal

from pydantic import Field, PositiveInt, field_validator

from training.spec.fields import Rules, fields_with, number_kind
from training.spec.specs import TrainSpec

# name -> number of arguments (None: one or more), as in Ray Tune's search-space API.
DISTRIBUTIONS: dict[str, int | None] = {
    "uniform": 2, "loguniform": 2, "quniform": 3, "qloguniform": 3, "randint": 2, "choice": None,
}
_CALL = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.S)


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


# The training fields a sweep may search: those that declare no `searchable=False` (how a run
# is named, tracked, stored or shown, and what it learns from, are not hyperparameters).
SEARCHABLE: frozenset[str] = frozenset(fields_with(TrainSpec, "searchable", True))


class SweepSpec(TrainSpec):
    """A TrainSpec plus the search: each `search` entry replaces one field per trial."""

    search: dict[str, str] = Field(
        default_factory=dict, description="NAME=DIST(ARGS), e.g. lr=loguniform(1e-4,1e-1)"
    )
    trials: Annotated[PositiveInt, Rules(bound="max_trials")] = Field(8, description="number of trials")
    scheduler: Literal["asha", "none"] = Field("asha", description="early stopping of trials")
    search_alg: Literal["random", "optuna"] = Field("random", description="search algorithm")
    max_concurrent: PositiveInt | None = Field(None, description="trials running at once")
    grace_period: PositiveInt = Field(1, description="epochs before ASHA may stop a trial")

    @field_validator("search")
    @classmethod
    def _known_parameters(cls, search: dict[str, str]) -> dict[str, str]:
        if not search:
            raise ValueError("give at least one --search NAME=DIST(ARGS)")
        searchable = sorted(SEARCHABLE)
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


__all__ = ["DISTRIBUTIONS", "SEARCHABLE", "SweepSpec", "parse_distribution"]
