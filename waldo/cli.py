"""The `waldo` command: one parser composed from the subcommands each package owns.

- training (`training.commands.cli`): train, sweep, compare, summary, predict, explain, export,
  data, cluster, models;
- serving (`serving.cli`): serve; the registry (`serving.registry.cli`): history, rollback,
  rollout;
- the jobs API (`services.jobs.cli`): jobs.

This is the top layer: it may import every package, and none imports it. Every user mistake
ends as one line on stderr and exit status 2, never a traceback. A run that diverges (its loss
became nan or inf) ends as one line and exit status 1; Ctrl-C as 130, and SIGTERM during a run
as 143 (128 + the signal), with the MLflow run marked KILLED.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import typing
from collections.abc import Sequence

from services.jobs import cli as jobs_cli
from services.jobs.client import JobsApiError
from serving import cli as serving_cli
from serving.registry import cli as registry_cli
from training.commands import cli as training_cli
from training.errors import WaldoError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM  # what `training.tracking.runs` exits with on SIGTERM in a run


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus where to read more) and exit status 2,
    and no abbreviated flags: `--epoch 3` must fail like `epoch: 3` in a spec file does."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="waldo", description="Train, track, export and serve classic CNNs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    training_cli.register(sub)
    serving_cli.register(sub)
    registry_cli.register(sub)
    jobs_cli.register(sub)
    return parser


HELP = ("-h", "--help")


def _help_last(argv: list[str]) -> list[str]:
    """`waldo train --help --data cifar10` reads as `waldo train --data cifar10 --help`: a spec
    command's help shows the defaults for the task, data and model given (training.spec.flags),
    and argparse acts on --help where it meets it."""
    if any(a in HELP for a in argv[1:]):
        return [argv[0], *(a for a in argv[1:] if a not in HELP), "--help"]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_help_last(list(sys.argv[1:] if argv is None else argv)))
    try:
        return args.func(args)
    except BrokenPipeError:  # `waldo summary ... | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (WaldoError, JobsApiError) as exc:
        print(f"waldo {args.command}: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_USAGE)  # 1 for a diverged run, else 2
    except KeyboardInterrupt:
        print(f"waldo {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as exc:
        # Lightning turns Ctrl-C during `fit` into sys.exit(1); the run is KILLED either way.
        if isinstance(exc.__context__, KeyboardInterrupt):
            print(f"waldo {args.command}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if exc.code == EXIT_TERMINATED:
            print(f"waldo {args.command}: stopped by SIGTERM", file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(main())
