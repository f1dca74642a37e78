"""GPU training throughput: Waldo's training path against a plain PyTorch loop, and the MFU.

ResNet-50 (the registry's `resnet50`, 1000 classes) at 224 px on synthetic data, `bf16-mixed`,
channels_last, with and without torch.compile. Two paths do the same work per step:

- waldo: Waldo's own pieces, not a copy of them. A `TrainSpec` (SGD, momentum 0.9, no schedule,
  no augmentation), `training.running.steps.build_task` and `build_trainer`, the standard callbacks,
  and a data module subclassing `ImageDataModule`, so each uint8 batch goes through Waldo's
  loader, Lightning's transfer and `on_after_batch_transfer` (to float, normalize) on the
  device, then the task's training step (its metrics included).
- plain: a hand-written loop over the same network, optimizer, batch size and images: a
  DataLoader with the settings of Waldo's own, `.to(device, non_blocking=True)`, uint8 -> float
  and normalize on the device, channels_last, bf16 autocast around forward and loss, zero_grad,
  backward, step; torch.compile of the network when on.

Both are timed the same way: a mark at the end of every step (Lightning's `on_train_batch_end`,
which comes after the optimizer step; after `opt.step()` in the plain loop). On CUDA the mark
is a CUDA event recorded on the stream, which needs no host sync and so cannot hide or add one;
on the CPU it is `time.perf_counter()`. The first `--warmup-steps` are left out (compilation
falls there): images/s is the images of steps warmup+1..N over the time from the end of step
`warmup` to the end of step N. After the timed steps, on CUDA, `--sync-steps` more steps run
under torch's sync debug mode, which counts the host-device syncs per step and where they come
from; they are not timed. Each line also gives the mean loss of the first and last steps and
how far the weights moved, to show that the path trained (on random labels at lr 0.1 the loss
need not fall in a few dozen steps; on `--tiny`'s 16 images it does).

MFU = images/s x FLOP per training image / peak. ResNet-50 at 224 px: 24.5 GFLOP per image
(3 x ~4.1 GMAC x 2 FLOP: forward and a backward of twice its cost); other models and sizes are
counted with torch's FlopCounterMode. Peak: 990 TFLOP/s (H200, dense bf16), `--peak-tflops`.

    .venv/bin/python bench/gpu_train.py                          # on the GPU: both compile modes
    .venv/bin/python bench/gpu_train.py --compile off --steps 30 --json /tmp/gpu_train.json
    .venv/bin/python bench/gpu_train.py --tiny --device cpu      # CPU smoke run, seconds

Targets: at least 3,000 images/s for the waldo path on one H200, and waldo/plain >= 0.95.
Files (Lightning's root folder) go to a temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import warnings
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from steptiming import PathResult, StepTimer, device_name, load_average  # bench/steptiming.py

TARGET_IMAGES_PER_S = 3000.0
TARGET_RATIO = 0.95
RESNET50_GFLOP = 24.5  # per training image at 224 px (the issue's figure; FlopCounterMode: 24.3)
PEAK_TFLOPS = 990.0  # H200, dense bf16
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# `--tiny`: a CPU configuration that runs in seconds (the unit test's).
TINY = dict(model="cnn", image_size=32, num_classes=10, batch_size=8, steps=8, warmup_steps=3,
            pool=16, lr=0.02, precision="bf16-mixed")


def make_datamodule(args):
    """Synthetic photos through Waldo's `ImageDataModule`: uint8 (3, S, S) random images and
    random labels, held in memory; `--pool` distinct images repeated to the run's length."""
    import torch
    from torch.utils.data import Dataset, TensorDataset

    from training.data.base import ImageDataModule

    class Repeated(Dataset):
        """`base` repeated to `length` items, so one epoch holds every step of the run."""

        def __init__(self, base: Dataset, length: int):
            self.base, self.length = base, length

        def __len__(self) -> int:
            return self.length

        def __getitem__(self, i: int):
            return self.base[i % len(self.base)]  # type: ignore[arg-type]

    class SyntheticImages(ImageDataModule):
        name = "synthetic"
        task = "classify"
        in_channels = 3
        kind = "photos"
        source = "synthetic: torch.randint"  # for `describe_data`, instead of a data folder

        def __init__(self, *, length: int, **kwargs):
            super().__init__(batch_size=args.batch_size, image_size=args.image_size, **kwargs)
            self.native_size = args.image_size  # stored at the training size: no resize
            self.length = length

        def load(self):
            g = torch.Generator().manual_seed(args.seed)
            s = args.image_size
            images = torch.randint(0, 256, (args.pool, 3, s, s), dtype=torch.uint8, generator=g)
            labels = torch.randint(0, args.num_classes, (args.pool,), generator=g)
            self.labels = [f"class{i}" for i in range(args.num_classes)]
            self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
            held_out = TensorDataset(images[:args.batch_size], labels[:args.batch_size])
            return Repeated(TensorDataset(images, labels), self.length), held_out, held_out

    return SyntheticImages


class _NoRun:
    """Stands in for the MLflow run that `standard_callbacks` logs data facts to: the bench
    tracks nothing (and MLflow's store is not what it measures)."""

    def __getattr__(self, name):
        return lambda *a, **k: None


def _weights(net) -> list:
    return [p.detach().float().cpu().clone() for p in net.parameters()]


def _change(before: list, net) -> float:
    return math.sqrt(sum(float((p.detach().float().cpu() - b).pow(2).sum())
                         for b, p in zip(before, net.parameters(), strict=True)))


def make_spec(args, compile_on: bool):
    from training.spec import TrainSpec

    return TrainSpec(
        model=args.model, precision=args.precision, channels_last=True, compile=compile_on,
        batch_size=args.batch_size, epochs=1, optimizer="sgd", lr=args.lr, momentum=0.9,
        lr_schedule="none", augment="none", label_smoothing=0.0, ema_decay=None, progress_bar=False,
        accelerator="gpu" if args.device == "cuda" else "cpu", seed=args.seed,
        image_size=args.image_size,
    )


def run_waldo(args, compile_on: bool, dm_cls, root: Path) -> PathResult:
    """Waldo's path: its spec, task, Trainer and callbacks, with a timing callback added.
    Validation, checkpoints and the logger are off: they fall outside the timed steps anyway."""
    import pytorch_lightning as pl
    import torch

    from training.running.steps import build_task, build_trainer, standard_callbacks

    timer = StepTimer(torch.device(args.device), args.warmup_steps, args.steps, args.sync_steps)

    class StepMarks(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            timer.mark(len(batch[0]), loss)

    spec = make_spec(args, compile_on)
    dm = dm_cls(length=timer.total * args.batch_size)
    dm.setup("fit")
    pl.seed_everything(args.seed, workers=True, verbose=False)
    task = build_task(spec, dm)
    before = _weights(task.net)
    trainer = build_trainer(
        spec, callbacks=[StepMarks(), *standard_callbacks(spec, _NoRun(), dm)], logger=False,
        root=root, limit_train_batches=timer.total, limit_val_batches=0, num_sanity_val_steps=0,
        enable_checkpointing=False,
    )
    try:
        trainer.fit(task, datamodule=dm)
    finally:
        timer.syncs.stop()
    return timer.result(_change(before, task.net))


def waldo_loader_settings(dm_cls) -> dict:
    """The settings of Waldo's train loader (`ImageDataModule._loader`), which the plain loop
    copies so both feed the device alike."""
    dm = dm_cls(length=1)
    dm.setup("fit")
    loader = dm.train_dataloader()
    return {"pin_memory": loader.pin_memory, "num_workers": loader.num_workers,
            "persistent_workers": loader.persistent_workers, "drop_last": loader.drop_last}


def run_plain(args, compile_on: bool, dm_cls, loader_settings: dict) -> PathResult:
    """A hand-written loop doing the same work per step as the waldo path."""
    import pytorch_lightning as pl
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from training.models import create_model

    device = torch.device(args.device)
    timer = StepTimer(device, args.warmup_steps, args.steps, args.sync_steps)
    dm = dm_cls(length=timer.total * args.batch_size)
    dm.setup("fit")
    pl.seed_everything(args.seed, workers=True, verbose=False)  # the same first weights
    model = create_model(args.model, num_classes=args.num_classes, in_channels=3,
                         image_size=args.image_size)
    before = _weights(model)
    model = model.to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    net = torch.compile(model) if compile_on else model
    mean = torch.tensor(dm.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(dm.std, device=device).view(1, 3, 1, 1)
    loader = DataLoader(dm.train_set, batch_size=args.batch_size, shuffle=True,
                        num_workers=loader_settings["num_workers"],
                        persistent_workers=loader_settings["persistent_workers"],
                        drop_last=loader_settings["drop_last"],
                        pin_memory=loader_settings["pin_memory"] or args.plain_pin_memory)
    bf16 = args.precision == "bf16-mixed"
    try:
        for images, labels in loader:
            x = images.to(device, non_blocking=True)  # (B, 3, S, S) uint8
            y = labels.to(device, non_blocking=True)
            x = x.float().div_(255).sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            timer.mark(len(y), loss)
    finally:
        timer.syncs.stop()
    return timer.result(_change(before, model))


def flop_per_image(args) -> tuple[float | None, str]:
    """FLOP of one training step per image: forward and backward, counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from training.models import create_model

    try:
        with torch.device("meta"):
            net = create_model(args.model, num_classes=args.num_classes, in_channels=3,
                               image_size=args.image_size)
            x = torch.zeros(2, 3, args.image_size, args.image_size)  # 2: BatchNorm in train mode
        with FlopCounterMode(display=False) as counter:
            net(x).sum().backward()
        return counter.get_total_flops() / 2, "counted by FlopCounterMode (forward + backward)"
    except Exception as exc:  # MFU is a by-product; say why it is missing instead of failing
        return None, f"not counted ({type(exc).__name__}: {exc})"


def quiet() -> None:
    """Keep the output to the figures: no Lightning banners or warnings."""
    warnings.filterwarnings("ignore")
    for name in ["pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric",
                 "torch._dynamo", "torch._inductor"]:
        logging.getLogger(name).setLevel(logging.ERROR)


def parse_args(argv: list[str] | None):
    import torch

    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if cuda else "cpu")
    parser.add_argument("--tiny", action="store_true",
                        help="CPU smoke configuration: " + ", ".join(f"{k} {v}" for k, v in TINY.items()))
    parser.add_argument("--model", default=None, help="registry name (default resnet50)")
    parser.add_argument("--image-size", type=int, default=None, help="default 224")
    parser.add_argument("--num-classes", type=int, default=None, help="default 1000")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 (GPU), 32 (CPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 50 GPU, 10 CPU)")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="untimed steps first, compilation included (default 10 GPU, 3 CPU)")
    parser.add_argument("--sync-steps", type=int, default=None,
                        help="untimed steps after, counting host syncs (CUDA only; default 3)")
    parser.add_argument("--compile", choices=["both", "on", "off"], default="both")
    parser.add_argument("--precision", choices=["bf16-mixed", "32"], default=None,
                        help="default bf16-mixed")
    parser.add_argument("--lr", type=float, default=None, help="SGD learning rate (default 0.1)")
    parser.add_argument("--pool", type=int, default=None,
                        help="distinct synthetic images, repeated (default 4 batches)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per path; the best is kept")
    parser.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS,
                        help="peak of the device for MFU (default 990: H200 dense bf16)")
    parser.add_argument("--gflops-per-image", type=float, default=None,
                        help="training FLOP per image for MFU (default: 24.5 for resnet50 at "
                             "224 px, else counted)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="set torch.backends.cudnn.benchmark for both paths (Waldo leaves "
                             "torch's default, False)")
    parser.add_argument("--plain-pin-memory", action="store_true",
                        help="pin the plain loop's batches even where Waldo's loader does not "
                             "(shows what pinning would gain)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    from training.models import list_models

    gpu = args.device == "cuda"
    if gpu and not cuda:
        parser.error("--device cuda: torch sees no CUDA device here; use --device cpu")
    base = dict(TINY) if args.tiny else dict(
        model="resnet50", image_size=224, num_classes=1000, batch_size=256 if gpu else 32,
        steps=50 if gpu else 10, warmup_steps=10 if gpu else 3, pool=None, lr=0.1,
        precision="bf16-mixed")
    base["sync_steps"] = 3 if gpu else 0
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.model not in list_models():
        parser.error(f"unknown --model {args.model!r}; valid: {', '.join(list_models())}")
    if args.pool is None:
        args.pool = 4 * args.batch_size
    if not gpu:
        args.sync_steps = 0  # the sync debug mode is CUDA's
    if args.steps < 2 or args.warmup_steps < 1:
        parser.error("--steps must be at least 2 and --warmup-steps at least 1")
    if min(args.batch_size, args.pool, args.image_size, args.num_classes, args.repeats) < 1:
        parser.error("--batch-size, --pool, --image-size, --num-classes and --repeats must be "
                     "positive")
    return args


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    import pytorch_lightning as pl

    quiet()  # after the imports: Lightning sets its loggers' levels when imported
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    modes = {"both": [False, True], "on": [True], "off": [False]}[args.compile]
    counted, how = flop_per_image(args)
    if args.gflops_per_image is not None:
        flop, how = args.gflops_per_image * 1e9, "given (--gflops-per-image)"
    elif args.model == "resnet50" and args.image_size == 224:
        flop = RESNET50_GFLOP * 1e9
        how = "ResNet-50 at 224 px, the issue's figure" + (
            f" (FlopCounterMode: {counted / 1e9:.1f})" if counted else "")
    else:
        flop = counted
    peak = args.peak_tflops * 1e12
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_start = load_average()
    name = device_name(args.device)

    print(f"device: {name} ({args.device}); torch {torch.__version__}, lightning {pl.__version__}, "
          f"python {platform.python_version()}; load average {' '.join(map(str, load_start))}; "
          f"{started}")
    print(f"{args.model} at {args.image_size} px, batch {args.batch_size}, precision {args.precision}, "
          f"channels_last, SGD lr {args.lr:g} momentum 0.9, {args.num_classes} classes, "
          f"{args.pool} distinct images; {args.warmup_steps} warm-up + {args.steps} timed steps"
          + (f" + {args.sync_steps} sync-count steps" if args.sync_steps else "")
          + f"; cudnn.benchmark {torch.backends.cudnn.benchmark}", flush=True)

    dm_cls = make_datamodule(args)
    root = Path(tempfile.mkdtemp(prefix="waldo-gpu-bench-"))
    runs = []
    loader_settings = waldo_loader_settings(dm_cls)
    try:
        for compile_on in modes:
            best: dict[str, PathResult] = {}
            for r in range(args.repeats):
                for path in (["waldo", "plain"] if r % 2 == 0 else ["plain", "waldo"]):
                    gc.collect()  # the previous run's network, optimizer and batches
                    if args.device == "cuda":
                        torch.cuda.empty_cache()
                    torch._dynamo.reset()  # each compiled run compiles afresh (in its warm-up)
                    result = (run_waldo(args, compile_on, dm_cls, root) if path == "waldo" else
                              run_plain(args, compile_on, dm_cls, loader_settings))
                    if flop:
                        result.mfu = result.images_per_s * flop / peak
                    syncs = ("" if result.syncs_per_step is None
                             else f"  {result.syncs_per_step:.1f} syncs/step")
                    print(f"  compile {'on ' if compile_on else 'off'}  {path:<5} "
                          f"{result.images_per_s:9.1f} img/s  {result.ms_per_step_median:8.2f} "
                          f"ms/step (median)  loss {result.loss_first:.3f} -> "
                          f"{result.loss_last:.3f}, weights moved {result.param_change:.3g}, "
                          f"{result.steps} steps{syncs}", flush=True)
                    if result.compiles_in_window:
                        print(f"      warning: {result.compiles_in_window} graph(s) compiled "
                              "during the timed steps; raise --warmup-steps")
                    for site in result.sync_sites:
                        print(f"      sync at {site}")
                    if path not in best or result.images_per_s > best[path].images_per_s:
                        best[path] = result
            runs.append({"compile": compile_on, "waldo": asdict(best["waldo"]),
                         "plain": asdict(best["plain"]),
                         "ratio": best["waldo"].images_per_s / best["plain"].images_per_s})
    finally:
        shutil.rmtree(root, ignore_errors=True)

    header = (f"{'compile':<8} {'waldo img/s':>12} {'plain img/s':>12} {'ratio':>6} "
              f"{'waldo MFU':>10} {'plain MFU':>10}  result")
    print("\n" + header + "\n" + "-" * len(header))
    for run in runs:
        w, p = run["waldo"], run["plain"]
        mfu = [f"{x['mfu']:.1%}" if x["mfu"] is not None else "n/a" for x in (w, p)]
        verdict = ("PASS" if w["images_per_s"] >= TARGET_IMAGES_PER_S
                   and run["ratio"] >= TARGET_RATIO else "BELOW") if args.device == "cuda" else "-"
        print(f"{'on' if run['compile'] else 'off':<8} {w['images_per_s']:>12.1f} "
              f"{p['images_per_s']:>12.1f} {run['ratio']:>6.3f} {mfu[0]:>10} {mfu[1]:>10}  {verdict}")
    load_end = load_average()
    print(f"\ntargets: waldo >= {TARGET_IMAGES_PER_S:,.0f} img/s on one H200, ratio waldo/plain "
          f">= {TARGET_RATIO}. MFU = img/s x {flop / 1e9 if flop else float('nan'):.4g} GFLOP "
          f"per image ({how}) / {args.peak_tflops:g} TFLOP/s.")
    print(f"Waldo's train loader: pin_memory {loader_settings['pin_memory']}, "
          f"{loader_settings['num_workers']} workers"
          + ("; plain loop pinned (--plain-pin-memory)" if args.plain_pin_memory else ""))
    print(f"load average now {' '.join(map(str, load_end))} ({os.cpu_count()} CPUs)")

    if args.json is not None:
        report = {
            "date": started, "device": args.device, "device_name": name,
            "torch": torch.__version__, "lightning": pl.__version__,
            "python": platform.python_version(),
            "load_average_start": load_start, "load_average_end": load_end,
            "config": {k: getattr(args, k) for k in (
                "model", "image_size", "num_classes", "batch_size", "precision", "lr", "pool",
                "steps", "warmup_steps", "sync_steps", "repeats", "seed", "peak_tflops",
                "cudnn_benchmark", "plain_pin_memory", "tiny")},
            "channels_last": True, "optimizer": "sgd, momentum 0.9",
            "flop_per_image": flop, "flop_source": how,
            "waldo_loader": loader_settings,
            "targets": {"images_per_s": TARGET_IMAGES_PER_S, "ratio": TARGET_RATIO},
            "runs": runs,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
