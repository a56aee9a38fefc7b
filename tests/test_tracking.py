"""evaluate and adapt log their own W&B runs (offline here), read back with W&B's CLI."""

from __future__ import annotations

from pathlib import Path

from test_adapt import write_run

from conftest import make_folder, run_cli, wandb_records, write_tiny_task

SIZE = 16


def _run_record(records: list[dict]) -> dict:
    return next(r["run"] for r in records if r.get("type") == "run")


def _history_keys(records: list[dict]) -> set[str]:
    return {k for r in records if r.get("type") == "history" for k in r["history"]["item"]}


def _artifacts(records: list[dict]) -> dict[str, str]:
    return {r["artifact"]["name"]: r["artifact"]["type"] for r in records
            if r.get("type") == "artifact"}


def test_evaluate_logs_an_evaluate_run_with_tables_and_the_model(tmp_path: Path) -> None:
    task = write_tiny_task(tmp_path)
    run = write_run(tmp_path / "runs" / "tiny")
    result = run_cli("evaluate", "--model", str(run.path), "--model", "pixels", "--head",
                     "protonet", "--head", "simpleshot", "--task", str(task), "--ways", "2",
                     "--shots", "2", "--queries", "3", "--episodes", "4",
                     "--wandb-project", "clinic", "--run-name", "eval-tiny", "--log-model",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wandb sync" in result.stdout + result.stderr
    records = wandb_records(tmp_path / "wandb")
    meta = _run_record(records)
    assert (meta["job_type"], meta["project"], meta["display_name"]) == \
        ("evaluate", "clinic", "eval-tiny")
    config = meta["config"]["update"]
    assert config["fewshot_version"] and config["ways"] == 2 and config["episodes"] == 4
    keys = _history_keys(records)
    assert {"test/results._type", "test/paired._type"} <= keys
    # the scored run directory is logged as a model; 'pixels' is not a directory
    assert _artifacts(records).get("model-tiny") == "model"


def test_adapt_logs_an_adapt_run_with_leave_out_accuracy(tmp_path: Path) -> None:
    run = write_run(tmp_path / "runs" / "tiny")
    folder = make_folder(tmp_path / "new_disease", {"alpha": 6, "beta": 6}, size=SIZE, seed=1)
    result = run_cli("adapt", "--shots", "2", "--model", str(run.path), str(folder),
                     "--run-name", "adapt-tiny", "--log-model", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(f"adapting {run.path}")  # says which model
    # the adapt run lives inside the adapted folder, not in ./wandb
    assert not (tmp_path / "wandb").exists()
    adapted = tmp_path / "adapted" / "new_disease"
    records = wandb_records(adapted / "wandb")
    meta = _run_record(records)
    assert (meta["job_type"], meta["display_name"]) == ("adapt", "adapt-tiny")
    assert {"adapt/accuracy", "adapt/heldout", "adapt/sensitivity._type"} <= \
        _history_keys(records)
    assert _artifacts(records).get("adapted-new_disease") == "adapted-model"
    # predict needs nothing of it
    predicted = run_cli("predict", str(adapted), str(folder / "alpha"), cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr


def test_ensemble_adapt_logs_its_members(tmp_path: Path) -> None:
    runs = [write_run(tmp_path / name / "run") for name in ("one", "two")]
    folder = make_folder(tmp_path / "new_disease", {"alpha": 6, "beta": 6}, size=SIZE, seed=1)
    result = run_cli("adapt", "--shots", "2", str(folder), "--model", str(runs[0].path),
                     "--model", str(runs[1].path), "--method", "protonet", "--method",
                     "linear-probe", "--run-name", "ensemble-tiny", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "wandb").exists()
    records = wandb_records(tmp_path / "adapted" / "new_disease" / "wandb")
    meta = _run_record(records)
    assert (meta["job_type"], meta["display_name"]) == ("adapt", "ensemble-tiny")
    assert meta["config"]["update"]["method"] == "ensemble"
    assert {"adapt/accuracy", "adapt/members._type"} <= _history_keys(records)


def test_no_wandb_leaves_no_wandb_folder(tmp_path: Path) -> None:
    run = write_run(tmp_path / "runs" / "tiny")
    folder = make_folder(tmp_path / "new_disease", {"alpha": 4, "beta": 4}, size=SIZE, seed=1)
    result = run_cli("adapt", "--shots", "2", "--model", str(run.path), str(folder),
                     "--no-wandb", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "wandb").exists()


def test_console_messages_keep_square_brackets() -> None:
    """Install hints (`fewshot[plots]`) and class or file names with brackets are printed
    as written, not read as console markup and dropped."""
    from fewshot import plots
    from fewshot.progress import console

    with console.capture() as captured:
        console.print(f"note: skipped curves.png ({plots.INSTALL_HINT}); class [rare]/x.png")
    assert "'fewshot[plots]'" in captured.get() and "[rare]/x.png" in captured.get()
