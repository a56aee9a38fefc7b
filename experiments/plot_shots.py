"""Draw experiments/results/accuracy_vs_shots.png from experiments/RESULTS.json: accuracy
against shots (1, 5, 10, 20) on blood-rare-rbc, with 95% CI bands, for the three best
inductive feature-based rows (by 5-shot accuracy) and raw pixels as the floor.

    python experiments/run.py --tier cpu && python experiments/plot_shots.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHOTS = (1, 5, 10, 20)
TASK = "blood-rare-rbc"
FLOOR = "pixels 16x16, nearest centroid (reference)"
SLOW_HEADS = ("finetune",)  # re-run the encoder: not feature-based


def curves(rows: list[dict]) -> dict[str, dict[int, dict]]:
    """label -> shots -> accuracy, for balanced inductive rows scored on every episode.
    Rows are matched across shots by (model, head), not label: the shipped blood-v1 (its
    float16 copy, which changes accuracy by under 0.1 point) and its float32 training run
    are one model, labelled without "shipped"."""
    out: dict[tuple[str, str], dict[int, dict]] = {}
    labels: dict[tuple[str, str], str] = {}
    for r in rows:
        if (r["task"] == TASK and r.get("query_imbalance") is None
                and r["protocol"] == "inductive" and r["head"].split(":")[0] not in SLOW_HEADS
                and r["episodes"] >= 600 and not r.get("measured_on")
                and not r.get("seed_of")):
            key = (r["model"], r["head"])
            out.setdefault(key, {}).setdefault(r["shots"], r["accuracy"])
            labels.setdefault(key, r["label"].removeprefix("shipped "))
    return {labels[key]: c for key, c in out.items() if all(s in c for s in SHOTS)}


def main() -> None:
    rows = json.loads((ROOT / "experiments" / "RESULTS.json").read_text())["rows"]
    found = curves(rows)
    best = sorted((label for label in found if label != FLOOR),
                  key=lambda label: -found[label][5]["mean"])[:3]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label in [*best, FLOOR] if FLOOR in found else best:
        mean = [100 * found[label][s]["mean"] for s in SHOTS]
        ci = [100 * found[label][s]["ci95"] for s in SHOTS]
        style = {"linestyle": "--", "color": "grey"} if label == FLOOR else {}
        line, = ax.plot(SHOTS, mean, marker="o", label=label.replace(" (reference)", ""),
                        **style)
        ax.fill_between(SHOTS, [m - c for m, c in zip(mean, ci, strict=True)],
                        [m + c for m, c in zip(mean, ci, strict=True)],
                        color=line.get_color(), alpha=0.2)
    ax.set_xscale("log")
    ax.set_xticks(SHOTS, [str(s) for s in SHOTS])
    ax.set_xlabel("shots (support images per class)")
    ax.set_ylabel("accuracy % (5-way, 600 episodes)")
    ax.set_title("blood-rare-rbc: rare red-cell morphologies, 95% CI bands")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out = ROOT / "experiments" / "results" / "accuracy_vs_shots.png"
    fig.savefig(out)
    print(f"wrote {out.relative_to(ROOT)} ({', '.join(best)})")


if __name__ == "__main__":
    main()
