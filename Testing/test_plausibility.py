"""Inputs that cannot be a chest CT or a CT slice are refused (exit 2, one line) before any analysis (issue 12.1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CovidCTLib.cli import main
from CovidCTLib.errors import NotCTError
from CovidCTLib.io.loader import load_ct
from CovidCTLib.io.plausibility import check_plausible, problems
from CovidCTLib.phantom import make_phantom

SHAPE = (48, 96, 96)
SPACING_XYZ = (1.5, 1.5, 2.5)


def _volume(array: np.ndarray, path: Path, spacing: tuple[float, float, float] = SPACING_XYZ) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def _not_ct_volumes(folder: Path) -> dict[str, Path]:
    """The four non-CT volumes of the issue, on disk."""
    labels = np.zeros(SHAPE, np.uint8)
    labels[10:40, 20:70, 10:45] = 1
    labels[10:40, 20:70, 50:85] = 2
    toy = make_phantom((16, 16, 16), spacing=(1.0, 1.0, 1.0), seed=0).ct.array
    return {
        "zeros": _volume(np.zeros(SHAPE, np.float32), folder / "zeros.nii.gz"),
        "nan": _volume(np.full(SHAPE, np.nan, np.float32), folder / "nan.nrrd"),
        # ITK's NIfTI reader turns NaN into 0: refused as blank
        "nan_nifti": _volume(np.full(SHAPE, np.nan, np.float32), folder / "nan.nii.gz"),
        "labelmap": _volume(labels, folder / "labels.nii.gz"),
        "toy16": _volume(toy.astype(np.int16), folder / "toy16.nii.gz", (1.0, 1.0, 1.0)),
    }


def _png(array: np.ndarray, path: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(path))
    return path


def _blank_pngs(folder: Path) -> dict[str, Path]:
    return {
        "black": _png(np.zeros((128, 128)), folder / "black.png"),
        "white": _png(np.full((128, 128), 255), folder / "white.png"),
        "one_pixel": _png(np.full((1, 1), 128), folder / "one_pixel.png"),
    }


def _one_line_error(capsys: pytest.CaptureFixture[str], expected: str) -> None:
    err = capsys.readouterr().err.strip()
    assert expected in err, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err


@pytest.mark.parametrize("kind", ["zeros", "nan", "nan_nifti", "labelmap", "toy16"])
def test_analyze_refuses_volume_that_is_not_a_chest_ct(tmp_path: Path, kind: str, capsys) -> None:
    path = _not_ct_volumes(tmp_path)[kind]
    out = tmp_path / "out"
    code = main(["analyze", str(path), "-o", str(out), "--no-report"])
    assert code == 2
    _one_line_error(capsys, "does not look like a chest CT volume" if kind != "nan" else "NaN or infinite")
    assert not out.exists() or not any(out.iterdir())


def test_each_refusal_names_the_reason(tmp_path: Path) -> None:
    paths = _not_ct_volumes(tmp_path)
    with pytest.raises(NotCTError, match="NaN or infinite"):
        load_ct(paths.pop("nan"))
    reasons = {kind: " ".join(problems(load_ct(path))) for kind, path in paths.items()}
    assert "same value" in reasons["zeros"]
    assert "same value" in reasons["nan_nifti"]
    assert "distinct values" in reasons["labelmap"]
    assert "field of view" in reasons["toy16"]


@pytest.mark.parametrize("kind", ["black", "white", "one_pixel"])
def test_classify_refuses_blank_image(tmp_path: Path, kind: str, capsys) -> None:
    png = _blank_pngs(tmp_path)[kind]
    out = tmp_path / "pred.csv"
    code = main(["classify", str(png), "-o", str(out), "--device", "cpu"])
    assert code == 2
    _one_line_error(capsys, "does not look like a CT slice")
    assert not out.exists()


def test_segment_slices_refuses_blank_image(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    _blank_pngs(folder)
    out = tmp_path / "masks"
    code = main(["segment-slices", "--task", "infection", str(folder), "-o", str(out), "--method", "classical"])
    assert code == 2
    _one_line_error(capsys, "does not look like a CT slice")
    assert not out.exists() or not any(out.iterdir())


def test_phantom_volume_and_slices_pass() -> None:
    phantom = make_phantom(SHAPE, seed=1)
    assert problems(phantom.ct) == []
    ct = phantom.ct
    hu_slice = sitk.JoinSeries([ct.image[:, :, SHAPE[0] // 2]])
    assert problems(type(ct)(image=hu_slice, intensity="HU", source="slice")) == []
    display = np.clip((ct.array[SHAPE[0] // 2] + 1350.0) / 1500.0 * 255.0, 0, 255).astype(np.uint8)
    png8 = sitk.JoinSeries([sitk.GetImageFromArray(display)])
    assert problems(type(ct)(image=png8, intensity="8bit", source="png")) == []


def test_hu_volume_without_air_or_soft_tissue_is_refused() -> None:
    ct = make_phantom(SHAPE, seed=1).ct
    water = sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 30, SHAPE).astype(np.float32))
    water.CopyInformation(ct.image)
    with pytest.raises(NotCTError, match="air or lung"):
        check_plausible(type(ct)(image=water, intensity="HU", source="water"))
    bone = sitk.GetImageFromArray(np.random.default_rng(0).normal(-900, 300, SHAPE).astype(np.float32))
    bone.CopyInformation(ct.image)
    bone_arr = sitk.GetArrayFromImage(bone)
    bone_arr[(bone_arr > -250) & (bone_arr < 250)] = 900
    bone = sitk.GetImageFromArray(bone_arr)
    bone.CopyInformation(ct.image)
    with pytest.raises(NotCTError, match="soft tissue"):
        check_plausible(type(ct)(image=bone, intensity="HU", source="air and bone"))


def test_real_inputs_are_plausible(shared_data: Path) -> None:
    """A sample of every real 2-D source and one real volume pass (the full sweep is in the report)."""
    patterns = [
        "covid_ct_classification/COVID/*.png",
        "covid_ct_classification/NonCOVID/*.png",
        "covid19_ct_seg_png256/ct/*.png",
        "medseg_infnet_train/Imgs/*.jpg",
        "sbu_two_timepoint_slices/*/*.dcm",
    ]
    for pattern in patterns:
        files = sorted(shared_data.glob(pattern))
        assert files, pattern
        for path in files[::25]:
            assert problems(load_ct(path, require_3d=False)) == [], path
    assert problems(load_ct(shared_data / "lidc_idri_chest_ct" / "LIDC-IDRI-0001.nii.gz")) == []
