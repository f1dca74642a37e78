"""`waldo history`, `waldo rollback` and `waldo rollout`: an alias's history, moving it back, and
the rollout policy that sends a candidate version a share of its traffic.

They talk to the MLflow registry only (no torch): `--tracking-uri`, else MLFLOW_TRACKING_URI,
else ./mlflow.db, as training and export use. A refusal is one line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

EXIT_USAGE = 2
TUNABLE = ("key_header", "window_s", "min_requests", "min_success_rate", "max_error_rate_increase",
           "max_p99_ms", "max_p99_ratio")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="registered model name")
    p.add_argument("--tracking-uri", help="MLflow registry (default: MLFLOW_TRACKING_URI, else "
                   "./mlflow.db)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `waldo history`, `waldo rollback` and `waldo rollout` to the `waldo` command."""
    from serving.registry.policy import RolloutPolicy

    p = sub.add_parser("history", help="every recorded alias move of a registered model",
                       description="When, by whom, from which version to which and why each alias "
                       "of NAME moved, oldest first (recorded in the registry itself).")
    _common(p)
    p.add_argument("--alias", help="only this alias's moves")
    p.add_argument("--json", action="store_true", help="the moves as a JSON list")
    p.set_defaults(func=run_history)

    p = sub.add_parser("rollback", help="move an alias back to its previous holder",
                       description="Point ALIAS of NAME back at the version that held it before "
                       "(again: further back), recorded in its history like any move.")
    _common(p)
    p.add_argument("--alias", required=True, help="e.g. production")
    p.add_argument("--reason", default="", help="why, for the history")
    p.add_argument("--by", help="who, for the history (default: WALDO_USER, else user@host)")
    p.set_defaults(func=run_rollback)

    p = sub.add_parser("rollout", help="send a candidate version a share of an alias's traffic",
                       description="Set the rollout policy of NAME@ALIAS in the registry, which "
                       "every service serving NAME@ALIAS follows within its poll interval: "
                       "--canary PCT answers PCT% of requests with --version, --shadow PCT also "
                       "sends PCT% of requests to it and drops its answers, --off ends the "
                       "rollout. Without any of them, print the current policy.")
    _common(p)
    p.add_argument("--alias", default="production", help="(default: %(default)s)")
    p.add_argument("--version", help="the candidate version (with --canary or --shadow)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--canary", type=float, metavar="PCT", help="share of requests, 0-100")
    mode.add_argument("--shadow", type=float, metavar="PCT", help="share of requests mirrored, 0-100")
    mode.add_argument("--off", action="store_true", help="end the alias's rollout")
    for field in TUNABLE:
        info = RolloutPolicy.model_fields[field]
        p.add_argument(f"--{field.replace('_', '-')}", type=type(info.default),
                       help=f"{info.description or field} (default: {info.default})")
    p.add_argument("--reason", default="", help="why, for the history")
    p.add_argument("--by", help="who, for the history (default: WALDO_USER, else user@host)")
    p.set_defaults(func=run_rollout)


def _client(args: argparse.Namespace):
    from serving.registry.client import default_tracking_uri, registry_client

    return registry_client(default_tracking_uri(args.tracking_uri))


def _refused(command: str, message: str) -> int:
    print(f"waldo {command}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return EXIT_USAGE


def _guarded(command: str, action) -> int:
    """Run `action`, turning a refusal (RegistryError, an invalid policy) or an unreachable or
    failing registry into one line and exit status 2."""
    from pydantic import ValidationError

    from serving.registry.client import RegistryError, one_line

    try:
        return action()
    except RegistryError as exc:
        return _refused(command, str(exc))
    except ValidationError as exc:
        return _refused(command, validation_line(exc))
    except Exception as exc:  # noqa: BLE001 - the registry failed: one line, not a traceback
        return _refused(command, f"the registry failed: {one_line(exc)}")


def validation_line(exc) -> str:
    """A pydantic ValidationError as one line naming each bad field, its value and the rule."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'} {e.get('input')!r}: {e['msg']}"
                     for e in exc.errors())


def run_history(args: argparse.Namespace) -> int:
    from serving.registry.moves import check_alias, history

    def action() -> int:
        if args.alias is not None:
            check_alias(args.alias)
        moves = history(_client(args), args.name, args.alias)
        if args.json:
            print(json.dumps([m.model_dump(mode="json") for m in moves], indent=2))
        elif not moves:
            print(f"{args.name}: no alias moves recorded" + (f" for @{args.alias}" if args.alias else ""))
        for move in [] if args.json else moves:
            print(move.line())
        return 0

    return _guarded("history", action)


def run_rollback(args: argparse.Namespace) -> int:
    from serving.registry.client import actor
    from serving.registry.moves import rollback

    def action() -> int:
        move = rollback(_client(args), args.name, args.alias, by=actor(args.by), reason=args.reason)
        print(f"{args.name}@{move.alias}: version {move.from_version} -> {move.to_version} (rollback)")
        return 0

    return _guarded("rollback", action)


def run_rollout(args: argparse.Namespace) -> int:
    from serving.registry.client import actor
    from serving.registry.moves import check_alias
    from serving.registry.policy import RolloutPolicy, end_policy, get_policy, set_policy

    tuned = {f: getattr(args, f) for f in TUNABLE if getattr(args, f) is not None}

    def action() -> int:
        check_alias(args.alias)
        client = _client(args)
        if args.off:
            if args.version is not None or tuned:
                return _refused("rollout", "--off takes no --version or policy settings")
            end_policy(client, args.name, args.alias, by=actor(args.by), state="off",
                       reason=args.reason or "ended by hand")
            print(f"{args.name}@{args.alias}: rollout off")
            return 0
        percent = args.canary if args.canary is not None else args.shadow
        if percent is None:
            if args.version is not None or tuned:
                return _refused("rollout", "give --canary PCT or --shadow PCT with --version, or "
                                "--off")
            policy = get_policy(client, args.name, args.alias)
            print(policy.model_dump_json(indent=2) if policy else
                  f"{args.name}@{args.alias}: no rollout policy")
            return 0
        if args.version is None:
            return _refused("rollout", "--canary and --shadow need --version V, the candidate")
        policy = RolloutPolicy(alias=args.alias, candidate=args.version, percent=percent,
                               mode="canary" if args.canary is not None else "shadow",
                               reason=args.reason, **tuned)
        stored = set_policy(client, args.name, policy, by=actor(args.by))
        print(f"{args.name}@{args.alias}: {stored.mode} {stored.percent:g}% to version "
              f"{stored.candidate}")
        return 0

    return _guarded("rollout", action)
