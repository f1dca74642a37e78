"""`waldo promote NAME VERSION --alias production`: move an alias only with evidence.

The candidate version and the alias's current holder are scored on the same test split
through ONNX Runtime; the alias moves when the thresholds hold (or with --force and a
reason), and the evaluation run in MLflow (experiment `waldo-promotions`) keeps the evidence.
Exit status: 0 moved, 1 refused (the version stays registered without the alias), 2 a user
error (unknown model, version or alias, an incompatible candidate, no data to judge on).
"""

from __future__ import annotations

import argparse
import os

from training.spec import PromoteSpec
from training.spec.flags import add_spec_flags, spec_from_args

DESCRIPTION = (
    "Score VERSION of NAME and the version ALIAS points at on the same held-out data (the "
    "candidate run's test split unless --data/--data-dir name other data) through ONNX "
    "Runtime, and move ALIAS to VERSION only when the thresholds hold: --min-accuracy "
    "(also a first promotion's bound), --min-delta (default 0: no worse than the holder), "
    "--min-relative-delta, --max-latency-ms. The comparison is an MLflow run in the experiment "
    "waldo-promotions; the move is recorded in the alias history (waldo history NAME). Exit "
    "status 0: moved; 1: refused (VERSION stays registered, the alias keeps its version); "
    "2: a bad name, version or alias, a candidate of another task, labels or input shape.")


def cmd_promote(args: argparse.Namespace) -> int:
    spec = spec_from_args(args, spec_cls=PromoteSpec)
    if getattr(args, "print_spec", False):
        print(spec.to_yaml(), end="")
        return 0
    from training.promotion import promote

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    result = promote(spec)
    print("\n".join(result.summary()))
    return 0 if result.moved else 1


def add_parser(sub: argparse._SubParsersAction, print_spec_help: str) -> None:
    """Add `waldo promote` to the `waldo` command."""
    p = sub.add_parser("promote", help="move an alias to a version only when it beats the "
                       "holder (the promotion gate)", description=DESCRIPTION)
    p.add_argument("name", metavar="NAME", help=PromoteSpec.model_fields["name"].description)
    p.add_argument("version", metavar="VERSION",
                   help=PromoteSpec.model_fields["version"].description)
    add_spec_flags(p, spec_cls=PromoteSpec, exclude={"name", "version"})
    p.add_argument("--print-spec", action="store_true", help=print_spec_help)
    p.set_defaults(func=cmd_promote)
