"""`fewshot adapt --cv`: choose the test-time head, and its steps and learning rate, by
k-fold cross-validation over the support set.

Every candidate of a small grid is fitted on all folds but one and scores the one left
out, with the fold utility calibration uses (`fewshot.calibration`: stratified, at most 5
folds, at most the smallest class's count); the candidate with the highest out-of-fold
accuracy wins, ties going to the earlier (simpler) candidate. The held-out images of the
folder play no part: they score the chosen head afterwards, as for any adapt.

The grid (`GRID`): SimpleShot (nearest centroid, no steps), the linear probe at 50, 100
and 300 Adam steps with learning rate 0.01 and at 100 steps with 0.1, and finetune
(freeze-then-unfreeze) at its defaults, plus the head the model was trained with when it
is none of these (e.g. a meta-trained ProtoNet or MAML). Feature-based candidates refit on
features embedded once; finetune and the MAML family re-run per fold, which is what
makes `--cv` cost seconds more than a plain adapt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

GRID: tuple[str, ...] = (
    "simpleshot",
    "linear-probe:steps=50,lr=0.01",
    "linear-probe:steps=100,lr=0.01",
    "linear-probe:steps=300,lr=0.01",
    "linear-probe:steps=100,lr=0.1",
    "finetune",
)


def candidates(trained_head: str | None) -> list[str]:
    """The grid, with the model's own trained head (at its trained options) appended when
    the grid lacks it."""
    names = {spec.partition(":")[0] for spec in GRID}
    extra = [trained_head] if trained_head and trained_head not in names else []
    return list(GRID) + extra


def choose(specs: list[str], out_of_fold: Callable[[str], Tensor | None], labels: Tensor,
           folds: int) -> tuple[dict[str, Any], Tensor]:
    """(the record adapted.json keeps as `cv`, the winner's out-of-fold logits).
    `out_of_fold(spec)` returns None for a candidate that does not apply (e.g. finetune
    with --keep-base); it is left out of the record."""
    scored, logits_of = [], {}
    for spec in specs:
        logits = out_of_fold(spec)
        if logits is None:
            continue
        logits_of[spec] = logits
        accuracy = float((logits.argmax(1) == labels.cpu()).double().mean())
        scored.append({"method": spec, "accuracy": accuracy})
    best = max(range(len(scored)), key=lambda i: (scored[i]["accuracy"], -i))
    chosen = scored[best]["method"]
    record = {"chosen": chosen, "accuracy": scored[best]["accuracy"], "folds": folds,
              "images": len(labels), "grid": scored}
    return record, logits_of[chosen]

