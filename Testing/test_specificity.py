"""Issue 13: HU gate of the infection, noise floor, scan-level COVID assessment, ``evaluate volumes``."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk
from required import require_module
from scipy import ndimage

from CovidCTLib.assessment import AssessmentRules, assess, categorise, combine_probability
from CovidCTLib.evaluate_volumes import find_scans, kernel_pairs, scan_row
from CovidCTLib.labels import CONSOLIDATION, GGO
from CovidCTLib.noise_floor import NoiseFloor, apply_noise_floor, remove_small_lesions
from CovidCTLib.phantom import make_phantom
from CovidCTLib.postprocess.infection_hu import HUGating, dome_lesions, gate_infection_hu
from CovidCTLib.postprocess.masses import mass_note
from CovidCTLib.postprocess.stages import clean_infection, score_scan
from CovidCTLib.quantify import quantify
from CovidCTLib.volume import CTVolume

SHAPE = (48, 96, 96)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(shape=SHAPE, seed=0)


@pytest.fixture(scope="module")
def clean_phantom():
    return make_phantom(shape=SHAPE, seed=0, lesions=False)


def _with_hu(ct: CTVolume, hu: np.ndarray, intensity: str = "HU") -> CTVolume:
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.CopyInformation(ct.image)
    return CTVolume(image, intensity, "test")


def test_gate_keeps_real_lesions(phantom):
    gated, summary = gate_infection_hu(phantom.ct, phantom.lungs, phantom.infection)
    truth = phantom.infection > 0
    assert summary["applied"]
    assert np.count_nonzero(gated[truth]) >= 0.9 * np.count_nonzero(truth)
    assert not np.any(gated[~truth])  # it only removes


def test_gate_removes_vessel_like_tubes(clean_phantom):
    """Bright thin tubes running through several slices are not infection, even when the network says so."""
    ct, lungs = clean_phantom.ct, clean_phantom.lungs
    hu = ct.array.astype(np.int16)
    tubes = np.zeros(hu.shape, bool)
    zs, ys, xs = np.nonzero(ndimage.binary_erosion(lungs > 0, iterations=6))
    rng = np.random.default_rng(1)
    for i in rng.choice(len(zs), 6, replace=False):
        z0, y0, x0 = zs[i], ys[i], xs[i]
        tubes[max(z0 - 6, 0) : z0 + 6, y0 - 1 : y0 + 1, x0 - 1 : x0 + 1] = True  # 3 mm wide, 30 mm long
    tubes &= lungs > 0
    hu[tubes] = 40
    ct2 = _with_hu(ct, hu)
    fake = np.zeros(hu.shape, np.uint8)
    fake[ndimage.binary_dilation(tubes, structure=np.ones((1, 3, 3), bool)) & (lungs > 0)] = GGO
    gated, summary = gate_infection_hu(ct2, lungs, fake)
    assert np.count_nonzero(fake) > 0
    assert np.count_nonzero(gated) <= 0.05 * np.count_nonzero(fake)
    assert summary["removed_ml"]["density_after_thin_structure_removal"] > 0


def test_gate_removes_border_rim_only(clean_phantom):
    """A thin partial-volume band along the soft tissue outside the lung is dropped."""
    ct, lungs = clean_phantom.ct, clean_phantom.lungs
    lung = lungs > 0
    hu = ct.array.astype(np.int16)
    rim = lung & ~ndimage.binary_erosion(lung, structure=np.ones((1, 3, 3), bool), iterations=2)
    hu[rim] = np.maximum(hu[rim], -550)  # partial volume: ground-glass density right at the border
    fake = np.where(rim, GGO, 0).astype(np.uint8)
    gated, _ = gate_infection_hu(_with_hu(ct, hu), lungs, fake)
    assert np.count_nonzero(gated) <= 0.05 * np.count_nonzero(fake)


def test_gate_keeps_diffuse_denser_lung(clean_phantom):
    """A uniformly denser lung (diffuse ground glass) marked by the network is kept."""
    ct, lungs = clean_phantom.ct, clean_phantom.lungs
    lung = lungs > 0
    hu = ct.array.astype(np.int16)
    hu[lung] = np.clip(hu[lung] + 300, -600, None)  # normal lung about -850 -> about -550
    infection = np.where(lung, GGO, 0).astype(np.uint8)
    gated, _ = gate_infection_hu(_with_hu(ct, hu), lungs, infection)
    assert np.count_nonzero(gated) >= 0.7 * np.count_nonzero(infection)


def test_gate_is_hu_only(phantom):
    ct8 = _with_hu(phantom.ct, np.clip(phantom.ct.array + 1000, 0, 255) // 8, intensity="8bit")
    gated, summary = gate_infection_hu(ct8, phantom.lungs, phantom.infection)
    assert not summary["applied"]
    assert np.array_equal(gated, phantom.infection)
    assert not HUGating(enabled=False).enabled


def test_noise_floor_reads_zero_on_lesion_free_phantom(clean_phantom):
    ct, lungs = clean_phantom.ct, clean_phantom.lungs
    specks = np.zeros(ct.shape, np.uint8)
    zs, ys, xs = np.nonzero(lungs > 0)
    specks[zs[::400], ys[::400], xs[::400]] = GGO  # isolated single-voxel false positives
    floor = NoiseFloor()
    cleaned = remove_small_lesions(specks, ct.voxel_volume_ml, floor.min_lesion_ml)
    numbers = apply_noise_floor(quantify(ct, lungs, cleaned, min_lesion_ml=floor.min_lesion_ml), floor)
    assert np.count_nonzero(specks) > 10 and not cleaned.any()
    assert numbers["severity_score"]["total"] == 0
    assert numbers["lesions"] == []
    assert numbers["noise_floor"]["min_lesion_ml"] == floor.min_lesion_ml


def test_noise_floor_zone_threshold(phantom):
    numbers = quantify(phantom.ct, phantom.lungs, phantom.infection)
    strict = apply_noise_floor(quantify(phantom.ct, phantom.lungs, phantom.infection), NoiseFloor(0.0, 100.0))
    assert numbers["severity_score"]["total"] > 0
    assert strict["severity_score"]["total"] == 0
    assert all(z["severity"] == 0 for z in strict["zones"])


def _bilateral_peripheral_lower_ggo(clean_phantom) -> np.ndarray:
    """Ground glass in the outer rind (4 voxels in-slice: inside the outer third of the lung's depth, the
    peripheral definition of CovidCTLib.anatomy.peripheral) of the lower half of both lungs, a few blobs per lung."""
    lungs = clean_phantom.lungs
    infection = np.zeros(lungs.shape, np.uint8)
    inner = ndimage.binary_erosion(lungs > 0, structure=np.ones((1, 3, 3), bool), iterations=4)
    rind = (lungs > 0) & ~inner
    half = lungs.shape[0] // 2
    for side in (1, 2):
        zs, ys, xs = np.nonzero(rind[:half] & (lungs[:half] == side))
        for i in np.linspace(0, len(zs) - 1, 6).astype(int):
            ball = np.zeros(lungs.shape, bool)
            ball[zs[i], ys[i], xs[i]] = True
            ball = ndimage.binary_dilation(ball, iterations=5) & (lungs == side) & rind
            infection[ball] = GGO
    return infection


def test_assessment_negative_without_infection(clean_phantom):
    ct, lungs = clean_phantom.ct, clean_phantom.lungs
    empty = np.zeros(ct.shape, np.uint8)
    numbers = apply_noise_floor(quantify(ct, lungs, empty), NoiseFloor())
    block = assess(ct, lungs, empty, numbers, classifier_probability=0.95)
    assert block["category"] == "negative"
    assert block["probability"] <= AssessmentRules().negative_cap
    assert block["reasons"] and block["features"]["burden_percent"] == 0.0


def test_assessment_typical_for_bilateral_peripheral_lower_ggo(clean_phantom):
    ct, lungs = clean_phantom.ct, clean_phantom.lungs
    infection = _bilateral_peripheral_lower_ggo(clean_phantom)
    numbers = apply_noise_floor(quantify(ct, lungs, infection, min_lesion_ml=0.25), NoiseFloor())
    block = assess(ct, lungs, infection, numbers, classifier_probability=0.5)
    features = block["features"]
    assert features["bilateral"] and features["peripheral_share"] > 0.6 and features["ggo_share"] == 1.0
    assert block["category"] == "typical", block["reasons"]
    assert block["probability"] >= 0.7


def test_assessment_atypical_for_one_dense_focus():
    rules = AssessmentRules()
    features = {
        "burden_percent": 2.0,
        "infection_ml": 60.0,
        "bilateral": False,
        "peripheral_share": 0.8,
        "ggo_share": 0.6,
        "n_significant_lesions": 1,
        "largest_lesion_ml": 55.0,
        "largest_lesion_share": 0.92,
        "largest_lesion_consolidation": 0.4,
        "lower_zone_share": 0.0,
        "posterior_share": 1.0,
    }
    category, reasons = categorise(features, rules)
    assert category == "atypical" and any("Atypical" in r for r in reasons)
    assert combine_probability("atypical", 0.75, rules) < 0.3
    assert combine_probability("typical", 0.75, rules) > combine_probability("indeterminate", 0.75, rules)


def test_clean_infection_classical_and_model(phantom):
    model_out, model_summary = clean_infection(phantom.ct, phantom.lungs, phantom.infection, "model")
    classical_out, classical_summary = clean_infection(phantom.ct, phantom.lungs, phantom.infection, "classical")
    assert model_summary["applied"] and not classical_summary["applied"]
    assert set(np.unique(model_out)) <= {0, GGO, CONSOLIDATION}
    assert np.count_nonzero(classical_out) <= np.count_nonzero(phantom.infection)


def test_evaluate_volumes_finds_scans_and_pairs(tmp_path, phantom):
    (tmp_path / "a").mkdir()
    sitk.WriteImage(phantom.ct.image, str(tmp_path / "a" / "case1.nii.gz"))
    for kernel in ("k1", "k2"):
        (tmp_path / "pair" / kernel).mkdir(parents=True)
        (tmp_path / "pair" / kernel / "1-01.dcm").write_bytes(b"")
    scans = find_scans([tmp_path])
    names = sorted(s.name for s in scans)
    assert names == ["case1", "pair_k1", "pair_k2"]
    rows = [{"name": s.name, "burden_percent": b} for s, b in zip(scans, (1.0, 2.0, 2.5), strict=True)]
    pairs = kernel_pairs(scans, rows)
    assert len(pairs) == 1 and pairs[0][2] == pytest.approx(0.5)


def test_evaluate_volumes_cli_writes_csv(tmp_path, phantom, monkeypatch):
    """The command on a phantom written to NIfTI: outputs per scan and volumes.csv (classical, fast)."""
    from CovidCTLib import cli, pipeline
    from CovidCTLib.segmentation import registry

    data = tmp_path / "data"
    data.mkdir()
    sitk.WriteImage(phantom.ct.image, str(data / "phantom.nii.gz"))
    monkeypatch.setattr(registry, "trained_segmentation_available", lambda: False)
    monkeypatch.setattr(pipeline, "classifier_available", lambda: False)
    out = tmp_path / "out"
    code = cli.main(["evaluate", "volumes", "--data", str(data), "-o", str(out)])
    assert code == 0
    with open(out / "volumes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == ["phantom"]
    assert float(rows[0]["burden_percent"]) > 0 and rows[0]["category"] in ("typical", "indeterminate", "atypical")
    assert (out / "phantom" / "report.json").is_file()
    report = __import__("json").loads((out / "phantom" / "report.json").read_text())
    assert report["covid_assessment"]["probability"] == report["covid_probability"]
    assert report["noise_floor"]["min_zone_percent"] == NoiseFloor().min_zone_percent
    assert scan_row.__name__ == "scan_row"


@pytest.mark.slow
def test_real_volume_specificity(shared_data, tmp_path):
    """LIDC-IDRI-0002 (normal lungs, the classifier's worst) reads < 1 % and negative/atypical."""
    from CovidCTLib.pipeline import analyze, segmentation_models_available

    path = shared_data / "lidc_idri_chest_ct" / "LIDC-IDRI-0002.nii.gz"
    if not path.is_file() or not segmentation_models_available():
        pytest.skip("LIDC-IDRI-0002 or the trained models are not available")
    report = analyze(path).report
    assert report["infection"]["percent_of_lungs"] < 1.0
    assert report["severity_score"]["total"] <= 2
    assert report["covid_assessment"]["category"] in ("negative", "atypical")


def test_statistics_rows_show_the_assessment(tmp_path, phantom):
    """The MRML statistics table lists the category (ordinal, named) and the noise floor."""
    require_module("slicer")
    from CovidCTLib.mrml.tables import statistics_rows

    numbers = apply_noise_floor(quantify(phantom.ct, phantom.lungs, phantom.infection), NoiseFloor())
    report = {
        **numbers,
        "covid_probability": 0.9,
        "covid_assessment": assess(phantom.ct, phantom.lungs, phantom.infection, numbers, 0.9),
    }
    rows = {key: (label, value) for key, label, value, _unit in statistics_rows(report)}
    label, value = rows["covid_assessment.category"]
    assert report["covid_assessment"]["category"] in label
    assert value == float(
        ("negative", "atypical", "indeterminate", "typical").index(report["covid_assessment"]["category"])
    )
    assert rows["noise_floor.min_lesion_ml"][1] == NoiseFloor().min_lesion_ml


def _cap(lung: np.ndarray, centre_yx: tuple[int, int], radius: int, floor: int) -> np.ndarray:
    """A dome-shaped region of ``lung`` rising from slice ``floor`` (z grows to the head), radius in voxels."""
    z, y, x = np.ogrid[: lung.shape[0], : lung.shape[1], : lung.shape[2]]
    r2 = (y - centre_yx[0]) ** 2 + (x - centre_yx[1]) ** 2 + (4 * (z - floor)) ** 2  # flat: 2.5 mm slices
    return lung & (z >= floor) & (r2 <= radius**2)


def test_gate_removes_the_dome_of_the_liver_but_not_basal_disease(clean_phantom):
    """Issue 13: soft tissue bulging up into the lung from below (the liver / spleen dome seen through partial
    volume) is not infection; a basal lesion that also rests on the chest wall, and a lesion higher up, are."""
    ct, lungs = clean_phantom.ct, clean_phantom.lungs
    hu = ct.array.astype(np.int16)
    right = lungs == 1
    zs = np.flatnonzero(right.any(axis=(1, 2)))
    floor = int(zs[0])
    bottom = right[floor + 1]
    ys, xs = np.nonzero(bottom)
    centre = (int(ys.mean()), int(xs.mean()))
    assert floor > 0 and np.mean(hu[floor - 1][bottom] >= -300) > 0.9  # soft tissue under the lung base
    front_y, back_y = int(ys.min()), int(ys.max())  # the anterior / posterior lung border on that slice
    dome = _cap(right, centre, 9, floor)  # the middle of the lung base, surrounded by lung
    basal = right.copy()  # dependent consolidation: the lowest 6 slices of the posterior quarter, on the
    basal[floor + 6 :] = False  # diaphragm and on the back wall
    basal[:, : back_y - (back_y - front_y) // 4] = False
    high = np.zeros(hu.shape, bool)
    mid = int(zs[len(zs) // 2])
    high[mid - 2 : mid + 2] = _cap(ndimage.binary_erosion(right, iterations=2), centre, 6, mid - 2)[mid - 2 : mid + 2]
    assert dome.sum() > 200 and basal.sum() > 300 and high.sum() > 50
    assert not (ndimage.binary_dilation(dome, np.ones((3, 3, 3), bool)) & basal).any()  # separate lesions
    for region in (dome, basal):
        hu[region] = 40
    hu[high] = -500  # ground glass higher up
    ct2 = _with_hu(ct, hu)
    lab = np.zeros(hu.shape, np.int32)
    for label, region in enumerate((dome, basal, high), start=1):
        lab[region] = label
    box = tuple(slice(0, n) for n in hu.shape)
    np.testing.assert_array_equal(dome_lesions(lab, 3, ct2, lungs, box, HUGating()), [False, True, False, False])
    # through the whole gate: the dome is removed and reported (the other rules judge the rest)
    fake = np.where(dome | high, 2, 0).astype(np.uint8)  # the network calls them consolidation
    gated, summary = gate_infection_hu(ct2, lungs, fake)
    assert np.count_nonzero(gated[dome]) == 0
    assert np.count_nonzero(gated[high]) >= 0.8 * high.sum()
    assert summary["removed_ml"]["dome_of_liver_or_spleen"] == pytest.approx(dome.sum() * ct.voxel_volume_ml, rel=0.05)


def _ball(lungs: np.ndarray, inner: np.ndarray, z: int, radius: float) -> np.ndarray:
    """A ball of ``radius`` mm (phantom spacing 2.5 x 1.5 x 1.5 mm) around the middle of slice ``z`` of
    ``inner``, clipped to the lungs."""
    ys, xs = np.nonzero(inner[z])
    centre = (z, int(ys[len(ys) // 2]), int(xs[len(xs) // 2]))
    zz, yy, xx = np.ogrid[: lungs.shape[0], : lungs.shape[1], : lungs.shape[2]]
    dist2 = (2.5 * (zz - centre[0])) ** 2 + (1.5 * (yy - centre[1])) ** 2 + (1.5 * (xx - centre[2])) ** 2
    return (dist2 <= radius**2) & (lungs > 0)


def test_gate_drops_small_dense_foci_but_keeps_ground_glass_and_large_consolidation(clean_phantom):
    """Gate 1.2.0: a small focus of soft-tissue density (a vessel segment, a nodule) is not the infection
    pattern; a ground-glass lesion of the same size and a consolidation larger than 2 mL in its ground-glass
    halo are."""
    ct, lungs = clean_phantom.ct, clean_phantom.lungs
    hu = ct.array.astype(np.int16)
    inner = ndimage.binary_erosion(lungs > 0, iterations=4)
    zs = np.flatnonzero(inner.any(axis=(1, 2)))
    ml = ct.voxel_volume_ml

    nodule = _ball(lungs, inner, int(zs[len(zs) // 4]), 6)  # about 0.9 mL
    ground_glass = _ball(lungs, inner, int(zs[len(zs) // 2]), 6)
    z_cons = int(zs[3 * len(zs) // 4])
    consolidation = _ball(lungs, inner, z_cons, 10)  # about 4 mL
    halo = _ball(lungs, inner, z_cons, 20) & ~consolidation
    halo[: z_cons - 2], halo[z_cons + 3 :] = False, False  # ground glass around it on five slices
    assert nodule.sum() * ml < 2.0 and consolidation.sum() * ml > 2.0
    assert not (nodule & ground_glass).any() and not (ground_glass & (consolidation | halo)).any()
    hu[nodule], hu[ground_glass], hu[consolidation], hu[halo] = 40, -500, 30, -500
    fake = np.zeros(hu.shape, np.uint8)
    fake[nodule | consolidation], fake[ground_glass | halo] = 2, 1
    gated, summary = gate_infection_hu(_with_hu(ct, hu), lungs, fake)
    assert np.count_nonzero(gated[nodule]) == 0
    assert np.count_nonzero(gated[ground_glass]) >= 0.8 * ground_glass.sum()
    assert np.count_nonzero(gated[consolidation]) >= 0.8 * consolidation.sum()
    assert summary["removed_ml"]["small_dense_focus"] == pytest.approx(nodule.sum() * ml, rel=0.1)
    assert summary["mass_like_lesions"] == []


def test_gate_lists_a_mass_but_keeps_bands_and_consolidation_in_ground_glass(clean_phantom):
    """Gate 1.3.0: a round solid lesion with a narrow rim (a tumour) leaves the infection and is listed with
    its place and size; an elongated solid band and a consolidation inside a wide ground-glass halo stay."""
    ct, lungs = clean_phantom.ct, clean_phantom.lungs
    hu = ct.array.astype(np.int16)
    inner = ndimage.binary_erosion(lungs > 0, iterations=4)
    zs = np.flatnonzero(inner.any(axis=(1, 2)))
    z_mass, z_band = int(zs[len(zs) // 4]), int(zs[3 * len(zs) // 4])
    mass = _ball(lungs, inner, z_mass, 12)
    rim = _ball(lungs, inner, z_mass, 15) & ~mass  # a 3 mm partial-volume rim
    band = np.zeros(hu.shape, bool)  # 7.5 x 7.5 x up to 54 mm: a band of consolidation
    ys, xs = np.nonzero(inner[z_band])
    y0, x0 = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])
    band[z_band - 1 : z_band + 2, y0 - 2 : y0 + 3, x0 - 18 : x0 + 18] = True
    band &= lungs > 0
    assert band.sum() * ct.voxel_volume_ml > 2.0
    assert not ((mass | rim) & band).any()
    hu[mass], hu[rim], hu[band] = 30, -450, 30
    fake = np.zeros(hu.shape, np.uint8)
    fake[mass | band], fake[rim] = 2, 1
    gated, summary = gate_infection_hu(_with_hu(ct, hu), lungs, fake)
    assert np.count_nonzero(gated[mass | rim]) == 0
    assert np.count_nonzero(gated[band]) >= 0.8 * band.sum()
    (found,) = summary["mass_like_lesions"]
    assert found["volume_ml"] == pytest.approx((mass | rim).sum() * ct.voxel_volume_ml, rel=0.05)
    assert found["solid_core_ml"] == pytest.approx(
        mass.sum() * ct.voxel_volume_ml, rel=0.25
    )  # its edge is smoothed away
    assert 18 <= found["core_diameter_mm"] <= 30
    side = np.bincount(lungs[mass]).argmax()
    assert found["lung"] == ("right" if side == 1 else "left")
    centroid = np.array(ndimage.center_of_mass(mass | rim))
    assert np.allclose(found["centroid_voxel"], centroid, atol=0.5)
    assert summary["removed_ml"]["mass_like_lesion"] == pytest.approx(found["volume_ml"], rel=0.01)
    # what is left (the band, under 1 % of the lungs) is not significant: atypical for the mass, named in the note
    numbers = quantify(ct, lungs, gated, min_lesion_ml=NoiseFloor().min_lesion_ml)
    _, block = score_scan(ct, lungs, gated, numbers, 0.5, masses=summary["mass_like_lesions"])
    assert block["category"] == "atypical" and block["features"]["mass_like_lesions"] == 1
    assert f"{found['lung']} lung, {found['volume_ml']:.0f} mL" in mass_note(summary["mass_like_lesions"])
    # the same mass with its core hidden in wide ground glass is a consolidation in a halo: kept
    halo = _ball(lungs, inner, z_mass, 30) & ~mass & ~band
    hu[halo] = -450
    fake[halo] = 1
    gated, summary = gate_infection_hu(_with_hu(ct, hu), lungs, fake)
    assert summary["mass_like_lesions"] == []
    assert np.count_nonzero(gated[mass]) >= 0.8 * mass.sum()


def test_assessment_names_a_mass_and_is_atypical_not_negative():
    rules = AssessmentRules()
    quiet = {
        "burden_percent": 0.3,
        "infection_ml": 10.0,
        "mass_like_lesions": 0,
        "mass_like_ml": 0.0,
    }
    assert categorise(quiet, rules)[0] == "negative"
    category, reasons = categorise({**quiet, "mass_like_lesions": 1, "mass_like_ml": 88.0}, rules)
    assert category == "atypical"
    assert any("mass-like" in r and "88 mL" in r for r in reasons)
