"""Regenerate experiments/RESULTS.md and experiments/RESULTS.json in one command:

    python experiments/run.py --tier cpu [--only GROUP ...] [--episodes 600] [--no-train]

`--only` scores those groups and keeps every other group's rows from RESULTS.json.

Row groups come from the registry in experiments/rows/ (one module per group of rows).
Training stages are cached under experiments/runs/<stage>/ (git-ignored): a finished
stage is reused by every row, an interrupted one is resumed, so a tier can run in several
sittings. Each (task, shots) evaluation is cached too (experiments/runs/eval/), keyed by
its pairs and episodes, and every row of a task is scored on the same seeded episodes,
with its paired difference against the task's first row (the reference).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "experiments" / "runs"
RESULTS_JSON = ROOT / "experiments" / "RESULTS.json"
sys.path.insert(0, str(ROOT / "experiments"))

from rows import TARGETS, Group, Pair, Stage, Target, load_groups  # noqa: E402

from fewshot.data.files import sha256_file, shipped_model  # noqa: E402
from fewshot.data.tasks import load_task  # noqa: E402
from fewshot.device import pick_device  # noqa: E402
from fewshot.evaluate import Models, evaluate  # noqa: E402
from fewshot.methods import head_class, parse_head_spec  # noqa: E402
from fewshot.metrics import accuracy_difference  # noqa: E402

WAYS, QUERIES, SEED = 5, 15, 0


def stage_dir(stage: Stage) -> Path:
    return RUNS / stage.name


def stage_done(stage: Stage) -> bool:
    """Finished: model.json written at the end of the run (its prototypes come last)."""
    return (stage_dir(stage) / "prototypes.safetensors").is_file() and \
        (stage_dir(stage) / "model.json").is_file()


def train(stage: Stage) -> None:
    """Run (or resume) a stage with the fewshot CLI; its output goes to the terminal."""
    out = stage_dir(stage)
    command = [sys.executable, "-m", "fewshot", stage.command, "--no-wandb"]
    if (out / "checkpoint").is_dir() or (out / "checkpoint.old").is_dir():
        command += ["--resume", str(out)]
    else:
        command += ["--config", str(ROOT / stage.config), "--out", str(out)]
    for assignment in stage.sets:
        command += ["--set", assignment]
    print("+ " + " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def training_minutes(stage: Stage) -> float | None:
    path = stage_dir(stage) / "metrics.jsonl"
    if not path.is_file():
        return None
    times = [json.loads(line)["time"] for line in path.read_text().splitlines()
             if '"time"' in line]
    return round((max(times) - min(times)) / 60, 1) if times else None


def training_seed(stage: Stage) -> int | None:
    """The seed the stage's run was trained with, as its resolved config.yaml records it."""
    path = stage_dir(stage) / "config.yaml"
    return yaml.safe_load(path.read_text())["train"]["seed"] if path.is_file() else None


def model_spec(pair: Pair, stages: dict[str, Stage]) -> str:
    return str(stage_dir(stages[pair.model])) if pair.model in stages else pair.model


def command_of(task: str, pair: Pair, stages: dict[str, Stage], shots: int | str,
               episodes: int, query_imbalance: float | None) -> str:
    if pair.members:
        def where(m: Pair) -> str:
            return m.model if m.model not in stages else f"experiments/runs/{m.model}"

        models = " ".join(f"--model {where(m)} --head {m.head}" for m in pair.members)
        parts = [f"fewshot evaluate {models} --ensemble --task {task}",
                 f"--ways {WAYS} --shots {shots} --queries {QUERIES} --episodes {episodes}",
                 f"--seed {SEED}"]
        return " ".join(parts)
    model = pair.model if pair.model not in stages else f"experiments/runs/{pair.model}"
    parts = [f"fewshot evaluate --model {model} --head {pair.head} --task {task}",
             f"--ways {WAYS} --shots {shots} --queries {QUERIES} --episodes {episodes}",
             f"--seed {SEED}"]
    if query_imbalance is not None:
        parts.append(f"--query-imbalance {query_imbalance}")
    parts += [f"--unlabeled {folder}" for folder in pair.unlabeled]
    parts += ["--keep-batchnorm"] if pair.keep_batchnorm else []
    parts += ["--whiten"] if pair.whiten else []
    if pair.model in stages:
        stage = stages[pair.model]
        sets = "".join(f" --set {shlex.quote(a)}" for a in stage.sets)
        parts.insert(0, f"fewshot {stage.command} --config {stage.config}{sets} "
                        f"--out experiments/runs/{stage.name} &&")
    return " ".join(parts)


def fingerprint(model: str) -> str | None:
    """Changes when a run's weights, model.json (its embedding) or base statistics are
    rewritten (a retrained or refreshed model is scored again); a shipped model's name
    is read as its folder."""
    folder = Path(model) if Path(model).is_dir() else shipped_model(model)
    if folder is None or not (folder / "model.safetensors").is_file():
        return None
    return hashlib.sha256(b"".join(sha256_file(folder / name).encode() for name in (
        "model.safetensors", "model.json", "prototypes.safetensors")
        if (folder / name).is_file())).hexdigest()[:16]


def head_settings(spec: str | None) -> dict | None:
    """Every setting a head spec runs with, its defaults included, so that a cached
    evaluation is scored again when a default changes."""
    if not spec:
        return None
    name, options = parse_head_spec(spec)
    parameters = inspect.signature(head_class(name)).parameters
    defaults = {key: p.default for key, p in parameters.items()
                if isinstance(p.default, (bool, int, float, str)) or p.default is None}
    return {"head": name, **defaults, **options}


def own_stages(group: Group) -> dict[str, Stage]:
    """The stages a group trains: a pair's model names one of them, else a shipped model,
    `pixels` or `random:...` (another group's stage of the same name is not this one's)."""
    return {stage.name: stage for stage in group.stages}


def score(task: str, chosen: list[tuple[Group, Pair]], shots: int | str,
          episodes: int, cache: Models, query_imbalance: float | None) -> list[dict]:
    """Result rows (evaluate's, plus wall seconds) of every pair, each cached on disk (a new
    row scores only itself; the episodes are the same seeded ones for all)."""
    rows = []
    for group, pair in chosen:  # one call a pair: same episodes, its own wall time
        stages = own_stages(group)
        model, count = model_spec(pair, stages), min(pair.episodes or episodes, episodes)
        members = [model_spec(m, stages) for m in pair.members]
        identity = [task, shots, episodes, query_imbalance, model, fingerprint(model),
                    pair.head, count, None if members else head_settings(pair.head)]
        identity += [pair.unlabeled] if pair.unlabeled else []
        identity += ["keep-batchnorm"] if pair.keep_batchnorm else []
        identity += ["whiten"] if pair.whiten else []
        if members:
            identity += [[m, fingerprint(m), p.head, head_settings(p.head)]
                         for m, p in zip(members, pair.members, strict=True)]
        key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
        cached = RUNS / "eval" / f"{key}.json"
        if cached.is_file():
            rows.append(json.loads(cached.read_text()))
            continue
        started = time.monotonic()
        result = evaluate(members or [model], [m.head for m in pair.members] or [pair.head],
                          task, ways=WAYS, shots=shots, queries=QUERIES, episodes=count,
                          seed=SEED, device="cpu", slow_episodes=count, cache=cache,
                          query_imbalance=query_imbalance, ensemble=bool(members),
                          unlabeled=[ROOT / f for f in pair.unlabeled] or None,
                          keep_batchnorm=pair.keep_batchnorm, whiten=pair.whiten)
        row = result["results"][-1]
        row["wall_s"] = round(time.monotonic() - started, 1)
        row["load_average"] = [round(x, 2) for x in os.getloadavg()]
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(row))
        rows.append(row)
    return rows


def label_of(pair: Pair) -> str:
    return pair.label or f"{pair.model} + {pair.head}"


def check_references(groups: list[Group], registered: list[Group]) -> None:
    """Every group's reference row is among the rows to score, checked before any training
    or scoring (a missing one would otherwise stop the run at its end, its work unsaved)."""
    for group in groups:
        if not group.reference:  # the set's first row
            continue
        if not any(label_of(p) == group.reference for g in groups if g.task == group.task
                   for p in g.pairs):
            owners = sorted(g.name for g in registered if g.task == group.task
                            and any(label_of(p) == group.reference for p in g.pairs))
            raise SystemExit(f"group {group.name}: its reference '{group.reference}' is not "
                             f"among the groups to run; add {' or '.join(owners) or '?'} to "
                             "--only")


def meta_transfer_verdict(rows: list[dict]) -> list[str]:
    """One plain sentence on whether meta-training beat the encoder it started from (a
    paired 95% CI above zero with some head at some shot), from the current meta-transfer
    rows (a group's own reference row is not one); nothing when a task has none."""
    meta = [r for r in rows if r["group"].startswith("meta-transfer")
            and not r.get("measured_on") and r["paired"]["reference"] != r["label"]]
    if not meta:
        return []
    def lower_end(r: dict) -> float:
        return r["paired"]["mean"] - r["paired"]["ci95"]

    best = max(meta, key=lower_end)
    wins = [r for r in meta if lower_end(r) > 0]
    p = best["paired"]
    head = (f"Meta-transfer beats the encoder it starts from in {len(wins)} of {len(meta)} "
            "rows (a paired 95% CI above zero, same test-time head); the best:" if wins else
            "Meta-transfer does not beat the encoder it starts from: no meta-transfer row "
            f"of the {len(meta)} has a paired 95% CI above zero against it with the same "
            "test-time head; the closest:")
    return [f"{head} {best['label']}, {best['shots']}-shot, {100 * p['mean']:+.1f} ± "
            f"{100 * p['ci95']:.1f} vs {p['reference']}.", ""]


def target_verdict(rows: list[dict], target: Target) -> list[str]:
    """Whether the target row reaches its accuracy at each shot count, the rows that came
    closest, and what every lever measured against a learned encoder was worth (a current
    row on balanced queries paired against a row other than the task's floor), best
    first: the summary a reader of an unmet target needs."""
    current = [r for r in rows if r["task"] == target.task and not r.get("measured_on")
               and r.get("query_imbalance") is None]
    if not current:
        return []
    full = max(r["episodes"] for r in current)

    def named(r: dict) -> str:
        inductive = r["protocol"] == "inductive" or r["protocol"] in r["label"]
        return r["label"] + ("" if inductive else f" ({r['protocol']})")

    lines = [f"Targets ({target.label}; {full} episodes, balanced queries):", ""]
    for shots, goal in sorted(target.accuracy.items()):
        at = [r for r in current if r["shots"] == shots]
        row = next((r for r in at if r["label"] == target.label), None)
        if row is None:
            lines.append(f"- {shots}-shot, at least {goal:g}%: not scored yet.")
            continue
        mean = 100 * row["accuracy"]["mean"]
        state = "reached" if mean >= goal else f"not reached ({goal - mean:.1f} points short)"
        text = f"- {shots}-shot, at least {goal:g}%: {pct(row['accuracy'])}, {state}."
        shown = set()
        for what, protocol in (("inductive row", "inductive"), ("row of any protocol", None)):
            pool = [r for r in at if r["episodes"] == full and r["label"] != target.label
                    and (protocol is None or r["protocol"] == protocol)]
            best = max(pool, key=lambda r: r["accuracy"]["mean"]) if pool else None
            if best is not None and best["label"] not in shown:
                shown.add(best["label"])
                text += f" Best other {what}: {named(best)}, {pct(best['accuracy'])}."
        lines.append(text)
    lines += ["", target.elsewhere, ""] if target.elsewhere else [""]
    for shots in sorted(target.accuracy):
        seen, levers = set(), []
        for r in current:
            p = r["paired"]
            key = (r["model"], r["head"], r["episodes"], r["accuracy"]["mean"], p["reference"])
            if (r["shots"] != shots or p["reference"] in (r["label"], target.floor)
                    or key in seen or r.get("seed_of")):
                continue
            seen.add(key)
            levers.append(r)
        if levers:
            lines += [f"What each lever was worth at {shots}-shot: every paired difference "
                      "between rows of learned encoders (the row, minus the reference it names, "
                      "on the same episodes; best first). A row whose reference has the lever "
                      "reads as its cost, e.g. an encoder without meta-training against the "
                      "same encoder with it:", ""]
            lines += [f"- {named(r)}: {100 * r['paired']['mean']:+.1f} ± "
                      f"{100 * r['paired']['ci95']:.1f} vs {r['paired']['reference']}"
                      + ("" if r["episodes"] == full else f" ({r['episodes']} episodes)")
                      for r in sorted(levers, key=lambda r: -r["paired"]["mean"])]
            lines.append("")
    return lines


def seed_spread(rows: list[dict]) -> list[str]:
    """One line per (encoder, head, shots, queries) scored with more than one training
    seed: each seed's accuracy, their mean and standard deviation, beside the episode CI of
    one seed, so a reader sees how much of a difference the seed alone makes."""
    def base(r: dict) -> tuple:
        return (r.get("seed_of") or r["model"], r["head"], r["shots"], r.get("query_imbalance"))

    current = [r for r in rows if not r.get("measured_on") and r["seeds"]["training"]]
    lines = []
    for key in dict.fromkeys(base(r) for r in current if r.get("seed_of")):
        runs = sorted((r for r in current if base(r) == key),
                      key=lambda r: r["seeds"]["training"][0])
        if len(runs) < 2:
            continue
        accuracy = [100 * r["accuracy"]["mean"] for r in runs]
        first = next((r for r in runs if not r.get("seed_of")), runs[0])
        balance = "" if key[3] is None else f", Dirichlet α={key[3]:g} queries"
        lines.append(
            f"- {first['label']}, {key[2]}-shot{balance}, training seeds "
            f"{', '.join(str(r['seeds']['training'][0]) for r in runs)}: "
            f"{', '.join(f'{a:.1f}' for a in accuracy)}; mean {statistics.mean(accuracy):.1f}, "
            f"standard deviation across seeds {statistics.stdev(accuracy):.1f} points "
            f"(episode 95% CI of one seed: ± {100 * first['accuracy']['ci95']:.1f}).")
    return lines


def compute(result: dict, stage: Stage | None) -> dict:
    return {"device": f"cpu ({os.cpu_count()} cores, {platform.processor() or 'x86_64'})",
            "evaluation_s": result["wall_s"],
            "training_min": training_minutes(stage) if stage else None,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load_average": result.get("load_average")
            or [round(x, 2) for x in os.getloadavg()]}


def shots_order(shots: int | str) -> tuple[int, str]:
    """Equal shots by K, then unequal ones (`1-5`, `1,2,3,4,5`) after them."""
    return (shots, "") if isinstance(shots, int) else (10**6, str(shots))


def score_rows(task: str, name: str, pairs: list[tuple[Group, Pair]], episodes: int,
               cache: Models, imbalance: float | None) -> list[dict]:
    """RESULTS rows of pairs that share one episode set, each with its paired difference
    against its group's reference (default: the first row of the set)."""
    rows = []
    for shots in sorted({s for g, _ in pairs for s in g.shots}, key=shots_order):
        chosen = [(g, p) for g, p in pairs if shots in g.shots]
        scored = score(task, chosen, shots, episodes, cache, imbalance)
        labels = [label_of(p) for _, p in chosen]
        for (group, pair), result in zip(chosen, scored, strict=True):
            reference = group.reference or labels[0]
            if reference not in labels:
                raise SystemExit(f"group {group.name}: no row '{reference}' to pair with")
            diff = accuracy_difference(scored[labels.index(reference)]["per_episode_accuracy"],
                                       result["per_episode_accuracy"])
            stages = own_stages(group)
            stage = stages.get(pair.model)
            against_members = []
            for member in pair.members:
                label = member.label or f"{member.model} + {member.head}"
                if label not in labels:
                    raise SystemExit(f"group {group.name}: ensemble member '{label}' has no "
                                     "row of its own")
                d = accuracy_difference(scored[labels.index(label)]["per_episode_accuracy"],
                                        result["per_episode_accuracy"])
                against_members.append({"reference": label, "episodes": d["episodes"],
                                        "mean": d["mean"], "ci95": d["ci95"]})
            rows.append({
                "group": group.name, "label": pair.label or f"{pair.model} + {pair.head}",
                "task": name, "ways": WAYS, "shots": shots, "queries": QUERIES,
                "query_imbalance": imbalance,
                "model": pair.model, "head": pair.head, "protocol": result["protocol"],
                "episodes": result["episodes"],
                **{k: result[k] for k in ("accuracy", "macro_f1", "auroc")},
                "paired": {"reference": reference, "episodes": diff["episodes"],
                           "mean": diff["mean"], "ci95": diff["ci95"]},
                **({"paired_members": against_members} if against_members else {}),
                "seeds": {"episodes": SEED,
                          "training": [training_seed(stage)] if stage else []},
                **({"seed_of": group.seed_of} if group.seed_of else {}),
                "command": command_of(task, pair, stages, shots, result["episodes"],
                                      imbalance),
                "compute": compute(result, stage)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", choices=["cpu", "gpu"], required=True)
    parser.add_argument("--only", nargs="*", default=None, help="row groups to run")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--no-train", action="store_true",
                        help="score only what is trained; list the rest as not run")
    args = parser.parse_args()

    registered = load_groups()
    known = {g.name for g in registered}
    unknown = sorted(set(args.only or []) - known)
    if unknown:
        raise SystemExit(f"unknown row group(s) {unknown}; registered: {sorted(known)}")
    groups = [g for g in registered if g.tier == args.tier
              and (args.only is None or g.name in args.only)]
    check_references(groups, registered)
    rows, missing = [], []
    by_task: dict[str, list[Group]] = {}
    for group in groups:
        by_task.setdefault(group.task, []).append(group)
    for task, task_groups in by_task.items():
        loaded = load_task(ROOT / task)
        cache = Models(loaded, "novel", SEED, pick_device("cpu"), quiet=False)
        pairs, stages = [], {}
        for group in task_groups:
            ready = True
            for folder, script in group.prepare.items():
                if not (ROOT / folder).is_dir():
                    print(f"+ python {script}", flush=True)
                    subprocess.run([sys.executable, *shlex.split(script)], check=True, cwd=ROOT)
            for stage in group.stages:
                stages[stage.name] = stage
                if not stage_done(stage):
                    if args.no_train:
                        ready = False
                        continue
                    train(stage)
            if ready:
                pairs += [(group, p) for p in group.pairs]
            else:
                missing.append(group.name)
        for imbalance in dict.fromkeys(g.query_imbalance for g in task_groups):
            episode_set = [(g, p) for g, p in pairs if g.query_imbalance == imbalance]
            if episode_set:
                rows += score_rows(task, loaded.name, episode_set, args.episodes, cache,
                                   imbalance)
    if args.only is not None:  # the other groups keep their rows from the last full run
        kept = [r for r in previous_rows(args.tier) if r["group"] not in set(args.only)]
        rows = kept + rows
    missing += [name for name in unscored(rows, registered, args.tier) if name not in missing]
    write(rows, missing, args.tier, [g.name for g in registered])


def unscored(rows: list[dict], registered: list[Group], tier: str) -> list[str]:
    """The tier's registered groups that have no row."""
    scored = {r["group"] for r in rows}
    return [g.name for g in registered if g.tier == tier and g.name not in scored]


def previous_rows(tier: str) -> list[dict]:
    if not RESULTS_JSON.is_file():
        return []
    stored = json.loads(RESULTS_JSON.read_text())
    return stored["rows"] if stored.get("tier") == tier else []


def pct(entry: dict) -> str:
    return f"{100 * entry['mean']:.1f} ± {100 * entry['ci95']:.1f}"


def write(rows: list[dict], missing: list[str], tier: str, registered: list[str]) -> None:
    RESULTS_JSON.write_text(json.dumps({"tier": tier, "rows": rows}, indent=2) + "\n")
    text = markdown(rows, missing, tier, registered)
    RESULTS_JSON.with_suffix(".md").write_text(text)
    print(text)


def markdown(rows: list[dict], missing: list[str], tier: str, registered: list[str]) -> str:
    """RESULTS.md: a table per task (rows in the registry's group order, whichever groups
    a run re-scored), then its footnotes and summaries."""
    order = {name: i for i, name in enumerate(registered)}
    lines = ["# Results", "",
             f"Written by `python experiments/run.py --tier {tier}`; every row of a task "
             f"on the same seeded episodes ({WAYS}-way, {QUERIES} queries a class, or "
             f"{WAYS * QUERIES} split by a Dirichlet draw where the queries column says so, "
             f"seed {SEED}; "
             "inductive unless the protocol column says otherwise), accuracy, macro-F1 and "
             "AUROC as mean ± 95% CI over episodes, and the paired accuracy difference "
             "against the row named (on the same episodes). Commands, compute and load "
             "average per row are in RESULTS.json.", ""]
    for task in dict.fromkeys(r["task"] for r in rows):
        lines += [f"## {task}", "",
                  "| row | shots | queries | episodes | accuracy % | macro-F1 % | AUROC % | "
                  "vs reference, points | protocol | train min | eval s | load avg |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        printed = set()  # a measurement two groups share with the same comparison (a
        # reference of their own, or the same pair under two labels) prints once; the same
        # label on other episodes (a finetune row on 50 and on 100) prints twice
        for r in sorted((r for r in rows if r["task"] == task),
                        key=lambda r: (r.get("query_imbalance") is not None,
                                       shots_order(r["shots"]),
                                       order.get(r["group"], len(order)), rows.index(r))):
            if (seen := (r["model"], r["head"], r["shots"], r.get("query_imbalance"),
                         r["episodes"], r["accuracy"]["mean"], r["paired"]["reference"])) \
                    in printed:
                continue
            printed.add(seen)
            p = r["paired"]
            vs = ("reference" if p["reference"] == r["label"] else
                  f"{100 * p['mean']:+.1f} ± {100 * p['ci95']:.1f} vs {p['reference']}")
            c = r["compute"]
            seconds = "-" if c["evaluation_s"] is None else f"{c['evaluation_s']:.0f}"
            balance = ("balanced" if r.get("query_imbalance") is None
                       else f"Dirichlet α={r['query_imbalance']:g}")
            mark = " †" if r.get("measured_on") else ""
            lines.append(f"| {r['label']}{mark} | {r['shots']} | {balance} | {r['episodes']} | "
                         f"{pct(r['accuracy'])} | {pct(r['macro_f1'])} | {pct(r['auroc'])} | "
                         f"{vs} | {r['protocol']} | {c['training_min'] or '-'} | "
                         f"{seconds} | {(c['load_average'] or ['-'])[0]} |")
        lines.append("")
        for earlier in dict.fromkeys(r["measured_on"] for r in rows
                                     if r["task"] == task and r.get("measured_on")):
            names = list(dict.fromkeys(r["group"] for r in rows if r["task"] == task
                                       and r.get("measured_on") == earlier))
            live = [n for n in names if n in registered]
            retired = [n for n in names if n not in registered]
            text = (f"† Measured on {earlier}, and paired against a row of those weights "
                    "as they were then.")
            if live:
                text += (" `python experiments/run.py --tier cpu --only GROUP` re-scores it "
                         f"on the current ones (groups: {', '.join(live)}).")
            if retired:
                text += (f" The rows of {', '.join(retired)} are those weights' own rows, "
                         "no longer registered: their current counterparts are the rows "
                         "without †.")
            lines += [text, ""]
        for target in TARGETS:
            if any(r["task"] == task == target.task for r in rows):
                lines += target_verdict(rows, target)
        lines += meta_transfer_verdict([r for r in rows if r["task"] == task])
        if spread := seed_spread([r for r in rows if r["task"] == task]):
            lines += ["Training seeds (the same recipe trained again; the same episodes):", "",
                      *spread, ""]
        for r in rows:
            if r["task"] == task and r.get("paired_members"):
                lines.append(f"- {r['label']} ({r['shots']}-shot) against each member: "
                             + "; ".join(f"{100 * p['mean']:+.1f} ± {100 * p['ci95']:.1f} vs "
                                         f"{p['reference']}" for p in r["paired_members"]))
        if any(r["task"] == task and r.get("paired_members") for r in rows):
            lines.append("")
    if missing:
        lines += ["Registered and not scored yet (their training stages are not in "
                  "experiments/runs/; `--only GROUP` with its reference's group trains and "
                  "scores one): " + ", ".join(missing), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
