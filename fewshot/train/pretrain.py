"""Supervised pretraining on a task's base classes, the first stage of meta-transfer.

Cross-entropy with label smoothing over all base classes, augmentation that keeps size
cues (flips, 90-degree rotations, mild colour jitter; no rescaling), a cosine schedule,
AMP and channels_last on CUDA. After each epoch the encoder is scored by 5-way 5-shot
nearest-centroid accuracy on the `val` classes and the best one is kept. The order of
images and every augmentation are functions of (seed, epoch, step), and the checkpoint
stores the next (epoch, step), so a resumed run continues where it stopped.

The run directory's model is the encoder with a SimpleShot head (nearest centroid on
features centred on the base mean from `prototypes.safetensors`); the base-class
linear layer lives only in the checkpoint, for resuming.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.config import Config
from fewshot.data.augment import augment
from fewshot.data.episodes import EpisodeSampler
from fewshot.data.images import IMAGENET_MEAN, IMAGENET_STD, Normalize, load_split_images
from fewshot.data.tasks import SplitData, Task, load_task
from fewshot.methods.common import class_means
from fewshot.models import build_backbone
from fewshot.models.weights import load_encoder_weights
from fewshot.run import RunDir, restore_training, rng_state
from fewshot.tracking import PlainProgress, Tracker, console, make_progress
from fewshot.train.device import StopFlag, pick_device
from fewshot.train.images import embed, subsample
from fewshot.train.meta_train import (
    Interrupted,
    cache_options,
    make_optimizer,
    make_scheduler,
    write_prototypes,
)

VAL_PER_CLASS = 30
"""Validation images embedded per class after each epoch (episodes are drawn from them)."""
PROTOTYPES_PER_CLASS = 40
"""Base images per class averaged into prototypes.safetensors (one pass, bounded on CPU)."""


class Classifier(nn.Module):
    """Encoder + linear layer over the base classes (`encoder.*`, `classifier.*`)."""

    def __init__(self, encoder: nn.Module, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.feature_dim, classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.encoder(images))


@dataclass
class PretrainState:
    epoch: int = 0
    """The epoch in progress (0-based)."""
    step: int = 0
    """The next step within that epoch."""
    best_acc: float = -math.inf
    best_epoch: int = -1
    history: list[dict[str, float]] = field(default_factory=list)


def nearest_centroid_accuracy(features: Tensor, labels: np.ndarray, groups: np.ndarray | None,
                              ways: int, shots: int, queries: int, episodes: int,
                              seed: int) -> tuple[float, float]:
    """Mean and 95% CI of cosine nearest-centroid accuracy over seeded episodes."""
    from fewshot.evaluate import mean_ci

    sampler = EpisodeSampler(labels, ways=min(ways, len(np.unique(labels))), shots=shots,
                             queries=queries, episodes=episodes, seed=seed, groups=groups,
                             allow_fewer_queries=True)
    features = F.normalize(features, dim=-1)
    accs = np.empty(episodes)
    for index in range(episodes):
        ep = sampler.episode(index)
        n = len(ep.classes)
        support_labels = torch.arange(n).repeat_interleave(len(ep.support) // n)
        query_labels = torch.arange(n).repeat_interleave(len(ep.query) // n)
        centroids = F.normalize(class_means(features[ep.support], support_labels, n), dim=-1)
        predictions = (features[ep.query] @ centroids.T).argmax(1)
        accs[index] = (predictions == query_labels).float().mean().item()
    return mean_ci(accs)


def model_meta(config: Config, task: Task, image_size: int, encoder: nn.Module,
               state: PretrainState, epochs_done: int, stopped_early: bool = False
               ) -> dict[str, Any]:
    """model.json: everything needed to rebuild the model without the config."""
    return {
        "kind": "pretrain",
        "task": task.name,
        "backbone": config.model.backbone,
        "backbone_args": config.model.backbone_args,
        "image_size": image_size,
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "feature_dim": int(encoder.feature_dim),
        "head": "simpleshot",
        "head_options": {},
        "classes": {split: task.classes(split) for split in ("base", "val", "novel")},
        "metrics": {"val/acc": state.best_acc if state.best_epoch >= 0 else None,
                    "best_epoch": state.best_epoch, "epochs_trained": epochs_done,
                    "stopped_early": stopped_early},
    }


def epoch_order(seed: int, epoch: int, size: int, limit: int | None) -> np.ndarray:
    """The images of an epoch: a permutation seeded by (seed, epoch), cut to `limit`."""
    order = np.random.default_rng([seed, epoch, 7]).permutation(size)
    return order[:limit] if limit else order


def pretrain(config: Config, *, out: str | Path | None = None, resume: RunDir | None = None,
             data_root: str | None = None, config_dir: Path | None = None,
             use_wandb: bool | None = None, log_model: bool = False,
             quiet: bool = False) -> RunDir:
    """Run (or resume) supervised pretraining; returns the run directory."""
    t = config.train
    device = pick_device(t.device)
    torch.manual_seed(t.seed)
    task = load_task(config.data.task, data_root or config.data.root, relative_to=config_dir)
    config.data.task = str(task.source.resolve())  # config.yaml must resolve from anywhere
    image_size = config.data.image_size or task.image_size
    images, base = load_split_images(task, "base", image_size, **cache_options(config, quiet))
    val = load_val(task, image_size, t.seed, cache_options(config, quiet))
    labels = torch.from_numpy(base.labels)

    encoder = build_backbone(config.model.backbone, image_size=image_size,
                             **config.model.backbone_args)
    if config.model.weights and resume is None:
        load_encoder_weights(encoder, config.model.weights, config.model.backbone, quiet)
    model = Classifier(encoder, len(base.classes)).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        images, labels = images.to(device), labels.to(device)
    normalize = Normalize()

    per_epoch = min(t.epoch_size or len(images), len(images))
    steps_per_epoch = math.ceil(per_epoch / t.batch_size)
    optimizer = make_optimizer(model.parameters(), config)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch * t.epochs)
    amp = t.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    state = PretrainState()
    if resume is not None:
        run = resume
        saved = restore_training(run, model, optimizer, scheduler)
        if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
            # resumed with more epochs: stretch the remaining decay (no restart)
            scheduler.T_max = max(scheduler.T_max, steps_per_epoch * t.epochs)
        scaler.load_state_dict(saved["scaler"])
        state = PretrainState(**saved["train"])
    else:
        run = RunDir.create(config.name or "pretrain", out)
        run.write_config(config)

    wandb_on = config.tracking.wandb if use_wandb is None else use_wandb
    tracker = Tracker(run.path, job_type="pretrain", config=config.to_dict(), use_wandb=wandb_on,
                      project=config.tracking.project, entity=config.tracking.entity,
                      name=config.tracking.run_name or run.path.name, quiet=quiet)

    def checkpoint() -> None:
        run.save_checkpoint(model.state_dict(), {
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": rng_state(), "train": asdict(state),
        })

    def encoder_weights() -> dict[str, Tensor]:
        return {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}

    def end_of_epoch(epoch: int) -> None:
        metrics: dict[str, float] = {"epoch": epoch + 1}
        improved = val is None
        if val is not None:
            features = embed(model.encoder, val[0], normalize, device)
            acc, ci = nearest_centroid_accuracy(features, val[1], val[2], t.ways, t.shots,
                                                t.queries, t.val_episodes, t.seed + 1_000_003)
            improved = acc > state.best_acc
            metrics.update({"val/acc": acc, "val/acc_ci95": ci})
            state.history.append({"epoch": epoch + 1, "acc": acc, "ci": ci})
            if not quiet:
                val_ways = min(t.ways, len(np.unique(val[1])))
                console.print(f"epoch {epoch + 1}/{t.epochs}: val {val_ways}-way {t.shots}-shot "
                              "nearest "
                              f"centroid {100 * acc:.2f} ± {100 * ci:.2f}%"
                              f"{' (best)' if improved else ''}")
        if improved:
            state.best_acc = metrics.get("val/acc", state.best_acc)
            state.best_epoch = epoch + 1
            run.save_model(encoder_weights(),
                           model_meta(config, task, image_size, model.encoder, state, epoch + 1))
        metrics["val/best_acc"] = state.best_acc if val is not None else float("nan")
        tracker.log(metrics, step=(epoch + 1) * steps_per_epoch)

    def stale() -> bool:
        """`train.patience` epochs without a better val score: stop (the best is kept)."""
        return val is not None and state.best_epoch >= 0 \
            and state.epoch - state.best_epoch >= t.patience

    progress = make_progress(quiet)
    total = steps_per_epoch * t.epochs
    plain = PlainProgress("pretrain", total, quiet=quiet or not progress.disable)
    started, done_at_start = time.monotonic(), state.epoch * steps_per_epoch + state.step
    smoothed: float | None = None
    model.train()
    with StopFlag() as stop, progress:
        bar = progress.add_task("pretrain", total=total, completed=done_at_start, status="")
        while state.epoch < t.epochs and not stale():
            order = torch.from_numpy(epoch_order(t.seed, state.epoch, len(images), t.epoch_size))
            while state.step < steps_per_epoch:
                index = order[state.step * t.batch_size:(state.step + 1) * t.batch_size]
                index = index.to(images.device)
                generator = torch.Generator().manual_seed(
                    int(np.random.default_rng([t.seed, state.epoch, state.step]).integers(2**62)))
                batch = normalize(images[index])
                if t.augment:
                    batch = augment(batch, generator=generator)
                if device.type == "cuda":
                    batch = batch.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    loss = F.cross_entropy(model(batch), labels[index],
                                           label_smoothing=t.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                state.step += 1
                done = state.epoch * steps_per_epoch + state.step
                value = loss.item()
                smoothed = value if smoothed is None else 0.95 * smoothed + 0.05 * value
                if done % config.tracking.log_every == 0:
                    rate = (done - done_at_start) * t.batch_size / max(
                        time.monotonic() - started, 1e-9)
                    tracker.log({"train/loss": value, "train/loss_smooth": smoothed,
                                 "train/lr": scheduler.get_last_lr()[0],
                                 "train/images_per_s": rate}, step=done)
                status = f"epoch {state.epoch + 1} loss {smoothed:.3f}"
                progress.update(bar, completed=done, status=status)
                plain.update(done, status)
                if stop.requested:
                    checkpoint()
                    tracker.finish(exit_code=130)
                    raise Interrupted(run)
            end_of_epoch(state.epoch)
            state.epoch, state.step = state.epoch + 1, 0
            checkpoint()

    stopped_early = stale() and state.epoch < t.epochs
    if stopped_early and not quiet:
        console.print(f"early stop: no better val score in {t.patience} epochs "
                      f"(best: epoch {state.best_epoch})")
    model.encoder.load_state_dict({k.removeprefix("encoder."): v
                                   for k, v in run.load_weights().items()})
    write_prototypes(run, model.encoder, images, base, normalize, device,
                     PROTOTYPES_PER_CLASS)
    run.write_meta(model_meta(config, task, image_size, model.encoder, state, state.epoch,
                              stopped_early))
    tracker.summary({"val/best_acc": state.best_acc, "best_epoch": state.best_epoch})
    if log_model:
        tracker.log_artifact(run.path, name=f"model-{run.path.name}")
    tracker.finish()
    return run


def load_val(task: Task, image_size: int, seed: int, cache: dict[str, Any]
             ) -> tuple[Tensor, np.ndarray, np.ndarray | None] | None:
    """A seeded subset of the val split (at most VAL_PER_CLASS images a class), or None."""
    if not task.classes("val"):
        return None
    images, data = load_split_images(task, "val", image_size, **cache)
    keep = subsample(data.labels, VAL_PER_CLASS, seed)
    groups = None if data.groups is None else data.groups[keep]
    return images[torch.from_numpy(keep)], data.labels[keep], groups


__all__ = ["Classifier", "SplitData", "pretrain"]
