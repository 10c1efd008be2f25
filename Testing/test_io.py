"""Tests for CovidCTLib.io: the loader (DICOM, volume files, 2-D images), its refusals, and the writers."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_factory import hu_phantom, rotation, write_series

from CovidCTLib.errors import GeometryError, InputError, NotCTError, OutputExistsError
from CovidCTLib.io import load_ct, write_image, write_labelmap
from CovidCTLib.volume import same_geometry

SPACING = (0.7, 0.9, 2.5)
ORIGIN = (-12.5, 30.25, 7.75)
TOL = 1e-5


def oblique_direction() -> np.ndarray:
    return rotation(20.0, 20.0, 0.0)


def oblique_image(shape: tuple[int, int, int] = (12, 32, 40)) -> sitk.Image:
    """Anisotropic, oblique (20 degrees about x and y) HU volume with a non-zero origin."""
    image = sitk.GetImageFromArray(hu_phantom(shape))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(tuple(oblique_direction().ravel()))
    return image


def assert_same(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=TOL)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=TOL)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=TOL)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


# ---------------------------------------------------------------- DICOM loading


def test_dicom_series_oblique_geometry_and_hu(tmp_path: Path) -> None:
    hu = hu_phantom()
    direction = oblique_direction()
    files = write_series(tmp_path / "series", hu, SPACING, ORIGIN, direction)
    ct = load_ct(tmp_path / "series")
    assert ct.intensity == "HU" and ct.modality == "CT"
    assert ct.image.GetSize() == (40, 32, 12)
    np.testing.assert_allclose(ct.image.GetSpacing(), SPACING, atol=TOL)
    np.testing.assert_allclose(ct.image.GetOrigin(), ORIGIN, atol=TOL)
    np.testing.assert_allclose(np.array(ct.image.GetDirection()).reshape(3, 3), direction, atol=TOL)
    np.testing.assert_array_equal(ct.array, hu)
    assert ct.array.min() == -1024
    assert sorted(ct.dicom_files) == sorted(str(f) for f in files)
    assert ct.dicom_files[0].endswith("slice0000.dcm") and ct.dicom_files[-1].endswith("slice0011.dcm")
    assert ct.acquisition_date == "20200321"
    assert ct.patient == {"name": "Phantom^Synthetic", "id": "SYNTH-001", "birth_date": "19700101"}
    assert ct.series_uid and ct.study_uid and ct.frame_of_reference_uid
    assert any("Hounsfield" in n for n in ct.notes)


def test_dicom_rescale_slope_gives_float_hu(tmp_path: Path) -> None:
    hu = hu_phantom()
    write_series(tmp_path / "s", hu, slope=0.5, intercept=-1000.0)
    ct = load_ct(tmp_path / "s")
    assert ct.intensity == "HU"
    assert ct.image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(ct.array, np.round((hu + 1000) / 0.5) * 0.5 - 1000, atol=1e-3)


def test_single_dicom_file_loads_its_series(tmp_path: Path) -> None:
    files = write_series(tmp_path / "s", hu_phantom())
    ct = load_ct(files[3])
    assert ct.image.GetSize()[2] == 12
    assert any("whole series" in n for n in ct.notes)
    alone = tmp_path / "alone"
    alone.mkdir()
    files[3].rename(alone / files[3].name)
    one = load_ct(alone / files[3].name, require_3d=False)
    assert one.image.GetSize() == (40, 32, 1) and one.intensity == "HU"
    np.testing.assert_array_equal(one.array[0], hu_phantom()[3])
    np.testing.assert_allclose(one.image.GetOrigin(), (-12.5, 30.25, 7.75 + 3 * 2.5), atol=TOL)


def test_localizer_inside_series_is_left_out(tmp_path: Path) -> None:
    uid = "1.2.826.0.1.3680043.8.498.90"
    write_series(tmp_path / "s", hu_phantom(), series_uid=uid)
    write_series(
        tmp_path / "s",
        hu_phantom((1, 64, 64)),
        series_uid=uid,
        prefix="scout",
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        origin=(0.0, 0.0, 0.0),
    )
    ct = load_ct(tmp_path / "s")
    assert ct.image.GetSize() == (40, 32, 12)
    assert any("1 scout/localizer" in n for n in ct.notes)


def test_progress_reporter_and_cancel(tmp_path: Path) -> None:
    from CovidCTLib.errors import CancelledError
    from CovidCTLib.progress import Reporter

    write_series(tmp_path / "s", hu_phantom())
    events = []
    load_ct(tmp_path / "s", reporter=Reporter(events.append))
    assert events[0].fraction == 0.0 and events[-1].fraction == 1.0
    assert all(e.step == "load" for e in events) and len(events) >= 3
    cancelled = Reporter()
    cancelled.cancel.cancel()
    with pytest.raises(CancelledError):
        load_ct(tmp_path / "s", reporter=cancelled)


def test_multiple_series_picks_largest_and_notes_skipped(tmp_path: Path) -> None:
    write_series(tmp_path / "study" / "a", hu_phantom((12, 32, 40)), series_number=3)
    small_uid = "1.2.826.0.1.3680043.8.498.1"
    write_series(tmp_path / "study" / "b", hu_phantom((10, 32, 40), seed=2), series_uid=small_uid, series_number=4)
    mr = tmp_path / "study" / "c"
    write_series(mr, hu_phantom((14, 16, 16)), modality="MR", series_number=5)
    ct = load_ct(tmp_path / "study")
    assert ct.image.GetSize()[2] == 12
    joined = " ".join(ct.notes)
    assert small_uid in joined and "fewer images" in joined
    assert "modality MR" in joined


# ---------------------------------------------------------------- volume files and 2-D images


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_volume_roundtrip_every_format(tmp_path: Path, suffix: str) -> None:
    image = oblique_image()
    path = write_image(image, tmp_path / f"ct{suffix}")
    assert path.exists()
    assert_same(sitk.ReadImage(str(path)), image)
    ct = load_ct(path)
    assert ct.intensity == "HU"
    assert_same(ct.image, image)

    labels = (hu_phantom() < -500).astype(np.uint8) + (hu_phantom() > 1000).astype(np.uint8) * 2
    lab_path = write_labelmap(labels, image, tmp_path / f"labels{suffix}")
    back = sitk.ReadImage(str(lab_path))
    assert back.GetPixelID() == sitk.sitkUInt8
    assert same_geometry(back, image, TOL)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels)


@pytest.mark.parametrize("suffix", [".mhd", ".nhdr"])
def test_detached_header_formats_load(tmp_path: Path, suffix: str) -> None:
    image = oblique_image()
    sitk.WriteImage(image, str(tmp_path / f"ct{suffix}"), useCompression=True)  # header + separate data file
    ct = load_ct(tmp_path / f"ct{suffix}")
    assert ct.intensity == "HU"
    assert_same(ct.image, image)
    with pytest.raises(InputError, match="single-file formats"):
        write_image(image, tmp_path / f"out{suffix}")


def test_intensity_rule_for_volume_files(tmp_path: Path) -> None:
    base = oblique_image()
    arr = sitk.GetArrayFromImage(base)
    cases = {
        "u8.nrrd": (np.clip(arr + 1024, 0, 255).astype(np.uint8), "8bit", 0),
        "float01.nii.gz": (np.clip((arr + 1000) / 2000.0, 0, 1).astype(np.float32), "8bit", 0),
        "raw.mha": ((arr + 1024).astype(np.uint16), "HU", -1024),
        "hu.nii.gz": (arr.astype(np.int16), "HU", int(arr.min())),
    }
    for name, (data, kind, expected_min) in cases.items():
        image = sitk.GetImageFromArray(data)
        image.CopyInformation(base)
        ct = load_ct(write_image(image, tmp_path / name))
        assert ct.intensity == kind, name
        assert any(n.startswith("intensity") for n in ct.notes)
        assert int(ct.array.min()) == expected_min, name
        if kind == "8bit":
            assert ct.image.GetPixelID() == sitk.sitkUInt8


def test_2d_png_only_for_slice_work(tmp_path: Path) -> None:
    png = tmp_path / "slice.png"
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    rgb[..., 1] = 100
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(png))
    ct = load_ct(png, require_3d=False)
    assert ct.intensity == "8bit" and ct.image.GetSize() == (30, 20, 1)
    assert abs(int(ct.array[0, 5, 5]) - (0.299 * 200 + 0.587 * 100)) <= 1
    with pytest.raises(NotCTError, match="segment-slices"):
        load_ct(png)


# ---------------------------------------------------------------- writers


def test_writer_refuses_overwrite_and_leaves_no_temp(tmp_path: Path) -> None:
    image = oblique_image()
    target = write_image(image, tmp_path / "out.nii.gz")
    before = target.read_bytes()
    with pytest.raises(OutputExistsError, match="overwrite"):
        write_image(image, target)
    assert target.read_bytes() == before
    write_image(image, target, overwrite=True)
    with pytest.raises(ValueError):  # wrong shape: fails before anything is written
        write_labelmap(np.zeros((3, 3, 3), np.uint8), image, tmp_path / "bad.nii.gz")
    with pytest.raises(InputError, match="suffix"):
        write_image(image, tmp_path / "out.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


def test_writer_failure_leaves_target_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = oblique_image()
    target = write_image(image, tmp_path / "out.nrrd")
    before = target.read_bytes()
    seen: list[str] = []

    def failing_write(img: sitk.Image, name: str, useCompression: bool = False) -> None:
        seen.append(name)
        Path(name).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", failing_write)
    with pytest.raises(RuntimeError, match="disk full"):
        write_image(image, target, overwrite=True)
    with pytest.raises(RuntimeError, match="disk full"):
        write_labelmap(np.zeros((12, 32, 40), np.uint8), image, tmp_path / "new.nii.gz")
    assert seen[0].endswith(".nrrd") and seen[1].endswith(".nii.gz")  # temp keeps the format suffix
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nrrd"]


# ---------------------------------------------------------------- real data


def test_real_ricord_dicom(shared_data: Path) -> None:
    folder = shared_data / "ricord_1a_covid_chest_ct" / "dicom"
    if not folder.is_dir():
        pytest.skip("RICORD folder absent")
    start = time.perf_counter()
    ct = load_ct(folder)
    elapsed = time.perf_counter() - start
    assert ct.image.GetSize() == (512, 512, 248)
    assert ct.intensity == "HU" and ct.modality == "CT"
    np.testing.assert_allclose(ct.image.GetSpacing(), (0.703125, 0.703125, 1.25), atol=1e-4)
    arr = sitk.GetArrayViewFromImage(ct.image)
    body_air = arr[124, 5:60, 200:300]  # anterior to the chest, inside the field of view: air
    assert -1100 < float(np.median(body_air)) < -900
    assert len(ct.dicom_files) == 248 and ct.acquisition_date
    assert elapsed < 15.0, f"RICORD load took {elapsed:.1f} s"


def test_real_lidc_nifti(shared_data: Path) -> None:
    path = shared_data / "lidc_idri_chest_ct" / "LIDC-IDRI-0001.nii.gz"
    if not path.is_file():
        pytest.skip("LIDC volume absent")
    ct = load_ct(path)
    assert ct.intensity == "HU"
    assert ct.image.GetSize() == (240, 240, 133)
    assert ct.array.min() <= -1000


# ---------------------------------------------------------------- refusals: every bad input, a clear message


def test_missing_path_and_empty_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist; check the path"):
        load_ct(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        load_ct(tmp_path / "empty")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="No readable DICOM.*Point to a folder"):
        load_ct(junk)
    (tmp_path / "zero.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        load_ct(tmp_path / "zero.nii.gz")
    (tmp_path / "scan.xyz").write_text("x")
    with pytest.raises(InputError, match="unsupported file type.*NIfTI"):
        load_ct(tmp_path / "scan.xyz")


def test_not_ct_and_localizer(tmp_path: Path) -> None:
    write_series(tmp_path / "mr", hu_phantom(), modality="MR")
    with pytest.raises(NotCTError, match="modality MR.*CT only"):
        load_ct(tmp_path / "mr")
    mr_file = next((tmp_path / "mr").iterdir())
    with pytest.raises(NotCTError, match="modality MR"):
        load_ct(mr_file)
    write_series(tmp_path / "scout", hu_phantom((1, 32, 40)), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    with pytest.raises(NotCTError, match="localizer.*load the axial CT series"):
        load_ct(tmp_path / "scout")
    single = write_series(tmp_path / "single", hu_phantom((1, 32, 40)))[0]
    with pytest.raises(NotCTError, match="single CT image.*segment-slices"):
        load_ct(single)
    assert load_ct(single, require_3d=False).image.GetSize() == (40, 32, 1)


def test_too_few_slices(tmp_path: Path) -> None:
    write_series(tmp_path / "thin", hu_phantom((5, 32, 40)))
    with pytest.raises(NotCTError, match="only 5 slice.*at least 10"):
        load_ct(tmp_path / "thin")
    assert load_ct(tmp_path / "thin", require_3d=False).image.GetSize()[2] == 5
    image = sitk.GetImageFromArray(hu_phantom((4, 32, 40)))
    path = write_image(image, tmp_path / "thin.nii.gz")
    with pytest.raises(NotCTError, match="only 4 slice"):
        load_ct(path)


def test_corrupt_files(tmp_path: Path) -> None:
    files = write_series(tmp_path / "trunc", hu_phantom())
    data = files[4].read_bytes()
    files[4].write_bytes(data[: len(data) - 1500])  # cut inside the pixel data
    with pytest.raises(InputError, match=f"{files[4].name}.*truncated, corrupt.*Re-export"):
        load_ct(tmp_path / "trunc")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "x.dcm").write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(InputError, match="cannot be read.*Re-copy"):
        load_ct(garbage)
    with pytest.raises(InputError, match="cannot be read as DICOM.*Re-copy"):
        load_ct(garbage / "x.dcm")
    bad_nii = tmp_path / "bad.nii.gz"
    bad_nii.write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(InputError, match="corrupt.*Re-copy"):
        load_ct(bad_nii)
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):  # ITK pads truncated NIfTI silently: we must not
        good = write_image(oblique_image(), tmp_path / f"good{suffix}")
        data = good.read_bytes()
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(data[: int(len(data) * 0.8)])
        with pytest.raises(InputError, match="(truncated|corrupt).*Re-copy"):
            load_ct(cut)
        assert load_ct(good).image.GetSize() == (40, 32, 12)


def test_mixed_series_refused(tmp_path: Path) -> None:
    uid = "1.2.826.0.1.3680043.8.498.77"
    write_series(tmp_path / "sizes", hu_phantom((8, 32, 40)), series_uid=uid, prefix="a")
    write_series(tmp_path / "sizes", hu_phantom((8, 30, 40)), series_uid=uid, prefix="b", origin=(-12.5, 30.25, 100.0))
    with pytest.raises(GeometryError, match="mixes images with image sizes.*Export each"):
        load_ct(tmp_path / "sizes")
    uid2 = "1.2.826.0.1.3680043.8.498.78"
    write_series(tmp_path / "orient", hu_phantom((8, 32, 40)), series_uid=uid2, prefix="a")
    write_series(
        tmp_path / "orient",
        hu_phantom((8, 32, 40)),
        series_uid=uid2,
        prefix="b",
        direction=rotation(0, 0, 30),
        origin=(0.0, 0.0, 100.0),
    )
    with pytest.raises(GeometryError, match="ImageOrientationPatient"):
        load_ct(tmp_path / "orient")
    uid3 = "1.2.826.0.1.3680043.8.498.79"
    write_series(tmp_path / "dup", hu_phantom((6, 32, 40)), series_uid=uid3, prefix="a")
    write_series(tmp_path / "dup", hu_phantom((6, 32, 40)), series_uid=uid3, prefix="b")
    with pytest.raises(GeometryError, match="repeated slice position.*one acquisition"):
        load_ct(tmp_path / "dup")


def test_gantry_tilt_refused(tmp_path: Path) -> None:
    hu = hu_phantom()
    n = hu.shape[0]
    tilt = np.radians(15.0)  # axial slices, positions step along z and drift along y (table vs tilted gantry)
    positions = np.array([[-12.5, 30.25 + k * 2.5 * np.tan(tilt), 7.75 + k * 2.5] for k in range(n)])
    write_series(tmp_path / "tilt", hu, positions=positions)
    with pytest.raises(GeometryError, match="gantry-tilted.*resample/untilt"):
        load_ct(tmp_path / "tilt")
    # the usual scanner encoding: tilted image plane, slice positions straight along the table (z)
    tilted_plane = rotation(-15.0, 0.0, 0.0)
    straight = np.array([[-12.5, 30.25, 7.75 + k * 2.5] for k in range(n)])
    write_series(tmp_path / "tilt2", hu, direction=tilted_plane, positions=straight)
    with pytest.raises(GeometryError, match="about 15.0 degrees"):
        load_ct(tmp_path / "tilt2")
    # an oblique but untilted stack (positions along the normal) is fine
    write_series(tmp_path / "oblique", hu, direction=tilted_plane)
    assert load_ct(tmp_path / "oblique").image.GetSize()[2] == n


def test_non_uniform_spacing(tmp_path: Path) -> None:
    files = write_series(tmp_path / "gap", hu_phantom())
    files[6].unlink()
    with pytest.raises(GeometryError, match=r"non-uniform slice spacing.*5\.00 mm.*2\.50 mm.*missing"):
        load_ct(tmp_path / "gap")
    hu = hu_phantom()
    jitter = np.random.default_rng(3).uniform(-0.05, 0.05, hu.shape[0])  # 2 % of 2.5 mm: tolerated
    positions = np.array([[-12.5, 30.25, 7.75 + k * 2.5 + jitter[k]] for k in range(hu.shape[0])])
    write_series(tmp_path / "jitter", hu, positions=positions)
    ct = load_ct(tmp_path / "jitter")
    assert abs(ct.image.GetSpacing()[2] - 2.5) < 0.02


def test_huge_volume_refused_from_header_alone(tmp_path: Path) -> None:
    header = tmp_path / "huge.nhdr"
    (tmp_path / "huge.raw").write_bytes(b"\0" * 16)
    header.write_text(
        "NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 2000 2000 1000\n"
        "space directions: (1,0,0) (0,1,0) (0,0,1)\nkinds: domain domain domain\nendian: little\n"
        "encoding: raw\nspace origin: (0,0,0)\ndata file: huge.raw\n"
    )
    with pytest.raises(InputError, match="4,000,000,000 voxels.*crop it.*resample"):
        load_ct(header)
