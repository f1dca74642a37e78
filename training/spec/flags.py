"""One command-line flag per spec field, and how flags are read back into a spec.

Every `waldo` subcommand that takes a spec (train, sweep, compare, export, jobs submit) builds
its flags here, so flags and spec files never drift apart, and number flags are read by
`Number` in one place. Torch-free, like the specs it feeds.
"""

from __future__ import annotations

import argparse
import math
import re
import typing
from typing import Any

from pydantic import BaseModel

from training.errors import WaldoError
from training.spec.fields import number_kind
from training.spec.files import load_yaml, parse_yaml
from training.spec.recipe import DEFAULT_DATA, DEFAULT_TASK, RECIPE_FIELDS, VARYING, recipe_row
from training.spec.specs import WORKER_RANGE, TrainSpec, build_spec


class Number:
    """The `type` of every integer and float flag: the text as a number, or one line naming the
    value and what the flag accepts (argparse puts the flag in front). The one place flags are
    read as numbers: Python's own int() and float() also take digits such as '²' and then fail
    with an error that names no flag. A number outside a spec field's range goes on to the
    spec, which names the field and its range as it does for a YAML file; `low`/`high`
    (inclusive) and `above`/`below` (exclusive) bound the flags that are no spec field."""

    _INTEGER = re.compile(r"[+-]?\d+", re.ASCII)

    def __init__(self, kind: str, *, low: float | None = None, high: float | None = None,
                 above: float | None = None, below: float | None = None, ranges: bool = False):
        self.kind, self.ranges = kind, ranges  # kind: "an integer" or "a number"
        self.low, self.high, self.above, self.below = low, high, above, below

    def accepted(self) -> str:
        if self.ranges:
            return "a count (e.g. 2) or a range MIN-MAX (e.g. 2-4)"
        if self.low is not None and self.high is not None:
            bounds = [f"from {self.low:g} to {self.high:g}"]
        else:
            bounds = [f"{word} {value:g}" for word, value in (
                ("of at least", self.low), ("of at most", self.high), ("above", self.above),
                ("below", self.below)) if value is not None]
        example = "(e.g. 3)" if self.kind == "an integer" else "(e.g. 0.5 or 1e-3)"
        return f"{self.kind} {' and '.join(bounds) or example}"

    def __call__(self, text: str) -> int | float | str:
        value = self._parse(text.strip())
        if value is None or not self._within(value):
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: expects {self.accepted()}")
        return value

    def _parse(self, text: str) -> int | float | str | None:
        if self._INTEGER.fullmatch(text):
            return int(text)
        if self.ranges and WORKER_RANGE.fullmatch(text):
            return text  # the spec reads MIN-MAX
        if self.kind == "a number" and text.isascii():
            try:
                return float(text)
            except ValueError:
                return None
        return None

    def _within(self, value: int | float | str) -> bool:
        if isinstance(value, str):
            return True
        bounded = any(b is not None for b in (self.low, self.high, self.above, self.below))
        if bounded and not math.isfinite(value):
            return False
        return ((self.low is None or value >= self.low) and (self.high is None or value <= self.high)
                and (self.above is None or value > self.above)
                and (self.below is None or value < self.below))


def resolved_defaults(spec_cls: type[BaseModel], given: dict[str, Any]) -> dict[str, Any]:
    """The value each field of `spec_cls` takes when left out, for the task and data in `given`
    (the declared default, or the recipe's for that task and data kind)."""
    values = {name: None if field.is_required() else field.get_default(call_default_factory=True)
              for name, field in spec_cls.model_fields.items()}
    if not _has_recipe(spec_cls):  # a spec without data (predict): its own defaults only
        return values
    row = recipe_row(given.get("task", DEFAULT_TASK), given.get("data", DEFAULT_DATA)) or {}
    return {**values, **{k: v for k, v in row.items() if k in values}}


def _has_recipe(spec_cls: type[BaseModel]) -> bool:
    """Whether the recipe's defaults per task and data apply to `spec_cls` (it names the data)."""
    return "data" in spec_cls.model_fields and "batch_size" in spec_cls.model_fields


def _shown(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


class SpecHelp(argparse.Action):
    """`--help` of a spec command: each flag's default is the value that will be used for the
    task, data and model given before `--help` (and in a `--config` file given before it), so
    `waldo train --data cifar10 --help` shows cifar10's defaults."""

    def __init__(self, option_strings, dest, spec_cls: type[BaseModel], texts: dict[str, tuple],
                 defaults: dict[str, Any] | None = None, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.spec_cls, self.texts = spec_cls, texts  # field -> (its action, help without default)
        self.fixed = dict(defaults or {})  # the command's own defaults (waldo compare's)

    def __call__(self, parser, namespace, values, option_string=None):
        given = dict(self.fixed)
        given.update(load_yaml(namespace.config) if getattr(namespace, "config", None) else {})
        given.update({k: v for k, v in vars(namespace).items() if k in ("task", "data", "model")})
        defaults = {**resolved_defaults(self.spec_cls, given), **self.fixed}
        on = f"{given.get('task', DEFAULT_TASK)} on {given.get('data', DEFAULT_DATA)}"
        recipe = _has_recipe(self.spec_cls)
        for name, (action, text) in self.texts.items():
            default = defaults.get(name)
            if name in self.fixed:  # the command's own: whatever the data
                action.help = f"{text} (default: {_shown(default)})"
            elif (name not in VARYING or not recipe) and (default is None or default == {}):
                action.help = text
            elif name in VARYING and recipe:  # epochs, batch_size, augment, ...: per task and data kind
                action.help = f"{text} (default for {on}: {_shown(default)}; see --data)"
            else:
                action.help = f"{text} (default: {_shown(default)})"
        parser.print_help()
        parser.exit()


def add_spec_flags(parser: argparse.ArgumentParser, exclude: set[str] = frozenset(),
                    spec_cls: type[BaseModel] = TrainSpec,
                    defaults: dict[str, Any] | None = None) -> None:
    """One flag per spec field, so flags and spec files can never drift apart.

    Help comes from the field's description, the choices from its Literal type, and a field
    may name its option strings in `json_schema_extra={"flags": [...]}` (`--publish` and its
    old name `--register`). Flags default to "not given" and pydantic validates the values, so
    a flag and the same key in a YAML file behave identically. `--help` shows the defaults for
    the task and data given (SpecHelp); `defaults` are a command's own, which the spec starts
    from (`spec_from_args(args, defaults)`), and the help shows them instead.
    """
    parser.add_argument("--config", metavar="SPEC.yaml", help="spec file; flags override it")
    spec_group = parser.add_argument_group("spec fields")
    recipe_group = parser.add_argument_group(
        "recipe (augmentation, regularization, warmup, averaging, speed)")
    texts: dict[str, tuple[argparse.Action, str]] = {}
    for name, field in spec_cls.model_fields.items():
        if name in exclude:
            continue
        group = recipe_group if name in RECIPE_FIELDS else spec_group
        if name == "search":  # repeated --search NAME=DIST(ARGS), kept as text for the spec
            group.add_argument("--search", dest="search", action="append", default=argparse.SUPPRESS,
                               metavar="NAME=DIST(ARGS)", help=field.description)
            continue
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        flags = list(extra.get("flags") or ["--" + name.replace("_", "-")])
        help_text = field.description or ""
        if typing.get_origin(field.annotation) is list:  # sources -> repeated --source VALUE
            flag = "--" + name.removesuffix("s").replace("_", "-")
            group.add_argument(flag, dest=name, action="append", default=argparse.SUPPRESS,
                               metavar=name.removesuffix("s").upper(), help=f"{help_text} (repeat it)")
            continue
        if name.endswith("_args"):  # model_args -> repeated --model-arg KEY=VALUE
            group.add_argument("--" + name.removesuffix("s").replace("_", "-"), dest=name,
                               action="append", metavar="KEY=VALUE", default=argparse.SUPPRESS,
                               help=help_text)
            continue
        if field.annotation in (bool, bool | None):  # None: decided at run time (progress_bar)
            action = group.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction,
                                        default=argparse.SUPPRESS, help=help_text)
        else:
            is_literal = typing.get_origin(field.annotation) is typing.Literal
            choices = typing.get_args(field.annotation) if is_literal else ()
            if choices:
                help_text += f"; one of {', '.join(map(str, choices))}"
            kind = number_kind(field.annotation)
            number = {"type": Number(kind, ranges=name == "workers")} if kind else {}
            action = group.add_argument(*flags, dest=name, default=argparse.SUPPRESS,
                                        metavar=name.upper(), help=help_text, **number)
        texts[name] = (action, help_text)
    # The parser's own --help gives way to one that knows the spec: argparse's "resolve"
    # conflict handler replaces an option, here only while --help is added.
    spec_group.conflict_handler = "resolve"
    spec_group.add_argument("-h", "--help", action=SpecHelp, spec_cls=spec_cls, texts=texts,
                            defaults=defaults,
                            help="show this help, with the defaults for the --task, --data and "
                                 "--model given before it, and exit")
    spec_group.conflict_handler = parser.conflict_handler


def parse_pairs(flag: str, pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise WaldoError(f"malformed {flag} {pair!r}: expected KEY=VALUE, e.g. {flag} size=64")
        try:
            out[key] = parse_yaml(value)
        except ValueError as exc:
            raise WaldoError(f"malformed {flag} {pair[:80]!r}: the value {exc}") from None
    return out


def spec_from_args(args: argparse.Namespace, defaults: dict[str, Any] | None = None,
                    spec_cls: type[TrainSpec] = TrainSpec) -> TrainSpec:
    overrides = {k: v for k, v in vars(args).items() if k in spec_cls.model_fields}
    if "search" in overrides:
        pairs = [item.partition("=") for item in overrides["search"]]
        bad = [item for item, (_, sep, _) in zip(overrides["search"], pairs) if not sep]
        if bad:
            raise WaldoError(f"malformed --search {bad[0]!r}: expected NAME=DIST(ARGS), "
                             "e.g. --search 'lr=loguniform(1e-4,1e-1)'")
        overrides["search"] = {k.strip(): v.strip() for k, _, v in pairs}
    for name in ("model_args", "data_args"):
        if name in overrides:
            flag = "--" + name.removesuffix("s").replace("_", "-")
            overrides[name] = parse_pairs(flag, overrides[name])
    base = dict(defaults or {})
    if args.config:
        base.update(load_yaml(args.config))
        if "register" in base:  # the old name of `publish`; a --publish flag still wins
            base.setdefault("publish", base.pop("register"))
    return build_spec(spec_cls, None, {**base, **overrides})


__all__ = ["Number", "SpecHelp", "add_spec_flags", "parse_pairs", "resolved_defaults", "spec_from_args"]
