"""Render a run's W&B dashboard curves from its own metrics.jsonl (no W&B server needed).

    python experiments/render_dashboard.py runs/latest experiments/results/dashboard.png

Needs matplotlib (`pip install matplotlib`); the package itself does not.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = [
    ("train/loss", "train/loss_smooth", "train/loss"),
    ("train/acc", None, "train/acc (query accuracy)"),
    ("val/acc", None, "val/acc ± 95% CI"),
    ("train/lr", None, "train/lr"),
]


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    rows = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [s for s, _ in rows], [v for _, v in rows]


def render(run_dir: Path, out: Path) -> None:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.5), constrained_layout=True)
    for ax, (key, smooth, title) in zip(axes.flat, PANELS, strict=True):
        steps, values = series(records, key)
        ax.set_title(title, loc="left", fontsize=11)
        ax.grid(alpha=0.3)
        ax.set_xlabel("episode")
        if key == "val/acc":
            _, ci = series(records, "val/acc_ci95")
            ax.errorbar(steps, values, yerr=ci or None, marker="o", capsize=3, color="#1f77b4")
            continue
        ax.plot(steps, values, color="#1f77b4", alpha=0.35 if smooth or key == "train/acc"
                else 1.0, linewidth=1)
        if smooth:
            ax.plot(*series(records, smooth), color="#1f77b4", linewidth=2)
        elif key == "train/acc" and len(values) > 20:
            window = max(len(values) // 30, 5)
            avg = [sum(values[max(0, i - window):i + 1]) / len(values[max(0, i - window):i + 1])
                   for i in range(len(values))]
            ax.plot(steps, avg, color="#1f77b4", linewidth=2)
    fig.suptitle(f"{run_dir.resolve().name}: rendered from metrics.jsonl "
                 "(the values logged to W&B)", fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    render(Path(sys.argv[1]), Path(sys.argv[2]))
