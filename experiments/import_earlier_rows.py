"""Add rows measured before the results harness existed to experiments/RESULTS.json, marked
† with what they were measured on, under the registry groups that now train and score the
same configs (rows/meta_learning.py). They stay until `python experiments/run.py --tier cpu
--only GROUP` trains and scores that group, which replaces them.

    python experiments/import_earlier_rows.py    # then run.py --only ... rewrites RESULTS.md

The source, experiments/results/blood-rare-rbc-meta.json, was written by
experiments/blood_rare_rbc.py at commit bffdd76 on the same seeded episodes of
tasks/blood-rare-rbc.yaml (seed 0, 5-way, 15 queries) as every RESULTS row: its pixel row
matches RESULTS.md's to the digit. Paired differences are computed here from its
per-episode accuracies, against the reference its group names.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))

from rows import load_groups  # noqa: E402

from fewshot.metrics import accuracy_difference  # noqa: E402

SOURCE = ROOT / "experiments" / "results" / "blood-rare-rbc-meta.json"
MEASURED_ON = ("the runs of commit bffdd76 (experiments/results/blood-rare-rbc-meta.json, "
               "experiments/blood_rare_rbc.py; the same configs and episodes)")
RUN_OF = {"runs/protonet-conv4": "protonet-conv4", "runs/maml-conv4": "maml-conv4",
          "runs/pretrain-resnet18-blood": "pretrain-resnet18-blood",
          "runs/protonet-resnet18-pretrained": "protonet-resnet18-pretrained",
          "runs/anil-resnet18-pretrained": "anil-resnet18-pretrained"}
"""Its run directories -> the stage names of rows/meta_learning.py."""
TRAINING_MIN = {"protonet-conv4": 78.3, "maml-conv4": 65.7, "pretrain-resnet18-blood": 30.9,
                "protonet-resnet18-pretrained": 30.3, "anil-resnet18-pretrained": 37.5}
"""As blood-rare-rbc-meta.md gives them (first to last record of each run's metrics)."""
REMARK = {"protonet-resnet18-pretrained": "early stopping kept its starting weights"}
"""What a row's label must say for a reader to read its paired difference right: this run's
val accuracy fell from its first validation on, so its rows are the starting encoder read
by another head, not meta-training."""
COMMAND = ("python experiments/blood_rare_rbc.py --pretrained runs/pretrain-resnet18-blood "
           "--meta runs/protonet-conv4 runs/maml-conv4 runs/anil-resnet18-pretrained --pmf "
           "runs/protonet-resnet18-pretrained --name blood-rare-rbc-meta (at commit bffdd76)")


def main() -> None:
    source = json.loads(SOURCE.read_text())
    pairs = {(p.model, p.head): (g, p) for g in load_groups()
             if g.name == "meta-from-scratch" or g.name == "pretrained-base"
             or g.name.startswith("meta-transfer-episodic") for p in g.pairs}
    labels = {p.label or f"{p.model} + {p.head}": p for _, p in pairs.values()}
    imported = []
    for shots, results in source["results"].items():
        by_pair = {(RUN_OF.get(r["model"], r["model"]), r["head"]): r for r in results}
        for key, result in by_pair.items():
            if key not in pairs:
                continue
            group, pair = pairs[key]
            reference = labels.get(group.reference)
            ref = by_pair[(reference.model, reference.head)] if reference else \
                by_pair[("pixels", "simpleshot")]
            diff = accuracy_difference(ref["per_episode_accuracy"],
                                       result["per_episode_accuracy"])
            imported.append({
                "group": group.name, "task": source["task"],
                "label": f"{pair.label} ({REMARK[key[0]]})" if key[0] in REMARK else pair.label,
                "ways": source["ways"], "shots": int(shots), "queries": source["queries"],
                "query_imbalance": None, "model": key[0], "head": key[1],
                "protocol": "inductive", "episodes": result["episodes"],
                **{k: result[k] for k in ("accuracy", "macro_f1", "auroc")},
                "paired": {"reference": group.reference, **diff},
                "seeds": {"episodes": source["seed"], "training": [0]},
                "command": COMMAND,
                "compute": {"device": "cpu (2 cores)", "evaluation_s": None,
                            "training_min": TRAINING_MIN.get(key[0]), "torch": None,
                            "threads": source["torch_threads"], "load_average": None},
                "measured_on": MEASURED_ON})
    path = ROOT / "experiments" / "RESULTS.json"
    stored = json.loads(path.read_text())
    fresh = {(r["group"], r["label"], r["shots"]) for r in imported}
    kept = [r for r in stored["rows"] if (r["group"], r["label"], r["shots"]) not in fresh
            or not r.get("measured_on")]
    current = {(r["group"], r["label"], r["shots"]) for r in kept}
    stored["rows"] = kept + [r for r in imported
                             if (r["group"], r["label"], r["shots"]) not in current]
    path.write_text(json.dumps(stored, indent=2) + "\n")
    print(f"{len(imported)} earlier rows in {path.relative_to(ROOT)} (a row already scored "
          "by the harness is kept instead)")


if __name__ == "__main__":
    main()
