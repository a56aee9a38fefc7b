"""Linear probe: a linear classifier on frozen features, trained on the support set.

Transfer learning at test time as the source articles describe it. Features are centred
on the base mean (when known) and L2-normalised, as for SimpleShot (with its `power`
option); the weights start
at the normalised prototypes, so step 0 is cosine nearest centroid, and a bounded number
of full-batch Adam steps follow. Full-batch steps from a fixed start use no randomness,
so a probe is deterministic (the seed is accepted for a uniform interface).

The loss is class-balanced: each class weighs `n / (N * n_c)` (scikit-learn's
"balanced"), so a class with 2 support images counts as much as one with 12; with equal
shots every weight is 1 and the loss is the plain mean. `balance=false` drops the
weights (every image counts once).

`mmd_weight` (with `--unlabeled`) adds DAN's classifier-layer term (Long et al. 2015): the
multi-kernel MMD between the probe's logits on the support set and on unlabeled images of
the new domain (a seeded sample of `mmd_images` of them, the same for every fit), so the
decision boundaries are drawn where the domain's images are, not only where the few
labeled ones are. The unlabeled images' features come from the alignment step
(fewshot.alignment), after the batch-norm statistics and the centring mean are re-estimated.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.errors import UsageError
from fewshot.methods.base import FewShotHead, register_head
from fewshot.methods.common import centring_mean, class_means, mmd, transform_features

STEPS, LR, TEMPERATURE = 100, 0.01, 10.0
"""The probe's defaults (chosen on val), shared with heads that fit it inside."""


def balanced_weights(labels: Tensor, ways: int | None = None) -> Tensor:
    """Per-class loss weights `n / (N * n_c)`: all 1 with equal shots."""
    ways = int(labels.max()) + 1 if ways is None else ways
    counts = torch.bincount(labels, minlength=ways).clamp_min(1).float()
    return (len(labels) / (ways * counts)).to(labels.device)


def train_linear(features: Tensor, labels: Tensor, steps: int, lr: float,
                 temperature: float, weight_decay: float = 5e-4,
                 balance: bool = True, query: Tensor | None = None,
                 query_loss: Callable[[Tensor], Tensor] | None = None,
                 align: Tensor | None = None, align_weight: float = 0.0) -> nn.Linear:
    """A linear layer initialised from prototypes and fitted with `steps` Adam steps;
    `query_loss(query probabilities)` is added to the support loss when given (a
    transductive probe), and `align_weight` times the MMD between the logits of the
    support and of the `align` features when those are given."""
    ways = int(labels.max()) + 1
    linear = nn.Linear(features.shape[-1], ways).to(features.device)
    with torch.no_grad():
        linear.weight.copy_(temperature * F.normalize(class_means(features, labels, ways), dim=-1))
        linear.bias.zero_()
    optimizer = torch.optim.Adam(linear.parameters(), lr=lr, weight_decay=weight_decay)
    weight = balanced_weights(labels, ways).to(features.dtype) if balance else None
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(linear(features), labels, weight=weight)
            if query is not None and query_loss is not None:
                loss = loss + query_loss(linear(query).softmax(-1))
            if align is not None and align_weight:
                loss = loss + align_weight * mmd(linear(features), linear(align))
            loss.backward()
            optimizer.step()
    return linear.requires_grad_(False)


@register_head("linear-probe")
class LinearProbe(FewShotHead):
    def __init__(self, encoder: nn.Module, steps: int = STEPS, lr: float = LR,
                 temperature: float = TEMPERATURE, base_mean: Tensor | None = None,
                 seed: int = 0, power: float | None = None,
                 base_features: Tensor | None = None, balance: bool = True,
                 mmd_weight: float = 0.0, mmd_images: int = 256) -> None:
        super().__init__(encoder)
        self.steps, self.lr, self.temperature, self.seed = steps, lr, temperature, seed
        self.balance = balance
        if mmd_weight < 0 or mmd_images < 2:
            raise UsageError(f"linear-probe: mmd_weight={mmd_weight}, mmd_images={mmd_images}",
                             "--head", "use mmd_weight >= 0 and mmd_images >= 2")
        self.mmd_weight, self.mmd_images = float(mmd_weight), int(mmd_images)
        self.unlabeled_features: Tensor | None = None
        """Encoder features of unlabeled images of the new domain (set by the alignment
        step); not saved: an adapted probe keeps only its fitted layer."""
        self.power = power
        self.register_buffer("base_mean", centring_mean(power, base_mean, base_features),
                             persistent=False)
        self.register_buffer("whitening", torch.empty(0), persistent=False)
        """Set by `--unlabeled --whiten` (fewshot.alignment); empty: not whitened."""
        self.linear: nn.Linear | None = None

    def embed(self, images: Tensor) -> Tensor:
        return transform_features(self.encoder(images), self.power, self.base_mean, self.whitening)

    def process_support_set(self, support: Tensor, support_labels: Tensor) -> None:
        with torch.no_grad():  # the encoder stays frozen: no graph through it
            features = self.embed(support)
        self.linear = train_linear(features, support_labels, self.steps, self.lr,
                                   self.temperature, balance=self.balance,
                                   align=self.align_features(), align_weight=self.mmd_weight)

    @property
    def needs_unlabeled(self) -> bool:
        return self.mmd_weight > 0

    def missing_unlabeled(self, option: str) -> UsageError:
        return UsageError("linear-probe:mmd_weight aligns to unlabeled images, and none were "
                          "given", option, "pass --unlabeled DIR, or drop mmd_weight")

    def use_unlabeled(self, features: Tensor) -> dict[str, int]:
        """Keep the unlabeled images' encoder features; what to record of them."""
        self.unlabeled_features = features
        return {"mmd_images": min(len(features), self.mmd_images)} if self.mmd_weight else {}

    def align_features(self) -> Tensor | None:
        """The seeded sample of transformed unlabeled features the MMD term uses."""
        if not self.mmd_weight:
            return None
        if self.unlabeled_features is None:
            raise self.missing_unlabeled("--unlabeled")
        features = self.unlabeled_features
        if len(features) > self.mmd_images:
            generator = torch.Generator().manual_seed(self.seed)
            features = features[torch.randperm(len(features), generator=generator)
                                [:self.mmd_images].to(features.device)]
        return transform_features(features, self.power, self.base_mean, self.whitening)

    def forward(self, query: Tensor) -> Tensor:
        assert self.linear is not None, "call process_support_set first"
        return self.linear(self.embed(query))
