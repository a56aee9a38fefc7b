"""Tensor augmentation for cell and lesion images that keeps size cues.

Flips, 90-degree rotations and a small brightness/contrast jitter: all leave a cell's
size in pixels unchanged, since size separates some classes (macrocyte vs microcyte)
and scale augmentation would erase that very signal.
"""

from __future__ import annotations

import torch
from torch import Tensor


def augment(images: Tensor, jitter: float = 0.1, generator: torch.Generator | None = None
            ) -> Tensor:
    """Augment a float batch `[B, C, H, W]` (already normalised) image by image."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError("square images expected")
    batch = images.shape[0]
    device = images.device

    def coin() -> Tensor:
        draw = torch.rand(batch, generator=generator)
        return (draw < 0.5).to(device).view(-1, 1, 1, 1)

    out = torch.where(coin(), images.flip(-1), images)
    out = torch.where(coin(), out.flip(-2), out)
    out = torch.where(coin(), out.transpose(-1, -2), out)  # with the flips: all 8 rotations
    if jitter > 0:
        scale = 1 + (torch.rand(batch, generator=generator) * 2 - 1) * jitter
        shift = (torch.rand(batch, generator=generator) * 2 - 1) * jitter
        out = out * scale.to(device).view(-1, 1, 1, 1) + shift.to(device).view(-1, 1, 1, 1)
    return out
