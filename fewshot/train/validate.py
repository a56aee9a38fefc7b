"""Validation during training: seeded episodes of the held-apart classes, scored with
the evaluation protocol's per-episode metrics, and their W&B panels."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from fewshot.data.episodes import EpisodeSampler, TensorEpisodes
from fewshot.data.tasks import SplitData
from fewshot.evaluate import episode_metrics, mean_ci
from fewshot.features import embed
from fewshot.methods import FewShotHead
from fewshot.tracking import Tracker

SAMPLE_IMAGES = 40
"""At most this many images of the sample episode go into the W&B table."""
VAL_SEED_OFFSET = 1_000_003
"""Validation episodes come from their own stream, apart from the training episodes."""


@dataclass
class Validation:
    accuracy: np.ndarray
    macro_f1: np.ndarray
    class_names: list[str]
    confusion: np.ndarray
    """Pooled over episodes: rows true class, columns predicted class (split class ids)."""
    sample: dict[str, object] = field(default_factory=dict)
    images: Tensor | None = None
    """The split's images, which `sample` indexes."""
    data: SplitData | None = None

    @property
    def acc_ci(self) -> tuple[float, float]:
        return mean_ci(self.accuracy)

    def sensitivity(self) -> dict[str, float]:
        totals = self.confusion.sum(1)
        return {name: float(self.confusion[i, i] / totals[i])
                for i, name in enumerate(self.class_names) if totals[i]}


def run_validation(head: FewShotHead, images: Tensor, data: SplitData, transform,
                   device: torch.device, ways: int, shots: int, queries: int, episodes: int,
                   seed: int) -> Validation:
    """Score a head on `episodes` seeded episodes of a split (features embedded once when
    the head only needs features; the encoder in eval mode either way)."""
    sampler = EpisodeSampler(data.labels, min(ways, len(data.classes)), shots, queries,
                             episodes=episodes, seed=seed, groups=data.groups,
                             class_names=data.classes, allow_fewer_queries=True)
    n = sampler.ways
    accs, f1s = np.empty(episodes), np.empty(episodes)
    confusion = np.zeros((len(data.classes), len(data.classes)), dtype=np.int64)
    sample: dict[str, object] = {}
    was_training = head.training
    head.eval()
    if head.feature_based:
        source = embed(head.encoder, images, transform, device).to(device)
        stream, context = TensorEpisodes(source, sampler), head.on_features()
    else:
        stream = TensorEpisodes(images, sampler, transform=transform)
        context = contextlib.nullcontext()
    try:
        with context:
            for i, batch in enumerate(stream):
                batch = batch.to(device)
                with torch.set_grad_enabled(not head.feature_based):  # MAML inner loops
                    head.process_support_set(batch.support[0], batch.support_labels[0])
                with torch.no_grad():
                    logits = head(batch.query[0])
                metrics = episode_metrics(logits, batch.query_labels[0], n)
                accs[i], f1s[i] = metrics["accuracy"], metrics["macro_f1"]
                classes = batch.episodes[0].classes
                true = classes[batch.query_labels[0].cpu().numpy()]
                pred = classes[logits.argmax(-1).cpu().numpy()]
                np.add.at(confusion, (true, pred), 1)
                if i == 0:
                    ep = batch.episodes[0]
                    sample = {"support": ep.support, "query": ep.query, "classes": classes,
                              "predicted": pred}
    finally:
        head.train(was_training)
    return Validation(accs, f1s, list(data.classes), confusion, sample, images, data)


def log_validation(tracker: Tracker, result: Validation, step: int,
                   extra: dict[str, float] | None = None) -> None:
    """Scalars (and `extra`) to metrics.jsonl and W&B; per-class sensitivity as a table; the
    confusion matrix and one sample episode (images with true and predicted labels) to W&B."""
    acc, ci = result.acc_ci
    f1, f1_ci = mean_ci(result.macro_f1)
    tracker.log({"val/acc": acc, "val/acc_ci95": ci, "val/macro_f1": f1,
                 "val/macro_f1_ci95": f1_ci, **(extra or {})}, step=step)
    tracker.log_table("val/sensitivity", ["class", "sensitivity"],
                      [[k, v] for k, v in result.sensitivity().items()], step=step)
    if tracker.wandb_run is None:
        return
    import wandb

    names = result.class_names
    true, pred = np.nonzero(result.confusion)
    rows = [[names[t], names[p], int(result.confusion[t, p])] for t, p in zip(true, pred,
                                                                             strict=True)]
    table = wandb.Table(columns=["true", "predicted", "count"], data=rows)
    payload = {"val/confusion": table}
    sample, images, data = result.sample, result.images, result.data
    if sample and images is not None and data is not None:
        picked = [("support", i, data.labels[i], None) for i in sample["support"]]
        picked += [("query", i, data.labels[i], p) for i, p in zip(sample["query"],
                                                                   sample["predicted"],
                                                                   strict=True)]
        rows = []
        for role, index, label, predicted in picked[:SAMPLE_IMAGES]:
            picture = images[int(index)].permute(1, 2, 0).cpu().numpy()
            rows.append([role, wandb.Image(picture), names[label],
                         "" if predicted is None else names[predicted]])
        payload["val/sample_episode"] = wandb.Table(
            columns=["set", "image", "true", "predicted"], data=rows)
    tracker.log_wandb(payload, step=step)
