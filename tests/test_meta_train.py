"""meta-train end to end on a tiny synthetic task: run directory, model selection, early
stopping, exact resume after SIGKILL, Ctrl-C, and W&B records."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli, wandb_records, write_tiny_task
from fewshot.config import load_config
from fewshot.train.meta_train import VAL_SEED_OFFSET, meta_train
from fewshot.train.validate import run_validation

TINY = ["model.backbone_args={channels: 8}", "train.ways=2", "train.shots=2",
        "train.queries=3", "train.val_episodes=10", "train.lr=0.01", "tracking.wandb=false"]


@pytest.fixture
def tiny_task(tmp_path: Path) -> Path:
    return write_tiny_task(tmp_path)


def config_for(task: Path, *extra: str):
    return load_config(None, [f"data.task={task}", *TINY, *extra])


def test_writes_run_dir_and_keeps_best_validated_model(tiny_task, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = config_for(tiny_task, "train.episodes=30", "train.val_every=10")
    run = meta_train(config, quiet=True)
    for name in ("config.yaml", "model.safetensors", "model.json", "prototypes.safetensors",
                 "metrics.jsonl", "checkpoint/last.safetensors", "checkpoint/state.pt"):
        assert (run.path / name).is_file(), name
    assert (tmp_path / "runs" / "latest").resolve() == run.path.resolve()
    meta = run.read_meta()
    history = torch.load(run.path / "checkpoint" / "state.pt", weights_only=True)["train"][
        "loop"]["history"]
    assert [h["episode"] for h in history] == [10, 20, 30]
    best = max(history, key=lambda h: h["acc"])  # first of the maxima wins ties
    assert meta.metrics["best_episode"] == best["episode"]
    assert meta.metrics["val/acc"] == pytest.approx(best["acc"])

    # the saved model really is the one that scored best: re-score it on the same episodes
    from fewshot.assembly import load_model
    from fewshot.data.images import Normalize, load_split_images
    from fewshot.data.tasks import load_task

    model, _ = load_model(run)
    images, val = load_split_images(load_task(tiny_task), "val", quiet=True)
    result = run_validation(model, images, val, Normalize(), torch.device("cpu"), 2, 2, 3, 10,
                            seed=config.train.seed + VAL_SEED_OFFSET)
    assert result.accuracy.mean() == pytest.approx(best["acc"])
    assert result.confusion.sum() == 10 * 2 * 3

    lines = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert sum("train/loss" in rec for rec in lines) == 30
    assert sum("val/acc" in rec for rec in lines) == 3
    stored = run.load_prototypes()
    assert stored.class_names == ["x/c0", "x/c1", "x/c2", "x/c3"]
    assert stored.prototypes.shape[0] == 4


def test_early_stopping_stops(tiny_task, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a learning rate too small to change anything: no validation improves on the first
    config = config_for(tiny_task, "train.episodes=200", "train.val_every=5", "train.patience=2",
                        "train.lr=1e-12", "train.augment=false")
    run = meta_train(config, quiet=True)
    meta = run.read_meta()
    assert meta.metrics["stopped_early"] is True
    assert meta.metrics["episodes_trained"] == 15
    assert meta.metrics["best_episode"] == 5


def test_keep_last_trains_the_whole_budget_and_keeps_the_last_weights(tiny_task, tmp_path,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    # the same run as above, which stops early; keep=last must not, and must keep its end
    config = config_for(tiny_task, "train.episodes=20", "train.val_every=5", "train.patience=1",
                        "train.lr=1e-12", "train.augment=false", "train.keep=last")
    run = meta_train(config, quiet=True)
    metrics = run.read_meta().metrics
    assert metrics["stopped_early"] is False and metrics["episodes_trained"] == 20
    assert metrics["kept"] == "last"
    vals = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()
            if '"val/acc"' in x]
    assert len(vals) == 4
    assert metrics["val/last_acc"] == pytest.approx(vals[-1]["val/acc"])
    assert metrics["val/acc"] == pytest.approx(max(v["val/acc"] for v in vals))
    last, _ = run.load_checkpoint()
    kept = run.load_weights()
    assert kept.keys() == last.keys()
    assert all(torch.equal(kept[k], last[k]) for k in kept)


def _cli_train(tiny_task: Path, out: Path, *extra: str, **popen) -> subprocess.Popen:
    args = [sys.executable, "-m", "fewshot", "meta-train", "--quiet", "--no-wandb",
            "--set", f"data.task={tiny_task}", *sum((["--set", s] for s in TINY), []),
            "--out", str(out), *extra]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, cwd=out.parent, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def _wait_for_checkpoint(run_dir: Path, process: subprocess.Popen, min_episode: int) -> None:
    state = run_dir / "checkpoint" / "state.pt"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if state.is_file():
            try:
                saved = torch.load(state, weights_only=True)
                if saved["train"]["loop"]["position"] >= min_episode:
                    return
            except (EOFError, RuntimeError, FileNotFoundError):
                pass
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


TRAIN = ["--set", "train.episodes=40", "--set", "train.val_every=10",
         "--set", "train.checkpoint_every=4"]


def test_sigkill_then_resume_reaches_the_same_weights(tiny_task, tmp_path):
    whole = _cli_train(tiny_task, tmp_path / "whole", *TRAIN)
    assert whole.wait(timeout=600) == 0, whole.communicate()

    # tiny episodes take milliseconds: a run can finish between two polls, so a run
    # that was not really interrupted part way is started again (at most three times)
    for _ in range(3):
        shutil.rmtree(tmp_path / "killed", ignore_errors=True)
        killed = _cli_train(tiny_task, tmp_path / "killed", *TRAIN)
        _wait_for_checkpoint(tmp_path / "killed", killed, 4)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        saved = torch.load(tmp_path / "killed/checkpoint/state.pt", weights_only=True)
        if saved["train"]["loop"]["position"] < 40:
            break
    assert saved["train"]["loop"]["position"] < 40  # really interrupted part way

    resumed = run_cli("meta-train", "--quiet", "--no-wandb", "--resume", str(tmp_path / "killed"),
                      cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    for name in ("model.safetensors", "checkpoint/last.safetensors"):
        a = load_file(tmp_path / "whole" / name)
        b = load_file(tmp_path / "killed" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


def test_ctrl_c_saves_exits_130_and_resume_finishes(tiny_task, tmp_path):
    run_dir = tmp_path / "run"
    process = _cli_train(tiny_task, run_dir, *TRAIN, "--set", "train.episodes=120")
    _wait_for_checkpoint(run_dir, process, 4)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "fewshot meta-train --resume" in err and "Traceback" not in err
    state = torch.load(run_dir / "checkpoint/state.pt", weights_only=True)
    stopped_at = state["train"]["loop"]["position"]
    assert 4 <= stopped_at < 120
    load_file(run_dir / "checkpoint/last.safetensors")

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "latest").symlink_to(run_dir)  # a bare --resume takes runs/latest
    done = run_cli("meta-train", "--quiet", "--resume", "--set", "train.patience=1000",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    meta = json.loads((run_dir / "model.json").read_text())
    assert meta["metrics"]["episodes_trained"] == 120


def test_wandb_offline_records_train_and_val_history(tiny_task, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = config_for(tiny_task, "train.episodes=12", "train.val_every=4",
                        "tracking.wandb=true", "tracking.log_every=2")
    run = meta_train(config, quiet=True)
    records = wandb_records(run.path / "wandb")
    history = [r["history"]["item"] for r in records if r.get("type") == "history"]
    train_steps = [h["_step"] for h in history if "train/loss" in h]
    val_steps = [h["_step"] for h in history if "val/acc" in h]
    assert train_steps == [2, 4, 6, 8, 10, 12]
    assert val_steps == [4, 8, 12]
    run_record = next(r["run"] for r in records if r.get("type") == "run")
    assert run_record["job_type"] == "meta-train"


def test_no_wandb_writes_no_wandb_files(tiny_task, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = meta_train(config_for(tiny_task, "train.episodes=4", "train.val_every=4"),
                     use_wandb=False, quiet=True)
    assert not (run.path / "wandb").exists()
    assert not (tmp_path / "wandb").exists()
    assert np.isfinite(json.loads((run.path / "metrics.jsonl").read_text().splitlines()[0])
                       ["train/loss"])


@pytest.mark.parametrize("head", ["protonet", "maml", "fomaml", "anil", "metasgd"])
def test_every_head_meta_trains_and_writes_a_loadable_run(head, tiny_task, tmp_path,
                                                          monkeypatch):
    from fewshot.assembly import load_model

    monkeypatch.chdir(tmp_path)
    config = config_for(tiny_task, f"method.head={head}", "train.episodes=4",
                        "train.meta_batch=2", "train.val_every=4", "train.val_episodes=3",
                        *([] if head == "protonet" else ["method.inner_steps=1"]))
    run = meta_train(config, quiet=True)
    meta = run.read_meta()
    assert meta.head == head and meta.metrics["episodes_trained"] == 4
    lines = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "train/loss" in r] == [2, 4]
    inner = [r for r in lines if "train/support_loss_before" in r]
    if head == "protonet":
        assert not inner
    else:  # the inner loop's effect on the support set is logged at every train step
        assert [r["step"] for r in inner] == [2, 4]
        assert all(np.isfinite(r["train/support_loss_after"]) for r in inner)
    assert all(("train/inner_lr_mean" in r) == (head == "metasgd") for r in inner)
    model, _ = load_model(run)
    saved = load_file(run.model_path)
    for key, value in model.state_dict().items():
        if key in saved:
            assert torch.equal(value, saved[key]), key


def test_meta_train_from_a_pretrain_run_starts_from_its_encoder(tiny_task, tmp_path,
                                                                 monkeypatch):
    from fewshot.train.meta_train import build_model
    from fewshot.train.pretrain import pretrain

    monkeypatch.chdir(tmp_path)
    pre = pretrain(config_for(tiny_task, "train.epochs=1", "train.batch_size=8"), quiet=True)
    config = config_for(tiny_task, f"model.weights={pre.path}")
    model = build_model(config, image_size=16, ways=2)
    pretrained = {k.removeprefix("encoder."): v for k, v in load_file(pre.model_path).items()
                  if k.startswith("encoder.")}
    mine = model.encoder.state_dict()
    assert pretrained.keys() == mine.keys()
    for key, value in pretrained.items():
        assert torch.equal(mine[key], value), key

    # The pretrained start is validated (episode 0) and kept if nothing beats it.
    config = config_for(tiny_task, f"model.weights={pre.path}", "train.episodes=4",
                        "train.val_every=2", "train.val_episodes=4", "train.lr=1e-9")
    run = meta_train(config, quiet=True)
    history = run.read_meta().metrics
    val = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()
           if "val/acc" in x]
    assert [r["step"] for r in val] == [0, 2, 4]
    best = max(val, key=lambda r: r["val/acc"])
    assert history["best_episode"] == best["step"]


def test_resume_with_more_episodes_never_raises_the_cosine_rate_again(tiny_task, tmp_path):
    from fewshot.run import RunDir

    first = config_for(tiny_task, "train.episodes=6", "train.val_every=100",
                       "train.checkpoint_every=3", "train.schedule=cosine")
    run = meta_train(first, out=tmp_path / "run", quiet=True)
    more = config_for(tiny_task, "train.episodes=12", "train.val_every=100",
                      "train.checkpoint_every=3", "train.schedule=cosine")
    meta_train(more, resume=RunDir(run.path), quiet=True)
    rates = [json.loads(line)["train/lr"] for line in
             (run.path / "metrics.jsonl").read_text().splitlines() if "train/lr" in line]
    assert len(rates) == 12
    assert all(b <= a + 1e-12 for a, b in zip(rates, rates[1:], strict=False)), rates
