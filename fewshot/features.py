"""Features of a set of images through an encoder, and seeded per-class subsets.

Feature-based heads see each image once: evaluation, validation, adapt and the base
prototypes of a run all embed through `embed`, in eval mode (stored batch-norm statistics).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from fewshot.data.images import Normalize
from fewshot.progress import track


def subsample(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of at most `per_class` images per label, chosen by the seed."""
    rng = np.random.default_rng([seed, per_class])
    chosen = []
    for label in np.unique(labels):
        pool = np.flatnonzero(labels == label)
        chosen.append(rng.choice(pool, size=min(per_class, len(pool)), replace=False))
    return np.sort(np.concatenate(chosen))


@torch.no_grad()
def embed(encoder: nn.Module, images: Tensor, normalize: Normalize, device: torch.device,
          batch_size: int = 256, quiet: bool = True, description: str = "embedding") -> Tensor:
    """Features `[N, D]` (float32, CPU) of uint8 images, in eval mode (stored batch-norm
    statistics), batch by batch, with a progress bar unless quiet."""
    was_training = encoder.training
    encoder.eval()
    chunks = []
    starts = range(0, len(images), batch_size)
    for start in track(starts, total=len(starts), description=description, quiet=quiet):
        batch = normalize(images[start:start + batch_size].to(device))
        if device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        chunks.append(encoder(batch).float().cpu())
    encoder.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0)
