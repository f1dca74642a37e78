"""Ray Data ingest: images/s of every way a distributed run can read a folder of JPEGs, and what
feeding a Ray worker through Ray Data costs its training against feeding it from memory.

On a generated folder of 64x64 JPEGs in 10 classes (`--images`, default 20,000; made once
under /tmp and reused), images/s of the training split read as uint8 batches of 256:

    (a) torch DataLoader over FolderDataModule's train set (in-process), 0 and 2 loader workers;
        from S3 the same over the bucket folder (b) uses, which in-process training mirrors to
        local disk first (the mirror's download is its setup)
    (b) Ray Data from the folder: `training.data.raydata.plan` of the FolderDataModule, local,
        and from S3: the splits uploaded as s3://BUCKET/folder/{train,val,test}/<class>/<file>
        and planned as `--data folder --data-dir s3://BUCKET/folder` is (one request per image,
        8 in flight per task)
    (c) Ray Data from packed shards (`waldo data pack`): `plan` of a PackedDataModule, from a
        local folder and from s3://BUCKET/packed

Each figure is one full pass (making the iterator, `iter_torch_batches` on the driver for Ray
Data, to its last batch) after a warm-up of `--warmup` batches from another iterator (worker
processes started, imports done); one-off setup (listing and checking the folder, pack, upload,
`plan`, S3 listing) is printed beside it. S3 is a moto_server on 127.0.0.1, started and
stopped here: requests pay its per-request cost (a Python server), but no network latency.

Then the training throughput of one Ray Train worker (1 CPU; `training.running.steps.prepare` and
`build_trainer` with waldo's Ray strategy, as `--workers` runs; cnn at 64 px, batch
`--train-batch-size`, 2 epochs, no validation) fed (i) by Ray Data from the local pack
(`ShardData`), as `plan` makes it (these decoded images fit the object store's share, so they are
decoded once and kept: `cache_decoded`), (i') the same decoded again every epoch (`cache=False`,
what a larger data set gets), and (ii) from memory: the pack's training images decoded in the
worker before training into a TensorDataset. Figure: epoch 2's images over the time from its start to its last
batch (the stream's restart counts); the rate from its first batch's end is printed beside it.

Targets: (c) from S3 at least 2x (b) from S3; (i) at least 0.9x (ii) ((i') is printed against
it too). The read passes (a)-(c) plan with `cache=False`: they measure reading.

    .venv/bin/python bench/ingest.py                    # 20,000 images, about 5 min on 2 cores
    .venv/bin/python bench/ingest.py --images 2000      # a quick run

Ray runs locally with 3 logical CPUs. Packs, moto's data and Ray Train's storage go to a
temporary folder removed at the end; the generated JPEGs stay in /tmp for the next run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from s3server import start_moto  # bench/s3server.py
from steptiming import device_name, load_average  # bench/steptiming.py

SIZE, CLASSES, BUCKET = 64, 10, "waldo-bench"
TARGET_S3, TARGET_TRAIN = 2.0, 0.9


def load_text() -> str:
    return " ".join(f"{x:.2f}" for x in load_average()) or "n/a"


def generate(n: int) -> Path:
    """n 64x64 JPEGs in 10 class folders (a colour per class, noise, a bright square), cached."""
    from PIL import Image

    root = Path(tempfile.gettempdir()) / f"waldo-bench-ingest-{n}"
    if (root / ".done").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        c = i % CLASSES
        base = np.array([(37 * c) % 256, (91 * c) % 256, (151 * c) % 256], dtype=np.float64)
        pixels = rng.normal(base, 30, (SIZE, SIZE, 3))
        x, y = rng.integers(0, SIZE - 16, 2)
        pixels[y:y + 16, x:x + 16] += 80
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(
            root / f"class{c}" / f"{i:06d}.jpg", quality=90)
    (root / ".done").touch()
    return root


def timed_pass(make, warmup: int) -> tuple[float, float, int]:
    """(images/s of a full pass, its seconds, its images) of the iterable `make()` returns,
    after a warm-up of `warmup` batches from another one (worker processes started, imports
    done, caches filled), which is dropped."""
    batches = iter(make())
    for _ in zip(range(warmup), batches):
        pass
    getattr(batches, "close", lambda: None)()
    del batches
    begin, total = time.perf_counter(), 0
    for batch in make():
        total += len(batch["x"] if isinstance(batch, dict) else batch[0])
    seconds = time.perf_counter() - begin
    return total / seconds, seconds, total


def upload(splits, labels) -> None:
    """Each split's files as s3://BUCKET/folder/<split>/<class>/<file> (the folder layout with
    its own train/val/test), 8 at a time."""
    import boto3

    client = boto3.client("s3")
    items = [(path, f"folder/{split}/{labels[target]}/{Path(path).name}")
             for split, records in splits.items() for path, target in records]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: client.upload_file(str(item[0]), BUCKET, item[1]), items))


def train_worker(config: dict) -> None:
    """One Ray Train worker: cnn on the pack, fed by Ray Data or from memory; writes the
    per-batch timestamps of every epoch to config["out"]."""
    import pytorch_lightning as pl
    import ray.train
    import torch
    from ray.train.lightning import RayLightningEnvironment, prepare_trainer
    from torch.utils.data import TensorDataset

    from training.data import create_datamodule
    from training.data.packed import PackedDataModule
    from training.data.raydata import ShardData
    from training.running.distributed import _strategy
    from training.running.steps import build_trainer, prepare
    from training.spec import TrainSpec

    class InMemory(PackedDataModule):
        def load(self):
            train, val, test = super().load()
            items = [train[i] for i in range(len(train))]
            xs, ys = torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
            return TensorDataset(xs, ys), val, test

    class Probe(pl.Callback):
        def __init__(self):
            self.epochs: list[dict] = []

        def on_train_epoch_start(self, trainer, module):
            self.epochs.append({"start": time.perf_counter(), "stamps": [], "images": []})

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.epochs[-1]["stamps"].append(time.perf_counter())
            self.epochs[-1]["images"].append(len(batch[0]))

    spec = TrainSpec.model_validate(config["spec"])
    if config["feed"].startswith("ray-data"):  # as training.running.distributed.train_loop_per_worker
        dm = ShardData(create_datamodule(spec.data_spec()), config["ingest"],
                       ray.train.get_context().get_world_size())
    else:
        dm = InMemory(data_dir=spec.data_dir, image_size=spec.image_size, batch_size=spec.batch_size)
    dm, task = prepare(spec, dm)
    probe = Probe()
    with tempfile.TemporaryDirectory() as root:
        trainer = build_trainer(spec, callbacks=[probe], logger=False, root=root, devices="auto",
                                accelerator="cpu", strategy=_strategy(),
                                plugins=[RayLightningEnvironment()], enable_checkpointing=False,
                                limit_val_batches=0)
        prepare_trainer(trainer).fit(task, datamodule=dm)
    Path(config["out"]).write_text(json.dumps({"epochs": probe.epochs,
                                               "threads": torch.get_num_threads()}))


def train_throughput(feed: str, spec, ingest, datasets, tmp: Path) -> tuple[float, ...]:
    """Epoch 2: (images/s from its start, images/s from its first batch's end, seconds to its
    first batch, the worker's torch threads)."""
    from ray.train import DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    label = feed.replace(", ", "-")
    out = tmp / f"train-{label}.json"
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"spec": spec.model_dump(mode="json"), "feed": feed, "ingest": ingest,
                           "out": str(out)},
        datasets=datasets, dataset_config=DataConfig(datasets_to_split="all") if datasets else None,
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"bench-{label}", storage_path=str(tmp / "ray")),
    )
    trainer.fit()
    result = json.loads(out.read_text())
    epoch = result["epochs"][1]
    stamps, images = epoch["stamps"], epoch["images"]
    whole = sum(images) / (stamps[-1] - epoch["start"])
    steady = sum(images[1:]) / (stamps[-1] - stamps[0])
    return whole, steady, stamps[0] - epoch["start"], result["threads"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20_000, help="JPEGs in the generated folder")
    parser.add_argument("--batch-size", type=int, default=256, help="batches of the read passes")
    parser.add_argument("--warmup", type=int, default=2, help="batches of the warm-up before a pass")
    parser.add_argument("--train-batch-size", type=int, default=32, help="the spec's default")
    parser.add_argument("--skip-train", action="store_true", help="only the read passes")
    args = parser.parse_args(argv)

    import ray
    import ray.data
    import torch
    from torch.utils.data import DataLoader

    from training.data.folder import FolderDataModule
    from training.data.packed import PackedDataModule, pack
    from training.data.raydata import plan
    from training.running.rayinit import start_local_ray
    from training.running.workerenv import WORKER_ENV
    from training.spec import TrainSpec

    warnings.filterwarnings("ignore")
    for name in ["pytorch_lightning", "lightning.pytorch", "lightning_fabric", "ray", "ray.data",
                 "ray.train", "botocore"]:
        logging.getLogger(name).setLevel(logging.ERROR)
    print(f"machine: {device_name('cpu')}; python {platform.python_version()}, torch "
          f"{torch.__version__}, ray {ray.__version__}; load average {load_text()}", flush=True)
    t = time.perf_counter()
    folder = generate(args.images)
    print(f"data: {args.images} JPEGs {SIZE}x{SIZE}, {CLASSES} classes in {folder} "
          f"({time.perf_counter() - t:.1f} s to make or find)", flush=True)
    results: dict[str, float] = {}

    def measure(key: str, label: str, make, setup: str) -> None:
        ips, seconds, n = timed_pass(make, args.warmup)
        results[key] = ips
        print(f"  {label:<38} {ips:7.0f} img/s  pass {seconds:5.1f} s ({n} images)  setup: {setup}"
              f"  load {load_text()}", flush=True)

    def stream(ds):
        return lambda: ds.iter_torch_batches(batch_size=args.batch_size,
                                             dtypes={"x": torch.uint8, "y": torch.int64})

    def since(start: float) -> str:
        return f"{time.perf_counter() - start:.1f} s"

    tmp = Path(tempfile.mkdtemp(prefix="waldo-bench-ingest-"))
    server = None
    try:
        t = time.perf_counter()
        dm = FolderDataModule(data_dir=folder, image_size=SIZE)
        dm.setup("fit")
        listing = since(t)
        print(f"\n(a) torch DataLoader over FolderDataModule.train_set ({len(dm.train_set)} images)")
        for workers in (0, 2):
            loader = DataLoader(dm.train_set, batch_size=args.batch_size, num_workers=workers,
                                persistent_workers=workers > 0)  # as ImageDataModule's loaders
            measure(f"a{workers}", f"num_workers={workers}", lambda loader=loader: loader,
                    f"folder listing, check, split, statistics {listing}")

        server = start_moto(tmp, BUCKET)
        labels, splits = dm.records()
        packs, times = {"local": str(tmp / "packed"), "s3": f"s3://{BUCKET}/packed"}, {}
        for where, dest in packs.items():
            t = time.perf_counter()
            pack(dm, dest)
            times[where] = since(t)
        t = time.perf_counter()
        upload(splits, labels)
        uploaded = since(t)

        # In-process training reads a bucket's folder through a local mirror (objects.mirror):
        # a fresh one here, so its setup is the whole download.
        os.environ["WALDO_DATA_CACHE"] = str(tmp / "mirror")
        t = time.perf_counter()
        bucket = FolderDataModule(data_dir=f"s3://{BUCKET}/folder", image_size=SIZE)
        bucket.setup("fit")
        mirrored = since(t)
        print(f"(a) from S3: the same DataLoader over the bucket folder's mirror "
              f"({len(bucket.train_set)} images)")
        for workers in (0, 2):
            loader = DataLoader(bucket.train_set, batch_size=args.batch_size, num_workers=workers,
                                persistent_workers=workers > 0)
            measure(f"a{workers}_s3", f"num_workers={workers}", lambda loader=loader: loader,
                    f"mirror (listing, download of every object), check, split, statistics "
                    f"{mirrored}")

        for key, value in WORKER_ENV.items():  # as training.running.distributed does for Ray Train
            if key.startswith("RAY_TRAIN_"):
                os.environ.setdefault(key, value)
        start_local_ray(num_cpus=3)
        ray.data.DataContext.get_current().enable_progress_bars = False
        t = time.perf_counter()
        ray.data.range(8).map_batches(lambda b: b).take_all()
        print(f"\nRay started; Ray Data's first tasks ran in {since(t)}", flush=True)

        print("(b) Ray Data from the folder")
        t = time.perf_counter()
        _, datasets = plan(dm, "none", 0.0, cache=False)
        measure("b_local", "local (plan: _folder)", stream(datasets["train"]),
                f"plan {since(t)} after the folder's {listing}")
        t = time.perf_counter()
        _, datasets = plan(FolderDataModule(data_dir=f"s3://{BUCKET}/folder", image_size=SIZE),
                           "none", 0.0, cache=False)
        measure("b_s3", "s3 (plan: _bucket_folder)", stream(datasets["train"]),
                f"upload {uploaded}, plan (listing, every object read and checked, "
                f"statistics) {since(t)}")

        print("(c) Ray Data from packed shards")
        for where, dest in packs.items():
            t = time.perf_counter()
            _, datasets = plan(PackedDataModule(data_dir=dest, image_size=SIZE), "none", 0.0, cache=False)
            measure(f"c_{where}", f"{where} (plan: _packed)", stream(datasets["train"]),
                    f"pack {times[where]}, plan (manifest, statistics) {since(t)}")

        ratio = results["c_s3"] / results["b_s3"]
        print(f"\n(c) s3 / (b) s3: {ratio:.2f}x (target >= {TARGET_S3}x) "
              f"{'PASS' if ratio >= TARGET_S3 else 'BELOW'}; (c) local / (b) local: "
              f"{results['c_local'] / results['b_local']:.2f}x; (c) s3 / (a) 0 workers: "
              f"{results['c_s3'] / results['a0']:.2f}x", flush=True)

        if not args.skip_train:
            spec = TrainSpec(model="cnn", data="packed", data_dir=packs["local"], image_size=SIZE,
                             workers=1, epochs=2, batch_size=args.train_batch_size, augment="none",
                             label_smoothing=0.0, ema_decay=None, progress_bar=False,
                             accelerator="cpu")
            print(f"\ntraining: cnn {SIZE} px, 1 Ray worker (1 CPU), batch {spec.batch_size}, "
                  "epoch 2 of 2, no validation")
            figures = {}
            # "ray-data": the product's plan (decoded images kept between epochs when they fit,
            # as these do); "ray-data, streamed": decoded again every epoch (cache=False), what a
            # data set larger than the object store's share gets.
            for feed, cache in (("memory", None), ("ray-data", None), ("ray-data, streamed", False)):
                ingest, datasets, t = None, None, time.perf_counter()
                if feed != "memory":
                    ingest, datasets = plan(PackedDataModule(data_dir=spec.data_dir, image_size=SIZE,
                                                             batch_size=spec.batch_size), "none", 0.0,
                                            cache=cache)
                planned = since(t)
                whole, steady, wait, threads = train_throughput(feed, spec, ingest, datasets, tmp)
                figures[feed] = whole
                print(f"  fed by {feed:<18} {whole:6.0f} img/s from the epoch's start, {steady:6.0f} "
                      f"from its first batch's end (first batch after {wait:.2f} s; plan "
                      f"{planned}); torch threads {threads}  load {load_text()}", flush=True)
            for feed in ("ray-data", "ray-data, streamed"):
                ratio = figures[feed] / figures["memory"]
                print(f"{feed} (local pack) / memory: {ratio:.2f}x (target >= {TARGET_TRAIN}x) "
                      f"{'PASS' if ratio >= TARGET_TRAIN else 'BELOW'}")
        print(f"\nload average now {load_text()} ({os.cpu_count()} CPUs; above that, the figures "
              "are noisy)")
        return 0
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
