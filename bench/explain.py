"""What explanations cost on the CPU: prediction with and without the explain outputs in the
file, and the extra time of a class activation map (CAM) and of occlusion over a prediction.

For each model, a randomly initialized classifier (10 classes, the model's own channels) at
`--size` px is exported twice with the export's own steps (`training.export.explain` and
`parity.export_checked`): plain, and with its explain outputs. Then, on ONNX Runtime as the
service runs it (`serving.runtime.load`, the service's default settings), one image at a time:

- predict: the median latency of a prediction (the service asks for the prediction output
  only) on the plain file and on the file with explain outputs, timed in alternating rounds so
  that drift on a busy machine hits both alike; the ratio's goal is 1 within 5%;
- CAM (models whose head pools globally): one run that also fetches the last stage's maps and
  the CAM weights, plus the map in numpy (`serving.explain.class_activation_map`), minus a
  prediction (goal: at most 2 ms; TorchCAM reports about 0.14 ms for CAM alone at 224 px);
- occlusion: the service's forward-only method at `--passes` forward passes, batched in
  `--max-batch` as the service's batcher would, plus the map, minus a prediction;
- pictures: drawing the answer's PNGs (the input, the overlay, a grid per stage, the filters)
  and encoding them, which the endpoint adds on top.

Weights do not change speed, so nothing is trained.

    .venv/bin/python bench/explain.py                       # cnn, lenet5, resnet18 at 64 px
    .venv/bin/python bench/explain.py --models resnet18 --size 224 --repeats 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def export_both(name: str, size: int, root: Path) -> dict[str, Path]:
    """`root/<name>-plain/1` and `root/<name>-explain/1`, as `waldo export` lays them out."""
    import torch

    from serving.modelcard import InputSpec, ModelCard
    from training.export.card import card_outputs
    from training.export.explain import attach_constants, explain_graph
    from training.export.layout import write_version
    from training.export.parity import export_checked
    from training.models import create_model, get_model_info

    channels = get_model_info(name).default_input[0]
    torch.manual_seed(0)
    net = create_model(name, num_classes=10, in_channels=channels, image_size=size).eval()
    shape = (channels, size, size)
    graph = explain_graph(net, shape)
    folders = {}
    for kind in ("plain", "explain"):
        if kind == "plain":
            model = export_checked(net, shape, output_names=["logits"]).model
        else:
            model = export_checked(graph.net, shape, output_names=["logits", *graph.outputs]).model
            model = attach_constants(model, graph.constants)

        def card(version: int, kind=kind) -> ModelCard:
            return ModelCard(name=f"{name}-{kind}", version=str(version), task="classify",
                             labels=[str(k) for k in range(10)], architecture=name,
                             input=InputSpec(channels=channels, height=size, width=size,
                                             mean=[0.5] * channels, std=[0.25] * channels),
                             outputs=card_outputs("classify"),
                             explain=graph.spec if kind == "explain" else None)

        folders[kind], _ = write_version(model, card, output=root, name=f"{name}-{kind}", version=1)
    return folders


def load(folder: Path):
    from serving.repository import ModelVersion
    from serving.runtime import load as load_version
    from serving.settings import Settings

    version = ModelVersion(folder.parent.name, folder.name, folder)
    return load_version(version, Settings(models=[str(folder.parent.parent)]), str(folder))


def median_ms(call, repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def alternating_ms(calls: dict[str, object], repeats: int, rounds: int = 10) -> dict[str, float]:
    """Each call's median over `rounds` alternating rounds of `repeats // rounds` calls."""
    samples: dict[str, list[float]] = {k: [] for k in calls}
    per_round = max(1, repeats // rounds)
    for call in calls.values():
        for _ in range(5):
            call()
    for n in range(rounds):
        order = list(calls.items()) if n % 2 == 0 else list(reversed(calls.items()))
        for key, call in order:
            for _ in range(per_round):
                start = time.perf_counter()
                call()
                samples[key].append(1e3 * (time.perf_counter() - start))
    return {k: statistics.median(v) for k, v in samples.items()}


def bench_model(name: str, size: int, repeats: int, passes: int, max_batch: int) -> dict:
    import numpy as np

    from serving import explain

    with tempfile.TemporaryDirectory() as tmp:
        folders = export_both(name, size, Path(tmp))
        plain, explained = load(folders["plain"]), load(folders["explain"])
    card = explained.card
    x = np.random.default_rng(0).standard_normal(
        (1, card.input.channels, size, size)).astype(np.float32)
    predict = alternating_ms({"plain": lambda: plain.run(x), "explain": lambda: explained.run(x)},
                             repeats)
    out = {"plain_ms": predict["plain"], "explain_ms": predict["explain"], "cam_ms": None}
    if explain.uses_cam(card):
        spec = card.explain
        fetch = (spec.stages[-1].output, spec.cam_weight.output)

        def cam():
            got = explained.run_outputs(x, fetch)
            column = int(got[explained.output_name][0].argmax())
            explain.class_activation_map(got[fetch[0]][0], got[fetch[1]], column)

        out["cam_ms"] = median_ms(cam, repeats) - predict["explain"]
    async def run(chunk):
        return explained.run(chunk)

    def occlusion():
        out = explained.run(x)
        target = explain.resolve_target(card, out[0], None)
        asyncio.run(explain.class_map(card, x, out, {}, target, run, passes=passes,
                                      max_batch=max_batch))

    if explain.uses_cam(card):  # occlusion on the same file: what a dense head gets
        card = card.model_copy(update={"explain": None})
    out["occlusion_ms"] = median_ms(occlusion, max(5, repeats // 10), warmup=2) - predict["explain"]
    out["passes"] = 1 + len(explain.occlusion_windows(size, size, passes))
    card = explained.card
    stages = list(card.explain.stages) if card.explain is not None else []
    names = explain.outputs_to_fetch(card, stages)
    extras = explained.run_outputs(x, names)
    heat = np.random.default_rng(1).random((size, size)).astype(np.float32)
    out["pictures_ms"] = median_ms(lambda: explain.answer_parts(card, x[0], heat, extras, stages, False),
                                   max(5, repeats // 20), warmup=1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "lenet5", "resnet18"])
    parser.add_argument("--size", type=int, default=64, help="input side in px")
    parser.add_argument("--repeats", type=int, default=400, help="timed predictions per file")
    parser.add_argument("--passes", type=int, default=50, help="occlusion's forward passes "
                        "(the service's explain_passes default)")
    parser.add_argument("--max-batch", type=int, default=32, help="the service's max_batch_size")
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    import onnxruntime

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.2f}; onnxruntime {onnxruntime.__version__}; {args.size}x{args.size} "
          "px, batch 1, the service's session settings")
    header = (f"{'model':10s} {'predict ms':>11s} {'+explain ms':>12s} {'ratio':>6s} "
              f"{'CAM +ms':>8s} {'occlusion +ms':>14s} {'passes':>7s} {'pictures ms':>12s}")
    print(header)
    print("-" * len(header))
    for name in args.models:
        r = bench_model(name, args.size, args.repeats, args.passes, args.max_batch)
        cam = f"{r['cam_ms']:8.3f}" if r["cam_ms"] is not None else f"{'n/a':>8s}"
        print(f"{name:10s} {r['plain_ms']:11.3f} {r['explain_ms']:12.3f} "
              f"{r['explain_ms'] / r['plain_ms']:6.3f} {cam} {r['occlusion_ms']:14.2f} "
              f"{r['passes']:7d} {r['pictures_ms']:12.1f}", flush=True)
    print("# ratio = predict ms of the file with explain outputs / without (goal 1 within 5%); "
          "CAM +ms over a prediction (goal <= 2 ms; n/a: the head is dense, so the service "
          f"occludes); load {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
