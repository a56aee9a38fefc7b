"""Run directories: everything a run writes, and how it is read back.

    runs/<name>/config.yaml                 resolved config
    runs/<name>/model.safetensors           best weights (encoder.* and head.* keys)
    runs/<name>/model.json                  what is needed to rebuild the model
    runs/<name>/prototypes.safetensors      base-class mean features + base feature mean
    runs/<name>/checkpoint/last.safetensors latest weights
    runs/<name>/checkpoint/state.pt         optimiser/scheduler/RNG state, next episode
    runs/<name>/metrics.jsonl               every logged metric, one JSON object a line
    runs/latest                             symlink to the newest run directory

Every file is written to a temporary name and renamed, so a kill never leaves a torn
file; loading never executes code (safetensors, `torch.load(weights_only=True)`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fewshot.data.files import UNREADABLE, atomic_write, load_tensors, save_tensors, shipped_model
from fewshot.errors import DataError, UsageError
from fewshot.schema import FORMAT_VERSION, MODEL_JSON, PROTOTYPES, ModelMeta, Prototypes
from fewshot.version import __version__

RUNS = Path("runs")


def git_commit() -> str | None:
    """The commit of the source tree fewshot runs from, if it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class RunDir:
    """A run directory; see the module docstring for its layout."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, name: str, out: str | Path | None = None) -> RunDir:
        """`out` as given, else `runs/<name>-<date>-<time>` (created atomically, a suffix
        added when taken), which `runs/latest` then points to; with `out`, no `latest`
        link is touched. A name is a name: no path separators (`--out` chooses a place)."""
        if out is not None:
            path = Path(out)
            if any((path / name).exists() for name in ("checkpoint", "checkpoint.old",
                                                        "model.json")):
                raise UsageError("--out folder already holds a run", path,
                                 f"continue it with --resume {path}, or pass another --out")
            path.mkdir(parents=True, exist_ok=True)
            # the log of a run stopped before its first checkpoint: nothing to resume
            (path / "metrics.jsonl").unlink(missing_ok=True)
            return cls(path)
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise UsageError("a run name cannot be a path", name,
                             "give a plain name (letters, digits, -), or use --out DIR")
        RUNS.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        suffix = 1
        while True:
            path = RUNS / (f"{name}-{stamp}" if suffix == 1 else f"{name}-{stamp}-{suffix}")
            try:
                path.mkdir()
                break
            except FileExistsError:
                suffix += 1
        run = cls(path)
        run.link_latest()
        return run

    def link_latest(self) -> None:
        RUNS.mkdir(exist_ok=True)
        link = RUNS / "latest"
        tmp = RUNS / f".latest.{os.getpid()}.{threading.get_ident()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.path.resolve(), target_is_directory=True)
        os.replace(tmp, link)

    # paths
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def model_path(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def meta_path(self) -> Path:
        return self.path / MODEL_JSON

    @property
    def prototypes_path(self) -> Path:
        return self.path / PROTOTYPES

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoint"

    # writing
    def write_config(self, config: Any) -> None:
        import yaml

        data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        text = yaml.safe_dump(data, sort_keys=False)
        atomic_write(self.config_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def save_model(self, weights: dict[str, Tensor], meta: ModelMeta) -> None:
        """Best model: weights first, then model.json (its presence marks a usable model)."""
        save_tensors(self.model_path, weights, {"format": "fewshot"})
        self.write_meta(meta)

    def write_meta(self, meta: ModelMeta) -> None:
        meta.format_version, meta.fewshot_version = FORMAT_VERSION, __version__
        meta.git_commit = git_commit()
        meta.write(self.meta_path)

    def save_prototypes(self, prototypes: Prototypes) -> None:
        prototypes.save(self.prototypes_path)

    def save_checkpoint(self, weights: dict[str, Tensor], state: dict[str, Any]) -> None:
        """Latest weights and training state, committed together: both files are written
        into `checkpoint.tmp/`, which then replaces `checkpoint/` by renames, so a kill at
        any moment leaves one complete, consistent pair (`checkpoint/` or, mid-swap,
        `checkpoint.old/`)."""
        staging = self.path / "checkpoint.tmp"
        previous = self.path / "checkpoint.old"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            save_tensors(staging / "last.safetensors", weights)
            torch.save(state, staging / "state.pt")
        except Exception as exc:  # noqa: BLE001 - a full disk, a file-size limit
            shutil.rmtree(staging, ignore_errors=True)
            raise DataError(f"cannot write the checkpoint ({exc})".splitlines()[0],
                            self.checkpoint_dir, "free disk space, then resume: the previous "
                            "checkpoint is intact") from None
        shutil.rmtree(previous, ignore_errors=True)
        if self.checkpoint_dir.exists():
            os.replace(self.checkpoint_dir, previous)
        os.replace(staging, self.checkpoint_dir)
        shutil.rmtree(previous, ignore_errors=True)

    def _complete_checkpoints(self) -> list[Path]:
        return [folder for folder in (self.checkpoint_dir, self.path / "checkpoint.old")
                if (folder / "state.pt").is_file() and (folder / "last.safetensors").is_file()]

    # one writer
    def lock(self) -> None:
        """Take the run folder for this process (an exclusive `fcntl` lock on `.lock`, held
        until the process ends or `unlock`); a second process is refused, exit 2."""
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / ".lock", "a+")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UsageError(f"run folder is in use by {holder}", self.path,
                             "wait for it to finish, or stop it first") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def unlock(self) -> None:
        handle = getattr(self, "_lock", None)
        if handle is not None:
            handle.close()
            self._lock = None

    # reading
    def read_meta(self) -> ModelMeta:
        if not self.meta_path.is_file():
            raise UsageError("not a fewshot run directory (no model.json)", self.path,
                             "pass a directory written by pretrain or meta-train")
        return ModelMeta.read(self.meta_path)

    def load_weights(self) -> dict[str, Tensor]:
        return load_tensors(self.model_path)

    def load_prototypes(self) -> Prototypes:
        if not self.prototypes_path.is_file():
            raise UsageError("run has no prototypes.safetensors", self.path,
                             "use a run written by pretrain or meta-train")
        return Prototypes.load(self.prototypes_path)

    def load_checkpoint(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The newest complete checkpoint; a damaged one falls back to the one before it
        (`checkpoint.old`, left by an interrupted swap). Never runs code from the file."""
        import pickle

        folders = self._complete_checkpoints()
        if not folders:
            raise UsageError("no checkpoint to resume from", self.checkpoint_dir,
                             "start a new run without --resume")
        problem = ""
        for folder in folders:
            try:
                weights = load_tensors(folder / "last.safetensors")
                state = torch.load(folder / "state.pt", weights_only=True, map_location="cpu")
            except (DataError, pickle.UnpicklingError, *UNREADABLE) as exc:
                problem = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                continue
            if isinstance(state, dict):
                return weights, state
            problem = "not a fewshot training state"
        raise DataError(f"checkpoint cannot be resumed ({problem}; nothing in it was run)",
                        folders[0], "start a new run without --resume")

    def truncate_metrics(self, step: int) -> None:
        """Keep the metrics.jsonl records up to `step`: those after the checkpoint a run
        resumes from are logged again by the resumed run."""
        import json

        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill
        text = "".join(line + "\n" for line in kept)
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def restore_training(run: RunDir, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any) -> dict[str, Any]:
    """Load a run's checkpoint into the model, optimiser, scheduler and RNGs; returns the
    saved state for the loop's own fields."""
    weights, saved = run.load_checkpoint()
    model.load_state_dict(weights)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"])
    return saved


def resolve_run(path: str | Path | None) -> RunDir:
    """A run directory as given (or the name of a model shipped in the package, when no
    folder of that name exists), or `runs/latest`; exit 2 when it does not exist."""
    target = Path(path) if path is not None else RUNS / "latest"
    if path is not None and (shipped := shipped_model(path)) is not None:
        target = shipped
    if not target.is_dir():
        raise UsageError("run directory not found", target,
                         "train one with `fewshot meta-train` or pass --model RUN_DIR")
    return RunDir(target.resolve())


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain values (loadable with weights_only=True)."""
    import random

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
