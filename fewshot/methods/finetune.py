"""Freeze-then-unfreeze fine-tuning on the support set only (transfer learning at test time).

Phase 1 trains a linear head on frozen features (the linear probe). Phase 2 unfreezes
the encoder's last stage and trains it with the head at a lower learning rate, on
flipped and rotated support images (no rescaling: size is a diagnostic cue). Batch-norm
keeps its stored statistics (inductive; five images are too few to estimate them). The
encoder is restored after every episode, so episodes stay independent. Both phases use
the linear probe's class-balanced loss weights (unequal shots; `balance=false` drops them).

Cost. With `fast` (the default) and an encoder that splits at its last stage (Conv4,
ResNet-12, torchvision ResNets), the frozen trunk runs once on the 8 flips and rotations
of each support image, and every phase-2 step runs only the last stage on one of them
per image, drawn with the seed: about 8 support passes of the trunk in all instead of
`finetune_steps`. `fast=false` (and other encoders) re-run the whole encoder every step
on freshly augmented images, with a small brightness and contrast jitter as well.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.data.augment import augment as augment_images
from fewshot.methods.base import FewShotHead, register_head
from fewshot.methods.common import transform_features
from fewshot.methods.linear_probe import balanced_weights, train_linear
from fewshot.models.embedding import dihedral
from fewshot.models.registry import last_stage_parameters, split_last_stage


@register_head("finetune")
class FineTune(FewShotHead):
    @property
    def feature_based(self) -> bool:
        return False  # phase 2 trains the encoder's last stage on the support images

    def __init__(self, encoder: nn.Module, steps: int = 100, lr: float = 0.01,
                 finetune_steps: int = 20, finetune_lr: float = 1e-4,
                 temperature: float = 10.0, base_mean: Tensor | None = None,
                 seed: int = 0, augment: bool = True, fast: bool = True,
                 balance: bool = True) -> None:
        super().__init__(encoder)
        self.balance = balance
        self.steps, self.lr, self.temperature = steps, lr, temperature
        self.finetune_steps, self.finetune_lr, self.augment = finetune_steps, finetune_lr, augment
        self.fast = fast
        self.seed, self.calls = seed, 0
        self.register_buffer("base_mean", torch.empty(0) if base_mean is None
                             else base_mean.detach().float().clone(), persistent=False)
        self.linear: nn.Linear | None = None
        self._initial: list[Tensor] | None = None

    def _last_stage(self) -> list[nn.Parameter]:
        params = last_stage_parameters(self.encoder)
        if self._initial is None:
            self._initial = [p.detach().clone() for p in params]
        return params

    def embed(self, images: Tensor) -> Tensor:
        return transform_features(self.encoder(images), None, self.base_mean)

    def process_support_set(self, support: Tensor, support_labels: Tensor) -> None:
        params = self._last_stage()
        assert self._initial is not None
        with torch.no_grad():  # start every episode from the pretrained encoder
            for p, p0 in zip(params, self._initial, strict=True):
                p.copy_(p0)
        self.encoder.eval()
        self.encoder.requires_grad_(False)
        with torch.no_grad():
            features = self.embed(support)
        linear = train_linear(features, support_labels, self.steps, self.lr, self.temperature,
                              balance=self.balance)
        weight = (balanced_weights(support_labels, linear.out_features).to(features.dtype)
                  if self.balance else None)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.calls)
        self.calls += 1
        linear.requires_grad_(True)
        for p in params:
            p.requires_grad_(True)
        # fused: one kernel for the whole update (about 5x faster on the CPU for a ResNet
        # stage, whose step is otherwise as costly as its backward pass)
        optimizer = torch.optim.Adam([{"params": linear.parameters(), "lr": self.lr * 0.1},
                                      {"params": params, "lr": self.finetune_lr}], fused=True)
        split = split_last_stage(self.encoder) if self.fast else None
        with torch.enable_grad():
            if split is None:
                for _ in range(self.finetune_steps):
                    images = augment_images(support, generator=generator) \
                        if self.augment else support
                    optimizer.zero_grad(set_to_none=True)
                    F.cross_entropy(linear(self.embed(images)), support_labels,
                                    weight=weight).backward()
                    optimizer.step()
            else:
                trunk, tail = split
                with torch.no_grad():  # the frozen trunk, once per flip/rotation
                    views = dihedral(support) if self.augment else support[None]
                    cached = trunk(views.flatten(0, 1)).unflatten(0, views.shape[:2])
                rows = torch.arange(len(support))
                for _ in range(self.finetune_steps):
                    view = torch.randint(len(cached), (len(support),), generator=generator)
                    optimizer.zero_grad(set_to_none=True)
                    features = transform_features(tail(cached[view, rows]), None,
                                                  self.base_mean)
                    F.cross_entropy(linear(features), support_labels,
                                    weight=weight).backward()
                    optimizer.step()
        self.encoder.requires_grad_(False)
        self.linear = linear.requires_grad_(False)

    def forward(self, query: Tensor) -> Tensor:
        """Callers predict under no_grad; explain needs the gradient to the image."""
        assert self.linear is not None, "call process_support_set first"
        return self.linear(self.embed(query))
