"""Choose on val a setting of the supervised recipe that trains blood-v1 (configs/blood-v1.yaml).

    python experiments/select_recipe.py [--episodes 600]            # label smoothing
    python experiments/select_recipe.py --levers [--episodes 600]   # levers on the choice

Each candidate is the recipe for 5 epochs on blood-rare-rbc's 10 base classes only (val
and novel never seen), with the shipped embedding (layer3 + layer4, dihedral views), so
val measures what the setting does to classes the encoder has not trained on. Every
candidate is scored with the linear probe (the head the shipped model is measured with)
on the same 600 val episodes, 1- and 5-shot, paired against the first. `--levers` scores
settings added to the chosen recipe (label smoothing 0) the same way, paired against it,
in a section of their own. Runs are kept under experiments/runs/recipe-select/ and
reused; the tables go to experiments/results/recipe_selection.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
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

BASE_ONLY = ["data.task=../tasks/blood-rare-rbc.yaml", "train.epochs=5"]
CANDIDATES = {
    "label smoothing 0.1 (the earlier recipe)": ["train.label_smoothing=0.1"],
    "label smoothing 0 (plain cross-entropy)": ["train.label_smoothing=0.0"],
}
CHOSEN = "label smoothing 0 (plain cross-entropy)"
LEVERS = {
    "mixup, Beta(0.2, 0.2)": ["train.label_smoothing=0.0", "train.mixup=0.2"],
}
LEVERS_HEADING = "## Levers on the chosen recipe"
RUNS = ROOT / "experiments" / "runs" / "recipe-select"
OUT = ROOT / "experiments" / "results" / "recipe_selection.md"


def slug(name: str) -> str:
    return name.split(" (")[0].split(",")[0].replace(" ", "-")


def trained(name: str, sets: list[str]) -> tuple[Path, float | None]:
    """The candidate's run, trained now unless it is there; minutes when trained now."""
    out = RUNS / slug(name)
    if (out / "prototypes.safetensors").is_file():
        return out, None
    started = time.time()
    command = [sys.executable, "-m", "fewshot", "pretrain", "--no-wandb",
               "--config", str(ROOT / "configs" / "blood-v1.yaml"), "--out", str(out)]
    for assignment in BASE_ONLY + sets:
        command += ["--set", assignment]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return out, (time.time() - started) / 60


def replace_section(path: Path, heading: str, lines: list[str]) -> None:
    """Put `lines` (starting with `heading`) in place of that section of `path`, or at
    its end; the other sections stay as they are."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    head, *sections = text.split("\n## ")
    body = "\n".join(lines).removeprefix("## ")
    title = heading.removeprefix("## ")
    fresh = [body if section.startswith(title) else section for section in sections]
    if body not in fresh:
        fresh.append(body)
    path.write_text("\n## ".join([head.rstrip("\n") + "\n",
                                   *[section.rstrip("\n") + "\n" for section in fresh]]),
                    encoding="utf-8")


def scored(settings: dict[str, list[str]], heading: list[str], args: argparse.Namespace
           ) -> list[str]:
    """`heading`, then each setting trained (unless cached) and scored on the same val
    episodes, paired against the first, then the compute."""
    runs = [trained(name, sets) for name, sets in settings.items()]
    started, load = time.time(), os.getloadavg()[0]
    cache = Models(load_task(args.task), "val", 0, pick_device("cpu"), quiet=True)
    lines = heading + val_table([str(run) for run, _ in runs], ["linear-probe"],
                                list(settings), "reference", args, cache)
    minutes = [f"{slug(name)} {m:.1f} min" for name, (_, m) in zip(settings, runs, strict=True)
               if m]
    return lines + ["", f"Scoring: {(time.time() - started) / 60:.1f} min on "
                    f"{pick_device('cpu')}, torch {torch.__version__}, load average "
                    f"{load:.2f} at the start."
                    + (f" Training: {', '.join(minutes)}." if minutes else "")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", type=Path, default=ROOT / "tasks" / "blood-rare-rbc.yaml")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--levers", action="store_true",
                        help="score the settings added to the chosen recipe")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    if args.levers:  # settings added to the chosen recipe, each paired against it
        lines = scored({CHOSEN: CANDIDATES[CHOSEN], **LEVERS}, [
            LEVERS_HEADING, "",
            f"`python experiments/select_recipe.py --levers --episodes {args.episodes}`: "
            "the chosen recipe (label smoothing 0, 5 epochs on the 10 base classes) with one "
            "setting added, scored as above, paired against the recipe alone.", "",
            "| setting | shots | accuracy % | paired vs the recipe |", "|---|---|---|---|"],
            args)
        replace_section(OUT, LEVERS_HEADING, lines)
    else:
        lines = scored(CANDIDATES, [
            "# Recipe selection on val",
            "",
            f"`python experiments/select_recipe.py --episodes {args.episodes}`: "
            "configs/blood-v1.yaml for 5 epochs on blood-rare-rbc's 10 base classes, one "
            "setting changed; linear probe on the layer3 + layer4 dihedral embedding, val "
            f"classes, 5-way, 15 queries, {args.episodes} seeded episodes, paired against the "
            "first row (mean ± 95% CI, points).",
            "",
            "| setting | shots | accuracy % | paired vs first |",
            "|---|---|---|---|",
        ], args)
        write_keeping_sections(OUT, lines)
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
