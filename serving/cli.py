"""`waldo serve`: the inference service from the command line.

Flags override `WALDO_*` variables, which override the defaults. It imports only serving's own
stack, so it runs in an install without torch.
"""

from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", metavar="SOURCE",
                        help="repository folders and/or registry models NAME@ALIAS (default: ./models, "
                             "or WALDO_MODELS)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument("--grpc-port", type=int,
                        help="also serve the Open Inference Protocol over gRPC on this port, on --host "
                             "(default: WALDO_GRPC_PORT; unset: no gRPC)")
    parser.add_argument("--tracking-uri", help="MLflow registry for NAME@ALIAS sources")
    parser.add_argument("--max-batch-size", type=int, help="images per ONNX Runtime run; 1: no batching")
    parser.add_argument("--max-delay-ms", type=float, help="how long a batch waits to fill")
    parser.add_argument("--poll-interval-s", type=float, help="check sources for new versions this often")
    parser.add_argument("--require-gpu", action="store_true", default=None,
                        help="fail instead of falling back to the CPU")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def register(sub: argparse._SubParsersAction) -> None:
    """Add `waldo serve` to the `waldo` command."""
    p = sub.add_parser("serve", help="run the inference service on exported ONNX models",
                       description="Serve ONNX models from a repository folder or the MLflow "
                       "registry over HTTP (FastAPI + ONNX Runtime). Needs no torch.")
    add_arguments(p)
    p.set_defaults(func=run)


def build_settings(args: argparse.Namespace):
    from pathlib import Path

    from serving.manager import registry_uri, source_conflicts
    from serving.repository import RepositoryError, parse_models_uri
    from serving.settings import Settings

    overrides = {k: v for k, v in vars(args).items()
                 if v is not None and k in Settings.model_fields}
    overrides.setdefault("grpc_host", args.host)
    settings = Settings(**overrides)
    for source in settings.models:
        uri = registry_uri(source)
        if uri is None and not Path(source).is_dir():
            raise ValueError(f"model source {source!r} is neither a folder nor a registry model "
                             "(NAME@ALIAS, NAME/VERSION, models:/...)")
        if uri is not None:
            try:
                parse_models_uri(uri)
            except RepositoryError as exc:
                raise ValueError(f"model source {source!r}: {exc}") from None
    # A model name served by two sources is refused here rather than served from one of them:
    # which one the user meant is theirs to say (the service itself keeps the first, see
    # ModelManager.conflicts).
    conflicts = source_conflicts(settings.models)
    if conflicts:
        raise ValueError("; ".join(conflicts.values()))
    return settings


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    try:
        settings = build_settings(args)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"waldo serve: error: {problems}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        print(f"waldo serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from httpapi.server import ConnectionLimits, serve
    from serving.app import create_app

    serve(create_app(settings), host=args.host, port=args.port, limits=ConnectionLimits.of(settings),
          log_level=args.log_level)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="waldo serve", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
