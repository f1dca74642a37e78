"""The `waldo` subcommands training owns: train, sweep, compare, summary, predict, explain, export,
promote, data and cluster, and models. Each parses, builds a spec, and hands over; the work lives elsewhere.

`register(subparsers)` adds them to the `waldo` command (`waldo.cli`). A user mistake raises
WaldoError, which `waldo` prints as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re

from training.errors import WaldoError
from training.spec import ExportSpec, PredictSpec, SweepSpec, TrainSpec, fields_with
from training.spec.flags import Number, add_spec_flags, spec_from_args


def _report(result) -> None:
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.metrics.items())
                        if k.startswith(("test_", "val_")))
    print(f"run {result.run_id}: {metrics}")
    print(f"best checkpoint: {result.best_checkpoint}")
    print(f"see the run: {result.ui_hint}")
    if getattr(result, "export", None) is not None:
        print("\n".join(result.export.summary()))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _printed(args: argparse.Namespace, spec) -> bool:
    """With --print-spec: print the resolved spec as YAML (every field, the values a run would
    use), and say so, so the command ends there."""
    if getattr(args, "print_spec", False):
        print(spec.to_yaml(), end="")
        return True
    return False


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        # Where to find and track the job (fields that declare `resume=True`); the spec is the job's.
        keeps = fields_with(TrainSpec, "resume")
        given = sorted(k for k in vars(args) if k in TrainSpec.model_fields and k not in keeps)
        given += ["config"] * bool(args.config) + ["print_spec"] * bool(args.print_spec)
        if given:
            raise WaldoError(f"--resume continues a job with the spec it was started with; it "
                             f"takes only {', '.join(map(_flag, keeps))} (got "
                             f"{', '.join(map(_flag, given))})")
        from training.running.pipeline import resume

        _report(resume(args.resume, storage_location=getattr(args, "storage", None),
                       tracking_uri=getattr(args, "tracking_uri", None),
                       ray_address=getattr(args, "ray_address", None)))
        return 0
    spec = spec_from_args(args)
    if _printed(args, spec):
        return 0
    from training.running.pipeline import run

    result = run(spec)
    _report(result)
    return _refused(result.export)


def cmd_sweep(args: argparse.Namespace) -> int:
    spec = spec_from_args(args, spec_cls=SweepSpec)
    if _printed(args, spec):
        return 0
    from training.running.pipeline import run_sweep

    result = run_sweep(spec)
    for trial in result.trials:
        print(f"trial {trial['trial_id']}: {trial['status']}, {trial['epochs']} epochs, "
              f"{json.dumps(trial['config'])}")
    print(f"best: {json.dumps(result.best_config)} -> {result.best_metric:.4f}")
    print(f"parent run {result.parent_run_id}; best trial's run {result.best_run_id}; "
          f"best checkpoint: {result.best_checkpoint}")
    print(f"see the sweep: {result.ui_hint}")
    if result.export is not None:
        print("\n".join(result.export.summary()))
    return _refused(result.export)


def cmd_compare(args: argparse.Namespace) -> int:
    from training.commands.compare import SOURCE_EXPERIMENT, compare
    from training.tracking.runs import ui_hint

    # The first network stands for all in the spec; `compare` checks each one's spec (its
    # name, its model_args) before any of them trains.
    spec = spec_from_args(args, defaults={**SOURCE_EXPERIMENT, "model": args.models[0]})
    parent_id, results = compare(args.models, spec)
    for name, result in results.items():
        print(f"{name}: ", end="")
        _report(result)
    print(f"comparison plot: run {parent_id}, artifact val_acc_comparison.png")
    any_result = next(iter(results.values()))  # the children share the parent's experiment
    print(f"see the comparison: {ui_hint(any_result.tracking_uri, any_result.experiment_id, parent_id)}")
    return 0


_SHAPE = re.compile(r"^\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*$")


def cmd_summary(args: argparse.Namespace) -> int:
    from training.commands.summary import format_summary, summarize
    from training.models import get_model_info

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
    if args.checkpoint is None:
        return _score(args)
    given = sorted(k for k in vars(args) if k in PredictSpec.model_fields and k not in ("top_k", "threshold"))
    if given or args.config or args.print_spec:
        flags = ", ".join(map(_flag, given + ["config"] * bool(args.config)
                              + ["print_spec"] * bool(args.print_spec)))
        raise WaldoError(f"--checkpoint predicts IMAGE files and prints the answers; {flags} "
                         "belong to --model MODEL --output DEST SOURCE...: give one of the two")
    if not args.images:
        raise WaldoError("--checkpoint needs IMAGE files to predict (waldo predict --checkpoint CKPT "
                         "IMAGE...)")
    from training.commands.predict import predict

    results = predict(args.checkpoint, args.images, top_k=getattr(args, "top_k", 3),
                      threshold=getattr(args, "threshold", 0.5))
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


def _score(args: argparse.Namespace) -> int:
    """`waldo predict --model MODEL --output DEST SOURCE...`: offline scoring into Parquet."""
    if args.json:
        raise WaldoError("--json prints the answers of --checkpoint; --model writes them to --output "
                         "as Parquet")
    if args.images:
        args.sources = args.images
    if not getattr(args, "model", None) and not args.config:
        raise WaldoError("give --model MODEL --output DEST SOURCE... (an exported model), or "
                         "--checkpoint CKPT IMAGE... (a training checkpoint)")
    spec = spec_from_args(args, spec_cls=PredictSpec)
    if _printed(args, spec):
        return 0
    from training.scoring import predict

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    result = predict(spec)
    print("\n".join(result.summary()))
    return 0


def _refused(export) -> int:
    """Exit status 1 when the promotion gate refused the alias (the version stays registered
    without it), else 0."""
    return 1 if export is not None and export.refused else 0


def cmd_export(args: argparse.Namespace) -> int:
    spec = spec_from_args(args, spec_cls=ExportSpec)  # a bad value fails here, before torch is imported
    if _printed(args, spec):
        return 0
    from training.export import export_run

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per step
    result = export_run(spec)
    print("\n".join(result.summary()))
    return _refused(result)


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
    from training.running import cluster

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


_PORT = Number("an integer", low=1, high=65535)
_PRINT_SPEC = ("print the resolved spec as YAML (every field, the values that would be used) "
               "and exit without running")


def register(sub: argparse._SubParsersAction) -> None:
    """Add training's subcommands to the `waldo` command."""

    p = sub.add_parser("train", help="train one network and track it in MLflow",
                       description="Train a network locally and log the run to MLflow.")
    add_spec_flags(p)
    p.add_argument("--print-spec", action="store_true", help=_PRINT_SPEC)
    p.add_argument("--resume", metavar="NAME", help="continue the Ray job NAME (its run name) "
                   "whose driver died, from --storage, in its MLflow run; with --resume only "
                   f"{', '.join(map(_flag, fields_with(TrainSpec, 'resume')))} apply")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="hyperparameter sweep on Ray Tune",
                       description="Search hyperparameters with Ray Tune; each trial is a Ray "
                       "Train job. Every spec field is a flag; --search NAME=DIST(ARGS) with DIST "
                       "one of uniform, loguniform, quniform, qloguniform, randint, choice.")
    add_spec_flags(p, spec_cls=SweepSpec)
    p.add_argument("--print-spec", action="store_true", help=_PRINT_SPEC)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("compare", help="train several networks on the same data, one experiment",
                       description="Train MODELs with the same settings as nested MLflow runs and "
                       "plot their validation accuracy. Defaults are the source material's "
                       "experiment: Adam, lr 0.005, batch 1000.")
    p.add_argument("models", nargs="+", metavar="MODEL")
    from training.commands.compare import SOURCE_EXPERIMENT  # light: the spec and a dict

    add_spec_flags(p, exclude={"model"}, defaults=SOURCE_EXPERIMENT)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("summary", help="layer-by-layer output shapes and parameter counts")
    p.add_argument("--model", required=True)
    p.add_argument("--input-shape", metavar="C,H,W", help="input shape (default: the model's own)")
    p.add_argument("--num-classes", type=Number("an integer", low=1), default=10)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("predict", help="score images with an exported model (or a checkpoint)",
                       description="With --model: score every image of SOURCEs (folders, s3:// "
                       "prefixes, packs made by `waldo data pack`, files listing images, image "
                       "files) with an exported model into Parquet at --output, in-process or on "
                       "Ray Data (--workers N), with the inference service's pre- and "
                       "post-processing; a run started again with the same --output scores only "
                       "what is missing. With --checkpoint: classify (or localize) IMAGE files "
                       "with a training checkpoint and print the answers.")
    p.add_argument("images", nargs="*", metavar="SOURCE",
                   help="what to score (with --checkpoint: image files)")
    p.add_argument("--checkpoint", help="a .ckpt file written by `waldo train` (prints the answers)")
    p.add_argument("--top-k", type=Number("an integer", low=1, high=1000), default=argparse.SUPPRESS,
                   help="classes to report per image (classification; default 5, 3 with --checkpoint)")
    p.add_argument("--threshold", type=Number("a number", low=0, high=1), default=argparse.SUPPRESS,
                   help="p_c above which an object is found (default 0.5)")
    p.add_argument("--json", action="store_true", help="with --checkpoint: print JSON")
    add_spec_flags(p, spec_cls=PredictSpec, exclude={"sources", "top_k", "threshold"})
    p.add_argument("--print-spec", action="store_true", help=_PRINT_SPEC)
    p.set_defaults(func=cmd_predict)

    from training.commands.explain import add_parser as add_explain  # light: torch is imported late

    add_explain(sub, Number)

    p = sub.add_parser("export", help="export to ONNX, check it against torch, register it",
                       description="Export a run's best checkpoint (or a checkpoint file) to ONNX "
                       "with a dynamic batch axis, check it against torch with ONNX Runtime, and "
                       "write OUTPUT/NAME/VERSION/{model.onnx, modelcard.json}; with --publish, "
                       "register it as a new MLflow model version instead (written only to the "
                       "registry); with --alias, then promote it through the promotion gate "
                       "(as `waldo promote`): refused, the version stays registered without the "
                       "alias, the verdict is printed and the exit status is 1. When a check "
                       "fails, nothing is written or registered.")
    add_spec_flags(p, spec_cls=ExportSpec)
    p.add_argument("--print-spec", action="store_true", help=_PRINT_SPEC)
    p.set_defaults(func=cmd_export)

    from training.commands.promote import add_parser as add_promote  # light: the spec

    add_promote(sub, _PRINT_SPEC)

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
