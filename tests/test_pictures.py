"""Pictures and the image-level tools: confusion.png / per_class.png from adapt,
evaluate --plot, curves.png from training, explain (Grad-CAM) and verify."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_adapt import SIZE, write_pixels_run, write_run

from conftest import make_folder, run_cli, write_tiny_task
from fewshot.adapt import BaseModel
from fewshot.adapted import Adapted
from fewshot.data.images import IMAGENET_MEAN, IMAGENET_STD
from fewshot.explain import saliency
from fewshot.methods import build_head
from fewshot.models import build_backbone
from fewshot.run import RunDir
from fewshot.schema import ModelMeta, Prototypes

pytest.importorskip("matplotlib")


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("pictures") / "tiny").path


def test_adapt_draws_confusion_and_per_class_sensitivity(tiny_run, tmp_path) -> None:
    folder = make_folder(tmp_path / "new", {"alpha": 6, "beta": 6}, size=SIZE, seed=2)
    out = tmp_path / "adapted"
    BaseModel(tiny_run).adapt(folder, shots=3, method="simpleshot", out=out)
    for name in ("confusion.png", "per_class.png", "reliability.png"):
        width, height = png_size(out / name)
        assert width > 200 and height > 100, name
    assert "![reliability diagram](reliability.png)" in (out / "MODEL_CARD.md").read_text()


def test_without_matplotlib_adapt_says_so_and_plot_is_an_error(tiny_run, tmp_path,
                                                              monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    folder = make_folder(tmp_path / "new", {"alpha": 6, "beta": 6}, size=SIZE, seed=2)
    out = tmp_path / "adapted"
    BaseModel(tiny_run).adapt(folder, shots=3, method="simpleshot", out=out)
    err = capsys.readouterr().err
    assert "skipped confusion.png and per_class.png" in err and "fewshot[plots]" in err
    assert not (out / "confusion.png").exists() and (out / "adapted.json").is_file()
    card = (out / "MODEL_CARD.md").read_text()  # no link to a picture that is not there
    assert not (out / "reliability.png").exists() and "reliability.png" not in card
    assert "| ECE |" in card  # the numbers are still there

    from fewshot import cli

    monkeypatch.setattr(sys, "argv", ["fewshot", "evaluate", "--model", "pixels", "--task",
                                      "quickstart", "--plot", str(tmp_path / "a.png")])
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--plot needs matplotlib" in err[0]


def test_evaluate_plot_and_training_curves(tmp_path) -> None:
    task = write_tiny_task(tmp_path)
    done = run_cli("pretrain", "--set", f"data.task={task}", "--set", "model.backbone=conv4",
                   "--set", "model.backbone_args={channels: 8}", "--set", "train.epochs=2",
                   "--set", "train.batch_size=16", "--no-wandb", "--out",
                   str(tmp_path / "run"), "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert png_size(tmp_path / "run" / "curves.png")[0] > 300
    plot = tmp_path / "accuracy.png"
    done = run_cli("evaluate", "--model", str(tmp_path / "run"), "--model", "pixels",
                   "--head", "simpleshot", "--task", str(task), "--ways", "2", "--shots", "2",
                   "--queries", "3", "--episodes", "10", "--plot", str(plot), "--no-wandb",
                   "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"plot written to {plot}" in done.stdout and png_size(plot)[0] > 500


def test_training_curves_without_accuracy_draw_without_a_warning(tmp_path, recwarn) -> None:
    """A pretraining run without val classes logs loss only: the picture says so instead
    of matplotlib warning about an empty legend on the user's terminal."""
    from fewshot import plots

    records = [{"step": s, "train/loss": 2.0 / s, "train/loss_smooth": 2.0 / s}
               for s in range(1, 20)]
    path = plots.training_curves(records, tmp_path / "curves.png")
    assert png_size(path)[0] > 300
    assert not [w for w in recwarn if "legend" in str(w.message)]


# ------------------------------------------------------------------ explain

BIG = 64


def spot_image(corner: str, seed: int) -> np.ndarray:
    """Grey noise with a bright square in one corner: the only thing telling classes apart."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(90, 130, (BIG, BIG, 3), dtype=np.uint8)
    y, x = {"top-left": (6, 6), "bottom-right": (42, 42)}[corner]
    pixels[y:y + 16, x:x + 16] = 250
    return pixels


def make_spot_model(root: Path, embedding: dict | None = None) -> Path:
    """Conv4 at 64 px (a 4x4 last map), adapted to 'spot' (a bright square anywhere)
    against 'plain' grey noise."""
    torch.manual_seed(0)
    encoder = build_backbone("conv4", image_size=BIG, channels=16)
    run = RunDir(root / "run")
    run.path.mkdir()
    run.save_model(build_head("protonet", encoder).state_dict(), ModelMeta(**{
        "kind": "meta-train", "task": "synthetic", "backbone": "conv4",
        "backbone_args": {"channels": 16}, "image_size": BIG,
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "feature_dim": encoder.feature_dim, "head": "protonet", "head_options": {},
        "classes": {"base": ["b"], "val": [], "novel": []}, "metrics": {},
        "embedding": embedding or {}}))
    run.save_prototypes(Prototypes(["b"], torch.zeros(1, encoder.feature_dim),
                                   torch.zeros(encoder.feature_dim)))
    folder = root / "new"
    for cls in ("spot", "plain"):
        (folder / cls).mkdir(parents=True)
    for i in range(6):
        Image.fromarray(spot_image(("top-left", "bottom-right")[i % 2], i)).save(
            folder / "spot" / f"s{i}.png")
        noise = np.random.default_rng(100 + i).integers(90, 130, (BIG, BIG, 3), dtype=np.uint8)
        Image.fromarray(noise).save(folder / "plain" / f"p{i}.png")
    out = root / "adapted"
    BaseModel(run).adapt(folder, shots=6, method="simpleshot", out=out)
    return out


@pytest.fixture(scope="module")
def spot_model(tmp_path_factory) -> Path:
    return make_spot_model(tmp_path_factory.mktemp("spots"))


def centre_of_mass(cam: torch.Tensor) -> tuple[float, float]:
    ys, xs = torch.meshgrid(torch.arange(cam.shape[0]), torch.arange(cam.shape[1]),
                            indexing="ij")
    total = cam.sum()
    return float((ys * cam).sum() / total), float((xs * cam).sum() / total)


def test_grad_cam_has_the_image_size_and_follows_the_square(spot_model) -> None:
    model = Adapted.load(spot_model)
    images = torch.from_numpy(np.stack([spot_image("top-left", 50),
                                        spot_image("bottom-right", 51)])).permute(0, 3, 1, 2)
    maps, probs, method = saliency(model, images.contiguous())
    assert method == "Grad-CAM" and maps.shape == (2, BIG, BIG)
    assert float(maps.min()) >= 0 and float(maps.max()) == pytest.approx(1.0)
    assert model.classes[int(probs[0].argmax())] == "spot"
    assert not torch.allclose(maps[0], maps[1])
    (y0, x0), (y1, x1) = centre_of_mass(maps[0]), centre_of_mass(maps[1])
    assert y0 < BIG / 2 and x0 < BIG / 2  # the top-left square
    assert y1 > BIG / 2 and x1 > BIG / 2  # the bottom-right one


def test_grad_cam_over_dihedral_views_turns_each_map_back(tmp_path) -> None:
    model = Adapted.load(make_spot_model(tmp_path, {"dihedral": True}))
    images = torch.from_numpy(np.stack([spot_image("top-left", 50),
                                        spot_image("bottom-right", 51)])).permute(0, 3, 1, 2)
    maps, _, method = saliency(model, images.contiguous())
    assert method == "Grad-CAM" and maps.shape == (2, BIG, BIG)
    (y0, x0), (y1, x1) = centre_of_mass(maps[0]), centre_of_mass(maps[1])
    assert y0 < BIG / 2 and x0 < BIG / 2  # the square, not its turned copies
    assert y1 > BIG / 2 and x1 > BIG / 2


def test_explain_command_writes_one_png_per_image_and_a_contact_sheet(spot_model,
                                                                     tmp_path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i, corner in enumerate(("top-left", "bottom-right", "top-left")):
        Image.fromarray(spot_image(corner, 60 + i)).save(images / f"x{i}.png")
    out = tmp_path / "explained"
    done = run_cli("explain", str(spot_model), str(images), "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "contact_sheet.png", "x0_explained.png", "x1_explained.png", "x2_explained.png"]
    assert png_size(out / "x0_explained.png")[0] > 500


def test_a_pixels_encoder_gets_gradient_times_input(tmp_path) -> None:
    run = write_pixels_run(tmp_path / "run")
    folder = make_folder(tmp_path / "new", {"a": 4, "b": 4}, size=SIZE, seed=2)
    model = BaseModel(run.path).adapt(folder, shots=3, method="simpleshot")
    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    maps, _, method = saliency(model, images)
    assert method == "gradient x input" and maps.shape == (2, SIZE, SIZE)
    assert not torch.allclose(maps[0], maps[1])


def test_predict_says_whether_a_transductive_head_used_the_batch(tiny_run, tmp_path) -> None:
    folder = make_folder(tmp_path / "new", {"alpha": 5, "beta": 5}, size=SIZE, seed=2)
    out = tmp_path / "tim"
    BaseModel(tiny_run).adapt(folder, shots=3, method="tim", out=out)
    images = sorted((folder / "alpha").iterdir())[:2] + sorted((folder / "beta").iterdir())[:2]
    alone = run_cli("predict", str(out), str(images[0]), cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    assert ("tim is transductive, but with 1 image (fewer than 2 a class) each was "
            "classified on its own") in alone.stderr
    batch = run_cli("predict", str(out), *map(str, images), cwd=tmp_path)
    assert batch.returncode == 0, batch.stderr
    assert "tim is transductive: the 4 images were classified jointly" in batch.stderr


def test_explain_refuses_transductive_heads_and_ensembles(tiny_run, tmp_path) -> None:
    folder = make_folder(tmp_path / "new", {"alpha": 5, "beta": 5}, size=SIZE, seed=2)
    out = tmp_path / "tim"
    BaseModel(tiny_run).adapt(folder, shots=3, method="tim", out=out)
    image = next((folder / "alpha").iterdir())
    done = run_cli("explain", str(out), str(image), "--out", str(tmp_path / "e"), cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "transductive" in done.stderr and not (tmp_path / "e").exists()


# ------------------------------------------------------------------ verify


def test_verify_prints_the_cosine_similarity(tiny_run, tmp_path) -> None:
    folder = make_folder(tmp_path / "imgs", {"alpha": 2, "beta": 1}, size=SIZE, seed=4)
    a, b = sorted((folder / "alpha").iterdir())
    c = next((folder / "beta").iterdir())
    same = run_cli("verify", str(tiny_run), str(a), str(a), cwd=tmp_path)
    assert same.returncode == 0, same.stderr
    assert same.stdout.strip() == "similarity: 1.00"
    from fewshot.verify import verify

    (what, close), (_, far) = verify(tiny_run, a, b), verify(tiny_run, a, c)
    assert what == "similarity"  # a protonet run: cosine, not a probability
    assert -1 <= far < close < 1  # same colour class closer than another class
    missing = run_cli("verify", str(tiny_run), str(a), str(tmp_path / "nope.png"),
                      cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.startswith("error: image not found")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    bad = run_cli("verify", str(tiny_run), str(a), str(broken), cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "broken.png" in bad.stderr
