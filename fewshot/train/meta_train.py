"""Episodic meta-training: an encoder (from scratch, ImageNet or a pretrain run) and a
head (ProtoNet or the MAML family) on episodes of the base classes, validated on the
held-apart `val` classes, keeping the model that generalises best.

An explicit loop in the manner of the PyTorch reference scripts. Episode `i` is a pure
function of `(seed, i)` and the checkpoint stores the next episode index with the
optimiser, scheduler and RNG states, so a resumed run reaches the same weights as an
uninterrupted one (on the CPU, with deterministic kernels).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fewshot.config import Config, MethodConfig
from fewshot.data.augment import augment
from fewshot.data.episodes import EpisodeSampler, TensorEpisodes
from fewshot.data.images import Normalize, load_split_images
from fewshot.data.tasks import SplitData, Task, load_task
from fewshot.methods import FewShotHead, build_head
from fewshot.methods.common import class_means
from fewshot.models import build_backbone
from fewshot.run import RunDir, restore_training, rng_state
from fewshot.tracking import PlainProgress, Tracker, console, make_progress
from fewshot.train.device import StopFlag, pick_device
from fewshot.train.images import embed, subsample
from fewshot.train.task_workers import TaskWorkers, task_processes
from fewshot.train.validate import log_validation, run_validation

PROTOTYPE_IMAGES_PER_CLASS = 1000
VAL_SEED_OFFSET = 1_000_003
"""Validation episodes come from their own stream, apart from the training episodes."""


class Interrupted(Exception):
    """Training stopped by Ctrl-C after saving a checkpoint."""

    def __init__(self, run: RunDir) -> None:
        super().__init__(str(run.path))
        self.run = run


@dataclass
class TrainState:
    next_episode: int = 0
    best_acc: float = -math.inf
    best_episode: int = -1
    bad_validations: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"next_episode": self.next_episode, "best_acc": self.best_acc,
                "best_episode": self.best_episode, "bad_validations": self.bad_validations,
                "stopped_early": self.stopped_early, "history": self.history}


def cache_options(config: Config, quiet: bool) -> dict[str, Any]:
    """Where and how the decoded image cache is built, from the `data` section."""
    return {"directory": config.data.cache_dir, "workers": config.data.workers or None,
            "quiet": quiet}


def crossed(before: int, after: int, every: int) -> bool:
    """True when a multiple of `every` lies in (before, after]: steps of a meta-batch."""
    return after // every != before // every


def head_options(method: MethodConfig, head_cls: type, ways: int, feature_dim: int
                 ) -> dict[str, Any]:
    """The method options a head's constructor accepts (one config section serves all)."""
    available = {**method.model_dump(), "ways": ways, "feature_dim": feature_dim}
    available.pop("head")
    params = inspect.signature(head_cls).parameters
    return {k: v for k, v in available.items() if k in params}


def build_model(config: Config, image_size: int, ways: int) -> FewShotHead:
    """Encoder (with its initial weights) wrapped by the configured head."""
    from fewshot.methods.base import HEADS

    build_head("protonet", nn.Identity())  # imports the built-in heads
    encoder = build_backbone(config.model.backbone, image_size=image_size,
                             **config.model.backbone_args)
    if config.model.weights:
        from fewshot.models.weights import load_encoder_weights

        load_encoder_weights(encoder, config.model.weights)
    head_cls = HEADS[config.method.head]
    options = head_options(config.method, head_cls, ways, encoder.feature_dim)
    return build_head(config.method.head, encoder, **options)


def make_optimizer(params, config: Config) -> torch.optim.Optimizer:
    t = config.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay,
                               nesterov=True)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=t.lr, weight_decay=t.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: Config, steps: int):
    if config.train.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


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


def model_meta(config: Config, task: Task, image_size: int, head: FewShotHead,
               ways: int, state: TrainState) -> dict[str, Any]:
    from fewshot.methods.base import HEADS

    options = head_options(config.method, HEADS[config.method.head], ways,
                           head.encoder.feature_dim)
    return {
        "kind": "meta-train",
        "task": task.name,
        "backbone": config.model.backbone,
        "backbone_args": config.model.backbone_args,
        "image_size": image_size,
        "normalization": Normalize().to_dict(),
        "feature_dim": head.encoder.feature_dim,
        "head": config.method.head,
        "head_options": options,
        "classes": {split: task.classes(split) for split in ("base", "val", "novel")},
        "metrics": {"val/acc": state.best_acc if math.isfinite(state.best_acc) else None,
                    "best_episode": state.best_episode,
                    "episodes_trained": state.next_episode,
                    "stopped_early": state.stopped_early},
    }


def write_prototypes(run: RunDir, encoder: nn.Module, images: Tensor, data: SplitData,
                     transform, device: torch.device,
                     per_class: int = PROTOTYPE_IMAGES_PER_CLASS) -> None:
    """Per-class mean features of the base classes (at most 1000 images a class, chosen
    with a fixed seed) and their overall mean, for SimpleShot and `adapt --keep-base`."""
    keep = subsample(data.labels, per_class, seed=0)
    features = embed(encoder, images[torch.from_numpy(keep)], transform, device)
    prototypes = class_means(features, torch.from_numpy(data.labels[keep]), len(data.classes))
    run.save_prototypes(data.classes, prototypes, features.mean(0))


def meta_train(config: Config, *, out: str | Path | None = None, resume: RunDir | None = None,
               data_root: str | None = None, config_dir: Path | None = None,
               use_wandb: bool | None = None, log_model: bool = False,
               quiet: bool = False) -> RunDir:
    """Run (or resume) meta-training; returns the run directory."""
    t = config.train
    device = pick_device(t.device)
    torch.manual_seed(t.seed)
    task = load_task(config.data.task, data_root or config.data.root, relative_to=config_dir)
    config.data.task = str(task.source.resolve())  # config.yaml must resolve from anywhere
    if config.model.weights and Path(config.model.weights).exists():
        config.model.weights = str(Path(config.model.weights).resolve())
    image_size = config.data.image_size or task.image_size
    cache = cache_options(config, quiet)
    base_images, base = load_split_images(task, "base", image_size, **cache)
    has_val = bool(task.classes("val"))
    if has_val:
        val_images, val = load_split_images(task, "val", image_size, **cache)
    ways = t.ways
    # channels-last convolutions: faster on CUDA and, through oneDNN, on the CPU too
    # (MAML Conv4 at 84 px: about 1.1-1.2x; experiments/bench_maml.py).
    head = build_model(config, image_size, ways).to(device, memory_format=torch.channels_last)
    if device.type == "cuda":
        base_images = base_images.to(device)  # gathered on the GPU, never decoded per step
    normalize = Normalize()

    sampler = EpisodeSampler(base.labels, ways, t.shots, t.queries, episodes=t.episodes,
                             seed=t.seed, tasks_per_batch=t.meta_batch, groups=base.groups,
                             class_names=base.classes)
    steps = len(sampler)
    optimizer = make_optimizer(head.parameters(), config)
    scheduler = make_scheduler(optimizer, config, steps)
    state = TrainState()
    if resume is not None:
        run = resume
        saved = restore_training(run, head, optimizer, scheduler)
        state = TrainState(**saved["train"])
    else:
        run = RunDir.create(config.name or "meta-train", out)
        run.write_config(config)
    sampler.start = state.next_episode

    wandb_on = config.tracking.wandb if use_wandb is None else use_wandb
    tracker = Tracker(run.path, job_type="meta-train", config=config.to_dict(),
                      use_wandb=wandb_on, project=config.tracking.project,
                      entity=config.tracking.entity, name=config.tracking.run_name or run.path.name,
                      quiet=quiet)
    amp = t.amp and device.type == "cuda"

    def checkpoint() -> None:
        run.save_checkpoint(head.state_dict(), {
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": rng_state(), "train": state.as_dict(),
        })

    def save_best() -> None:
        run.save_model(head.state_dict(), model_meta(config, task, image_size, head, ways, state))

    def validate(episode: int) -> None:
        result = run_validation(head, val_images, val, normalize, device, ways, t.shots,
                                t.queries, t.val_episodes, seed=t.seed + VAL_SEED_OFFSET)
        acc, ci = result.acc_ci
        improved = acc > state.best_acc
        state.history.append({"episode": episode, "acc": acc, "ci": ci})
        if improved:
            state.best_acc, state.best_episode, state.bad_validations = acc, episode, 0
            save_best()
        else:
            state.bad_validations += 1
        log_validation(tracker, result, val_images, val, episode)
        tracker.log({"val/best_acc": state.best_acc}, step=episode)
        if not quiet:
            console.print(f"validation at episode {episode}: {100 * acc:.2f} ± {100 * ci:.2f}%"
                          f"{' (best)' if improved else ''}")
        if state.bad_validations >= t.patience:
            state.stopped_early = True

    episodes = TensorEpisodes(base_images, sampler, transform=normalize)
    progress = make_progress(quiet)
    plain = PlainProgress("meta-train", t.episodes, quiet=quiet or not progress.disable)
    smoothed: float | None = None
    acc_smooth: float | None = None
    started = time.monotonic()
    done_at_start = state.next_episode
    if has_val and config.model.weights and state.next_episode == 0 and not state.history:
        # A pretrained start is a candidate too: if meta-training never beats it on the
        # val classes, the run keeps the encoder it started from.
        validate(0)
    head.train()
    processes = task_processes(head, device, t.meta_batch, t.task_processes)
    workers = TaskWorkers(head, processes) if processes > 1 else None
    with StopFlag() as stop, progress, workers or contextlib.nullcontext():
        bar = progress.add_task("meta-train", total=t.episodes, completed=state.next_episode,
                                status="")
        for batch in episodes:
            first = batch.episodes[0].index
            batch = batch.to(device)
            support, query = batch.support, batch.query
            if t.augment:
                support = augment(support.flatten(0, 1)).view_as(support)
                query = augment(query.flatten(0, 1)).view_as(query)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss, logits = meta_batch_backward(head, support, batch.support_labels, query,
                                                   batch.query_labels, workers)
            optimizer.step()
            scheduler.step()
            state.next_episode = first + len(batch.episodes)
            acc = (logits.argmax(-1) == batch.query_labels).float().mean().item()
            loss_value = loss.item()
            smoothed = loss_value if smoothed is None else 0.95 * smoothed + 0.05 * loss_value
            acc_smooth = acc if acc_smooth is None else 0.95 * acc_smooth + 0.05 * acc
            elapsed = max(time.monotonic() - started, 1e-9)
            rate = (state.next_episode - done_at_start) / elapsed
            if (state.next_episode // t.meta_batch) % config.tracking.log_every == 0:
                metrics = {"train/loss": loss_value, "train/loss_smooth": smoothed,
                           "train/acc": acc, "train/acc_smooth": acc_smooth,
                           "train/lr": scheduler.get_last_lr()[0],
                           "train/episodes_per_s": rate,
                           "train/images_per_s": rate * ways * (t.shots + t.queries)}
                inner = getattr(head, "support_losses", None)
                if inner is not None:  # MAML family: the inner loop's effect on the support
                    metrics["train/support_loss_before"] = inner[0].item()
                    metrics["train/support_loss_after"] = inner[1].item()
                if hasattr(head, "inner_lrs"):  # Meta-SGD's learned inner learning rates
                    lrs = torch.cat([p.detach().flatten() for p in head.inner_lrs.values()])
                    metrics["train/inner_lr_mean"] = lrs.mean().item()
                if device.type == "cuda":
                    metrics["train/gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
                tracker.log(metrics, step=state.next_episode)
            status = f"loss {smoothed:.3f} acc {acc:.2f}"
            progress.update(bar, completed=state.next_episode, status=status)
            plain.update(state.next_episode, status)
            if has_val and crossed(first, state.next_episode, t.val_every):
                validate(state.next_episode)
            if stop.requested:
                checkpoint()
                tracker.finish(exit_code=130)
                raise Interrupted(run)
            if state.stopped_early:
                if not quiet:
                    console.print(f"early stop: no improvement in {t.patience} validations")
                break
            if crossed(first, state.next_episode, t.checkpoint_every):
                checkpoint()

    last_validated = state.history[-1]["episode"] if state.history else -1
    if has_val and not state.stopped_early and last_validated != state.next_episode:
        validate(state.next_episode)
    if not has_val:
        state.best_episode = state.next_episode
        save_best()
    checkpoint()
    head.load_state_dict(run.load_weights())  # the best model describes the run
    write_prototypes(run, head.encoder, base_images, base, normalize, device)
    run.write_meta(model_meta(config, task, image_size, head, ways, state))
    tracker.summary({"val/best_acc": state.best_acc if has_val else None,
                     "best_episode": state.best_episode})
    if log_model:
        tracker.log_artifact(run.path, name=f"model-{run.path.name}")
    tracker.finish()
    return run
