"""What a person reads after a command: evaluate's and adapt's result tables on the
terminal (rich) and their W&B runs (tables, summaries, artifacts). Above `tracking`;
nothing below the commands imports it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from fewshot.tracking import Tracker


def results_table(result: dict[str, Any]):
    """A rich table of the results (percentages) with paired differences."""
    from fewshot.data.episodes import shots_text

    title = (f"{result['task']} / {result['split']}: {result['ways']}-way "
             f"{shots_text(result['shots'])}-shot,"
             f" {result['queries']} queries, seed {result['seed']}, {result['protocol']}")
    if result.get("query_imbalance") is not None:
        title += f", queries Dirichlet(α={result['query_imbalance']:g})"
    if result["protocol"] == "mixed":
        title += " (inductive and transductive pairs: see the protocol column)"
    table = Table(title=title)
    for column in ("model", "head", "protocol", "episodes", "accuracy %", "macro-F1 %",
                   "balanced acc %", "AUROC %", "Δ acc vs first"):
        table.add_column(column, justify="left" if column in ("model", "head") else "right")
    first = result["results"][0]
    reference = f"{first['model']} + {first['head']}"
    diffs = {p["other"]: p for p in result["paired"] if p["reference"] == reference}
    others = [p for p in result["paired"] if p["reference"] != reference]
    if others:  # the ensemble against each pair it averages
        table.caption = "; ".join(
            f"{p['other'].split(' + ', 1)[0]} vs {p['reference']}: "
            f"{100 * p['accuracy_difference']['mean']:+.2f} ± "
            f"{100 * p['accuracy_difference']['ci95']:.2f}" for p in others)

    def pct(entry: dict[str, float]) -> str:
        return f"{100 * entry['mean']:.2f} ± {100 * entry['ci95']:.2f}"

    for r in result["results"]:
        label = f"{r['model']} + {r['head']}"
        d = diffs.get(label)
        delta = (f"{100 * d['accuracy_difference']['mean']:+.2f} ± "
                 f"{100 * d['accuracy_difference']['ci95']:.2f}") if d else "-"
        table.add_row(r["model"], r["head"], r["protocol"], str(r["episodes"]), pct(r["accuracy"]),
                      pct(r["macro_f1"]), pct(r["balanced_accuracy"]), pct(r["auroc"]), delta)
    return table


def sensitivity_table(result: dict[str, Any]):
    table = Table(title="per-class sensitivity % (pooled over episodes)")
    table.add_column("class")
    for r in result["results"]:
        table.add_column(f"{r['model']} + {r['head']}", justify="right")
    names = sorted({n for r in result["results"] for n in r["per_class_sensitivity"]})
    for name in names:
        table.add_row(name, *[f"{100 * r['per_class_sensitivity'].get(name, float('nan')):.1f}"
                              for r in result["results"]])
    return table


def log_results(result: dict[str, Any], use_wandb: bool, quiet: bool, *,
                project: str = "fewshot", entity: str | None = None, name: str | None = None,
                log_model: bool = False) -> None:
    """An `evaluate` run in W&B (job_type `evaluate`): the results and paired differences
    as tables; `log_model` adds each scored run directory as a model artifact."""
    if not use_wandb:
        return
    config = {k: v for k, v in result.items() if k not in ("results", "paired")}
    with Tracker(None, job_type="evaluate", config=config, quiet=quiet, project=project,
                 entity=entity, name=name) as tracker:
        columns = ["model", "head", "protocol", "episodes", "accuracy", "accuracy_ci95",
                   "macro_f1", "balanced_accuracy", "auroc"]
        rows = [[r["model"], r["head"], r["protocol"], r["episodes"], r["accuracy"]["mean"],
                 r["accuracy"]["ci95"], r["macro_f1"]["mean"],
                 r["balanced_accuracy"]["mean"], r["auroc"]["mean"]] for r in result["results"]]
        tracker.log_table("test/results", columns, rows, step=0)
        tracker.log_table("test/paired", ["reference", "other", "episodes", "difference",
                                          "difference_ci95"],
                          [[p["reference"], p["other"], p["episodes"],
                            p["accuracy_difference"]["mean"], p["accuracy_difference"]["ci95"]]
                           for p in result["paired"]], step=0)
        for r in result["results"]:
            tracker.log_table(f"test/sensitivity/{r['model']}+{r['head']}",
                              ["class", "sensitivity"],
                              [[k, v] for k, v in r["per_class_sensitivity"].items()], step=0)
        tracker.summary({f"test/{r['model']}+{r['head']}/accuracy": r["accuracy"]["mean"]
                         for r in result["results"]})
        if log_model:
            for model in dict.fromkeys(r["model"] for r in result["results"]):
                if Path(model).is_dir():  # not 'pixels' or 'random:<backbone>'
                    tracker.log_artifact(Path(model), name=f"model-{Path(model).resolve().name}")


def log_adapt(adapted, target: Path, quiet: bool, *, project: str = "fewshot",
              entity: str | None = None, name: str | None = None,
              log_model: bool = False) -> None:
    """An `adapt` run in W&B (job_type `adapt`): leave-out accuracy, per-class
    sensitivity and the confusion matrix as tables, and an ensemble's members with their
    own leave-out accuracy on the same images; `log_model` adds the adapted folder as an
    artifact."""
    m = adapted.metrics
    config = {"method": adapted.method, "classes": adapted.classes, "adapted_dir": str(target)}
    with Tracker(None, job_type="adapt", config=config, quiet=quiet, project=project,
                 entity=entity, name=name, wandb_dir=target) as tracker:
        if m.get("heldout"):
            tracker.log({"adapt/accuracy": m["accuracy"], "adapt/ci95_low": m["ci95"][0],
                         "adapt/ci95_high": m["ci95"][1], "adapt/heldout": m["heldout"]},
                        step=0)
            tracker.log_table("adapt/sensitivity", ["class", "heldout", "sensitivity"],
                              [[k, v["heldout"], v["sensitivity"]]
                               for k, v in m["per_class"].items()], step=0)
        if m.get("confusion"):
            c = m["confusion"]
            tracker.log_table("adapt/confusion", ["true", *c["columns"]],
                              [[r, *row] for r, row in zip(c["rows"], c["matrix"], strict=True)],
                              step=0)
        if m.get("members"):
            tracker.log_table("adapt/members", ["member", "base_model", "method", "accuracy",
                                                "ece"],
                              [[e["path"], e["base_model"], e["method"], e["accuracy"],
                                e["ece"]] for e in m["members"]], step=0)
        if log_model:
            tracker.log_artifact(Path(target), name=f"adapted-{Path(target).resolve().name}",
                                 kind="adapted-model")


def confusion_table(confusion: dict[str, Any]):
    table = Table(title="held-out confusion (rows: true, columns: predicted)")
    table.add_column("true \\ predicted")
    for name in confusion["columns"]:
        table.add_column(name, justify="right")
    for name, row in zip(confusion["rows"], confusion["matrix"], strict=True):
        table.add_row(name, *(str(v) for v in row))
    return table
