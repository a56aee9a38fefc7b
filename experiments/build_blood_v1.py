"""Build the model shipped in the package, fewshot/resources/models/blood-v1/, from its run.

    python experiments/run.py --tier cpu --only supervised   # trains experiments/runs/blood-v1
    python experiments/build_blood_v1.py [--run experiments/runs/blood-v1] [--episodes 600]

The run is configs/blood-v1.yaml: ResNet-18 on the 15 non-novel classes of
tasks/blood-rare-rbc-trainval.yaml, whose PBC dataset leaves out every file of the
package's quickstart sample (`exclude: packaged:sample`), so `fewshot data sample` never
hands the shipped model an image it trained on. The weights are stored in float16 (at
most 25 MB); the script checks, on the task's 600 seeded 5-shot episodes, that this
changes linear-probe accuracy by less than 0.1 point, and writes MODEL_CARD.md with the
data, classes, recipe and the RESULTS rows of the run.

Before re-scoring a rebuilt model, keep the rows of the weights it replaces
(`python experiments/mark_earlier_rows.py --task blood-rare-rbc --tag ... --models blood-v1
...`): otherwise `run.py --only GROUP` replaces them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap
from pathlib import Path

import torch
from run import seed_spread

from fewshot.data.files import load_tensors, save_tensors
from fewshot.data.tasks import load_task
from fewshot.evaluate import evaluate
from fewshot.model_card import embedding_words
from fewshot.run import RunDir

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "fewshot" / "resources" / "models" / "blood-v1"
TASK = ROOT / "tasks" / "blood-rare-rbc.yaml"
MAX_BYTES = 25 * 1024 * 1024
MAX_CHANGE = 0.001  # of accuracy: 0.1 point
CARD_GROUPS = ("supervised", "embedding-transductive")
"""RESULTS groups whose rows on this model (its run's, or the shipped copy's) the card lists."""

CARD = """# blood-v1

A ResNet-18 encoder for few-shot classification of blood-cell images at 64x64 px,
shipped with fewshot. `fewshot adapt --shots 5 FOLDER` uses it when no model is named and
there is no `runs/latest`; `--model blood-v1` names it anywhere a run directory goes
(`adapt`, `evaluate`, `model.weights` of `pretrain` and `meta-train`, `fewshot.load`).
A folder called `./blood-v1` takes precedence over the name.

## Intended use

Research on few-shot recognition of blood-cell morphologies: adapting to new cell
classes from a few labelled images, and as a starting point for pretraining or
meta-training on other blood-cell data. Not a medical device; its predictions are not
calibrated and must not be used for diagnosis.

## Training data

{classes_trained} classes, {images} images (every image of each class, except as said
below), from two datasets:

- **PBC** (normal peripheral blood cells, CellaVision DM96, Hospital Clinic of
  Barcelona): Acevedo A, Merino A, Alférez S, Molina Á, Boldú L, Rodellar J (2020),
  Mendeley Data V1, doi:10.17632/snkd93bnjr.1; article in Data in Brief 30 (2020)
  105474, doi:10.1016/j.dib.2020.105474. License CC BY 4.0. Used as 96x96 JPEG
  re-encodings of the original frames, resized to 64 px.
- **Chula RBC-12** (red-cell crops from blood smears, Chulalongkorn University):
  https://github.com/Chula-PIC-Lab/Chula-RBC-12-Dataset; Naruenatthanaset K et al.,
  arXiv:2012.01321 (2021). The repository's license is MIT; no separate license for
  the images is stated. Used as 64x64 crops centred on each annotated cell. No Chula
  image is redistributed with fewshot.

Classes trained on: {class_list}.

**Left out:** the {excluded} PBC files of the package's quickstart sample (`fewshot data
sample` and the quickstart task), so the model has not seen any image that fewshot ships.
It has seen their classes, though: basophil, erythroblast and monocyte, the sample's
new classes, are among its training classes. Adapting blood-v1 to the folder that
`fewshot data sample` writes is therefore a demonstration on classes it has seen, not
evidence of few-shot ability. The rare Chula morphologies of
`tasks/blood-rare-rbc.yaml` ({novel}) were never opened in training; the rows below are
the evidence.

## Recipe

`configs/blood-v1.yaml`: supervised cross-entropy without label smoothing on whole epochs,
{epochs} epochs, batch 128, SGD with Nesterov momentum 0.9, learning rate 0.05 with
cosine decay, weight decay 5e-4, size-keeping augmentation (flips, 90-degree rotations,
a small brightness and contrast jitter), ImageNet normalisation, seed 0, trained on
blood-rare-rbc's base and val classes together (no val split: the last epoch is the
model). The loss was chosen on val with an encoder that never saw the val classes
(experiments/results/recipe_selection.md: plain cross-entropy +2.6 ± 0.5 / +1.5 ± 0.4
points at 1 / 5 shots over label smoothing 0.1, linear probe). The other settings come
from earlier runs on blood-rare-rbc (SGD against Adam, base against base + val classes),
not from a controlled search on val.
Trained in {minutes} minutes on a 2-core CPU with torch {torch}. Weights stored in
float16 ({size_mb:.1f} MB); on the 600 5-shot episodes below, the float16 copy changes
linear-probe accuracy by {change:+.2f} points.

## Features

{features}

## Results

`tasks/blood-rare-rbc.yaml`, 5-way, 15 queries a class, 600 seeded episodes, source
images of one smear never split between support and query, heads reading the features
above (mean ± 95% CI over episodes; from experiments/RESULTS.md, which gives each row's
paired difference on the same episodes; `tim` and `tim-probe` are transductive: they
also use the unlabeled query batch):

| head | shots | accuracy % | macro-F1 % | AUROC % |
|---|---|---|---|---|
{rows}
{seeds}
## Limitations

- 64 px inputs only; other sizes are resized by the adapted model's preprocessing.
- Two imaging set-ups; images from other scanners, stains or magnifications may lie
  outside its domain.
- Accuracy on five rare morphologies is far from what a clinic needs: see the rows above.
"""


def fp16_copy(run: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    weights = load_tensors(run / "model.safetensors")
    save_tensors(target / "model.safetensors",
                 {k: v.half() if v.is_floating_point() else v for k, v in weights.items()})
    shutil.copy(run / "prototypes.safetensors", target / "prototypes.safetensors")
    meta = json.loads((run / "model.json").read_text())
    meta["task"] = "blood-rare-rbc-trainval"  # the run's absolute task path means nothing here
    (target / "model.json").write_text(json.dumps(meta, indent=2) + "\n")


def stored_rows() -> list[dict]:
    """RESULTS.json's rows, the source of every figure the card quotes."""
    path = ROOT / "experiments" / "RESULTS.json"
    return json.loads(path.read_text())["rows"] if path.is_file() else []


def results_rows(rows: list[dict], run_name: str) -> str:
    chosen = {(r["head"], r["shots"]): r for r in rows
              if r["group"] in CARD_GROUPS and r["task"] == "blood-rare-rbc"
              and r["model"] == run_name
              and not r.get("measured_on") and r["episodes"] >= 600}
    lines = [f"| {head} | {shots} | {100 * r['accuracy']['mean']:.1f} ± "
             f"{100 * r['accuracy']['ci95']:.1f} | {100 * r['macro_f1']['mean']:.1f} ± "
             f"{100 * r['macro_f1']['ci95']:.1f} | {100 * r['auroc']['mean']:.1f} ± "
             f"{100 * r['auroc']['ci95']:.1f} |"
             for (head, shots), r in sorted(chosen.items(), key=lambda kv: (kv[0][1], kv[0][0]))]
    return "\n".join(lines) or "| (run experiments/run.py --tier cpu first) | | | | |"


def features_paragraph(rows: list[dict], spec: dict) -> str:
    """What the heads read, why, and what it was worth on the rare classes (RESULTS.json's
    embedding rows: the same weights read through the plain output, paired)."""
    worth = [r for r in rows if r["group"] == "embedding-linear-probe"
             and not r.get("measured_on") and r["paired"]["reference"] != r["label"]]
    text = (f"Feature-based heads read {embedding_words(spec)} (model.json `embedding`, "
            "chosen on val with an encoder that never saw the val classes: "
            "experiments/results/embedding_selection.md); the base statistics in "
            "prototypes.safetensors are of those features.")
    if worth:
        text += (" On the rare classes, against the same weights read through the plain "
                 "output, linear probe, paired on the same episodes: " + "; ".join(
                     f"{100 * r['paired']['mean']:+.1f} ± {100 * r['paired']['ci95']:.1f} "
                     f"points at {r['shots']}-shot" for r in sorted(worth,
                                                                    key=lambda r: r["shots"]))
                 + ".")
    text += (" `finetune`, `siamese` and the MAML family read the encoder's plain 512-d "
             "output, centred on its own base mean (`output_mean` in prototypes.safetensors).")
    return textwrap.fill(text, width=88)


def seed_lines(rows: list[dict], run_name: str) -> str:
    """The spread across training seeds of the same recipe (RESULTS.md's training-seeds
    rows), so a reader can tell a model's difference from the seed's."""
    lines = seed_spread([r for r in rows if r["task"] == "blood-rare-rbc"
                         and (r["model"] == run_name or r.get("seed_of") == run_name)])
    if not lines:
        return ""
    return ("\nThe same recipe trained again with other seeds, on the same episodes "
            "(experiments/RESULTS.md):\n\n" + "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "experiments" / "runs" / "blood-v1")
    parser.add_argument("--episodes", type=int, default=600)
    args = parser.parse_args()
    run = RunDir(args.run)
    meta = run.read_meta()
    fp16_copy(args.run, TARGET)
    size = (TARGET / "model.safetensors").stat().st_size
    assert size <= MAX_BYTES, f"float16 weights are {size / 2**20:.1f} MB, above 25 MB"

    result = evaluate([str(args.run), str(TARGET)], ["linear-probe"], TASK, ways=5, shots=5,
                      queries=15, episodes=args.episodes, seed=0, device="cpu")
    change = result["paired"][0]["accuracy_difference"]["mean"]
    print(f"float16 copy: {size / 2**20:.1f} MB; 5-shot linear probe "
          f"{100 * result['results'][0]['accuracy']['mean']:.2f}% -> "
          f"{100 * result['results'][1]['accuracy']['mean']:.2f}% ({100 * change:+.2f} points)")
    assert abs(change) < MAX_CHANGE, "float16 changes accuracy by 0.1 point or more"

    rows = stored_rows()
    trainval = load_task(ROOT / "tasks" / "blood-rare-rbc-trainval.yaml")
    base = trainval.split("base")
    times = [json.loads(line)["time"] for line in
             (args.run / "metrics.jsonl").read_text().splitlines() if '"time"' in line]
    card = CARD.format(
        classes_trained=len(base.classes), images=f"{len(base):,}",
        class_list=", ".join(c.partition("/")[2] for c in base.classes),
        excluded=sum(len(v) for v in trainval.excluded.values()),
        novel=", ".join(c.partition("/")[2] for c in trainval.classes("novel")),
        epochs=meta.metrics.get("epochs_trained"), minutes=round((max(times) - min(times)) / 60),
        torch=torch.__version__, size_mb=size / 2**20, change=100 * change,
        rows=results_rows(rows, args.run.name), seeds=seed_lines(rows, args.run.name),
        features=features_paragraph(rows, meta.embedding.model_dump()))
    (TARGET / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
