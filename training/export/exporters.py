"""The ONNX exporters: a network in eval mode becomes an `onnx.ModelProto` with a dynamic batch
axis.

Which exporter: the TorchScript one (`dynamo=False`) first. It writes these networks in
0.02-3 s, against 1-9 s for the dynamo exporter (2 cores), at opsets 18-20 with a dynamic
batch axis (`dynamic_axes`). It cannot express an adaptive average pool whose output size does
not divide its input (AlexNet and VGG on small images stretch a 1x1 map to 6x6 or 7x7) nor
opsets above 20; there the dynamo exporter (torch.export + onnxscript, `dynamic_shapes`) takes
over. Either way the parity check (`training.export.parity`), not the exporter, decides whether
the file is right.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence

import onnx
import torch
from torch import nn

from training.errors import WaldoError, one_line
from training.spec import DEFAULT_OPSET

TORCHSCRIPT_MAX_OPSET = 20
INPUT_NAME = "input"


def to_onnx(net: nn.Module, example: torch.Tensor, *, opset: int = DEFAULT_OPSET,
            output_names: Sequence[str] = ("output",), exporter: str = "auto",
            ) -> tuple[onnx.ModelProto, str]:
    """Export `net` (already in eval mode) with a dynamic batch axis.

    Returns the model and the exporter that wrote it ("torchscript" or "dynamo"). `example`
    must have a batch of at least 2: both exporters treat a batch of 1 as a constant.
    """
    errors = []
    if exporter == "auto" and opset <= TORCHSCRIPT_MAX_OPSET and not _pools_divide(net, example):
        errors.append("torchscript exporter: adaptive pooling to a size that does not divide "
                      "its input")  # known in advance: skip the attempt and its log output
    elif exporter in ("auto", "torchscript") and opset <= TORCHSCRIPT_MAX_OPSET:
        try:
            return _torchscript(net, example, opset, list(output_names)), "torchscript"
        except Exception as exc:  # e.g. adaptive_avg_pool2d "output size not a factor"
            errors.append(f"torchscript exporter: {one_line(exc)}")
    elif exporter == "torchscript":
        errors.append(f"torchscript exporter: writes opsets up to {TORCHSCRIPT_MAX_OPSET}")
    if exporter in ("auto", "dynamo"):
        try:
            return _dynamo(net, example, opset, list(output_names)), "dynamo"
        except Exception as exc:
            errors.append(f"dynamo exporter: {one_line(exc)}")
    raise WaldoError(f"cannot export {type(net).__name__} to ONNX opset {opset}: "
                     + "; ".join(errors))


def _pools_divide(net: nn.Module, example: torch.Tensor) -> bool:
    """Whether every adaptive pool's output size divides its input size: the TorchScript
    exporter writes only those (as fixed-stride pooling)."""
    ok = True

    def check(module, args, output):
        nonlocal ok
        ok &= all(i % o == 0 for i, o in zip(args[0].shape[2:], output.shape[2:], strict=True))

    pools = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
             nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
    hooks = [m.register_forward_hook(check) for m in net.modules() if isinstance(m, pools)]
    try:
        with torch.inference_mode():
            net(example)
    finally:
        for hook in hooks:
            hook.remove()
    return ok


def _torchscript(net: nn.Module, example: torch.Tensor, opset: int,
                 output_names: list[str]) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its own deprecation notice, tracer notes
        torch.onnx.export(
            net, (example,), buffer, dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=output_names,
            dynamic_axes={n: {0: "batch"} for n in [INPUT_NAME, *output_names]},
            training=torch.onnx.TrainingMode.EVAL, do_constant_folding=True,
        )
    return onnx.load_model_from_string(buffer.getvalue())


def _dynamo(net: nn.Module, example: torch.Tensor, opset: int,
            output_names: list[str]) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), quiet_loggers("torch.onnx", "onnxscript", "torch.export"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            net, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
            output_names=output_names, dynamic_shapes=({0: batch},), verbose=False,
        )
    return program.model_proto  # weights inside the proto: one file when saved


@contextlib.contextmanager
def quiet_loggers(*loggers: str) -> Iterator[None]:
    """Raise these loggers to ERROR for the duration (exporters and quantizers are chatty)."""
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)
