"""Tiny synthetic image folders written by the tests themselves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# The suite's networks are tiny: one thread is faster than two and keeps the
# subprocesses it starts from competing for the cores.
torch.set_num_threads(1)


def write_image(path: Path, rng: np.random.Generator, size: int = 16, colour=None,
                mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    if colour is not None:  # a class-specific tint makes classes separable
        pixels = (pixels // 4 + np.asarray(colour, dtype=np.uint8) // 4 * 3).astype(np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def make_folder(root: Path, classes: dict[str, int], size: int = 16, seed: int = 0,
                ext: str = ".png") -> Path:
    """`root/<class>/img_XXX<ext>` with `classes[name]` images each, separable by colour."""
    rng = np.random.default_rng(seed)
    for c, (name, count) in enumerate(classes.items()):
        colour = [(c * 97) % 256, (c * 53 + 80) % 256, (c * 181 + 160) % 256]
        for i in range(count):
            write_image(root / name / f"img_{i:03d}{ext}", rng, size, colour)
    return root


def write_tiny_task(root: Path) -> Path:
    """A task over 8 synthetic classes at 16 px: 4 base, 2 val, 2 novel (10 images each)."""
    import yaml

    make_folder(root / "data" / "ds", {f"c{i}": 10 for i in range(8)}, size=16)
    path = root / "task.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "image_size": 16, "data_root": "data", "datasets": {"x": "ds"},
        "splits": {"base": ["x/c0", "x/c1", "x/c2", "x/c3"], "val": ["x/c4", "x/c5"],
                   "novel": ["x/c6", "x/c7"]},
    }))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "data", {"alpha": 25, "beta": 25, "gamma": 25, "delta": 25})


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real console entry point in a fresh process, as a user would."""
    import os

    full_env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("FEWSHOT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "fewshot", *args], capture_output=True,
                          text=True, cwd=cwd, env=full_env, timeout=timeout)


def wandb_records(wandb_dir: Path) -> list[dict]:
    """Every record of the offline W&B runs under `wandb_dir`, read by W&B's own CLI."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(wandb_dir)],
                         capture_output=True, text=True, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
