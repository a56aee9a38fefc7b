"""meta-train on torch.distributed: two gloo ranks on the CPU, started by torchrun as a
user would, against one process on the same global meta-batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_meta_train import TINY, _wait_for_checkpoint

from conftest import write_tiny_task
from fewshot.train.meta_train import rank_episodes

STEPS = ["--set", "train.episodes=80", "--set", "train.val_every=40",
         "--set", "train.checkpoint_every=8", "--set", "train.optimizer=sgd"]
"""SGD, not Adam: Adam divides by the root of the squared gradient, so a parameter whose
gradient is nearly 0 (a conv bias before batch-norm) turns float rounding differences
between 1 and 2 processes into full-size steps; SGD keeps them at rounding size."""


def test_every_episode_of_a_step_goes_to_exactly_one_rank() -> None:
    for per_rank, world, count in ((2, 2, 4), (3, 2, 5), (1, 3, 2), (2, 3, 6)):
        drawn = [i for rank in range(world) for i in rank_episodes(10, count, per_rank, rank)]
        assert sorted(drawn) == list(range(10, 10 + count))  # no episode twice, none lost


def _drift_rank(rank: int, init: str, results) -> None:
    from fewshot.train.distributed import World, check_in_step

    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    world = World(rank, 2, rank)
    try:
        torch.manual_seed(0)
        same = torch.nn.Linear(4, 3)
        check_in_step(same, world)  # equal weights: passes
        torch.manual_seed(rank)
        try:
            check_in_step(torch.nn.Linear(4, 3), world)
            results.put((rank, "no error"))
        except RuntimeError as exc:
            results.put((rank, str(exc)))
    finally:
        torch.distributed.destroy_process_group()


def test_ranks_whose_weights_drift_apart_are_caught(tmp_path) -> None:
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(_drift_rank, args=(f"file://{tmp_path / 'rendezvous'}", results),
                       nprocs=2, start_method="spawn")
    found = dict(results.get() for _ in range(2))
    assert all("drifted apart" in found[rank] for rank in (0, 1)), found


def launch(task: Path, out: Path, ranks: int, *extra: str) -> subprocess.Popen:
    """`torchrun --nproc_per_node=RANKS -m fewshot meta-train ...` (one process: plain)."""
    fewshot = ["-m", "fewshot", "meta-train", "--quiet", "--no-wandb",
               "--set", f"data.task={task}", *sum((["--set", s] for s in TINY), []),
               "--set", "model.backbone_args={channels: 8}", *extra]
    if ranks > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={ranks}", *fewshot]
    else:
        command = [sys.executable, *fewshot]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.pop("FEWSHOT_DEBUG", None)
    return subprocess.Popen(command, cwd=out.parent, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def read_or_empty(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:  # a process that ended while we looked
        return ""


def kill_all(process: subprocess.Popen, run: Path) -> None:
    """SIGKILL torchrun and every rank; return once the run folder's lock is free (the
    ranks, orphaned by torchrun's death, exit a moment later than it)."""
    import fcntl
    import time

    ranks = [int(status.parent.name) for status in Path("/proc").glob("[0-9]*/status")
             if f"PPid:\t{process.pid}\n" in read_or_empty(status)]
    assert ranks, "no rank process found"
    for pid in [process.pid, *ranks]:  # torchrun puts its workers in groups of their own
        os.kill(pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 60
    with open(run / ".lock", "a+") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
                return
            except OSError:
                assert time.monotonic() < deadline, "a killed rank still holds the run"
                time.sleep(0.1)


def finish(process: subprocess.Popen) -> None:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[:3000]


def weights(run: Path, name: str = "checkpoint/last.safetensors") -> dict[str, torch.Tensor]:
    return load_file(run / name)


def assert_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if "running" in key or "num_batches" in key:
            continue  # batch-norm statistics: rank 0's images only (as DDP keeps them)
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), key


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("distributed")
    task = write_tiny_task(root)
    run = root / "two"
    finish(launch(task, run, 2, "--out", str(run), "--set", "train.meta_batch=2", *STEPS))
    return task, run


def test_two_ranks_match_one_process_on_the_same_global_meta_batch(two_rank_run) -> None:
    task, two = two_rank_run
    one = two.parent / "one"
    finish(launch(task, one, 1, "--out", str(one), "--set", "train.meta_batch=4", *STEPS))
    assert_close(weights(one), weights(two))
    assert json.loads((two / "model.json").read_text())["world_size"] == 2
    assert yaml.safe_load((two / "config.yaml").read_text())["train"]["world_size"] == 2
    assert json.loads((one / "model.json").read_text())["world_size"] == 1
    # one writer: one run folder, one record a step (20 steps of 4 episodes), no W&B files
    assert sorted(p.name for p in two.parent.iterdir() if p.is_dir()) == ["data", "one", "two"]
    steps = [json.loads(line)["step"] for line in
             (two / "metrics.jsonl").read_text().splitlines() if "train/loss" in line]
    assert steps == list(range(4, 84, 4))
    assert not (two.parent / "runs").exists() and not (two.parent / "wandb").exists()


def test_kill_on_every_rank_then_resume_reaches_the_same_weights(two_rank_run) -> None:
    task, whole = two_rank_run
    killed = whole.parent / "killed"
    process = launch(task, killed, 2, "--out", str(killed), "--set", "train.meta_batch=2",
                     *STEPS)
    _wait_for_checkpoint(killed, process, 8)
    kill_all(process, killed)  # torchrun and both ranks at once
    saved = torch.load(killed / "checkpoint" / "state.pt", weights_only=True)
    assert saved["train"]["loop"]["position"] < 80
    finish(launch(task, killed, 2, "--resume", str(killed)))
    assert_close(weights(whole), weights(killed))
    for key, value in weights(whole, "model.safetensors").items():
        assert torch.equal(value, weights(killed, "model.safetensors")[key]), key


PRETRAIN = ["--set", "model.backbone=pixels", "--set", "model.backbone_args={}",
            "--set", "train.epochs=3", "--set", "train.lr=0.05", "--set", "train.amp=false"]


def launch_pretrain(task: Path, out: Path, ranks: int, *extra: str) -> subprocess.Popen:
    fewshot = ["-m", "fewshot", "pretrain", "--quiet", "--no-wandb",
               "--set", f"data.task={task}", *sum((["--set", s] for s in TINY), []),
               *PRETRAIN, *extra]
    command = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={ranks}", *fewshot] if ranks > 1
               else [sys.executable, *fewshot])
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=out.parent, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_pretrain_two_ranks_match_one_process_on_the_same_global_batch(tmp_path) -> None:
    """A model without batch-norm (raw pixels + the base-class layer): each rank draws its
    half of the seeded epoch order, augmented by place, and DDP averages."""
    task = write_tiny_task(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    finish(launch_pretrain(task, two, 2, "--out", str(two), "--set", "train.batch_size=5"))
    finish(launch_pretrain(task, one, 1, "--out", str(one), "--set", "train.batch_size=10"))
    a, b = weights(one), weights(two)
    assert_close(a, b)
    assert any(not torch.allclose(v, torch.zeros_like(v)) for v in a.values())
    assert json.loads((two / "model.json").read_text())["world_size"] == 2
    steps = [json.loads(line)["step"] for line in
             (two / "metrics.jsonl").read_text().splitlines() if "train/loss" in line]
    assert steps == list(range(1, 13))  # 40 base images, 10 a step, 3 epochs: once each


@pytest.mark.slow
def test_pretrain_kill_then_resume_on_two_ranks_reaches_the_same_weights(tmp_path) -> None:
    task = write_tiny_task(tmp_path)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    long = ["--set", "train.batch_size=5", "--set", "train.epochs=150",
            "--set", "train.patience=1000"]
    finish(launch_pretrain(task, whole, 2, "--out", str(whole), *long))
    process = launch_pretrain(task, killed, 2, "--out", str(killed), *long)
    _wait_for_checkpoint(killed, process, 40)
    kill_all(process, killed)
    assert torch.load(killed / "checkpoint" / "state.pt",
                      weights_only=True)["train"]["loop"]["position"] < 600
    finish(launch_pretrain(task, killed, 2, "--resume", str(killed), *long))
    for key, value in weights(whole).items():
        assert torch.equal(value, weights(killed)[key]), key
    refused = launch_pretrain(task, killed, 1, "--resume", str(killed), *long)
    _, err = refused.communicate(timeout=300)
    assert refused.returncode == 2 and "ran on 2 process(es), not 1" in err
