"""Bad files and unlucky runs: every case ends in one line of ours and the right exit
code, with bounded memory where memory was the risk, and never in silently wrong numbers."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_adapt import SIZE, write_run

from conftest import make_folder, run_cli, write_tiny_task
from fewshot.data.folders import list_class_files, load_image
from fewshot.errors import DataError, UsageError
from fewshot.run import RunDir


def one_line_error(result: subprocess.CompletedProcess, code: int, *parts: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    for part in parts:
        assert part in errors[0], (part, errors[0])


@pytest.fixture
def adapted(tmp_path) -> Path:
    run = write_run(tmp_path / "run")
    folder = make_folder(tmp_path / "new", {"alpha": 4, "beta": 4}, size=SIZE, seed=1)
    out = tmp_path / "adapted"
    done = run_cli("adapt", "--shots", "2", str(folder), "--model", str(run.path), "--out",
                   str(out), "--no-wandb", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return out


def edit_doc(folder: Path, change) -> None:
    path = folder / "adapted.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(("change", "says"), [
    (lambda d: d["preprocessing"].update(image_size=100_000), "preprocessing.image_size"),
    (lambda d: d.pop("preprocessing"), "preprocessing"),
    (lambda d: d["classes"].append("gamma"), "names 3 classes but the weights have 2"),
    (lambda d: d.update(classes=["alpha", "alpha"]), "names a class twice"),
])
def test_a_damaged_adapted_json_is_one_line_before_any_allocation(adapted, tmp_path, change,
                                                                  says) -> None:
    edit_doc(adapted, change)
    image = next((tmp_path / "new" / "alpha").iterdir())
    one_line_error(run_cli("predict", str(adapted), str(image), cwd=tmp_path), 1, says)


def test_weights_from_another_adapted_folder_are_refused(adapted, tmp_path) -> None:
    other = tmp_path / "other"
    shutil.copytree(adapted, other)
    folder = make_folder(tmp_path / "new2", {"x": 4, "y": 4}, size=SIZE, seed=5)
    done = run_cli("adapt", "--shots", "3", str(folder), "--model", str(tmp_path / "run"),
                   "--out", str(other), "--no-wandb", "--seed", "4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    shutil.copy(adapted / "adapted.safetensors", other / "adapted.safetensors")
    image = next((folder / "x").iterdir())
    one_line_error(run_cli("predict", str(other), str(image), cwd=tmp_path), 1,
                   "not the one adapted.json was written with")


def test_huge_images_are_refused_or_decoded_reduced(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FEWSHOT_MAX_PIXELS", "1000000")
    png, jpeg = tmp_path / "big.png", tmp_path / "big.jpg"
    Image.new("RGB", (2000, 1500), (200, 10, 10)).save(png)
    Image.new("RGB", (4000, 3000), (10, 200, 10)).save(jpeg, quality=50)
    with pytest.raises(DataError, match="above the limit of 1,000,000"):
        load_image(png)
    small = load_image(jpeg)  # JPEG: decoded at a power-of-two reduction
    assert small.size[0] * small.size[1] <= 1_000_000 and small.getpixel((5, 5))[1] > 150
    assert load_image(jpeg, size=32).size == (32, 32)
    monkeypatch.setenv("FEWSHOT_MAX_PIXELS", "4000000")
    assert load_image(png).size == (2000, 1500)


def test_data_check_reports_a_huge_png_in_one_line(tmp_path) -> None:
    folder = make_folder(tmp_path / "data", {"a": 3, "b": 3}, size=SIZE)
    Image.new("RGB", (1200, 1000)).save(folder / "a" / "huge.png")
    done = run_cli("data", "check", str(folder), "--no-near-duplicates",
                   env={"FEWSHOT_MAX_PIXELS": "1000000"}, cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "huge.png" in done.stdout and "above the limit" in done.stdout


def test_a_symlink_loop_and_a_second_link_read_each_file_once(tmp_path) -> None:
    folder = make_folder(tmp_path / "data", {"alpha": 6, "beta": 6}, size=SIZE)
    (folder / "alpha" / "loop").symlink_to(".", target_is_directory=True)
    (folder / "beta" / "again").symlink_to(folder / "alpha", target_is_directory=True)
    (folder / "alpha" / "twice.png").symlink_to(folder / "alpha" / "img_000.png")
    images, _ = list_class_files(folder / "alpha")
    assert len(images) == 6
    run = write_run(tmp_path / "run")
    out = tmp_path / "adapted"
    done = run_cli("adapt", "--shots", "2", str(folder / "alpha"), "--model", str(run.path),
                   "--out", str(out), "--no-wandb", "--keep-base", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "adapted.json").read_text())["metrics"]["heldout"] == 4


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_named_like_an_image_never_blocks(tmp_path) -> None:
    folder = make_folder(tmp_path / "data", {"a": 3, "b": 3}, size=SIZE)
    os.mkfifo(folder / "a" / "pipe.jpg")
    (folder / "b" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    done = run_cli("data", "check", str(folder), "--no-near-duplicates", cwd=tmp_path,
                   timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "pipe.jpg: not a regular file" in done.stdout
    assert "gone.png: a link to nothing" in done.stdout


SETPRIV = shutil.which("setpriv")


@pytest.mark.skipif(os.geteuid() == 0 and SETPRIV is None,
                    reason="as root, dropping the file-permission override needs setpriv")
def test_an_unreadable_file_is_a_finding_not_a_traceback() -> None:
    root = Path(tempfile.mkdtemp(prefix="fewshot-perm-"))
    # root reads every file: the check runs without the capabilities that allow it
    prefix = ([SETPRIV, "--bounding-set=-dac_override,-dac_read_search", "--"]
              if os.geteuid() == 0 else [])
    try:
        folder = make_folder(root / "data", {"a": 3, "b": 3}, size=SIZE)
        (folder / "a" / "img_000.png").chmod(0)
        env = {**os.environ, "FEWSHOT_CACHE": str(root / "cache"), "WANDB_MODE": "offline"}
        done = subprocess.run([*prefix, sys.executable, "-m", "fewshot", "data", "check",
                               str(folder), "--no-near-duplicates"], capture_output=True,
                              text=True, env=env, cwd=root, timeout=120)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr
        assert "img_000.png" in done.stdout and "Permission denied" in done.stdout
    finally:
        shutil.rmtree(root, ignore_errors=True)


TINY = ["model.backbone_args={channels: 8}", "train.ways=2", "train.shots=2",
        "train.queries=3", "train.val_episodes=4", "train.val_every=4", "train.episodes=8",
        "train.checkpoint_every=4", "tracking.wandb=false"]


@pytest.fixture
def trained_run(tmp_path) -> Path:
    task = write_tiny_task(tmp_path)
    run = tmp_path / "run"
    done = run_cli("meta-train", "--quiet", "--out", str(run), "--set", f"data.task={task}",
                   *[a for s in TINY for a in ("--set", s)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return run


def test_resume_refuses_a_pickle_and_falls_back_to_the_previous_checkpoint(trained_run,
                                                                           tmp_path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'owned'}",))

    state = trained_run / "checkpoint" / "state.pt"
    good = state.read_bytes()
    torch.save({"x": Evil()}, state)
    one_line_error(run_cli("meta-train", "--resume", str(trained_run), cwd=tmp_path), 1,
                   "cannot be resumed", "nothing in it was run")
    assert not (tmp_path / "owned").exists()
    for garbage in (b"torn", b"\x80\x02q\x00."):  # bytes that fail the unpickler oddly
        state.write_bytes(garbage)
        one_line_error(run_cli("meta-train", "--resume", str(trained_run), cwd=tmp_path), 1,
                       "cannot be resumed", "without --resume")

    # a torn state.pt beside an intact checkpoint.old (a kill mid-swap): resume from it
    shutil.copytree(trained_run / "checkpoint", trained_run / "checkpoint.old")
    (trained_run / "checkpoint.old" / "state.pt").write_bytes(good)
    state.write_bytes(good[: len(good) // 2])
    done = run_cli("meta-train", "--quiet", "--resume", str(trained_run), "--set",
                   "train.episodes=12", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    steps = [json.loads(line)["step"] for line in (trained_run / "metrics.jsonl")
             .read_text().splitlines() if "train/loss" in line]
    assert steps == list(range(1, 13))  # every step once: nothing replayed twice


def test_a_second_writer_is_refused_while_a_run_folder_is_locked(trained_run,
                                                                 tmp_path) -> None:
    holder = RunDir(trained_run)
    holder.lock()
    try:
        one_line_error(run_cli("meta-train", "--resume", str(trained_run), cwd=tmp_path), 2,
                       "in use by process", str(os.getpid()))
    finally:
        holder.unlock()


def test_metrics_after_the_checkpoint_are_dropped_on_resume(tmp_path) -> None:
    run = RunDir(tmp_path)
    lines = [{"step": s, "train/loss": 1.0} for s in (1, 2, 3, 4, 5)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines)
                                            + '{"step": 6, "tr')
    run.truncate_metrics(3)
    kept = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().split("\n")
            if x]
    assert kept == [1, 2, 3]


def test_run_names_are_names_and_creation_is_atomic(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("../../escaped", "/tmp/abs", "a/b", ".."):
        with pytest.raises(UsageError, match="cannot be a path"):
            RunDir.create(name)
    made: list[Path] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        made.append(RunDir.create("same").path)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 8
    assert not (tmp_path.parent / "escaped").exists()


def test_out_never_moves_latest(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = RunDir.create("a")
    RunDir.create("b", out=tmp_path / "elsewhere")
    assert (tmp_path / "runs" / "latest").resolve() == first.path.resolve()


def test_config_that_is_not_utf8_and_predict_out_folder(tmp_path, adapted) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    one_line_error(run_cli("meta-train", "--config", str(bad), cwd=tmp_path), 2, "not UTF-8")
    image = next((tmp_path / "new" / "alpha").iterdir())
    (tmp_path / "somewhere").mkdir()
    one_line_error(run_cli("predict", str(adapted), str(image), "--out",
                           str(tmp_path / "somewhere"), cwd=tmp_path), 2, "--out names a folder")


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(tmp_path) -> None:
    run = write_run(tmp_path / "run")
    folder = make_folder(tmp_path / "new", {"=HYPERLINK(1)": 4, "plain": 4}, size=SIZE, seed=2)
    out = tmp_path / "adapted"
    assert run_cli("adapt", "--shots", "2", str(folder), "--model", str(run.path), "--out",
                   str(out), "--no-wandb", cwd=tmp_path).returncode == 0
    image = next((folder / "=HYPERLINK(1)").iterdir())
    csv_text = run_cli("predict", str(adapted_dir := out), str(image), cwd=tmp_path).stdout
    assert "'=HYPERLINK(1)" in csv_text and ",=HYPERLINK" not in csv_text
    json_text = run_cli("predict", str(adapted_dir), str(image), "--format", "json",
                        cwd=tmp_path).stdout
    assert '"p_=HYPERLINK(1)"' in json_text


def test_a_single_class_folder_gets_a_note(tmp_path) -> None:
    folder = make_folder(tmp_path / "data", {"only": 25}, size=SIZE)
    done = run_cli("data", "check", str(folder), "--no-near-duplicates", cwd=tmp_path)
    assert done.returncode == 0 and "note: one class only" in done.stdout


def test_safetensors_files_follow_the_umask(tmp_path) -> None:
    from fewshot.data.files import save_tensors

    previous = os.umask(0o022)
    try:
        save_tensors(tmp_path / "w.safetensors", {"x": torch.zeros(2)})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o644


def test_warnings_of_pillow_do_not_precede_our_errors(tmp_path) -> None:
    folder = make_folder(tmp_path / "data", {"a": 3, "b": 3}, size=SIZE)
    (folder / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(np.arange(50) % 7))
    done = run_cli("data", "check", str(folder), "--no-near-duplicates", cwd=tmp_path)
    assert done.returncode == 1 and "Warning" not in done.stderr and "Traceback" not in \
        done.stderr


def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_torn_files(tmp_path) -> None:
    import resource
    import signal

    task = write_tiny_task(tmp_path)
    run = tmp_path / "run"

    def small_files() -> None:  # files above 200 kB fail to write, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    sets = ["model.backbone_args={channels: 64}", "train.ways=2", "train.shots=2",
            "train.queries=3", "train.episodes=4", "train.checkpoint_every=2",
            "train.val_every=100", f"data.task={task}", "tracking.wandb=false"]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "fewshot", "meta-train", "--quiet", "--out",
                           str(run), *[a for s in sets for a in ("--set", s)]],
                          capture_output=True, text=True, cwd=tmp_path, env=env,
                          preexec_fn=small_files, timeout=300)
    one_line_error(done, 1, "cannot write the checkpoint")
    assert not (run / "checkpoint.tmp").exists()
    assert not [p for p in run.rglob("*.tmp")]


def huge_png(path: Path, side: int) -> Path:
    """A real, valid black PNG of `side` x `side` pixels, written row by row (a few hundred
    kB on disk, `3 * side**2` bytes once decoded)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    packer, row, body = zlib.compressobj(9), b"\x00" * (1 + 3 * side), []
    for _ in range(side):
        body.append(packer.compress(row))
    body.append(packer.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b""))
    return path


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc (Linux)")
def test_three_huge_pngs_keep_data_check_within_memory(tmp_path) -> None:
    folder = make_folder(tmp_path / "data", {"a": 3, "b": 3}, size=SIZE)
    first = huge_png(folder / "a" / "huge_0.png", 13_000)
    for i in (1, 2):
        shutil.copy(first, folder / "a" / f"huge_{i}.png")
    assert Image.open(folder / "a" / "huge_0.png").size == (13_000, 13_000)
    # the process's own high-water mark (VmHWM starts anew at exec; ru_maxrss does not)
    measure = ("import re, sys\n"
               "from fewshot.cli import main\n"
               "sys.argv = ['fewshot', 'data', 'check', sys.argv[1], '--no-near-duplicates']\n"
               "try:\n    main()\n"
               "finally:\n"
               "    status = open('/proc/self/status').read()\n"
               "    print('peak_kb', re.search(r'VmHWM:\\s+(\\d+)', status).group(1),"
               " file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", measure, str(folder)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 1 and done.stdout.count("above the limit") == 3, done.stdout
    peak_kb = int(done.stderr.split("peak_kb")[-1])
    # 13000 x 13000 RGB is 507 MB an image; the check stays far below one of them
    assert peak_kb < 300_000, peak_kb
