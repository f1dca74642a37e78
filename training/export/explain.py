"""What the service needs to explain an answer without torch, written into the ONNX file itself.

Prediction computes every conv stage's maps anyway, so the export gives them as extra graph
outputs (`stage_1`, ...); ONNX Runtime returns only the outputs a run asks for, and prediction
asks for its own alone. The first conv layer's raw maps are not among them: as a graph output
they would keep ONNX Runtime from fusing that layer with its activation (measured: 10-20% of a
small model's prediction), so the card gives the layer's geometry and the service applies
`filters` itself. Two constants ride along as outputs that no node computes: the first conv
layer's weights (`filters`) and, where the head
averages the last stage globally and then applies one linear layer, that layer's weights
(`cam_weight`), with which the class activation map of class k is `cam_weight[k]` applied to the
last stage's maps (CAM, Zhou et al. 2016): Grad-CAM's own map for such a head, computed in
numpy. The card says which outputs are which (`serving.modelcard.ExplainSpec`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from training.export.card import ConstantSpec, ExplainSpec, FirstConvSpec, StageSpec

FILTERS = "filters"
CAM_WEIGHT = "cam_weight"
CAM_RTOL = 1e-3  # how closely the head must equal "average, then linear" for CAM to be exact


class WithStages(nn.Module):
    """`net` whose forward also returns every stage's maps, in the order of
    `ExplainGraph.outputs` (hooks on the named submodules, present only while a
    forward runs: the network itself is left as it was)."""

    def __init__(self, net: nn.Module, taps: Sequence[str]):
        super().__init__()
        self.net, self.taps = net, list(taps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        seen: dict[str, torch.Tensor] = {}
        handles = [self.net.get_submodule(name).register_forward_hook(
            lambda module, args, output, name=name: seen.__setitem__(name, output))
            for name in dict.fromkeys(self.taps)]
        try:
            output = self.net(x)
        finally:
            for handle in handles:
                handle.remove()
        return (output, *(seen[name] for name in self.taps))


@dataclass
class ExplainGraph:
    """The network to export in place of the plain one, its extra output names, the
    constants to attach (`attach_constants`) and the card's part."""

    net: WithStages
    outputs: list[str]
    constants: dict[str, np.ndarray]
    spec: ExplainSpec


def explain_graph(net: nn.Module, input_shape: Sequence[int]) -> ExplainGraph | None:
    """The explain outputs of `net` for inputs (B, *input_shape), or None for a network with no
    convolution. Works on a copy without in-place activations (`explainable`), so a captured
    map is the one the stage gave, not one a later in-place op overwrote."""
    from training.tracking.explain import explainable, first_conv, forward_with_stages

    net = explainable(net)
    conv = first_conv(net)
    if conv is None:
        return None
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output, stages = forward_with_stages(net, x)
    if not stages:
        return None
    conv_name = next(name for name, module in net.named_modules() if module is conv)
    with torch.no_grad():
        conv_maps = WithStages(net, [conv_name])(x)[1]
    stage_specs = [StageSpec(output=f"stage_{n}", module=name, shape=list(maps.shape[1:]))
                   for n, (name, _, maps) in enumerate(stages, start=1)]
    constants = {FILTERS: conv.weight.detach().float().numpy().copy()}
    weight = cam_weight(net, stages[-1][2], output)
    if weight is not None:
        constants[CAM_WEIGHT] = weight
    spec = ExplainSpec(
        stages=stage_specs, first_conv=first_conv_spec(conv, conv_name, x, conv_maps),
        **{name: ConstantSpec(output=name, shape=list(value.shape)) for name, value in constants.items()})
    taps = [name for name, _, _ in stages]
    return ExplainGraph(WithStages(net, taps).eval(), [s.output for s in stage_specs], constants, spec)


def first_conv_spec(conv: nn.Conv2d, name: str, x: torch.Tensor,
                    maps: torch.Tensor) -> FirstConvSpec | None:
    """The card's account of the first conv layer, checked: the service's numpy convolution
    with it (`serving.explain.first_layer_maps`) gives `maps`, the layer's output for `x`.
    None for a layer it does not describe (groups, a padding other than zeros)."""
    from serving.explain import first_layer_maps
    from training.tracking.explain import conv_window

    if conv.groups != 1 or conv.padding_mode != "zeros":
        return None
    # (kernel, stride, padding, dilation) per axis; a "same" padding that torch splits unevenly
    # is not described, and the check below finds it
    _, stride, padding, dilation = (list(values) for values in zip(*conv_window(conv)))
    bias = None if conv.bias is None else [float(b) for b in conv.bias.detach()]
    spec = FirstConvSpec(module=name, stride=stride, padding=padding, dilation=dilation, bias=bias,
                         shape=list(maps.shape[1:]))
    weight = conv.weight.detach().float().numpy()
    got = first_layer_maps(spec, x[0].numpy(), weight)
    want = maps[0].numpy()
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-4):
        return None  # not reproduced from its filters: the service shows the filters alone
    return spec


def cam_weight(net: nn.Module, last: torch.Tensor, output: torch.Tensor) -> np.ndarray | None:
    """The (K, C) weights of the head's linear layer when the output is exactly that layer
    applied to the global average of the last stage's maps `last` (B, C, h, w), else None:
    checked on the numbers, not guessed from the module names."""
    from training.tracking.explain import pools_globally

    if not pools_globally(net) or output.ndim != 2:
        return None
    channels, classes = last.shape[1], output.shape[1]
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)
               and m.in_features == channels and m.out_features == classes]
    if not linears:
        return None
    head = linears[-1]
    with torch.no_grad():
        expected = head(last.mean(dim=(2, 3)))
    scale = float(output.abs().max()) + 1e-6
    if float((expected - output).abs().max()) > CAM_RTOL * scale:
        return None
    return head.weight.detach().float().numpy().copy()


def attach_constants(model: onnx.ModelProto, constants: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Add each constant to `model` (in place) as an initializer that is also a graph output
    (no node computes it, so a run that does not ask for it pays nothing). After any precision
    change: the weights are shown as trained."""
    present = {o.name for o in model.graph.output} | {i.name for i in model.graph.initializer}
    for name, value in constants.items():
        if name in present:
            raise ValueError(f"the graph already has a value named {name!r}")
        array = np.ascontiguousarray(value, dtype=np.float32)
        model.graph.initializer.append(numpy_helper.from_array(array, name))
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                                list(array.shape)))
    return model


__all__ = ["CAM_WEIGHT", "FILTERS", "ExplainGraph", "WithStages", "attach_constants",
           "cam_weight", "explain_graph", "first_conv_spec"]
