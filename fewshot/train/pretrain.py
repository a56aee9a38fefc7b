"""Supervised pretraining on a task's base classes, the first stage of meta-transfer.

Cross-entropy with label smoothing over all base classes, augmentation that keeps size
cues, a cosine schedule, AMP and channels_last on CUDA. After each epoch the encoder is
scored by 5-way 5-shot nearest-centroid accuracy on the `val` classes and the best one
is kept. Every random choice is a function of (seed, epoch, step), so a run resumed
from its checkpoint continues as if it had never stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.config import Config
from fewshot.data.episodes import EpisodeSampler
from fewshot.data.tasks import Task, load_task
from fewshot.methods.common import class_means
from fewshot.models.saved import FORMAT_VERSION, build_encoder
from fewshot.train.augment import colour_jitter, flip_rotate
from fewshot.train.images import IMAGENET_MEAN, IMAGENET_STD, embed, split_images, subsample

VAL_PER_CLASS = 100
"""Validation images embedded per class each epoch (episodes are drawn from these)."""
PROTOTYPE_PER_CLASS = 500
"""Base images per class averaged into the stored prototypes and base mean."""


class Classifier(nn.Module):
    """Encoder + linear layer over the base classes; saved as `encoder.*`, `classifier.*`."""

    def __init__(self, encoder: nn.Module, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.feature_dim, classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.encoder(images))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from fewshot.errors import UsageError

        raise UsageError("CUDA is not available", "--device", "use --device cpu or auto")
    return torch.device(name)


def make_optimizer(config: Config, params) -> torch.optim.Optimizer:
    t = config.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=0.9, nesterov=True,
                               weight_decay=t.weight_decay)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=t.lr, weight_decay=t.weight_decay)


def make_schedule(config: Config, optimizer: torch.optim.Optimizer,
                  total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if config.train.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def augment_batch(images: Tensor, generator: torch.Generator) -> Tensor:
    """uint8 batch -> float [0, 1], flipped, rotated and colour-jittered."""
    images = flip_rotate(images.float() / 255.0, generator)
    return colour_jitter(images, generator)


def nearest_centroid_accuracy(features: Tensor, labels: np.ndarray, groups: np.ndarray | None,
                              ways: int, shots: int, queries: int, episodes: int,
                              seed: int) -> float:
    """Mean accuracy (%) of cosine nearest centroid over seeded episodes of `features`."""
    sampler = EpisodeSampler(labels, ways=min(ways, len(np.unique(labels))), shots=shots,
                             queries=queries, episodes=episodes, seed=seed, groups=groups,
                             allow_fewer_queries=True)
    features = F.normalize(features, dim=-1)
    correct = total = 0
    for index in range(episodes):
        ep = sampler.episode(index)
        n = len(ep.classes)
        support_labels = torch.arange(n).repeat_interleave(len(ep.support) // n)
        query_labels = torch.arange(n).repeat_interleave(len(ep.query) // n)
        centroids = class_means(features[ep.support], support_labels, n)
        predictions = (features[ep.query] @ F.normalize(centroids, dim=-1).T).argmax(1)
        correct += int((predictions == query_labels).sum())
        total += len(query_labels)
    return 100.0 * correct / max(total, 1)


@dataclass
class PretrainData:
    task: Task
    images: Tensor
    labels: Tensor
    classes: list[str]
    val_images: Tensor | None
    val_labels: np.ndarray | None
    val_groups: np.ndarray | None
    val_classes: list[str]
    image_size: int


def load_data(config: Config, data_root: str | None, config_dir: Path | None,
              quiet: bool) -> PretrainData:
    task = load_task(config.data.task, data_root or config.data.root, relative_to=config_dir)
    size = config.data.image_size or task.image_size
    images, base = split_images(task, "base", size, config.data.cache_dir, quiet)
    val_images = val_labels = val_groups = None
    val_classes = task.classes("val")
    if val_classes:
        all_val, val = split_images(task, "val", size, config.data.cache_dir, quiet)
        keep = subsample(val.labels, VAL_PER_CLASS, config.train.seed)
        val_images = all_val[torch.from_numpy(keep)]
        val_labels = val.labels[keep]
        val_groups = None if val.groups is None else val.groups[keep]
    return PretrainData(task, images, torch.from_numpy(base.labels), base.classes, val_images,
                        val_labels, val_groups, val_classes, size)


def model_info(config: Config, data: PretrainData, encoder: nn.Module,
               metrics: dict[str, Any], base_feature_mean: list[float] | None) -> dict[str, Any]:
    """model.json: everything needed to rebuild the model without the config."""
    from fewshot import __version__

    return {
        "format_version": FORMAT_VERSION,
        "fewshot_version": __version__,
        "kind": "pretrain",
        "backbone": config.model.backbone,
        "backbone_args": config.model.backbone_args,
        "image_size": data.image_size,
        "in_channels": 3,
        "feature_dim": int(encoder.feature_dim),
        "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "head": "simpleshot",
        "head_options": {},
        "task": data.task.name,
        "classes": {split: data.task.classes(split) for split in ("base", "val", "novel")},
        "base_feature_mean": base_feature_mean,
        "metrics": metrics,
    }
