"""Split images as one uint8 tensor, and the float normalisation models see.

`split_images` is the single place that reads a task's images for training and
evaluation: it uses the decoded cache (`fewshot.data.cache`) when that module is
present, and otherwise decodes the files into memory with `load_tensor`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fewshot.data.folders import load_tensor
from fewshot.data.tasks import SplitData, Task

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def split_images(task: Task, split: str, size: int, cache_dir: str | Path | None = None,
                 quiet: bool = False) -> tuple[Tensor, SplitData]:
    """(uint8 `[N, 3, size, size]`, SplitData): row i is `data.paths[i]`."""
    try:
        from fewshot.data.cache import load_split_images
    except ImportError:
        load_split_images = None
    if load_split_images is not None:
        return load_split_images(task, split, size, cache_dir, quiet=quiet)
    data = task.split(split)
    return decode_all(data.paths, size, quiet), data


def decode_all(paths: Sequence[Path], size: int, quiet: bool = False) -> Tensor:
    from fewshot.tracking import track

    array = np.empty((len(paths), 3, size, size), dtype=np.uint8)

    def work(index: int) -> None:
        array[index] = load_tensor(paths[index], size)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for _ in track(pool.map(work, range(len(paths))), total=len(paths),
                       description=f"decoding {len(paths)} images", quiet=quiet):
            pass
    return torch.from_numpy(array)


def normalise(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 `[B, C, H, W]` -> float `(x / 255 - mean) / std`."""
    channels = images.shape[-3]
    m = torch.tensor(mean, dtype=torch.float32, device=images.device)
    s = torch.tensor(std, dtype=torch.float32, device=images.device)
    if channels != len(m):
        m, s = m.mean().repeat(channels), s.mean().repeat(channels)
    return (images.float() / 255.0 - m.view(-1, 1, 1)) / s.view(-1, 1, 1)


def subsample(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of at most `per_class` images per label, chosen by the seed."""
    rng = np.random.default_rng([seed, per_class])
    chosen = []
    for label in np.unique(labels):
        pool = np.flatnonzero(labels == label)
        chosen.append(rng.choice(pool, size=min(per_class, len(pool)), replace=False))
    return np.sort(np.concatenate(chosen))


@torch.no_grad()
def embed(encoder: torch.nn.Module, images: Tensor, mean: Sequence[float],
          std: Sequence[float], device: torch.device, batch_size: int = 256,
          quiet: bool = True, description: str = "embedding") -> Tensor:
    """Features `[N, D]` (float32, CPU) of uint8 images, in eval mode, batch by batch."""
    from fewshot.tracking import track

    was_training = encoder.training
    encoder.eval()
    chunks = []
    starts = range(0, len(images), batch_size)
    for start in track(starts, total=len(starts), description=description, quiet=quiet):
        batch = normalise(images[start:start + batch_size].to(device), mean, std)
        if device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        chunks.append(encoder(batch).float().cpu())
    encoder.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0)
