"""End-to-end tests of the ``covidct`` command line and the pipeline on phantoms written to disk."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from required import skip_or_fail  # noqa: E402

from CovidCTLib.cli import main
from CovidCTLib.io.writers import write_image
from CovidCTLib.phantom import make_phantom

REQUIRED_KEYS = [
    "covid_probability",
    "lungs.right_ml",
    "lungs.left_ml",
    "lungs.total_ml",
    "infection.total_ml",
    "infection.ggo_ml",
    "infection.consolidation_ml",
    "infection.percent_of_lungs",
    "infection.right_percent",
    "infection.left_percent",
    "zones",
    "severity_score.total",
    "lesions",
    "versions",
    "timing_s",
]


def _get(report: dict, dotted: str):
    value = report
    for part in dotted.split("."):
        value = value[part]
    return value


@pytest.fixture(scope="module")
def oblique_phantom_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    phantom = make_phantom(shape=(48, 112, 112), spacing=(3.0, 2.0, 2.0), seed=3, oblique=True)
    path = tmp_path_factory.mktemp("input") / "oblique_ct.nii.gz"
    write_image(phantom.ct.image, path)
    return path, phantom


@pytest.fixture(scope="module")
def analyzed(oblique_phantom_file, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, int]:
    path, phantom = oblique_phantom_file
    outdir = tmp_path_factory.mktemp("out")
    code = main(["analyze", str(path), "-o", str(outdir), "--method", "classical", "--no-report"])
    return outdir, phantom, code


def test_analyze_writes_every_output_with_input_geometry(analyzed, oblique_phantom_file) -> None:
    outdir, phantom, code = analyzed
    assert code == 0
    reference = sitk.ReadImage(str(oblique_phantom_file[0]))
    for name in ("lungs.nii.gz", "infection.nii.gz"):
        label = sitk.ReadImage(str(outdir / name))
        assert label.GetSize() == reference.GetSize()
        np.testing.assert_allclose(label.GetSpacing(), reference.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(label.GetOrigin(), reference.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(label.GetDirection(), reference.GetDirection(), atol=1e-5)
    lungs = sitk.GetArrayFromImage(sitk.ReadImage(str(outdir / "lungs.nii.gz")))
    assert set(np.unique(lungs)) == {0, 1, 2}
    note = sitk.ReadImage(str(outdir / "lungs.nii.gz")).GetMetaData("descrip")
    assert "research only, not a diagnosis" in note and "classical" in note
    dice = (
        2
        * np.count_nonzero((lungs > 0) & (phantom.lungs > 0))
        / (np.count_nonzero(lungs) + np.count_nonzero(phantom.lungs))
    )
    assert dice > 0.9
    assert (outdir / "segmentation.seg.nrrd").stat().st_size > 0
    assert not list(outdir.glob(".*"))  # no temporary files left behind


def test_report_json_has_contract_keys_and_matches_labelmaps(analyzed) -> None:
    outdir, phantom, _ = analyzed
    report = json.loads((outdir / "report.json").read_text())
    for key in REQUIRED_KEYS:
        _get(report, key)
    assert "not a diagnosis" in report["disclaimer"]
    assert report["versions"]["covidct"]
    assert report["method"] == "classical"
    lungs = sitk.ReadImage(str(outdir / "lungs.nii.gz"))
    voxel_ml = np.prod(lungs.GetSpacing()) / 1000.0
    right = np.count_nonzero(sitk.GetArrayFromImage(lungs) == 1) * voxel_ml
    assert report["lungs"]["right_ml"] == pytest.approx(right, rel=1e-3)
    truth_ml = np.count_nonzero(phantom.lungs) * voxel_ml
    assert report["lungs"]["total_ml"] == pytest.approx(truth_ml, rel=0.08)
    truth_infection = np.count_nonzero(phantom.infection) * voxel_ml
    assert report["infection"]["total_ml"] == pytest.approx(truth_infection, rel=0.35)
    rows = list(csv.DictReader((outdir / "report.csv").open()))
    assert len(rows) == 1
    assert float(rows[0]["lungs.total_ml"]) == pytest.approx(report["lungs"]["total_ml"], rel=1e-6)


def test_existing_outputs_are_not_overwritten_without_flag(analyzed, oblique_phantom_file, capsys) -> None:
    outdir, _, _ = analyzed
    before = (outdir / "report.json").stat().st_mtime_ns
    code = main(["analyze", str(oblique_phantom_file[0]), "-o", str(outdir), "--method", "classical", "--no-report"])
    assert code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (outdir / "report.json").stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("make_input", "expected"),
    [
        (lambda tmp: tmp / "missing.nii.gz", "not"),
        (lambda tmp: _png(tmp / "slice.png"), "segment-slices"),
    ],
)
def test_bad_inputs_fail_with_clear_message(tmp_path: Path, capsys, make_input, expected: str) -> None:
    path = make_input(tmp_path)
    code = main(["analyze", str(path), "-o", str(tmp_path / "out"), "--method", "classical"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("covidct: error:")
    assert expected in err
    assert not (tmp_path / "out" / "report.json").exists()


def _png(path: Path) -> Path:
    image = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(image), str(path))
    return path


def test_json_progress_in_a_subprocess(oblique_phantom_file, tmp_path: Path) -> None:
    outdir = tmp_path / "json_out"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "CovidCTLib.cli",
            "analyze",
            str(oblique_phantom_file[0]),
            "-o",
            str(outdir),
            "--method",
            "classical",
            "--no-report",
            "--json-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    events = [json.loads(line) for line in completed.stdout.splitlines() if line.strip()]
    progress = [e for e in events if e["event"] == "progress"]
    assert len(progress) >= 4
    fractions = [e["fraction"] for e in progress]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert events[-1]["event"] == "done"
    assert Path(events[-1]["report"]).is_file()


def test_json_progress_reports_errors_as_json(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "CovidCTLib.cli",
            "analyze",
            str(tmp_path / "nothing"),
            "-o",
            str(tmp_path / "o"),
            "--json-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 2
    last = json.loads(completed.stdout.strip().splitlines()[-1])
    assert last["event"] == "error" and last["message"]


def test_segment_slices_writes_same_size_masks(tmp_path: Path) -> None:
    phantom = make_phantom(shape=(24, 96, 96), spacing=(5.0, 2.0, 2.0), seed=1)
    hu = phantom.ct.array
    src = tmp_path / "slices"
    src.mkdir()
    for z in (8, 12, 16):
        window = np.clip((hu[z] + 1350.0) / 1500.0, 0, 1) * 255
        sitk.WriteImage(sitk.GetImageFromArray(window.astype(np.uint8)), str(src / f"s{z:03d}.png"))
    for task, allowed in (("lung", {0, 255}), ("lesion-type", {0, 1, 2})):
        out = tmp_path / f"masks_{task}"
        assert main(["segment-slices", "--task", task, str(src), "-o", str(out), "--method", "classical"]) == 0
        for z in (8, 12, 16):
            mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"s{z:03d}.png")))
            assert mask.shape == (96, 96)
            assert set(np.unique(mask)) <= allowed
        if task == "lung":
            mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "s012.png"))) > 0
            truth = phantom.lungs[12] > 0
            assert 2 * np.count_nonzero(mask & truth) / (mask.sum() + truth.sum()) > 0.8


def test_demo_runs_on_the_builtin_phantom(tmp_path: Path, capsys) -> None:
    assert main(["demo", "-o", str(tmp_path / "demo"), "--method", "classical"]) == 0
    out = capsys.readouterr().out
    assert "Known answer" in out and "not a diagnosis" in out
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["lungs"]["total_ml"] > 100
    assert (tmp_path / "demo" / "phantom_ct.nii.gz").is_file()


def test_models_lists_installed_models_and_flags_a_tampered_one(tmp_path: Path, monkeypatch, capsys) -> None:
    import shutil

    from CovidCTLib.models.runtime.registry import models_dir

    shipped = models_dir()
    if not any(shipped.glob("*/manifest.json")):
        skip_or_fail("no shipped model")
    copy = tmp_path / "Models"
    shutil.copytree(shipped, copy)
    weights = sorted(p for p in (copy / "lung-attunet").iterdir() if p.suffix == ".pt")[0]
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    monkeypatch.setenv("COVIDCT_MODELS_DIR", str(copy))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "lung-attunet  NOT USABLE" in out
    assert "infection-unet  version" in out and "checksum verified" in out


def test_model_method_names_every_model_version_in_the_report(tmp_path: Path) -> None:
    from CovidCTLib.pipeline import analyze, classifier_available, segmentation_models_available

    if not (segmentation_models_available() and classifier_available()):
        skip_or_fail("trained models not installed")
    phantom = make_phantom(shape=(40, 96, 96), spacing=(3.0, 2.0, 2.0), seed=2)
    result = analyze(phantom.ct, method="model", device="cpu")
    models = result.report["versions"]["models"]
    assert set(models) == {"lung", "infection", "classifier"}
    assert all(" " in name_and_version for name_and_version in models.values())  # "<name> <version>"
    assert 0.0 <= result.report["covid_probability"] <= 1.0
    truth = phantom.lungs > 0
    dice = 2 * np.count_nonzero((result.lungs > 0) & truth) / (np.count_nonzero(result.lungs) + truth.sum())
    assert dice > 0.85
    # every NIfTI output names, in its header, research use and the model that made it
    from CovidCTLib.outputs import registry

    for writer in (registry._labelmaps, registry._lobes, registry._heatmap):
        writer(result, tmp_path, registry.OutputOptions())
    for name, task in (
        ("lungs", "lung"),
        ("infection", "infection"),
        ("lobes", "lung"),
        ("covid_heatmap", "classifier"),
    ):
        note = sitk.ReadImage(str(tmp_path / f"{name}.nii.gz")).GetMetaData("descrip")
        assert "research only, not a diagnosis" in note and models[task] in note and len(note) < 80
