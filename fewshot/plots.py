"""Pictures for people who would rather look than read: one module, matplotlib optional.

matplotlib comes with `pip install 'fewshot[plots]'` (and the `dev` extra). Without it,
commands that would draw say so in one line and carry on (`available()`); a picture
asked for explicitly is an error instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

INSTALL_HINT = "pip install 'fewshot[plots]'"


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


class _Figures:
    """pyplot's `subplots` and `close` on a bare `Figure`: files only, never a window or a
    backend to choose, and no pyplot import (half a second of a command's time)."""

    @staticmethod
    def subplots(*args: Any, figsize: tuple[float, float] | None = None, **kwargs: Any):
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        return fig, fig.subplots(*args, **kwargs)

    @staticmethod
    def close(fig: Any) -> None:
        """A bare Figure is not registered anywhere: nothing to release."""


def _pyplot() -> type[_Figures]:
    return _Figures


def reliability_diagram(bins: dict[str, list[dict[str, Any]]], path: Path,
                        temperature: float, title: str = "", before: str = "before (T = 1)",
                        after: str | None = None) -> Path:
    """Accuracy against confidence per bin, before and after temperature scaling, with
    the images per bin underneath: the gap to the diagonal is the miscalibration."""
    from fewshot.data.files import atomic_write

    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.8, 5.4), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="calibrated")
    width = 1 / max(len(bins["before"]), 1)
    for key, colour, label in (("before", "tab:orange", before),
                               ("after", "tab:blue", after or f"after (T = {temperature:.3g})")):
        filled = [b for b in bins[key] if b["count"]]
        top.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled],
                 marker="o", color=colour, label=label)
        offset = -width / 4 if key == "before" else width / 4
        bottom.bar([(b["low"] + b["high"]) / 2 + offset for b in bins[key]],
                   [b["count"] for b in bins[key]], width=width / 2, color=colour)
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=title or "reliability")
    top.legend(loc="upper left", fontsize=8)
    bottom.set(xlabel="confidence (top class)", ylabel="images")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


def _save(fig, path: Path) -> Path:
    from fewshot.data.files import atomic_write

    plt = _pyplot()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


def confusion_matrix(confusion: dict[str, Any], path: Path, title: str = "") -> Path:
    """Held-out counts, rows the true class, columns the predicted one."""
    import numpy as np

    plt = _pyplot()
    matrix = np.asarray(confusion["matrix"])
    rows, columns = confusion["rows"], confusion["columns"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(columns), 1.0 + 0.6 * len(rows)))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if value > matrix.max() / 2 else "black", fontsize=9)
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title or "held-out confusion")
    return _save(fig, path)


def per_class_sensitivity(per_class: dict[str, dict[str, Any]], path: Path,
                          title: str = "") -> Path:
    """Sensitivity per class with its 95% Wilson interval (held-out images)."""
    from fewshot.metrics import wilson_interval

    plt = _pyplot()
    names = list(per_class)
    values = [per_class[n]["sensitivity"] for n in names]
    bounds = [wilson_interval(per_class[n]["correct"], per_class[n]["heldout"]) for n in names]
    errors = [[max(0.0, v - lo) for v, (lo, _) in zip(values, bounds, strict=True)],
              [max(0.0, hi - v) for v, (_, hi) in zip(values, bounds, strict=True)]]
    fig, ax = plt.subplots(figsize=(4.8, 0.9 + 0.45 * len(names)))
    ax.barh(range(len(names)), values, xerr=errors, color="tab:blue", capsize=3)
    ax.set_yticks(range(len(names)), [f"{n} (n={per_class[n]['heldout']})" for n in names],
                  fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="sensitivity (95% Wilson CI)",
           title=title or "per-class sensitivity, held-out images")
    return _save(fig, path)


def evaluation(result: dict[str, Any], path: Path) -> Path:
    """evaluate's pairs: accuracy with 95% CIs, and paired differences against the first."""
    from fewshot.data.episodes import shots_text

    plt = _pyplot()
    rows = result["results"]
    labels = [f"{r['model']} + {r['head']}" for r in rows]
    first = labels[0]
    diffs = [p for p in result["paired"] if p["reference"] == first]
    fig, axes = plt.subplots(1, 2 if diffs else 1, squeeze=False,
                             figsize=(10 if diffs else 5.5, 0.9 + 0.45 * len(rows)))
    left = axes[0][0]
    left.errorbar([100 * r["accuracy"]["mean"] for r in rows], range(len(rows)),
                  xerr=[100 * r["accuracy"]["ci95"] for r in rows], fmt="o", capsize=3)
    left.set_yticks(range(len(rows)), labels, fontsize=8)
    left.invert_yaxis()
    left.set(xlabel="accuracy % (95% CI over episodes)",
             title=f"{result['task']}: {result['ways']}-way {shots_text(result['shots'])}-shot, "
                   f"{result['episodes']} episodes")
    if diffs:
        right = axes[0][1]
        right.axvline(0, color="0.6", linewidth=1)
        right.errorbar([100 * p["accuracy_difference"]["mean"] for p in diffs],
                       range(len(diffs)),
                       xerr=[100 * p["accuracy_difference"]["ci95"] for p in diffs],
                       fmt="o", color="tab:orange", capsize=3)
        right.set_yticks(range(len(diffs)), [p["other"] for p in diffs], fontsize=8)
        right.invert_yaxis()
        right.set(xlabel=f"paired difference vs {first}, points (95% CI)")
    return _save(fig, path)


def training_curves(records: list[dict[str, Any]], path: Path, unit: str = "step",
                    title: str = "") -> Path:
    """metrics.jsonl of a run: train loss and accuracy (smoothed where logged), val
    accuracy with its CI, and the best validation marked."""
    plt = _pyplot()
    train = [r for r in records if "train/loss" in r]
    val = [r for r in records if r.get("val/acc") is not None]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5.5), sharex=True)
    if train:
        steps = [r["step"] for r in train]
        key = "train/loss_smooth" if "train/loss_smooth" in train[0] else "train/loss"
        top.plot(steps, [r["train/loss"] for r in train], color="0.8", linewidth=0.8)
        top.plot(steps, [r[key] for r in train], color="tab:blue", label="train loss")
        top.set(ylabel="loss")
        top.legend(loc="upper right", fontsize=8)
        acc_key = "train/acc_smooth" if "train/acc_smooth" in train[0] else "train/acc"
        if acc_key in train[0]:
            bottom.plot(steps, [r[acc_key] for r in train], color="tab:blue",
                        label="train accuracy")
    if val:
        bottom.errorbar([r["step"] for r in val], [r["val/acc"] for r in val],
                        yerr=[r.get("val/acc_ci95") or 0 for r in val], fmt="o-",
                        color="tab:orange", capsize=3, label="val accuracy (95% CI)")
        best = max(val, key=lambda r: r["val/acc"])
        bottom.plot([best["step"]], [best["val/acc"]], marker="*", markersize=16,
                    color="tab:red", linestyle="none", label="best model")
    bottom.set(xlabel=unit, ylabel="accuracy")
    if bottom.get_legend_handles_labels()[0]:
        bottom.legend(loc="lower right", fontsize=8)
    else:  # pretraining without val classes logs no accuracy: say so, not a blank panel
        bottom.text(0.5, 0.5, "no accuracy logged (no val classes)", ha="center",
                    va="center", transform=bottom.transAxes, color="0.4")
    top.set_title(title or "training")
    return _save(fig, path)


def explanation(image, cam, top: list[tuple[str, float]], method: str, path: Path) -> Path:
    """The image, its saliency overlay and the top probabilities, side by side."""
    plt = _pyplot()
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(9, 3),
                                              gridspec_kw={"width_ratios": [1, 1, 1.2]})
    left.imshow(image)
    left.set_title("image", fontsize=9)
    middle.imshow(image)
    middle.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    middle.set_title(f"{method}: {top[0][0]}", fontsize=9)
    for ax in (left, middle):
        ax.axis("off")
    names = [name for name, _ in top]
    right.barh(range(len(top)), [p for _, p in top], color="tab:blue")
    right.set_yticks(range(len(top)), names, fontsize=8)
    right.invert_yaxis()
    right.set(xlim=(0, 1), xlabel="probability (calibrated)")
    return _save(fig, path)


def contact_sheet(items: list[tuple[str, Any, Any, str, float]], method: str,
                  path: Path, columns: int = 6) -> Path:
    """Every explained image's overlay with its prediction, in a grid."""
    import math

    plt = _pyplot()
    rows = math.ceil(len(items) / columns)
    width = min(columns, len(items))
    fig, axes = plt.subplots(rows, width, figsize=(2.1 * width, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, image, cam, label, p) in zip(axes.flat, items, strict=False):
        ax.imshow(image)
        ax.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(f"{name[:18]}\n{label} {p:.2f}", fontsize=7)
    fig.suptitle(method, fontsize=9)
    return _save(fig, path)
