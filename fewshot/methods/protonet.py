"""Prototypical networks (Snell et al., 2017): the class prototype is the mean support
embedding; logits are negative squared Euclidean distances, or cosine similarities
scaled by a learned temperature."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.errors import UsageError
from fewshot.methods.base import FewShotHead, register_head
from fewshot.methods.common import class_means, squared_distances


@register_head("protonet")
class ProtoNet(FewShotHead):
    def __init__(self, encoder: nn.Module, distance: str = "euclidean",
                 temperature: float = 10.0) -> None:
        super().__init__(encoder)
        if distance not in {"euclidean", "cosine"}:
            raise UsageError("unknown distance", distance, "use euclidean or cosine")
        self.distance = distance
        # Learned only for cosine, where similarities in [-1, 1] need a scale to train.
        self.log_temperature = nn.Parameter(torch.tensor(float(temperature)).log(),
                                            requires_grad=distance == "cosine")
        self.register_buffer("prototypes", torch.empty(0), persistent=False)

    def process_support_set(self, support: Tensor, support_labels: Tensor) -> None:
        self.prototypes = class_means(self.encoder(support), support_labels)

    def forward(self, query: Tensor) -> Tensor:
        features = self.encoder(query)
        if self.distance == "cosine":
            cosine = F.normalize(features, dim=-1) @ F.normalize(self.prototypes, dim=-1).T
            return self.log_temperature.exp() * cosine
        return -squared_distances(features, self.prototypes)
