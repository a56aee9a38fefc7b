"""`fewshot export`: every inductive head as one ONNX / TorchScript file whose output is
the adapted model's calibrated probabilities, on tiny run directories (Conv4 with 8
channels, or raw pixels, at 16 px) and synthetic image folders written here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CHECKOUT, make_folder, run_cli
from fewshot.adapt import BaseModel
from fewshot.adapted import Adapted, Ensemble
from fewshot.data.files import expand_paths, load_many
from fewshot.data.images import IMAGENET_MEAN, IMAGENET_STD
from fewshot.errors import UsageError
from fewshot.export import export, export_command
from fewshot.methods import build_head
from fewshot.models import build_backbone
from fewshot.run import RunDir
from fewshot.schema import ModelMeta, Prototypes

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SIZE = 16
TOL = 1e-4
GBML = ("maml", "fomaml", "anil", "metasgd")
INDUCTIVE = ("protonet", "simpleshot", "linear-probe", "finetune", "siamese", *GBML)


def write_run(path: Path, head: str, backbone: str = "conv4",
              stored_statistics: bool = False) -> Path:
    """A meta-train run directory with random weights and random base prototypes. With
    `stored_statistics` its batch-norm layers have running statistics (updated on random
    images), as a trained encoder's; without, the MAML family normalises with the support
    set's statistics."""
    torch.manual_seed(0)
    args = {"channels": 8} if backbone == "conv4" else {}
    encoder = build_backbone(backbone, image_size=SIZE, **args)
    model = build_head(head, encoder)
    if stored_statistics:
        encoder.train()
        with torch.no_grad():
            for _ in range(3):
                encoder(torch.randn(8, 3, SIZE, SIZE) * 2 + 0.5)
        encoder.eval()
    path.mkdir(parents=True)
    run = RunDir(path)
    run.save_model(model.state_dict(), ModelMeta(**{
        "kind": "meta-train", "task": "synthetic", "backbone": backbone,
        "backbone_args": args, "image_size": SIZE,
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "feature_dim": encoder.feature_dim, "head": head, "head_options": {},
        "classes": {"base": ["base-one", "base-two"], "val": [], "novel": []}, "metrics": {}}))
    dim = encoder.feature_dim
    run.save_prototypes(Prototypes(["base-one", "base-two"], torch.randn(2, dim),
                                   torch.randn(dim).abs()))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def new_classes(work: Path) -> Path:
    return make_folder(work / "new_disease", {"alpha": 5, "beta": 5, "gamma": 5},
                       size=SIZE, seed=1)


@pytest.fixture(scope="module")
def adapted_dirs(work: Path, new_classes: Path):
    """`adapted_dirs(method, backbone=, stored_statistics=)`: an adapted folder, written
    once per combination by the real adapt."""
    made: dict[tuple, Path] = {}

    def get(method: str, backbone: str = "conv4", stored_statistics: bool = False) -> Path:
        key = (method, backbone, stored_statistics)
        if key not in made:
            name = f"{method}-{backbone}-{int(stored_statistics)}"
            trained = method if method in GBML else "protonet"
            run = write_run(work / "runs" / name, trained, backbone, stored_statistics)
            out = work / "adapted" / name
            BaseModel(run).adapt(new_classes, shots=3, method=method, score=False, out=out)
            made[key] = out
        return made[key]

    return get


def files_of(folder: Path) -> list[Path]:
    return expand_paths([folder])


def pixels_of(files: list[Path]) -> np.ndarray:
    """Float32 `[N, 3, H, W]` in 0..255, read as `fewshot predict` reads files."""
    return np.stack(load_many(files, SIZE)).astype(np.float32)


def run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def run_torchscript(path: Path, images: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        module = torch.jit.load(str(path))
    with torch.no_grad():
        return module(torch.from_numpy(images)).numpy()


def max_difference(a: np.ndarray, b: np.ndarray | torch.Tensor) -> float:
    b = b.numpy() if isinstance(b, torch.Tensor) else b
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


def check_file(path: Path, fmt: str, model, files: list[Path]) -> None:
    """The file gives the model's probabilities on the image files, at several batch
    sizes (every file, one file, a few)."""
    images = pixels_of(files)
    expected = model.probabilities(torch.from_numpy(images).to(torch.uint8))
    run = run_onnx if fmt == "onnx" else run_torchscript
    for rows in (slice(None), slice(0, 1), slice(3, 7)):
        got = run(path, np.ascontiguousarray(images[rows]))
        assert max_difference(got, expected[rows]) < TOL, (fmt, rows)
    records = model.predict(files)  # predict's own reading of the files
    table = np.array([[r["probabilities"][c] for c in model.classes] for r in records])
    assert max_difference(run(path, images), table.astype(np.float32)) < TOL


# ------------------------------------------------------------------ every inductive head

@pytest.mark.parametrize("method", INDUCTIVE)
def test_every_inductive_head_exports(method, adapted_dirs, new_classes, tmp_path):
    folder = adapted_dirs(method)
    model = Adapted.load(folder)
    assert not model.transductive
    files = files_of(new_classes)
    onnx_file = export(model, "onnx", tmp_path / "model.onnx")
    check_file(onnx_file, "onnx", model, files)

    proto = onnx.load(str(onnx_file))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == model.classes == ["alpha", "beta", "gamma"]
    assert int(meta["image_size"]) == SIZE
    (inp,), (out,) = proto.graph.input, proto.graph.output
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")  # N is free
    assert [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]
    assert out.type.tensor_type.shape.dim[1].dim_value == 3
    assert not list(tmp_path.glob(".*.tmp"))  # written whole

    script_file = export(model, "torchscript", tmp_path / "model.pt")
    check_file(script_file, "torchscript", model, files)


@pytest.mark.parametrize("method", ["simpleshot", "maml"])
def test_a_parameter_free_encoder_exports(method, adapted_dirs, new_classes, tmp_path):
    model = Adapted.load(adapted_dirs(method, backbone="pixels"))
    path = export(model, "onnx", tmp_path / "pixels.onnx")
    check_file(path, "onnx", model, files_of(new_classes))


@pytest.mark.parametrize("method", ["maml", "anil"])
def test_maml_family_with_stored_batchnorm_statistics(method, adapted_dirs, new_classes,
                                                      tmp_path):
    """Layers with running statistics keep them; those without take the support set's
    (the default fixture's case): both become fixed per-channel scales in the graph."""
    model = Adapted.load(adapted_dirs(method, stored_statistics=True))
    assert all(layer.has_stored_statistics() for layer in model.head._bn)
    path = export(model, "onnx", tmp_path / "stored.onnx")
    check_file(path, "onnx", model, files_of(new_classes))


def test_maml_graph_needs_no_support_images(adapted_dirs, new_classes, tmp_path):
    """The support set's statistics are folded in: the graph holds no tensor of the
    support's shape, and its output does not change with the rest of the batch."""
    model = Adapted.load(adapted_dirs("maml"))
    support = model.head._support
    assert support is not None and support.shape[0] == 9  # 3 shots x 3 classes
    path = export(model, "onnx", tmp_path / "maml.onnx")
    shapes = [tuple(t.dims) for t in onnx.load(str(path)).graph.initializer]
    assert tuple(support.shape) not in shapes
    images = pixels_of(files_of(new_classes))
    alone = run_onnx(path, images[:1])
    together = run_onnx(path, images)[:1]
    assert max_difference(alone, together) < 1e-6


def test_the_temperature_is_in_the_graph(adapted_dirs, new_classes, tmp_path):
    model = Adapted.load(adapted_dirs("protonet"))
    model.calibration = {**(model.calibration or {}), "temperature": 3.5}
    assert model.temperature == 3.5
    hot = export(model, "onnx", tmp_path / "hot.onnx")
    check_file(hot, "onnx", model, files_of(new_classes))
    model.calibration = {**model.calibration, "temperature": 0.25}
    cold = export(model, "torchscript", tmp_path / "cold.pt")
    check_file(cold, "torchscript", model, files_of(new_classes))
    images = pixels_of(files_of(new_classes))
    assert run_onnx(hot, images).max() < run_torchscript(cold, images).max()


# ------------------------------------------------------------------ ensembles


def test_an_ensemble_averages_its_members(adapted_dirs, new_classes, tmp_path):
    members = [Adapted.load(adapted_dirs(m)) for m in ("protonet", "maml", "linear-probe")]
    members[1].calibration = {**(members[1].calibration or {}), "temperature": 2.0}
    ensemble = Ensemble(members)
    images = pixels_of(files_of(new_classes))
    each = [m.probabilities(torch.from_numpy(images).to(torch.uint8)).numpy() for m in members]
    expected = np.mean(each, axis=0)
    assert max(max_difference(e, expected) for e in each) > 1e-3  # the mean is not a member
    for fmt, run in (("onnx", run_onnx), ("torchscript", run_torchscript)):
        path = export(ensemble, fmt, tmp_path / f"ensemble.{fmt}")
        assert max_difference(run(path, images), expected) < TOL
        assert max_difference(run(path, images[2:4]), expected[2:4]) < TOL
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "ensemble.onnx")).metadata_props}
    assert json.loads(meta["classes"]) == ensemble.classes


# ------------------------------------------------------------------ the command line

def main_in_process(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """The console entry point in this process: (exit code, stdout, stderr)."""
    from fewshot import cli

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main() sets it
    monkeypatch.delenv("FEWSHOT_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["fewshot", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    out = capsys.readouterr()
    return int(stopped.value.code or 0), out.out, out.err


def test_cli_export_matches_fewshot_predict(adapted_dirs, new_classes, tmp_path, monkeypatch,
                                            capsys):
    """`fewshot export` then `fewshot predict` as a user runs them (fresh processes), and
    the TorchScript format with --out through the same entry point."""
    folder = adapted_dirs("simpleshot")
    done = run_cli("export", str(folder), "--format", "onnx")
    assert done.returncode == 0, done.stderr
    default = folder / "model.onnx"
    assert default.is_file() and str(default) in done.stdout
    predicted = run_cli("predict", str(folder), str(new_classes), "--format", "json")
    assert predicted.returncode == 0, predicted.stderr
    rows = json.loads(predicted.stdout)
    classes = ["alpha", "beta", "gamma"]
    table = np.array([[row[f"p_{c}"] for c in classes] for row in rows], dtype=np.float32)
    images = pixels_of([Path(row["path"]) for row in rows])
    assert max_difference(run_onnx(default, images), table) < TOL
    default.unlink()  # the folder is shared by the module's tests

    out = tmp_path / "deploy" / "cells.pt"
    code, stdout, stderr = main_in_process(monkeypatch, capsys, "export", str(folder),
                                           "--format", "torchscript", "--out", str(out))
    assert code == 0 and str(out) in stdout, stderr
    assert max_difference(run_torchscript(out, images), table) < TOL


def test_a_transductive_head_is_refused(adapted_dirs, tmp_path):
    folder = adapted_dirs("tim")
    assert Adapted.load(folder).transductive
    done = run_cli("export", str(folder), "--format", "onnx", "--out", str(tmp_path / "t.onnx"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "transductive" in lines[0]
    assert "Traceback" not in done.stderr and not (tmp_path / "t.onnx").exists()
    with pytest.raises(UsageError, match="transductive"):
        export(Ensemble([Adapted.load(adapted_dirs("protonet")), Adapted.load(folder)]),
               "torchscript", tmp_path / "t.pt")


def test_bad_targets_cannot_start(adapted_dirs, tmp_path):
    with pytest.raises(UsageError, match="names a folder") as folder_out:
        export_command(adapted_dirs("protonet"), "onnx", tmp_path)
    assert folder_out.value.exit_code == 2
    with pytest.raises(UsageError, match="not found"):
        export_command(tmp_path / "nowhere", "torchscript", None)
    done = run_cli("export", str(adapted_dirs("protonet")), "--format", "tflite")
    assert done.returncode == 2 and done.stderr.startswith("error: ")


def test_without_onnx_the_error_names_the_extra(monkeypatch, capsys, adapted_dirs, tmp_path):
    """With onnx not importable (hidden from this process), the command line answers one
    line naming the extra to install, exit 2, before any tracing; a head no format can
    export is refused for that first (installing the extra would not help)."""
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    out = tmp_path / "m.onnx"
    code, _, stderr = main_in_process(monkeypatch, capsys, "export",
                                      str(adapted_dirs("protonet")), "--format", "onnx",
                                      "--out", str(out))
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "pip install 'fewshot[export]'" in lines[0], lines
    assert lines[0].startswith("error: ") and not out.exists()
    with pytest.raises(UsageError, match=re.escape("fewshot[export]")):
        export(Adapted.load(adapted_dirs("protonet")), "onnx", out)  # the Python API too
    code, _, stderr = main_in_process(monkeypatch, capsys, "export", str(adapted_dirs("tim")),
                                      "--format", "onnx", "--out", str(out))
    assert code == 2 and "transductive head (tim)" in stderr and "fewshot[export]" not in stderr


# ------------------------------------------------------------------ the README's example

def test_the_readme_deployment_example_runs_without_torch(adapted_dirs, new_classes,
                                                          tmp_path):
    """The Deploy section's snippet, run as written (in a folder laid out as it assumes)
    in a process that must not import torch or fewshot, gives predict's probabilities
    for an image that needs resizing."""
    from PIL import Image

    readme = (CHECKOUT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Deploy\n", 1)[1].split("\n## ", 1)[0]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(snippet.strip().splitlines()) <= 12

    folder = adapted_dirs("linear-probe")
    model_file = tmp_path / "adapted" / "new_disease" / "model.onnx"
    export_command(folder, "onnx", model_file)
    source = Image.open(new_classes / "beta" / "img_002.png").resize((27, 27))
    source.save(tmp_path / "cell.png")  # not at the model's size: the snippet resizes

    check = (snippet + "\nimport sys\n"
             "assert 'torch' not in sys.modules and 'fewshot' not in sys.modules\n"
             "print(json.dumps([float(p) for p in probabilities]))\n")
    done = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    printed, probabilities = done.stdout.strip().splitlines()[-2:]
    expected = Adapted.load(folder).predict([tmp_path / "cell.png"])[0]
    assert max_difference(np.array(json.loads(probabilities)),
                          np.array([expected["probabilities"][c] for c in ("alpha", "beta",
                                                                            "gamma")])) < TOL
    assert printed.split()[0] == expected["prediction"]


# ------------------------------------------------------------------ the shipped model


@pytest.fixture(scope="module")
def sample_cells(tmp_path_factory) -> Path:
    sample = tmp_path_factory.mktemp("cells") / "sample"
    assert run_cli("data", "sample", str(sample), cwd=sample.parent).returncode == 0
    return sample


@pytest.mark.parametrize("method", [
    "linear-probe",
    *(pytest.param(m, marks=pytest.mark.slow) for m in INDUCTIVE if m != "linear-probe")])
def test_blood_v1_adapted_on_real_cells_exports_to_predicts_numbers(method, sample_cells,
                                                                     tmp_path):
    """ResNet-18 at 64 px, adapted on the shipped sample's blood cells: the ONNX file
    answers as `fewshot predict` does on the real image files, for every inductive head
    (linear-probe in CI; the others with -m slow, about 30 s each)."""
    out = tmp_path / "adapted"
    spec = {"finetune": "finetune:steps=5"}.get(method, method)
    adapted = BaseModel("blood-v1").adapt(sample_cells, shots=5, method=spec, out=out,
                                          score=False)
    assert adapted.calibration["fit"] in ("k-fold", "k-fold-proxy")  # T is in the graph
    model = Adapted.load(out)
    path = export(model, "onnx", tmp_path / "blood.onnx")
    files = files_of(sample_cells / "monocyte")[:12] + files_of(sample_cells / "basophil")[:4]
    images = np.stack(load_many(files, 64)).astype(np.float32)
    records = model.predict(files)
    table = np.array([[r["probabilities"][c] for c in model.classes] for r in records])
    assert max_difference(run_onnx(path, images), table.astype(np.float32)) < TOL
