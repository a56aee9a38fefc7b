"""Adapt a trained model to new classes from a folder of a few images each.

`adapt_folder` picks at most K support images per class (deterministically, by seed),
adapts the head on them, scores every remaining image (the leave-out estimate), and
returns an `Adapted` model that `fewshot.adapted` saves, loads and predicts with.

Support choice: each class's images are visited in a random order seeded from
`(seed, crc32(class name))`, so adding or removing a class never changes the support of
another; an unreadable file is listed, skipped, and the next one taken.
"""

from __future__ import annotations

import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fewshot.alignment import align_head, check_alignment_flags, require_unlabeled
from fewshot.assembly import load_model, model_transform
from fewshot.calibration import (
    fit_temperature,
    fold_count,
    made_worse,
    out_of_fold_logits,
    record,
)
from fewshot.data.files import load_many, sha256_file, try_load
from fewshot.device import pick_device
from fewshot.errors import DataError, UsageError
from fewshot.features import embed
from fewshot.methods import FewShotHead, parse_head_spec, select_options
from fewshot.metrics import leave_out_metrics
from fewshot.models.embedding import installed
from fewshot.ood import warning_line
from fewshot.report import confusion_table, log_adapt
from fewshot.run import RunDir, resolve_run
from fewshot.schema import ModelMeta


def warn(message: str) -> None:
    """Warnings print even with --quiet: a file or class is never dropped silently."""
    print(f"warning: {message}", file=sys.stderr)


# ---------------------------------------------------------------- choosing the support

@dataclass
class Selection:
    """Support and held-out files of an adapt folder, and what was skipped."""

    root: Path
    classes: list[str]
    support: list[tuple[Path, int]]
    support_images: Tensor
    heldout: list[tuple[Path, int]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    short: dict[str, int] = field(default_factory=dict)
    """Classes with fewer readable images than K: class -> support count."""


def class_order(count: int, seed: int, name: str) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
    return rng.permutation(count)


def select_support(root: str | Path, shots: int, seed: int, image_size: int,
                   min_classes: int = 2) -> Selection:
    """At most `shots` readable images per class as support; the rest held out."""
    from fewshot.data.folders import scan_folder, why_not_used

    root = Path(root)
    if shots < 1:
        raise UsageError("--shots must be at least 1", shots, "pass --shots 5, for example")
    folder = scan_folder(root)
    if not folder.samples:
        raise DataError("no images found", root, "put images in one sub-folder per class")
    skipped = [(path, why_not_used(path)) for path in folder.others]
    by_class: list[list[Path]] = [[] for _ in folder.classes]
    for path, label in folder.samples:
        by_class[label].append(path)
    support: list[tuple[Path, int]] = []
    arrays: list[np.ndarray] = []
    heldout: list[tuple[Path, int]] = []
    short: dict[str, int] = {}
    for label, (name, files) in enumerate(zip(folder.classes, by_class, strict=True)):
        if not files:
            raise DataError("class folder has no images", root / name,
                            "add images to it or remove the folder")
        order = [files[i] for i in class_order(len(files), seed, name)]
        taken = 0
        position = 0
        while taken < shots and position < len(order):
            path = order[position]
            position += 1
            result = try_load(path, image_size)
            if isinstance(result, str):
                skipped.append((path, result))
                continue
            support.append((path, label))
            arrays.append(result)
            taken += 1
        if taken == 0:
            raise DataError("class has no readable images", root / name,
                            "replace the unreadable files (listed above) or remove the folder")
        if taken < shots:
            short[name] = taken
        heldout.extend((path, label) for path in order[position:])
    if len(folder.classes) < min_classes:
        raise DataError("only one class in the folder", root,
                        "add a folder per class (at least two), or pass --keep-base to "
                        "tell the class apart from the model's base classes")
    for name, count in short.items():
        warn(f"class '{name}' has only {count} readable image(s), fewer than --shots "
             f"{shots}: all used as support, none held out")
    images = torch.from_numpy(np.stack(arrays))
    return Selection(root, list(folder.classes), support, images, heldout, skipped, short)


# ---------------------------------------------------------------- adapting a head

def default_method(meta: ModelMeta) -> str:
    """The head the model was trained with; `simpleshot` for a pretrain-only run."""
    if meta.kind == "pretrain" or not meta.head:
        return "simpleshot"
    return meta.head


def fit_head(head: FewShotHead, images: Tensor, labels: Tensor, transform,
             device: torch.device, extra_features: Tensor | None = None) -> None:
    """Adapt `head` to uint8 support images; `extra_features` adds one feature vector per
    further class (the base prototypes of --keep-base), labelled after the new classes.

    Feature-based heads see the embedded support (`on_features`), the same path
    evaluation uses; the others see the normalised images.
    """
    head.eval()
    if head.feature_based:
        features = embed(head.encoder, images, transform, device).to(device)
        if extra_features is not None:
            start = int(labels.max()) + 1
            features = torch.cat([features, extra_features.to(device, features.dtype)])
            labels = torch.cat([labels, torch.arange(start, start + len(extra_features))])
        with torch.no_grad(), head.on_features():
            head.process_support_set(features, labels.to(device))
    else:
        if extra_features is not None:
            raise keep_base_error(head.name)
        head.process_support_set(transform(images.to(device)), labels.to(device))
    head.eval()


def keep_base_error(method: str) -> UsageError:
    return UsageError(f"--keep-base needs a feature-based method, not '{method}'", "--method",
                      "use --method protonet, simpleshot or linear-probe with --keep-base")


# ---------------------------------------------------------------- the base model

class BaseModel:
    """A trained run directory, ready to adapt: `fewshot.load(RUN_DIR).adapt(DIR, shots=5)`."""

    def __init__(self, run: RunDir | str | Path | None = None) -> None:
        self.run = run if isinstance(run, RunDir) else resolve_run(run)
        self.meta = self.run.read_meta()
        if not self.run.model_path.is_file():
            raise UsageError("run has no model.safetensors", self.run.path,
                             "pass a run directory written by pretrain or meta-train")

    def __repr__(self) -> str:
        return f"BaseModel({str(self.run.path)!r}, head={self.meta.head!r})"

    def adapt(self, folder: str | Path, shots: int = 5, method: str | None = None,
              seed: int = 0, keep_base: bool = False, out: str | Path | None = None,
              score: bool = True, device: str = "cpu", quiet: bool = True,
              calibrate: bool = True, cv: bool = False,
              unlabeled: list[str | Path] | None = None, keep_batchnorm: bool = False,
              whiten: bool = False):
        """Adapt to the classes of `folder`; written to `out` when given. `method` is a
        head name, with options as `NAME:KEY=VALUE[,KEY=VALUE]`; `calibrate=False` keeps
        the head's raw softmax (temperature 1); `cv=True` chooses the method by k-fold
        over the support set instead (fewshot.cross_validation); `unlabeled` (folders of
        the new domain's images) aligns the encoder to them first (fewshot.alignment), and
        `keep_batchnorm` keeps its trained batch-norm statistics while doing so; `whiten`
        also whitens the features with the unlabeled images' covariance."""
        adapted = adapt_folder(self, folder, shots=shots, method=method, seed=seed,
                               keep_base=keep_base, score=score, device=device, quiet=quiet,
                               calibrate=calibrate, cv=cv, unlabeled=unlabeled,
                               keep_batchnorm=keep_batchnorm, whiten=whiten)
        if out is not None:
            adapted.save(out)
        return adapted


def build_for_adapt(base: BaseModel, method: str, seed: int, options: dict[str, Any]
                    ) -> tuple[FewShotHead, dict[str, Any]]:
    """The base model's encoder under `method`, and the JSON-able options it was built with
    (the trained head's options when it is the same head, the seed when the head takes
    one, and the options asked for; `load_model` adds the run's base-feature mean for
    heads that centre on it, restored from the adapted weights as a buffer)."""
    given = {**select_options(method, {"seed": seed}), **options}
    head, _ = load_model(base.run, head=method, **given)
    trained = dict(base.meta.head_options) if method == base.meta.head else {}
    return head, {**trained, **given}


def adapt_folder(base: BaseModel, folder: str | Path, shots: int, method: str | None = None,
                 seed: int = 0, keep_base: bool = False, score: bool = True,
                 device: str = "cpu", quiet: bool = True, calibrate: bool = True,
                 cv: bool = False, unlabeled: list[str | Path] | None = None,
                 keep_batchnorm: bool = False, whiten: bool = False):
    """Adapt `base` to the classes of `folder` (see the module docstring); `cv` chooses
    the method by cross-validation over the support set (fewshot.cross_validation);
    `unlabeled` aligns the encoder to those images before it sees the support set
    (`keep_batchnorm`: only the centring mean; `whiten`: whitened as well)."""
    from fewshot.adapted import Adapted
    from fewshot.data.unlabeled import find_unlabeled, refuse_overlap

    meta = base.meta
    dev = pick_device(device)
    torch.manual_seed(seed)
    if cv and method is not None:
        raise UsageError("--cv chooses the method itself", "--method",
                         "drop --method, or drop --cv")
    check_alignment_flags(keep_batchnorm, bool(unlabeled), whiten)
    if cv and unlabeled:
        raise UsageError("--cv does not yet align its candidates to unlabeled images",
                         "--unlabeled", "drop --cv and pick the method, or drop --unlabeled")
    if not cv:
        # an unknown method or option is exit 2 before any image is read
        method, options = parse_head_spec(method or default_method(meta), "method")
        head, options = build_for_adapt(base, method, seed, options)
        require_unlabeled(head, bool(unlabeled), "--method")
        # --keep-base needs a head that takes extra classes as prototypes: a feature-based
        # one whose number of ways is not fixed when it is built (ANIL's classifier is).
        if keep_base and (not head.feature_based or "ways" in head.options()):
            raise keep_base_error(method)
    size = meta.image_size
    selection = select_support(folder, shots, seed, size, min_classes=1 if keep_base else 2)
    base_names: list[str] = []
    base_prototypes = None
    stored = None
    if base.run.prototypes_path.is_file():
        stored = base.run.load_prototypes()
        base_names, base_prototypes = stored.class_names, stored.prototypes
    elif keep_base:
        base.run.load_prototypes()  # raises the one-line error
    classes = list(selection.classes)
    if keep_base:
        clash = sorted(set(classes) & set(base_names))
        if clash:
            raise DataError("new class has the name of a base class", selection.root / clash[0],
                            "rename the folder, or drop --keep-base")
        classes += base_names
    labels = torch.tensor([label for _, label in selection.support])
    transform = model_transform(meta)
    extra = base_prototypes if keep_base else None
    cv_record = None
    found, alignment, trained_view = None, None, None
    folds = fold_count(labels) if calibrate else 0
    if cv:  # the chosen head's out-of-fold logits are also its calibration folds
        cv_record, method, options, head, cv_logits, base_view = cross_validate(
            base, selection, labels, seed, transform, dev, extra, keep_base)
        out_of_fold = cv_logits if folds else None
    else:
        head.to(dev)
        if unlabeled:  # before the encoder sees any support image
            found = find_unlabeled(unlabeled, quiet)
            refuse_overlap(found, [p for p, _ in selection.support + selection.heldout],
                           f"the adapt folder {selection.root}", quiet=quiet)
            if not keep_batchnorm:  # the base-domain check needs the trained statistics
                trained_view = embed(head.encoder, selection.support_images, transform, dev)
            alignment = {"folders": [str(f) for f in found.folders],
                         **align_head(head, found.images(size, quiet), transform, dev, quiet,
                                      keep_batchnorm, whiten)}
        # the base encoder's view of the support, before any fitting changes the encoder
        base_view = embed(head.encoder, selection.support_images, transform, dev)
        out_of_fold = (calibration_folds(head, method, options, selection.support_images,
                                         base_view, labels, folds, seed, transform, dev, extra)
                       if folds else None)
    fit_head(head, selection.support_images, labels, transform, dev, extra)
    adapted = Adapted(
        head=head, classes=classes, method=method, head_options=options,
        info={"backbone": meta.backbone, "backbone_args": meta.backbone_args,
              "embedding": installed(head.encoder).model_dump(),
              "image_size": size, "normalization": meta.normalization.model_dump()},
    )
    adapted.provenance = provenance(base, selection, shots, seed, keep_base, base_names)
    adapted.provenance["cv"] = cv_record
    if found is not None:
        adapted.provenance["unlabeled"] = found.records()
        adapted.provenance["alignment"] = alignment
    adapted.selection = selection  # for an ensemble's scoring; not saved
    heldout = score_heldout(adapted, selection, len(selection.classes), quiet) if score \
        else None
    if heldout is not None:
        adapted.metrics, heldout_logits, heldout_labels, heldout_features = heldout
    else:
        adapted.metrics = {"heldout": None, "note": "held-out images not scored"}
        heldout_logits, heldout_labels = torch.empty(0, len(classes)), torch.empty(0).long()
        heldout_features = torch.empty(0, base_view.shape[1])
    adapted.calibration = calibration_record(out_of_fold, labels, folds, calibrate,
                                             None if cv else method, heldout_logits,
                                             heldout_labels)
    domain_stats = stored.domain if base.run.prototypes_path.is_file() else None
    support_view = base_view if head.feature_based else \
        embed(head.encoder, selection.support_images, transform, dev)
    adapted.support_features = support_view
    # the base-domain check sees the support as the trained encoder did
    checked, checked_heldout = (base_view, heldout_features if head.feature_based else None) \
        if trained_view is None else (trained_view, None)
    adapted.domain = domain_check(domain_stats, checked, checked_heldout, support_view,
                                  heldout_features, aligned=found is not None)
    if adapted.domain["out_of_domain"]:
        warn(warning_line(adapted.domain["base"]))
    elif adapted.domain["note"]:
        print(f"note: {adapted.domain['note']}", file=sys.stderr)
    if selection.skipped:
        warn(f"skipped {len(selection.skipped)} file(s) that could not be used:")
        for path, reason in selection.skipped:
            print(f"  {path}: {reason}", file=sys.stderr)
    return adapted


def adapt_command(folder: Path, shots: int, model: Path | RunDir, method: str | None,
                  out: Path | None, seed: int, keep_base: bool, device: str,
                  quiet: bool, use_wandb: bool = True, wandb_options: dict | None = None,
                  calibrate: bool = True,
                  ensemble: list[tuple[Path | RunDir, str | None]] | None = None,
                  cv: bool = False, unlabeled: list[Path] | None = None,
                  keep_batchnorm: bool = False, whiten: bool = False) -> Path:
    """`fewshot adapt`: adapt, write the adapted folder, print what was measured.
    `ensemble`: several (model, method) pairs adapted into one averaged model."""
    from fewshot.progress import console

    target = out if out is not None else Path("adapted") / Path(folder).resolve().name
    if ensemble:
        check_alignment_flags(keep_batchnorm, bool(unlabeled), whiten)  # one model: adapt_folder
        if cv:
            raise UsageError("--cv adapts one model with one method", "--cv",
                             "give at most one --model and one --method, or drop --cv")
        if unlabeled:
            raise UsageError("--unlabeled aligns one model with one method (not an "
                             "ensemble)", "--unlabeled",
                             "give at most one --model and one --method, or drop --unlabeled")
        return ensemble_command(folder, shots, ensemble, target, seed, keep_base, device,
                                quiet, calibrate, use_wandb, wandb_options)
    base = BaseModel(model)
    print(f"adapting {base.run.path} ({base.meta.kind} run, trained head {base.meta.head}, "
          f"{base.meta.backbone})", flush=True)
    adapted = adapt_folder(base, folder, shots=shots, method=method, seed=seed,
                           keep_base=keep_base, device=device, quiet=quiet, calibrate=calibrate,
                           cv=cv, unlabeled=unlabeled, keep_batchnorm=keep_batchnorm,
                           whiten=whiten)
    adapted.save(target)
    m = adapted.metrics
    if not quiet:
        counts = {name: 0 for name in adapted.provenance["new_classes"]}
        for item in adapted.provenance["support"]:
            counts[item["class"]] += 1
        console.print(f"adapted {base.run.path.name} with {adapted.method}: "
                      + ", ".join(f"{name} ({n} support)" for name, n in counts.items())
                      + (f" + {len(adapted.provenance['base_classes'])} base classes"
                         if keep_base else ""))
        if m.get("confusion"):
            console.print(confusion_table(m["confusion"]))
    if adapted.provenance.get("cv"):
        print(cv_line(adapted.provenance["cv"]))
    if m.get("heldout"):
        low, high = m["ci95"]
        print(f"leave-out accuracy: {100 * m['accuracy']:.1f}% ({m['correct']}/{m['heldout']} "
              f"held-out images; 95% CI {100 * low:.1f}-{100 * high:.1f}%, Wilson)")
    else:
        print(f"leave-out accuracy: n/a ({m.get('note')})")
    print(calibration_line(adapted.calibration))
    print(f"adapted model written to {target}")
    if use_wandb:
        log_adapt(adapted, target, quiet, **(wandb_options or {}))
    if not quiet:
        console.print(f"next: fewshot predict {target} IMAGES...")
    return target


def adapt_ensemble(pairs: list[tuple[Path | RunDir, str | None]], folder: str | Path,
                   shots: int, seed: int = 0, keep_base: bool = False, device: str = "cpu",
                   quiet: bool = True, calibrate: bool = True):
    """Adapt every (model, method) pair on the same support and average them: one
    ensemble, scored on the same held-out images as each member."""
    from fewshot.adapted import Ensemble
    from fewshot.calibration import ece

    members = []
    for model, method in pairs:
        base = BaseModel(model)
        members.append(adapt_folder(base, folder, shots=shots, method=method, seed=seed,
                                    keep_base=keep_base, device=device, quiet=quiet,
                                    calibrate=calibrate))
    supports = [[item["sha256"] for item in m.provenance["support"]] for m in members]
    if any(s != supports[0] for s in supports[1:]):
        raise UsageError("ensemble members chose different support images", folder,
                         "train the members at the same image size, or fix unreadable files")
    ensemble = Ensemble(members)
    selection = members[0].selection
    paths = [path for path, _ in selection.heldout]
    results = load_many(paths, ensemble.image_size, quiet, "reading held-out files (ensemble)")
    good = [i for i, r in enumerate(results) if not isinstance(r, str)]
    true = np.array([selection.heldout[i][1] for i in good], dtype=np.int64)
    scored = [m.metrics for m in members]
    if good:
        images = torch.from_numpy(np.stack([results[i] for i in good]))
        per_member = [(torch.softmax(m.logits(images), -1), m.probabilities(images))
                      for m in members]
        raw = torch.stack([r for r, _ in per_member]).mean(0).double()
        calibrated = torch.stack([c for _, c in per_member]).mean(0).double()
        labels = torch.from_numpy(true)
        ensemble.metrics = leave_out_metrics(true, calibrated.argmax(1).numpy(),
                                             ensemble.classes, len(selection.classes))
        fit = record(1.0, "members", torch.log(raw), labels)
        after = record(1.0, "members", torch.log(calibrated), labels)
        fit.update(ece_after=after["ece_after"], brier_after=after["brier_after"])
        fit["reliability"] = {"before": fit["reliability"]["before"],
                              "after": after["reliability"]["after"]}
        member_ece = [ece(c.double(), labels) for _, c in per_member]
    else:
        ensemble.metrics = leave_out_metrics(true, np.empty(0, dtype=np.int64),
                                             ensemble.classes, len(selection.classes))
        fit = record(1.0, "members", torch.empty(0, len(ensemble.classes)),
                     torch.empty(0).long())
        member_ece = [None] * len(members)
    ensemble.calibration = fit
    ensemble.metrics["members"] = [
        {"path": f"members/{i}", "base_model": m.provenance["base_model"]["path"],
         "method": m.method, "accuracy": metrics.get("accuracy"), "ece": e}
        for i, (m, metrics, e) in enumerate(zip(members, scored, member_ece, strict=True))]
    return ensemble


def ensemble_command(folder: Path, shots: int, pairs: list[tuple[Path | RunDir, str | None]],
                     target: Path, seed: int, keep_base: bool, device: str, quiet: bool,
                     calibrate: bool, use_wandb: bool = True,
                     wandb_options: dict | None = None) -> Path:
    ensemble = adapt_ensemble(pairs, folder, shots, seed, keep_base, device, quiet, calibrate)
    ensemble.save(target)
    for i, member in enumerate(ensemble.metrics["members"]):
        acc = member["accuracy"]
        print(f"member {i}: {member['base_model']} + {member['method']}: leave-out accuracy "
              + ("n/a" if acc is None else f"{100 * acc:.1f}%"))
    m = ensemble.metrics
    if m.get("heldout"):
        low, high = m["ci95"]
        print(f"ensemble leave-out accuracy: {100 * m['accuracy']:.1f}% ({m['correct']}/"
              f"{m['heldout']} held-out images; 95% CI {100 * low:.1f}-{100 * high:.1f}%, "
              "Wilson)")
    print(calibration_line(ensemble.calibration))
    print(f"ensemble of {len(pairs)} adapted models written to {target}")
    if use_wandb:
        log_adapt(ensemble, target, quiet, **(wandb_options or {}))
    return target


def cv_line(c: dict[str, Any]) -> str:
    others = ", ".join(f"{g['method']} {100 * g['accuracy']:.0f}%" for g in c["grid"]
                       if g["method"] != c["chosen"])
    return (f"cross-validation: {c['chosen']} chosen, {100 * c['accuracy']:.1f}% out of fold "
            f"({c['folds']} folds over {c['images']} support images; {others})")


def calibration_line(c: dict[str, Any]) -> str:
    what = {"k-fold": f"{c['folds']}-fold on the support set",
            "k-fold-proxy": f"{c['folds']}-fold on the support set, through {c['proxy']}",
            "uncalibrated": "uncalibrated: one image a class leaves nothing to fold",
            "off": "off (--no-calibrate)",
            "members": "each member on its own; the ensemble averages them"}[c["fit"]]
    line = f"calibration: temperature {c['temperature']:.3g} ({what})"
    if c.get("ece_before") is not None:
        line += (f"; held-out ECE {c['ece_before']:.3f} -> {c['ece_after']:.3f}, "
                 f"Brier {c['brier_before']:.3f} -> {c['brier_after']:.3f}")
        if made_worse(c):
            line += " (worse on held-out images: --no-calibrate keeps the raw softmax)"
    return line


def provenance(base: BaseModel, selection: Selection, shots: int, seed: int, keep_base: bool,
               base_names: list[str]) -> dict[str, Any]:
    def rel(path: Path) -> str:
        return path.relative_to(selection.root).as_posix()

    return {
        "base_model": {"path": str(base.run.path), "sha256": sha256_file(base.run.model_path),
                       "kind": base.meta.kind, "task": base.meta.task, "head": base.meta.head},
        "new_classes": selection.classes,
        "base_classes": base_names if keep_base else [],
        "keep_base": keep_base, "shots": shots, "seed": seed,
        "support": [{"path": rel(path), "class": selection.classes[label],
                     "sha256": sha256_file(path)} for path, label in selection.support],
        "short_classes": selection.short,
        "data": {"folder": str(selection.root), "heldout_files": len(selection.heldout)},
        "skipped": [{"path": str(p), "reason": r} for p, r in selection.skipped],
    }


def score_heldout(adapted, selection: Selection, new_classes: int, quiet: bool
                  ) -> tuple[dict[str, Any], Tensor, Tensor, Tensor]:
    """Predict every held-out image; unreadable ones are listed in `skipped` and left out.
    Returns the leave-out metrics and the held-out logits (uncalibrated), labels and
    features."""
    paths = [path for path, _ in selection.heldout]
    results = load_many(paths, adapted.image_size, quiet, "reading held-out files")
    good = [i for i, r in enumerate(results) if not isinstance(r, str)]
    for i, r in enumerate(results):
        if isinstance(r, str):
            selection.skipped.append((paths[i], r))
    true = np.array([selection.heldout[i][1] for i in good], dtype=np.int64)
    if good:
        images = torch.from_numpy(np.stack([results[i] for i in good]))
        features, logits = adapted.features_and_logits(images)
    else:
        features = torch.empty(0, 0)
        logits = torch.empty(0, len(adapted.classes))
    pred = logits.argmax(1).numpy() if good else np.empty(0, dtype=np.int64)
    adapted.provenance["skipped"] = [{"path": str(p), "reason": r} for p, r in selection.skipped]
    metrics = leave_out_metrics(true, pred, adapted.classes, new_classes)
    return metrics, logits, torch.from_numpy(true), features


# ---------------------------------------------------------------- calibration and domain

PROXY = {"finetune": "linear-probe"}
"""Heads that re-run the encoder, and the feature-based head whose folds stand in for
theirs (finetune starts from a linear probe on the same features)."""


def calibration_folds(head: FewShotHead, method: str, options: dict[str, Any],
                      images: Tensor, features: Tensor, labels: Tensor, folds: int,
                      seed: int, transform, device: torch.device,
                      extra_features: Tensor | None) -> Tensor:
    """Out-of-fold logits of the support images (fewshot.calibration), through the
    proxy of a head that is not re-run per fold."""
    from fewshot.methods import build_head

    fold_head = head
    if method in PROXY:
        proxy = PROXY[method]
        fold_head = build_head(proxy, head.encoder, **select_options(proxy, options)).to(device)
    return fold_logits(fold_head, images, features, labels, folds, seed, transform, device,
                       extra_features)


def fold_logits(head: FewShotHead, images: Tensor, features: Tensor, labels: Tensor,
                folds: int, seed: int, transform, device: torch.device,
                extra_features: Tensor | None) -> Tensor:
    """Each support image scored by `head` fitted on the other folds: on the embedded
    support for a feature-based head, on the images for the others."""
    ways = int(labels.max()) + 1

    def fit_predict(train: Tensor, train_labels: Tensor, test: Tensor) -> Tensor:
        head.eval()
        if head.feature_based:
            x, y = features[train].to(device), train_labels.to(device)
            if extra_features is not None:
                x = torch.cat([x, extra_features.to(device, x.dtype)])
                y = torch.cat([y, torch.arange(ways, ways + len(extra_features), device=device)])
            with torch.no_grad(), head.on_features():
                head.process_support_set(x, y)
                return head(features[test].to(device))
        head.process_support_set(transform(images[train].to(device)), train_labels.to(device))
        with torch.no_grad():
            return head(transform(images[test].to(device)))

    return out_of_fold_logits(fit_predict, labels, folds, seed)


def cross_validate(base: BaseModel, selection: Selection, labels: Tensor, seed: int,
                   transform, device: torch.device, extra_features: Tensor | None,
                   keep_base: bool) -> tuple[dict[str, Any], str, dict[str, Any], FewShotHead,
                                             Tensor, Tensor]:
    """`--cv` (fewshot.cross_validation): (record, method, options, head, the chosen
    head's out-of-fold logits, the base encoder's view of the support)."""
    from fewshot.cross_validation import candidates, choose

    folds = fold_count(labels)
    if not folds:
        counts = torch.bincount(labels)
        name = selection.classes[int(counts.argmin())]
        raise DataError("--cv needs at least 2 support images in every class",
                        selection.root / name, "add images to the class, or drop --cv")
    heads: dict[str, tuple[str, dict[str, Any], FewShotHead]] = {}
    features: Tensor | None = None
    for spec in candidates(base.meta.head if base.meta.kind != "pretrain" else None):
        name, options = parse_head_spec(spec, "method")
        head, options = build_for_adapt(base, name, seed, options)
        if keep_base and (not head.feature_based or "ways" in head.options()):
            continue
        heads[spec] = (name, options, head.to(device))
        if features is None:  # every candidate shares the base encoder's weights
            features = embed(head.encoder, selection.support_images, transform, device)
    assert features is not None

    def out_of_fold(spec: str) -> Tensor | None:
        if spec not in heads:
            return None
        return fold_logits(heads[spec][2], selection.support_images, features, labels, folds,
                           seed, transform, device, extra_features)

    record, logits = choose(list(heads), out_of_fold, labels, folds)
    name, options, head = heads[record["chosen"]]
    return record, name, options, head, logits, features


def calibration_record(out_of_fold: Tensor | None, labels: Tensor, folds: int,
                       calibrate: bool, method: str | None, heldout_logits: Tensor,
                       heldout_labels: Tensor) -> dict[str, Any]:
    """adapted.json's `calibration`: the fitted temperature, or why there is none."""
    if not calibrate:
        return record(1.0, "off", heldout_logits, heldout_labels)
    if out_of_fold is None:
        return record(1.0, "uncalibrated", heldout_logits, heldout_labels)
    temperature = fit_temperature(out_of_fold, labels)
    proxy = PROXY.get(method) if method else None  # None: the method's own folds
    return record(temperature, "k-fold-proxy" if proxy else "k-fold", heldout_logits,
                  heldout_labels, folds=folds, proxy=proxy)


def domain_check(stats: dict[str, Tensor] | None, base_view: Tensor,
                 heldout_base_view: Tensor | None, support_view: Tensor,
                 heldout_view: Tensor, aligned: bool = False) -> dict[str, Any]:
    """adapted.json's `domain`: the support against the base domain, and the reference
    predict scores images against (fewshot.ood). With `aligned` (`--unlabeled`) the base
    views are the encoder's before alignment: the base statistics were measured with its
    trained batch-norm statistics, and re-estimated ones would move every image away from
    them."""
    from fewshot.ood import BASE_MEASURE, base_check, support_threshold

    images = base_view if heldout_base_view is None or not len(heldout_base_view) \
        else torch.cat([base_view, heldout_base_view])
    check = base_check(stats, images)
    if check is not None and aligned:
        check["before_alignment"] = True
    note = None if check is not None else (
        "base model stores no domain statistics (prototypes.safetensors from an older "
        "fewshot, or none): out-of-domain check against the base domain skipped")
    heldout = heldout_view if len(heldout_view) else torch.empty(0, support_view.shape[1])
    return {"measure": BASE_MEASURE, "base": check,
            "support": support_threshold(support_view, heldout),
            "out_of_domain": bool(check and check["out_of_domain"]), "note": note}
