"""Do the val classes rank two weights of one training run the way the novel classes do?

Model selection (early stopping, `train.keep: best`) trusts val: the weights that score
best on the val classes should score best on the novel ones. This scores pairs of runs
that val and the fixed budget disagree on (the val-selected weights and the same run's
last weights) on val, on val's red-cell classes alone (blood-rare-rbc: ovalocyte,
hypochromia, elliptocyte, 3-way; the re-split #17 asks about) and on novel, with the
linear probe the models are used with, 1- and 5-shot, 15 queries, the same seeded
episodes for both weights. A split predicts novel when its paired difference has the
novel one's sign.

    python experiments/val_vs_novel.py          # after run.py trained the stages below

Reads the stages under experiments/runs/ (pretrain-resnet18-blood, -last;
protonet-resnet18-pretrained, -last; wbc-v1-second, wbc-v1-metabaseline-last). Writes
experiments/results/val_vs_novel.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml
from run import pct  # experiments/run.py: the results table's "mean ± CI" cell

from fewshot.data.tasks import load_task
from fewshot.device import pick_device
from fewshot.evaluate import Models, evaluate

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "experiments" / "runs"
RESULTS = ROOT / "experiments" / "results"
BLOOD = ROOT / "tasks" / "blood-rare-rbc.yaml"
WBC = ROOT / "tasks" / "wbc-to-rbc.yaml"
RED_VAL = ["chula/06_ovalocyte", "chula/11_hypochromia", "chula/12_elliptocyte"]

PAIRS = [
    ("ResNet-18 on the 10 base classes: val-selected epoch 6 -> epoch 16", BLOOD,
     "pretrain-resnet18-blood", "pretrain-resnet18-blood-last"),
    ("its ProtoNet meta-training: val-selected episode 100 -> episode 500", BLOOD,
     "protonet-resnet18-pretrained", "protonet-resnet18-pretrained-last"),
    ("wbc-v1 Meta-Baseline: val-selected episode 0 -> episode 800", WBC,
     "wbc-v1-second", "wbc-v1-metabaseline-last"),
]


def red_val_task(folder: Path) -> Path:
    """blood-rare-rbc with val cut to its red-cell classes, beside the original's data root."""
    spec = yaml.safe_load(BLOOD.read_text())
    spec["splits"]["val"] = RED_VAL
    spec["name"] += "-red-val"
    spec["data_root"] = str((BLOOD.parent / spec["data_root"]).resolve())
    path = folder / "blood-rare-rbc-red-val.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def splits(task: Path, red_val: Path) -> list[tuple[str, Path, str, int]]:
    """(label, task file, split, ways) to score a pair on."""
    own = [("val as the task has it, 5-way", task, "val", 5)]
    red = [("val, red cells only, 3-way", red_val, "val", 3)] if task == BLOOD else []
    return own + red + [("novel, 5-way", task, "novel", 5)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=600)
    args = parser.parse_args()
    missing = [run for *_, a, b in PAIRS for run in (a, b) if not (RUNS / run).is_dir()]
    if missing:
        raise SystemExit(f"error: runs not trained ({', '.join(missing)}): train them with "
                         "python experiments/run.py --tier cpu --only GROUP")
    out: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        red_val = red_val_task(Path(tmp))
        for title, task, before, after in PAIRS:
            models = [str(RUNS / before), str(RUNS / after)]
            for label, path, split, ways in splits(task, red_val):
                cache = Models(load_task(path), split, 0, pick_device("cpu"), quiet=True)
                for shots in (1, 5):
                    result = evaluate(models, ["linear-probe"] * 2, path, split=split,
                                      ways=ways, shots=shots, episodes=args.episodes,
                                      device="cpu", cache=cache, quiet=True)
                    first, second = (r["accuracy"] for r in result["results"])
                    out.append({"pair": title, "task": task.stem, "split": label,
                                "shots": shots, "before": first, "after": second,
                                "paired": result["paired"][0]["accuracy_difference"]})
                    print(out[-1]["pair"], label, shots, out[-1]["paired"], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "val_vs_novel.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# Does val rank weights the way novel does?", "",
             "`python experiments/val_vs_novel.py`: two weights of one training run, the "
             "val-selected ones and the last ones, scored with the linear probe on the same "
             f"{args.episodes} seeded episodes (15 queries) of each split; difference = last "
             "minus val-selected, paired (points, mean ± 95% CI).", "",
             "Val classes: blood-rare-rbc, basophil, monocyte, ovalocyte, hypochromia, "
             "elliptocyte; wbc-to-rbc, normal, spherocyte, target cell, stomatocyte, ovalocyte.",
             "",
             "| weights | task | split | shots | val-selected | last | last − val-selected |",
             "|---|---|---|---|---|---|---|"]
    for row in out:
        diff = row["paired"]
        lines.append(f"| {row['pair']} | {row['task']} | {row['split']} | {row['shots']} | "
                     f"{pct(row['before'])} | {pct(row['after'])} | "
                     f"{100 * diff['mean']:+.1f} ± {100 * diff['ci95']:.1f} |")
    (RESULTS / "val_vs_novel.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
