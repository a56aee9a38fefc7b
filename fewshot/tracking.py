"""W&B runs and metrics.jsonl: one place every command logs through.

`Tracker.log` writes every metric to the run's `metrics.jsonl` (always) and to Weights &
Biases (when on). W&B runs offline unless the user configured it (`WANDB_MODE`,
`WANDB_API_KEY`, or `wandb login`); a W&B failure warns once and never stops training.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import time
from pathlib import Path
from typing import Any

from fewshot.progress import console


def wandb_configured() -> bool:
    """True when the user set W&B up themselves (we then respect their mode)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = netrc.netrc().authenticators("api.wandb.ai")
    except (OSError, netrc.NetrcParseError):
        host = None
    return host is not None


def wandb_mode() -> str:
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if wandb_configured() else "offline"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Tracker:
    """One run's metrics: `metrics.jsonl` always, W&B when enabled."""

    def __init__(self, run_dir: str | Path | None, *, job_type: str, config: dict | None = None,
                 use_wandb: bool = True, project: str = "fewshot", entity: str | None = None,
                 name: str | None = None, quiet: bool = False,
                 wandb_dir: str | Path | None = None) -> None:
        """`run_dir` holds metrics.jsonl and W&B's files; `wandb_dir` puts W&B's files
        elsewhere (an adapted folder, which keeps no metrics.jsonl); with neither, W&B's
        own default (`./wandb`, or `WANDB_DIR`)."""
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.wandb_dir = Path(wandb_dir) if wandb_dir is not None else self.run_dir
        self.job_type, self.quiet = job_type, quiet
        self.metrics_file = None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.metrics_file = (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8")
        self.wandb_run = None
        self._warned = False
        if use_wandb:
            self._start_wandb(config or {}, project, entity, name)

    def _start_wandb(self, config: dict, project: str, entity: str | None,
                     name: str | None) -> None:
        try:
            import wandb

            from fewshot.version import __version__

            self.mode = wandb_mode()
            settings = wandb.Settings(silent=True, console="off", x_disable_stats=True)
            self.wandb_run = wandb.init(
                project=project, entity=entity, name=name, job_type=self.job_type,
                # absolute: a shared wandb-core service resolves paths from its own folder
                dir=str(self.wandb_dir.resolve()) if self.wandb_dir else None, mode=self.mode,
                config={**config, "fewshot_version": __version__}, settings=settings,
                reinit="create_new",
            )
        except Exception as exc:  # noqa: BLE001 - tracking must never stop the work
            self._warn(exc)

    def _warn(self, exc: BaseException) -> None:
        if not self._warned:
            console.print(f"warning: W&B logging failed, continuing without it ({exc})")
            self._warned = True
        self.wandb_run = None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        record = {"step": step, "time": round(time.time(), 3),
                  **{k: _jsonable(v) for k, v in metrics.items()}}
        if self.metrics_file is not None:
            self.metrics_file.write(json.dumps(record) + "\n")
            self.metrics_file.flush()
        if self.wandb_run is not None:
            try:
                self.wandb_run.log(metrics, step=step)
            except Exception as exc:  # noqa: BLE001
                self._warn(exc)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        """A table to W&B; its rows also go to metrics.jsonl under `key`."""
        if self.metrics_file is not None:
            record = {"step": step, key: [dict(zip(columns, r, strict=True)) for r in rows]}
            self.metrics_file.write(json.dumps(record, default=str) + "\n")
            self.metrics_file.flush()
        if self.wandb_run is not None:
            try:
                import wandb

                self.wandb_run.log({key: wandb.Table(columns=columns, data=rows)}, step=step)
            except Exception as exc:  # noqa: BLE001
                self._warn(exc)

    def log_wandb(self, payload: dict[str, Any], step: int) -> None:
        """W&B-only objects (images, plots); call with a function of `wandb`."""
        if self.wandb_run is not None:
            try:
                self.wandb_run.log(payload, step=step)
            except Exception as exc:  # noqa: BLE001
                self._warn(exc)

    def summary(self, values: dict[str, Any]) -> None:
        if self.wandb_run is not None:
            try:
                self.wandb_run.summary.update(values)
            except Exception as exc:  # noqa: BLE001
                self._warn(exc)

    def log_artifact(self, path: Path, name: str, kind: str = "model") -> None:
        """A file, or a folder's files but its own `wandb/` folder."""
        if self.wandb_run is not None:
            try:
                import wandb

                artifact = wandb.Artifact(name, type=kind)
                if path.is_dir():
                    for file in sorted(path.rglob("*")):
                        relative = file.relative_to(path)
                        if file.is_file() and relative.parts[0] != "wandb":
                            artifact.add_file(str(file), name=relative.as_posix())
                else:
                    artifact.add_file(str(path))
                self.wandb_run.log_artifact(artifact)
            except Exception as exc:  # noqa: BLE001
                self._warn(exc)

    def finish(self, exit_code: int = 0) -> None:
        if self.metrics_file is not None:
            self.metrics_file.close()
            self.metrics_file = None
        run, self.wandb_run = self.wandb_run, None
        if run is None:
            return
        try:
            run_dir = Path(run.dir).parent  # .../wandb/offline-run-*/files -> the run folder
            run.finish(exit_code=exit_code)
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)
            return
        if self.mode == "offline" and not self.quiet:
            console.print(f"W&B run saved offline; upload it with: wandb sync {run_dir}")

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)
