"""Tiny synthetic image folders written by the tests themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# The suite's networks are tiny: one thread is faster than two and keeps the
# subprocesses it starts from competing for the cores.
torch.set_num_threads(1)

CHECKOUT = Path(__file__).resolve().parent.parent
USER_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fewshot"
# Everything the suite writes goes below one temporary folder: the decoded cache, and the
# working directory (runs/, ./wandb) of the suite and of the processes it starts.
SANDBOX = Path(tempfile.mkdtemp(prefix="fewshot-tests-"))
os.environ["FEWSHOT_CACHE"] = str(SANDBOX / "cache")
os.environ.setdefault("WANDB_MODE", "offline")
(SANDBOX / "work").mkdir()


def checkout_state() -> set[str]:
    """Every file git sees in the checkout (ignored ones too), but caches Python writes."""
    out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
                         capture_output=True, text=True, cwd=CHECKOUT)
    skip = ("__pycache__", ".pytest_cache", ".egg-info", ".ruff_cache")
    return {line for line in out.stdout.splitlines() if not any(s in line for s in skip)}


def cache_state() -> set[str]:
    return {str(p) for p in USER_CACHE.rglob("*")} if USER_CACHE.exists() else set()


@pytest.fixture(autouse=True, scope="session")
def _leave_no_trace():
    """The suite runs in its own folder and fails if the checkout or the user's cache
    changed while it ran (a run, a W&B folder or a cache file written outside tmp)."""
    before, cached = checkout_state(), cache_state()
    previous = os.getcwd()
    os.chdir(SANDBOX / "work")
    yield
    os.chdir(previous)
    assert checkout_state() == before, "the test suite changed the checkout"
    assert cache_state() == cached, f"the test suite wrote into {USER_CACHE}"


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
    full_env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("FEWSHOT_DEBUG", None)
    full_env.pop("WANDB_SERVICE", None)  # a fresh process, as a user's: no shared W&B service
    return subprocess.run([sys.executable, "-m", "fewshot", *args], capture_output=True,
                          text=True, cwd=cwd or SANDBOX / "work", env=full_env,
                          timeout=timeout)


def wandb_records(wandb_dir: Path) -> list[dict]:
    """Every record of the offline W&B runs under `wandb_dir`, read by W&B's own CLI."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(wandb_dir)],
                         capture_output=True, text=True, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
