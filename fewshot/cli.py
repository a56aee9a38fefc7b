"""The `fewshot` command line (Typer): commands parse, call and print.

Errors are one line, `error: <what> (<where>): <how to fix>`; exit codes: 0 success, 1 the
inputs have problems, 2 the command cannot start as asked, 130 interrupted.
"""

from __future__ import annotations

import errno
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fewshot.errors import FewShotError, UsageError
from fewshot.version import __version__

app = typer.Typer(
    name="fewshot",
    help="Few-shot and meta-transfer learning for medical images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Check image folders; write the shipped sample.", no_args_is_help=True)
app.add_typer(data_app, name="data")

screen = Console(highlight=False, soft_wrap=True)

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only results and errors.")]
HEAD_NAMES = ("protonet, simpleshot, linear-probe, finetune, maml, fomaml, anil, metasgd, "
              "bd-cspn, tim, tim-probe, batch-centred-probe, pt-map, laplacianshot, siamese")
"""The built-in heads, for help texts (which must not import torch to list them)."""


def _opt(*decls: str, metavar: str | None = None, help: str, **kw):
    return typer.Option(*decls, metavar=metavar, help=help, **kw)


ConfigOpt = Annotated[Path | None, _opt("--config", "-c", metavar="FILE", help="Experiment "
                                        "config (YAML), e.g. configs/protonet-conv4.yaml "
                                        "(fewshot list configs); default: the shipped "
                                        "quickstart.")]
SetOpt = Annotated[list[str] | None, _opt("--set", metavar="KEY=VALUE", help="Override one "
                                          "config key, e.g. --set train.lr=0.01 (repeatable).")]
OutOpt = Annotated[Path | None, _opt("--out", metavar="RUN_DIR",
                                     help="Run directory (default runs/<name>-<time>).")]
RESUME_DEFAULT = "runs/latest"
ResumeOpt = Annotated[str | None, _opt(
    "--resume", metavar="[RUN_DIR]",
    help=f"Continue a run from its checkpoint (default {RESUME_DEFAULT}).")]
DataRootOpt = Annotated[str | None, _opt("--data-root", envvar="FEWSHOT_DATA", metavar="DIR",
                                         help="Root of the task's datasets.")]
UnlabeledOpt = Annotated[list[Path] | None, _opt(
    "--unlabeled", metavar="DIR", help="Unlabeled images of the target domain, any layout "
    "(repeatable); never images a result is measured on (checked: adapt's folder, "
    "evaluate's split, a training task's val and novel classes).")]
KeepBatchnormOpt = Annotated[bool, _opt(
    "--keep-batchnorm", help="With --unlabeled: keep the encoder's trained batch-norm "
    "statistics and only re-centre the features on the unlabeled images.")]
WhitenOpt = Annotated[bool, _opt(
    "--whiten", help="With --unlabeled: also whiten the centred features with the unlabeled "
    "images' covariance (simpleshot, linear-probe, tim, tim-probe, batch-centred-probe, bd-cspn, "
    "laplacianshot).")]


def absolute(folders: list[Path] | None) -> list[Path] | None:
    """Folders as absolute paths, so that records and model cards name them from anywhere."""
    return [folder.resolve() for folder in folders] if folders else None


DeviceOpt = Annotated[str | None, _opt("--device", metavar="NAME", help="auto, cpu, cuda or mps.")]
SeedOpt = Annotated[int | None, _opt("--seed", metavar="S", help="Random seed.")]
WandbOpt = Annotated[bool | None, _opt("--wandb/--no-wandb",
                                       help="Log to W&B (offline unless configured).")]
ProjectOpt = Annotated[str | None, _opt("--wandb-project", metavar="NAME", help="W&B project.")]
EntityOpt = Annotated[str | None, _opt("--wandb-entity", metavar="NAME",
                                       help="W&B entity (team).")]
RunNameOpt = Annotated[str | None, _opt("--run-name", metavar="NAME", help="W&B run name.")]
LogModelOpt = Annotated[bool, _opt("--log-model", help="Log the run directory as a W&B artifact.")]


def _version(value: bool) -> None:
    if value:
        print(f"fewshot {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Few-shot and meta-transfer learning for medical images."""


@data_app.command("check")
def data_check(
    folder: Annotated[Path, typer.Argument(metavar="DIR",
                                           help="Folder laid out as <class>/<images>.")],
    shots: Annotated[int, _opt("--shots", min=1, metavar="K",
                               help="Support images per class.")] = 5,
    queries: Annotated[int, _opt("--queries", min=0, metavar="Q",
                                 help="Query images per class.")] = 15,
    write_groups: Annotated[Path | None, typer.Option(
        "--write-groups", metavar="FILE",
        help="Write path,group CSV: source groups with near-duplicates merged.")] = None,
    group_key: Annotated[str | None, typer.Option(
        "--group-key", metavar="REGEX",
        help="Source group of a file name for --write-groups, e.g. '^(\\d+)_'; "
             "default: each file its own group.")] = None,
    near_duplicates: Annotated[bool, typer.Option(
        "--near-duplicates/--no-near-duplicates",
        help="Search for re-encoded or shifted copies.")] = True,
    max_shift: Annotated[int, typer.Option(
        min=0, max=24, help="Largest shift (px at 64 px) of a near-duplicate.")] = 8,
    quiet: Quiet = False,
) -> None:
    """Per-class table and every problem found: unreadable files, empty or small
    classes, byte-identical and near-duplicate images (across classes: label
    conflicts). Exit 1 if any.

    Examples: fewshot data check new_disease/ ;
    fewshot data check DIR --write-groups DIR/groups.csv --group-key '^(\\d+)_'"""
    from fewshot.data.check import check_folder, write_groups_for

    if group_key is not None:
        _check_regex(group_key)
    report = check_folder(folder, shots=shots, queries=queries,
                          near_duplicates=near_duplicates, max_shift=max_shift, quiet=quiet)
    if not quiet:
        table = Table(title=f"{folder}  ({len(report.classes)} classes)")
        for column in ("class", "images", "min size", "median size", "modes"):
            table.add_column(column, justify="right" if column == "images" else "left")
        for stat in report.classes:
            modes = ", ".join(f"{m}" for m, _ in stat.modes.most_common()) or "-"
            table.add_row(stat.name, str(stat.images), stat.min_size(), stat.median_size(), modes)
        screen.print(table)
    for kind, path, reason in report.findings:
        screen.print(f"{kind}: {path}: {reason}", markup=False)
    if group_key is None and not quiet:
        from fewshot.data.groups import suggest_group_key

        suggested = suggest_group_key(report.paths)
        if suggested:
            pattern, groups = suggested
            screen.print(f"note: the file names share {groups} prefixes ({pattern!r}): if "
                         "each is one source image, patient or slide, keep it out of both "
                         f"support and query with --group-key {pattern!r} (and the task's "
                         "`group`)", markup=False)
    if write_groups is not None:
        count = write_groups_for(report, write_groups, group_key)
        screen.print(f"wrote {count} groups for {len(report.paths)} images to {write_groups}",
                  markup=False)
    if report.findings:
        summary = ", ".join(f"{n} {kind}" for kind, n in sorted(report.kinds().items()))
        print(f"{len(report.findings)} problem(s): {summary}", file=sys.stderr)
        raise typer.Exit(1)
    screen.print(f"ok: {sum(s.images for s in report.classes)} images in "
              f"{len(report.classes)} classes, no problems found")
    if len(report.classes) == 1:
        screen.print("note: one class only: fewshot adapt needs two, or --keep-base to tell "
                     "it from the model's base classes", markup=False)


def _check_regex(pattern: str) -> None:
    import re

    try:
        re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"invalid --group-key regex: {exc}", pattern,
                         "e.g. '^(\\d+)_' for the digits before the first underscore") from None


@data_app.command("sample")
def data_sample(
    folder: Annotated[Path, typer.Argument(metavar="DIR",
                                           help="Where to write <class>/<images>.")],
    force: Annotated[bool, typer.Option("--force",
                                        help="Write into a non-empty DIR.")] = False,
    quiet: Quiet = False,
) -> None:
    """Write the shipped sample's new (novel) classes as a folder to adapt to.

    Example: fewshot data sample new_disease/"""
    from fewshot.data.sample import write_sample

    written = write_sample(folder, force=force)
    if not quiet:
        for name, count in written.items():
            screen.print(f"{folder / name}: {count} images", markup=False)
    screen.print(f"wrote {sum(written.values())} images in {len(written)} classes to {folder}",
              markup=False)


def wandb_names(project: str | None, entity: str | None, name: str | None) -> dict[str, Any]:
    """The W&B naming options given on the command line (the defaults stay in Tracker)."""
    given = {"project": project, "entity": entity, "name": name}
    return {k: v for k, v in given.items() if v is not None}


@contextmanager
def resumable(command: str) -> Iterator[None]:
    """Ctrl-C during training: the loop saved a checkpoint; say how to resume, exit 130."""
    from fewshot.train.distributed import world_from_env
    from fewshot.train.loop import Interrupted

    try:
        yield
    except Interrupted as stop:
        if world_from_env().main:  # under torchrun every rank stops; rank 0 says so
            print(f"interrupted: checkpoint saved; resume with: fewshot {command} --resume "
                  f"{stop.run.path}", file=sys.stderr)
        raise typer.Exit(130) from None


def training_config(config: Path | None, overrides: list[str] | None, resume: str | None,
                    device: str | None, seed: int | None, project: str | None = None,
                    entity: str | None = None, run_name: str | None = None):
    """The resolved config of a training command, and the run being resumed, if any.
    Training commands also keep freed memory in the process (fewshot.runtime)."""
    from fewshot.config import load_config
    from fewshot.run import resolve_run
    from fewshot.runtime import keep_freed_memory

    keep_freed_memory()

    run = resolve_run(resume) if resume is not None else None
    if run is not None and config is None:
        config = run.config_path
    extra = list(overrides or [])
    if device is not None:
        extra.append(f"train.device={device}")
    if seed is not None:
        extra.append(f"train.seed={seed}")
    for key, value in (("project", project), ("entity", entity), ("run_name", run_name)):
        if value is not None:
            extra.append(f"tracking.{key}={value}")
    return load_config(config, extra), run


def run_summary(run: Any, seconds: float) -> str:
    """One line at the end of a training run: where, how long, how far, how good."""
    m = run.read_meta().metrics
    unit = "episode" if "episodes_trained" in m else "epoch"
    done = m.get("episodes_trained", m.get("epochs_trained"))
    text = f"model written to {run.path} ({seconds / 60:.1f} min, {done} {unit}s"
    if m.get("val/acc") is not None:
        ci = m.get("val/acc_ci95")
        text += (f"; best val accuracy {100 * m['val/acc']:.2f}"
                 + (f" ± {100 * ci:.2f}" if ci is not None else "")
                 + f"% at {unit} {m.get('best_' + unit)}")
        if m.get("kept") == "last":
            text += f"; kept the last weights (val {100 * m['val/last_acc']:.2f}%)"
    else:
        text += "; no val classes: the final model is kept"
    return text + (", stopped early)" if m.get("stopped_early") else ")")


def training_command(name: str, entry: str, help_text: str,
                     next_step: Callable[[Any, Any], str]) -> None:
    """Register `fewshot <name>`: one set of options for every training stage; `entry` is
    the stage's `module:function`, imported when the command runs."""

    def command(
        config: ConfigOpt = None, set_: SetOpt = None, out: OutOpt = None,
        resume: ResumeOpt = None, data_root: DataRootOpt = None, device: DeviceOpt = None,
        seed: SeedOpt = None, wandb: WandbOpt = None, wandb_project: ProjectOpt = None,
        wandb_entity: EntityOpt = None, run_name: RunNameOpt = None,
        log_model: LogModelOpt = False, unlabeled: UnlabeledOpt = None, quiet: Quiet = False,
    ) -> None:
        import importlib

        module, _, function = entry.partition(":")
        stage = getattr(importlib.import_module(module), function)
        cfg, run = training_config(config, set_, resume, device, seed, wandb_project,
                                   wandb_entity, run_name)
        if unlabeled:
            cfg.data.unlabeled = [str(folder.resolve()) for folder in unlabeled]
        config_dir = config.parent if config is not None else None
        started = time.monotonic()
        from fewshot.train.distributed import world_from_env

        with resumable(name):
            result = stage(cfg, out=out, resume=run, data_root=data_root, config_dir=config_dir,
                           use_wandb=wandb, log_model=log_model, quiet=quiet)
        if not world_from_env().main:  # under torchrun rank 0 speaks for the run
            return
        screen.print(run_summary(result, time.monotonic() - started), markup=False)
        if not quiet:
            screen.print(next_step(result, cfg), markup=False)

    command.__doc__ = help_text
    app.command(name)(command)


training_command(
    "meta-train", "fewshot.train.meta_train:meta_train",
    "Meta-train an encoder and head on episodes of the base classes, keeping the model "
    "that does best on the held-apart val classes. No arguments: the shipped quickstart."
    "\n\nExamples: fewshot meta-train ; fewshot meta-train --config configs/maml-conv4.yaml "
    "--set train.episodes=500 ; fewshot meta-train --resume",
    lambda run, cfg: "next: fewshot data sample new_disease/   then: "
                     "fewshot adapt --shots 5 new_disease/")
training_command(
    "pretrain", "fewshot.train.pretrain:pretrain",
    "Supervised pretraining of an encoder on the base classes (cross-entropy), keeping "
    "the encoder that does best on episodes of the val classes.\n\nExamples: fewshot "
    "pretrain --config configs/blood-v1.yaml ; fewshot pretrain --resume RUN_DIR",
    lambda run, cfg: f"next: fewshot evaluate --model {run.path} --head simpleshot "
                     f"--head linear-probe --task {cfg.data.task}")


@app.command("evaluate")
def evaluate_cmd(
    model: Annotated[list[str], _opt("--model", "-m", metavar="RUN_DIR", help="A run "
                                     "directory, a shipped model (blood-v1; fewshot list "
                                     "models), 'pixels' or 'random:<backbone>' (repeatable; "
                                     "the first pair is the reference).")],
    task: Annotated[str | None, _opt("--task", "-t", metavar="FILE", help="Task YAML file, "
                                     "e.g. tasks/blood-rare-rbc.yaml, or a shipped task's "
                                     "name (quickstart; fewshot list tasks); default: the "
                                     "--config file's data.task.")] = None,
    head: Annotated[list[str] | None, _opt("--head", metavar="NAME[:K=V,...]", help="Head "
                                           f"({HEAD_NAMES}; plugins: fewshot list heads), "
                                           "with options as NAME:KEY=VALUE[,KEY=VALUE] "
                                           "(repeatable; pairs with --model in order). "
                                           "Default: the model's own head.")] = None,
    config: Annotated[Path | None, _opt("--config", "-c", metavar="FILE", help="Take the "
                                        "defaults of the options below from this config's "
                                        "eval section.")] = None,
    split: Annotated[str | None, _opt("--split", metavar="SPLIT", help="base, val or novel "
                                      "[default: novel].")] = None,
    ways: Annotated[int | None, _opt("--ways", min=2, metavar="N", help="Classes per episode "
                                     "[default: 5].")] = None,
    shots: Annotated[str | None, _opt("--shots", metavar="K|A-B|K1,K2,..", help="Support "
                                      "images per class [default: 5]; A-B draws each class's "
                                      "count between A and B (seeded per episode), K1,K2,.. "
                                      "gives one count per way (unequal support sets).")
                     ] = None,
    queries: Annotated[int | None, _opt("--queries", min=1, metavar="Q", help="Query images "
                                        "per class [default: 15].")] = None,
    episodes: Annotated[int | None, _opt("--episodes", min=1, metavar="E",
                                         help="Episodes [default: 600].")] = None,
    slow_episodes: Annotated[int | None, _opt(
        "--slow-episodes", min=1, metavar="E", help="Episodes for heads that re-run the "
        "encoder (finetune, MAML family); default 100 on CPU, all on GPU.")] = None,
    seed: Annotated[int | None, _opt("--seed", metavar="S", help="Episode seed "
                                     "[default: 0].")] = None,
    max_per_class: Annotated[int | None, _opt(
        "--max-per-class", min=1, metavar="N", help="Draw episodes from a seeded pool of at "
        "most N images per class (bounded CPU runs).")] = None,
    query_imbalance: Annotated[float | None, _opt(
        "--query-imbalance", metavar="ALPHA", help="Split the N*Q queries over the classes "
        "by a seeded Dirichlet(ALPHA) draw, at least 1 each (smaller: more unequal).")] = None,
    json_out: Annotated[Path | None, _opt("--json", metavar="FILE", help="Write every number, "
                                          "per-episode accuracies included, as JSON.")] = None,
    ensemble: Annotated[bool, _opt("--ensemble", help="Add a row scoring the mean of the "
                                   "pairs' softmax probabilities, paired against each.")
                        ] = False,
    plot: Annotated[Path | None, _opt("--plot", metavar="FILE", help="Draw accuracy with CIs "
                                      "and the paired differences into a PNG (needs "
                                      "matplotlib: fewshot[plots]).")] = None,
    unlabeled: UnlabeledOpt = None, keep_batchnorm: KeepBatchnormOpt = False,
    whiten: WhitenOpt = False, data_root: DataRootOpt = None, device: DeviceOpt = None,
    wandb: WandbOpt = None,
    wandb_project: ProjectOpt = None, wandb_entity: EntityOpt = None,
    run_name: RunNameOpt = None, log_model: LogModelOpt = False, quiet: Quiet = False,
) -> None:
    """Score models and heads on the same seeded episodes of a split: accuracy ± 95% CI,
    macro-F1, balanced accuracy, AUROC, per-class sensitivity, paired differences.
    Heads: see `fewshot list heads`.

    Examples: fewshot evaluate --model runs/latest --head simpleshot --head linear-probe
    --task tasks/blood-rare-rbc.yaml ; fewshot evaluate --config configs/protonet-conv4.yaml
    --model runs/latest"""
    import json

    from fewshot import plots
    from fewshot.config import Config, load_config
    from fewshot.data.episodes import parse_shots
    from fewshot.evaluate import evaluate
    from fewshot.report import log_results, results_table, sensitivity_table

    if plot is not None and not plots.available():
        raise UsageError("--plot needs matplotlib", "--plot", f"{plots.INSTALL_HINT}")
    if plot is not None and plot.is_dir():
        raise UsageError("--plot names a folder", plot, "pass a file name, e.g. accuracy.png")
    cfg = load_config(config) if config is not None else Config()
    if task is None:
        if config is None:
            raise UsageError("no task to evaluate on", "--task",
                             "pass --task FILE or a shipped task's name (fewshot list tasks, "
                             "e.g. --task quickstart --ways 3), or --config FILE whose "
                             "data.task names one")
        task = cfg.data.task
    e = cfg.eval
    result = evaluate(model, head or [], task, split=split or e.split, ways=ways or e.ways,
                      shots=e.shots if shots is None else parse_shots(shots),
                      queries=queries or e.queries,
                      episodes=episodes or e.episodes, seed=e.seed if seed is None else seed,
                      data_root=data_root, device=device or "auto", slow_episodes=slow_episodes,
                      max_per_class=max_per_class, quiet=quiet, query_imbalance=query_imbalance,
                      relative_to=config.parent if config is not None else None,
                      ensemble=ensemble, unlabeled=absolute(unlabeled),
                      keep_batchnorm=keep_batchnorm, whiten=whiten)
    wide = Console(highlight=False, width=max(screen.width, 140))  # whole numbers in pipes
    wide.print(results_table(result))
    if not quiet:
        wide.print(sensitivity_table(result))
    log_results(result, use_wandb=wandb is not False, quiet=quiet,
                log_model=log_model, **wandb_names(wandb_project, wandb_entity, run_name))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if plot is not None:
        plots.evaluation(result, plot)
        print(f"plot written to {plot}")


@app.command("adapt")
def adapt_cmd(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="Folder laid out as "
                                           "<class>/<images>: the new classes.")],
    shots: Annotated[int, typer.Option("--shots", min=1, metavar="K", help="Support images "
                                       "per class (at most); the rest are held out and "
                                       "scored.")],
    model: Annotated[list[Path] | None, typer.Option(
        "--model", metavar="RUN_DIR", help="Run directory or shipped model name (default "
        "runs/latest, else the shipped blood-v1); several: an ensemble.")] = None,
    method: Annotated[list[str] | None, typer.Option(
        "--method", metavar="NAME[:K=V,...]", help=f"Head to adapt with ({HEAD_NAMES}; "
        "plugins: fewshot list heads), options as NAME:KEY=VALUE[,KEY=VALUE] (default: the "
        "model's own); pairs with --model in order, as in evaluate.")] = None,
    out: Annotated[Path | None, typer.Option("--out", metavar="DIR", help="Adapted model folder "
                                             "(default adapted/<DIR name>).")] = None,
    seed: Annotated[int, typer.Option("--seed", metavar="S",
                                      help="Seed of the support choice.")] = 0,
    keep_base: Annotated[bool, typer.Option("--keep-base", help="Also answer the model's "
                                            "base classes (then one new class is enough).")
                         ] = False,
    calibrate: Annotated[bool, typer.Option("--calibrate/--no-calibrate", help="Fit a "
                                            "softmax temperature by k-fold over the support "
                                            "set (needs 2+ images a class).")] = True,
    cv: Annotated[bool, typer.Option("--cv", help="Choose the method and its steps / "
                                     "learning rate by k-fold over the support set, among "
                                     "simpleshot, linear-probe (4 settings), finetune and "
                                     "the model's own head (needs 2+ images a class).")
                  ] = False,
    device: Annotated[str, typer.Option("--device", metavar="NAME",
                                        help="auto, cpu, cuda or mps.")] = "auto",
    unlabeled: UnlabeledOpt = None, keep_batchnorm: KeepBatchnormOpt = False,
    whiten: WhitenOpt = False, wandb: WandbOpt = None, wandb_project: ProjectOpt = None,
    wandb_entity: EntityOpt = None,
    run_name: RunNameOpt = None,
    log_model: Annotated[bool, _opt("--log-model", help="Log the adapted folder (without "
                                    "its wandb/ files) as a W&B artifact.")] = False,
    quiet: Quiet = False,
) -> None:
    """Adapt a trained model to the classes of DIR from at most --shots images each, score
    every other image (leave-out accuracy with a 95% CI) and write the adapted model.

    Several (--model, --method) pairs make an ensemble: each is adapted and calibrated on
    the same support images, and the folder averages their probabilities.

    Examples: fewshot adapt --shots 5 new_disease/ ;
    fewshot adapt --shots 5 new_disease/ --model runs/latest --method linear-probe:steps=50 ;
    fewshot adapt --shots 5 new_disease/ --model blood-v1 --method simpleshot
    --method linear-probe ; fewshot adapt --shots 5 new_disease/ --model blood-v1 --cv"""
    from fewshot.adapt import adapt_command
    from fewshot.evaluate import pair_up
    from fewshot.quickstart import quickstart_run

    models: list = list(model or []) or [quickstart_run(quiet)]
    pairs = pair_up(models, list(method or []), "--method")
    adapt_command(folder, shots, model=pairs[0][0], method=pairs[0][1], out=out, seed=seed,
                  keep_base=keep_base, device=device, quiet=quiet,
                  ensemble=pairs if len(pairs) > 1 else None,
                  use_wandb=wandb is not False, calibrate=calibrate, cv=cv,
                  unlabeled=absolute(unlabeled), keep_batchnorm=keep_batchnorm,
                  whiten=whiten, wandb_options={"log_model": log_model,
                                 **wandb_names(wandb_project, wandb_entity, run_name)})


class Listing(StrEnum):
    all = "all"
    heads = "heads"
    backbones = "backbones"
    configs = "configs"
    tasks = "tasks"
    models = "models"


@app.command("list")
def list_cmd(
    what: Annotated[Listing, typer.Argument(help="heads, backbones, configs, tasks, models "
                                            "or all.")] = Listing.all,
) -> None:
    """What is registered (heads with their options, backbones, plugins' included) or
    shipped (configs and tasks, with those of ./configs and ./tasks); no argument: all.

    Example: fewshot list heads"""
    if what is Listing.all:
        for part in (Listing.heads, Listing.backbones, Listing.configs, Listing.tasks,
                     Listing.models):
            screen.print(f"{part.value}:", markup=False)
            list_cmd(part)
        return
    if what is Listing.heads:
        from fewshot.methods import registered_heads

        for name, cls in sorted(registered_heads().items()):
            options = ", ".join(f"{o.name}={o.default!r}" if o.default is not o.empty
                                else o.name for o in cls.user_options().values())
            screen.print(f"{name}: {options or 'no options'}", markup=False)
    elif what is Listing.backbones:
        from fewshot.models import registered_backbones

        for name in sorted(registered_backbones()):
            screen.print(name, markup=False)
        screen.print("timm:<name> (with fewshot[timm])", markup=False)
    elif what is Listing.models:
        from fewshot.data.files import packaged

        shipped = sorted(p.parent.name for p in packaged("models").glob("*/model.json"))
        screen.print("\n".join(shipped) if shipped else "no model shipped in this package "
                     "(train one: fewshot meta-train, fewshot pretrain)", markup=False)
    else:
        from fewshot.data.files import packaged

        folder = what.value
        for path in sorted(packaged(folder).glob("*.yaml")):
            screen.print(f"{path.stem} (shipped)", markup=False)
        for path in sorted(Path(folder).glob("*.yaml")):
            screen.print(str(path), markup=False)


class OutputFormat(StrEnum):
    csv = "csv"
    json = "json"


@app.command("predict")
def predict_cmd(
    adapted: Annotated[Path, typer.Argument(metavar="ADAPTED_DIR",
                                            help="Folder written by fewshot adapt.")],
    paths: Annotated[list[Path], typer.Argument(metavar="PATH...",
                                                help="Image files or folders (recursive).")],
    out: Annotated[Path | None, typer.Option("--out", metavar="FILE",
                                             help="Write here instead of stdout.")] = None,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="csv or json.")
                   ] = OutputFormat.csv,
    top_k: Annotated[int | None, typer.Option("--top-k", min=1, metavar="K", help="Add the K most "
                                              "probable classes as columns.")] = None,
    reject_below: Annotated[float | None, typer.Option(
        "--reject-below", min=0.0, max=1.0, metavar="P",
        help="Answer 'unknown' when the top probability is below P.")] = None,
    quiet: Quiet = False,
) -> None:
    """Predict image files with an adapted model. A file that cannot be read gets an error
    row and the others are still predicted; the exit code is then 1.

    Examples: fewshot predict adapted/new_disease image.png more_images/ ;
    fewshot predict adapted/new_disease scans/ --format json --top-k 2 --out p.json"""
    from fewshot.predict import predict_command

    failed = predict_command(adapted, paths, out=out, fmt=fmt.value, top_k=top_k,
                             reject_below=reject_below, quiet=quiet)
    if failed:
        raise typer.Exit(1)


class ExportFormat(StrEnum):
    onnx = "onnx"
    torchscript = "torchscript"


@app.command("export")
def export_cmd(
    adapted: Annotated[Path, typer.Argument(metavar="ADAPTED_DIR",
                                            help="Folder written by fewshot adapt.")],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="onnx (needs fewshot[export]) "
                                              "or torchscript.")],
    out: Annotated[Path | None, typer.Option("--out", metavar="FILE", help="File to write "
                                             "(default ADAPTED_DIR/model.onnx or model.pt).")
                   ] = None,
) -> None:
    """Write the adapted model (encoder, head, temperature) as one file: input float RGB
    images [N, 3, H, W] in 0..255 at the model's image size, output the calibrated
    probabilities [N, classes]; ONNX metadata names the classes and the image size.

    Examples: fewshot export adapted/new_disease --format onnx ;
    fewshot export adapted/new_disease --format torchscript --out model.pt"""
    from fewshot.export import export_command

    path = export_command(adapted, fmt.value, out)
    screen.print(f"exported model written to {path}", markup=False)


@app.command("explain")
def explain_cmd(
    adapted: Annotated[Path, typer.Argument(metavar="ADAPTED_DIR",
                                            help="Folder written by fewshot adapt.")],
    images: Annotated[list[Path], typer.Argument(metavar="IMAGE...", help="Image files or "
                                                 "folders (read recursively).")],
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Folder for the PNGs.")],
) -> None:
    """Where the model looked: for each image a PNG with the image, its saliency for the
    predicted class (Grad-CAM on the encoder's last convolutional stage; gradient x input
    without one) and the top probabilities, and contact_sheet.png of all of them.

    Example: fewshot explain adapted/new_disease cells/ --out explained/"""
    from fewshot.adapted import Adapted
    from fewshot.data.files import expand_paths
    from fewshot.explain import explain

    model = Adapted.load(adapted)
    written = explain(model, expand_paths(list(images)), out)
    screen.print(f"{len(written)} explained image(s) and contact_sheet.png written to {out}",
                 markup=False)


@app.command("verify")
def verify_cmd(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="Run directory, adapted "
                                          "folder or shipped model name (blood-v1).")],
    image_a: Annotated[Path, typer.Argument(metavar="IMAGE_A")],
    image_b: Annotated[Path, typer.Argument(metavar="IMAGE_B")],
) -> None:
    """Is IMAGE_A the same finding as IMAGE_B? Prints one line: `same-finding probability:
    P` from a model with a siamese head, else `similarity: S`, the cosine similarity of
    their encoder features in [-1, 1] (a ranking of pairs, not a probability).

    Example: fewshot verify blood-v1 cell_a.png cell_b.png"""
    from fewshot.verify import verify

    what, value = verify(model, image_a, image_b)
    screen.print(f"{what}: {value:.2f}", markup=False)


def _click_error(exc: BaseException) -> int | None:
    """Exit code for the command-line parser's own exceptions (Typer vendors click, so
    they are matched by shape, not by class); None for anything else."""
    name = type(exc).__name__
    if name == "NoArgsIsHelpError":
        ctx = getattr(exc, "ctx", None)
        print(ctx.get_help() if ctx else "", file=sys.stderr)
        return 0
    if name == "Abort":
        return 130
    if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx else "fewshot"
        print(f"error: {exc.format_message()} ({command}): see '{command} --help'",
              file=sys.stderr)
        return int(exc.exit_code)
    return None


def optional_values(args: list[str]) -> list[str]:
    """`--resume` without a value means `--resume runs/latest`: the value is filled in here
    because Typer is dropping Click's optional option values (`flag_value`)."""
    filled = []
    for i, arg in enumerate(args):
        filled.append(arg)
        if arg == "--resume" and (i + 1 == len(args) or args[i + 1].startswith("-")):
            filled.append(RESUME_DEFAULT)
    return filled


def main() -> None:
    """Console entry point: maps failures to one-line errors and their exit codes."""
    debug = os.environ.get("FEWSHOT_DEBUG") == "1"
    if not debug:  # a library's warning is one line of ours, never a multi-line dump
        warnings.showwarning = lambda message, *_, **__: print(
            f"warning: {str(message).splitlines()[0]}", file=sys.stderr)
    try:
        code = app(args=optional_values(sys.argv[1:]), standalone_mode=False)
    except FewShotError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:
        if debug or exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        print(f"error: {exc.strerror} ({exc.filename or 'writing'}): free disk space and run "
              "the command again (files are written whole or not at all)", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        status = _click_error(exc)
        if status is None or debug:
            raise
        sys.exit(status)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
