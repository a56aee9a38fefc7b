"""Run directories: atomic, consistent checkpoints and safe loading."""

from __future__ import annotations

import os

import pytest
import torch

from fewshot.errors import UsageError
from fewshot.run import RunDir, resolve_run


def test_checkpoint_pair_survives_a_kill_mid_swap(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunDir.create("t")
    run.save_checkpoint({"w": torch.zeros(3)}, {"next_episode": 4})
    run.save_checkpoint({"w": torch.ones(3)}, {"next_episode": 8})
    weights, state = run.load_checkpoint()
    assert state["next_episode"] == 8 and torch.equal(weights["w"], torch.ones(3))
    assert not (run.path / "checkpoint.tmp").exists()
    assert not (run.path / "checkpoint.old").exists()

    # a kill between the two renames leaves the previous pair in checkpoint.old/
    os.replace(run.checkpoint_dir, run.path / "checkpoint.old")
    (run.path / "checkpoint.tmp").mkdir()
    (run.path / "checkpoint.tmp" / "last.safetensors").write_bytes(b"torn")
    weights, state = run.load_checkpoint()
    assert state["next_episode"] == 8 and torch.equal(weights["w"], torch.ones(3))
    run.save_checkpoint({"w": torch.full((3,), 2.0)}, {"next_episode": 12})
    assert run.load_checkpoint()[1]["next_episode"] == 12


def test_state_loading_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunDir.create("t")
    run.save_checkpoint({"w": torch.zeros(1)}, {"next_episode": 1})

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned > owned.txt",))

    torch.save({"x": Evil()}, run.checkpoint_dir / "state.pt")
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do, as long as no code runs
        run.load_checkpoint()
    assert not (tmp_path / "owned.txt").exists()


def test_latest_link_and_missing_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = RunDir.create("a")
    second = RunDir.create("a")
    assert first.path != second.path
    assert resolve_run(None).path == second.path.resolve()
    with pytest.raises(UsageError) as info:
        resolve_run(tmp_path / "nope")
    assert info.value.exit_code == 2


def test_atomic_writes_follow_the_umask(tmp_path):
    from fewshot.data.files import atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "model.json", lambda tmp: tmp.write_text("{}"))
    finally:
        os.umask(old)
    assert (tmp_path / "model.json").stat().st_mode & 0o777 == 0o644
    assert not list(tmp_path.glob(".*.tmp"))


def test_out_folder_holding_a_run_is_refused_and_a_stale_log_is_dropped(tmp_path):
    done = tmp_path / "done"
    (done / "checkpoint").mkdir(parents=True)
    with pytest.raises(UsageError, match="already holds a run"):
        RunDir.create("x", done)
    stale = tmp_path / "stale"  # stopped before its first checkpoint: its log only
    stale.mkdir()
    (stale / "metrics.jsonl").write_text('{"step": 1}\n')
    RunDir.create("x", stale)
    assert not (stale / "metrics.jsonl").exists()
