"""An adapted model: its directory on disk, and prediction on image files.

    <dir>/adapted.safetensors   every tensor needed to predict: encoder and head state,
                                including what the head computed from the support set
                                (prototypes, centroids, linear weights, fine-tuned layers)
    <dir>/adapted.json          classes, preprocessing, method, base model hash, support
                                files with content hashes, seed, versions, metrics
    <dir>/MODEL_CARD.md         intended use, data, metrics with CI, limitations

The directory is self-contained: predicting needs neither the base run nor the support
images. adapted.json is written last, so its presence marks a complete directory.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fewshot.errors import DataError, UsageError
from fewshot.methods import FewShotHead
from fewshot.schema import ADAPTED_JSON, AdaptedMeta, Preprocessing

WEIGHTS, META, CARD = "adapted.safetensors", ADAPTED_JSON, "MODEL_CARD.md"
RELIABILITY, CONFUSION, PER_CLASS = "reliability.png", "confusion.png", "per_class.png"


SUPPORT_FEATURES = "domain.support_features"
"""The support images' encoder features, the reference of predict's out-of-domain score."""

TASK_STATE = "task."
"""Prefix of a head's `task_state()` (the MAML family's adapted weights and support set)."""


def head_tensors(head: FewShotHead) -> dict[str, Tensor]:
    """All parameters and buffers, the non-persistent ones too (heads keep what they
    computed from the support set, prototypes and centroids, in non-persistent buffers),
    and the head's task state."""
    out = {name: p.detach() for name, p in head.named_parameters()}
    out.update({name: b.detach() for name, b in head.named_buffers()})
    out.update({f"{TASK_STATE}{k}": v for k, v in head.task_state().items()})
    return out


def restore_task_state(head: FewShotHead, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Give the head its task state back; returns the other tensors."""
    head.load_task_state({k.removeprefix(TASK_STATE): v for k, v in tensors.items()
                          if k.startswith(TASK_STATE)})
    return {k: v for k, v in tensors.items() if not k.startswith(TASK_STATE)}


def restore_tensors(head: nn.Module, tensors: dict[str, Tensor], where: Path) -> None:
    """Put `head_tensors` output back into a freshly built head of the same method.

    A layer the head creates while adapting (a linear classifier, `None` until then) is
    created here from the shapes of its `weight` and `bias`.
    """
    tensors = restore_task_state(head, tensors)
    prefixes = sorted({key.rsplit(".", 1)[0] for key in tensors if "." in key})
    for prefix in prefixes:
        parent_path, _, name = prefix.rpartition(".")
        try:
            parent = head.get_submodule(parent_path)
        except AttributeError:
            continue
        if name in parent.__dict__ and parent.__dict__[name] is None:
            weight, bias = tensors.get(f"{prefix}.weight"), tensors.get(f"{prefix}.bias")
            if weight is None or weight.dim() != 2:
                raise DataError(f"adapted weights have an unknown layer '{prefix}'", where,
                                "re-run fewshot adapt with this fewshot version")
            setattr(parent, name, nn.Linear(weight.shape[1], weight.shape[0],
                                            bias=bias is not None))
    for key, value in tensors.items():
        module_path, _, attr = key.rpartition(".")
        try:
            module = head.get_submodule(module_path)
        except AttributeError:
            module = None
        if module is not None and attr in dict(module.named_parameters(recurse=False)):
            setattr(module, attr, nn.Parameter(value, requires_grad=False))
        elif module is not None and attr in dict(module.named_buffers(recurse=False)):
            setattr(module, attr, value)  # a registered buffer stays one (and keeps its kind)
        else:
            raise DataError(f"adapted weights do not fit the method (unexpected '{key}')",
                            where, "re-run fewshot adapt with this fewshot version")
    missing = sorted({k for k in head_tensors(head) if not k.startswith(TASK_STATE)}
                     - set(tensors))
    if missing:
        raise DataError(f"adapted weights lack '{missing[0]}'", where,
                        "the file is incomplete; re-run fewshot adapt")


CLASS_ROWS = ("prototypes", "centroids", "linear.weight", "classifier.weight")
"""Tensors of a head with one row per class (those a head computed from the support)."""


def check_weights(doc: AdaptedMeta, weights: Path) -> None:
    """adapted.safetensors belongs to this adapted.json and fits its classes: checked from
    the file's hash and its header, before any tensor is read or any model built."""
    from safetensors import SafetensorError, safe_open

    from fewshot.data.files import sha256_file

    fix = "re-run fewshot adapt to write the folder again"
    if not weights.is_file():
        raise DataError("adapted folder has no adapted.safetensors", weights.parent, fix)
    if doc.weights_sha256 and sha256_file(weights) != doc.weights_sha256:
        raise DataError("adapted.safetensors is not the one adapted.json was written with",
                        weights, fix)
    try:
        with safe_open(str(weights), "pt") as handle:
            shapes = {key: handle.get_slice(key).get_shape() for key in handle.keys()}
            ways = int(handle.get_tensor(f"{TASK_STATE}ways")) \
                if f"{TASK_STATE}ways" in shapes else None
    except (SafetensorError, OSError) as exc:
        raise DataError(f"cannot read adapted weights: {exc}", weights, fix) from None
    rows = {key: shape[0] for key, shape in shapes.items()
            if key.endswith(CLASS_ROWS) and shape and not key.startswith("encoder.")}
    if ways is not None:
        rows[f"{TASK_STATE}ways"] = ways
    for key, count in rows.items():
        if key.endswith("classifier.weight") and ways is not None:
            continue  # the MAML family's classifier has its built width; ways counts
        if count != len(doc.classes):
            raise DataError(f"adapted.json names {len(doc.classes)} classes but the weights "
                            f"have {count} ('{key}')", weights.parent, fix)


def draw_metrics(metrics: dict[str, Any], out: Path, method: str) -> None:
    """confusion.png and per_class.png from the held-out scores, when matplotlib is
    installed (otherwise one line says they were skipped)."""
    import sys

    from fewshot import plots

    if not metrics.get("heldout"):
        return
    if not plots.available():
        print(f"note: skipped confusion.png and per_class.png: matplotlib is not installed "
              f"({plots.INSTALL_HINT})", file=sys.stderr)
        return
    if metrics.get("confusion"):
        plots.confusion_matrix(metrics["confusion"], out / CONFUSION,
                               f"{method}: held-out confusion")
    if metrics.get("per_class"):
        plots.per_class_sensitivity(metrics["per_class"], out / PER_CLASS,
                                    f"{method}: sensitivity on held-out images")


def writable_folder(out: str | Path) -> Path:
    """`out` as a folder an adapted model may be written to: new, empty, or an adapted
    model's (which it replaces); anything else is refused before a file is written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError("output path is a file", out, "pass a folder to --out")
    if out.is_dir() and any(out.iterdir()) and not (out / META).is_file():
        raise UsageError("output folder exists and is not an adapted model", out,
                         "choose another --out, or empty the folder")
    return out


class Predictor:
    """What `fewshot predict` needs of a model, a single adapted one or an ensemble:
    `classes`, `image_size`, `transductive`, `score(images)` and `support_hashes()`."""

    classes: list[str]
    image_size: int
    transductive: bool

    def score(self, images: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        raise NotImplementedError

    def support_hashes(self) -> set[str]:
        raise NotImplementedError

    def predict(self, paths: str | Path | list[str | Path], top_k: int | None = None,
                reject_below: float | None = None, batch_size: int = 64,
                quiet: bool = True) -> list[dict[str, Any]]:
        """One record per image file (folders are read recursively): `path`, `prediction`,
        `probability` (calibrated), `probabilities` per class, `top_k`, `ood_score` and
        `out_of_domain` (against the support, fewshot.ood), `in_support` (the file's
        content is one of the support images'), and `error` (None when read).

        `reject_below`: the prediction is `unknown` when the top probability is lower.
        """
        from fewshot.data.files import expand_paths, load_many, sha256_file

        files = expand_paths([paths] if isinstance(paths, str | Path) else paths, quiet)
        if self.transductive:  # the images of one call are classified jointly
            batch_size = max(len(files), 1)
        records: list[dict[str, Any]] = []
        k = min(top_k or 0, len(self.classes))
        support = self.support_hashes()
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            results = load_many(chunk, self.image_size)
            good = [i for i, r in enumerate(results) if not isinstance(r, str)]
            probs, ood, flags = (self.score(torch.from_numpy(np.stack([results[i]
                                                                       for i in good])))
                                 if good else (None, None, None))
            row_of = {i: row for row, i in enumerate(good)}
            for i, path in enumerate(chunk):
                if i not in row_of:
                    records.append({"path": str(path), "prediction": None, "probability": None,
                                    "probabilities": {}, "top_k": [], "ood_score": None,
                                    "out_of_domain": None, "in_support": None,
                                    "error": results[i]})
                    continue
                assert probs is not None
                row = row_of[i]
                p = probs[row]
                order = torch.argsort(p, descending=True, stable=True).tolist()
                best = float(p[order[0]])
                rejected = reject_below is not None and best < reject_below
                records.append({
                    "path": str(path),
                    "prediction": "unknown" if rejected else self.classes[order[0]],
                    "probability": best,
                    "probabilities": {c: float(v) for c, v in zip(self.classes, p.tolist(),
                                                                   strict=True)},
                    "top_k": [(self.classes[j], float(p[j])) for j in order[:k]],
                    "ood_score": None if ood is None else float(ood[row]),
                    "out_of_domain": None if flags is None else bool(flags[row]),
                    "in_support": sha256_file(path) in support,
                    "error": None,
                })
        return records


class Adapted(Predictor):
    """A model adapted to new classes: `predict(paths)`, `save(dir)`, `Adapted.load(dir)`."""

    def __init__(self, head: nn.Module, classes: list[str], method: str,
                 head_options: dict[str, Any], info: dict[str, Any],
                 provenance: dict[str, Any] | None = None,
                 metrics: dict[str, Any] | None = None,
                 calibration: dict[str, Any] | None = None) -> None:
        from fewshot.data.images import Normalize

        self.head = head.eval()
        self.classes = list(classes)
        self.method = method
        self.head_options = head_options
        self.info = info
        self.provenance = provenance or {}
        self.metrics = metrics or {}
        self.calibration = calibration
        """`schema.Calibration` content; its temperature divides the logits."""
        self.domain: dict[str, Any] | None = None
        """`schema.DomainCheck` content, and `support_features` scored by predict."""
        self.support_features: Tensor | None = None
        self.transform = Normalize(**info["normalization"])

    def __repr__(self) -> str:
        return f"Adapted(method={self.method!r}, classes={self.classes!r})"

    @property
    def image_size(self) -> int:  # type: ignore[override]
        return int(self.info["image_size"])

    @property
    def temperature(self) -> float:
        """Softmax temperature of the calibrated probabilities (1 when uncalibrated)."""
        return float(self.calibration["temperature"]) if self.calibration else 1.0

    @property
    def transductive(self) -> bool:  # type: ignore[override]
        return bool(self.head.transductive)

    def joint(self, images: int) -> bool:
        """Whether `images` predicted in one call are classified as one problem."""
        return self.head.joint(images)

    @property
    def device(self) -> torch.device:
        # a pixels encoder has no parameters: any tensor of the head tells the device
        tensors = itertools.chain(self.head.parameters(), self.head.buffers())
        return next(tensors, torch.empty(0)).device

    @torch.no_grad()
    def logits(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """Uncalibrated logits for uint8 images `[N, C, H, W]` (float32, on the CPU)."""
        self.head.eval()
        device = self.device
        if self.head.transductive:  # one problem: every image of the call at once
            batch_size = max(len(images), 1)
        out = [self.head(self.transform(images[start:start + batch_size].to(device))).float()
               .cpu() for start in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.empty(0, len(self.classes))

    # ------------------------------------------------------------ prediction
    def probabilities(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """Calibrated softmax over the classes for uint8 images `[N, C, H, W]`."""
        return torch.softmax(self.logits(images, batch_size) / self.temperature, dim=-1)

    @torch.no_grad()
    def features_and_logits(self, images: Tensor, batch_size: int = 64
                            ) -> tuple[Tensor, Tensor]:
        """Encoder features (what the out-of-domain check scores) and uncalibrated logits;
        a feature-based head classifies the features, so the encoder runs once."""
        from fewshot.features import embed

        device = self.device
        features = embed(self.head.encoder, images, self.transform, device, batch_size)
        if not self.head.feature_based:
            return features, self.logits(images, batch_size)
        self.head.eval()
        with self.head.on_features():
            if self.head.transductive:
                logits = self.head(features.to(device)).float().cpu()
            else:
                logits = torch.cat([self.head(features[i:i + batch_size].to(device)).float()
                                    .cpu() for i in range(0, len(features), batch_size)]) \
                    if len(features) else torch.empty(0, len(self.classes))
        return features, logits

    def score(self, images: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Calibrated probabilities, out-of-domain scores and verdicts (None without a
        support reference) of uint8 images."""
        from fewshot.ood import nearest_support

        features, logits = self.features_and_logits(images)
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.support_features is None or len(images) == 0:
            return probs, None, None
        ood = nearest_support(features, self.support_features)
        threshold = (self.domain or {}).get("support", {}).get("threshold")
        flags = None if threshold is None else ood > threshold
        return probs, ood, flags

    def support_hashes(self) -> set[str]:
        return {item["sha256"] for item in self.provenance.get("support", [])}

    # ------------------------------------------------------------ saving and loading
    def document(self) -> AdaptedMeta:
        """The content of adapted.json (validated by its schema as it is built)."""
        return AdaptedMeta(
            method=self.method, head_options=self.head_options, protocol=self.head.protocol,
            classes=self.classes,
            backbone=self.info["backbone"], backbone_args=self.info.get("backbone_args", {}),
            embedding=self.info.get("embedding", {}),
            preprocessing=Preprocessing(image_size=self.image_size,
                                        normalization=self.info["normalization"]),
            **self.provenance, metrics=self.metrics, calibration=self.calibration,
            domain=self.domain)

    def save(self, out: str | Path) -> Path:
        """Write the adapted directory (atomic files; adapted.json last)."""
        from fewshot.data.files import atomic_write, save_tensors, sha256_file
        from fewshot.model_card import render_card

        out = writable_folder(out)
        doc = self.document()
        # One metadata key: safetensors writes a metadata map in no fixed order, and the
        # same inputs must give byte-identical weights.
        tensors = head_tensors(self.head)
        if self.support_features is not None:
            tensors[SUPPORT_FEATURES] = self.support_features.float().contiguous()
        save_tensors(out / WEIGHTS, tensors, {"format": "fewshot-adapted"})
        doc.weights_sha256 = sha256_file(out / WEIGHTS)
        self.draw_reliability(out)
        draw_metrics(self.metrics, out, self.method)
        card = render_card(doc.as_json(), (out / RELIABILITY).is_file())
        atomic_write(out / CARD, lambda tmp: tmp.write_text(card, encoding="utf-8"))
        doc.write(out / META)
        return out

    def draw_reliability(self, out: Path) -> None:
        """reliability.png from the held-out images, when matplotlib is installed."""
        import sys

        from fewshot import plots

        bins = (self.calibration or {}).get("reliability")
        if not bins:
            return
        if not plots.available():
            print(f"note: skipped reliability.png: matplotlib is not installed "
                  f"({plots.INSTALL_HINT})", file=sys.stderr)
            return
        plots.reliability_diagram(bins, out / RELIABILITY, self.temperature,
                                  f"{self.method}, held-out images")

    @classmethod
    def load(cls, path: str | Path) -> Adapted | Ensemble:  # type: ignore[return]
        """An adapted folder; an ensemble's folder loads as an `Ensemble`."""
        from fewshot.data.files import load_tensors
        from fewshot.methods import build_head
        from fewshot.models import build_backbone
        from fewshot.models.embedding import install

        path = Path(path)
        if not path.is_dir():
            raise UsageError("adapted model folder not found", path,
                             "pass the folder written by fewshot adapt")
        if not (path / META).is_file():
            raise UsageError("not an adapted model folder (no adapted.json)", path,
                             "pass the folder written by fewshot adapt")
        doc = AdaptedMeta.read(path / META)
        if doc.members:
            return Ensemble.load_members(path, doc)
        check_weights(doc, path / WEIGHTS)
        prep = doc.preprocessing
        encoder = build_backbone(doc.backbone, image_size=prep.image_size, **doc.backbone_args)
        head = build_head(doc.method, encoder, **doc.head_options)
        tensors = load_tensors(path / WEIGHTS)
        support_features = tensors.pop(SUPPORT_FEATURES, None)
        restore_tensors(head, tensors, path / WEIGHTS)
        install(encoder, doc.embedding)
        info = {"backbone": doc.backbone, "backbone_args": doc.backbone_args,
                "embedding": doc.embedding.model_dump(),
                "image_size": prep.image_size, "normalization": prep.normalization.model_dump()}
        provenance = doc.as_json()
        for key in ("format_version", "fewshot_version", "kind", "method", "head_options",
                    "protocol", "classes", "backbone", "backbone_args", "embedding",
                    "preprocessing",
                    "metrics", "weights_sha256", "calibration", "domain", "members"):
            provenance.pop(key)
        adapted = cls(head, doc.classes, doc.method, doc.head_options, info, provenance,
                      doc.metrics, doc.calibration.model_dump() if doc.calibration else None)
        adapted.domain = doc.domain.model_dump() if doc.domain else None
        adapted.support_features = support_features
        return adapted


MEMBER = re.compile(r"members/\d+")


class Ensemble(Predictor):
    """Several adapted models of the same classes: the mean of their calibrated
    probabilities. Saved as one folder with each member in `members/<i>/` (an adapted
    folder of its own) and an adapted.json that lists them."""

    method = "ensemble"
    temperature = 1.0
    """Each member carries its own; the mean of calibrated probabilities is not rescaled."""

    def __init__(self, members: list[Adapted], metrics: dict[str, Any] | None = None,
                 calibration: dict[str, Any] | None = None) -> None:
        if len(members) < 2:
            raise UsageError("an ensemble needs at least two members", "--model",
                             "pass --model twice or more, or several --method")
        first = members[0]
        for m in members[1:]:
            if m.classes != first.classes:
                raise UsageError("ensemble members answer different classes", m.method,
                                 "adapt every member on the same folder")
            if m.image_size != first.image_size:
                raise UsageError(f"ensemble members take different image sizes "
                                 f"({first.image_size} and {m.image_size} px)", "--model",
                                 "ensemble models trained at the same image size")
        self.members = members
        self.classes = list(first.classes)
        self.metrics = metrics or {}
        self.calibration = calibration
        self.provenance = dict(first.provenance)

    def __repr__(self) -> str:
        return f"Ensemble({[m.method for m in self.members]!r}, classes={self.classes!r})"

    @property
    def image_size(self) -> int:  # type: ignore[override]
        return self.members[0].image_size

    @property
    def transductive(self) -> bool:  # type: ignore[override]
        return any(m.transductive for m in self.members)

    def joint(self, images: int) -> bool:
        return any(m.joint(images) for m in self.members)

    def probabilities(self, images: Tensor, batch_size: int = 64) -> Tensor:
        return torch.stack([m.probabilities(images, batch_size) for m in self.members]).mean(0)

    def score(self, images: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Mean probabilities; the members' out-of-domain scores averaged, and an image
        out of domain when any member says so."""
        scored = [m.score(images) for m in self.members]
        probs = torch.stack([p for p, _, _ in scored]).mean(0)
        oods = [o for _, o, _ in scored if o is not None]
        flags = [f for _, _, f in scored if f is not None]
        return (probs, torch.stack(oods).mean(0) if oods else None,
                torch.stack(flags).any(0) if flags else None)

    def support_hashes(self) -> set[str]:
        return set().union(*(m.support_hashes() for m in self.members))

    def domain_summary(self) -> dict[str, Any]:
        """Out of domain when any member's check says so; each member keeps its own."""
        checks = [m.domain for m in self.members if m.domain]
        flagged = [i for i, m in enumerate(self.members) if m.domain and
                   m.domain.get("out_of_domain")]
        return {"measure": checks[0]["measure"] if checks else "none",
                "out_of_domain": bool(flagged),
                "note": "each member's folder (members/<i>/adapted.json) holds its own check"
                        + (f"; out of domain for member(s) {flagged}" if flagged else "")}

    def document(self) -> AdaptedMeta:
        first = self.members[0].document()
        provenance = {k: v for k, v in self.provenance.items() if k != "base_model"}
        return AdaptedMeta(
            method="ensemble", protocol="transductive" if self.transductive else "inductive",
            classes=self.classes,
            backbone="+".join(m.info["backbone"] for m in self.members),
            preprocessing=first.preprocessing, **provenance, metrics=self.metrics,
            calibration=self.calibration, domain=self.domain_summary(),
            members=[f"members/{i}" for i in range(len(self.members))])

    def save(self, out: str | Path) -> Path:
        from fewshot.data.files import atomic_write
        from fewshot.model_card import render_card

        out = writable_folder(out)
        (out / META).unlink(missing_ok=True)  # incomplete until written again, last
        for i, member in enumerate(self.members):
            member.save(out / "members" / str(i))
        doc = self.document()
        draw_metrics(self.metrics, out, "ensemble")
        bins = (self.calibration or {}).get("reliability")
        if bins:
            from fewshot import plots

            if plots.available():
                plots.reliability_diagram(bins, out / RELIABILITY, 1.0,
                                          "ensemble, held-out images",
                                          before="mean of raw softmax",
                                          after="mean of calibrated members")
        card = render_card(doc.as_json(), (out / RELIABILITY).is_file())
        atomic_write(out / CARD, lambda tmp: tmp.write_text(card, encoding="utf-8"))
        doc.write(out / META)
        return out

    @classmethod
    def load_members(cls, path: Path, doc: AdaptedMeta) -> Ensemble:
        members = []
        for name in doc.members:
            if not MEMBER.fullmatch(name):
                raise DataError(f"adapted.json names a member outside members/: {name!r}",
                                path / META, "re-run fewshot adapt")
            member = Adapted.load(path / name)
            if isinstance(member, Ensemble):
                raise DataError("an ensemble member is itself an ensemble", path / name,
                                "re-run fewshot adapt")
            members.append(member)
        ensemble = cls(members, doc.metrics,
                       doc.calibration.model_dump() if doc.calibration else None)
        if ensemble.classes != doc.classes:
            raise DataError("adapted.json's classes differ from its members'", path / META,
                            "re-run fewshot adapt")
        return ensemble
