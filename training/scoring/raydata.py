"""Scoring on Ray Data (`waldo predict --workers N`): read and decode in tasks, score in a pool of
actors that hold the model, write committed parts from write tasks.

    driver        lists the images (names only) and the parts already done, puts the ONNX file
                  in the object store once, and plans the dataset; it never holds an image or
                  an answer
    read tasks    a pack's shards (`read_parquet`, only shards none of whose rows are done), or
                  the names of files and objects (`from_items`), read `READ_THREADS` at a time
    decode tasks  `decode_rows`: the service's decoding and preprocessing (`training.scoring.decode`),
                  an unreadable image kept as a row with its reason
    actors        `ScoringActor`, `workers` of them (`concurrency`), each with `cpus_per_worker`
                  CPUs and an ONNX Runtime session on as many intra-op threads; on the GPU
                  (CUDAExecutionProvider, one GPU each) when the cluster has GPUs and this
                  onnxruntime has CUDA
    write tasks   `ScoresSink`: the answers as the same committed parts an in-process run writes

Ray Data streams: blocks flow through the stages with backpressure, so memory stays bounded
whatever the number of images.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from serving.modelcard import ModelCard
from training.scoring.decode import answers, decode_batch
from training.scoring.local import Counts
from training.scoring.model import GPU_PROVIDER, Model, Runner, open_session
from training.scoring.sources import Item, read_blobs
from training.scoring.writer import META_KEY, Output, Problem, columns, part_name

DECODE_CPUS = 1.0  # CPUs the job keeps beside its actors for decoding and writing
DECODE_MEMORY = 192 * 2**20  # a decode task's worker beside its batch: Python, numpy, Pillow, Arrow


def decode_rows(batch: dict[str, np.ndarray], card: str) -> dict[str, np.ndarray]:
    """A batch of names (`path`, `where`, `row`) or of pack rows (`name`, `image`) -> `path`,
    `x` (n, C, H, W) float32, `width`, `height` and `problem` ("" when it decoded); `card` is
    the ModelCard as JSON."""
    model_card = ModelCard.model_validate_json(card)
    if "image" in batch:
        paths = [str(name) for name in batch["name"]]
        blobs = [bytes(blob) if blob is not None else "empty pack row" for blob in batch["image"]]
    else:
        paths = [str(p) for p in batch["path"]]
        blobs = read_blobs([Item(str(p), str(w), int(r)) for p, w, r
                            in zip(batch["path"], batch["where"], batch["row"])])
    decoded = decode_batch(model_card, blobs)
    spec = model_card.input
    n = len(paths)
    x = np.zeros((n, spec.channels, spec.height, spec.width), dtype=np.float32)
    width, height = np.zeros(n, np.int32), np.zeros(n, np.int32)
    for row, i in enumerate(decoded["kept"]):
        x[i] = decoded["x"][row]
        width[i], height[i] = decoded["sizes"][row]
    problem = [decoded["problems"].get(i, "") for i in range(n)]
    unread = np.zeros(n, bool)
    unread[decoded["unread"]] = True
    return {"path": np.asarray(paths, dtype=object), "x": x, "width": width, "height": height,
            "problem": np.asarray(problem, dtype=object), "unread": unread}


class ScoringActor:
    """One ONNX Runtime session for the actor's life; a decoded batch -> `path`, `answer` (the
    service's answer as JSON, "" for an unreadable image), `width`, `height`, `problem`."""

    def __init__(self, model, card: str, threads: int, gpu: bool, top_k: int, threshold: float):
        import ray

        data = ray.get(model) if isinstance(model, ray.ObjectRef) else model
        self.card = ModelCard.model_validate_json(card)
        self.runner = Runner(open_session(data, threads, gpu=gpu))
        self.top_k, self.threshold = top_k, threshold

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = [i for i, problem in enumerate(batch["problem"]) if not problem]
        answer = [""] * len(batch["path"])
        if ok:
            x = np.ascontiguousarray(batch["x"][ok], dtype=np.float32)
            sizes = [(int(batch["width"][i]), int(batch["height"][i])) for i in ok]
            for i, result in zip(ok, answers(self.card, self.runner(x), sizes, top_k=self.top_k,
                                             threshold=self.threshold)):
                answer[i] = json.dumps(result)
        return {"path": batch["path"], "answer": np.asarray(answer, dtype=object),
                "width": batch["width"], "height": batch["height"], "problem": batch["problem"],
                "unread": batch["unread"]}


def _sink_class():
    from ray.data import Datasink

    class ScoresSink(Datasink):
        """Each write task's rows as committed parts of `part_size` images (the last one less)."""

        def __init__(self, output: Output, model: Model, settings: dict[str, Any], run: str, part_size: int):
            self.output, self.settings, self.run, self.part_size = output, settings, run, part_size
            self.task, self.name, self.version = model.card.task, model.name, model.version
            self.counts: dict[str, Any] = {"scored": 0, "errors": 0, "parts": []}

        @property
        def min_rows_per_write(self) -> int:
            return self.part_size

        @property
        def supports_distributed_writes(self) -> bool:
            """A folder is on the driver's machine: its write tasks run there (on a cluster,
            another node's disk would hold parts that the driver and a resumed run never see)."""
            return self.output.remote

        def write(self, blocks, ctx) -> dict[str, Any]:
            from ray.data.block import BlockAccessor

            done = {"scored": 0, "errors": 0, "parts": []}
            rows: list[dict] = []

            def commit() -> None:
                good = [r for r in rows if not r["problem"]]
                errors = [Problem(str(r["path"]), str(r["problem"]), bool(r["unread"]))
                          for r in rows if r["problem"]]
                data = columns(self.task, self.name, self.version, [str(r["path"]) for r in good],
                               [(int(r["width"]), int(r["height"])) for r in good],
                               [json.loads(r["answer"]) for r in good])
                name = part_name(self.run, ctx.task_idx, len(done["parts"]))
                done["parts"].append(self.output.commit(self.task, data, errors, self.settings, name))
                done["scored"] += len(good)
                done["errors"] += len(errors)
                rows.clear()

            for block in blocks:
                for row in BlockAccessor.for_block(block).iter_rows(public_row_format=False):
                    rows.append({k: row[k] for k in ("path", "answer", "width", "height", "problem",
                                                     "unread")})
                    if len(rows) >= self.part_size:
                        commit()
            if rows:
                commit()
            return done

        def on_write_complete(self, write_result) -> None:
            for result in write_result.write_returns:
                self.counts["scored"] += result["scored"]
                self.counts["errors"] += result["errors"]
                self.counts["parts"] += result["parts"]

    return ScoresSink


def _gpus(workers: int) -> float:
    """GPUs per actor: one each (a share when fewer) when the cluster has GPUs and this
    onnxruntime runs CUDA, else 0."""
    import onnxruntime as ort
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus <= 0 or GPU_PROVIDER not in ort.get_available_providers():
        return 0.0
    return min(1.0, gpus / workers)


def _datasets(items: Sequence[Item], card: str, batch_size: int, all_rows: dict[str, int]) -> list:
    """The decoded rows of `items`: whole pack shards through `read_parquet` where all their rows
    are to be scored, every other image by name."""
    import ray.data

    from training.data.objects import is_object_store, s3_filesystem

    by_shard: dict[str, int] = {}
    for item in items:
        if item.packed:
            by_shard[item.where] = by_shard.get(item.where, 0) + 1
    whole = sorted(w for w, n in by_shard.items() if n == all_rows.get(w))
    read_whole = set(whole)
    named = [{"path": i.path, "where": i.where, "row": i.row} for i in items
             if not (i.packed and i.where in read_whole)]
    # Decoding reserves the memory of a decoded batch: besides what that says to the scheduler,
    # it keeps Ray Data from fusing decoding into the scoring actors (it fuses consecutive stages
    # whose remote arguments agree), where batches would be decoded one after another in the
    # actor instead of in tasks beside it.
    spec = ModelCard.model_validate_json(card).input
    memory = 2 * batch_size * spec.channels * spec.height * spec.width * 4 + DECODE_MEMORY
    decode = {"fn": decode_rows, "fn_kwargs": {"card": card}, "batch_size": batch_size,
              "num_cpus": 1, "memory": memory, "compute": ray.data.TaskPoolStrategy()}
    out = []
    for remote in (False, True):  # local packs, then packs in a bucket: one filesystem each
        paths = [w.split("://", 1)[1] if remote else w for w in whole if is_object_store(w) == remote]
        if paths:  # a local pack is read on this node (on a cluster, the others lack it)
            shards = ray.data.read_parquet(paths, filesystem=s3_filesystem() if remote else None,
                                           columns=["image", "name"],
                                           label_selector=None if remote else _this_node())
            out.append(shards.map_batches(**decode))
    if named:
        local = any(not is_object_store(row["where"]) for row in named)
        out.append(ray.data.from_items(named).map_batches(
            **decode, label_selector=_this_node() if local else None))
    return out


def _this_node() -> dict[str, str]:
    """A label selector that keeps tasks on this (the driver's) node, where the local files
    are: Ray labels every node with its id."""
    import ray

    return {"ray.io/node-id": ray.get_runtime_context().get_node_id()}


def _watch(output: Output, before: set[str], progress: Callable[[int, int], None],
           stop: threading.Event) -> None:
    """Report progress from the parts that appear in `output` (their footers only)."""
    import pyarrow.parquet as pq

    seen: dict[str, tuple[int, int]] = {}
    while not stop.wait(2.0):
        try:
            for name in set(output.part_names()) - before - set(seen):
                meta = pq.read_schema(f"{output.base}/{name}", filesystem=output.fs).metadata or {}
                rows = pq.read_metadata(f"{output.base}/{name}", filesystem=output.fs).num_rows
                seen[name] = (rows, len(json.loads(meta.get(META_KEY, b"{}")).get("errors", [])))
        except Exception:  # a progress line is not worth failing the run for
            continue
        progress(sum(s for s, _ in seen.values()), sum(e for _, e in seen.values()))


def score_ray(model: Model, items: Sequence[Item], output: Output, settings: dict[str, Any], *,
              run: str, batch_size: int, part_size: int, workers: int, cpus_per_worker: int,
              ray_address: str | None, pack_rows: dict[str, int],
              progress: Callable[[int, int], None] = lambda scored, errors: None) -> Counts:
    """Score `items` on Ray Data with `workers` actors (see the module's docstring).
    `pack_rows` gives the rows of each pack shard, to read whole shards where they are all due."""
    import ray
    from ray.data import DataContext

    from training.running import cluster
    from training.running.rayinit import connect, named_address

    address = named_address(ray_address) or cluster.address()
    connect(address, min_cpus=workers * cpus_per_worker + DECODE_CPUS)
    DataContext.get_current().enable_progress_bars = False  # our own line instead
    card = model.card.model_dump_json()
    gpus = _gpus(workers)
    datasets = _datasets(items, card, batch_size, pack_rows)
    dataset = datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]
    scored = dataset.map_batches(
        ScoringActor, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=cpus_per_worker,
        num_gpus=gpus, fn_constructor_kwargs={
            "model": ray.put(model.path.read_bytes()), "card": card,
            "threads": max(1, math.floor(cpus_per_worker)), "gpu": gpus > 0,
            "top_k": settings["top_k"], "threshold": settings["threshold"]})
    sink = _sink_class()(output, model, settings, run, part_size)
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(output, set(output.part_names()), progress, stop),
                               daemon=True)
    watcher.start()
    try:
        scored.write_datasink(sink)
    finally:
        stop.set()
        watcher.join(5)
    counts = Counts(sink.counts["scored"], sink.counts["errors"], sink.counts["parts"])
    progress(counts.scored, counts.errors)
    return counts


__all__ = ["ScoringActor", "decode_rows", "score_ray"]
