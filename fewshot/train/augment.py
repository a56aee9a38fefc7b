"""Tensor augmentation that keeps size cues: flips, 90-degree rotations, mild colour jitter.

No rescaling or cropping: macrocytes and microcytes differ by size, and scale
augmentation would erase the very signal (ANCHORS.md).
"""

from __future__ import annotations

import torch
from torch import Tensor


def flip_rotate(images: Tensor, generator: torch.Generator) -> Tensor:
    """Random horizontal flips and 90-degree rotations per image.

    Both keep the cell's size and shape statistics (no rescaling: macrocytes and
    microcytes differ by size), and need square images for the rotation.
    """
    flips = torch.rand(len(images), generator=generator) < 0.5
    turns = torch.randint(0, 4, (len(images),), generator=generator)
    images = torch.where(flips.to(images.device)[:, None, None, None],
                         images.flip(-1), images)
    out = images.clone()
    for k in range(1, 4):
        chosen = (turns == k).nonzero().flatten().to(images.device)
        if len(chosen):
            out[chosen] = torch.rot90(images[chosen], k, dims=(-2, -1))
    return out


def colour_jitter(images: Tensor, generator: torch.Generator, strength: float = 0.1) -> Tensor:
    """Per-image brightness and contrast factors in [1 - strength, 1 + strength], for
    float images in [0, 1] (stain and illumination vary between slides)."""
    shape = (len(images), 1, 1, 1)
    brightness = 1 + strength * (2 * torch.rand(shape, generator=generator) - 1)
    contrast = 1 + strength * (2 * torch.rand(shape, generator=generator) - 1)
    brightness, contrast = brightness.to(images), contrast.to(images)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return ((images * brightness - mean) * contrast + mean).clamp_(0, 1)
