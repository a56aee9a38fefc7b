"""Pictures for people who would rather look than read: one module, matplotlib optional.

matplotlib comes with `pip install 'fewshot[plots]'` (and the `dev` extra). Without it,
commands that would draw say so in one line and carry on (`available()`); a picture
asked for explicitly is an error instead.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

INSTALL_HINT = "pip install 'fewshot[plots]'"


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never a window, works without a display
    import matplotlib.pyplot as plt

    return plt


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
