"""Siamese verification (Koch et al., 2015): a learned score of whether two images show the
same finding, and a few-shot classifier built on it.

A pair's score is a logit `bias - w . (a - b)^2` on the squared difference of the two
L2-normalised features (not centred: training saw no base mean), one non-negative weight per
feature dimension. It starts at `w = scale` (all equal), where the score is a scaled
cosine similarity, `scale * (2 cos - 2) + bias`, so a pretrained encoder is a sensible
verifier before any pair training.

Meta-training (`fewshot meta-train` with `method.head: siamese`) scores every support x
query pair of an episode with binary cross-entropy, positives weighted `N - 1` so that
same and different pairs count alike; pairs never cross the group key because episodes
do not. As a few-shot classifier, a query's logit for a class is its mean pair logit
against that class's support images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.errors import UsageError
from fewshot.methods.base import FewShotHead, register_head


@register_head("siamese")
class Siamese(FewShotHead):
    def __init__(self, encoder: nn.Module, feature_dim: int | None = None,
                 scale: float = 10.0) -> None:
        super().__init__(encoder)
        feature_dim = feature_dim or getattr(encoder, "feature_dim", None)
        if not feature_dim:
            raise UsageError("siamese needs the feature size", "feature_dim",
                             "pass feature_dim or give the encoder a feature_dim attribute")
        # softplus(raw) = scale: weights stay non-negative while they train
        raw = torch.full((int(feature_dim),), float(scale))
        self.raw_weight = nn.Parameter(raw + torch.log(-torch.expm1(-raw)))
        self.bias = nn.Parameter(torch.tensor(float(scale)))
        self.register_buffer("support_features", torch.empty(0), persistent=False)
        self.register_buffer("class_average", torch.empty(0), persistent=False)
        """`[S, N]`: averages pair logits over each class's support images (a constant of
        an exported graph: no label arithmetic at prediction time)."""

    def embed(self, images: Tensor) -> Tensor:
        return F.normalize(self.encoder(images), dim=-1)

    def logit(self, squared_difference: Tensor) -> Tensor:
        """Same-finding logit of pairs from their features' squared difference `[..., D]`."""
        return self.bias - squared_difference @ F.softplus(self.raw_weight)

    def pair_logits(self, a: Tensor, b: Tensor) -> Tensor:
        """`[len(a), len(b)]` same-finding logits of embedded images."""
        return self.logit((a[:, None, :] - b[None, :, :]).pow(2))

    def same_probability(self, image_a: Tensor, image_b: Tensor) -> Tensor:
        """Probability that each image of `image_a` shows the finding of its `image_b`."""
        return torch.sigmoid(self.logit((self.embed(image_a) - self.embed(image_b)).pow(2)))

    def process_support_set(self, support: Tensor, support_labels: Tensor) -> None:
        self.support_features = self.embed(support)
        hot = F.one_hot(support_labels, int(support_labels.max()) + 1).to(
            self.support_features.dtype)
        self.class_average = hot / hot.sum(0).clamp_min(1)

    def forward(self, query: Tensor) -> Tensor:
        """Mean pair logit against each class's support images: `[M, N]`."""
        return self.pair_logits(self.embed(query), self.support_features) @ self.class_average

    def episode_loss(self, support: Tensor, support_labels: Tensor, query: Tensor,
                     query_labels: Tensor) -> tuple[Tensor, Tensor]:
        """(pair binary cross-entropy, query class logits) of one episode."""
        self.process_support_set(support, support_labels)
        pairs = self.pair_logits(self.embed(query), self.support_features)
        same = (query_labels[:, None] == support_labels[None, :]).to(pairs.dtype)
        ways = self.class_average.shape[1]
        loss = F.binary_cross_entropy_with_logits(
            pairs, same, pos_weight=torch.tensor(float(max(ways - 1, 1)), device=pairs.device))
        return loss, pairs.detach() @ self.class_average
