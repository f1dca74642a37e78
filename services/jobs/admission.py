"""What a spec must satisfy before the jobs API submits it: the API is a trust boundary, and a
token holder may ask only for what the operator allows.

The request body is typed (`JobRequest`: a union of `TrainJob`, `SweepJob`, `ExportJob`,
`PromoteJob` and `PredictJob`, told apart by `kind`), so the OpenAPI document shows each spec's
schema. Every rule below comes from what the spec's fields declare (`training.spec.Rules`), so a
new field states its root, its bound or that the server owns it where it is declared. A spec is
refused with a 422 ApiError naming the field, in this order:
1. Its shape: nothing nested deeper than MAX_DEPTH, checked without recursion before pydantic
   sees it (pydantic fails with a RecursionError past ~250 levels). Non-finite numbers (JSON's
   `1e999` parses to inf, `NaN` to nan) are the spec class's to refuse, as for the CLI.
2. Server fields (`Rules.server`: `tracking_uri`, `ray_address`) belong to the server
   (`server_field`).
3. The spec class itself (training.spec): types, names, choices, and the one rule for model
   arguments that the CLI and spec files follow too (`invalid_spec`).
Then `admit(spec, settings)` returns the spec to submit:
4. Locations (`Rules.root`: `data_dir`, `storage`, `weights`, `init_from`, an export's
   `checkpoint` and `output`, a predict job's `model`, each of its `sources` and its `output`)
   lie under the configured roots (paths.py; `path_not_allowed`); the job gets their
   normalized spelling.
5. The server's defaults: its tracking URI, checkpoint storage and export output.
6. Bounds (`Rules.bound`): workers, GPUs per worker, epochs, trials, image size and loader
   workers, in the spec and in a sweep's search space (`over_limit`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Body
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from httpapi.errors import ApiError
from services.jobs.paths import check
from services.jobs.settings import JobsSettings, env_name
from training.spec import (
    JOB_SPECS,
    ExportSpec,
    PredictSpec,
    PromoteSpec,
    SweepSpec,
    TrainSpec,
    fields_with,
    format_validation_error,
    parse_distribution,
)

MAX_DEPTH = 32  # nested dicts and lists in one field (model_args, data_args)


def _refuse(code: str, message: str) -> ApiError:
    return ApiError(422, code, message)


def check_depth(spec: Any) -> None:
    """No field nests deeper than MAX_DEPTH. Iterative, so a deep body cannot exhaust the stack."""
    if not isinstance(spec, dict):
        return
    stack: list[tuple[str, Any, int]] = [(key, value, 0) for key, value in spec.items()]
    while stack:
        field, value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                raise _refuse("invalid_spec", f"field {field!r} nests deeper than {MAX_DEPTH} levels")
            stack.extend((field, item, depth + 1)
                         for item in (value.values() if isinstance(value, dict) else value))


def check_server_fields(spec_cls: type[BaseModel], spec: Any) -> None:
    """Refuse the fields the server sets (`Rules.server`), naming the setting that sets them."""
    if not isinstance(spec, dict):
        return
    for field, rules in fields_with(spec_cls, "server").items():
        if spec.get(field) is not None:
            raise _refuse("server_field", f"field {field!r} is set by the server, not by a spec "
                                          f"({env_name(rules.server)}); leave it out")


class _Admitted:
    """The validation of a job's spec in the request body: steps 1-3 of the module's docstring.
    An ApiError is no ValueError, so pydantic lets it through and FastAPI answers it as the
    error contract says; the spec class's own refusal becomes an `invalid_spec` ApiError that
    names the field as the CLI does. Such an error ends validation, so it may only be met where
    nothing else would be tried: `JobRequest` is a tagged union."""

    def __init__(self, spec_cls: type[BaseModel]):
        self.spec_cls = spec_cls

    def __call__(self, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        check_depth(value)
        check_server_fields(self.spec_cls, value)
        try:
            return handler(value)
        except ValidationError as exc:
            raise _refuse("invalid_spec", format_validation_error(exc, self.spec_cls)) from None


_SPEC = "the spec, as `waldo {kind}` takes it (flags or a --config file); fields the server sets are refused"


class TrainJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["train"]
    spec: Annotated[TrainSpec, WrapValidator(_Admitted(TrainSpec))] = Field(
        description=_SPEC.format(kind="train"))


class SweepJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["sweep"]
    spec: Annotated[SweepSpec, WrapValidator(_Admitted(SweepSpec))] = Field(
        description=_SPEC.format(kind="sweep"))


class ExportJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["export"]
    spec: Annotated[ExportSpec, WrapValidator(_Admitted(ExportSpec))] = Field(
        description=_SPEC.format(kind="export"))


class PromoteJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["promote"]
    spec: Annotated[PromoteSpec, WrapValidator(_Admitted(PromoteSpec))] = Field(
        description=_SPEC.format(kind="promote"))


class PredictJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["predict"]
    spec: Annotated[PredictSpec, WrapValidator(_Admitted(PredictSpec))] = Field(
        description=_SPEC.format(kind="predict"))


def _kind_of(body: Any) -> str | None:
    kind = body.get("kind") if isinstance(body, dict) else getattr(body, "kind", None)
    return kind if isinstance(kind, str) else None


# The body of POST /v1/jobs: which kind of job, and its spec. A tagged union: only the spec class
# of the body's kind is tried (_Admitted's errors are final), and a kind that names no job gets
# one short message (pydantic's own would echo the whole value).
_JOBS = {"train": TrainJob, "sweep": SweepJob, "export": ExportJob, "promote": PromoteJob,
         "predict": PredictJob}
JobRequest = Annotated[
    Annotated[TrainJob, Tag("train")] | Annotated[SweepJob, Tag("sweep")]
    | Annotated[ExportJob, Tag("export")] | Annotated[PromoteJob, Tag("promote")]
    | Annotated[PredictJob, Tag("predict")],
    Discriminator(_kind_of, custom_error_type="invalid_kind",
                  custom_error_message=f"give kind: one of {', '.join(JOB_SPECS)}"),
    # OpenAPI's discriminator, which pydantic does not write for a function that finds the tag.
    Body(json_schema_extra={"discriminator": {"propertyName": "kind", "mapping": {
        kind: f"#/components/schemas/{job.__name__}" for kind, job in _JOBS.items()}}})]


def _check_paths(spec_cls: type[BaseModel], spec: dict[str, Any], settings: JobsSettings) -> dict[str, Any]:
    spec = dict(spec)
    for field, rules in fields_with(spec_cls, "root").items():
        if field not in spec:
            continue
        value = spec[field]
        roots = f"{rules.root}_roots"

        def checked(value: Any, field: str = field, rules=rules, roots: str = roots) -> Any:
            if not isinstance(value, str) or rules.is_not_a_path(value):
                return value
            try:
                return check(field, value, getattr(settings, roots), env_name(roots))
            except ValueError as exc:
                raise _refuse("path_not_allowed", str(exc)) from None

        # A list of locations (a predict job's sources): every one of them.
        spec[field] = [checked(v) for v in value] if isinstance(value, list) else checked(value)
    return spec


def _with_defaults(spec_cls: type[BaseModel], spec: dict[str, Any], settings: JobsSettings) -> dict[str, Any]:
    spec = dict(spec)
    if settings.tracking_uri:
        spec["tracking_uri"] = settings.tracking_uri
    if spec_cls is ExportSpec:
        if settings.output and spec.get("output") is None:
            spec["output"] = settings.output
    elif spec_cls not in (PromoteSpec, PredictSpec):  # they take only the tracking URI
        spec.setdefault("progress_bar", False)  # logs, not a terminal
        if settings.storage and spec.get("storage") is None:
            spec["storage"] = settings.storage
    return spec


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _over(field: str, setting: str, value: Any, settings: JobsSettings, *, search: str | None = None) -> None:
    """422 when `value` is over the `setting` that bounds `field` (`search`: the distribution
    drawing it)."""
    limit = getattr(settings, setting)
    if not _is_number(value) or value <= limit:
        return
    bound = f"this server's limit of {limit} ({env_name(setting)})"
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
    bounds = {field: rules.bound for field, rules in fields_with(TrainSpec, "bound").items()}
    base = {k: v for k, v in spec.model_dump().items() if k in TrainSpec.model_fields}
    for name, text in spec.search.items():
        dist, args = parse_distribution(name, text)
        for arg in args:  # (non-finite ones: SweepSpec refused them)
            if dist != "choice" and not _is_number(arg):  # Tune would fail on it, later
                raise _refuse("invalid_spec", f"field 'search.{name}': {text!r}: {dist}() takes "
                                              f"numbers, not {arg!r}")
        if dist != "choice":
            if name in bounds:
                _over(name, bounds[name], _highest(dist, args), settings, search=text)
            continue
        for value in args:
            try:
                trial = TrainSpec.model_validate({**base, name: value})
            except ValidationError as exc:
                message = format_validation_error(exc, TrainSpec)
                raise _refuse("invalid_spec", f"field 'search.{name}': {text!r}: {message}") from None
            if name in bounds:  # the validated value: choice("100000") is 100000 epochs too
                _over(name, bounds[name], getattr(trial, name), settings, search=text)


def admit(spec: BaseModel, settings: JobsSettings) -> dict[str, Any]:
    """The spec to submit, as JSON data, from the request's validated spec (steps 4-6 of the
    module's docstring); a 422 ApiError names what is refused and why."""
    spec_cls = type(spec)
    check_server_fields(spec_cls, spec.model_dump())  # also for a spec that skipped the body's checks
    given = spec.model_dump(mode="json", exclude_unset=True)
    data = _with_defaults(spec_cls, _check_paths(spec_cls, given, settings), settings)
    try:
        validated = spec_cls.model_validate(data)
    except ValidationError as exc:
        raise _refuse("invalid_spec", format_validation_error(exc, spec_cls)) from None
    for field, rules in fields_with(spec_cls, "bound").items():
        _over(field, rules.bound, getattr(validated, field), settings)
    if isinstance(validated, SweepSpec):
        _check_search(validated, settings)
    return validated.model_dump(mode="json", exclude_unset=True)
