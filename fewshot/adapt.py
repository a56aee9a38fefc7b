"""Adapt a trained model to new classes from a folder of a few images each.

`adapt_folder` picks at most K support images per class (deterministically, by seed),
adapts the head on them, scores every remaining image (the leave-out estimate), and
returns an `Adapted` model that `fewshot.adapted` saves, loads and predicts with.

Support choice: each class's images are visited in a random order seeded from
`(seed, crc32(class name))`, so adding or removing a class never changes the support of
another; an unreadable file is listed, skipped, and the next one taken.
"""

from __future__ import annotations

import inspect
import math
import statistics
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fewshot.errors import DataError, FewShotError, UsageError
from fewshot.run import RUNS, RunDir, resolve_run

CONFUSION_MIN_HELDOUT = 2
"""A confusion matrix is reported when every class has at least this many held-out images."""


def warn(message: str) -> None:
    """Warnings print even with --quiet: a file or class is never dropped silently."""
    print(f"warning: {message}", file=sys.stderr)


# ---------------------------------------------------------------- reading images

def try_load(path: Path, size: int) -> np.ndarray | str:
    """uint8 `[C, H, W]` of one image, or the reason it cannot be read."""
    from fewshot.data.folders import load_tensor

    try:
        return load_tensor(path, size)
    except FewShotError as exc:
        return exc.what
    except Exception as exc:  # a decoder plug-in may raise anything on a damaged file
        return f"cannot read image: {type(exc).__name__}: {exc}"


def load_many(paths: list[Path], size: int, quiet: bool = True,
              description: str = "reading images") -> list[np.ndarray | str]:
    """`try_load` over many files in threads (Pillow releases the GIL), in order."""
    from fewshot.tracking import track

    if not paths:
        return []
    with ThreadPoolExecutor() as pool:
        return list(track(pool.map(lambda p: try_load(p, size), paths), len(paths),
                          description, quiet))


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
    from fewshot.data.folders import scan_folder

    root = Path(root)
    if shots < 1:
        raise UsageError("--shots must be at least 1", shots, "pass --shots 5, for example")
    folder = scan_folder(root)
    if not folder.samples:
        raise DataError("no images found", root, "put images in one sub-folder per class")
    skipped = [(path, "not an image file (by extension)") for path in folder.others]
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

def head_accepts(name: str) -> set[str]:
    """Constructor options a registered head names explicitly."""
    import fewshot.methods.builtin  # noqa: F401  (registers the built-in heads)
    from fewshot.methods.base import HEADS

    if name not in HEADS:
        raise UsageError("unknown method", name, f"choose one of {sorted(HEADS)}")
    return set(inspect.signature(HEADS[name]).parameters)


def default_method(meta: dict[str, Any]) -> str:
    """The head the model was trained with; `simpleshot` for a pretrain-only run."""
    if meta.get("kind") == "pretrain" or not meta.get("head"):
        return "simpleshot"
    return str(meta["head"])


def fit_head(head: nn.Module, images: Tensor, labels: Tensor, transform,
             device: torch.device, extra_features: Tensor | None = None) -> None:
    """Adapt `head` to uint8 support images; `extra_features` adds one feature vector per
    further class (the base prototypes of --keep-base), labelled after the new classes.

    Feature-based heads see the embedded support (encoder swapped for an identity while
    they fit), the same path evaluation uses; the others see the normalised images.
    """
    from fewshot.train.images import embed

    head.eval()
    if head.feature_based:
        features = embed(head.encoder, images, transform, device).to(device)
        if extra_features is not None:
            start = int(labels.max()) + 1
            features = torch.cat([features, extra_features.to(device, features.dtype)])
            labels = torch.cat([labels, torch.arange(start, start + len(extra_features))])
        encoder, head.encoder = head.encoder, nn.Identity()
        try:
            with torch.no_grad():
                head.process_support_set(features, labels.to(device))
        finally:
            head.encoder = encoder
    else:
        if extra_features is not None:
            raise keep_base_error(head.name)
        head.process_support_set(transform(images.to(device)), labels.to(device))
    head.eval()


def keep_base_error(method: str) -> UsageError:
    return UsageError(f"--keep-base needs a feature-based method, not '{method}'", "--method",
                      "use --method protonet, simpleshot or linear-probe with --keep-base")


# ---------------------------------------------------------------- leave-out scores

def wilson_interval(correct: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion: sound for small n and for 0% or 100%."""
    if total == 0:
        return float("nan"), float("nan")
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def leave_out_metrics(true: np.ndarray, pred: np.ndarray, classes: list[str],
                      new_classes: int) -> dict[str, Any]:
    """Accuracy with a 95% Wilson CI over held-out images, per-class sensitivity, and
    the confusion matrix (rows true new class, columns predicted class) when every new
    class has at least CONFUSION_MIN_HELDOUT held-out images."""
    total = int(len(true))
    if total == 0:
        return {"heldout": 0, "accuracy": None, "ci95": None,
                "ci_method": "Wilson score interval over held-out images",
                "note": "no held-out images: put more than --shots images in a class "
                        "to get a leave-out estimate"}
    correct = int((true == pred).sum())
    low, high = wilson_interval(correct, total)
    per_class = {}
    for c in range(new_classes):
        mask = true == c
        n = int(mask.sum())
        if n:
            hits = int((pred[mask] == c).sum())
            per_class[classes[c]] = {"heldout": n, "correct": hits, "sensitivity": hits / n}
    metrics: dict[str, Any] = {
        "heldout": total, "correct": correct, "accuracy": correct / total,
        "ci95": [low, high], "ci_method": "Wilson score interval over held-out images",
        "per_class": per_class,
    }
    counts = np.bincount(true, minlength=new_classes)[:new_classes]
    if (counts >= CONFUSION_MIN_HELDOUT).all():
        matrix = np.zeros((new_classes, len(classes)), dtype=np.int64)
        np.add.at(matrix, (true, pred), 1)
        metrics["confusion"] = {"rows": classes[:new_classes], "columns": classes,
                                "matrix": matrix.tolist()}
    return metrics


# ---------------------------------------------------------------- the base model

def quickstart_run(quiet: bool = False) -> RunDir:
    """`runs/latest`, else the quickstart model, trained first (with a message)."""
    if (RUNS / "latest").exists():
        return resolve_run(None)
    from fewshot.config import load_config
    from fewshot.train.meta_train import meta_train

    print("no model at runs/latest: training the quickstart model first "
          "(fewshot meta-train, a few minutes on a CPU)", file=sys.stderr)
    return meta_train(load_config(), quiet=quiet)


class BaseModel:
    """A trained run directory, ready to adapt: `fewshot.load(RUN_DIR).adapt(DIR, shots=5)`."""

    def __init__(self, run: RunDir | str | Path | None = None) -> None:
        self.run = run if isinstance(run, RunDir) else (
            quickstart_run() if run is None else resolve_run(run))
        self.meta = self.run.read_meta()
        if not self.run.model_path.is_file():
            raise UsageError("run has no model.safetensors", self.run.path,
                             "pass a run directory written by pretrain or meta-train")

    def __repr__(self) -> str:
        return f"BaseModel({str(self.run.path)!r}, head={self.meta.get('head')!r})"

    def adapt(self, folder: str | Path, shots: int = 5, method: str | None = None,
              seed: int = 0, keep_base: bool = False, out: str | Path | None = None,
              score: bool = True, device: str = "cpu", quiet: bool = True):
        """Adapt to the classes of `folder`; written to `out` when given."""
        adapted = adapt_folder(self, folder, shots=shots, method=method, seed=seed,
                               keep_base=keep_base, score=score, device=device, quiet=quiet)
        if out is not None:
            adapted.save(out)
        return adapted


def sha256_file(path: Path) -> str:
    import hashlib

    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def build_for_adapt(base: BaseModel, method: str, seed: int):
    """The base model's encoder under `method`, and the JSON-able options it was built with
    (the trained head's options when it is the same head, plus the seed; `load_model`
    adds the run's base-feature mean for heads that centre on it, restored from the
    adapted weights as a buffer)."""
    from fewshot.models.load import load_model

    accepts = head_accepts(method)
    options: dict[str, Any] = (dict(base.meta.get("head_options", {}))
                               if method == base.meta.get("head") else {})
    extra: dict[str, Any] = {}
    if "seed" in accepts:
        options["seed"] = extra["seed"] = seed
    head, _ = load_model(base.run, head=method, **extra)
    return head, options


def adapt_folder(base: BaseModel, folder: str | Path, shots: int, method: str | None = None,
                 seed: int = 0, keep_base: bool = False, score: bool = True,
                 device: str = "cpu", quiet: bool = True):
    """Adapt `base` to the classes of `folder` (see the module docstring)."""
    from fewshot.adapted import Adapted
    from fewshot.data.images import IMAGENET_MEAN, IMAGENET_STD, Normalize
    from fewshot.train.device import pick_device

    meta = base.meta
    method = method or default_method(meta)
    head_accepts(method)  # unknown method: exit 2 before reading any image
    from fewshot.methods.base import HEADS

    # `is not True`: ANIL's feature_based is a per-instance property, and --keep-base
    # needs a head that takes extra classes as prototypes, which ANIL's classifier is not.
    if keep_base and HEADS[method].feature_based is not True:
        raise keep_base_error(method)
    size = int(meta["image_size"])
    selection = select_support(folder, shots, seed, size, min_classes=1 if keep_base else 2)
    base_names: list[str] = []
    base_prototypes = None
    if base.run.prototypes_path.is_file():
        base_names, base_prototypes, _ = base.run.load_prototypes()
    elif keep_base:
        base.run.load_prototypes()  # raises the one-line error
    classes = list(selection.classes)
    if keep_base:
        clash = sorted(set(classes) & set(base_names))
        if clash:
            raise DataError("new class has the name of a base class", selection.root / clash[0],
                            "rename the folder, or drop --keep-base")
        classes += base_names
    norm = meta.get("normalization") or {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    transform = Normalize(**norm)
    dev = pick_device(device)
    torch.manual_seed(seed)
    head, options = build_for_adapt(base, method, seed)
    head.to(dev)
    labels = torch.tensor([label for _, label in selection.support])
    fit_head(head, selection.support_images, labels, transform, dev,
             base_prototypes if keep_base else None)
    adapted = Adapted(
        head=head, classes=classes, method=method, head_options=options,
        info={"backbone": meta["backbone"], "backbone_args": meta.get("backbone_args", {}),
              "image_size": size, "normalization": norm},
    )
    adapted.provenance = provenance(base, selection, shots, seed, keep_base, base_names)
    if score:
        adapted.metrics = score_heldout(adapted, selection, len(selection.classes), quiet)
    else:
        adapted.metrics = {"heldout": None, "note": "held-out images not scored"}
    if selection.skipped:
        warn(f"skipped {len(selection.skipped)} file(s) that could not be used:")
        for path, reason in selection.skipped:
            print(f"  {path}: {reason}", file=sys.stderr)
    return adapted


def adapt_command(folder: Path, shots: int, model: Path | None, method: str | None,
                  out: Path | None, seed: int, keep_base: bool, device: str,
                  quiet: bool, use_wandb: bool = True, wandb_options: dict | None = None
                  ) -> Path:
    """`fewshot adapt`: adapt, write the adapted folder, print what was measured."""
    from fewshot.tracking import console

    base = BaseModel(model if model is not None else quickstart_run(quiet))
    adapted = adapt_folder(base, folder, shots=shots, method=method, seed=seed,
                           keep_base=keep_base, device=device, quiet=quiet)
    target = out if out is not None else Path("adapted") / Path(folder).resolve().name
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
    if m.get("heldout"):
        low, high = m["ci95"]
        print(f"leave-out accuracy: {100 * m['accuracy']:.1f}% ({m['correct']}/{m['heldout']} "
              f"held-out images; 95% CI {100 * low:.1f}-{100 * high:.1f}%, Wilson)")
    else:
        print(f"leave-out accuracy: n/a ({m.get('note')})")
    print(f"adapted model written to {target}")
    if use_wandb:
        log_adapt(adapted, target, quiet, **(wandb_options or {}))
    if not quiet:
        console.print(f"next: fewshot predict {target} IMAGES...")
    return target


def log_adapt(adapted, target: Path, quiet: bool, *, project: str = "fewshot",
              entity: str | None = None, name: str | None = None,
              log_model: bool = False) -> None:
    """An `adapt` run in W&B (job_type `adapt`): leave-out accuracy, per-class
    sensitivity and the confusion matrix as tables; `log_model` adds the adapted folder
    as an artifact."""
    from fewshot.tracking import Tracker

    m = adapted.metrics
    config = {"method": adapted.method, "classes": adapted.classes, "adapted_dir": str(target)}
    with Tracker(None, job_type="adapt", config=config, quiet=quiet, project=project,
                 entity=entity, name=name) as tracker:
        if m.get("heldout"):
            tracker.log({"adapt/accuracy": m["accuracy"], "adapt/ci95_low": m["ci95"][0],
                         "adapt/ci95_high": m["ci95"][1], "adapt/heldout": m["heldout"]},
                        step=0)
            tracker.log_table("adapt/sensitivity", ["class", "heldout", "sensitivity"],
                              [[k, v["heldout"], v["sensitivity"]]
                               for k, v in m["per_class"].items()], step=0)
        if m.get("confusion"):
            c = m["confusion"]
            tracker.log_table("adapt/confusion", ["true", *c["columns"]],
                              [[r, *row] for r, row in zip(c["rows"], c["matrix"], strict=True)],
                              step=0)
        if log_model:
            tracker.log_artifact(Path(target), name=f"adapted-{Path(target).resolve().name}",
                                 kind="adapted-model")


def confusion_table(confusion: dict[str, Any]):
    from rich.table import Table

    table = Table(title="held-out confusion (rows: true, columns: predicted)")
    table.add_column("true \\ predicted")
    for name in confusion["columns"]:
        table.add_column(name, justify="right")
    for name, row in zip(confusion["rows"], confusion["matrix"], strict=True):
        table.add_row(name, *(str(v) for v in row))
    return table


def provenance(base: BaseModel, selection: Selection, shots: int, seed: int, keep_base: bool,
               base_names: list[str]) -> dict[str, Any]:
    def rel(path: Path) -> str:
        return path.relative_to(selection.root).as_posix()

    return {
        "base_model": {"path": str(base.run.path), "sha256": sha256_file(base.run.model_path),
                       "kind": base.meta.get("kind"), "task": base.meta.get("task"),
                       "head": base.meta.get("head")},
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
                  ) -> dict[str, Any]:
    """Predict every held-out image; unreadable ones are listed in `skipped` and left out."""
    paths = [path for path, _ in selection.heldout]
    results = load_many(paths, adapted.image_size, quiet, "scoring held-out images")
    good = [i for i, r in enumerate(results) if not isinstance(r, str)]
    for i, r in enumerate(results):
        if isinstance(r, str):
            selection.skipped.append((paths[i], r))
    true = np.array([selection.heldout[i][1] for i in good], dtype=np.int64)
    if good:
        images = torch.from_numpy(np.stack([results[i] for i in good]))
        pred = adapted.probabilities(images).argmax(1).numpy()
    else:
        pred = np.empty(0, dtype=np.int64)
    adapted.provenance["skipped"] = [{"path": str(p), "reason": r} for p, r in selection.skipped]
    return leave_out_metrics(true, pred, adapted.classes, new_classes)
