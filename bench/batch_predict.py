"""Offline scoring (`waldo predict --model`): in-process against a plain ONNX Runtime loop, and Ray
Data with 1 and 2 scoring actors from a local pack and from a pack in S3, with time and peak
memory at several image counts.

The model is an exported network (`--arch`, default cnn, random weights: speed does not depend
on them) at `--size` px RGB, written as `waldo export` writes a version folder. The data are
generated `--size` px JPEGs in 10 class folders (made once under /tmp per count and reused),
and their pack (`waldo data pack`, also kept). For each count of `--images`:

    plain       a plain loop: read each file, decode and preprocess it as the service does
                (`training.scoring.decode.decode`, one thread), `session.run` per batch of
                `--batch-size`, `postprocess`; nothing written (the baseline)
    in-process  `training.scoring.predict` with workers 0 (threads decode, ORT scores, Parquet
                parts written), from the folder and from the local pack
    ray-N       the same with `workers` N (Ray Data, a local Ray started before the clock runs),
                from the local pack and from the pack in s3://BUCKET (moto_server on 127.0.0.1)

Every measurement runs in a fresh Python process; its time is the scoring alone (`seconds` of
the run: the sources listed and the model opened before it, no Ray start), and its memory the
peak resident set of the process and of all its descendants (Ray's raylet and workers), sampled
every 0.2 s with psutil. Also printed: ONNX Runtime alone on 1,024 decoded images (the ceiling
on this machine). Goals: in-process at least 0.9x plain; time linear in the count; memory flat.

    .venv/bin/python bench/batch_predict.py --images 10000 50000 100000   # the issue's sizes
    .venv/bin/python bench/batch_predict.py --images 2000 --skip-s3        # a quick run

The load average is printed at the start and the end: on a shared machine figures move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
BUCKET, CLASSES = "waldo-bench-predict", 10


def load_text() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# -- setup (in the parent) ------------------------------------------------------------------------
def model_folder(arch: str, size: int, root: Path) -> Path:
    """A version folder of `arch` (random weights) for 3 x size x size images, 10 classes."""
    import torch

    from serving.modelcard import InputSpec, ModelCard
    from training.export.card import card_outputs, output_names
    from training.export.exporters import to_onnx
    from training.export.layout import write_version
    from training.models import create_model

    net = create_model(arch, num_classes=CLASSES, in_channels=3, image_size=size).eval()
    proto, _ = to_onnx(net, torch.zeros(2, 3, size, size), output_names=output_names("classify"))

    def card(version: int) -> ModelCard:
        return ModelCard(name=arch, version=str(version), task="classify",
                         labels=[f"class{c}" for c in range(CLASSES)],
                         input=InputSpec(channels=3, height=size, width=size, mean=[0.5] * 3, std=[0.25] * 3),
                         outputs=card_outputs("classify"), architecture=arch)

    folder, _ = write_version(proto, card, output=root / "models", name=arch, version=1)
    return folder


def images(n: int, size: int) -> Path:
    """n size-px JPEGs in 10 class folders, cached in /tmp."""
    from PIL import Image

    root = Path(tempfile.gettempdir()) / f"waldo-bench-predict-{size}px-{n}"
    if (root / ".done").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        c = i % CLASSES
        pixels = rng.normal((25 * c) % 256, 40, (size, size, 3)).clip(0, 255).astype(np.uint8)
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / f"class{c}" / f"{i:06d}.jpg", quality=90)
    (root / ".done").touch()
    return root


def pack_of(folder: Path) -> Path:
    """`waldo data pack` of the folder, cached beside it."""
    from training.data import create_datamodule
    from training.data.packed import pack
    from training.spec import DataSpec

    dest = folder.with_name(folder.name + "-packed")
    if (dest / "manifest.json").exists():
        return dest
    module = create_datamodule(DataSpec(task="classify", name="folder", dir=str(folder), val_fraction=0.1))
    pack(module, str(dest))
    return dest


def upload(folder: Path, prefix: str) -> str:
    import boto3

    client = boto3.client("s3")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{BUCKET}/{prefix}"


def measure(job: dict, workdir: Path) -> dict:
    """Run one measurement in a fresh process; its result and peak memory (the process, and it
    with all its descendants)."""
    import psutil

    proc = subprocess.Popen([sys.executable, __file__, "--one", json.dumps(job)], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"driver": 0, "all": 0}
    stop = threading.Event()

    def sample() -> None:
        try:
            parent = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not stop.wait(0.2):
            try:
                own = parent.memory_info().rss
                tree = own + sum(c.memory_info().rss for c in parent.children(recursive=True))
            except psutil.Error:
                continue
            peak["driver"], peak["all"] = max(peak["driver"], own), max(peak["all"], tree)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    stop.set()
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{job['kind']} failed ({proc.returncode}):\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "peak_driver_mb": peak["driver"] / 2**20, "peak_all_mb": peak["all"] / 2**20}


# -- one measurement (in the child) ---------------------------------------------------------------
def plain(job: dict) -> dict:
    """Read, decode and preprocess one by one, run per batch, postprocess: nothing written."""
    from serving.repository import load_card
    from training.scoring.decode import answers, decode
    from training.scoring.model import Runner, open_session
    from training.scoring.sources import expand

    folder = Path(job["model"])
    card = load_card(folder / "modelcard.json")
    runner = Runner(open_session(folder / "model.onnx", os.cpu_count() or 1))
    items = expand([job["source"]]).items
    begin, done = time.perf_counter(), 0
    for start in range(0, len(items), job["batch_size"]):
        rows, sizes = [], []
        for item in items[start:start + job["batch_size"]]:
            with open(item.where, "rb") as f:
                x, size = decode(card, f.read())
            rows.append(x)
            sizes.append(size)
        done += len(answers(card, runner(np.stack(rows)), sizes, top_k=5, threshold=0.5))
    return {"images": done, "seconds": time.perf_counter() - begin}


def inference_only(job: dict) -> dict:
    """ONNX Runtime alone on 1,024 decoded images, batch by batch."""
    from serving.repository import load_card
    from training.scoring.decode import decode
    from training.scoring.model import Runner, open_session
    from training.scoring.sources import expand

    folder = Path(job["model"])
    card = load_card(folder / "modelcard.json")
    runner = Runner(open_session(folder / "model.onnx", os.cpu_count() or 1))
    items = expand([job["source"]]).items[:1024]
    x = np.stack([decode(card, Path(i.where).read_bytes())[0] for i in items])
    runner(x[: job["batch_size"]])  # warm-up
    begin = time.perf_counter()
    for start in range(0, len(x), job["batch_size"]):
        runner(x[start:start + job["batch_size"]])
    return {"images": len(x), "seconds": time.perf_counter() - begin}


def scoring(job: dict) -> dict:
    from training.scoring.pipeline import predict
    from training.spec import PredictSpec

    if job["workers"]:
        from training.running.rayinit import connect

        connect(None, min_cpus=job["workers"] + 1)  # started before the clock runs
    spec = PredictSpec(model=job["model"], sources=[job["source"]], output=job["output"],
                       workers=job["workers"], batch_size=job["batch_size"],
                       tracking_uri=job["tracking_uri"])
    with open(os.devnull, "w") as quiet:
        result = predict(spec, stream=quiet)
    assert result.scored == job["expect"], (result.scored, job["expect"])
    return {"images": result.scored, "seconds": result.seconds}


def one(job: dict) -> int:
    kind = job["kind"]
    result = {"plain": plain, "inference": inference_only}.get(kind, scoring)(job)
    print(json.dumps(result))
    return 0


# -- the whole run --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    parser.add_argument("--arch", default="cnn", help="the network (waldo models), default cnn")
    parser.add_argument("--size", type=int, default=64, help="image and input size in px")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray Data actor counts")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-s3", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        return one(json.loads(args.one))

    print(f"load average at start: {load_text()}; {os.cpu_count()} CPUs", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="waldo-bench-predict-"))
    moto = None
    try:
        model = str(model_folder(args.arch, args.size, tmp))
        tracking = f"sqlite:///{tmp / 'mlflow.db'}"
        if not args.skip_s3 and not args.skip_ray:
            from s3server import start_moto  # bench/s3server.py

            moto = start_moto(tmp, BUCKET)
        rows = []
        for n in args.images:
            folder = images(n, args.size)
            packed = pack_of(folder)
            sources = {"folder": str(folder), "pack": str(packed)}
            if moto is not None:
                sources["s3 pack"] = upload(packed, f"packed-{n}")
            base = {"model": model, "batch_size": args.batch_size, "tracking_uri": tracking, "expect": n}
            runs = [("plain", "folder", 0), ("in-process", "folder", 0), ("in-process", "pack", 0)]
            if not args.skip_ray:
                runs += [(f"ray-{w}", where, w) for where in ("pack", "s3 pack") if where in sources
                         for w in args.workers]
            if n == args.images[0]:
                ceiling = measure({**base, "kind": "inference", "source": sources["folder"]}, tmp)
                print(f"ONNX Runtime alone, 1,024 decoded images: "
                      f"{ceiling['images'] / ceiling['seconds']:,.0f} images/s", flush=True)
            by_kind = {}
            for index, (kind, where, workers) in enumerate(runs):
                job = {**base, "kind": kind, "source": sources[where], "workers": workers,
                       "output": (f"s3://{BUCKET}/out-{n}-{index}" if where == "s3 pack"
                                  else str(tmp / f"out-{n}-{index}"))}
                result = measure(job, tmp)
                rate = result["images"] / result["seconds"]
                by_kind[(kind, where)] = rate
                rows.append((n, kind, where, result["seconds"], rate, result["peak_driver_mb"],
                             result["peak_all_mb"]))
                print(f"{n:>8,} {kind:<11} {where:<8} {result['seconds']:8.1f} s {rate:9,.0f} images/s "
                      f"peak RSS driver {result['peak_driver_mb']:7,.0f} MB, with workers "
                      f"{result['peak_all_mb']:7,.0f} MB", flush=True)
            ratio = by_kind[("in-process", "folder")] / by_kind[("plain", "folder")]
            print(f"{n:>8,} in-process / plain (folder): {ratio:.2f}x (goal >= 0.9)", flush=True)
            for (kind, where), rate in by_kind.items():
                if kind.startswith("ray"):
                    print(f"{n:>8,} {kind} {where} / in-process pack: "
                          f"{rate / by_kind[('in-process', 'pack')]:.2f}x", flush=True)
        print("\n| images | run | source | seconds | images/s | peak RSS driver (MB) | peak RSS all (MB) |")
        print("| ---: | --- | --- | ---: | ---: | ---: | ---: |")
        for n, kind, where, seconds, rate, driver, everything in rows:
            print(f"| {n:,} | {kind} | {where} | {seconds:.1f} | {rate:,.0f} | {driver:,.0f} | "
                  f"{everything:,.0f} |")
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"load average at end: {load_text()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
