"""The `waldo` command. It parses, builds a spec, and hands over; the work lives elsewhere.

Every user mistake ends as one line on stderr and exit status 2, never a traceback. A run that
diverges (its loss became nan or inf) ends as one line and exit status 1; Ctrl-C as 130, and
SIGTERM during a run as 143 (128 + the signal), with the MLflow run marked KILLED.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from serving import cli as serving_cli
from training.errors import WaldoError
from training.flagtypes import Number
from training.spec import ExportSpec, SweepSpec, TrainSpec, build_spec, number_kind
from training.specfile import load_yaml, parse_yaml
from training.specrecipe import RECIPE_DEFAULTS, RecipeSpec

EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM  # what `training.tracking` exits with on SIGTERM in a run


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus where to read more) and exit status 2,
    and no abbreviated flags: `--epoch 3` must fail like `epoch: 3` in a spec file does."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_spec_flags(parser: argparse.ArgumentParser, exclude: set[str] = frozenset(),
                    spec_cls: type[BaseModel] = TrainSpec) -> None:
    """One flag per spec field, so flags and spec files can never drift apart.

    Help comes from the field's description, the choices from its Literal type, and a field
    may name its option strings in `json_schema_extra={"flags": [...]}` (`--publish` and its
    old name `--register`). Flags default to "not given" and pydantic validates the values, so
    a flag and the same key in a YAML file behave identically.
    """
    parser.add_argument("--config", metavar="SPEC.yaml", help="spec file; flags override it")
    spec_group = parser.add_argument_group("spec fields")
    recipe_group = parser.add_argument_group(
        "recipe (augmentation, regularization, warmup, averaging, speed)")
    recipe = set(RecipeSpec.model_fields) if issubclass(spec_cls, RecipeSpec) else set()
    per_data = {name for defaults in RECIPE_DEFAULTS.values() for name in defaults}
    for name, field in spec_cls.model_fields.items():
        if name in exclude:
            continue
        group = recipe_group if name in recipe else spec_group
        if name == "search":  # repeated --search NAME=DIST(ARGS), kept as text for the spec
            group.add_argument("--search", dest="search", action="append", default=argparse.SUPPRESS,
                               metavar="NAME=DIST(ARGS)", help=field.description)
            continue
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        flags = list(extra.get("flags") or ["--" + name.replace("_", "-")])
        help_text = field.description or ""
        default = "" if field.default is None else f" (default: {field.default})"
        if name in per_data:  # augment, epochs, batch_size, ...
            default = " (default: chosen per task and data, see the README)"
        if name.endswith("_args"):  # model_args -> repeated --model-arg KEY=VALUE
            group.add_argument("--" + name.removesuffix("s").replace("_", "-"), dest=name,
                               action="append", metavar="KEY=VALUE", default=argparse.SUPPRESS,
                               help=help_text)
            continue
        if field.annotation is bool:
            group.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text + default)
            continue
        is_literal = typing.get_origin(field.annotation) is typing.Literal
        choices = typing.get_args(field.annotation) if is_literal else ()
        if choices:
            help_text += f"; one of {', '.join(map(str, choices))}"
        kind = number_kind(field.annotation)
        number = {"type": Number(kind, ranges=name == "workers")} if kind else {}
        group.add_argument(*flags, dest=name, default=argparse.SUPPRESS, metavar=name.upper(),
                           help=help_text + default, **number)


def _parse_pairs(flag: str, pairs: list[str]) -> dict[str, Any]:
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


def _spec_from_args(args: argparse.Namespace, defaults: dict[str, Any] | None = None,
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
            overrides[name] = _parse_pairs(flag, overrides[name])
    base = dict(defaults or {})
    if args.config:
        base.update(load_yaml(args.config))
        if "register" in base:  # the old name of `publish`; a --publish flag still wins
            base.setdefault("publish", base.pop("register"))
    return build_spec(spec_cls, None, {**base, **overrides})


def _report(result) -> None:
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.metrics.items())
                        if k.startswith(("test_", "val_")))
    print(f"run {result.run_id}: {metrics}")
    print(f"best checkpoint: {result.best_checkpoint}")
    print(f"see the run: {result.ui_hint}")
    if getattr(result, "export", None) is not None:
        print("\n".join(result.export.summary()))


_RESUME_FLAGS = {"storage", "tracking_uri", "ray_address"}


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        given = sorted(k for k in vars(args) if k in TrainSpec.model_fields and k not in _RESUME_FLAGS)
        if given or args.config:
            flags = ", ".join("--" + k.replace("_", "-") for k in given) or "--config"
            raise WaldoError(f"--resume continues a job with the spec it was started with; it "
                             f"takes only --storage, --tracking-uri and --ray-address (got {flags})")
        from training.pipeline import resume

        _report(resume(args.resume, storage_location=getattr(args, "storage", None),
                       tracking_uri=getattr(args, "tracking_uri", None),
                       ray_address=getattr(args, "ray_address", None)))
        return 0
    spec = _spec_from_args(args)
    from training.pipeline import run

    _report(run(spec))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    spec = _spec_from_args(args, spec_cls=SweepSpec)
    from training.pipeline import run_sweep

    result = run_sweep(spec)
    for trial in result.trials:
        print(f"trial {trial['trial_id']}: {trial['status']}, {trial['epochs']} epochs, "
              f"{json.dumps(trial['config'])}")
    print(f"best: {json.dumps(result.best_config)} -> {result.best_metric:.4f}")
    print(f"parent run {result.parent_run_id}; best trial's run {result.best_run_id}; "
          f"best checkpoint: {result.best_checkpoint}")
    if result.export is not None:
        print("\n".join(result.export.summary()))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from training.experiments import SOURCE_EXPERIMENT, compare

    # The first network stands for all in the spec; `compare` checks each one's spec (its
    # name, its model_args) before any of them trains.
    spec = _spec_from_args(args, defaults={**SOURCE_EXPERIMENT, "model": args.models[0]})
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


def cmd_export(args: argparse.Namespace) -> int:
    spec = _export_spec(args)  # a bad value fails here, before torch is imported
    from training.export import export_run

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per step
    print("\n".join(export_run(spec).summary()))
    return 0


def cmd_data_pack(args: argparse.Namespace) -> int:
    from training.data import create_datamodule
    from training.data.packed import pack
    from training.spec import DataSpec

    source = "folder" if args.task == "classify" else "localization-folder"
    options = {"csv_file": args.csv_file} if args.task == "localize" else {}
    module = create_datamodule(DataSpec(task=args.task, name=source, args=options, dir=args.src,
                                        val_fraction=args.val_fraction))
    manifest = pack(module, args.dest, shard_bytes=int(args.shard_mb * 2**20))
    counts = ", ".join(f"{name} {split.count}" for name, split in manifest.splits.items())
    shards = sum(len(split.shards) for split in manifest.splits.values())
    data = "packed" if args.task == "classify" else "localization-packed"
    print(f"packed {args.src} ({source}, {len(manifest.labels)} classes; {counts}) into {shards} "
          f"shard(s) at {args.dest}; train with --data {data} --data-dir {args.dest}")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from training import cluster

    if args.cluster_command == "up":
        state = cluster.up(port=args.port, dashboard_port=args.dashboard_port, num_cpus=args.num_cpus)
        verb = "started" if state["started"] else "already running"
        print(f"Ray head {verb} at {state['address']}, dashboard {state['dashboard']}; "
              "waldo train --workers N and waldo sweep use it until `waldo cluster down`")
    elif args.cluster_command == "status":
        state = cluster.status()
        if state is None:
            print("no cluster running (start one with `waldo cluster up`)")
            return 1
        print(f"Ray head at {state['address']}, dashboard {state['dashboard']}: {state['nodes']} node(s), "
              f"{state['cpus']:g} CPUs, {state['gpus']:g} GPUs")
    else:
        state = cluster.down()
        print(f"stopped the Ray head at {state['address']}" if state else "no cluster was running")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from training.models import get_model_info, list_models

    for name in list_models():
        info = get_model_info(name)
        c, h, w = info.default_input
        print(f"{name:10s} designed for {c}x{h}x{w}, accepts inputs from {info.min_size}px")
    return 0


def _add_export_flags(p: argparse.ArgumentParser) -> None:
    """`waldo export` and `waldo jobs submit export`: one flag per ExportSpec field. Exactly one
    of --run and --checkpoint is required; ExportSpec's validator says so."""
    _add_spec_flags(p, spec_cls=ExportSpec)


def _export_spec(args: argparse.Namespace) -> ExportSpec:
    return _spec_from_args(args, spec_cls=ExportSpec)


def cmd_jobs(args: argparse.Namespace) -> int:
    """`waldo jobs ...`: the same specs as `waldo train/sweep/export`, run on the cluster."""
    import os

    from services.jobs.client import JobsApiError, JobsClient

    client = JobsClient(args.url, args.token or os.environ.get("WALDO_JOBS_TOKEN"))
    try:
        if args.jobs_command == "submit":
            if args.kind == "export":
                spec = _export_spec(args)
            else:
                spec = _spec_from_args(args, spec_cls=SweepSpec if args.kind == "sweep" else TrainSpec)
            job = client.submit(args.kind, spec.model_dump(mode="json", exclude_unset=True))
            print(f"submitted {job['id']} ({job['kind']}): {job['status']}")
        elif args.jobs_command == "list":
            for job in client.list():
                print(f"{job['id']:28s} {job['kind']:7s} {job['status']:10s} {job['submitted_at'] or ''}"
                      f"  {job['mlflow_run_url'] or ''}")
        elif args.jobs_command == "status":
            print(json.dumps(client.get(args.job_id), indent=2))
        elif args.jobs_command == "logs":
            print(client.logs(args.job_id, args.tail), end="")
        elif args.jobs_command == "stop":
            answer = client.stop(args.job_id)
            state = "stopping" if answer["stopped"] else "not running"
            print(f"{answer['id']}: {state} ({answer['status']})")
    except JobsApiError as exc:
        raise WaldoError(str(exc)) from None
    return 0


_PORT = Number("an integer", low=1, high=65535)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="waldo", description="Train, track and summarize classic CNNs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one network and track it in MLflow",
                       description="Train a network locally and log the run to MLflow.")
    _add_spec_flags(p)
    p.add_argument("--resume", metavar="NAME", help="continue the Ray job NAME (its run name) "
                   "whose driver died, from --storage, in its MLflow run; with --resume only "
                   "--storage, --tracking-uri and --ray-address apply")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="hyperparameter sweep on Ray Tune",
                       description="Search hyperparameters with Ray Tune; each trial is a Ray "
                       "Train job. Every spec field is a flag; --search NAME=DIST(ARGS) with DIST "
                       "one of uniform, loguniform, quniform, qloguniform, randint, choice.")
    _add_spec_flags(p, spec_cls=SweepSpec)
    p.set_defaults(func=cmd_sweep)

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
    p.add_argument("--num-classes", type=Number("an integer", low=1), default=10)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("predict", help="predict images with a trained checkpoint",
                       description="Classify (or localize) images with a checkpoint, using the "
                       "same pre- and post-processing as the inference service.")
    p.add_argument("--checkpoint", required=True, help="a .ckpt file written by `waldo train`")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top-k", type=Number("an integer", low=1), default=3,
                   help="classes to report (classification)")
    p.add_argument("--threshold", type=Number("a number", low=0, high=1), default=0.5,
                   help="p_c above which an object is found")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export to ONNX, check it against torch, register it",
                       description="Export a run's best checkpoint (or a checkpoint file) to ONNX "
                       "with a dynamic batch axis, check it against torch with ONNX Runtime, and "
                       "write OUTPUT/NAME/VERSION/{model.onnx, modelcard.json}. When a check "
                       "fails, nothing is written or registered.")
    _add_export_flags(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="run the inference service on exported ONNX models",
                       description="Serve ONNX models from a repository folder or the MLflow "
                       "registry over HTTP (FastAPI + ONNX Runtime). Needs no torch.")
    serving_cli.add_arguments(p)
    p.set_defaults(func=serving_cli.run)

    p = sub.add_parser("jobs", help="submit and follow jobs through the jobs API",
                       description="A client of the jobs API (services/jobs). Submitted specs are "
                       "the ones `waldo train`, `waldo sweep` and `waldo export` take.")
    p.add_argument("--url", default=os.environ.get("WALDO_JOBS_URL", "http://127.0.0.1:8001"),
                   help="the jobs API (default: WALDO_JOBS_URL or %(default)s)")
    p.add_argument("--token", help="bearer token (default: WALDO_JOBS_TOKEN)")
    p.set_defaults(func=cmd_jobs)
    jobs = p.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    submit = jobs.add_parser("submit", help="submit a train, sweep or export job")
    kinds = submit.add_subparsers(dest="kind", required=True, metavar="KIND")
    _add_spec_flags(kinds.add_parser("train", help="a training job (flags as in `waldo train`)"))
    _add_spec_flags(kinds.add_parser("sweep", help="a sweep (flags as in `waldo sweep`)"), spec_cls=SweepSpec)
    _add_export_flags(kinds.add_parser("export", help="an export (flags as in `waldo export`)"))
    jobs.add_parser("list", help="every job, newest first")
    for action, text in [("status", "one job as JSON"), ("logs", "a job's output"), ("stop", "stop a job")]:
        q = jobs.add_parser(action, help=text)
        q.add_argument("job_id", metavar="JOB_ID")
        if action == "logs":
            q.add_argument("--tail", type=Number("an integer", low=1), help="only the last N lines")

    p = sub.add_parser("data", help="prepare data sets")
    data = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    q = data.add_parser("pack", help="an image folder -> Parquet shards and a manifest (local or s3://)",
                        description="Read SRC as `folder` (classification) or `localization-folder` "
                                    "reads it for training, and write its splits as Parquet shards "
                                    "of the encoded images with a manifest to DEST (a folder or "
                                    "s3://bucket/prefix). Train from it with --data packed or "
                                    "--data localization-packed and --data-dir DEST.")
    q.add_argument("src", metavar="SRC", help="the image folder")
    q.add_argument("dest", metavar="DEST", help="a folder or s3://bucket/prefix to write")
    q.add_argument("--task", choices=["classify", "localize"], default="classify",
                   help="classify: one sub-folder per class; localize: images plus labels.csv")
    q.add_argument("--val-fraction", type=Number("a number", above=0, below=1),
                   default=TrainSpec.model_fields["val_fraction"].default,
                   help="share of the training images held out for validation, as training splits "
                        "them (default: %(default)s)")
    q.add_argument("--csv-file", default="labels.csv", help="localize: the labels CSV in SRC")
    q.add_argument("--shard-mb", type=Number("a number", above=0), default=64,
                   help="encoded image MB per shard (default 64)")
    q.set_defaults(func=cmd_data_pack)

    p = sub.add_parser("cluster", help="a persistent local Ray head that jobs join (fast starts)")
    actions = p.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    q = actions.add_parser("up", help="start a Ray head with its dashboard, in the background")
    q.add_argument("--port", type=_PORT, default=6379, help="GCS port (default: %(default)s)")
    q.add_argument("--dashboard-port", type=_PORT, default=8265,
                   help="dashboard and job submission (default: %(default)s, the jobs API's default)")
    q.add_argument("--num-cpus", type=Number("an integer", low=0),
                   help="CPUs the head offers (default: all)")
    actions.add_parser("status", help="whether it runs, its nodes, CPUs and GPUs (exit 1: none)")
    actions.add_parser("down", help="stop the head `up` started, and nothing else")
    p.set_defaults(func=cmd_cluster)

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
