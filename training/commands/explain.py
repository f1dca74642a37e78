"""`waldo explain`: what a trained network looks at in a user's images.

For each image it prints the top classes (as `waldo predict` computes them: the ModelCard's pre-
and post-processing) and writes the pictures every run logs (`training.tracking.explain`): the
first layer's filters, the image's feature maps at every conv stage, and the class activation
map of the network's answer (Grad-CAM, or HiResCAM for dense heads; for a localizer, with the
predicted box drawn).

MODEL is an MLflow run id (its best checkpoint), `models:/NAME@ALIAS` / `models:/NAME/VERSION`
or a version folder (`model.onnx` + `modelcard.json`); `--checkpoint` names a checkpoint file.
A registered version or a version folder holds only the ONNX graph, which exposes no
activations and no gradient: for those the top classes come from ONNX Runtime and the pictures
need the run or its checkpoint.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from serving.modelcard import CARD_FILE, MODEL_FILE, ModelCard
from training.errors import WaldoError

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def add_parser(sub: argparse._SubParsersAction, number) -> None:
    """The `explain` subcommand; `number` is training.spec.flags.Number (checked flag values)."""
    p = sub.add_parser(
        "explain", help="where a trained network looks: filters, feature maps, class maps",
        description="Write the first conv layer's filters, each image's feature maps at every conv "
                    "stage and the class activation map of the network's answer (Grad-CAM, or "
                    "HiResCAM for dense heads) as PNGs into --output, and print "
                    "the top classes. MODEL: an MLflow run id, models:/NAME@ALIAS, models:/NAME/VERSION "
                    "or a version folder (model.onnx + modelcard.json); the ONNX-only ones give the "
                    "top classes, the pictures need a run or a checkpoint.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="MODEL", help="run id, models:/... or a version folder")
    source.add_argument("--checkpoint", metavar="CKPT", help="a .ckpt file written by `waldo train`")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the pictures")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top-k", type=number("an integer", low=1), default=3,
                   help="classes to report (classification)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for a run id or models:/ "
                   "(default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise WaldoError(f"--output {args.output!r} is a file; give a folder (it is created if missing)")
    with tempfile.TemporaryDirectory(prefix="waldo-explain-") as downloads:
        kind, path = _resolve(args.model, args.checkpoint, args.tracking_uri, Path(downloads))
        if kind == "checkpoint":
            results, written = explain_checkpoint(path, args.images, output, top_k=args.top_k)
            note = ""
        else:
            card = _card(path)
            results, written = _onnx_top_classes(path, card, args.images, top_k=args.top_k), []
            hint = f" (its source run: --model {card.source_run})" if card.source_run else ""
            note = (f"waldo explain: {args.model} is an ONNX model with no activations exposed: "
                    f"the feature maps and Grad-CAM need its run or checkpoint{hint}; no pictures "
                    "written")
    for result in results:
        print(_line(result))
    if written:
        print(f"{len(written)} pictures in {output}: " + ", ".join(p.name for p in written[:4])
              + (", ..." if len(written) > 4 else ""))
    if note:
        print(note, file=sys.stderr)
    return 0


def _card(folder: Path) -> ModelCard:
    from serving.repository import RepositoryError, load_card

    try:
        return load_card(folder / CARD_FILE)
    except RepositoryError as exc:
        raise WaldoError(str(exc)) from None


def _resolve(model: str | None, checkpoint: str | None, tracking_uri: str | None,
             downloads: Path) -> tuple[str, Path]:
    """("checkpoint", a .ckpt file) or ("onnx", a version folder)."""
    if checkpoint is not None:
        return "checkpoint", Path(checkpoint)
    assert model is not None  # argparse requires one of the two
    if model.startswith("models:/"):
        from serving.repository import RepositoryError, fetch
        from training.tracking.runs import resolve_tracking_uri

        try:
            return "onnx", fetch(model, downloads, resolve_tracking_uri(tracking_uri)).path
        except RepositoryError as exc:
            raise WaldoError(str(exc)) from None
    folder = Path(model)
    if folder.is_dir():
        if not ((folder / MODEL_FILE).is_file() and (folder / CARD_FILE).is_file()):
            raise WaldoError(f"--model {model!r} is a folder without {MODEL_FILE} and {CARD_FILE}: "
                             "give a version folder that `waldo export` wrote, a run id or models:/...")
        return "onnx", folder
    if _RUN_ID.match(model):
        from training.export.source import RunSource
        from training.tracking.runs import resolve_tracking_uri

        return "checkpoint", RunSource(model, resolve_tracking_uri(tracking_uri)).checkpoint(downloads)
    raise WaldoError(f"--model {model!r} is not a run id (32 hex digits), models:/NAME@ALIAS, "
                     "models:/NAME/VERSION or a version folder (model.onnx + modelcard.json)")


def explain_checkpoint(checkpoint: Path, images: list[str], output: Path, *,
                       top_k: int = 3) -> tuple[list[dict[str, Any]], list[Path]]:
    """Predict the images with the checkpoint and draw its pictures into `output`: the results
    (as `waldo predict` gives them) and the files written."""
    import torch

    from serving import pictures
    from serving.processing import postprocess
    from training.commands.predict import read_images
    from training.export.card import build_card
    from training.export.source import read_record
    from training.tasks import load_task_file
    from training.tracking import explain

    task = load_task_file(checkpoint)
    card = build_card(read_record(checkpoint))
    batch, sizes = read_images(card, images)
    x = torch.from_numpy(batch)
    net = explain.explainable(task.net)
    with torch.no_grad():
        out, stages = explain.forward_with_stages(net, x)
    results = postprocess(card, out.numpy(), sizes, top_k=top_k)
    answers = explain.read_answers(task.task, out)
    shown = explain.display_images(x, card.input.mean, card.input.std)
    captions = [explain.caption(card.labels, answers, i, None) for i in range(len(images))]
    drawn = {}
    if (filters := explain.filter_picture(net)) is not None:
        drawn["first_layer_filters.png"] = filters
    stems = _unique_stems(images)
    for stem, sheet in zip(stems, explain.feature_sheets(stages, shown, captions)):
        drawn[f"{stem}.feature_maps.png"] = sheet
    if stages:
        heat = explain.grad_cam(net, stages[-1][1], x, answers.columns)
        for i, stem in enumerate(stems):
            tile = explain.answer_tile(shown[i], answers, i, card.labels, heat=heat[i], side=224)
            drawn[f"{stem}.gradcam.png"] = pictures.grid(
                [tile], [captions[i]], columns=1,
                title=f"{explain.class_map_method(net)} at {stages[-1][0]}")
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for name, picture in drawn.items():
        picture.save(output / name)
        written.append(output / name)
    return [{"image": str(name), **r} for name, r in zip(images, results)], written


def _unique_stems(images: list[str]) -> list[str]:
    """File stems for the pictures, numbered where two images share one."""
    stems: list[str] = []
    for name in images:
        stem = Path(name).stem or "image"
        candidate, n = stem, 2
        while candidate in stems:
            candidate, n = f"{stem}-{n}", n + 1
        stems.append(candidate)
    return stems


def _onnx_top_classes(folder: Path, card: ModelCard, images: list[str], *,
                      top_k: int) -> list[dict[str, Any]]:
    """The top classes from the version folder's ONNX graph in ONNX Runtime."""
    import onnxruntime as ort

    from serving.processing import postprocess
    from training.commands.predict import read_images

    batch, sizes = read_images(card, images)
    try:
        session = ort.InferenceSession(str(folder / MODEL_FILE), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        raise WaldoError(f"{folder / MODEL_FILE} does not load in ONNX Runtime: "
                         f"{' '.join(str(exc).split())}") from None
    (out,) = session.run([session.get_outputs()[0].name], {session.get_inputs()[0].name: batch})
    return [{"image": str(name), **r}
            for name, r in zip(images, postprocess(card, out, sizes, top_k=top_k))]


def _line(result: dict[str, Any]) -> str:
    if "box" in result:
        b = result["box"]
        found = "object" if result["object"] else "no object"
        return (f"{result['image']}: {found} (p_c={result['p_c']:.3f}), class {result['label']} "
                f"({result['probability']:.3f}), box x={b['x']:.1f} y={b['y']:.1f} "
                f"w={b['w']:.1f} h={b['h']:.1f} px")
    top = ", ".join(f"{t['label']} ({t['probability']:.3f})" for t in result["top_k"])
    return f"{result['image']}: {top}"
