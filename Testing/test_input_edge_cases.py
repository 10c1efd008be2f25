"""Input edge cases of issue 12: items 4, 5, 10, 11 and 12 (each test failed before its fix)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_factory import write_series

from CovidCTLib.cli import main
from CovidCTLib.io.loader import load_ct
from CovidCTLib.phantom import make_phantom


def _display_slice(seed: int = 1) -> np.ndarray:
    """A plausible 8-bit axial slice (lung window) from the phantom."""
    ct = make_phantom((16, 96, 96), spacing=(2.5, 2.0, 2.0), seed=seed).ct
    return np.clip((ct.array[8] + 1350.0) / 1500.0 * 255.0, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ item 12
def test_grey_alpha_png_is_read_and_segmented(tmp_path: Path) -> None:
    from PIL import Image

    grey = _display_slice()
    folder = tmp_path / "in"
    folder.mkdir()
    la = np.stack([grey, np.full_like(grey, 255)], axis=-1)
    Image.fromarray(la, mode="LA").save(folder / "slice_la.png")
    ct = load_ct(folder / "slice_la.png", require_3d=False)
    np.testing.assert_array_equal(ct.array[0], grey)
    assert any("alpha" in note for note in ct.notes)
    out = tmp_path / "masks"
    code = main(["segment-slices", "--task", "lung", str(folder), "-o", str(out), "--method", "classical"])
    assert code == 0
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "slice_la.png")))
    assert mask.shape == grey.shape


def test_truncated_png_is_still_called_corrupt(tmp_path: Path) -> None:
    from PIL import Image

    from CovidCTLib.errors import InputError

    path = tmp_path / "cut.png"
    Image.fromarray(_display_slice(), mode="L").save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match="corrupt"):
        load_ct(path, require_3d=False)


# ------------------------------------------------------------------------------------- items 4 and 5
def _phantom_hu() -> np.ndarray:
    """Plausible chest HU (z, y, x), clipped at -1024 as scanners store it."""
    hu = make_phantom((12, 96, 96), spacing=(5.0, 2.0, 2.0), seed=2).ct.array
    return np.clip(np.round(hu), -1024, 3000).astype(np.int16)


def _strip(paths: list[Path], *keywords: str) -> None:
    import pydicom

    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword in keywords:
            delattr(ds, keyword)
        ds.save_as(path)


def test_dicom_without_rescale_tags_stored_as_hu_plus_1024(tmp_path: Path) -> None:
    hu = _phantom_hu()
    paths = write_series(tmp_path / "raw", hu, spacing=(2.0, 2.0, 5.0))  # stored = HU + 1024
    _strip(paths, "RescaleSlope", "RescaleIntercept")
    ct = load_ct(tmp_path / "raw")
    assert ct.intensity == "HU"
    np.testing.assert_array_equal(ct.array, hu)
    assert any("HU + 1024" in note for note in ct.notes)


def test_dicom_without_rescale_tags_signed_values_taken_as_hu(tmp_path: Path) -> None:
    hu = _phantom_hu()
    paths = write_series(tmp_path / "signed", hu, spacing=(2.0, 2.0, 5.0), intercept=0.0)  # stored = HU
    _strip(paths, "RescaleSlope", "RescaleIntercept")
    ct = load_ct(tmp_path / "signed")
    np.testing.assert_array_equal(ct.array, hu)
    assert any("signed and taken as HU" in note for note in ct.notes)


def test_dicom_without_pixel_spacing_is_refused(tmp_path: Path, capsys) -> None:
    from CovidCTLib.errors import GeometryError

    paths = write_series(tmp_path / "nospacing", _phantom_hu(), spacing=(2.0, 2.0, 5.0))
    _strip(paths, "PixelSpacing")
    with pytest.raises(GeometryError, match="PixelSpacing"):
        load_ct(tmp_path / "nospacing")
    with pytest.raises(GeometryError, match="PixelSpacing"):
        load_ct(paths[0], require_3d=False)
    code = main(["analyze", str(tmp_path / "nospacing"), "-o", str(tmp_path / "out"), "--no-classify"])
    assert code == 2
    assert "PixelSpacing (0028,0030) is missing" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_with_zero_pixdim_is_refused(tmp_path: Path, suffix: str) -> None:
    import gzip
    import struct

    from CovidCTLib.errors import GeometryError

    image = sitk.GetImageFromArray(_phantom_hu())
    image.SetSpacing((2.0, 2.0, 5.0))
    plain = tmp_path / "ct.nii"
    sitk.WriteImage(image, str(plain))
    data = bytearray(plain.read_bytes())
    data[80:92] = struct.pack("<3f", 0.0, 0.0, 0.0)  # pixdim[1..3]
    path = tmp_path / f"zero{suffix}"
    path.write_bytes(gzip.compress(bytes(data)) if suffix == ".nii.gz" else bytes(data))
    with pytest.raises(GeometryError, match="pixdim"):
        load_ct(path)
    assert load_ct(plain).image.GetSpacing() == (2.0, 2.0, 5.0)


# ------------------------------------------------------------------------------------------ item 10
def _slice_series(folder: Path, hu: np.ndarray, date: str) -> Path:
    return write_series(folder, hu[None], spacing=(2.0, 2.0, 5.0), acquisition_date=date)[0]


def _hu_slice(seed: int = 2) -> np.ndarray:
    hu = make_phantom((12, 96, 96), spacing=(5.0, 2.0, 2.0), seed=seed).ct.array[6]
    return np.clip(np.round(hu), -1024, 3000).astype(np.int16)


def _png_pair(folder: Path) -> tuple[Path, Path]:
    """A plausible 8-bit slice and a blank one of the same size."""
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(_display_slice()), str(folder / "base.png"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((96, 96), np.uint8)), str(folder / "blank.png"))
    return folder / "base.png", folder / "blank.png"


def test_compare_refuses_blank_followup_volume(tmp_path: Path, capsys) -> None:
    base = tmp_path / "base.nii.gz"
    image = sitk.GetImageFromArray(_phantom_hu())
    image.SetSpacing((2.0, 2.0, 5.0))
    sitk.WriteImage(image, str(base))
    blank = sitk.GetImageFromArray(np.zeros(_phantom_hu().shape, np.int16))
    blank.CopyInformation(image)
    follow = tmp_path / "blank.nii.gz"
    sitk.WriteImage(blank, str(follow))
    code = main(["compare", str(base), str(follow), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "blank.nii.gz does not look like a chest CT" in err and "Traceback" not in err


def test_compare_refuses_blank_followup_slice(tmp_path: Path, capsys) -> None:
    base, blank = _png_pair(tmp_path)
    code = main(["compare", str(base), str(blank), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "blank.png does not look like a CT slice" in err


def test_registration_failure_inside_simpleitk_is_a_clear_error(tmp_path: Path) -> None:
    """Time points built in memory skip the loader checks: a SimpleITK failure becomes a RegistrationError."""
    from CovidCTLib.io.loader import load_ct
    from CovidCTLib.longitudinal.compare import TimePoint, load_timepoint, run_comparison, segment_slice
    from CovidCTLib.longitudinal.registration import RegistrationError

    base_png, blank_png = _png_pair(tmp_path)
    blank_ct = load_ct(blank_png, require_3d=False)
    lungs, infection, _ = segment_slice(blank_ct)
    with pytest.raises(RegistrationError, match="probably blank"):
        run_comparison([load_timepoint(base_png), TimePoint(blank_ct, lungs, infection, label="blank")])


# ------------------------------------------------------------------------------------------ item 11
def test_unreadable_edge_slice_is_a_visible_warning(tmp_path: Path, capsys) -> None:
    """A corrupt top slice leaves a shorter, regular stack: loaded, but stated on the console and in the report."""
    import json

    hu = make_phantom((16, 96, 96), spacing=(5.0, 2.0, 2.0), seed=2).ct.array
    paths = write_series(
        tmp_path / "series", np.clip(hu, -1024, 3000).astype(np.int16), spacing=(2.0, 2.0, 5.0), shuffle=False
    )
    paths[-1].write_bytes(b"garbage, not DICOM" * 10)  # the last slice of the stack
    ct = load_ct(tmp_path / "series")
    assert ct.shape[0] == 15
    from CovidCTLib.io.notices import warnings_in

    (warning,) = warnings_in(ct.notes)
    assert paths[-1].name in warning and "left out" in warning
    out = tmp_path / "out"
    code = main(
        [
            "analyze",
            str(tmp_path / "series"),
            "-o",
            str(out),
            "--method",
            "classical",
            "--no-classify",
            "--no-report",
            "--no-dicom-seg",
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert f"covidct: warning: 1 file(s) of {tmp_path / 'series'}" in err and paths[-1].name in err
    report = json.loads((out / "report.json").read_text())
    assert any(paths[-1].name in note and note.startswith("WARNING") for note in report["notes"])
