"""Where a network looks: its first-layer filters, its feature maps at every conv stage and a
class activation map for its answers (Grad-CAM, or HiResCAM for dense heads: `grad_cam`, with
Captum), drawn by `serving.pictures`.

`log_run_pictures` adds them to every run (`training.running.steps.log_pictures`, which both
runners call at the end of a run), and a localizer's run the pointing game of its maps
(`log_pointing_game`); `waldo explain` (`training.commands.explain`) draws the same
for a user's images. The network is never changed: the pictures come from a copy on the CPU.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from serving import pictures
from training.tracking import pointing

log = logging.getLogger("waldo.pictures")

FILTERS_FILE = "first_layer_filters.png"
PICTURES_DIR = "pictures"  # the run's artifact folder for the rest
SCAN_LIMIT = 512  # test images searched for mistakes: bounds the time on large test sets
FEATURE_IMAGES = 3  # the first test images, whose feature maps every run of the data shows
CAM_COUNT = 8  # Grad-CAM tiles for correct answers, and again for wrong ones
MISTAKES = 16  # tiles in the grid of the most confident mistakes


def explainable(net: nn.Module) -> nn.Module:
    """A copy of `net` on the CPU in float32 and eval mode, with no in-place activations: a
    hook must see a stage's output as it left the stage, and Grad-CAM needs its gradient."""
    clone = copy.deepcopy(net).cpu().float().eval()
    clone.to(memory_format=torch.contiguous_format)
    for module in clone.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    return clone


def first_conv(net: nn.Module) -> nn.Conv2d | None:
    return next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)


def _stage_parent(net: nn.Module) -> tuple[str, nn.Module]:
    """The module whose children are the network's stages: a localizer's backbone, then a
    `features` sequence where there is one (cnn, lenet5, vgg, alexnet), else the network (resnet,
    googlenet)."""
    prefix, parent = "", net
    if isinstance(getattr(parent, "backbone", None), nn.Module):
        prefix, parent = "backbone.", parent.backbone
    if isinstance(getattr(parent, "features", None), nn.Sequential):
        prefix, parent = prefix + "features.", parent.features
    return prefix, parent


_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


Stage = tuple[str, nn.Module, torch.Tensor]  # name, module, its output


def forward_with_stages(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[Stage]]:
    """The output of `net` for `x` and, for every conv stage, (name, module, its output): a stage
    is a run of the stage parent's children (`_stage_parent`) at one spatial size that holds a
    convolution, and its output is that of the run's last child that is not a pooling layer
    (after its activation, before the pooling that shrinks the maps or averages them away)."""
    prefix, parent = _stage_parent(net)
    seen: list[Stage] = []
    handles = []
    for name, child in parent.named_children():
        def hook(module, args, output, name=name):
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                seen.append((prefix + name, module, output.detach()))
        handles.append(child.register_forward_hook(hook))
    try:
        output = net(x)
    finally:
        for handle in handles:
            handle.remove()
    stages, run = [], []
    for entry in [*seen, None]:
        if run and (entry is None or entry[2].shape[-2:] != run[-1][2].shape[-2:]):
            if any(_has_conv(module) for _, module, _ in run):
                stages.append([e for e in run if not isinstance(e[1], _POOLS)][-1])
            run = []
        if entry is not None:
            run.append(entry)
    return output, stages


@dataclass
class Answers:
    """What the network said for each image: its class, how sure it was, the output column
    Grad-CAM explains, and for a localizer whether it found an object and where."""

    classes: np.ndarray  # (B,) int
    confidence: np.ndarray  # (B,) float
    columns: list[int]  # output column per image: the class's, or p_c when nothing was found
    found: np.ndarray | None = None  # (B,) bool, localize
    boxes: np.ndarray | None = None  # (B, 4) x, y, w, h as fractions, localize


def read_answers(task: str, output: torch.Tensor, threshold: float = 0.5) -> Answers:
    """Answers from the network's output: logits (B, K), or [p_c, x, y, w, h, p_1..p_K]."""
    y = output.detach().float().cpu()
    if task == "localize":
        classes = y[:, 5:].argmax(1)
        found = y[:, 0] >= threshold
        sure = torch.where(found, y[:, 0] * y[:, 5:].max(1).values, 1 - y[:, 0])
        columns = [5 + int(c) if f else 0 for c, f in zip(classes, found)]
        return Answers(classes.numpy(), sure.numpy(), columns, found.numpy(),
                       y[:, 1:5].clamp(0, 1).numpy())
    probs = y.softmax(1)
    sure, classes = probs.max(1)
    return Answers(classes.numpy(), sure.numpy(), [int(c) for c in classes])


def pools_globally(net: nn.Module) -> bool:
    """Whether the head averages the last stage over all positions (resnet, googlenet), where
    Grad-CAM is exact; a flattening dense head (cnn, lenet5, vgg, alexnet, the localizer) weighs
    each position on its own. A localizer's own pooling feeds its head (its backbone's unused
    global pool does not): it pools globally only where the features are 1 x 1."""
    def is_global(m: nn.Module) -> bool:
        return isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1))

    if isinstance(getattr(net, "backbone", None), nn.Module) and hasattr(net, "pool"):
        return is_global(net.pool)
    return any(is_global(m) for m in net.modules())


def class_map_method(net: nn.Module) -> str:
    """"Grad-CAM" where the head pools globally, else "HiResCAM": Grad-CAM averages each
    channel's gradient over the positions, which for a dense head on flattened maps mixes
    weights of different positions and often cancels to an empty map; HiResCAM (gradient times
    activation, summed over channels) keeps each position's own weight, and equals Grad-CAM
    under global pooling."""
    return "Grad-CAM" if pools_globally(net) else "HiResCAM"


def class_map_cells(net: nn.Module, layer: nn.Module, x: torch.Tensor,
                    columns: Sequence[int]) -> torch.Tensor:
    """The class activation map of output `columns` at `layer`'s output (Captum: LayerGradCam,
    or LayerGradientXActivation for HiResCAM, see `class_map_method`) at the layer's own
    resolution, not yet clipped or scaled: (B, 1, h, w)."""
    from captum.attr import LayerGradCam, LayerGradientXActivation

    if class_map_method(net) == "Grad-CAM":
        cam = LayerGradCam(net, layer).attribute(x, target=list(columns), relu_attributions=True)
    else:
        cam = LayerGradientXActivation(net, layer).attribute(x, target=list(columns))
        cam = cam.sum(dim=1, keepdim=True)
    return cam.detach()


def grad_cam(net: nn.Module, layer: nn.Module, x: torch.Tensor, columns: Sequence[int]) -> np.ndarray:
    """`class_map_cells`, positive part, resized to the input and scaled to [0, 1] per image:
    (B, H, W)."""
    from captum.attr import LayerAttribution

    cam = LayerAttribution.interpolate(class_map_cells(net, layer, x, columns),
                                       tuple(x.shape[-2:]), interpolate_mode="bilinear")
    cam = cam[:, 0].clamp_min(0)
    peak = cam.flatten(1).max(1).values.clamp_min(1e-12).view(-1, 1, 1)
    return (cam / peak).numpy()


def display_images(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> list[np.ndarray]:
    """Normalized inputs (B, C, H, W) as the network saw them, as uint8 (H, W) or (H, W, 3)."""
    m = torch.tensor(list(mean)).view(1, -1, 1, 1)
    s = torch.tensor(list(std)).view(1, -1, 1, 1)
    pixels = ((x.detach().float().cpu() * s + m).clamp(0, 1) * 255).round().to(torch.uint8)
    return [p[0].numpy() if p.shape[0] == 1 else p.permute(1, 2, 0).numpy() for p in pixels]


def caption(labels: Sequence[str], answers: Answers, i: int, truth: str | None) -> str:
    said = "nothing" if answers.found is not None and not answers.found[i] \
        else labels[int(answers.classes[i])]
    line = f"said {said} ({float(answers.confidence[i]):.2f})"
    return line if truth is None else f"true {truth}\n{line}"


def _truth(task: str, labels: Sequence[str], target: torch.Tensor) -> str:
    if task == "localize":
        return labels[int(target[5:].argmax())] if float(target[0]) > 0.5 else "nothing"
    return labels[int(target)]


def answer_tile(image: np.ndarray, answers: Answers, i: int, labels: Sequence[str], *,
                heat: np.ndarray | None = None, target: torch.Tensor | None = None,
                side: int = 112) -> Image.Image:
    """One image upscaled, with its Grad-CAM over it when given, and for a localizer the true
    box (green) and the predicted one (red) drawn."""
    tile = pictures.overlay(image, heat) if heat is not None else pictures.to_rgb(image)
    tile = pictures.scale_to(tile, side)
    if answers.boxes is None:
        return tile
    boxes = []
    if target is not None and float(target[0]) > 0.5:
        boxes.append((tuple(float(v) for v in target[1:5]), pictures.TRUE_BOX, ""))
    if answers.found is not None and answers.found[i]:
        boxes.append((tuple(float(v) for v in answers.boxes[i]), pictures.PREDICTED_BOX, ""))
    return pictures.draw_boxes(tile, boxes)


def filter_picture(net: nn.Module) -> Image.Image | None:
    conv = first_conv(net)
    if conv is None:
        return None
    return pictures.filter_grid(conv.weight.detach().float().cpu().numpy())


def feature_sheets(stages: list[Stage], images: list[np.ndarray],
                   captions: Sequence[str]) -> list[Image.Image]:
    """One sheet per image: the image and its maps at every stage."""
    return [pictures.feature_map_sheet(image, [(f"stage {n + 1} ({name})", out[i].numpy())
                                               for n, (name, _, out) in enumerate(stages)],
                                       caption=captions[i])
            for i, image in enumerate(images)]


def _wrong(task: str, answers: Answers, targets: torch.Tensor) -> np.ndarray:
    if task == "localize":
        present = (targets[:, 0] > 0.5).numpy()
        right_class = answers.classes == targets[:, 5:].argmax(1).numpy()
        return (answers.found != present) | (present & answers.found & ~right_class)
    return answers.classes != targets.numpy()


def evaluation_pictures(net: nn.Module, x: torch.Tensor, targets: torch.Tensor, *, task: str,
                        labels: Sequence[str], mean: Sequence[float],
                        std: Sequence[float]) -> dict[str, Image.Image]:
    """The pictures of a run from test images `x` (normalized) and their targets: the first
    layer's filters, the feature maps of the first FEATURE_IMAGES images, Grad-CAM over
    correct answers and over the most confident wrong ones, and a grid of the worst mistakes.
    Keys are artifact paths."""
    net = explainable(net)
    out: dict[str, Image.Image] = {}
    if (filters := filter_picture(net)) is not None:
        out[FILTERS_FILE] = filters
    with torch.no_grad():
        output = torch.cat([net(chunk) for chunk in x.split(256)])
    answers = read_answers(task, output)
    wrong = _wrong(task, answers, targets)
    fixed = list(range(min(FEATURE_IMAGES, len(x))))
    right = [int(i) for i in np.flatnonzero(~wrong)[:CAM_COUNT]]
    worst = [int(i) for i in sorted(np.flatnonzero(wrong), key=lambda i: -answers.confidence[i])]
    with torch.no_grad():
        _, stages = forward_with_stages(net, x[fixed])
    images = display_images(x, mean, std)
    truths = [_truth(task, labels, t) for t in targets]
    sheets = feature_sheets(stages, [images[i] for i in fixed],
                            [caption(labels, answers, i, truths[i]) for i in fixed])
    for n, sheet in zip(fixed, sheets):
        out[f"{PICTURES_DIR}/feature_maps/test_{n:03d}.png"] = sheet
    if stages:
        chosen = right + worst[:CAM_COUNT]
        heat = grad_cam(net, stages[-1][1], x[chosen], [answers.columns[i] for i in chosen])
        maps = dict(zip(chosen, heat))
        where = stages[-1][0]
        for name, picked, title in (("gradcam_correct.png", right, "correct answers"),
                                    ("gradcam_wrong.png", worst[:CAM_COUNT],
                                     "the most confident wrong answers")):
            if picked:
                tiles = [answer_tile(images[i], answers, i, labels, heat=maps[i], target=targets[i])
                         for i in picked]
                out[f"{PICTURES_DIR}/{name}"] = pictures.grid(
                    tiles, [caption(labels, answers, i, truths[i]) for i in picked], columns=4,
                    title=f"{class_map_method(net)} at {where} for the answer: {title}")
    if worst:
        tiles = [answer_tile(images[i], answers, i, labels, target=targets[i]) for i in worst[:MISTAKES]]
        out[f"{PICTURES_DIR}/worst_mistakes.png"] = pictures.grid(
            tiles, [caption(labels, answers, i, truths[i]) for i in worst[:MISTAKES]], columns=8,
            title=f"the {len(tiles)} most confident mistakes of {len(wrong)} test images "
                  f"({int(wrong.sum())} wrong)")
    return out


_WINDOWS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def conv_window(module: nn.Module) -> list[tuple[int, int, int, int]]:
    """(kernel, stride, padding, dilation) per axis of a convolution or pooling."""
    def pair(value: Any) -> tuple[int, int]:
        return (value, value) if isinstance(value, int) else tuple(value)

    k, s, d = (pair(getattr(module, a, 1)) for a in ("kernel_size", "stride", "dilation"))
    if module.padding == "valid":
        p = (0, 0)
    elif module.padding == "same":
        p = tuple(d_ * (k_ - 1) // 2 for k_, d_ in zip(k, d))
    else:
        p = pair(module.padding)
    return list(zip(k, s, p, d))


def stage_grid(net: nn.Module, layer: nn.Module, x: torch.Tensor) -> pointing.Grid | None:
    """Where the cells of `layer`'s output sit on the input `x` (a `pointing.Grid`), from the
    kernel, stride, padding and dilation of every convolution and pooling on the way: each
    shifts the centre by ((k - 1) * d / 2 - p) input steps and multiplies the step by its stride;
    other modules keep the grid of their input, and a tensor made outside a module (a residual
    sum in place, an inception's concatenation) that of the last one of its size. None when the
    layer's output was not followed."""
    known: dict[int, tuple[torch.Tensor, pointing.Grid]] = {id(x): (x, pointing.PIXELS)}
    by_size: dict[tuple[int, ...], pointing.Grid] = {tuple(x.shape[-2:]): pointing.PIXELS}
    found: list[pointing.Grid] = []

    def grid_of(t: torch.Tensor) -> pointing.Grid | None:
        entry = known.get(id(t))
        return entry[1] if entry is not None and entry[0] is t else by_size.get(tuple(t.shape[-2:]))

    def hook(module, args, output):
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            return
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        grid = grid_of(source) if source is not None and source.ndim == 4 else None
        if grid is not None and isinstance(module, _WINDOWS):
            grid = tuple((start + (d * (k - 1) / 2 - p) * step, step * s)
                         for (start, step), (k, s, p, d) in zip(grid, conv_window(module)))
        elif grid is None or output.shape[-2:] != source.shape[-2:]:
            grid = grid_of(output)
        if grid is not None:
            known[id(output)], by_size[tuple(output.shape[-2:])] = (output, grid), grid
            if module is layer:
                found.append(grid)

    handles = [m.register_forward_hook(hook) for m in net.modules()]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for handle in handles:
            handle.remove()
    return found[-1] if found else None


def pointing_game_for(net: nn.Module, x: torch.Tensor, targets: torch.Tensor, *, stage: int = -1,
                      chunk: int = 128, draws: int = 0, seed: int = 0) -> pointing.PointingGame:
    """The pointing game (`training.tracking.pointing`) of a localizer on test images `x`
    (normalized) and their targets [p_c, x, y, w, h, one-hot]: the images it got right (object
    present, found, right class) are scored by where their class map for the answer
    (`class_map_cells` at conv stage `stage`, by default the last, which `evaluation_pictures`
    draws) peaks, each cell placed on the input by `stage_grid`. `draws` and `seed`: see
    `pointing.pointing_game`."""
    net = explainable(net)
    with torch.no_grad():
        answers = read_answers("localize", torch.cat([net(c) for c in x.split(chunk)]))
        _, stages = forward_with_stages(net, x[:1])
    if not -len(stages) <= stage < len(stages):
        raise ValueError(f"stage {stage} is not one of the network's {len(stages)} conv stages")
    _, layer, output = stages[stage]
    grid = stage_grid(net, layer, x[:1])
    if grid is None:
        raise ValueError(f"where stage {stage}'s cells sit on the input could not be followed")
    right = np.flatnonzero(~_wrong("localize", answers, targets) & (targets[:, 0] > 0.5).numpy())
    cells = [torch.zeros(0, *output.shape[-2:])]
    for part in np.array_split(right, max(1, -(-len(right) // chunk))):
        if len(part):
            cam = class_map_cells(net, layer, x[part], [answers.columns[i] for i in part])
            cells.append(cam[:, 0].clamp_min(0))
    return pointing.pointing_game(torch.cat(cells).numpy(), targets[right, 1:5].numpy(), grid=grid,
                                  image=tuple(x.shape[-2:]), method=class_map_method(net),
                                  draws=draws, seed=seed)


def held_out_sample(dm: Any, limit: int = SCAN_LIMIT) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The first `limit` test images, normalized as the network sees them, and their targets;
    None when this process holds no test set (a Ray worker fed by Ray Data)."""
    from torch.utils.data import DataLoader, Subset

    test_set = getattr(dm, "test_set", None)
    if test_set is None or len(test_set) == 0:
        return None
    loader = DataLoader(Subset(test_set, range(min(limit, len(test_set)))), batch_size=256)
    batches = [(dm.batch_transform(False)(images), targets) for images, targets in loader]
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def log_run_pictures(run: Any, task: Any, dm: Any) -> None:
    """Draw the run's pictures (`evaluation_pictures`) and log them as artifacts in one upload. Only
    the filters when there is no test set here. A failure is one warning line: pictures never
    fail a run."""
    try:
        started = time.perf_counter()
        sample = held_out_sample(dm)
        if sample is None:
            drawn = {FILTERS_FILE: f} if (f := filter_picture(task.net)) is not None else {}
        else:
            drawn = evaluation_pictures(task.net, *sample, task=task.task, labels=dm.labels,
                                  mean=dm.mean, std=dm.std)
        with tempfile.TemporaryDirectory() as tmp:
            for name, picture in drawn.items():
                path = Path(tmp) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                picture.save(path)
            run.client.log_artifacts(run.run_id, tmp)
        log.debug("pictures drawn and logged in %.2f s", time.perf_counter() - started)
    except Exception as exc:
        log.warning("pictures not logged for run %s: %s", run.run_id, " ".join(str(exc).split()))
        return
    if sample is not None and task.task == "localize":
        log_pointing_game(run, task.net, sample)


def log_pointing_game(run: Any, net: nn.Module, sample: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Log a localizer's pointing game on the test sample as the run's metrics `pointing_game`
    (the share of right answers whose class map peaks inside the true box) and
    `pointing_game_baseline` (the share a random pixel would reach). A failure is one warning."""
    try:
        game = pointing_game_for(net, *sample)
        if game.scored:
            run.client.log_metric(run.run_id, "pointing_game", game.share)
            run.client.log_metric(run.run_id, "pointing_game_baseline", game.baseline)
        log.debug("%s", game.line())
    except Exception as exc:
        log.warning("pointing game not logged for run %s: %s", run.run_id,
                    " ".join(str(exc).split()))


__all__ = ["FILTERS_FILE", "PICTURES_DIR", "Answers", "answer_tile", "caption", "class_map_cells",
           "class_map_method", "conv_window", "display_images", "evaluation_pictures", "explainable",
           "feature_sheets", "filter_picture", "forward_with_stages", "grad_cam", "held_out_sample",
           "log_pointing_game", "log_run_pictures", "pointing_game_for", "pools_globally",
           "read_answers", "stage_grid"]
