"""Do a localizer's class maps point at the object? The pointing game on `localization-digits`.

Trains each model as a localizer in this process (`training.running.local.train`, on the CPU,
short), then scores its test canvases: for every canvas it got right (digit present, found,
right class), whether the peak of its class map for the answer lies inside the true box
(`training.tracking.explain.pointing_game_for`: HiResCAM for dense heads, Grad-CAM for global
pooling, at the last conv stage as the run's pictures draw it, and at `--stages` before it;
each cell placed on the input where the convolutions computed it). Also scored: the inference
service's map of the same run exported to ONNX (`serving.explain.class_map`: occlusion at
`--passes` forward passes in ONNX Runtime, over the canvases the ONNX model got right).

Printed per model and map: test canvases, those scored (right answers), the pointing share, the
random baseline (a peak at a uniformly random cell of the map, exact, and a seeded sampled
estimate), their ratio, what a pointer that always says "the centre" scores on the same
canvases, the run's logged `pointing_game` metric, the training time and the load average.

    .venv/bin/python bench/pointing_game.py
    .venv/bin/python bench/pointing_game.py --models cnn --canvas 32 --train-size 1500 --epochs 3

All files (the MLflow SQLite store, checkpoints, the export) go to a temporary folder that is
removed at the end. The shares do not depend on the load; the times do.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

PARITY_ATOL = 1e-3  # the export's check of ONNX Runtime against torch, for the service's maps
HEADER = (f"{'model':<9} {'map':<22} {'test':>5} {'right':>5} {'share':>6} {'random':>6} "
          f"{'sampled':>7} {'ratio':>5} {'centre':>6} {'logged':>6} {'train s':>7} {'load':>5}")


def row(model: str, where: str, tested: int, game, logged: float, seconds: float) -> str:
    return (f"{model:<9} {where:<22} {tested:>5} {game.scored:>5} {game.share:>6.3f} "
            f"{game.baseline:>6.3f} {game.sampled:>7.3f} {game.ratio:>5.2f} {game.centre:>6.3f} "
            f"{logged:>6.3f} {seconds:>7.0f} {os.getloadavg()[0]:>5.2f}")


def service_game(result, x, targets, folder: Path, passes: int, seed: int):
    """The pointing game of the service's maps: the run exported to ONNX, each canvas the ONNX
    model gets right explained as `POST /v1/models/{name}/explain` does (occlusion for a
    localizer), through an ONNX Runtime session. The maps are in input pixels."""
    import asyncio

    import numpy as np
    import onnxruntime as ort

    from serving import explain as served
    from serving.modelcard import CARD_FILE, MODEL_FILE
    from serving.repository import load_card
    from training.export import export_run
    from training.spec import ExportSpec
    from training.tracking.pointing import pointing_game

    # The maps need no 1e-4 parity: a resnet18 localizer's export differs by about 3e-4.
    exported = export_run(ExportSpec(run=result.run_id, name="pointing", output=str(folder),
                                     tracking_uri=result.tracking_uri, atol=PARITY_ATOL))
    version = Path(exported.path)
    card = load_card(version / CARD_FILE)
    session = ort.InferenceSession(str(version / MODEL_FILE), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    images = x.numpy().astype(np.float32)
    out = np.concatenate([session.run(None, {name: images[i:i + 64]})[0]
                          for i in range(0, len(images), 64)])
    truth = targets.numpy()
    right = np.flatnonzero((truth[:, 0] > 0.5) & (out[:, 0] >= 0.5)
                           & (out[:, 5:].argmax(1) == truth[:, 5:].argmax(1)))

    async def run(chunk):
        return session.run(None, {name: chunk})[0]

    maps, method = [], "occlusion"
    for i in right:
        target = served.resolve_target(card, out[i], None)
        heat, method, _ = asyncio.run(served.class_map(card, images[i:i + 1], out[i:i + 1], {},
                                                       target, run, passes=passes, max_batch=64))
        maps.append(heat)
    maps = np.stack(maps) if maps else np.zeros((0, *images.shape[-2:]), np.float32)
    return pointing_game(maps, truth[right, 1:5], method=method, draws=200, seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet18"])
    parser.add_argument("--canvas", type=int, default=64, help="canvas side in pixels")
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--eval-size", type=int, default=500, help="validation and test canvases")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--stages", type=int, nargs="+", default=[-1, -2],
                        help="conv stages to score, -1 the last (what the run's pictures show)")
    parser.add_argument("--passes", type=int, default=50,
                        help="forward passes per occlusion map (the service's explain_passes)")
    parser.add_argument("--no-service", action="store_true", help="skip the ONNX occlusion maps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    from mlflow.tracking import MlflowClient

    from training.data import create_datamodule
    from training.errors import WaldoError
    from training.running.local import train
    from training.spec import TrainSpec
    from training.tasks import load_task_file
    from training.tracking.explain import forward_with_stages, held_out_sample, pointing_game_for

    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="waldo-pointing-"))
    data_args = {"canvas_size": args.canvas, "train_size": args.train_size,
                 "eval_size": args.eval_size}
    print(f"localization-digits, {args.canvas} px canvases, {args.train_size} training and "
          f"{args.eval_size} test canvases, {args.epochs} epochs, seed {args.seed}, "
          f"{args.threads} threads [load {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs]")
    rows = []
    try:
        os.chdir(root)
        for model in args.models:
            spec = TrainSpec(task="localize", model=model, data="localization-digits",
                             data_args=data_args, epochs=args.epochs, seed=args.seed,
                             accelerator="cpu", progress_bar=False, experiment="pointing",
                             tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                             storage=str(root / "runs"))
            started = time.perf_counter()
            result = train(spec)
            seconds = time.perf_counter() - started
            dm = create_datamodule(spec.data_spec())
            dm.setup("fit")
            x, targets = held_out_sample(dm, limit=args.eval_size)
            net = load_task_file(result.best_checkpoint).net.eval()
            with torch.no_grad():
                stages = forward_with_stages(net, x[:1])[1]
            logged = MlflowClient(result.tracking_uri).get_run(result.run_id).data.metrics
            print(f"{model}: trained in {seconds:.0f} s, test {result.metrics}", flush=True)
            for stage in args.stages:
                if not -len(stages) <= stage < len(stages):
                    continue
                game = pointing_game_for(net, x, targets, stage=stage, draws=200, seed=args.seed)
                name, _, output = stages[stage]
                where = f"{game.method} {name.removeprefix('backbone.')} {output.shape[-1]}"
                shown = logged.get("pointing_game", float("nan")) if stage == -1 else float("nan")
                rows.append(row(model, where, len(x), game, shown, seconds))
                print(rows[-1], flush=True)
            if not args.no_service:
                try:
                    game = service_game(result, x, targets, root / "models", args.passes,
                                        args.seed)
                except WaldoError as exc:
                    rows.append(f"{model:<9} service: not exported: {exc}")
                else:
                    rows.append(row(model, f"service {game.method} {args.passes}", len(x), game,
                                    float("nan"), seconds))
                print(rows[-1], flush=True)
    finally:
        os.chdir("/")
        shutil.rmtree(root, ignore_errors=True)
    print(HEADER)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
