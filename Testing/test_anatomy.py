"""Issue 14: airway landmarks, anatomical zones and peripheral vs central involvement."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_factory import rotation
from landmark_phantom import make_landmark_phantom

from CovidCTLib.anatomy.hooks import analyze_anatomy
from CovidCTLib.anatomy.landmarks import Landmarks, find_landmarks
from CovidCTLib.anatomy.peripheral import PERIPHERAL_DEPTH, peripheral_involvement, peripheral_mask
from CovidCTLib.anatomy.rows import anatomy_rows
from CovidCTLib.anatomy.zones import anatomical_zones
from CovidCTLib.assessment import spatial_features
from CovidCTLib.labels import LEFT_LUNG, LLL, LUL, RIGHT_LUNG, RLL, RML, RUL
from CovidCTLib.quantify import quantify
from CovidCTLib.report.anatomy_tables import anatomy_summary, anatomy_tables
from CovidCTLib.volume import CTVolume

DIRECTIONS = {"axial": None, "oblique": rotation(8, 0, 12)}


def _physical_z_of_voxels(image: sitk.Image, mask: np.ndarray) -> np.ndarray:
    """Superior coordinate of each voxel of ``mask`` through SimpleITK's own index-to-point transform."""
    return np.array([image.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))[2] for k, j, i in np.argwhere(mask)])


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_landmarks_of_the_airway_phantom(name):
    ph = make_landmark_phantom(direction=DIRECTIONS[name])
    image = ph.ct.image
    centre = ((image.GetSize()[0] - 1) / 2.0, (image.GetSize()[1] - 1) / 2.0)
    found = find_landmarks(ph.ct, ph.lungs)
    # the carina lies between the junction slice and the first slice with two lumens; the bronchi end at
    # bronchus_end_index (physical z of the slice centre, on the trachea's axis)
    carina = image.TransformContinuousIndexToPhysicalPoint((*centre, ph.carina_index - 0.5))[2]
    end = image.TransformContinuousIndexToPhysicalPoint((*centre, float(ph.bronchus_end_index)))[2]
    assert found.carina_z_mm == pytest.approx(carina, abs=0.2)
    assert found.ipv_z_mm == pytest.approx(end, abs=0.2)
    assert set(found.ipv_z_mm_per_lung) == {"right", "left"}


def test_landmark_zones_have_the_known_volumes():
    ph = make_landmark_phantom(direction=DIRECTIONS["oblique"])
    infection = np.zeros_like(ph.lungs)
    infection[40:44, 20:40, 8:20] = 1  # some infection in the upper right lung
    infection[10:14, 20:40, 44:56] = 2  # and in the lower left lung
    landmarks = find_landmarks(ph.ct, ph.lungs)
    block = anatomical_zones(ph.ct, ph.lungs, infection, landmarks, min_percent=1.0)
    assert block["method"] == "landmarks" and "fallback" not in block
    assert block["landmarks"]["carina_z_mm"] == round(landmarks.carina_z_mm, 1)
    voxel_ml = ph.ct.voxel_volume_ml
    for side, lung in ((RIGHT_LUNG, "right"), (LEFT_LUNG, "left")):
        in_lung = ph.lungs == side
        z = _physical_z_of_voxels(ph.ct.image, in_lung)
        inf = (infection > 0)[in_lung]
        expected = {
            "upper": z > landmarks.carina_z_mm,
            "middle": (z <= landmarks.carina_z_mm) & (z > landmarks.ipv_z_mm),
            "lower": z <= landmarks.ipv_z_mm,
        }
        for zone in block["zones"]:
            if zone["lung"] != lung:
                continue
            sel = expected[zone["zone"]]
            assert sel.any()
            assert zone["lung_ml"] == pytest.approx(np.count_nonzero(sel) * voxel_ml, abs=0.01)
            assert zone["infection_ml"] == pytest.approx(np.count_nonzero(sel & inf) * voxel_ml, abs=0.01)
    zones = {(z["lung"], z["zone"]): z for z in block["zones"]}
    assert zones["right", "upper"]["infection_ml"] > 0 and zones["left", "lower"]["infection_ml"] > 0
    assert zones["right", "lower"]["infection_ml"] == 0 and zones["left", "upper"]["infection_ml"] == 0
    assert block["score_total"] == sum(z["score"] for z in block["zones"]) > 0


def test_zones_fall_back_to_the_thirds_when_no_airway_is_seen():
    ph = make_landmark_phantom()
    hu = sitk.GetArrayFromImage(ph.ct.image)
    hu[
        (hu < -950)
        & (ph.lungs == 0)
        & (np.arange(hu.shape[2]) > 5)[None, None, :]
        & (np.arange(hu.shape[2]) < hu.shape[2] - 5)[None, None, :]
    ] = 40  # no trachea, no bronchi
    image = sitk.GetImageFromArray(hu)
    image.CopyInformation(ph.ct.image)
    ct = CTVolume(image=image, source="no airway", intensity="HU")
    infection = np.zeros_like(ph.lungs)
    infection[8:12, 20:40, 8:20] = 1
    found = find_landmarks(ct, ph.lungs)
    assert found.carina_z_mm is None and found.ipv_z_mm is None
    block = anatomical_zones(ct, ph.lungs, infection, found)
    assert block["method"] == "thirds"
    assert "fell back to the bounding-box thirds" in block["fallback"] and "carina" in block["fallback"]
    # the fallback zones are the bounding-box thirds of quantify's zone score
    thirds = {(z["lung"], z["zone"]): z for z in quantify(ct, ph.lungs, infection)["zones"]}
    for zone in block["zones"]:
        assert zone["lung_ml"] == pytest.approx(thirds[zone["lung"], zone["zone"]]["lung_ml"], abs=0.01)


def test_ipv_above_the_carina_is_not_used():
    ph = make_landmark_phantom()
    odd = Landmarks(carina_z_mm=10.0, ipv_z_mm=20.0)
    assert anatomical_zones(ph.ct, ph.lungs, np.zeros_like(ph.lungs), odd)["method"] == "thirds"


def _cylinder_lungs(shape=(6, 80, 120), spacing=(5.0, 1.0, 1.0), radius=18.0, direction=None):
    """Two cylindrical lungs (discs on every slice) of known radius, in a soft-tissue body."""
    nz, ny, nx = shape
    y = (np.arange(ny) - (ny - 1) / 2.0)[None, :, None] * spacing[1]
    x = (np.arange(nx) - (nx - 1) / 2.0)[None, None, :] * spacing[2]
    r_right = np.sqrt((x + 30.0) ** 2 + y**2)
    r_left = np.sqrt((x - 30.0) ** 2 + y**2)
    lungs = np.zeros(shape, np.uint8)
    lungs[np.broadcast_to(r_right <= radius, shape)] = RIGHT_LUNG
    lungs[np.broadcast_to(r_left <= radius, shape)] = LEFT_LUNG
    hu = np.where(lungs > 0, -850, 40).astype(np.int16)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(spacing[::-1])
    if direction is not None:
        image.SetDirection(tuple(float(v) for v in np.asarray(direction).ravel()))
    ct = CTVolume(image=image, source="cylinders", intensity="HU")
    radial = np.broadcast_to(np.where(x < 0, r_right, r_left), shape)
    return ct, lungs, radial


def test_peripheral_is_the_outer_third_of_the_depth_from_the_pleura():
    ct, lungs, radial = _cylinder_lungs()
    pmap = peripheral_mask(ct, lungs, grid_mm=1.0)
    in_lung = lungs > 0
    depth = 18.0 - radial  # distance to the pleura of a disc of radius 18 mm
    assert pytest.approx(1 / 3) == PERIPHERAL_DEPTH
    clear_out = in_lung & (depth < 18.0 / 3 - 1.5)  # well inside the outer third
    clear_in = in_lung & (depth > 18.0 / 3 + 1.5)
    assert pmap.peripheral[clear_out].all() and not pmap.peripheral[clear_in].any()
    assert not pmap.peripheral[~in_lung].any()
    # a disc: the outer third of the depth (radius 2/3 .. 1) holds 5/9 of the area
    share = np.count_nonzero(pmap.peripheral) / np.count_nonzero(in_lung)
    assert share == pytest.approx(5 / 9, abs=0.05)

    ring = np.where(in_lung & (depth < 4.0), 1, 0).astype(np.uint8)
    core = np.where(in_lung & (depth > 10.0), 2, 0).astype(np.uint8)
    block = peripheral_involvement(ct, lungs, ring, pmap=pmap)
    assert block["both"]["peripheral_share"] == 1.0 and block["both"]["central_infection_ml"] == 0
    assert block["right"]["peripheral_lung_share"] == pytest.approx(5 / 9, abs=0.05)
    assert block["lobes"] is None
    block = peripheral_involvement(ct, lungs, core, pmap=pmap)
    assert block["both"]["peripheral_share"] == 0.0 and block["left"]["central_percent"] > 0


def test_peripheral_map_follows_the_patient_axes_not_the_array_axes():
    """The same anatomy stored sagittally (array axis 0 = patient x) gives the same peripheral voxels: the
    depth is measured in the patient's axial planes, not in the array's first-axis planes."""
    ct, lungs, _ = _cylinder_lungs(shape=(6, 80, 100))
    reference = peripheral_mask(ct, lungs, grid_mm=1.0).peripheral
    stored = np.ascontiguousarray(np.transpose(lungs, (2, 1, 0)))  # (x, y, z) array order
    image = sitk.GetImageFromArray(np.where(stored > 0, -850, 40).astype(np.int16))
    image.SetDirection((0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0))  # i -> z, j -> y, k -> x
    image.SetSpacing((5.0, 1.0, 1.0))
    moved = peripheral_mask(CTVolume(image=image, source="sagittal", intensity="HU"), stored, grid_mm=1.0)
    np.testing.assert_array_equal(np.transpose(moved.peripheral, (2, 1, 0)), reference)
    # reading the stored array's first axis as the slices would give another answer
    naive = peripheral_mask(
        CTVolume(image=sitk.GetImageFromArray(stored.astype(np.int16)), source="naive", intensity="HU"),
        stored,
        grid_mm=1.0,
    ).peripheral
    assert not np.array_equal(np.transpose(naive, (2, 1, 0)), reference)


def test_per_lobe_split_partitions_each_lung_and_matches_the_assessment():
    ct, lungs, radial = _cylinder_lungs(shape=(9, 80, 120))
    lobes = np.zeros_like(lungs)
    z = np.arange(lungs.shape[0])[:, None, None]
    lobes[(lungs == RIGHT_LUNG) & (z >= 6)] = RUL
    lobes[(lungs == RIGHT_LUNG) & (z >= 3) & (z < 6)] = RML
    lobes[(lungs == RIGHT_LUNG) & (z < 3)] = RLL
    lobes[(lungs == LEFT_LUNG) & (z >= 4)] = LUL
    lobes[(lungs == LEFT_LUNG) & (z < 4)] = LLL
    infection = np.where((lungs > 0) & ((radial > 14.0) | (radial < 3.0)), 1, 0).astype(np.uint8)
    block = peripheral_involvement(ct, lungs, infection, lobes)
    assert [lobe["key"] for lobe in block["lobes"]] == ["RUL", "RML", "RLL", "LUL", "LLL"]
    for lung in ("right", "left"):
        members = [lobe for lobe in block["lobes"] if lobe["lung"] == lung]
        for key in ("lung_ml", "peripheral_lung_ml", "infection_ml", "peripheral_infection_ml"):
            assert sum(lobe[key] for lobe in members) == pytest.approx(block[lung][key], abs=0.05)
    # the assessment's peripheral share is the same definition
    assert spatial_features(ct, lungs, infection)["peripheral_share"] == pytest.approx(
        block["both"]["peripheral_share"], abs=1e-4
    )
    assert 0.5 < block["both"]["peripheral_share"] < 1.0


def test_anatomy_hook_rows_tables_and_summary():
    ph = make_landmark_phantom()
    infection = np.zeros_like(ph.lungs)
    infection[40:44, 20:40, 8:20] = 1
    numbers = analyze_anatomy(ph.ct, ph.lungs, infection, None, min_percent=1.0)
    report = dict(numbers)
    assert report["anatomical_zones"]["method"] == "landmarks"
    assert report["peripheral_involvement"]["both"]["infection_ml"] > 0
    rows = anatomy_rows(report)
    assert len(rows) == 6 * 3 and all(isinstance(value, float) for _, _, value, _ in rows)
    assert rows[0][0] == "anatomical_zones.zones[0].lung_ml"
    titles = [title for title, _, _, _ in anatomy_tables(report)]
    assert titles == ["Anatomical zones (carina / inferior pulmonary veins)", "Peripheral vs central involvement"]
    lines = anatomy_summary(report)
    assert lines[0].startswith("Anatomical zones (landmarks)") and "carina z =" in lines[0]
    assert anatomy_tables({}) == [] and anatomy_summary({}) == [] and anatomy_rows({}) == []
