"""A registry of encoders by name (in the manner of timm).

A backbone maps images `[B, C, H, W]` to feature vectors `[B, D]` and says its
`feature_dim`. Builders take `image_size`, `in_channels` and their own keyword options.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from fewshot.errors import UsageError


class Backbone(nn.Module):
    """Base class of encoders: `forward(images) -> [B, feature_dim]`."""

    feature_dim: int


BACKBONES: dict[str, Callable[..., Backbone]] = {}


def register_backbone(name: str) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    def decorate(builder: Callable[..., Backbone]) -> Callable[..., Backbone]:
        BACKBONES[name] = builder
        return builder

    return decorate


def build_backbone(name: str, image_size: int = 84, in_channels: int = 3, **kwargs) -> Backbone:
    from fewshot.models import conv4  # noqa: F401  (registers built-in backbones)

    if name not in BACKBONES:
        raise UsageError("unknown backbone", name, f"choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](image_size=image_size, in_channels=in_channels, **kwargs)
