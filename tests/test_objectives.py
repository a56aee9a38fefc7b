"""Learning from unlabeled images in pretrain: the losses (SimCLR, BYOL, multi-kernel MMD,
DANN's gradient reversal), and `fewshot pretrain --unlabeled` with train.objective
ssl / both and train.align mmd / dann on a tiny synthetic task: metrics, the run's
records, the refusals, and an exact resume after Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_pretrain_evaluate import TINY, _wait_for

from conftest import run_cli, write_image, write_tiny_task
from fewshot.config import load_config
from fewshot.methods.common import mmd
from fewshot.models import build_backbone
from fewshot.train.objectives import BYOL, nt_xent, reverse_gradient, views
from fewshot.train.pretrain import pretrain


def test_mmd_is_zero_for_one_distribution_and_grows_with_the_shift():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g)
    same = mmd(a, b).item()  # the biased estimate: about 2 x 5 kernels / 200 samples above 0
    assert 0 <= same < 0.1
    assert mmd(a, b + 0.5).item() > 2 * same
    assert mmd(a, b + 2.0).item() > mmd(a, b + 0.5).item()


def test_nt_xent_prefers_matched_views_and_reversal_flips_gradients():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 32, generator=g)
    matched = nt_xent(z, z + 0.01 * torch.randn(16, 32, generator=g)).item()
    unmatched = nt_xent(z, torch.randn(16, 32, generator=g)).item()
    assert matched < unmatched
    x = torch.ones(3, requires_grad=True)
    (reverse_gradient(x, 0.5) * 2).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -1.0))


def test_views_keep_size_and_follow_the_generator():
    images = torch.rand(4, 3, 16, 16)
    first = views(images, torch.Generator().manual_seed(1))
    again = views(images, torch.Generator().manual_seed(1))
    other = views(images, torch.Generator().manual_seed(2))
    assert first.shape == images.shape and torch.equal(first, again)
    assert not torch.equal(first, other)


def test_byol_target_follows_the_online_network_by_ema():
    torch.manual_seed(0)
    encoder = build_backbone("conv4", image_size=16, channels=8)
    byol = BYOL(encoder, encoder.feature_dim, momentum=0.9)
    before = [p.clone() for p in byol.target_encoder.parameters()]
    loss = byol.loss(encoder, torch.rand(6, 3, 16, 16), torch.rand(6, 3, 16, 16))
    loss.backward()
    assert all(p.grad is None for p in byol.target_encoder.parameters())
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(1.0)
    byol.after_step(encoder)
    for old, new, online in zip(before, byol.target_encoder.parameters(),
                                encoder.parameters(), strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * online)


def unlabeled_folder(root: Path, count: int = 24) -> Path:
    """A flat folder of images unlike the task's (another "domain")."""
    rng = np.random.default_rng(3)
    for i in range(count):
        write_image(root / f"u{i:02d}.png", rng, colour=[250, 250, 20])
    return root


@pytest.fixture(scope="module")
def task_and_stream(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("objectives")
    return write_tiny_task(root), unlabeled_folder(root / "stream")


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("sets, keys", [
    (["train.objective=both", "train.ssl=simclr", "train.align=mmd"],
     {"train/ssl_loss", "train/domain_loss", "train/supervised_loss"}),
    (["train.objective=supervised", "train.align=dann"],
     {"train/domain_loss", "train/domain_acc"}),
    (["train.objective=ssl", "train.ssl=byol"], {"train/ssl_loss"}),
])
def test_pretrain_logs_each_objective_and_records_it(task_and_stream, tmp_path, sets, keys):
    task, stream = task_and_stream
    config = load_config(None, [f"data.task={task}", *TINY, "train.epochs=2", *sets,
                                f"data.unlabeled=[{stream}]"])
    run = pretrain(config, out=tmp_path / "run", quiet=True).path
    steps = [r for r in records(run) if "train/loss" in r]
    assert steps and all(keys <= set(r) for r in steps)
    assert all(np.isfinite(r[k]) for r in steps for k in keys)
    meta = json.loads((run / "model.json").read_text())["metrics"]
    objective = sets[0].split("=")[1]
    assert meta["objective"] == objective and meta["unlabeled_images"] == 24
    if objective == "ssl":  # an epoch is a pass over the 24 unlabeled images, batches of 8
        assert len(steps) == 2 * 3
        assert meta["selection"] == "val episodes"  # the tiny task has val classes
    weights = load_file(run / "model.safetensors")
    assert all(k.startswith("encoder.") for k in weights)  # the extra heads stay behind


def test_ssl_without_base_classes_centres_both_readings(task_and_stream, tmp_path):
    """No base classes: the centring means come from the unlabeled images, the embedding's
    for feature-based heads and the plain output's for those that read it (finetune)."""
    import yaml

    from fewshot.schema import Prototypes

    task, stream = task_and_stream
    spec = yaml.safe_load(task.read_text())
    spec["splits"]["base"], spec["data_root"] = [], str(task.parent / "data")
    no_base = tmp_path / "no-base.yaml"
    no_base.write_text(yaml.safe_dump(spec))
    config = load_config(None, [f"data.task={no_base}", *TINY, "train.epochs=1",
                                "train.objective=ssl", f"data.unlabeled=[{stream}]",
                                "model.embedding={dihedral: true}"])
    run = pretrain(config, out=tmp_path / "run", quiet=True).path
    stored = Prototypes.load(run / "prototypes.safetensors")
    assert stored.class_names == [] and stored.output_mean is not None
    assert stored.output_mean.shape == stored.base_mean.shape
    # a different reading of the same images: the single view's mean, not the dihedral one's
    assert not torch.allclose(stored.output_mean, stored.base_mean)


def test_ssl_needs_no_labels_and_refusals_are_one_line(task_and_stream, tmp_path):
    task, stream = task_and_stream
    common = ["--set", f"data.task={task}", *[a for s in TINY for a in ("--set", s)],
              "--set", "train.epochs=1", "--no-wandb", "--quiet"]
    for extra, key in (
            (["--set", "train.objective=ssl"], "data.unlabeled"),
            (["--unlabeled", str(stream)], "--unlabeled"),
            (["--unlabeled", str(task.parent / "data" / "ds" / "c5"), "--set",
              "train.align=mmd"], "val and novel"),
    ):
        out = run_cli("pretrain", "--out", str(tmp_path / "refused"), *common, *extra)
        assert out.returncode == 2, out.stderr
        error = out.stderr.strip().splitlines()[-1]
        assert error.startswith("error: ") and key in error, out.stderr
    meta = run_cli("meta-train", "--out", str(tmp_path / "mt"), *common,
                   "--unlabeled", str(stream))
    assert meta.returncode == 2 and "train.align=mmd or dann" in meta.stderr, meta.stderr


def test_meta_train_aligns_to_the_unlabeled_stream(task_and_stream, tmp_path):
    from test_meta_train import TINY as META

    task, stream = task_and_stream
    out = run_cli("meta-train", "--out", str(tmp_path / "mt"), "--set", f"data.task={task}",
                  *[a for s in META for a in ("--set", s)], "--set", "train.episodes=12",
                  "--set", "train.align=dann", "--unlabeled", str(stream), "--no-wandb",
                  "--quiet")
    assert out.returncode == 0, out.stderr
    steps = [r for r in records(tmp_path / "mt") if "train/loss" in r]
    assert steps and all({"train/align_loss", "train/domain_loss", "train/domain_acc"}
                         <= set(r) for r in steps)
    saved = torch.load(tmp_path / "mt" / "checkpoint" / "state.pt", weights_only=True)
    assert any(k.startswith("discriminator.") for k in saved["train"]["stage"]["alignment"])
    weights = load_file(tmp_path / "mt" / "model.safetensors")
    assert not any("discriminator" in k for k in weights)  # the run's model is the head


def test_interrupted_run_with_unlabeled_objectives_resumes_exactly(task_and_stream,
                                                                   tmp_path):
    task, stream = task_and_stream
    sets = [f"data.task={task}", *TINY, "train.epochs=8", "train.objective=both",
            "train.ssl=byol", "train.align=dann"]
    args = [a for s in sets for a in ("--set", s)] + ["--unlabeled", str(stream)]
    straight = run_cli("pretrain", "--out", str(tmp_path / "straight"), *args)
    assert straight.returncode == 0, straight.stderr
    run = tmp_path / "stopped"
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "fewshot", "pretrain", "--out", str(run),
                                *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    _wait_for(run / "checkpoint" / "state.pt", process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    if process.returncode == 130:
        resumed = run_cli("pretrain", "--resume", str(run))
        assert resumed.returncode == 0, resumed.stderr
    else:
        assert process.returncode == 0, stderr
    a = load_file(tmp_path / "straight" / "checkpoint" / "last.safetensors")
    b = load_file(run / "checkpoint" / "last.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("unlabeled.") for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
