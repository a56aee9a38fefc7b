"""MODEL_CARD.md of an adapted model, rendered from its adapted.json content."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from fewshot.calibration import made_worse
from fewshot.models.embedding import EmbeddingSpec


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def metrics_section(metrics: dict[str, Any]) -> list[str]:
    if not metrics.get("heldout"):
        note = metrics.get("note", "no held-out images")
        return [f"No leave-out estimate: {note}."]
    low, high = metrics["ci95"]
    lines = [
        f"- Leave-out accuracy: **{percent(metrics['accuracy'])}** "
        f"({metrics['correct']} of {metrics['heldout']} held-out images; 95% CI "
        f"{percent(low)} to {percent(high)}, {metrics['ci_method']}).",
        "",
        "| class | held-out images | correct | sensitivity |",
        "|---|---:|---:|---:|",
    ]
    for name, stat in metrics.get("per_class", {}).items():
        lines.append(f"| {name} | {stat['heldout']} | {stat['correct']} | "
                     f"{percent(stat['sensitivity'])} |")
    confusion = metrics.get("confusion")
    if confusion:
        lines += ["", "Confusion matrix (rows: true class, columns: predicted class):", "",
                  "| true \\ predicted | " + " | ".join(confusion["columns"]) + " |",
                  "|---|" + "---:|" * len(confusion["columns"])]
        for name, row in zip(confusion["rows"], confusion["matrix"], strict=True):
            lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return lines


def calibration_section(c: dict[str, Any] | None, diagram: bool = True) -> list[str]:
    if not c:
        return ["Probabilities are the softmax of the method's scores (no calibration "
                "recorded)."]
    how = {"k-fold": f"fitted by {c.get('folds')}-fold cross-validation over the support "
                     "set (the held-out images did not choose it)",
           "k-fold-proxy": f"fitted by {c.get('folds')}-fold cross-validation over the "
                           f"support set through `{c.get('proxy')}` on the same features "
                           "(this method is not re-run per fold)",
           "uncalibrated": "not fitted: one image a class leaves nothing to fold, so the "
                           "probabilities are the raw softmax (uncalibrated)",
           "off": "not fitted (`--no-calibrate`): the probabilities are the raw softmax"}
    if c["fit"] == "members":
        lines = ["Each member is calibrated on its own (its model card says how); the "
                 "ensemble averages the calibrated probabilities. \"Before\" below is the "
                 "mean of the members' raw softmax."]
    else:
        lines = [f"Probabilities are softmax(scores / T) with temperature **T = "
                 f"{c['temperature']:.3g}**, {how[c['fit']]}."]
    if c.get("ece_before") is not None:
        lines += ["", f"On {c['heldout']} held-out images (ECE: 10 equal-width confidence "
                  "bins; Brier: multi-class):", "",
                  "| | before | after |", "|---|---:|---:|",
                  f"| ECE | {c['ece_before']:.3f} | {c['ece_after']:.3f} |",
                  f"| Brier score | {c['brier_before']:.3f} | {c['brier_after']:.3f} |"]
        if made_worse(c):
            lines += ["", "**The temperature made the held-out ECE worse**: the support folds "
                      "it was fitted on did not represent the held-out images (for a "
                      "transductive method, nor the batch they were classified in). Adapt "
                      "with `--no-calibrate` to keep the raw softmax, or with more shots."]
        lines += ["", "![reliability diagram](reliability.png)"] if diagram else []
    return lines


def domain_section(d: dict[str, Any] | None) -> list[str]:
    if not d:
        return ["No out-of-domain check was recorded."]
    base = d.get("base")
    if base is None and d.get("out_of_domain"):
        lines = [f"**Out of domain**: {d.get('note')}."]
    elif base is None:
        lines = [f"Not checked against the base domain here: {d.get('note')}."]
    else:
        aligned = base.get("before_alignment")
        remedy = "pretrain on this domain" if aligned else \
            "pretrain on this domain or adapt with unlabeled images of it"
        verdict = (f"**out of domain**: accuracy may be near the pixel floor; {remedy}"
                   if base["out_of_domain"] else "within the encoder's domain") + (
            " (the encoder as trained, before its alignment to the unlabeled images)"
            if aligned else "")
        lines = [f"Support and held-out images against the base domain ({d['measure']}): "
                 f"median {base['score']:.2f} over {base['images']} images, threshold "
                 f"{base['threshold']:.2f} (the {base['percentile']:g}th percentile of base "
                 f"images' own scores): {verdict}."]
    support = d.get("support", {})
    if support.get("threshold") is not None:
        lines += ["", f"`fewshot predict` marks an image `out_of_domain` when its "
                  f"{support['measure']} is above {support['threshold']:.3f} "
                  f"({support['reference']})."]
    return lines


def cv_section(c: dict[str, Any]) -> list[str]:
    lines = [f"`{c['chosen']}` was chosen by {c['folds']}-fold cross-validation over the "
             f"{c['images']} support images (out-of-fold accuracy "
             f"{100 * c['accuracy']:.1f}%; the held-out images did not take part):", "",
             "| candidate | out-of-fold accuracy |", "|---|---:|"]
    lines += [f"| {g['method']}{' (chosen)' if g['method'] == c['chosen'] else ''} | "
              f"{100 * g['accuracy']:.1f}% |" for g in c["grid"]]
    return lines + ["", "Out-of-fold accuracy from a few images is noisy, and the best of "
                    f"{len(c['grid'])} candidates is optimistic: the held-out metrics "
                    "below are the estimate to trust."]


def model_argument(path: str | None) -> str | None:
    """A base model as `--model` takes it: a model shipped in the package by its name (its
    install path differs from one environment to the next), any other by its path."""
    from fewshot.data.files import packaged, shipped_model

    name = Path(path).name if path else ""
    if path and Path(path).parent == packaged("models").resolve() and shipped_model(name):
        return name
    return path


def model_options(doc: dict[str, Any]) -> str:
    members = doc.get("metrics", {}).get("members") if doc.get("members") else None
    if members:
        return "".join(f" --model {model_argument(m['base_model'])} --method {m['method']}"
                       for m in members)
    model = f" --model {model_argument((doc.get('base_model') or {}).get('path'))}"
    alignment = doc.get("alignment") or {}
    unlabeled = "".join(f" --unlabeled {f}" for f in alignment.get("folders", [])) + (
        " --keep-batchnorm" if alignment.get("batchnorm") == "kept" else "") + (
        " --whiten" if alignment.get("whitened") else "")
    return model + (" --cv" if doc.get("cv") else f" --method {doc['method']}") + unlabeled


def ensemble_section(doc: dict[str, Any]) -> list[str]:
    lines = [f"The mean of the calibrated probabilities of {len(doc['members'])} adapted "
             "models, each adapted on the same support images (its own folder and model "
             "card under `members/`). Scored on the same held-out images:", "",
             "| member | base model | method | leave-out accuracy | ECE |",
             "|---|---|---|---:|---:|"]
    for m in doc.get("metrics", {}).get("members", []):
        ece = "n/a" if m.get("ece") is None else f"{m['ece']:.3f}"
        lines.append(f"| `{m['path']}` | `{m['base_model']}` | `{m['method']}` | "
                     f"{percent(m.get('accuracy'))} | {ece} |")
    metrics, calibration = doc.get("metrics", {}), doc.get("calibration") or {}
    if metrics.get("heldout"):
        ece = calibration.get("ece_after")
        lines.append(f"| ensemble | | mean | {percent(metrics.get('accuracy'))} | "
                     + ("n/a" if ece is None else f"{ece:.3f}") + " |")
    return lines


def render_card(doc: dict[str, Any], diagram: bool = True) -> str:
    """The model card of an adapted folder's document; `diagram`: reliability.png was
    drawn beside it (it needs matplotlib), so the card may show it."""
    base = doc.get("base_model") or {}
    support = Counter(item["class"] for item in doc.get("support", []))
    heldout = {name: stat["heldout"]
               for name, stat in doc.get("metrics", {}).get("per_class", {}).items()}
    new_classes = doc.get("new_classes", doc["classes"])
    skipped = doc.get("skipped", [])
    lines = [
        f"# Model card: {', '.join(new_classes)}",
        "",
        f"Adapted with fewshot {doc['fewshot_version']} by `{doc['method']}` from "
        f"{doc.get('shots', '?')} images per class at most (seed {doc.get('seed', '?')}).",
        "",
        "## Intended use",
        "",
        "Research only: exploring whether a few examples separate these classes. It is "
        "**not a medical device** and must not be used for diagnosis, triage or any "
        "decision about a patient. Its output is a probability over the classes below, "
        "never a finding.",
        "",
        "## Model",
        "",
        (f"- Base model: `{base.get('path')}` (sha256 `{base.get('sha256')}`), trained on "
         f"task `{base.get('task')}` with head `{base.get('head')}`." if base else
         "- Base models: one per member (see Ensemble)."),
        f"- Encoder `{doc['backbone']}`; method `{doc['method']}`.",
        *([f"- Features: {embedding_words(doc['embedding'])}."]
          if not EmbeddingSpec.model_validate(doc.get("embedding") or {}).plain else []),
        *(["- Transductive: `fewshot predict` classifies the images of one call jointly, so "
           "a prediction depends on the other images predicted with it (with fewer than two "
           "images a class on average it falls back to the support prototypes alone)."]
          if doc.get("protocol") == "transductive" else []),
        f"- Classes: {', '.join(doc['classes'])}.",
    ]
    if doc.get("keep_base"):
        lines.append(f"- The base classes ({len(doc.get('base_classes', []))}) are answered "
                     "from the base model's stored class prototypes.")
    prep = doc["preprocessing"]
    lines += [
        f"- Input: {prep['colour']}; {prep['resize']} ({prep['image_size']} px); "
        f"normalised with mean {prep['normalization']['mean']} and std "
        f"{prep['normalization']['std']}.",
        "",
        "## Data",
        "",
        f"Support images from `{doc.get('data', {}).get('folder')}`; every other readable "
        "image of the folder was held out and scored. File names and sha256 hashes of the "
        "support images are in adapted.json.",
        "",
        "| class | support images | held-out images scored |",
        "|---|---:|---:|",
    ]
    for name in new_classes:
        lines.append(f"| {name} | {support.get(name, 0)} | {heldout.get(name, 0)} |")
    if skipped:
        lines += ["", f"{len(skipped)} file(s) could not be read and were skipped "
                  "(listed in adapted.json)."]
    if doc.get("alignment"):
        a = doc["alignment"]
        lines += ["", f"Aligned to {a['images']} unlabeled images of the new domain "
                  "(listed with their sha256 in adapted.json) before the support set was "
                  + ("seen: batch-norm statistics kept as trained"
                     if a.get("batchnorm") == "kept" else
                     f"seen: batch-norm statistics of {a['batchnorm_layers']} layers "
                     "re-estimated on them")
                  + (", features centred on their mean feature" if a["centred"] else "")
                  + (" and whitened with their covariance" if a.get("whitened") else "")
                  + (f", and the probe fitted with an MMD term on {a['mmd_images']} of them"
                     if a.get("mmd_images") else "") + ". None of them is "
                  "an image of the adapt folder (checked by path, content and "
                  "near-duplicate search)."]
    if doc.get("cv"):
        lines += ["", "## Choice of method", ""] + cv_section(doc["cv"])
    lines += ["", "## Metrics", ""] + metrics_section(doc.get("metrics", {}))
    if doc.get("members"):
        lines += ["", "## Ensemble", ""] + ensemble_section(doc)
    lines += ["", "## Calibration", ""] + calibration_section(doc.get("calibration"), diagram)
    lines += ["", "## Domain", ""] + domain_section(doc.get("domain"))
    lines += [
        "",
        "## Limitations",
        "",
        "- A few support images describe a class poorly; the interval above is wide for "
        "that reason and is itself uncertain.",
        "- Held-out images come from the same folder as the support images (same "
        "source, likely the same patients, scanner and staining), so the leave-out "
        "accuracy is optimistic for images from elsewhere. The interval treats images "
        "as independent, which images of one patient are not.",
        "- A temperature fitted on a few support images is itself uncertain; a "
        "`--reject-below` threshold has not been validated on images of other classes.",
        "- The model knows only the classes listed; an image of any other kind still gets "
        "one of them unless it is rejected.",
        "",
        "## Reproduce",
        "",
        f"    fewshot adapt --shots {doc.get('shots')} {doc.get('data', {}).get('folder')}"
        + model_options(doc) + f" --seed {doc.get('seed')}"
        + (" --keep-base" if doc.get("keep_base") else "")
        + (" --no-calibrate" if (doc.get("calibration") or {}).get("fit") == "off" else ""),
        "",
    ]
    return "\n".join(lines)


def embedding_words(spec: dict) -> str:
    """model.json's `embedding` in a sentence."""
    stages = spec.get("stages") or []
    words = (f"stages {', '.join(f'`{s}`' for s in stages)} pooled, each L2-normalised, "
             "concatenated") if stages else "the encoder's output"
    if spec.get("dihedral"):
        words += ", averaged over the 8 flips and rotations of each image"
    return words
