"""The unlabeled red-cell stream of the wbc-to-rbc rows: the Chula images of classes that
are neither val nor novel in tasks/wbc-to-rbc.yaml (10_uncategorised, 11_hypochromia,
12_elliptocyte), less every image that is a near-duplicate (or a copy) of a val or novel
image, which fewshot refuses to use unlabeled (Chula's smears were cropped more than once).

    python experiments/unlabeled_rbc.py     # writes experiments/runs/unlabeled-rbc/

The folder holds symbolic links to the shared images (nothing copied); the images left
out are listed in experiments/results/unlabeled_rbc.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fewshot.data.tasks import load_task  # noqa: E402
from fewshot.data.unlabeled import find_overlaps, find_unlabeled  # noqa: E402

TASK = ROOT / "tasks" / "wbc-to-rbc.yaml"
CLASSES = ["10_uncategorised", "11_hypochromia", "12_elliptocyte"]
OUT = ROOT / "experiments" / "runs" / "unlabeled-rbc"
REPORT = ROOT / "experiments" / "results" / "unlabeled_rbc.md"


def main() -> None:
    task = load_task(TASK)
    chula = task.roots["chula"]
    unlabeled = find_unlabeled([chula / name for name in CLASSES], quiet=False)
    measured = task.split("val").paths + task.split("novel").paths
    overlaps = find_overlaps(unlabeled, measured, quiet=False)
    dropped = {path for path, _, _ in overlaps}
    tmp = OUT.with_name(OUT.name + ".tmp")
    if tmp.exists():
        for link in tmp.rglob("*"):
            if link.is_symlink():
                link.unlink()
    for path in unlabeled.paths:
        if path in dropped:
            continue
        link = tmp / path.parent.name / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(os.path.realpath(path))
    tmp.rename(OUT)
    lines = ["# Unlabeled red-cell stream (wbc-to-rbc)", "",
             f"`python experiments/unlabeled_rbc.py`: {len(unlabeled.paths)} images of "
             f"{', '.join(CLASSES)}; {len(dropped)} left out as copies or near-duplicates "
             f"of val or novel images; {len(unlabeled.paths) - len(dropped)} kept in "
             "`experiments/runs/unlabeled-rbc/`.", "",
             "| left out | is | of |", "|---|---|---|"]
    lines += [f"| {p.relative_to(chula)} | {how} | {o.relative_to(chula)} |"
              for p, o, how in overlaps]
    REPORT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
