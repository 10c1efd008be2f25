"""Explanations of the COVID score (issue 16.2): Grad-CAM, the heatmap file, report.json ``explanation``,
the HTML/PDF figure, the CLI line and options. One classical analysis of a small oblique phantom (the shipped
classifier runs on it) is shared by the end-to-end tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from required import skip_or_fail

from CovidCTLib.cli import build_parser, main
from CovidCTLib.explain.heatmap import heatmap_volume, view_index
from CovidCTLib.explain.summary import explain_scan, slice_z_mm
from CovidCTLib.io.writers import write_image
from CovidCTLib.models.runtime.classifier import build_efficientnet, predict_crops, standardize
from CovidCTLib.models.runtime.classifier_inference import (
    default_model_dir,
    load_classifier,
    lung_slices,
    radiological_view,
)
from CovidCTLib.models.runtime.gradcam import CAM_STAGE, grad_cam, predict_with_cams, signed_cam, staged_logits
from CovidCTLib.outputs.registry import options_from_args
from CovidCTLib.phantom import make_phantom


def _classifier():
    if not (default_model_dir() / "manifest.json").is_file():
        skip_or_fail("no covid-classifier shipped in Resources/Models")
    return load_classifier(None, "cpu")


class _EfficientNet:
    """A seeded, untrained EfficientNet-b0 (the 1.x classifier architecture) for the staged Grad-CAM path."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = build_efficientnet("efficientnet-b0", 1).eval()
        self.device = torch.device("cpu")


def _crops(n: int = 4, size: int = 96) -> torch.Tensor:
    """Smooth random crops in 0..1 (deterministic)."""
    rng = np.random.default_rng(3)
    x = rng.random((n, 1, size // 8, size // 8)).astype(np.float32)
    return torch.nn.functional.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear")


# ------------------------------------------------------------------------------------------ Grad-CAM
def test_staged_forward_gives_the_networks_own_logits():
    loaded = _EfficientNet()
    x = standardize(_crops())
    logits, features = staged_logits(loaded.model.eval(), x)
    with torch.no_grad():
        reference = loaded.model(x)[:, 0]
    assert torch.allclose(logits, reference, atol=1e-4)
    assert features.shape[1] == 112 and features.shape[-1] == x.shape[-1] // 16  # stage 4: stride 16


def test_gradcam_matches_an_independent_hook_and_autograd_computation():
    """Grad-CAM from a forward hook on the same stage of the *unmodified* network and torch.autograd."""
    loaded = _EfficientNet()
    model = loaded.model.eval()
    x = standardize(_crops(2))
    kept: list[torch.Tensor] = []
    handle = model._blocks[CAM_STAGE].register_forward_hook(lambda module, inputs, output: kept.append(output))
    try:
        with torch.enable_grad():
            logits = model(x)[:, 0]
            (grad,) = torch.autograd.grad(logits.sum(), kept[0])
    finally:
        handle.remove()
    expected = (grad.mean(dim=(2, 3), keepdim=True) * kept[0]).sum(dim=1).detach()
    _, signed = signed_cam(model, x)
    assert float(expected.abs().max()) > 0  # a real map, not all zero
    assert torch.allclose(signed, expected, atol=1e-6, rtol=1e-4)
    _, cams = grad_cam(model, x)
    assert torch.equal(cams, torch.relu(signed))


def test_scores_with_gradcam_equal_the_plain_scores():
    loaded = _EfficientNet()
    crops = _crops(5)
    plain = predict_crops(loaded.model, crops, loaded.device, tta=True)
    batch = predict_with_cams(loaded.model, crops, loaded.device, tta=True)
    assert np.allclose(batch.probabilities, plain, atol=1e-5)
    assert batch.cams.shape == (5, 6, 6) and batch.cams.dtype == np.float32 and (batch.cams >= 0).all()


# ------------------------------------------------------------------------------------ mapping back
def _grid(direction: tuple[float, ...]) -> tuple[sitk.Image, np.ndarray]:
    image = sitk.Image(40, 32, 3, sitk.sitkInt16)
    image.SetSpacing((1.0, 1.0, 2.0))
    image.SetOrigin((-20.0, 10.0, 5.0))
    image.SetDirection(direction)
    lungs = np.zeros((3, 32, 40), dtype=np.uint8)
    lungs[:, 6:26, 5:35] = 1
    return image, lungs


@pytest.mark.parametrize(
    "direction",
    [
        (1, 0, 0, 0, 1, 0, 0, 0, 1),  # standard LPS storage
        (-1, 0, 0, 0, -1, 0, 0, 0, 1),  # RAS-like storage: both in-plane axes flipped
        (0, 1, 0, 1, 0, 0, 0, 0, 1),  # rows and columns swapped (x runs anterior-posterior)
    ],
)
def test_heat_of_the_views_top_left_cell_lands_in_the_patients_right_anterior_lung(direction):
    """The view shows patient right on the left and anterior at the top: the heat of the map's top-left
    cell must come back at the right-anterior corner of the lungs in physical space, whatever the storage."""
    image, lungs = _grid(direction)
    cam = np.zeros((6, 6), dtype=np.float32)
    cam[0, 0] = 1.0
    heat = heatmap_volume(image, lungs, {1: cam})
    assert heat.max() == pytest.approx(1.0) and not heat[0].any() and not heat[2].any()
    assert not heat[lungs == 0].any()
    z, y, x = np.unravel_index(np.argmax(heat), heat.shape)
    peak = np.array(image.TransformIndexToPhysicalPoint((int(x), int(y), int(z))))
    ks, js, is_ = np.nonzero(lungs)
    points = np.array(
        [
            image.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))
            for k, j, i in zip(ks[::7], js[::7], is_[::7], strict=True)
        ]
    )
    lo, hi = points.min(axis=0), points.max(axis=0)
    # LPS: patient right is small x, anterior is small y; the peak is in the first sixth of the lung box
    assert peak[0] < lo[0] + (hi[0] - lo[0]) / 5 and peak[1] < lo[1] + (hi[1] - lo[1]) / 5


def test_view_index_inverts_the_radiological_view_exactly():
    image, lungs = _grid((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    values = np.random.default_rng(0).random((1, 32, 40))
    viewed, _ = radiological_view(values, values, image)
    back = np.empty(values[0].size)
    back[view_index((32, 40), image).ravel()] = viewed[0].ravel()
    assert np.array_equal(back.reshape(32, 40), values[0])


def test_uniform_map_covers_exactly_the_lungs_of_the_classified_slices():
    image, lungs = _grid((1, 0, 0, 0, 1, 0, 0, 0, 1))
    heat = heatmap_volume(image, lungs, {0: np.ones((6, 6), np.float32), 2: np.ones((6, 6), np.float32)})
    assert np.array_equal(heat[0] > 0, lungs[0] > 0) and np.allclose(heat[0][lungs[0] > 0], 1.0)
    assert not heat[1].any()


def test_explanation_top_slices_boxes_and_heat_fraction_by_hand():
    image, lungs = _grid((1, 0, 0, 0, 1, 0, 0, 0, 1))
    heat = np.zeros(lungs.shape, np.float32)
    heat[1, 10:14, 8:12] = 0.8  # one hot block, half of it inside the infection, hottest at (x 11, y 12)
    heat[1, 12, 11] = 1.0
    heat[1, 20, 30] = 0.9  # a second, one-voxel region with less total heat
    infection = np.zeros_like(lungs)
    infection[1, 10:14, 8:10] = 1
    e = explain_scan(image, lungs, infection, heat, {0: 0.2, 1: 0.9, 2: 0.5}, voxel_ml=0.002, k=2)
    assert [s.index for s in e.top_slices] == [1, 2] and e.top_slices[0].score == 0.9
    assert e.top_slices[0].z_mm == pytest.approx(slice_z_mm(image, 1)) == pytest.approx(7.0)
    block = 0.8 * 16 + 0.2
    assert e.heat_in_infection == pytest.approx(0.8 * 8 / (block + 0.9), abs=1e-4)
    assert e.infection_share_of_lung == pytest.approx(8 / lungs.sum(), abs=1e-4)
    box, small = e.hot_regions
    assert small.index_min == small.index_max == [30, 20, 1] and small.peak_heat == pytest.approx(0.9)
    assert box.peak_lps_mm == pytest.approx(list(image.TransformIndexToPhysicalPoint((11, 12, 1))))
    assert box.index_min == [8, 10, 1] and box.index_max == [11, 13, 1]
    assert box.lps_min_mm == pytest.approx([-20 + 7.5, 10 + 9.5, 5 + 2 - 1]) and box.size_mm == [4.0, 4.0, 2.0]
    assert box.heat_in_infection == pytest.approx(0.8 * 8 / block, abs=1e-4)
    assert box.heat_share == pytest.approx(block / (block + 0.9), abs=1e-4)


# ------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def analyzed(tmp_path_factory: pytest.TempPathFactory):
    _classifier()
    phantom = make_phantom(shape=(48, 96, 96), oblique=True, seed=1)
    source = tmp_path_factory.mktemp("input") / "ct.nii.gz"
    write_image(phantom.ct.image, source)
    outdir = tmp_path_factory.mktemp("out") / "result"
    code = main(
        ["analyze", str(source), "-o", str(outdir), "--method", "classical", "--device", "cpu", "--top-slices", "3"]
    )
    assert code == 0
    return source, outdir


def test_heatmap_file_has_the_ct_geometry_values_0_to_1_and_no_heat_outside_the_lungs(analyzed):
    source, outdir = analyzed
    ct, heat_image = sitk.ReadImage(str(source)), sitk.ReadImage(str(outdir / "covid_heatmap.nii.gz"))
    assert heat_image.GetPixelID() == sitk.sitkFloat32
    assert heat_image.GetSize() == ct.GetSize()
    assert np.allclose(heat_image.GetOrigin(), ct.GetOrigin()) and np.allclose(heat_image.GetSpacing(), ct.GetSpacing())
    assert np.allclose(heat_image.GetDirection(), ct.GetDirection())
    assert not np.allclose(ct.GetDirection(), np.eye(3).ravel())  # the phantom really is oblique
    heat = sitk.GetArrayFromImage(heat_image)
    lungs = sitk.GetArrayFromImage(sitk.ReadImage(str(outdir / "lungs.nii.gz")))
    assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)
    assert not heat[lungs == 0].any()
    steps = heat * 255.0  # kept in steps of 1/255 (display precision; the file compresses ten times better)
    assert np.abs(steps - np.rint(steps)).max() < 1e-3 and len(np.unique(heat)) > 20


def test_report_json_explanation(analyzed):
    _, outdir = analyzed
    report = json.loads((outdir / "report.json").read_text())
    e = report["explanation"]
    scores = report["classification"]
    assert e["top_k"] == 3 and len(e["top_slices"]) == 3
    assert [s["score"] for s in e["top_slices"]] == sorted((s["score"] for s in e["top_slices"]), reverse=True)
    assert e["n_slices"] == scores["n_slices"]
    heat = sitk.GetArrayFromImage(sitk.ReadImage(str(outdir / "covid_heatmap.nii.gz")))
    infection = sitk.GetArrayFromImage(sitk.ReadImage(str(outdir / "infection.nii.gz")))
    assert e["heat_in_infection"] == pytest.approx(heat[infection > 0].sum() / heat.sum(), abs=1e-3)
    assert 0 < len(e["hot_regions"]) <= 3
    for region in e["hot_regions"]:
        assert all(a <= b for a, b in zip(region["lps_min_mm"], region["lps_max_mm"], strict=True))
        assert region["peak_heat"] >= e["hot_level"]
    assert "Grad-CAM" in e["method"] and "not a diagnosis" in e["limits"]
    row = (outdir / "report.csv").read_text().splitlines()
    header = row[0].split(",")
    assert float(row[1].split(",")[header.index("explanation.heat_in_infection")]) == pytest.approx(
        e["heat_in_infection"]
    )


def test_heatmap_is_not_constant_and_concentrates_on_the_top_slices(analyzed):
    """The map is not trivially constant: the top-scoring slices carry more heat than the other scored slices.
    (Whether the heat lies on the phantom's lesions is measured, not asserted: see the MODEL_CARD.)"""
    _, outdir = analyzed
    report = json.loads((outdir / "report.json").read_text())
    heat = sitk.GetArrayFromImage(sitk.ReadImage(str(outdir / "covid_heatmap.nii.gz")))
    lungs = sitk.GetArrayFromImage(sitk.ReadImage(str(outdir / "lungs.nii.gz"))) > 0
    top = {s["index"] for s in report["explanation"]["top_slices"]}
    others = [z for z in lung_slices(lungs) if z not in top]  # the other slices the classifier scored
    mean_top = np.mean([heat[z][lungs[z]].mean() for z in top])
    mean_others = np.mean([heat[z][lungs[z]].mean() for z in others])
    assert heat[lungs].std() > 0.01
    assert mean_top > mean_others


def test_html_and_pdf_show_the_explanation_figure(analyzed):
    _, outdir = analyzed
    html = (outdir / "report.html").read_text()
    assert "What drives the COVID score (Grad-CAM heatmap)" in html
    assert 'alt="top slices with the classifier heatmap"' in html and "not a diagnosis" in html
    assert (outdir / "report.pdf").stat().st_size > 0


def test_cli_summary_lines(analyzed, capsys):
    from CovidCTLib.cli import _summary_lines

    _, outdir = analyzed
    lines = _summary_lines(json.loads((outdir / "report.json").read_text()))
    assert any(line.startswith("Top slices (index, z, slice score): ") for line in lines)
    assert any(line.startswith("Heat in infection (Grad-CAM of the classifier): ") and "%" in line for line in lines)


def test_no_heatmap_writes_no_file_but_keeps_the_explanation(analyzed, tmp_path):
    from CovidCTLib.outputs.registry import write_outputs
    from CovidCTLib.runner.background import read_outputs

    _, outdir = analyzed
    args = build_parser().parse_args(["analyze", "x.nii.gz", "-o", "o", "--no-heatmap", "--no-report"])
    options = options_from_args(args)
    assert options.heatmap is False
    default = options_from_args(build_parser().parse_args(["analyze", "x.nii.gz", "-o", "o"]))
    assert default.heatmap is True
    result = _result_from(outdir)
    paths = write_outputs(result, tmp_path / "set", options=options)
    assert "heatmap" not in paths and not (tmp_path / "set" / "covid_heatmap.nii.gz").exists()
    assert read_outputs(tmp_path / "set")[3]["explanation"]["top_slices"]


def test_no_explain_and_top_slices_options():
    from CovidCTLib.pipeline import AnalysisState, _stage_explain

    args = build_parser().parse_args(["analyze", "x.nii.gz", "-o", "o", "--no-explain", "--top-slices", "2"])
    assert args.no_explain and args.top_slices == 2
    state = AnalysisState("x", "classical", "cpu", True, None, None, explain=False)
    state.scan = object()  # a classification ran, but the explanation is off: nothing is computed
    _stage_explain(state)
    assert state.heatmap is None and state.explanation is None


def _result_from(outdir: Path):
    from CovidCTLib.results import AnalysisResult
    from CovidCTLib.runner.background import read_heatmap, read_outputs
    from CovidCTLib.volume import CTVolume

    lungs_image, lungs, infection, report = read_outputs(outdir)
    ct = CTVolume(image=lungs_image, intensity="HU", source="phantom")
    return AnalysisResult(ct=ct, lungs=lungs, infection=infection, report=report, heatmap=read_heatmap(outdir))
