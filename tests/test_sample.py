from __future__ import annotations

from PIL import Image

from conftest import run_cli
from fewshot.config import load_config
from fewshot.data.files import packaged
from fewshot.data.folders import scan_folder
from fewshot.data.tasks import load_task


def test_packaged_sample_is_small_attributed_and_64px():
    root = packaged("sample")
    files = [p for p in root.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 5_000_000
    attribution = (root / "ATTRIBUTION.md").read_text(encoding="utf-8")
    assert "CC BY 4.0" in attribution and "doi:10.17632/snkd93bnjr.1" in attribution
    folder = scan_folder(root)
    assert len(folder.classes) == 8
    assert all(55 <= n <= 65 for n in folder.counts().values())
    for path in folder.paths[::40]:
        with Image.open(path) as image:
            assert image.size == (64, 64)


def test_quickstart_task_and_config_fit_the_sample(monkeypatch, tmp_path):
    monkeypatch.delenv("FEWSHOT_DATA", raising=False)
    task = load_task("quickstart")
    assert task.classes("base") == ["pbc/eosinophil", "pbc/ig", "pbc/neutrophil"]
    assert task.classes("novel") == ["pbc/basophil", "pbc/erythroblast", "pbc/monocyte"]
    assert task.classes("val") == ["pbc/lymphocyte", "pbc/platelet"]
    assert task.image_size == 64
    novel = task.split("novel")
    assert len(novel) >= 150 and set(novel.labels.tolist()) == {0, 1, 2}
    config = load_config()
    assert config.data.task == "quickstart"
    assert config.train.ways <= 3 and config.eval.ways <= 3


def test_data_sample_writes_novel_classes_and_refuses_to_overwrite(tmp_path):
    target = tmp_path / "new_disease"
    # FEWSHOT_DATA points elsewhere: the shipped sample is still found
    env = {"FEWSHOT_DATA": str(tmp_path / "elsewhere")}
    result = run_cli("data", "sample", str(target), env=env)
    assert result.returncode == 0, result.stderr
    assert "wrote 180 images in 3 classes" in result.stdout
    folder = scan_folder(target)
    assert folder.classes == ["basophil", "erythroblast", "monocyte"]
    assert all(n == 60 for n in folder.counts().values())

    again = run_cli("data", "sample", str(target), env=env)
    assert again.returncode == 2
    assert again.stderr.startswith("error: folder is not empty (")
    assert len(again.stderr.strip().splitlines()) == 1
    forced = run_cli("data", "sample", str(target), "--force", "--quiet", env=env)
    assert forced.returncode == 0, forced.stderr


def test_a_task_can_leave_out_the_files_of_a_shipped_sample(tmp_path):
    """A dataset's `exclude` folder removes files with the same class folder and name, so
    a model trained on the full dataset never saw the images `fewshot data sample` gives."""
    import shutil

    import yaml

    source = packaged("sample")
    data = tmp_path / "pbc"
    for name in ("basophil", "monocyte"):  # the "full dataset": the sample plus more files
        shutil.copytree(source / name, data / name)
        for extra in range(3):
            shutil.copy(next((source / name).iterdir()), data / name / f"extra_{extra}.jpg")
    spec = {"name": "t", "image_size": 64, "data_root": ".",
            "datasets": {"pbc": {"path": "pbc", "exclude": "packaged:sample"}},
            "splits": {"base": ["pbc/basophil", "pbc/monocyte"]}}
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(spec))
    base = load_task(path).split("base")
    assert sorted(p.name for p in base.paths) == sorted([f"extra_{i}.jpg" for i in range(3)] * 2)
    sample_names = {(p.parent.name, p.name) for p in scan_folder(source).paths}
    assert not {(p.parent.name, p.name) for p in base.paths} & sample_names

    spec["datasets"]["pbc"]["exclude"] = "no-such-folder"
    path.write_text(yaml.safe_dump(spec))
    result = run_cli("evaluate", "--model", "pixels", "--task", str(path), cwd=tmp_path)
    assert result.returncode == 2 and "exclude folder not found" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
