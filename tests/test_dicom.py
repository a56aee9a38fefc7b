from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from fewshot.data.folders import IMAGE_EXTENSIONS, load_image, scan_folder
from fewshot.errors import DataError

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid  # noqa: E402,E501


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2",
                **tags) -> Path:
    """A minimal single-frame DICOM file written by pydicom itself."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.set_pixel_data(pixels, photometric_interpretation=photometric,
                      bits_stored=8 * pixels.dtype.itemsize if pixels.dtype != np.uint16 else 12)
    for key, value in tags.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


RAMP = np.array([[0, 1000, 2000, 3000]], dtype=np.uint16).repeat(4, axis=0)


def gray(path: Path, size: int | None = None) -> np.ndarray:
    rgb = np.asarray(load_image(path, size))
    assert rgb.dtype == np.uint8 and (rgb[..., 0] == rgb[..., 2]).all()
    return rgb[..., 0]


def test_dcm_is_an_image_extension():
    assert ".dcm" in IMAGE_EXTENSIONS


def test_window_from_the_file_is_applied(tmp_path):
    # window 1000..2000: values at or below 1000 black, at or above 2000 white
    path = write_dicom(tmp_path / "w.dcm", RAMP, WindowCenter=1500, WindowWidth=1000)
    row = gray(path)[0]
    assert row[0] == 0 and row[1] <= 1 and row[2] >= 254 and row[3] == 255
    # without a window: the 16-bit rule (own min..max to 0..255)
    plain = gray(write_dicom(tmp_path / "p.dcm", RAMP))[0]
    assert plain.tolist() == [0, 85, 170, 255]


def test_rescale_slope_intercept_before_the_window(tmp_path):
    # stored 0..3000 with slope 1, intercept -1024 are -1024..1976; window 0..1000
    path = write_dicom(tmp_path / "ct.dcm", RAMP, RescaleSlope=1, RescaleIntercept=-1024,
                       WindowCenter=500, WindowWidth=1000)
    row = gray(path)[0]
    assert row[0] == 0 and row[1] == 0 and row[3] == 255  # -1024, -24 black; 1976 white
    assert 230 < row[2] < 255  # 976 near the top of the window


def test_monochrome1_is_inverted(tmp_path):
    m2 = gray(write_dicom(tmp_path / "m2.dcm", RAMP))
    m1 = gray(write_dicom(tmp_path / "m1.dcm", RAMP, photometric="MONOCHROME1"))
    assert m1[0].tolist() == [255, 170, 85, 0]
    assert np.array_equal(m1, 255 - m2)
    eight = np.array([[10, 200]], dtype=np.uint8)
    assert gray(write_dicom(tmp_path / "m1_8.dcm", eight, "MONOCHROME1"))[0].tolist() == [245, 55]


def test_colour_dicom_and_resize(tmp_path):
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    path = write_dicom(tmp_path / "c.dcm", rgb, photometric="RGB", PlanarConfiguration=0)
    out = np.asarray(load_image(path, 4))
    assert out.shape == (4, 4, 3) and out[0, 0].tolist() == [200, 0, 0]


def test_broken_and_multiframe_dicom_are_data_errors(tmp_path):
    broken = tmp_path / "b.dcm"
    broken.write_bytes(b"DICM but not really")
    with pytest.raises(DataError, match="b.dcm"):
        load_image(broken)
    frames = write_dicom(tmp_path / "f.dcm", np.zeros((2, 4, 4), dtype=np.uint8),
                         NumberOfFrames=2)
    with pytest.raises(DataError, match="multi-frame"):
        load_image(frames)


def test_data_check_reads_dicom_folders(tmp_path):
    root = tmp_path / "d"
    rng = np.random.default_rng(0)
    for label in ("effusion", "normal"):
        for i in range(3):
            write_dicom(root / label / f"{i}.dcm",
                        rng.integers(0, 4096, (32, 32)).astype(np.uint16))
    (root / "normal" / "bad.dcm").write_bytes(b"nope")
    assert len(scan_folder(root)) == 7
    result = run_cli("data", "check", str(root), "--shots", "1", "--queries", "1",
                     env={"FEWSHOT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "DICOM" in result.stdout
    bad = [line for line in result.stdout.splitlines() if line.startswith("unreadable:")]
    assert len(bad) == 1 and "bad.dcm" in bad[0]


def test_missing_pydicom_is_a_one_line_install_hint(tmp_path):
    path = write_dicom(tmp_path / "d" / "a" / "x.dcm", RAMP)
    code = ("import sys; sys.modules['pydicom'] = None; sys.argv = ['fewshot', 'data', "
            f"'check', {str(tmp_path / 'd')!r}]; from fewshot.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: reading DICOM files needs pydicom ({path}): pip install 'fewshot[dicom]'"]
