"""The interface every head shares (in the manner of easyfsl's FewShotClassifier).

A head wraps an encoder. `process_support_set` adapts it to a support set (labels
0..N-1, any number of shots per class), then `forward(query)` returns logits `[M, N]`.
Heads whose `feature_based` is True only ever look at encoder outputs, so evaluation
can embed every image once and run them with `encoder=nn.Identity()` on features.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.errors import UsageError


class FewShotHead(nn.Module):
    name: ClassVar[str] = ""
    feature_based: ClassVar[bool] = True
    """True when the head never needs to re-run the encoder after embedding."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def process_support_set(self, support: Tensor, support_labels: Tensor) -> None:
        raise NotImplementedError

    def forward(self, query: Tensor) -> Tensor:
        raise NotImplementedError

    def episode_loss(self, support: Tensor, support_labels: Tensor, query: Tensor,
                     query_labels: Tensor) -> tuple[Tensor, Tensor]:
        """(cross-entropy on the query, query logits) of one episode, for meta-training."""
        self.process_support_set(support, support_labels)
        logits = self(query)
        return F.cross_entropy(logits, query_labels), logits


HEADS: dict[str, Callable[..., FewShotHead]] = {}


def register_head(name: str) -> Callable[[type[FewShotHead]], type[FewShotHead]]:
    def decorate(cls: type[FewShotHead]) -> type[FewShotHead]:
        cls.name = name
        HEADS[name] = cls
        return cls

    return decorate


def build_head(name: str, encoder: nn.Module, **options: Any) -> FewShotHead:
    import fewshot.methods.builtin  # noqa: F401  (registers the built-in heads)

    if name not in HEADS:
        raise UsageError("unknown head", name, f"choose one of {sorted(HEADS)}")
    return HEADS[name](encoder, **options)
