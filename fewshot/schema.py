"""The files a trained or adapted model is made of, as typed documents.

    model.json               ModelMeta    a run directory's model (pretrain, meta-train)
    adapted.json             AdaptedMeta  an adapted folder's model (fewshot adapt)
    prototypes.safetensors   Prototypes   base-class mean features and the base mean

Each is written here and read back here, validated before anything is built from it, and
read by attribute everywhere else. `FORMAT_VERSION` goes up whenever a change adds a
field; a file of a newer version is refused, an older one is read with the defaults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError, safe_open
from torch import Tensor

from fewshot.data.files import atomic_write, save_tensors
from fewshot.errors import DataError, UsageError
from fewshot.models.embedding import EmbeddingSpec
from fewshot.version import __version__

FORMAT_VERSION = 4
"""1: the first layout; 2: one schema for all three files, prototypes carry a version;
3: adapted folders carry calibration, an out-of-domain check and ensemble members;
4: model.json and adapted.json carry the embedding feature-based heads read."""
MAX_IMAGE_SIZE = 1024
"""Largest image side a model file may ask for (a larger one is a damaged file)."""

MODEL_JSON, ADAPTED_JSON, PROTOTYPES = "model.json", "adapted.json", "prototypes.safetensors"


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Normalization(Document):
    mean: list[float] = Field(min_length=1, max_length=4)
    std: list[float] = Field(min_length=1, max_length=4)


class ModelMeta(Document):
    """model.json: everything needed to rebuild a run's model without its config."""

    format_version: int = FORMAT_VERSION
    fewshot_version: str = __version__
    git_commit: str | None = None
    kind: str
    """`pretrain` or `meta-train` (experiment scripts may write others, e.g. exports)."""
    task: str
    backbone: str
    backbone_args: dict[str, Any] = Field(default_factory=dict)
    embedding: EmbeddingSpec = Field(default_factory=EmbeddingSpec)
    """What feature-based heads read of the encoder (fewshot.models.embedding); the base
    statistics in prototypes.safetensors are of these features."""
    image_size: int = Field(ge=8, le=MAX_IMAGE_SIZE)
    normalization: Normalization = Field(
        validation_alias=AliasChoices("normalization", "normalisation"))
    feature_dim: int = Field(ge=1)
    head: str
    head_options: dict[str, Any] = Field(default_factory=dict)
    classes: dict[str, list[str]] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    world_size: int = Field(default=1, ge=1)
    """Processes the run trained on (torchrun); 1 for a plain run."""

    def write(self, path: Path) -> None:
        text = self.model_dump_json(indent=2) + "\n"
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    @classmethod
    def read(cls, path: Path) -> ModelMeta:
        return _read(cls, path, "pass a directory written by pretrain or meta-train")


class Preprocessing(Document):
    image_size: int = Field(ge=8, le=MAX_IMAGE_SIZE)
    resize: str = "bilinear, to a square of image_size"
    colour: str = "3-channel 8-bit RGB by fewshot.data.folders.to_rgb8"
    normalization: Normalization


class BaseModelRef(Document):
    path: str
    sha256: str
    kind: str | None = None
    task: str | None = None
    head: str | None = None


class SupportFile(Document):
    path: str
    class_name: str = Field(alias="class")
    sha256: str


class UnlabeledFile(Document):
    path: str
    sha256: str


class Alignment(Document):
    """Test-time alignment to unlabeled images of the new domain (fewshot.alignment)."""

    folders: list[str] = Field(min_length=1)
    images: int = Field(ge=1)
    batchnorm_layers: int = Field(ge=0)
    """Batch-norm layers whose statistics were re-estimated on the unlabeled images."""
    batchnorm: Literal["re-estimated", "kept"] = "re-estimated"
    """`kept` (`--keep-batchnorm`): the trained statistics stayed; only the centre moved."""
    centred: bool
    """The head's centring mean is the unlabeled images' mean feature."""
    whitened: bool = False
    """`--whiten`: the centred features are whitened with the unlabeled images' covariance."""
    mmd_images: int | None = Field(default=None, ge=2)
    """`linear-probe:mmd_weight`: the unlabeled images its MMD term was fitted on."""


class SkippedFile(Document):
    path: str
    reason: str


class Calibration(Document):
    """How the adapted head's probabilities were calibrated: softmax(logits / temperature).

    `fit`: `k-fold` (out-of-fold support logits, `folds` folds), `uncalibrated`
    (T = 1: one shot a class leaves nothing to fold), `off` (`--no-calibrate`), or
    `members` (an ensemble: each member calibrated on its own, probabilities averaged;
    "before" is then the mean of the members' raw softmax).
    ECE (10 equal-width bins) and Brier score before and after, on the held-out images
    when there are any (`None` otherwise)."""

    temperature: float = Field(gt=0)
    fit: Literal["k-fold", "k-fold-proxy", "uncalibrated", "off", "members"]
    folds: int | None = None
    proxy: str | None = None
    """For `k-fold-proxy`: the feature-based head whose folds stand in for a head that
    re-runs the encoder (finetune is not re-run per fold)."""
    ece_before: float | None = None
    ece_after: float | None = None
    brier_before: float | None = None
    brier_after: float | None = None
    heldout: int = 0
    reliability: dict[str, list[dict[str, Any]]] | None = None
    """`before` and `after`: per confidence bin, count, mean confidence and accuracy."""


class CrossValidated(Document):
    """`fewshot adapt --cv`: the method chosen by k-fold over the support set
    (fewshot.cross_validation), with every candidate's out-of-fold accuracy."""

    chosen: str
    accuracy: float = Field(ge=0, le=1)
    folds: int = Field(ge=2)
    images: int = Field(ge=1)
    grid: list[dict[str, Any]] = Field(min_length=1)


class DomainCheck(Document):
    """The out-of-domain check of an adapted folder (`fewshot.ood`)."""

    measure: str
    base: dict[str, Any] | None = None
    """Support vs the encoder's base domain: score, threshold, percentile, verdict; `None`
    when the base model stores no domain statistics (`note` says so)."""
    support: dict[str, Any] = Field(default_factory=dict)
    """What predict scores each image against: k, threshold and how it was set."""
    out_of_domain: bool = False
    note: str | None = None


class AdaptedMeta(Document):
    """adapted.json: classes, preprocessing, method and where every support image came from."""

    format_version: int = FORMAT_VERSION
    fewshot_version: str = __version__
    kind: Literal["adapted"] = "adapted"
    method: str
    head_options: dict[str, Any] = Field(default_factory=dict)
    protocol: Literal["inductive", "transductive"] = "inductive"
    """`transductive`: a prediction depends on the other images predicted with it."""
    classes: list[str] = Field(min_length=1)
    backbone: str
    backbone_args: dict[str, Any] = Field(default_factory=dict)
    embedding: EmbeddingSpec = Field(default_factory=EmbeddingSpec)
    preprocessing: Preprocessing
    base_model: BaseModelRef | None = None
    new_classes: list[str] = Field(default_factory=list)
    base_classes: list[str] = Field(default_factory=list)
    keep_base: bool = False
    shots: int | None = None
    seed: int | None = None
    support: list[SupportFile] = Field(default_factory=list)
    short_classes: dict[str, int] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    skipped: list[SkippedFile] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)
    calibration: Calibration | None = None
    domain: DomainCheck | None = None
    cv: CrossValidated | None = None
    unlabeled: list[UnlabeledFile] = Field(default_factory=list)
    """`adapt --unlabeled`: the images the encoder was aligned to (`alignment`)."""
    alignment: Alignment | None = None
    members: list[str] = Field(default_factory=list)
    """An ensemble's member folders (`members/<i>`, each an adapted folder of its own);
    the ensemble averages their calibrated probabilities. Empty for a single model."""
    weights_sha256: str | None = None
    """Of adapted.safetensors: weights copied from another adapted folder are refused."""

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def write(self, path: Path) -> None:
        text = json.dumps(self.as_json(), indent=2, ensure_ascii=False) + "\n"
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    @classmethod
    def read(cls, path: Path) -> AdaptedMeta:
        doc = _read(cls, path, "re-run fewshot adapt")
        if len(set(doc.classes)) != len(doc.classes):
            raise DataError("adapted.json names a class twice", path, "re-run fewshot adapt")
        return doc


@dataclass
class Prototypes:
    """prototypes.safetensors: per-class mean features of the base classes (one row per
    name in `class_names`), the mean feature of the base images (SimpleShot centring) and
    a seeded subset of base features (float16, at most BASE_FEATURES_PER_CLASS a class),
    from which a head centres power-transformed features (`method.power`) where no base
    image is at hand, and the base-domain statistics of the out-of-domain check
    (`fewshot.ood.DOMAIN_KEYS`). Files written before either existed load with `None`."""

    class_names: list[str]
    prototypes: Tensor
    base_mean: Tensor
    base_features: Tensor | None = None
    domain: dict[str, Tensor] | None = None
    output_mean: Tensor | None = None
    """With an embedding other than the encoder's output (model.json `embedding`): the
    base mean of the plain output, for the heads that read that (finetune)."""

    def save(self, path: Path) -> None:
        tensors = {"prototypes": self.prototypes, "base_mean": self.base_mean}
        if self.base_features is not None:
            tensors["base_features"] = self.base_features.half()
        if self.output_mean is not None:
            tensors["output_mean"] = self.output_mean
        if self.domain is not None:
            tensors.update(self.domain)
        save_tensors(path, tensors, {"class_names": json.dumps(self.class_names),
                                     "format_version": str(FORMAT_VERSION)})

    @classmethod
    def load(cls, path: Path) -> Prototypes:
        fix = "re-run the command that wrote the run (pretrain or meta-train)"
        try:
            with safe_open(str(path), "pt") as handle:
                meta = handle.metadata() or {}
                version = int(meta.get("format_version", 1))
                names = json.loads(meta["class_names"])
                prototypes, base_mean = handle.get_tensor("prototypes"), \
                    handle.get_tensor("base_mean")
                base_features = handle.get_tensor("base_features").float() \
                    if "base_features" in handle.keys() else None
                domain = {key: handle.get_tensor(key) for key in DOMAIN_KEYS} \
                    if set(DOMAIN_KEYS) <= set(handle.keys()) else None
                output_mean = handle.get_tensor("output_mean") \
                    if "output_mean" in handle.keys() else None
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            raise DataError(f"cannot read prototypes: {exc}", path, fix) from None
        if version > FORMAT_VERSION:
            raise UsageError("prototypes written by a newer fewshot", path, "upgrade fewshot")
        if prototypes.dim() != 2 or len(names) != prototypes.shape[0] \
                or base_mean.shape != prototypes.shape[1:] \
                or (base_features is not None and (base_features.dim() != 2 or
                                                   base_features.shape[1:] != base_mean.shape)):
            raise DataError("prototypes do not match their class names or features", path, fix)
        dim = base_mean.shape[0]
        if domain is not None and (domain["domain_mean"].shape != (dim,)
                                   or domain["domain_precision"].shape != (dim, dim)):
            raise DataError("prototypes' domain statistics do not match the features", path, fix)
        if output_mean is not None and output_mean.dim() != 1:
            raise DataError("prototypes' output_mean is not a vector", path, fix)
        return cls(list(names), prototypes, base_mean, base_features, domain, output_mean)


DOMAIN_KEYS = ("domain_mean", "domain_precision", "domain_threshold", "domain_base_scores")
"""Names of the base-domain statistics in prototypes.safetensors (see fewshot.ood)."""

BASE_FEATURES_PER_CLASS = 40
"""Base features kept in prototypes.safetensors per class (float16: about 40 KB a class
for 512-d features)."""


D = TypeVar("D", bound=Document)


def _read(cls: type[D], path: Path, fix: str) -> D:
    """Parse and validate one JSON document; every failure is one line naming the key."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path.name} is not valid JSON: {exc}", path, fix) from None
    if not isinstance(raw, dict):
        raise DataError(f"{path.name} is not a JSON object", path, fix)
    version = raw.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UsageError(f"{path.name} written by a newer fewshot", path.parent, "upgrade fewshot")
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or path.name
        raise DataError(f"{path.name} is invalid at '{key}': {err['msg']}", path, fix) from None
