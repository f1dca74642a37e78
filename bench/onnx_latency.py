"""CPU inference speed of an exported network: ONNX Runtime against torch eager.

For each model, a randomly initialized classifier (10 classes, the model's own channels) at
`--size` px is exported with `training.export.parity.export_checked` (so the parity check runs too), then
both engines run the same inputs with the same thread count:

- latency per image at batch 1 (median of `--repeats` calls, in ms), and
- throughput at batch `--batch` (images over the median call time, in images/s),

with the ratios torch/ORT for latency and ORT/torch for throughput (above 1: ORT is faster).
Weights do not matter for speed, so nothing is trained.

    .venv/bin/python bench/onnx_latency.py                     # cnn, lenet5, resnet18 at 224 px
    .venv/bin/python bench/onnx_latency.py --models resnet50 --threads 4 --repeats 10
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def median_seconds(call, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(name: str, size: int, threads: int, batch: int, repeats: int,
                warmup: int) -> dict[str, float]:
    import onnxruntime as ort
    import torch

    from training.export.card import output_names
    from training.export.parity import export_checked
    from training.models import get_model_info
    from training.tasks import ClassificationTask

    channels = get_model_info(name).default_input[0]
    torch.manual_seed(0)
    task = ClassificationTask(model_name=name, num_classes=10, in_channels=channels,
                              image_size=size).eval()
    start = time.perf_counter()
    exported = export_checked(task.net, (channels, size, size), output_names=output_names("classify"))
    export_s = time.perf_counter() - start

    options = ort.SessionOptions()  # as a server would run it: default spinning, all opts
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(exported.model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    net = task.net

    out = {"export_s": export_s, "exporter": exported.exporter,
           "max_abs_diff": exported.max_abs_diff}
    for b in (1, batch):
        x = torch.randn(b, channels, size, size)
        x_np = x.numpy()

        def torch_call(x=x):
            with torch.inference_mode():
                net(x)

        def ort_call(x_np=x_np):
            session.run(None, {input_name: x_np})

        reps = repeats if b == 1 else max(3, repeats // 4)
        out[f"torch_b{b}"] = median_seconds(torch_call, reps, warmup)
        out[f"ort_b{b}"] = median_seconds(ort_call, reps, warmup)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "lenet5", "resnet18"])
    parser.add_argument("--size", type=int, default=224, help="input side in px")
    parser.add_argument("--batch", type=int, default=64, help="batch for throughput")
    parser.add_argument("--threads", type=int, default=2, help="torch and ORT intra-op threads")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls at batch 1")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}; torch {torch.__version__}, onnxruntime "
          f"{onnxruntime.__version__}; {args.threads} threads, {args.size}x{args.size} px")
    header = (f"{'model':10s} {'export':>14s} {'b1 torch ms':>12s} {'b1 ORT ms':>10s} "
              f"{'latency x':>10s} {f'b{args.batch} torch img/s':>17s} "
              f"{f'b{args.batch} ORT img/s':>15s} {'throughput x':>13s}")
    print(header)
    print("-" * len(header))
    for name in args.models:
        r = bench_model(name, args.size, args.threads, args.batch, args.repeats, args.warmup)
        b = args.batch
        t1, o1 = 1e3 * r["torch_b1"], 1e3 * r["ort_b1"]
        tb, ob = b / r[f"torch_b{b}"], b / r[f"ort_b{b}"]
        export = f"{r['exporter']} {r['export_s']:.1f}s"
        print(f"{name:10s} {export:>14s} {t1:12.2f} {o1:10.2f} {t1 / o1:10.2f} "
              f"{tb:17.1f} {ob:15.1f} {ob / tb:13.2f}", flush=True)
    print(f"# latency x = torch ms / ORT ms at batch 1; throughput x = ORT / torch at batch "
          f"{args.batch}; load {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
