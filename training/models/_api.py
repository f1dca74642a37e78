"""The model registry: every network is declared here by name, and built through one door."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from training.errors import WaldoError, unknown_choice
from training.models._layers import check_num_classes
from training.spec.catalog import DATA_DECIDED


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a network besides its builder."""

    name: str
    builder: Callable[..., nn.Module]
    default_input: tuple[int, int, int]  # (C, H, W) the network was designed for
    min_size: int  # smallest square input side it accepts
    sized: bool  # True if the builder needs `image_size` (dense layers on a fixed grid)


_MODELS: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    default_input: tuple[int, int, int] = (3, 224, 224),
    min_size: int = 32,
    sized: bool = False,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder under `name`; a second registration of the same name is an error."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(
                f"model {name!r} is already registered; registered models: {', '.join(sorted(_MODELS))}"
            )
        _MODELS[name] = ModelInfo(name, builder, default_input, min_size, sized)
        return builder

    return decorator


def list_models() -> list[str]:
    """Names of all registered networks, sorted."""
    return sorted(_MODELS)


def get_model_info(name: str) -> ModelInfo:
    try:
        return _MODELS[name]
    except KeyError:
        raise unknown_choice("model", name, _MODELS) from None


def create_model(
    name: str, *, num_classes: int, in_channels: int, image_size: int | None = None, **kwargs
) -> nn.Module:
    """Build the network `name` for `in_channels`-channel images and `num_classes` classes.

    `num_classes=0` builds it without a classifier (timm's convention): `forward` then returns
    pooled features of size `net.num_features`, and `net.reset_classifier(k)` adds one later.

    `image_size` matters only for networks whose dense layers sit on a fixed grid (mlp, cnn,
    lenet5); it defaults to the size they were designed for. The torchvision classics end in
    adaptive pooling and accept any size from `min_size` up. Extra keyword arguments go to the
    builder (e.g. `aux_logits=True` for googlenet).
    """
    info = get_model_info(name)
    check_num_classes(num_classes)
    if in_channels < 1:
        raise WaldoError(f"in_channels must be positive (got {in_channels})")
    size = image_size or info.default_input[1]
    if size < info.min_size:
        raise WaldoError(
            f"model {name!r} needs images of at least {info.min_size}x{info.min_size} "
            f"(got {size}x{size}); resize them with --image-size"
        )
    accepted = set(inspect.signature(info.builder).parameters) - set(DATA_DECIDED)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise WaldoError(
            f"model {name!r} does not take argument(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(sorted(accepted)) or 'none'}"
        )
    if info.sized:
        kwargs["image_size"] = size
    return info.builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
