"""Parity: the exported file must compute what torch computes.

`export_checked` is the export-and-check step: export the network (`exporters.to_onnx`), check
the proto, run it in ONNX Runtime and torch on the same random inputs at several batch sizes,
and refuse it (a WaldoError naming the figure) when they differ by more than `atol`. Export and
validation stay separate steps over one small utility, as in timm.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from training.errors import WaldoError
from training.export.exporters import to_onnx
from training.spec import DEFAULT_ATOL, DEFAULT_OPSET

PARITY_BATCH_SIZES = (1, 3, 8)  # 1, an odd size, and more than the export example's 2
# A protobuf message cannot exceed 2 GiB; bigger models would need external data.
MAX_SINGLE_FILE_BYTES = 2**31 - 1


def ort_session(model: onnx.ModelProto | bytes | str | Path, threads: int | None = None):
    """A CPU ONNX Runtime session that leaves the cores to torch between runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    # Idle ORT threads spin by default and would starve torch running on the same cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def check_parity(net: nn.Module, session, input_shape: Sequence[int],
                 batch_sizes: Sequence[int] = PARITY_BATCH_SIZES, seed: int = 0) -> float:
    """Largest |onnxruntime - torch| over random inputs (B, C, H, W) for each batch size B,
    over every output `net` returns (one tensor, or a tuple: the prediction and its extras).

    Inputs are standard normal, like normalized images. A shape mismatch or a non-finite
    output counts as infinitely far apart.
    """
    generator = torch.Generator().manual_seed(seed)
    input_name = session.get_inputs()[0].name
    worst = 0.0
    for b in batch_sizes:
        x = torch.randn(b, *input_shape, generator=generator)  # (B, C, H, W)
        with torch.inference_mode():
            expected = net(x)
        expected = expected if isinstance(expected, tuple) else (expected,)
        names = [o.name for o in session.get_outputs()[:len(expected)]]  # a net with extra outputs
        for want, got in zip(expected, session.run(names, {input_name: x.numpy()}), strict=True):
            want = want.float().numpy()
            if got.shape != want.shape:
                return float("inf")
            diff = float(np.abs(got.astype(np.float64) - want).max(initial=0.0))
            worst = max(worst, diff if np.isfinite(diff) else float("inf"))
    return worst


@dataclass
class Exported:
    """An exported network that passed the parity check, in memory."""

    model: onnx.ModelProto
    max_abs_diff: float
    exporter: str
    batch_sizes: tuple[int, ...]
    seconds: float


def export_checked(net: nn.Module, input_shape: Sequence[int], *, output_names: Sequence[str],
                   opset: int = DEFAULT_OPSET, atol: float = DEFAULT_ATOL,
                   batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
                   exporter: str = "auto") -> Exported:
    """Export `net` in eval mode for inputs (B, *input_shape) and check it against torch.

    Eval mode fixes batch norm and dropout, and drops GoogLeNet's auxiliary heads. Raises a
    WaldoError naming the figure when the outputs differ by more than `atol`.
    """
    start = time.perf_counter()
    net = net.eval()
    example = torch.zeros(2, *input_shape)  # (B, C, H, W); see to_onnx on the batch of 2
    model, used = to_onnx(net, example, opset=opset, exporter=exporter, output_names=output_names)
    if model.ByteSize() > MAX_SINGLE_FILE_BYTES:
        raise WaldoError(f"{type(net).__name__} is over 2 GB as ONNX; it would need external "
                         "data, which this export does not write")
    data = model.SerializeToString()  # once: VGG's 0.5 GB take a second
    onnx.checker.check_model(data)
    diff = check_parity(net, ort_session(data), input_shape, batch_sizes)
    if not diff <= atol:
        hint = " (try --exporter dynamo)" if used == "torchscript" else ""
        raise WaldoError(
            f"parity check failed: max |onnxruntime - torch| = {diff:.3g} at batch sizes "
            f"{', '.join(map(str, batch_sizes))}, above the tolerance {atol:g}; "
            f"nothing was written or registered{hint}")
    return Exported(model, diff, used, tuple(batch_sizes), time.perf_counter() - start)
