"""The one training loop every stage runs in (in the manner of the PyTorch reference
scripts: explicit, no callbacks beyond what a stage is).

A `Stage` says what one step is (`step(batch)`: gradients accumulated, metrics back),
where its batches come from, when it validates and checkpoints, and what its run
directory's model is. `train` owns everything around that: the run directory and its
tracker, the optimiser step and extra objectives, Ctrl-C (a checkpoint of a whole step,
then `Interrupted`), checkpoints and exact resume, validation with early stopping and
keeping the best model, and the end of the run.

Positions count the stage's units (episodes in meta-training, optimiser steps in
pretraining); the batch at a position is a pure function of the seed and the position,
and the checkpoint stores the position with the optimiser, scheduler and RNG states, so
a resumed run reaches the same weights as an uninterrupted one (on the CPU).
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from fewshot.config import Config
from fewshot.data.tasks import SplitData, Task, load_task
from fewshot.device import pick_device
from fewshot.features import embed, subsample
from fewshot.methods.common import class_means
from fewshot.models.embedding import EmbeddingSpec, embedding
from fewshot.ood import fit_domain
from fewshot.progress import PlainProgress, console, make_progress
from fewshot.run import RunDir, restore_training, rng_state
from fewshot.schema import BASE_FEATURES_PER_CLASS, ModelMeta, Prototypes
from fewshot.tracking import Tracker
from fewshot.train.distributed import SINGLE, World, check_in_step
from fewshot.train.validate import Validation, log_validation


class Interrupted(Exception):
    """Training stopped by Ctrl-C after saving a checkpoint."""

    def __init__(self, run: RunDir) -> None:
        super().__init__(str(run.path))
        self.run = run


class StopFlag:
    """Turns the first Ctrl-C (SIGINT) into a flag the loop checks between steps, so the
    checkpoint it saves is always of a whole step; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopFlag:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C as it is
            self._previous = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class LoopState:
    """What the loop itself keeps across a resume (the stage keeps its own beside it)."""

    position: int = 0
    best_acc: float = -math.inf
    best_at: int = -1
    """The stage's count (episode, epoch) at the best validation."""
    bad_validations: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)

    def best_ci(self) -> float | None:
        """The 95% CI half-width of the best validation (None before any)."""
        best = [h["ci"] for h in self.history if h["acc"] == self.best_acc]
        return best[0] if best else None

    def val_record(self, unit: str, keep: str) -> dict[str, Any]:
        """model.json's account of validation: the best score and where it was, and, when
        the run kept its last weights instead (`train.keep: last`), that model's own score."""
        record: dict[str, Any] = {
            "val/acc": self.best_acc if math.isfinite(self.best_acc) else None,
            "val/acc_ci95": self.best_ci(), f"best_{unit}": self.best_at}
        if keep == "last" and self.history:
            record.update({"kept": "last", "val/last_acc": self.history[-1]["acc"],
                           "val/last_acc_ci95": self.history[-1]["ci"]})
        return record


class Objective(Protocol):
    """An extra loss on a stream of its own (unlabeled images, another domain), added to the
    stage's loss with its weight; its gradients join the step's before the optimiser steps."""

    name: str
    weight: float

    def loss(self, model: nn.Module, position: int) -> Tensor: ...


@dataclass
class StepResult:
    position: int
    """The position after this step."""
    metrics: dict[str, float]
    status: str = ""


class Stage:
    """One training stage; subclasses fill in what is theirs."""

    kind: str = ""
    unit: str = ""
    """What `LoopState.best_at` and the history count: `episode` or `epoch`."""
    total: int = 0
    """Positions in the whole run."""
    units_per_step: int = 1
    world: World = SINGLE
    """The ranks this stage trains on (fewshot.train.distributed); one by default."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any

    # ---- batches and steps ------------------------------------------------------------
    def batches(self, start: int) -> Generator[Any, None, None]:
        raise NotImplementedError

    def step(self, batch: Any) -> StepResult:
        """Forward and backward of one batch (gradients accumulated, not applied)."""
        raise NotImplementedError

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def objectives(self) -> list[Objective]:
        """The stage's own extra objectives (from its config), after the caller's."""
        return []

    def optimizer_step(self) -> None:
        self.optimizer.step()

    def rates(self, units: int, seconds: float) -> dict[str, float]:
        return {}

    # ---- validation, checkpoints, the run's model -------------------------------------
    def count(self, position: int) -> int:
        """The stage's count (episodes, epochs) at a position."""
        return position

    def has_validation(self) -> bool:
        return False

    def validate(self) -> Validation:
        raise NotImplementedError

    def validation_metrics(self, position: int) -> dict[str, float]:
        return {}

    def validate_at_start(self) -> bool:
        return False

    def validation_due(self, before: int, after: int) -> bool:
        return False

    def checkpoint_due(self, before: int, after: int) -> bool:
        return False

    def best_weights(self) -> dict[str, Tensor]:
        return self.model.state_dict()

    def load_best(self, weights: dict[str, Tensor]) -> None:
        self.model.load_state_dict(weights)

    def model_meta(self, state: LoopState) -> ModelMeta:
        raise NotImplementedError

    def write_prototypes(self, run: RunDir) -> None:
        """The base prototypes of the final model (after `load_best`)."""

    def state_dict(self) -> dict[str, Any]:
        """Stage state beyond the model, optimiser, scheduler and RNGs."""
        return {}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Set what `state_dict` saved (called on resume, after the checkpoint is loaded)."""


def cache_options(config: Config, quiet: bool) -> dict[str, Any]:
    """Where and how the decoded image cache is built, from the `data` section."""
    return {"directory": config.data.cache_dir, "workers": config.data.workers or None,
            "quiet": quiet}


def crossed(before: int, after: int, every: int) -> bool:
    """True when a multiple of `every` lies in (before, after]."""
    return after // every != before // every


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


def draw_curves(run: RunDir, title: str, quiet: bool) -> None:
    """curves.png in the run folder, from its metrics.jsonl, when matplotlib is there."""
    import json

    from fewshot import plots

    if not plots.available():
        if not quiet:
            console.print(f"note: skipped curves.png: matplotlib is not installed "
                          f"({plots.INSTALL_HINT})")
        return
    path = run.path / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
               if line.strip()] if path.is_file() else []
    plots.training_curves(records, run.path / "curves.png", "training step", title)


def plain_output_mean(encoder: nn.Module, images: Tensor, transform, device: torch.device,
                      spec: EmbeddingSpec | None) -> Tensor | None:
    """The mean of the encoder's plain output when heads read another embedding: finetune,
    siamese and the MAML family read the plain output and centre on this."""
    if spec is None or spec.plain:
        return None
    return embed(encoder, images, transform, device).mean(0)


def base_prototypes(encoder: nn.Module, images: Tensor, data: SplitData, transform,
                    device: torch.device, per_class: int,
                    spec: EmbeddingSpec | None = None) -> Prototypes:
    """Per-class mean features of the base classes (at most `per_class` images a class,
    chosen with a fixed seed) and their overall mean, for SimpleShot and `--keep-base`, and
    a seeded subset of the features themselves (for `method.power`), and the base-domain
    statistics of the out-of-domain check; all of the `spec` embedding's features (and the
    plain output's mean beside them when the two differ)."""
    chosen = subsample(data.labels, per_class, seed=0)
    keep, labels = images[torch.from_numpy(chosen)], data.labels[chosen]
    with embedding(encoder, spec):
        features = embed(encoder, keep, transform, device)
    prototypes = class_means(features, torch.from_numpy(labels), len(data.classes))
    subset = subsample(labels, BASE_FEATURES_PER_CLASS, seed=0)
    return Prototypes(list(data.classes), prototypes, features.mean(0),
                      features[torch.from_numpy(subset)], fit_domain(features),
                      plain_output_mean(encoder, keep, transform, device, spec))


def start(config: Config, data_root: str | None, config_dir: Path | None,
          resume: RunDir | None, world: World = SINGLE) -> tuple[torch.device, Task]:
    """What every stage does first: a resumed run folder is locked before any data is
    read (a second writer stops here; rank 0 holds the lock for all ranks), then the
    device, the seed and the task. The task and a weights path are written back absolute,
    so the run's config.yaml resolves from anywhere."""
    from fewshot.train.distributed import rank_device

    if resume is not None and world.main:
        resume.lock()
    world.barrier()
    device = rank_device(world, pick_device(config.train.device))
    torch.manual_seed(config.train.seed)
    task = load_task(config.data.task, data_root or config.data.root, relative_to=config_dir)
    task.check_held_apart()
    config.data.task = str(task.source.resolve())
    if config.model.weights and Path(config.model.weights).exists():
        config.model.weights = str(Path(config.model.weights).resolve())
    if config.train.distill and Path(config.train.distill).exists():
        config.train.distill = str(Path(config.train.distill).resolve())
    # unlabeled folders named in a config file are relative to it, as its task is
    config.data.unlabeled = [str(((config_dir or Path.cwd()) / folder).resolve())
                             for folder in config.data.unlabeled]
    return device, task


def open_run(config: Config, name: str, out: str | Path | None, resume: RunDir | None,
             world: World = SINGLE) -> RunDir:
    """The run folder, locked for this process (a resumed one is locked by the caller
    before any data is read). Under torchrun rank 0 alone creates it (name checks, lock,
    `latest`, config.yaml with the world size) and tells the other ranks its path."""
    config.train.world_size = world.size
    if resume is not None:
        if world.main:
            resume.write_config(config)  # the world size it now runs at
        return resume
    path = None
    failure = None
    if world.main:
        try:
            run = RunDir.create(config.name or name, out)
            run.lock()
            run.write_config(config)
            path = str(run.path)
        except Exception as exc:  # noqa: BLE001 - told to every rank, raised on rank 0
            failure = exc
    path = world.broadcast(path)
    if failure is not None:
        raise failure
    if path is None:
        raise SystemExit(2)  # rank 0 could not create the run folder and said why
    return run if world.main else RunDir(Path(path))


def run_stage(config: Config, name: str,
              build: Callable[[Task, torch.device, bool, World], Stage], *,
              out: str | Path | None, resume: RunDir | None, data_root: str | None,
              config_dir: Path | None, use_wandb: bool | None, log_model: bool,
              objectives: list[Objective] | None, quiet: bool) -> RunDir:
    """What a stage's entry point does: join the torchrun world (if any), start, build the
    stage (`build(task, device, quiet, world)`), open the run folder and train."""
    from fewshot.train.distributed import close_world, init_world

    world = init_world(config.train.device)
    device, task = start(config, data_root, config_dir, resume, world)
    stage = build(task, device, quiet or not world.main, world)
    run = open_run(config, name, out, resume, world)
    try:
        return train(stage, config, run, resumed=resume is not None, objectives=objectives,
                     use_wandb=use_wandb, log_model=log_model, quiet=quiet)
    finally:
        close_world(world)


def train(stage: Stage, config: Config, run: RunDir, *, resumed: bool,
          objectives: list[Objective] | None = None, use_wandb: bool | None = None,
          log_model: bool = False, quiet: bool = False) -> RunDir:
    """Run (or resume) `stage` in `run`; returns the run directory. Under torchrun every
    rank runs this loop in step; rank 0 alone validates and writes (fewshot.train.distributed)."""
    t = config.train
    world = stage.world
    quiet = quiet or not world.main
    objectives = [*(objectives or []), *stage.objectives()]
    state = LoopState()
    if resumed:
        saved = restore_training(run, stage.model, stage.optimizer, stage.scheduler)
        state = LoopState(**saved["train"]["loop"])
        stage.load_state_dict(saved["train"]["stage"])
        if isinstance(stage.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
            # resumed with more steps than planned: stretch the remaining decay (no restart)
            steps = -(-stage.total // stage.units_per_step)
            stage.scheduler.T_max = max(stage.scheduler.T_max, steps)
        if world.main:
            run.truncate_metrics(state.position)
    world.barrier()  # every rank has read the checkpoint before rank 0 writes anything

    wandb_on = config.tracking.wandb if use_wandb is None else use_wandb
    tracker = Tracker(run.path if world.main else None, job_type=stage.kind,
                      config=config.to_dict(), use_wandb=wandb_on and world.main,
                      project=config.tracking.project, entity=config.tracking.entity,
                      name=config.tracking.run_name or run.path.name, quiet=quiet)

    def checkpoint() -> None:
        if not world.main:
            return
        run.save_checkpoint(stage.model.state_dict(), {
            "optimizer": stage.optimizer.state_dict(), "scheduler": stage.scheduler.state_dict(),
            "rng": rng_state(),
            "train": {"loop": asdict(state), "stage": stage.state_dict()},
        })

    def meta() -> ModelMeta:
        described = stage.model_meta(state)
        described.world_size = world.size
        return described

    def save_best() -> None:
        if world.main:
            run.save_model(stage.best_weights(), meta())

    def validate() -> None:
        """On rank 0 (the others wait for its verdict: best, patience, early stop)."""
        if world.main:
            validate_here()
        if world.distributed:
            for key, value in world.broadcast(asdict(state)).items():
                setattr(state, key, value)

    def validate_here() -> None:
        at = stage.count(state.position)
        if not stage.has_validation():  # nothing to select by: the latest model is the best
            state.best_at = at
            save_best()
            return
        result = stage.validate()
        acc, ci = result.acc_ci
        improved = acc > state.best_acc
        state.history.append({stage.unit: at, "acc": acc, "ci": ci})
        if improved:
            state.best_acc, state.best_at, state.bad_validations = acc, at, 0
        else:
            state.bad_validations += 1
        if improved or t.keep == "last":
            save_best()
        log_validation(tracker, result, state.position,
                       {**stage.validation_metrics(state.position), "val/best_acc": state.best_acc})
        if not quiet:
            console.print(f"validation at {stage.unit} {at}: {100 * acc:.2f} ± {100 * ci:.2f}%"
                          f"{' (best)' if improved else ''}")
        if (t.keep == "best" and state.bad_validations >= t.patience
                and state.position < stage.total):
            state.stopped_early = True
            if not quiet:
                console.print(f"early stop: no better val score in {t.patience} validations "
                              f"(best: {stage.unit} {state.best_at})")

    progress = make_progress(quiet)
    plain = PlainProgress(stage.kind, stage.total, quiet=quiet or not progress.disable)
    started, done_at_start = time.monotonic(), state.position
    if stage.validate_at_start() and state.position == 0 and not state.history:
        validate()
    stage.model.train()
    batches = stage.batches(state.position) if not state.stopped_early else (b for b in ())
    with StopFlag() as stop, progress, contextlib.closing(batches):
        bar = progress.add_task(stage.kind, total=stage.total, completed=state.position,
                                status="")
        for batch in batches:
            before = state.position
            stage.optimizer.zero_grad(set_to_none=True)
            result = stage.step(batch)
            metrics = dict(result.metrics)
            for objective in objectives:
                loss = objective.loss(stage.model, before)
                stage.backward(objective.weight * loss)
                metrics[f"train/{objective.name}_loss"] = loss.item()
                metrics.update(getattr(objective, "metrics", {}))
            stage.optimizer_step()
            stage.scheduler.step()
            state.position = result.position
            if (state.position // stage.units_per_step) % config.tracking.log_every == 0:
                elapsed = max(time.monotonic() - started, 1e-9)
                tracker.log({**metrics, "train/lr": stage.scheduler.get_last_lr()[0],
                             **stage.rates(state.position - done_at_start, elapsed)},
                            step=state.position)
            progress.update(bar, completed=state.position, status=result.status)
            plain.update(state.position, result.status)
            if stage.validation_due(before, state.position):
                validate()
            if world.any(stop.requested):  # every rank stops at the same step
                checkpoint()
                tracker.finish(exit_code=130)
                if world.main:
                    run.unlock()
                raise Interrupted(run)
            if state.stopped_early:
                break
            if stage.checkpoint_due(before, state.position):
                checkpoint()

    last = state.history[-1][stage.unit] if state.history else -1
    if not state.stopped_early and (last != stage.count(state.position)
                                    or not stage.has_validation()):
        validate()
    check_in_step(stage.model, world)  # the ranks ended with the same weights
    checkpoint()
    world.barrier()  # rank 0's best model is on disk
    stage.load_best(run.load_weights())  # the best model describes the run
    if world.main:
        stage.write_prototypes(run)
        run.write_meta(meta())
        draw_curves(run, f"{stage.kind}: {run.path.name}", quiet)
    tracker.summary({"val/best_acc": state.best_acc if stage.has_validation() else None,
                     f"best_{stage.unit}": state.best_at})
    if log_model and world.main:
        tracker.log_artifact(run.path, name=f"model-{run.path.name}")
    tracker.finish()
    if world.main:
        run.unlock()
    world.barrier()  # no rank leaves before the run folder is complete
    return run
