"""pretrain and evaluate end to end on a tiny synthetic task: the run directory, lower
loss, Ctrl-C and resume, the evaluation protocol's numbers and its determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import run_cli, write_tiny_task
from fewshot.assembly import load_model
from fewshot.config import load_config
from fewshot.errors import UsageError
from fewshot.evaluate import evaluate, pair_up
from fewshot.metrics import auroc, episode_metrics
from fewshot.train.pretrain import pretrain

TINY = ["model.backbone_args={channels: 8}", "train.batch_size=8", "train.ways=2",
        "train.shots=2", "train.queries=3", "train.val_episodes=10", "train.lr=0.01",
        "tracking.wandb=false"]
SMALL = {"ways": 2, "shots": 2, "queries": 3, "episodes": 12}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(task file, run directory) of one tiny pretraining run shared by the tests."""
    root = tmp_path_factory.mktemp("pretrain")
    task = write_tiny_task(root)
    config = load_config(None, [f"data.task={task}", *TINY, "train.epochs=4"])
    run = pretrain(config, out=root / "run", quiet=True)
    return task, run.path


def test_pretrain_writes_run_dir_and_lowers_loss(trained) -> None:
    task, run = trained
    for name in ("config.yaml", "model.safetensors", "model.json", "prototypes.safetensors",
                 "metrics.jsonl", "checkpoint/last.safetensors", "checkpoint/state.pt"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    per_epoch = len(losses) // 4
    assert len(losses) == 4 * per_epoch and per_epoch == 5  # 40 images, batches of 8
    assert np.mean(losses[-per_epoch:]) < np.mean(losses[:per_epoch])
    assert [r["epoch"] for r in records if "epoch" in r] == [1, 2, 3, 4]

    saved_config = yaml.safe_load((run / "config.yaml").read_text())
    assert Path(saved_config["data"]["task"]).is_absolute()  # --resume works from anywhere
    meta = json.loads((run / "model.json").read_text())
    assert meta["backbone"] == "conv4" and meta["image_size"] == 16
    assert meta["classes"]["base"] == ["x/c0", "x/c1", "x/c2", "x/c3"]
    assert meta["normalization"]["mean"] and meta["head"] == "simpleshot"
    assert 1 <= meta["metrics"]["best_epoch"] <= 4
    assert set(load_file(run / "model.safetensors")) == {
        f"encoder.{k}" for k in load_model(run)[0].encoder.state_dict()}
    prototypes = load_file(run / "prototypes.safetensors")
    assert prototypes["prototypes"].shape == (4, meta["feature_dim"])
    assert prototypes["base_mean"].shape == (meta["feature_dim"],)

    model, _ = load_model(run)  # rebuilt from the run directory alone, centred on its mean
    assert torch.equal(model.base_mean, prototypes["base_mean"])


def test_pretrain_stops_after_patience_epochs_without_a_better_val_score(tmp_path) -> None:
    task = write_tiny_task(tmp_path)
    config = load_config(None, [f"data.task={task}", *TINY, "train.epochs=8",
                                "train.patience=1"])
    run = pretrain(config, out=tmp_path / "run", quiet=True)
    accs = [json.loads(line)["val/acc"] for line in (run.path / "metrics.jsonl")
            .read_text().splitlines() if '"val/acc"' in line]
    meta = run.read_meta().metrics
    assert meta["epochs_trained"] == len(accs)
    # every epoch but the last improved on the best so far; the last one stopped the run
    assert all(b > a for a, b in zip(accs, accs[1:-1], strict=False))
    if meta["stopped_early"]:
        assert len(accs) < 8 and accs[-1] <= max(accs[:-1])
        assert meta["best_epoch"] == len(accs) - 1
    else:
        assert len(accs) == 8


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def test_ctrl_c_saves_checkpoint_and_resume_continues(tmp_path: Path) -> None:
    task = write_tiny_task(tmp_path)
    run = tmp_path / "run"
    args = ["pretrain", "--out", str(run), "--set", f"data.task={task}", "--set",
            "train.epochs=200", *[a for s in TINY for a in ("--set", s)]]
    env = {**os.environ, "WANDB_MODE": "offline"}
    process = subprocess.Popen([sys.executable, "-m", "fewshot", *args], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(run / "checkpoint" / "state.pt", process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert f"resume with: fewshot pretrain --resume {run}" in stderr
    assert "Traceback" not in stderr
    stopped_at = torch.load(run / "checkpoint" / "state.pt",
                            weights_only=True)["train"]["loop"]["position"]
    saved = {"epoch": stopped_at // 5, "step": stopped_at % 5}  # 5 steps an epoch
    assert 0 < stopped_at < 200 * 5

    result = run_cli("pretrain", "--resume", str(run), "--set",
                     f"train.epochs={saved['epoch'] + 2}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    final = torch.load(run / "checkpoint" / "state.pt", weights_only=True)["train"]["loop"]
    assert final["position"] == (saved["epoch"] + 2) * 5
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in line]
    # the resumed run logs exactly the steps the interrupted one had not done
    assert steps == list(range(1, (saved["epoch"] + 2) * 5 + 1))


def test_evaluate_is_deterministic_and_self_difference_is_zero(trained) -> None:
    task, run = trained
    first = evaluate([str(run), str(run)], ["simpleshot"], task, **SMALL, quiet=True)
    second = evaluate([str(run), str(run)], ["simpleshot"], task, **SMALL, quiet=True)
    assert json.dumps(first) == json.dumps(second)
    diff = first["paired"][0]["accuracy_difference"]
    assert diff == {"mean": 0.0, "ci95": 0.0}
    result = first["results"][0]
    assert result["episodes"] == 12 and len(result["per_episode_accuracy"]) == 12
    accs = np.asarray(result["per_episode_accuracy"])
    assert result["accuracy"]["mean"] == pytest.approx(accs.mean())
    assert result["accuracy"]["ci95"] == pytest.approx(1.96 * accs.std(ddof=1) / np.sqrt(12))
    assert set(result["per_class_sensitivity"]) == {"x/c6", "x/c7"}


def test_evaluate_cli_writes_json(trained, tmp_path: Path) -> None:
    task, run = trained
    out = tmp_path / "eval.json"
    result = run_cli("evaluate", "--model", str(run), "--head", "simpleshot", "--head",
                     "linear-probe", "--task", str(task), "--ways", "2", "--shots", "2",
                     "--queries", "3", "--episodes", "6", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "accuracy %" in result.stdout and "linear-probe" in result.stdout
    data = json.loads(out.read_text())
    assert [r["head"] for r in data["results"]] == ["simpleshot", "linear-probe"]
    assert data["paired"][0]["episodes"] == 6
    for r in data["results"]:
        for key in ("accuracy", "macro_f1", "balanced_accuracy", "auroc"):
            assert 0.0 <= r[key]["mean"] <= 1.0


def test_finetune_runs_on_fewer_episodes(trained) -> None:
    task, run = trained
    result = evaluate([str(run)], ["protonet", "finetune"], task, **SMALL, slow_episodes=3,
                      head_options={"steps": 5, "finetune_steps": 2}, quiet=True)
    assert [r["episodes"] for r in result["results"]] == [12, 3]
    assert result["paired"][0]["episodes"] == 3


def test_evaluate_pixels_and_random_models(trained) -> None:
    task, _ = trained
    result = evaluate(["pixels", "random:conv4"], ["simpleshot"], task, **SMALL, quiet=True)
    assert [r["model"] for r in result["results"]] == ["pixels", "random:conv4"]
    # the synthetic classes differ by colour, which raw pixels see directly
    assert result["results"][0]["accuracy"]["mean"] > 0.9


def test_evaluate_bad_inputs(trained, tmp_path: Path) -> None:
    task, _ = trained
    with pytest.raises(UsageError, match="model not found"):
        evaluate([str(tmp_path / "nothing")], [], task, **SMALL, quiet=True)
    with pytest.raises(UsageError, match="unknown head"):
        evaluate(["pixels"], ["nearest"], task, **SMALL, quiet=True)
    with pytest.raises(UsageError, match="pair up"):
        pair_up(["a", "b"], ["x", "y", "z"])
    assert pair_up(["a"], ["x", "y"]) == [("a", "x"), ("a", "y")]


def test_auroc_and_episode_metrics_by_hand() -> None:
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True])) == 0.75
    assert auroc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5  # a tie counts half
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])  # class 0 recall 1/2, class 1 recall 2/2
    metrics = episode_metrics(logits, labels, 2)
    assert metrics["accuracy"] == 0.75
    assert metrics["balanced_accuracy"] == 0.75
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert metrics["hits"] == [1, 2] and metrics["totals"] == [2, 2]
