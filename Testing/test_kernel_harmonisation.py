"""Issue 13: a sharp-kernel CT is smoothed to a standard kernel's lung texture; one scan in two kernels agrees."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from CovidCTLib.imaging.kernel import KernelHarmonisation, harmonisation_note, harmonise_kernel
from CovidCTLib.phantom import make_phantom
from CovidCTLib.volume import CTVolume

SHAPE = (32, 96, 96)


@pytest.fixture(scope="module")
def standard():
    """The phantom as made: i.i.d. noise of 20 HU, the texture of a standard kernel."""
    return make_phantom(shape=SHAPE, seed=1)


@pytest.fixture(scope="module")
def sharp():
    """An oblique phantom with three times the texture, as a sharp (lung) kernel gives."""
    return make_phantom(shape=SHAPE, seed=1, noise=70.0, oblique=True)


def test_standard_kernel_is_left_alone(standard):
    ct, summary = harmonise_kernel(standard.ct)
    assert ct is standard.ct
    assert summary["applied"] is False
    assert 5.0 < summary["lung_texture_hu"] < KernelHarmonisation().trigger_hu
    assert harmonisation_note(summary) is None


def test_sharp_kernel_is_smoothed_to_the_target_and_keeps_its_geometry(sharp):
    params = KernelHarmonisation()
    ct, summary = harmonise_kernel(sharp.ct, params)
    assert summary["applied"] is True
    assert summary["lung_texture_hu"] > params.trigger_hu
    assert 0.0 < summary["sigma_mm"] <= max(params.sigmas_mm)
    assert summary["lung_texture_after_hu"] <= params.target_hu
    for getter in ("GetOrigin", "GetSpacing", "GetDirection", "GetSize"):
        assert getattr(ct.image, getter)() == getattr(sharp.ct.image, getter)()
    before = sitk.GetArrayViewFromImage(sharp.ct.image).astype(np.float32)
    after = sitk.GetArrayViewFromImage(ct.image)
    assert float(np.std(after - before)) > 10.0  # it was smoothed ...
    assert abs(float(after.mean()) - float(before.mean())) < 2.0  # ... without shifting the densities
    assert "sigma" in harmonisation_note(summary)


def test_only_hu_volumes_are_harmonised(sharp):
    eight_bit = CTVolume(sharp.ct.image, "8bit", "test")
    ct, summary = harmonise_kernel(eight_bit)
    assert ct is eight_bit and summary["applied"] is False


def test_disabled_harmonisation_changes_nothing(sharp):
    ct, summary = harmonise_kernel(sharp.ct, KernelHarmonisation(enabled=False))
    assert ct is sharp.ct and summary["reason_not_applied"] == "disabled"


def test_analysis_of_a_sharp_kernel_reports_it_and_returns_the_original_ct(sharp, tmp_path):
    from CovidCTLib.pipeline import analyze, write_outputs

    result = analyze(sharp.ct, method="classical", classify=False)
    block = result.report["kernel_harmonisation"]
    assert block["applied"] is True and block["sigma_mm"] > 0
    assert any("Sharp reconstruction kernel" in note for note in result.report["notes"])
    # the result shows the CT as loaded, and the labelmaps overlay it exactly (oblique)
    np.testing.assert_array_equal(
        sitk.GetArrayViewFromImage(result.ct.image), sitk.GetArrayViewFromImage(sharp.ct.image)
    )
    paths = write_outputs(result, tmp_path / "out", reports=False, dicom_seg=False)
    written = sitk.ReadImage(str(paths["infection"]))
    assert written.GetDirection() == pytest.approx(sharp.ct.image.GetDirection(), abs=1e-6)
    assert written.GetOrigin() == pytest.approx(sharp.ct.image.GetOrigin(), abs=1e-4)
    assert written.GetSpacing() == pytest.approx(sharp.ct.image.GetSpacing())
    plain = analyze(sharp.ct, method="classical", classify=False, harmonise_kernel=False)
    assert plain.report["kernel_harmonisation"]["applied"] is False


def test_cli_option_turns_harmonisation_off(tmp_path, sharp, capsys):
    from CovidCTLib.cli import main
    from CovidCTLib.io.writers import write_image

    path = tmp_path / "sharp.nii.gz"
    write_image(sharp.ct.image, path, overwrite=True)
    import json

    for flag, applied in (([], True), (["--no-kernel-harmonisation"], False)):
        out = tmp_path / f"out{len(flag)}"
        code = main(
            [
                "analyze",
                str(path),
                "-o",
                str(out),
                "--method",
                "classical",
                "--no-classify",
                "--no-report",
                "--no-dicom-seg",
                *flag,
            ]
        )
        assert code == 0
        report = json.loads((out / "report.json").read_text())
        assert report["kernel_harmonisation"]["applied"] is applied


@pytest.mark.slow
def test_one_scan_in_two_kernels_gives_the_same_burden(shared_data):
    """Lung-PET-CT-Dx A0001, one acquisition reconstructed with kernels L (sharp) and B (soft)."""
    from CovidCTLib.pipeline import analyze, segmentation_models_available

    folder = shared_data / "lung_pet_ct_dx" / "A0001"
    sharp_dir, soft_dir = folder / "2.000000-5mm-40805", folder / "3.000000-5mm-41315"
    if not (sharp_dir.is_dir() and soft_dir.is_dir()) or not segmentation_models_available():
        pytest.skip("Lung-PET-CT-Dx A0001 (both kernels) or the trained models are not available")
    sharp_report = analyze(sharp_dir, classify=False).report
    soft_report = analyze(soft_dir, classify=False).report
    assert sharp_report["kernel_harmonisation"]["applied"] is True
    assert soft_report["kernel_harmonisation"]["applied"] is False
    difference = soft_report["infection"]["percent_of_lungs"] - sharp_report["infection"]["percent_of_lungs"]
    assert abs(difference) <= 0.5
