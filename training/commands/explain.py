"""`waldo explain`: what a trained network looks at in a user's images.

For each image it prints the top classes (as `waldo predict` computes them: the ModelCard's pre-
and post-processing) and writes the pictures every run logs (`training.tracking.explain`): the
first layer's filters, the image's feature maps at every conv stage, and the class activation
map of the network's answer (Grad-CAM, or HiResCAM for dense heads; for a localizer, with the
predicted box drawn).

MODEL is an MLflow run id (its best checkpoint), `models:/NAME@ALIAS` / `models:/NAME/VERSION`
or a version folder (`model.onnx` + `modelcard.json`); `--checkpoint` names a checkpoint file.
A registered version or a version folder holds the ONNX graph, which has no gradient: there the
pictures are the service's (`serving.explain`, ONNX Runtime alone): CAM where the head pools
globally, occlusion otherwise, and the stages' maps and the filters that the export wrote as
extra outputs.
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
                    "or a version folder (model.onnx + modelcard.json); for an ONNX model the class "
                    "map is CAM where its head pools globally, else occlusion.")
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
        note = ""
        if kind == "checkpoint":
            results, written = explain_checkpoint(path, args.images, output, top_k=args.top_k)
        else:
            card = _card(path)
            results, written = explain_onnx(path, card, args.images, output, top_k=args.top_k)
            if card.explain is None:
                hint = f" (its source run: --model {card.source_run})" if card.source_run else ""
                note = (f"waldo explain: {args.model} was exported without its explain outputs: "
                        "occlusion maps only; the feature maps need a new `waldo export` or its "
                        f"run{hint}")
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


def explain_onnx(folder: Path, card: ModelCard, images: list[str], output: Path, *,
                 top_k: int = 3, passes: int = 50) -> tuple[list[dict[str, Any]], list[Path]]:
    """Predict the images with the version folder's ONNX graph in ONNX Runtime and draw what
    the service's explain endpoint draws (`serving.explain`): CAM where the file allows it, else
    occlusion at `passes` forward passes; the stages' maps and the first layer's filters where
    the file gives them (`ModelCard.explain`). The results and the files written."""
    import asyncio

    import numpy as np
    import onnxruntime as ort

    from serving import explain, pictures
    from serving.processing import postprocess
    from training.commands.predict import read_images

    batch, sizes = read_images(card, images)
    try:
        session = ort.InferenceSession(str(folder / MODEL_FILE), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        raise WaldoError(f"{folder / MODEL_FILE} does not load in ONNX Runtime: "
                         f"{' '.join(str(exc).split())}") from None
    input_name, prediction = session.get_inputs()[0].name, session.get_outputs()[0].name
    stages = list(card.explain.stages) if card.explain is not None else []
    fetch = [prediction, *explain.outputs_to_fetch(card, stages)]

    async def run(chunk):
        return session.run([prediction], {input_name: chunk})[0]

    drawn, outs = {}, []
    for i, stem in enumerate(_unique_stems(images)):
        x = batch[i:i + 1]
        extras = dict(zip(fetch, session.run(fetch, {input_name: x}), strict=True))
        out = extras.pop(prediction)
        outs.append(out)
        target = explain.resolve_target(card, out[0], None)
        heat, method, _ = asyncio.run(explain.class_map(card, x, out, extras, target, run,
                                                        passes=passes, max_batch=32))
        parts = explain.draw(card, x[0], heat, extras, stages)
        title = f"{method} for {target.label} ({target.score:.2f})"
        drawn[f"{stem}.{method}.png"] = pictures.grid([parts["heatmap"]], [title], columns=1)
        if stages:
            drawn[f"{stem}.feature_maps.png"] = pictures.stack([parts[s.output] for s in stages])
        if "filters" in parts:
            drawn["first_layer_filters.png"] = parts["filters"]
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for name, picture in drawn.items():
        picture.save(output / name)
        written.append(output / name)
    results = postprocess(card, np.concatenate(outs), sizes, top_k=top_k)
    return [{"image": str(name), **r} for name, r in zip(images, results)], written


def _line(result: dict[str, Any]) -> str:
    if "box" in result:
        b = result["box"]
        found = "object" if result["object"] else "no object"
        return (f"{result['image']}: {found} (p_c={result['p_c']:.3f}), class {result['label']} "
                f"({result['probability']:.3f}), box x={b['x']:.1f} y={b['y']:.1f} "
                f"w={b['w']:.1f} h={b['h']:.1f} px")
    top = ", ".join(f"{t['label']} ({t['probability']:.3f})" for t in result["top_k"])
    return f"{result['image']}: {top}"
