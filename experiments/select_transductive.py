"""Choose on val how much the transductive heads trust the balance of the query batch.

    python experiments/select_transductive.py [--run RUN] [--episodes 600]

TIM's marginal-entropy term pulls the predicted class split of the query batch towards
equal classes. With balanced queries it helps; with queries split unequally (a Dirichlet
draw, alpha 2, as a clinic's batch would be) it pulls correct predictions onto the wrong
classes. Every candidate weight of that term is scored on the same val episodes, balanced
and imbalanced, 1- and 5-shot, paired against the linear probe (the reference of the
transductive rows). The encoder is configs/blood-v1.yaml's recipe for 5 epochs on
blood-rare-rbc's 10 base classes only, read through the shipped embedding
(experiments/select_embedding.py writes it), so val classes are unseen. The table goes to
experiments/results/transductive_selection.md. A setting becomes the default when its
imbalanced paired CI reaches zero at both shots and, among those, its balanced gain is
the largest.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))

from select_embedding import val_table, write_keeping_sections  # noqa: E402

from fewshot.data.tasks import load_task  # noqa: E402
from fewshot.device import pick_device  # noqa: E402
from fewshot.evaluate import Models  # noqa: E402

RUN = ROOT / "experiments" / "runs" / "embedding-select" / "layer3+layer4-dihedral"
OUT = ROOT / "experiments" / "results" / "transductive_selection.md"
HEADS = ["linear-probe",
         "tim-probe:marginal_entropy_weight=1", "tim-probe:marginal_entropy_weight=0.2",
         "tim-probe:marginal_entropy_weight=0.1",
         "tim:marginal_entropy_weight=1", "tim:marginal_entropy_weight=0.1"]
"""The reference first; weight 1 was both heads' default before this choice."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=RUN)
    parser.add_argument("--task", type=Path, default=ROOT / "tasks" / "blood-rare-rbc.yaml")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--extra", nargs="+", metavar="HEAD",
                        help="score these heads (beside the linear probe) on the same episodes "
                             "and write them as the file's 'Further candidates' section, "
                             "leaving the rest of it as it is")
    parser.add_argument("--section", default="Further candidates",
                        help="the title of the section --extra writes (one per family of "
                             "candidates, so a later family leaves an earlier one's table)")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    started, load = time.time(), os.getloadavg()[0]
    cache = Models(load_task(args.task), "val", 0, pick_device("cpu"), quiet=True)
    heads = ["linear-probe", *args.extra] if args.extra else HEADS
    rows = [row for imbalance in (None, 2.0)
            for row in val_table([str(args.run)] * len(heads), heads, heads, "reference", args,
                                 cache, query_imbalance=imbalance, queries_column=True)]
    footer = (f"{(time.time() - started) / 60:.1f} min on cpu, torch {torch.__version__}, "
              f"load average {load:.2f} at the start.")
    table = ["| head | shots | queries | accuracy % | paired vs linear probe |",
             "|---|---|---|---|---|", *rows, "", footer]
    if args.extra:
        write_extra(args, table)
        return
    lines = ["# How much the transductive heads trust a balanced batch, chosen on val", "",
             f"`python experiments/select_transductive.py --episodes {args.episodes}`: "
             f"{os.path.relpath(args.run, ROOT)} (blood-v1's recipe, 5 epochs, base classes "
             f"only, the shipped embedding), {args.task.stem} val classes, 5-way, 15 queries "
             f"a class (balanced) or 75 split by a Dirichlet draw (alpha 2), {args.episodes} "
             "seeded episodes, each head paired against the linear probe (mean ± 95% CI, "
             "points).", "",
             *table]
    write_keeping_sections(OUT, lines)
    print(f"wrote {OUT.relative_to(ROOT)}")


def write_extra(args: argparse.Namespace, table: list[str]) -> None:
    """Replace (or add) the `--section` section; the main table, the choice written
    below it and the other sections stay."""
    title = f"## {args.section}"
    text = OUT.read_text(encoding="utf-8") if OUT.is_file() else ""
    before, found, after = text.partition(f"\n{title}\n")
    rest = after.partition("\n## ")[2] if found else ""
    section_flag = ("" if args.section == "Further candidates"
                    else f" --section '{args.section}'")
    section = [title, "", f"`python experiments/select_transductive.py --episodes "
               f"{args.episodes} --extra {' '.join(args.extra)}{section_flag}`: the same val "
               "episodes.", "",
               *table]
    OUT.write_text(before.rstrip("\n") + "\n\n" + "\n".join(section) + "\n"
                   + (f"\n## {rest}" if rest else ""), encoding="utf-8")
    print(f"wrote the further candidates to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
