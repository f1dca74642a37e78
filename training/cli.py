"""The `waldo` command. It parses, builds a spec, and hands over; the work lives elsewhere.

Every user mistake ends as one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import typing
from collections.abc import Sequence
from typing import Any

import yaml

from training.errors import WaldoError
from training.spec import TrainSpec, build_spec

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus where to read more) and exit status 2,
    and no abbreviated flags: `--epoch 3` must fail like `epoch: 3` in a spec file does."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_spec_flags(parser: argparse.ArgumentParser, exclude: set[str] = frozenset()) -> None:
    """One flag per TrainSpec field, so flags and spec files can never drift apart.

    Flags default to "not given" and pydantic validates the values, so a flag and the same
    key in a YAML file behave identically.
    """
    parser.add_argument("--config", metavar="SPEC.yaml", help="spec file; flags override it")
    group = parser.add_argument_group("spec fields")
    for name, field in TrainSpec.model_fields.items():
        if name in exclude:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = field.description or ""
        if name.endswith("_args"):  # model_args -> repeated --model-arg KEY=VALUE
            group.add_argument("--" + name.removesuffix("s").replace("_", "-"), dest=name,
                               action="append", metavar="KEY=VALUE", default=argparse.SUPPRESS,
                               help=help_text)
            continue
        if field.annotation is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=f"{help_text} (default: {field.default})")
            continue
        choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal else ()
        if choices:
            help_text += f"; one of {', '.join(map(str, choices))}"
        group.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar=name.upper(),
                           help=f"{help_text} (default: {field.default})")


def _parse_pairs(flag: str, pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise WaldoError(f"malformed {flag} {pair!r}: expected KEY=VALUE, e.g. {flag} size=64")
        out[key] = yaml.safe_load(value)
    return out


def _spec_from_args(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> TrainSpec:
    overrides = {k: v for k, v in vars(args).items() if k in TrainSpec.model_fields}
    for name in ("model_args", "data_args"):
        if name in overrides:
            flag = "--" + name.removesuffix("s").replace("_", "-")
            overrides[name] = _parse_pairs(flag, overrides[name])
    base = dict(defaults or {})
    if args.config:
        from training.spec import load_yaml

        base.update(load_yaml(args.config))
    return build_spec(TrainSpec, None, {**base, **overrides})


def _report(result) -> None:
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.metrics.items())
                        if k.startswith(("test_", "val_")))
    print(f"run {result.run_id}: {metrics}")
    print(f"best checkpoint: {result.best_checkpoint}")
    print(f"see the run: {result.ui_hint}")


def cmd_train(args: argparse.Namespace) -> int:
    spec = _spec_from_args(args)
    from training.train import train

    _report(train(spec))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from training.experiments import SOURCE_EXPERIMENT, compare

    spec = _spec_from_args(args, defaults=SOURCE_EXPERIMENT)
    parent_id, results = compare(args.models, spec)
    for name, result in results.items():
        print(f"{name}: ", end="")
        _report(result)
    print(f"comparison plot: run {parent_id}, artifact val_acc_comparison.png")
    return 0


_SHAPE = re.compile(r"^\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*$")


def cmd_summary(args: argparse.Namespace) -> int:
    from training.models import get_model_info
    from training.summary import format_summary, summarize

    info = get_model_info(args.model)
    if args.input_shape is None:
        shape = info.default_input
    else:
        match = _SHAPE.match(args.input_shape)
        if not match or 0 in (shape := tuple(int(g) for g in match.groups())):
            raise WaldoError(f"malformed --input-shape {args.input_shape!r}: expected three "
                             "positive integers C,H,W, e.g. 1,28,28")
    if args.num_classes < 1:
        raise WaldoError(f"--num-classes must be at least 1 (got {args.num_classes})")
    report = summarize(args.model, shape, args.num_classes)
    print(json.dumps(report, indent=2) if args.json else format_summary(report))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from training.predict import predict

    results = predict(args.checkpoint, args.images, top_k=args.top_k, threshold=args.threshold)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        line = f"{result['image']}: "
        if "box" in result:
            b = result["box"]
            found = "object" if result["object"] else "no object"
            line += (f"{found} (p_c={result['p_c']:.3f}), class {result['label']} "
                     f"({result['probability']:.3f}), box x={b['x']:.1f} y={b['y']:.1f} "
                     f"w={b['w']:.1f} h={b['h']:.1f} px")
        else:
            line += f"{result['label']} ({result['probability']:.3f})"
        print(line)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from training.models import get_model_info, list_models

    for name in list_models():
        info = get_model_info(name)
        c, h, w = info.default_input
        print(f"{name:10s} designed for {c}x{h}x{w}, accepts inputs from {info.min_size}px")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="waldo", description="Train, track and summarize classic CNNs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one network and track it in MLflow",
                       description="Train a network locally and log the run to MLflow.")
    _add_spec_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="train several networks on the same data, one experiment",
                       description="Train MODELs with the same settings as nested MLflow runs and "
                       "plot their validation accuracy. Defaults are the source material's "
                       "experiment: Adam, lr 0.005, batch 1000.")
    p.add_argument("models", nargs="+", metavar="MODEL")
    _add_spec_flags(p, exclude={"model"})
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("summary", help="layer-by-layer output shapes and parameter counts")
    p.add_argument("--model", required=True)
    p.add_argument("--input-shape", metavar="C,H,W", help="input shape (default: the model's own)")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("predict", help="predict images with a trained checkpoint",
                       description="Classify (or localize) images with a checkpoint, using the "
                       "same pre- and post-processing as the inference service.")
    p.add_argument("--checkpoint", required=True, help="a .ckpt file written by `waldo train`")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top-k", type=int, default=3, help="classes to report (classification)")
    p.add_argument("--threshold", type=float, default=0.5, help="p_c above which an object is found")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("models", help="list the registered networks")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except WaldoError as exc:
        print(f"waldo {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"waldo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
