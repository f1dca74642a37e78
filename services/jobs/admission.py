"""What a spec must satisfy before the jobs API submits it: the API is a trust boundary, and a
token holder may ask only for what the operator allows.

`admit(kind, spec, settings)` returns the spec to submit, or raises a 422 ApiError naming the
field, in this order:
1. Its shape: nothing nested deeper than MAX_DEPTH, checked without recursion before pydantic
   sees it (pydantic fails with a RecursionError past ~250 levels). Non-finite numbers (JSON's
   `1e999` parses to inf, `NaN` to nan) are the spec class's to refuse, as for the CLI.
2. Server fields: `tracking_uri` and `ray_address` belong to the server (`server_field`).
3. Paths: `data_dir`, `storage`, an export's `checkpoint` and `output` lie under the
   configured roots (paths.py; `path_not_allowed`); the job gets their normalized spelling.
4. The server's defaults: its tracking URI, checkpoint storage and export output.
5. The spec class itself (training.spec): types, names, choices, and the one rule for model
   arguments that the CLI and spec files follow too (`invalid_spec`).
6. Bounds: workers, GPUs per worker, epochs, trials, image size and loader workers, in the
   spec and in a sweep's search space (`over_limit`).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ValidationError

from httpapi.errors import ApiError
from services.jobs.paths import check
from services.jobs.settings import JobsSettings, env_name
from training.spec import JOB_SPECS, SweepSpec, TrainSpec, format_validation_error, parse_distribution

MAX_DEPTH = 32  # nested dicts and lists in one field (model_args, data_args)

# Fields only the server sets, and the setting that does.
SERVER_FIELDS = {"tracking_uri": ("jobs track to the server's MLflow", "tracking_uri"),
                 "ray_address": ("jobs run on the server's Ray cluster", "ray_address")}

# Path fields per kind -> the settings field holding their roots.
STARTS = {"weights": "data_roots", "init_from": "storage_roots"}  # a file to start from
PATH_FIELDS = {
    "train": {"data_dir": "data_roots", "storage": "storage_roots", **STARTS},
    "sweep": {"data_dir": "data_roots", "storage": "storage_roots", **STARTS},
    "export": {"checkpoint": "storage_roots", "output": "model_roots"},
}
# Values of those fields that name no file: a torchvision weights name (DEFAULT, IMAGENET1K_V1),
# an MLflow run id or a registry URI (resolved through the server's own MLflow).
NOT_A_PATH = {"weights": re.compile(r"[A-Z][A-Z0-9_]*"),
              "init_from": re.compile(r"[0-9a-f]{32}|models:/[^/].*")}

# Spec field -> the settings field bounding it from above.
BOUNDS = {"workers": "max_workers", "max_workers": "max_workers", "gpus_per_worker": "max_gpus_per_worker",
          "epochs": "max_epochs", "trials": "max_trials", "image_size": "max_image_size",
          "loader_workers": "max_loader_workers"}


def _refuse(code: str, message: str) -> ApiError:
    return ApiError(422, code, message)


def check_depth(spec: dict[str, Any]) -> None:
    """No field nests deeper than MAX_DEPTH. Iterative, so a deep body cannot exhaust the stack."""
    stack: list[tuple[str, Any, int]] = [(key, value, 0) for key, value in spec.items()]
    while stack:
        field, value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                raise _refuse("invalid_spec", f"field {field!r} nests deeper than {MAX_DEPTH} levels")
            stack.extend((field, item, depth + 1)
                         for item in (value.values() if isinstance(value, dict) else value))


def _check_server_fields(spec: dict[str, Any]) -> None:
    for field, (why, setting) in SERVER_FIELDS.items():
        if spec.get(field) is not None:
            raise _refuse("server_field", f"field {field!r} is set by the server, not by a spec: {why} "
                                          f"({env_name(setting)}); leave it out")


def _check_paths(kind: str, spec: dict[str, Any], settings: JobsSettings) -> dict[str, Any]:
    spec = dict(spec)
    for field, roots in PATH_FIELDS[kind].items():
        value = spec.get(field)
        if field in NOT_A_PATH and isinstance(value, str) and NOT_A_PATH[field].fullmatch(value):
            continue
        if isinstance(value, str):  # other types: the spec class names the error
            try:
                spec[field] = check(field, value, getattr(settings, roots), env_name(roots))
            except ValueError as exc:
                raise _refuse("path_not_allowed", str(exc)) from None
    return spec


def _with_defaults(kind: str, spec: dict[str, Any], settings: JobsSettings) -> dict[str, Any]:
    spec = dict(spec)
    if settings.tracking_uri:
        spec["tracking_uri"] = settings.tracking_uri
    if kind == "export":
        if settings.output and spec.get("output") is None:
            spec["output"] = settings.output
    else:
        spec.setdefault("progress_bar", False)  # logs, not a terminal
        if settings.storage and spec.get("storage") is None:
            spec["storage"] = settings.storage
    return spec


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _over(field: str, value: Any, settings: JobsSettings, *, search: str | None = None) -> None:
    """422 when `value` is over the bound of `field` (`search`: the distribution drawing it)."""
    limit = getattr(settings, BOUNDS[field])
    if not _is_number(value) or value <= limit:
        return
    bound = f"this server's limit of {limit} ({env_name(BOUNDS[field])})"
    if search:
        raise _refuse("over_limit", f"field 'search.{field}': {search!r} reaches {value}, over {bound}")
    raise _refuse("over_limit", f"field {field!r}: {value!r} is over {bound}")


def _highest(dist: str, args: list[Any]) -> Any:
    """The largest value a range distribution draws (Tune's randint excludes its upper end)."""
    return max(args[:2]) - 1 if dist == "randint" else max(args[:2])


def _check_search(spec: SweepSpec, settings: JobsSettings) -> None:
    """A sweep's search replaces fields per trial: each trial must be admissible too. A choice's
    values are exactly what trials get, so each must make a valid spec within the bounds; a
    range must be of numbers, and its top within the bound."""
    base = {k: v for k, v in spec.model_dump().items() if k in TrainSpec.model_fields}
    for name, text in spec.search.items():
        dist, args = parse_distribution(name, text)
        for arg in args:  # (non-finite ones: SweepSpec refused them)
            if dist != "choice" and not _is_number(arg):  # Tune would fail on it, later
                raise _refuse("invalid_spec", f"field 'search.{name}': {text!r}: {dist}() takes "
                                              f"numbers, not {arg!r}")
        if dist != "choice":
            if name in BOUNDS:
                _over(name, _highest(dist, args), settings, search=text)
            continue
        for value in args:
            try:
                trial = TrainSpec.model_validate({**base, name: value})
            except ValidationError as exc:
                message = format_validation_error(exc, TrainSpec)
                raise _refuse("invalid_spec", f"field 'search.{name}': {text!r}: {message}") from None
            if name in BOUNDS:  # the validated value: choice("100000") is 100000 epochs too
                _over(name, getattr(trial, name), settings, search=text)


def admit(kind: str, spec: dict[str, Any], settings: JobsSettings) -> dict[str, Any]:
    """The spec to submit, as JSON data; a 422 ApiError names what is refused and why."""
    check_depth(spec)
    _check_server_fields(spec)
    data = _with_defaults(kind, _check_paths(kind, spec, settings), settings)
    spec_cls: type[BaseModel] = JOB_SPECS[kind]
    try:
        validated = spec_cls.model_validate(data)
    except ValidationError as exc:
        raise _refuse("invalid_spec", format_validation_error(exc, spec_cls)) from None
    for field in BOUNDS.keys() & spec_cls.model_fields.keys():
        _over(field, getattr(validated, field), settings)
    if isinstance(validated, SweepSpec):
        _check_search(validated, settings)
    return validated.model_dump(mode="json", exclude_unset=True)
