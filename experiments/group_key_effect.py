"""How much do the numbers move when episodes respect the Chula source-image groups?

tasks/blood-rare-rbc.yaml names the group key `^(\\d+)_` for the Chula crops (the number
is the smear image the cell was cut from), so support and query never share a source
image. ../shared/ANCHORS.md was measured without it. This scores the same models with and
without the key (a copy of the task with the key removed) on the novel classes, 5-way
1- and 5-shot, 15 queries, 600 episodes, seed 0.

    python experiments/group_key_effect.py --pretrained runs/pretrain-resnet18-blood

The two settings draw different episodes (the group rule changes which images may be
queries), so the difference is between independent means: its CI is sqrt(a² + b²).
Writes experiments/results/group_key_effect.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import yaml

from fewshot.data.tasks import load_task
from fewshot.device import pick_device
from fewshot.evaluate import Models, evaluate

ROOT = Path(__file__).resolve().parent.parent
TASK = ROOT / "tasks" / "blood-rare-rbc.yaml"
RESULTS = ROOT / "experiments" / "results"


def without_groups(folder: Path) -> Path:
    """The task with every dataset's group key removed, beside the original's data root."""
    spec = yaml.safe_load(TASK.read_text())
    for dataset in spec["datasets"].values():
        if isinstance(dataset, dict):
            dataset.pop("group", None)
    spec["name"] += "-no-groups"
    spec["data_root"] = str((TASK.parent / spec["data_root"]).resolve())
    path = folder / "blood-rare-rbc-no-groups.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", required=True, help="a fewshot pretrain run directory")
    parser.add_argument("--episodes", type=int, default=600)
    args = parser.parse_args()
    pairs = [("pixels", "simpleshot"), (args.pretrained, "simpleshot"),
             (args.pretrained, "linear-probe")]
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, path in (("groups", TASK), ("no groups", without_groups(Path(tmp)))):
            task = load_task(path)
            cache = Models(task, "novel", 0, pick_device("cpu"), quiet=True, max_per_class=None)
            for shots in (1, 5):
                result = evaluate([m for m, _ in pairs], [h for _, h in pairs], task.source,
                                  shots=shots, episodes=args.episodes, device="cpu",
                                  cache=cache, quiet=True)
                out[f"{label}/{shots}"] = {f"{r['model']}+{r['head']}": r["accuracy"]
                                           for r in result["results"]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "group_key_effect.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# Chula source-image groups: with and without the group key", "",
             f"tasks/blood-rare-rbc.yaml, novel classes, 5-way, 15 queries, {args.episodes} "
             "episodes, seed 0, 64 px. Accuracy % ± 95% CI; difference = groups − no groups.",
             "", "| model | head | shots | with groups | without | difference |",
             "|---|---|---|---|---|---|"]
    for model, head in pairs:
        key = f"{model}+{head}"
        for shots in (1, 5):
            a, b = out[f"groups/{shots}"][key], out[f"no groups/{shots}"][key]
            ci = math.hypot(a["ci95"], b["ci95"])
            lines.append(f"| {model} | {head} | {shots} | {100 * a['mean']:.1f} ± "
                         f"{100 * a['ci95']:.1f} | {100 * b['mean']:.1f} ± {100 * b['ci95']:.1f}"
                         f" | {100 * (a['mean'] - b['mean']):+.1f} ± {100 * ci:.1f} |")
    (RESULTS / "group_key_effect.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
