"""Tensor augmentation for cell and lesion images that keeps size cues.

Flips, 90-degree rotations and a small brightness/contrast jitter: all leave a cell's
size in pixels unchanged, since size separates some classes (macrocyte vs microcyte)
and scale augmentation would erase that very signal.
"""

from __future__ import annotations

import torch
from torch import Tensor

DRAWS = 5
"""Uniform numbers one image's augmentation uses: three coins, a scale and a shift."""


def augment(images: Tensor, jitter: float = 0.1, generator: torch.Generator | None = None,
            draws: Tensor | None = None) -> Tensor:
    """Augment a float batch `[B, C, H, W]` (already normalised) image by image.

    `draws` (`[B, DRAWS]` uniforms) fixes each image's augmentation, so an image is
    augmented alike whichever batch or process it falls in (pretraining on several
    ranks); otherwise they are drawn from `generator`."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError("square images expected")
    batch = images.shape[0]
    device = images.device
    if draws is None:
        draws = torch.stack([torch.rand(batch, generator=generator) for _ in range(DRAWS)], 1)

    def coin(column: int) -> Tensor:
        return (draws[:, column] < 0.5).to(device).view(-1, 1, 1, 1)

    out = torch.where(coin(0), images.flip(-1), images)
    out = torch.where(coin(1), out.flip(-2), out)
    out = torch.where(coin(2), out.transpose(-1, -2), out)  # with the flips: all 8 rotations
    if jitter > 0:
        scale = 1 + (draws[:, 3] * 2 - 1) * jitter
        shift = (draws[:, 4] * 2 - 1) * jitter
        out = out * scale.to(device).view(-1, 1, 1, 1) + shift.to(device).view(-1, 1, 1, 1)
    return out
