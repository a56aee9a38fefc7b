"""Episodic meta-training: an encoder (from scratch, ImageNet or a pretrain run) and a
head (ProtoNet or the MAML family) on episodes of the base classes, validated on the
held-apart `val` classes, keeping the model that generalises best.

This module is the stage's step and options; the loop around it (checkpoints, exact
resume, validation, Ctrl-C, the run directory) is `fewshot.train.loop`. Episode `i` is a
pure function of `(seed, i)`, its augmentation too (a generator seeded from the pair), so
a resumed run reaches the same weights.

Under torchrun a step's global meta-batch is `meta_batch x world size` consecutive
episodes, rank r taking the r-th `meta_batch` of them: no episode is drawn twice, and
after the gradients' all-reduce (each rank's share weighted by its task count) every rank
holds the gradient of the global mean loss, the one a single process would compute for
the same episodes. CPU task-worker processes are off under torchrun.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fewshot.config import Config
from fewshot.data.augment import augment
from fewshot.data.episodes import EpisodeBatch, EpisodeSampler, TensorEpisodes
from fewshot.data.images import Normalize, load_split_images
from fewshot.data.tasks import Task
from fewshot.errors import UsageError
from fewshot.methods import FewShotHead, build_head, select_options
from fewshot.models import build_backbone
from fewshot.run import RunDir
from fewshot.schema import ModelMeta
from fewshot.train.distributed import SINGLE, World, episode_generator
from fewshot.train.loop import (
    LoopState,
    Objective,
    Stage,
    StepResult,
    base_prototypes,
    cache_options,
    crossed,
    make_optimizer,
    make_scheduler,
    run_stage,
)
from fewshot.train.objectives import (
    AlignmentObjective,
    UnlabeledObjectives,
    check_objectives,
    load_unlabeled,
)
from fewshot.train.task_workers import TaskWorkers, task_processes
from fewshot.train.validate import VAL_SEED_OFFSET, Validation, run_validation

PROTOTYPE_IMAGES_PER_CLASS = 1000

__all__ = ["VAL_SEED_OFFSET", "MetaTrainStage", "build_model", "meta_train"]


def head_options(config: Config, ways: int, feature_dim: int) -> dict[str, Any]:
    """The chosen head's options from the config, and the episode shape it may declare."""
    offered = select_options(config.method.head, {"ways": ways, "feature_dim": feature_dim})
    return {**config.method.head_options(), **offered}


def build_model(config: Config, image_size: int, ways: int) -> FewShotHead:
    """Encoder (with its initial weights) wrapped by the configured head."""
    encoder = build_backbone(config.model.backbone, image_size=image_size,
                             **config.model.backbone_args)
    if config.model.weights:
        from fewshot.models.weights import load_encoder_weights

        load_encoder_weights(encoder, config.model.weights)
    return build_head(config.method.head, encoder,
                      **head_options(config, ways, encoder.feature_dim))


def rank_episodes(first: int, count: int, per_rank: int, rank: int) -> range:
    """The episodes of a step (`count` from `first`) that rank `rank` draws: its own
    `per_rank` of them, in order, so no episode is drawn by two ranks."""
    return range(min(first + rank * per_rank, first + count),
                 min(first + (rank + 1) * per_rank, first + count))


def meta_batch_backward(head: FewShotHead, support: Tensor, support_labels: Tensor,
                        query: Tensor, query_labels: Tensor,
                        workers: TaskWorkers | None = None) -> tuple[Tensor, Tensor]:
    """Accumulate the meta-gradient of the mean query loss over a meta-batch into `.grad`,
    one task (or vmap chunk) at a time, so peak memory is that of one; returns the
    detached mean loss and the query logits `[B, NQ, N]`. With `workers` the tasks are
    shared among their processes."""
    if workers is not None:
        return workers.meta_backward(support, support_labels, query, query_labels)
    if hasattr(head, "meta_loss"):
        return head.meta_loss(support, support_labels, query, query_labels, backward=True)
    batch = support.shape[0]
    losses, logits = [], []
    for t in range(batch):
        loss, task_logits = head.episode_loss(support[t], support_labels[t], query[t],
                                              query_labels[t])
        (loss / batch).backward()
        losses.append(loss.detach())
        logits.append(task_logits.detach())
    return torch.stack(losses).mean(), torch.stack(logits)


class MetaTrainStage(Stage):
    """One step: a meta-batch of episodes of the base classes."""

    kind, unit = "meta-train", "episode"

    def __init__(self, config: Config, task: Task, device: torch.device, quiet: bool,
                 world: World = SINGLE) -> None:
        t = config.train
        self.config, self.task, self.device, self.t = config, task, device, t
        self.world = world
        if t.objective != "supervised":
            raise UsageError("meta-train learns from unlabeled images by alignment only",
                             "train.objective", "set train.align=mmd or dann, or pretrain "
                             "with train.objective=ssl/both and meta-train from that run")
        self.image_size = config.data.image_size or task.image_size
        cache = cache_options(config, quiet)
        check_objectives(config, world, uses="set train.align=mmd or dann")
        unlabeled = load_unlabeled(config, task, self.image_size, cache)
        self.base_images, self.base = load_split_images(task, "base", self.image_size, **cache)
        self.val = None
        if task.classes("val"):
            self.val = load_split_images(task, "val", self.image_size, **cache)
        # channels-last convolutions: faster on CUDA and, through oneDNN, on the CPU too
        # (MAML Conv4 at 84 px: about 1.1-1.2x; experiments/bench_maml.py).
        self.model = self.head = build_model(config, self.image_size, t.ways).to(
            device, memory_format=torch.channels_last)
        if device.type == "cuda":
            self.base_images = self.base_images.to(device)  # gathered on the GPU
        self.normalize = Normalize()
        self.sampler = EpisodeSampler(self.base.labels, t.ways, t.shots, t.queries,
                                      episodes=t.episodes, seed=t.seed,
                                      groups=self.base.groups,
                                      class_names=self.base.classes)
        self.total, self.units_per_step = t.episodes, t.meta_batch * world.size
        self.alignment: UnlabeledObjectives | None = None
        if unlabeled is not None:  # trained with the head; saved in the checkpoint only
            self.alignment = UnlabeledObjectives(
                self.head.encoder, unlabeled, objective="supervised", ssl=t.ssl,
                ssl_weight=t.ssl_weight, align=t.align, align_weight=t.align_weight,
                batch_size=t.ways * (t.shots + t.queries), seed=t.seed).to(device)
        extra = list(self.alignment.parameters()) if self.alignment is not None else []
        self.optimizer = make_optimizer([*self.head.parameters(), *extra], config)
        self.scheduler = make_scheduler(self.optimizer, config,
                                        -(-t.episodes // self.units_per_step))
        self.share = 1.0
        """This rank's tasks over the step's global count: the weight of its gradient."""
        self.amp = t.amp and device.type == "cuda"
        self.workers: TaskWorkers | None = None
        self.loss_smooth: float | None = None
        self.acc_smooth: float | None = None

    # ---- the step ---------------------------------------------------------------------
    def batches(self, start: int) -> Generator[tuple[int, int, EpisodeBatch | None], None,
                                                None]:
        """(first episode of the step, episodes in the step on all ranks, this rank's
        part of them, or None when the step's tail leaves this rank none)."""
        processes = 1 if self.world.distributed else task_processes(
            self.head, self.device, self.t.meta_batch, self.t.task_processes)
        workers = TaskWorkers(self.head, processes) if processes > 1 else None
        episodes = TensorEpisodes(self.base_images, self.sampler, transform=self.normalize)
        per_rank, rank = self.t.meta_batch, self.world.rank
        with workers or contextlib.nullcontext():
            self.workers = workers
            try:
                for first in range(start, self.t.episodes, self.units_per_step):
                    count = min(self.units_per_step, self.t.episodes - first)
                    mine = rank_episodes(first, count, per_rank, rank)
                    yield first, count, episodes.batch(mine) if len(mine) else None
            finally:
                self.workers = None

    def step(self, item: tuple[int, int, EpisodeBatch | None]) -> StepResult:
        first, count, batch = item
        if batch is None:  # nothing of this step falls to this rank: it adds no gradient
            self.share = 0.0
            totals = self.world.sum([0.0, 0.0, 0.0])
            loss_value, acc = totals[0] / count, totals[1] / max(totals[2], 1)
            return self.step_result(first + count, loss_value, acc, {})
        batch = batch.to(self.device)
        support, query = batch.support, batch.query
        if self.t.augment:  # seeded per episode: the same on any rank and world size
            generators = [episode_generator(self.t.seed, ep.index) for ep in batch.episodes]
            support = torch.stack([augment(x, generator=g) for x, g in zip(support, generators,
                                                                            strict=True)])
            query = torch.stack([augment(x, generator=g) for x, g in zip(query, generators,
                                                                          strict=True)])
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss, logits = meta_batch_backward(self.head, support, batch.support_labels, query,
                                               batch.query_labels, self.workers)
        local = len(batch.episodes)
        self.share = local / count
        correct = float((logits.argmax(-1) == batch.query_labels).float().sum())
        totals = self.world.sum([loss.item() * local, correct, float(logits.shape[:-1].numel())])
        return self.step_result(first + count, totals[0] / count, totals[1] / totals[2],
                                self.inner_metrics())

    def objectives(self) -> list:
        if self.alignment is None:
            return []
        return [AlignmentObjective(self.alignment, self.base_images, self.normalize,
                                   self.device, self.total)]

    def state_dict(self) -> dict[str, Any]:
        return {} if self.alignment is None else {"alignment": self.alignment.state_dict()}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        if self.alignment is not None and "alignment" in saved:
            self.alignment.load_state_dict(saved["alignment"])

    def optimizer_step(self) -> None:
        """The global mean gradient on every rank (a plain step on one), then the update."""
        self.world.reduce_gradients(self.head, self.share)
        self.optimizer.step()
        self.world.broadcast_buffers(self.head)

    def inner_metrics(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        inner = getattr(self.head, "support_losses", None)
        if inner is not None:  # MAML family: the inner loop's effect on the support
            metrics["train/support_loss_before"] = inner[0].item()
            metrics["train/support_loss_after"] = inner[1].item()
        if hasattr(self.head, "inner_lrs"):  # Meta-SGD's learned inner learning rates
            lrs = torch.cat([p.detach().flatten() for p in self.head.inner_lrs.values()])
            metrics["train/inner_lr_mean"] = lrs.mean().item()
        if self.device.type == "cuda":
            metrics["train/gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
        return metrics

    def step_result(self, position: int, value: float, acc: float,
                    extra: dict[str, float]) -> StepResult:
        self.loss_smooth = value if self.loss_smooth is None else \
            0.95 * self.loss_smooth + 0.05 * value
        self.acc_smooth = acc if self.acc_smooth is None else 0.95 * self.acc_smooth + 0.05 * acc
        metrics = {"train/loss": value, "train/loss_smooth": self.loss_smooth,
                   "train/acc": acc, "train/acc_smooth": self.acc_smooth, **extra}
        return StepResult(position, metrics, f"loss {self.loss_smooth:.3f} acc {acc:.2f}")

    def rates(self, units: int, seconds: float) -> dict[str, float]:
        rate = units / seconds
        return {"train/episodes_per_s": rate,
                "train/images_per_s": rate * self.t.ways * (self.t.shots + self.t.queries)}

    # ---- validation and the run's model -----------------------------------------------
    def has_validation(self) -> bool:
        return self.val is not None

    def validate(self) -> Validation:
        images, data = self.val
        t = self.t
        return run_validation(self.head, images, data, self.normalize, self.device, t.ways,
                              t.shots, t.queries, t.val_episodes, seed=t.seed + VAL_SEED_OFFSET)

    def validate_at_start(self) -> bool:
        # A pretrained start is a candidate too: if meta-training never beats it on the
        # val classes, the run keeps the encoder it started from.
        return self.has_validation() and bool(self.config.model.weights)

    def validation_due(self, before: int, after: int) -> bool:
        return self.has_validation() and crossed(before, after, self.t.val_every)

    def checkpoint_due(self, before: int, after: int) -> bool:
        return crossed(before, after, self.t.checkpoint_every)

    def model_meta(self, state: LoopState) -> ModelMeta:
        config, task, head = self.config, self.task, self.head
        return ModelMeta(
            kind="meta-train", task=task.name, backbone=config.model.backbone,
            backbone_args=config.model.backbone_args, embedding=config.model.embedding,
            image_size=self.image_size,
            normalization=self.normalize.to_dict(), feature_dim=head.encoder.feature_dim,
            head=config.method.head,
            head_options=head_options(config, self.t.ways, head.encoder.feature_dim),
            classes={split: task.classes(split) for split in ("base", "val", "novel")},
            metrics={**state.val_record("episode", self.t.keep),
                     "episodes_trained": state.position, "stopped_early": state.stopped_early})

    def write_prototypes(self, run: RunDir) -> None:
        run.save_prototypes(base_prototypes(self.head.encoder, self.base_images, self.base,
                                            self.normalize, self.device,
                                            PROTOTYPE_IMAGES_PER_CLASS,
                                            self.config.model.embedding))


def meta_train(config: Config, *, out: str | Path | None = None, resume: RunDir | None = None,
               data_root: str | None = None, config_dir: Path | None = None,
               use_wandb: bool | None = None, log_model: bool = False,
               objectives: list[Objective] | None = None, quiet: bool = False) -> RunDir:
    """Run (or resume) meta-training; returns the run directory. Under torchrun each
    process is a rank of one run (fewshot.train.distributed)."""
    return run_stage(config, "meta-train",
                     lambda task, device, quiet, world: MetaTrainStage(config, task, device,
                                                                       quiet, world),
                     out=out, resume=resume, data_root=data_root, config_dir=config_dir,
                     use_wandb=use_wandb, log_model=log_model, objectives=objectives,
                     quiet=quiet)
