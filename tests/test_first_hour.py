"""What a new user meets in the first hour: notes that teach, summaries that say what
happened, and options checked before any work."""

from __future__ import annotations

from pathlib import Path

import yaml

from conftest import CHECKOUT, make_folder, run_cli, write_image, write_tiny_task
from fewshot.data.groups import suggest_group_key


def test_a_shared_name_prefix_suggests_a_group_key(tmp_path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for smear in range(4):
            for cell in range(5):
                write_image(tmp_path / "data" / c / f"{smear}{c}_{cell}.png", rng, 16)
    paths = sorted((tmp_path / "data").rglob("*.png"))
    # '<smear><class>_<cell>.png': four smears, five cells each
    assert suggest_group_key([p for p in paths if p.parent.name == "a"]) == \
        (r"^([^_\-.]+)[_-]", 4)
    numbered = tmp_path / "numbered"
    for i, path in enumerate(paths):
        target = numbered / path.parent.name / f"{i // 5:03d}_{i % 5}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    assert suggest_group_key(sorted(numbered.rglob("*.png"))) == (r"^(\d+)[_-]", 8)
    assert suggest_group_key([Path(f"img_{i:03d}.png") for i in range(40)]) is None
    # a class code as prefix ('BA_12.jpg' in basophil/) is one group per class: no source
    coded = [Path(c) / f"{code}_{i}.jpg" for c, code in (("basophil", "BA"), ("monocyte", "MO"))
             for i in range(20)]
    assert suggest_group_key(coded) is None
    done = run_cli("data", "check", str(numbered), "--no-near-duplicates", "--shots", "1",
                   "--queries", "1", cwd=tmp_path)
    assert "--group-key '^(\\\\d+)[_-]'" in done.stdout, done.stdout


def test_training_ends_with_a_summary_and_no_minus_infinity(tmp_path) -> None:
    task = write_tiny_task(tmp_path)
    spec = yaml.safe_load(task.read_text())
    spec["splits"]["base"] += spec["splits"].pop("val")
    spec["splits"]["val"] = []
    task.write_text(yaml.safe_dump(spec))
    done = run_cli("pretrain", "--out", str(tmp_path / "run"), "--set", f"data.task={task}",
                   "--set", "model.backbone_args={channels: 8}", "--set", "train.epochs=2",
                   "--set", "train.batch_size=16", "--set", "tracking.wandb=false",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "inf" not in done.stdout
    assert "2 epochs; no val classes: the final model is kept" in done.stdout
    assert "next: fewshot evaluate" in done.stdout


def test_a_bad_head_option_stops_evaluate_before_any_image_is_decoded(tmp_path) -> None:
    task = write_tiny_task(tmp_path)
    cache = tmp_path / "cache"
    done = run_cli("evaluate", "--model", "pixels", "--head", "simpleshot", "--head",
                   "linear-probe:stepz=3", "--task", str(task), env={"FEWSHOT_CACHE":
                                                                  str(cache)}, cwd=tmp_path)
    assert done.returncode == 2 and "no option 'stepz'" in done.stderr
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))


def test_help_teaches_with_examples_and_adapt_defaults_to_auto() -> None:
    for command in ("meta-train", "pretrain", "evaluate", "adapt", "predict", "list"):
        text = run_cli(command, "--help").stdout
        assert "Example" in text, command
    assert "[default: auto]" in run_cli("adapt", "--help").stdout


def test_gitignore_covers_what_commands_write() -> None:
    ignored = (CHECKOUT / ".gitignore").read_text().split()
    assert {"runs/", "wandb/", "adapted/", "experiments/runs/"} <= set(ignored)


def test_list_with_no_argument_lists_everything(tmp_path) -> None:
    make_folder(tmp_path / "x", {"a": 1})
    text = run_cli("list", cwd=tmp_path).stdout
    for part in ("heads:", "backbones:", "configs:", "tasks:", "protonet", "conv4",
                 "quickstart (shipped)"):
        assert part in text, part


def test_evaluate_without_a_task_names_the_shipped_ones(tmp_path) -> None:
    done = run_cli("evaluate", "--model", "pixels", cwd=tmp_path)
    assert done.returncode == 2
    assert "--task quickstart" in done.stderr and "fewshot list tasks" in done.stderr
    assert "Traceback" not in done.stderr
