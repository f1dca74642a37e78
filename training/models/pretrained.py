"""Where a network's first weights come from, and how they are fitted to Waldo's network.

Named weights are torchvision's (the multi-weight API: `get_model_weights(arch)[NAME]`), read
through the torch hub cache, `$TORCH_HOME/hub/checkpoints/<file name of the URL>`, and
downloaded only when the file is not there. `check_hash=True` as torchvision does: torch hub
checks the hash prefix in the file name on a download only, and trusts a file already in the
cache; the sha256 of the file actually used goes into the run's provenance instead.

Fitting a state dict to a network (`load_matching`) is timm's recipe: every backbone tensor
whose name and shape match is loaded, the first convolution's RGB kernel is adapted to the
data's channel count (`adapt_input_conv`), and the class-mapping head is kept only when asked
and when its shape fits; anything else of the backbone that does not fit means the weights
belong to another architecture.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import nn

from training.errors import WaldoError
from training.models._layers import head_modules

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # DEFAULT, IMAGENET1K_V1; a path has / or .


@dataclass
class Pretrained:
    """A state dict to start from, with the normalization it expects and where it came from."""

    state: dict[str, torch.Tensor]
    mean: tuple[float, ...] | None = None  # None: the data's own normalization stays
    std: tuple[float, ...] | None = None
    provenance: dict[str, str] = field(default_factory=dict)
    model_args: dict[str, object] = field(default_factory=dict)  # builder arguments they need


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_enum(arch: str):
    """torchvision's weights enum of `arch`, or None when torchvision has none (mlp, cnn, ...)."""
    import torchvision.models

    try:
        return torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        return None


def per_channel(values, in_channels: int) -> tuple[float, ...]:
    """RGB statistics for `in_channels` channels: as they are for 3, else their mean for each."""
    values = tuple(float(v) for v in values)
    if in_channels == len(values):
        return values
    return (round(sum(values) / len(values), 6),) * in_channels


def load_weights(arch: str, value: str, *, in_channels: int) -> Pretrained:
    """`--weights VALUE` for network `arch`: a torchvision weights name, or a state dict file."""
    path = Path(value).expanduser()
    if path.is_file() or not _NAME.match(value):
        return _from_file(path)
    enum = weights_enum(arch)
    if enum is None:
        raise WaldoError(f"model {arch!r} has no torchvision weights (so no weights named "
                         f"{value!r}); give --weights the path of a state dict file")
    try:
        weights = enum[value]
    except KeyError:
        valid = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise WaldoError(f"unknown weights {value!r} for {arch}; valid: {valid}, "
                         "or the path of a state dict file") from None
    state, file = _from_hub(weights)
    preprocess = weights.transforms()
    model_args = {"transform_input": True} if arch == "googlenet" else {}  # as torchvision does
    return Pretrained(
        state, per_channel(preprocess.mean, in_channels), per_channel(preprocess.std, in_channels),
        {"weights.name": f"{type(weights).__name__}.{weights.name}", "weights.url": weights.url,
         "weights.sha256": sha256_of(file)},
        model_args)


def _from_hub(weights) -> tuple[dict[str, torch.Tensor], Path]:
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    file = folder / os.path.basename(urlparse(weights.url).path)
    try:
        state = torch.hub.load_state_dict_from_url(
            weights.url, model_dir=str(folder), map_location="cpu", progress=False,
            check_hash=True, weights_only=True)
    except (URLError, OSError) as exc:  # offline, or a cache folder that cannot be written
        reason = " ".join(str(getattr(exc, "reason", exc)).split())
        raise WaldoError(f"cannot download weights {type(weights).__name__}.{weights.name} "
                         f"({reason}): place the file {file} (from {weights.url}) and run "
                         "again") from None
    except Exception as exc:  # a cached file that is not a state dict
        raise WaldoError(f"cannot read the cached weights file {file} ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:200]}); delete it and run again") from None
    return state, file


def _from_file(path: Path) -> Pretrained:
    if not path.is_file():
        raise WaldoError(f"weights file {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, or one holding more than tensors
        reason = " ".join(str(exc).split())[:200]
        raise WaldoError(f"{str(path)!r} is not a state dict file ({type(exc).__name__}: "
                         f"{reason})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WaldoError(f"{str(path)!r} is not a state dict (a dict of tensor names to tensors)")
    return Pretrained(state, provenance={"weights.path": str(path.resolve()),
                                         "weights.sha256": sha256_of(path)})


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A first convolution's kernel (O, I, kH, kW) for `in_channels` inputs, as timm's
    `adapt_input_conv`: summed over I for one channel (a gray image is R = G = B), else
    repeated and scaled by I / in_channels so the activations keep their size."""
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeat = math.ceil(in_channels / weight.shape[1])
    return weight.repeat(1, repeat, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def _split_localizer(state: dict[str, torch.Tensor]):
    """A Localizer's state -> (backbone state, head state); a plain network's -> (state, {})."""
    if not any(k.startswith("backbone.") for k in state):
        return state, {}
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return backbone, {k: v for k, v in state.items() if not k.startswith("backbone.")}


def load_matching(net: nn.Module, state: dict[str, torch.Tensor], *, keep_head: bool,
                  source: str) -> int:
    """Load `state` (a registry network's or a Localizer's) into `net` (either kind); return
    how many tensors were loaded.

    The backbone must fit: every backbone tensor of `net` is loaded, the first convolution
    adapted to `net`'s channels; a missing or differently shaped one is a WaldoError naming
    `source`. The head is loaded only with `keep_head`, tensor by tensor where shapes match
    (the same classes); otherwise it keeps its fresh initialization.
    """
    src_backbone, src_head = _split_localizer(state)
    target = getattr(net, "backbone", None)
    if isinstance(target, nn.Module):  # a Localizer: the backbone gets the network's weights
        loaded = _load_into(target, src_backbone, keep_head=False, source=source)
        if keep_head and src_head:
            loaded += _load_into(net, {**{f"backbone.{k}": v for k, v in src_backbone.items()},
                                       **src_head}, keep_head=True, source=source, only_head=True)
        return loaded
    return _load_into(net, src_backbone, keep_head=keep_head, source=source)


def _load_into(net: nn.Module, src: dict[str, torch.Tensor], *, keep_head: bool, source: str,
               only_head: bool = False) -> int:
    names = {id(m): n for n, m in net.named_modules()}
    head = tuple(names[id(m)] + "." for m in head_modules(net))
    current = net.state_dict()
    first_conv = next((k for k, v in current.items() if v.ndim == 4), None)
    new, misfits = {}, []
    for key, value in current.items():
        in_head = key.startswith(head)
        if in_head != only_head and not (in_head and keep_head):
            continue
        given = src.get(key)
        if given is not None and given.shape == value.shape:
            new[key] = given
        elif (key == first_conv and given is not None and given.ndim == 4
              and given.shape[0] == value.shape[0] and given.shape[2:] == value.shape[2:]):
            new[key] = adapt_input_conv(given, value.shape[1])
        elif not in_head:
            misfits.append(f"{key}: " + ("missing" if given is None else
                                         f"{tuple(given.shape)} vs {tuple(value.shape)}"))
    if misfits:
        raise WaldoError(f"{source} does not fit this {type(net).__name__}: {len(misfits)} "
                         f"backbone tensor(s) are missing or shaped otherwise (e.g. "
                         f"{'; '.join(misfits[:2])}); are they weights of another architecture?")
    with torch.no_grad():
        for key, value in new.items():
            current[key].copy_(value.to(current[key].dtype))
    return len(new)


__all__ = ["Pretrained", "adapt_input_conv", "load_matching", "load_weights", "per_channel",
           "sha256_of", "weights_enum"]
