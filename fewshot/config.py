"""Typed experiment configs: YAML sections, `--set KEY=VALUE` overrides, strict keys.

One schema serves pretrain and meta-train, so a config written for one
can be read by the other and every key is checked before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fewshot.data.files import packaged
from fewshot.errors import UsageError
from fewshot.models.embedding import EmbeddingSpec


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    task: str = "quickstart"
    """A task YAML file, or the name of a task shipped in the package."""
    root: str | None = None
    """Data root; else `FEWSHOT_DATA`, else the task file's own `data_root`."""
    image_size: int | None = Field(default=None, ge=8)
    """Overrides the task's image size."""
    cache_dir: str | None = None
    workers: int = Field(default=0, ge=0)
    unlabeled: list[str] = Field(default_factory=list)
    """Folders of unlabeled images (any layout; `--unlabeled DIR`): the stream of
    `train.objective` ssl/both and of `train.align`. Never val or novel images (checked)."""


class ModelConfig(Section):
    backbone: str = "conv4"
    weights: str | None = None
    """None (scratch), `imagenet`, a weights file, or a fewshot run directory."""
    backbone_args: dict[str, Any] = Field(default_factory=dict)
    embedding: EmbeddingSpec = Field(default_factory=EmbeddingSpec)
    """What feature-based heads read of the encoder after training: `stages` (module
    names pooled and concatenated) and `dihedral` (averaged over flips and rotations);
    training itself uses the encoder's own output."""


class MethodConfig(Section):
    """The head and its options. Only options the chosen head declares may be set (a
    plugin head's own options included); the typed ones below are the built-in heads'."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    head: str = "protonet"
    """Any registered head (`fewshot list heads`)."""
    distance: Literal["euclidean", "cosine"] = "euclidean"
    inner_steps: int = Field(default=5, ge=0)
    inner_lr: float = Field(default=0.01, gt=0)
    first_order: bool = False
    transductive: bool = False
    """Batch-norm on query batch statistics (learn2learn's examples); off = inductive."""
    chunk_size: int | None = Field(default=None, ge=1)
    """Tasks per vmap chunk for MAML-family heads; None chooses by device."""
    steps: int = Field(default=100, ge=1)
    """Optimisation steps of test-time heads (linear-probe, finetune)."""
    lr: float = Field(default=0.01, gt=0)

    def given(self) -> dict[str, Any]:
        """The options set in the config or by --set (not the defaults)."""
        names = (self.model_fields_set | set(self.model_extra or {})) - {"head"}
        return {name: getattr(self, name) for name in names}

    def head_options(self) -> dict[str, Any]:
        """The values, defaults included, of the options the chosen head declares."""
        from fewshot.methods import head_class

        declared = head_class(self.head).options()
        values = {**self.model_dump(exclude={"head"}), **(self.model_extra or {})}
        return {k: v for k, v in values.items() if k in declared}


class TrainConfig(Section):
    ways: int = Field(default=5, ge=2)
    shots: int = Field(default=5, ge=1)
    queries: int = Field(default=15, ge=1)
    meta_batch: int = Field(default=1, ge=1)
    """Episodes a step on each process: under torchrun the global meta-batch is
    meta_batch x world size."""
    world_size: int = Field(default=1, ge=1)
    """Recorded by the run (the processes torchrun started), not an input: a run sets it."""
    task_processes: int | None = Field(default=None, ge=1)
    """Processes sharing a CPU meta-batch of MAML-family tasks; None: one per core
    (at most meta_batch), 1: all tasks in this process."""
    episodes: int = Field(default=2000, ge=1)
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=128, ge=1)
    epoch_size: int | None = Field(default=None, ge=1)
    """Images per pretraining epoch (a fresh seeded subset each epoch); None: all."""
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    augment: bool = True
    amp: bool = True
    val_every: int = Field(default=200, ge=1)
    val_episodes: int = Field(default=300, ge=1)
    patience: int = Field(default=5, ge=1)
    keep: Literal["best", "last"] = "best"
    """With val classes: keep the val-best weights and stop early after `patience` worse
    validations, or keep the last step's weights (val still scored and logged, no early
    stop): a fixed budget, for measuring what the training itself is worth."""
    checkpoint_every: int = Field(default=100, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    objective: Literal["supervised", "ssl", "both"] = "supervised"
    """Pretrain: cross-entropy on the base classes, self-supervision on the unlabeled
    images (no labels at all), or both added."""
    ssl: Literal["simclr", "byol"] = "byol"
    """Chosen by measurement: experiments/rows/unlabeled_training.py (BYOL over SimCLR)."""
    ssl_weight: float = Field(default=1.0, ge=0)
    align: Literal["none", "mmd", "dann"] = "none"
    """Pretrain: align the base features with those of the unlabeled (target) images."""
    align_weight: float = Field(default=1.0, ge=0)
    distill: str | None = None
    """Pretrain: a finished pretrain run of the same task (same base classes) whose
    softened base-class outputs the student learns beside the labels (self-distillation)."""
    distill_weight: float = Field(default=0.5, ge=0, le=1)
    """The soft term's share of the loss; the labels' cross-entropy has the rest."""
    distill_temperature: float = Field(default=4.0, gt=0)
    mixup: float = Field(default=0.0, ge=0)
    """Pretrain: mixup's Beta(a, a) parameter (Zhang et al. 2018); 0 leaves images unmixed."""


class EvalConfig(Section):
    """Defaults of `fewshot evaluate --config FILE` (its options override them)."""

    split: Literal["base", "val", "novel"] = "novel"
    ways: int = Field(default=5, ge=2)
    shots: int = Field(default=5, ge=1)
    queries: int = Field(default=15, ge=1)
    episodes: int = Field(default=600, ge=1)
    seed: int = 0


class TrackingConfig(Section):
    wandb: bool = True
    project: str = "fewshot"
    entity: str | None = None
    run_name: str | None = None
    log_every: int = Field(default=1, ge=1)


class Config(Section):
    name: str | None = None
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config; the method section holds the chosen head's options only."""
        data = self.model_dump(mode="json")
        data["method"] = {"head": self.method.head, **self.method.head_options()}
        return data


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError("config file not found", path, "check the path given to --config")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f"{path}:{line + 1}" if line is not None else path
        raise UsageError("config is not valid YAML", where, "fix the YAML syntax") from None
    except (UnicodeDecodeError, OSError) as exc:
        reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc.strerror
        raise UsageError(f"cannot read config ({reason})", path,
                         "save it as a UTF-8 YAML file") from None
    if not isinstance(data, dict):
        raise UsageError("config must be a mapping of sections", path, "see configs/*.yaml")
    return data


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `section.key=value` (value parsed as YAML) in place."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise UsageError("--set needs KEY=VALUE", assignment, "e.g. --set train.lr=0.01")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UsageError("cannot set a key below a plain value", key, "check the key path")
        node = child
    node[parts[-1]] = value


def validate(data: dict[str, Any], source: object = "config") -> Config:
    from fewshot.methods import head_class

    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise UsageError(
                f"unknown config key in {source}", key, "remove it or check its spelling"
            ) from None
        raise UsageError(f"invalid config value in {source}", key, err["msg"]) from None
    declared = head_class(config.method.head).user_options()  # an unknown head names the others
    unknown = sorted(set(config.method.given()) - set(declared))
    if unknown:
        raise UsageError(f"unknown config key in {source} for head '{config.method.head}'",
                         f"method.{unknown[0]}",
                         f"its options are: {', '.join(sorted(declared)) or 'none'}")
    return config


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a config (default: the shipped quickstart) and apply `--set` overrides."""
    source = Path(path) if path else packaged("configs/quickstart.yaml")
    data = _read_yaml(source)
    validate(data, source)  # report file errors before override errors
    for assignment in overrides or []:
        apply_override(data, assignment)
    return validate(data, source if not overrides else "config or --set")
