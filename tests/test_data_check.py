from __future__ import annotations

import shutil

import numpy as np
from PIL import Image

from conftest import make_folder, run_cli, write_image
from fewshot.data.folders import load_image, scan_folder


def test_clean_folder_passes(folder):
    result = run_cli("data", "check", str(folder), "--shots", "5", "--queries", "15")
    assert result.returncode == 0, result.stderr
    assert "alpha" in result.stdout and "no problems" in result.stdout


def test_each_problem_reported_with_path_and_exit_1(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 22, "b": 22, "c": 3})
    good = root / "a" / "img_000.png"
    # a truncated JPEG
    jpeg = write_image(root / "b" / "broken.jpg", np.random.default_rng(1), size=64)
    jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])
    # a text file named .png
    (root / "a" / "notes.png").write_text("not an image")
    # an empty class
    (root / "empty").mkdir()
    # a cross-class duplicate: label conflict
    shutil.copy(good, root / "b" / "copy_of_a.png")
    # a duplicate within a class
    shutil.copy(good, root / "a" / "zz_again.png")

    result = run_cli("data", "check", str(root), "--shots", "5", "--queries", "15")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()

    def finding(kind: str, name: str) -> str:
        hits = [line for line in lines if line.startswith(f"{kind}:") and name in line]
        assert hits, f"no {kind} finding for {name} in:\n{result.stdout}"
        return hits[0]

    finding("unreadable", "broken.jpg")
    finding("unreadable", "notes.png")
    finding("empty-class", "empty")
    assert "3 images" in finding("too-few", "/c")
    assert "img_000.png" in finding("label-conflict", "copy_of_a.png")
    finding("duplicate", "zz_again.png")
    assert "problem(s)" in result.stderr


def test_unicode_class_uppercase_extension_hidden_files(tmp_path):
    root = tmp_path / "d"
    rng = np.random.default_rng(0)
    for name in ("Ödème pulmonaire", "normal"):
        for i in range(4):
            write_image(root / name / f"IMG_{i}.JPG", rng)
    (root / "normal" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (root / ".hidden_class").mkdir()
    data = scan_folder(root)
    assert data.classes == ["normal", "Ödème pulmonaire"]
    assert len(data) == 8 and not data.others
    result = run_cli("data", "check", str(root), "--shots", "2", "--queries", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Ödème pulmonaire" in result.stdout


def test_missing_folder_is_exit_2_one_line(tmp_path):
    result = run_cli("data", "check", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: folder not found (")
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_option_is_exit_2_one_line(folder):
    result = run_cli("data", "check", str(folder), "--bogus")
    assert result.returncode == 2
    assert result.stderr.startswith("error: No such option: --bogus")
    assert len(result.stderr.strip().splitlines()) == 1


def test_image_modes_become_rgb8(tmp_path):
    gray16 = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    out = np.asarray(load_image(tmp_path / "g16.png"))
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [0, 0, 0] and out[1, 1].tolist() == [255, 255, 255]
    assert out[0, 1, 0] == round(1000 * 255 / 4000)

    Image.fromarray(np.full((2, 2), 77, np.uint8), mode="L").save(tmp_path / "g.png")
    assert np.asarray(load_image(tmp_path / "g.png"))[0, 0].tolist() == [77, 77, 77]

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 128
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    assert np.asarray(load_image(tmp_path / "a.png"))[0, 0].tolist() == [100, 0, 0]

    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.save(tmp_path / "p.png")
    assert np.asarray(load_image(tmp_path / "p.png"))[0, 1].tolist() == [0, 0, 255]

    assert load_image(tmp_path / "g.png", size=8).size == (8, 8)
