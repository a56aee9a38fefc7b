"""Raw pixels as features: the floor any learned encoder must beat."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from fewshot.models.registry import Backbone, register_backbone


class Pixels(Backbone):
    """Images area-resized to `side x side` and flattened: the raw-pixel floor (16x16)."""

    def __init__(self, in_channels: int = 3, side: int = 16) -> None:
        super().__init__()
        self.side = side
        self.feature_dim = in_channels * side * side

    def forward(self, images: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(images, self.side).flatten(1)


@register_backbone("pixels")
def pixels(image_size: int = 84, in_channels: int = 3, side: int = 16) -> Pixels:
    return Pixels(in_channels=in_channels, side=min(side, image_size))
