"""Supervised pretraining on a task's base classes, the first stage of meta-transfer.

Cross-entropy with label smoothing over all base classes, augmentation that keeps size
cues (flips, 90-degree rotations, mild colour jitter; no rescaling), a cosine schedule,
AMP and channels_last on CUDA. After each epoch the encoder is scored on 5-way 5-shot
episodes of the `val` classes (SimpleShot on its features, the validation every stage
shares) and the best one is kept. The order of images and every augmentation are
functions of (seed, epoch, position in the epoch), so a resumed run continues where it
stopped.

Under torchrun (fewshot.train.distributed) `train.batch_size` is per rank: a step's global
batch is the next `batch_size x world size` images of the epoch's seeded order, split
evenly over the ranks, and DistributedDataParallel averages the gradients (each rank's
loss weighted by its share, so a short last batch counts as one process would count it).
An image's augmentation depends on its place in the epoch, not on its rank, so 2 ranks
take the step 1 process takes on the same global batch, up to float tolerance, for a model
without batch-norm; batch-norm normalises over each rank's own images (SyncBatchNorm on
GPUs, where it exists, makes it global). A last step with fewer images than ranks is
skipped.

Unlabeled images (`data.unlabeled`, `--unlabeled DIR`; never val or novel images, which
is checked by path, content and near-duplicate search) feed fewshot.train.objectives:
`train.objective: ssl` trains on them alone (an epoch is a pass over them; no label is
read, and with no val classes the last epoch is kept), `both` adds the self-supervised
loss on a seeded unlabeled batch to each supervised step, and `train.align: mmd | dann`
aligns each step's base features with those of an unlabeled batch. These run in one
process (not under torchrun). `train.distill: RUN` adds a finished run's softened outputs
on the same augmented batch to the labels (self-distillation, fewshot.train.distill).
`train.mixup: A` blends each augmented batch with a shuffled copy of itself by a weight
drawn from Beta(A, A) and the loss with it (mixup); the weight and the shuffle are
functions of (seed, epoch, step), so a resumed run mixes as it would have.

The run directory's model is the encoder with a SimpleShot head (nearest centroid on
features centred on the base mean from `prototypes.safetensors`); the base-class
linear layer lives only in the checkpoint, for resuming. This module is the stage's step
and options; the loop around it is `fewshot.train.loop`.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.config import Config
from fewshot.data.augment import DRAWS, augment
from fewshot.data.images import IMAGENET_MEAN, IMAGENET_STD, Normalize, load_split_images
from fewshot.data.tasks import SplitData, Task
from fewshot.errors import UsageError
from fewshot.features import embed, subsample
from fewshot.methods import build_head
from fewshot.models import build_backbone
from fewshot.models.embedding import embedding
from fewshot.models.weights import load_encoder_weights
from fewshot.ood import fit_domain
from fewshot.run import RunDir
from fewshot.schema import BASE_FEATURES_PER_CLASS, ModelMeta, Prototypes
from fewshot.train.distill import distillation_loss, load_teacher
from fewshot.train.distributed import SINGLE, World
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
    plain_output_mean,
    run_stage,
)
from fewshot.train.objectives import UnlabeledObjectives, check_objectives, load_unlabeled
from fewshot.train.validate import VAL_SEED_OFFSET, Validation, run_validation

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


def epoch_order(seed: int, epoch: int, size: int, limit: int | None) -> np.ndarray:
    """The images of an epoch: a permutation seeded by (seed, epoch), cut to `limit`."""
    order = np.random.default_rng([seed, epoch, 7]).permutation(size)
    return order[:limit] if limit else order


def epoch_draws(seed: int, epoch: int, size: int) -> Tensor:
    """The augmentation uniforms of every place in an epoch, `[size, DRAWS]`."""
    generator = torch.Generator().manual_seed(
        int(np.random.default_rng([seed, epoch, 11]).integers(2**62)))
    return torch.rand(size, DRAWS, generator=generator)


def mixup_draw(seed: int, epoch: int, step: int, size: int, alpha: float
               ) -> tuple[float, Tensor]:
    """Mixup's weight, from Beta(alpha, alpha), and each image's partner in a step's batch."""
    rng = np.random.default_rng([seed, epoch, step, 13])
    return float(rng.beta(alpha, alpha)), torch.from_numpy(rng.permutation(size))


def rank_slice(count: int, world: int, rank: int) -> slice:
    """Rank `rank`'s part of a global batch of `count` images: even parts, in order."""
    base, extra = divmod(count, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def load_val(task: Task, image_size: int, seed: int, cache: dict[str, Any]
             ) -> tuple[Tensor, SplitData] | None:
    """A seeded subset of the val split (at most VAL_PER_CLASS images a class), or None."""
    if not task.classes("val"):
        return None
    images, data = load_split_images(task, "val", image_size, **cache)
    keep = subsample(data.labels, VAL_PER_CLASS, seed)
    subset = SplitData(data.classes, [data.paths[i] for i in keep], data.labels[keep],
                       None if data.groups is None else data.groups[keep])
    return images[torch.from_numpy(keep)], subset


class PretrainStage(Stage):
    """One step: a batch of base images through the encoder and the base-class layer."""

    kind, unit = "pretrain", "epoch"

    def __init__(self, config: Config, task: Task, device: torch.device, resuming: bool,
                 quiet: bool, world: World = SINGLE) -> None:
        t = config.train
        self.config, self.task, self.device, self.t = config, task, device, t
        self.world = world
        self.image_size = config.data.image_size or task.image_size
        if t.mixup and t.objective == "ssl":
            raise UsageError("mixup blends labels, and train.objective=ssl reads none",
                             "train.mixup", "unset train.mixup, or use objective supervised "
                             "or both")
        cache = cache_options(config, quiet)
        check_objectives(config, world)
        unlabeled = load_unlabeled(config, task, self.image_size, cache)
        self.base_images, self.base = load_split_images(task, "base", self.image_size,
                                                        **cache) \
            if task.classes("base") or t.objective != "ssl" else (None, None)
        self.val = load_val(task, self.image_size, t.seed, cache)
        if t.objective == "ssl":  # an epoch is a pass over the unlabeled images
            self.images = unlabeled
            self.labels = torch.zeros(len(unlabeled), dtype=torch.long)
        else:
            self.images, self.labels = self.base_images, torch.from_numpy(self.base.labels)
        encoder = build_backbone(config.model.backbone, image_size=self.image_size,
                                 **config.model.backbone_args)
        if config.model.weights and not resuming:
            load_encoder_weights(encoder, config.model.weights, config.model.backbone, quiet)
        model = Classifier(encoder, len(self.base.classes) if self.base else 1)
        if unlabeled is not None:  # trained and checkpointed with the model
            model.unlabeled = UnlabeledObjectives(
                encoder, unlabeled, objective=t.objective, ssl=t.ssl, ssl_weight=t.ssl_weight,
                align=t.align, align_weight=t.align_weight, batch_size=t.batch_size,
                seed=t.seed)
        self.teacher = None
        if t.distill:
            if t.objective == "ssl" or self.base is None:
                raise UsageError("self-distillation needs the base classes' labels",
                                 "train.distill", "unset train.distill with "
                                 "train.objective=ssl")
            self.teacher = load_teacher(t.distill, list(self.base.classes), device,
                                        Classifier)
        if world.distributed and device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
            self.images, self.labels = self.images.to(device), self.labels.to(device)
        self.net: nn.Module = self.model
        if world.distributed:  # rank 0's initial weights on every rank, gradients averaged
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.normalize = Normalize()
        self.epoch_images = min(t.epoch_size or len(self.images), len(self.images))
        self.global_batch = t.batch_size * world.size
        steps, tail = divmod(self.epoch_images, self.global_batch)
        self.steps_per_epoch = steps + (tail >= world.size)  # every rank needs an image
        self._draws: tuple[int, Tensor] | None = None
        self.total = self.steps_per_epoch * t.epochs
        self.optimizer = make_optimizer([p for p in self.model.parameters() if p.requires_grad],
                                        config)
        self.scheduler = make_scheduler(self.optimizer, config, self.total)
        self.amp = t.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.loss_smooth: float | None = None

    # ---- the step ---------------------------------------------------------------------
    def batches(self, start: int) -> Generator[tuple[int, int, Tensor, Tensor, int], None,
                                                None]:
        """(epoch, step, this rank's image indices, their places in the epoch, images in
        the step on all ranks) from position `start` on."""
        epoch, step = divmod(start, self.steps_per_epoch)
        size, world = self.global_batch, self.world
        while epoch < self.t.epochs:
            order = torch.from_numpy(epoch_order(self.t.seed, epoch, len(self.images),
                                                 self.t.epoch_size))
            for s in range(step, self.steps_per_epoch):
                places = torch.arange(s * size, min((s + 1) * size, len(order)))
                mine = places[rank_slice(len(places), world.size, world.rank)]
                yield epoch, s, order[mine].to(self.images.device), mine, len(places)
            epoch, step = epoch + 1, 0

    def draws(self, epoch: int) -> Tensor:
        if self._draws is None or self._draws[0] != epoch:
            self._draws = (epoch, epoch_draws(self.t.seed, epoch, self.epoch_images))
        return self._draws[1]

    def step(self, batch: tuple[int, int, Tensor, Tensor, int]) -> StepResult:
        epoch, step, index, places, count = batch
        images = self.normalize(self.images[index])
        if self.t.augment and self.t.objective != "ssl":
            images = augment(images, draws=self.draws(epoch)[places])
        mix = None
        if self.t.mixup:  # refused with objective ssl when the stage is built
            mix = mixup_draw(self.t.seed, epoch, step, len(index), self.t.mixup)
            images = mix[0] * images + (1 - mix[0]) * images[mix[1].to(images.device)]
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        extra: dict[str, float] = {}
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            if not hasattr(self.model, "unlabeled"):
                loss = self.supervised_loss(self.net(images), images, index, mix)
            else:
                loss, extra = self.unlabeled_step(images, index, epoch * self.steps_per_epoch
                                                  + step, mix)
        # DDP averages over ranks: weight each rank's mean by its share of the global batch
        share = len(index) * self.world.size / count
        self.backward(loss * share if share != 1.0 else loss)
        value = self.world.sum([loss.item() * len(index)])[0] / count
        self.loss_smooth = value if self.loss_smooth is None else \
            0.95 * self.loss_smooth + 0.05 * value
        return StepResult(epoch * self.steps_per_epoch + step + 1,
                          {"train/loss": value, "train/loss_smooth": self.loss_smooth, **extra},
                          f"epoch {epoch + 1} loss {self.loss_smooth:.3f}")

    def unlabeled_step(self, images: Tensor, index: Tensor, position: int,
                       mix: tuple[float, Tensor] | None = None
                       ) -> tuple[Tensor, dict[str, float]]:
        """The step's loss with the unlabeled objectives (one process): supervised
        cross-entropy unless `ssl` alone, plus the self-supervised and alignment losses."""
        encoder, objectives = self.model.encoder, self.model.unlabeled
        progress = position / max(self.total, 1)
        if self.t.objective == "ssl":
            loss, extra = objectives.losses(encoder, position, progress, self.normalize,
                                            self.device, ssl_images=images)
            return loss, extra
        features = encoder(images)
        supervised = self.supervised_loss(self.model.classifier(features), images, index,
                                          mix)
        loss, extra = objectives.losses(encoder, position, progress, self.normalize,
                                        self.device, source_features=features)
        return supervised + loss, {"train/supervised_loss": supervised.item(), **extra}

    def supervised_loss(self, logits: Tensor, images: Tensor, index: Tensor,
                        mix: tuple[float, Tensor] | None = None) -> Tensor:
        """Cross-entropy on the labels, with the teacher's soft outputs when distilling;
        with mixup, the two images' labels weighted as the images were."""
        labels = self.labels[index]
        if self.teacher is None:
            def loss(target: Tensor) -> Tensor:
                return F.cross_entropy(logits, target, label_smoothing=self.t.label_smoothing)
        else:
            with torch.no_grad():
                soft = self.teacher(images).float()

            def loss(target: Tensor) -> Tensor:
                return distillation_loss(logits.float(), soft, target, self.t.distill_weight,
                                         self.t.distill_temperature, self.t.label_smoothing)
        if mix is None:
            return loss(labels)
        weight, partner = mix
        return weight * loss(labels) + (1 - weight) * loss(labels[partner.to(labels.device)])

    def backward(self, loss: Tensor) -> None:
        self.scaler.scale(loss).backward()

    def optimizer_step(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if hasattr(self.model, "unlabeled"):
            self.model.unlabeled.after_step(self.model.encoder)  # BYOL's EMA target

    def rates(self, units: int, seconds: float) -> dict[str, float]:
        return {"train/images_per_s": units * self.global_batch / seconds}

    # ---- validation and the run's model -----------------------------------------------
    def count(self, position: int) -> int:
        return position // self.steps_per_epoch

    def has_validation(self) -> bool:
        return self.val is not None

    def validate(self) -> Validation:
        images, data = self.val
        t = self.t
        head = build_head("simpleshot", self.model.encoder)  # features L2-normalised
        return run_validation(head, images, data, self.normalize, self.device, t.ways,
                              t.shots, t.queries, t.val_episodes, seed=t.seed + VAL_SEED_OFFSET)

    def validation_metrics(self, position: int) -> dict[str, float]:
        return {"epoch": self.count(position)}

    def validation_due(self, before: int, after: int) -> bool:
        return crossed(before, after, self.steps_per_epoch)

    def checkpoint_due(self, before: int, after: int) -> bool:
        return crossed(before, after, self.steps_per_epoch)

    def best_weights(self) -> dict[str, Tensor]:
        return {f"encoder.{k}": v for k, v in self.model.encoder.state_dict().items()}

    def load_best(self, weights: dict[str, Tensor]) -> None:
        self.model.encoder.load_state_dict({k.removeprefix("encoder."): v
                                            for k, v in weights.items()})

    def model_meta(self, state: LoopState) -> ModelMeta:
        config, task = self.config, self.task
        return ModelMeta(
            kind="pretrain", task=task.name, backbone=config.model.backbone,
            backbone_args=config.model.backbone_args, embedding=config.model.embedding,
            image_size=self.image_size,
            normalization={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            feature_dim=int(self.model.encoder.feature_dim), head="simpleshot",
            classes={split: task.classes(split) for split in ("base", "val", "novel")},
            metrics={**state.val_record("epoch", self.t.keep),
                     "epochs_trained": self.count(state.position),
                     "stopped_early": state.stopped_early, **self.objectives_record(),
                     **({"distilled_from": self.t.distill} if self.t.distill else {})})

    def objectives_record(self) -> dict[str, Any]:
        """What the run learnt from, in model.json (unlabeled objectives only)."""
        t = self.t
        if not hasattr(self.model, "unlabeled"):
            return {}
        return {"objective": t.objective, "ssl": t.ssl if t.objective != "supervised" else None,
                "align": t.align, "unlabeled_images": len(self.model.unlabeled.images),
                "selection": "val episodes" if self.val is not None else
                "none: no val classes, the last epoch is kept (its SSL loss is in "
                "metrics.jsonl)"}

    def write_prototypes(self, run: RunDir) -> None:
        if self.base is not None:
            run.save_prototypes(base_prototypes(self.model.encoder, self.base_images, self.base,
                                                self.normalize, self.device,
                                                PROTOTYPES_PER_CLASS, self.config.model.embedding))
            return
        # no base classes (self-supervised alone): the centre is the unlabeled images' mean
        images = self.images[torch.from_numpy(subsample(
            np.zeros(len(self.images), dtype=np.int64), 50 * PROTOTYPES_PER_CLASS, 0))]
        spec = self.config.model.embedding
        with embedding(self.model.encoder, spec):
            features = embed(self.model.encoder, images, self.normalize, self.device)
        run.save_prototypes(Prototypes([], features.new_zeros(0, features.shape[1]),
                                       features.mean(0), features[:BASE_FEATURES_PER_CLASS],
                                       fit_domain(features),
                                       plain_output_mean(self.model.encoder, images,
                                                         self.normalize, self.device, spec)))

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict(), "world_size": self.world.size}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Positions count steps of `batch_size x world size` images, so a pretrain run
        resumes at the world size it ran at."""
        ran_at = int(saved.get("world_size", 1))
        if ran_at != self.world.size:
            raise UsageError(f"this pretrain run ran on {ran_at} process(es), not "
                             f"{self.world.size}", "--resume",
                             f"resume it with torchrun --nproc_per_node={ran_at} (or as one "
                             "process when 1)")
        self.scaler.load_state_dict(saved["scaler"])


def pretrain(config: Config, *, out: str | Path | None = None, resume: RunDir | None = None,
             data_root: str | None = None, config_dir: Path | None = None,
             use_wandb: bool | None = None, log_model: bool = False,
             objectives: list[Objective] | None = None, quiet: bool = False) -> RunDir:
    """Run (or resume) supervised pretraining; returns the run directory. Under torchrun
    each process is a rank of one run (fewshot.train.distributed)."""
    return run_stage(config, "pretrain",
                     lambda task, device, quiet, world: PretrainStage(
                         config, task, device, resume is not None, quiet, world),
                     out=out, resume=resume, data_root=data_root, config_dir=config_dir,
                     use_wandb=use_wandb, log_model=log_model, objectives=objectives,
                     quiet=quiet)
