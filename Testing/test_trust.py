"""Model trust and global state (issue 12): safe checkpoints, the classifier leaves torch's threads alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from CovidCTLib.phantom import make_phantom

REPO_ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this object creates a folder: the proof that a checkpoint ran code."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self) -> tuple:
        return (os.makedirs, (self.target,))


def _tiny_loop(out: Path, resume: bool) -> dict:
    from CovidCTLib.models.training.trainer import TrainConfig, train_loop

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x = torch.ones(4, 3)

    def loss_fn(m: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return (m(batch) ** 2).mean()

    cfg = TrainConfig(epochs=2, steps_per_epoch=1, patience=5)
    return train_loop(
        model,
        lambda rng: x + float(rng.random()),
        loss_fn,
        lambda m: {"dice": 0.5},
        out,
        cfg,
        resume=resume,
        log=lambda s: None,
    )


def test_checkpoints_load_with_weights_only(tmp_path: Path) -> None:
    _tiny_loop(tmp_path, resume=False)
    for name in ("last.pt", "best.pt"):
        ck = torch.load(tmp_path / name, map_location="cpu", weights_only=True)  # would raise on pickled objects
        assert "model" in ck
    assert isinstance(torch.load(tmp_path / "last.pt", weights_only=True)["rng"]["state"]["state"], int)


def test_resume_refuses_a_checkpoint_that_runs_code(tmp_path: Path) -> None:
    from CovidCTLib.models.training.checkpoints import CheckpointError

    _tiny_loop(tmp_path, resume=False)
    proof = tmp_path / "payload-ran"
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    ck["history"] = [_Payload(proof)]
    torch.save(ck, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        _tiny_loop(tmp_path, resume=True)
    assert not proof.exists()


def test_classifier_leaves_torch_thread_count_alone() -> None:
    from CovidCTLib.models.runtime import classifier_inference
    from CovidCTLib.models.runtime.registry import models_dir

    folder = models_dir() / "covid-classifier"
    assert (folder / "manifest.json").is_file(), "the shipped classifier is part of the repository"
    ph = make_phantom((24, 64, 64), spacing=(5.0, 4.5, 4.5), seed=3)
    before = torch.get_num_threads()
    wanted = before + 3  # anything the classifier would not choose itself
    torch.set_num_threads(wanted)
    try:
        classifier_inference._CACHE.clear()
        scan = classifier_inference.classify_scan(ph.ct, ph.lungs, device="cpu", model_dir=folder)
        assert 0.0 <= scan.probability <= 1.0 and np.isfinite(scan.probability)
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------- CI: missing dependencies fail
_USES_MISSING = """
from required import require_module, skip_or_fail


def test_needs_a_missing_module():
    require_module("covidct_no_such_module_for_this_test")


def test_needs_a_shipped_model():
    skip_or_fail("model not shipped")


def test_plain():
    assert True
"""


def _run_pytest(tmp_path: Path, require_all: str | None) -> subprocess.CompletedProcess:
    test = tmp_path / "test_uses_missing.py"
    test.write_text(_USES_MISSING, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "COVIDCT_REQUIRE_ALL"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "Testing"), env.get("PYTHONPATH", "")])
    if require_all is not None:
        env["COVIDCT_REQUIRE_ALL"] = require_all
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(test), "-q", "-rs", "-p", "no:cacheprovider", "--rootdir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_missing_test_dependency_skips_locally_but_fails_under_ci(tmp_path: Path) -> None:
    local = _run_pytest(tmp_path, None)
    assert local.returncode == 0, local.stdout
    assert "1 passed, 2 skipped" in local.stdout
    ci = _run_pytest(tmp_path, "1")
    assert ci.returncode == 1, ci.stdout
    assert "2 failed, 1 passed" in ci.stdout and "covidct_no_such_module_for_this_test" in ci.stdout
    ci_script = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "COVIDCT_REQUIRE_ALL=1" in ci_script  # CI turns the mechanism on


# ------------------------------------------------------------------ manifests: fixed networks, integrity
def _tiny_model(root: Path) -> Path:
    from CovidCTLib.models.runtime import registry

    manifest = {
        "name": "tiny",
        "version": "0.0.1",
        "task": "lung",
        "architecture": {
            "network": "attention-unet",
            "kwargs": {"in_channels": 1, "out_channels": 2, "channels": [4, 8]},
        },
        "input": {"channels": 1, "size": 32},
        "normalization": "lungwin-minmax-clahe-v1",
    }
    registry.save_model(registry.build_module(manifest), root / "tiny", manifest)
    return root / "tiny" / "manifest.json"


def _edit(path: Path, change, reseal: bool = True) -> None:
    import json

    from CovidCTLib.models.runtime import registry

    manifest = json.loads(path.read_text(encoding="utf-8"))
    change(manifest)
    if reseal:  # what an attacker who knows the scheme would do: only the network table can stop it
        registry.write_manifest(path, manifest)
    else:
        path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def test_crafted_builder_cannot_run_a_covidct_function(tmp_path: Path) -> None:
    from CovidCTLib.cli import main
    from CovidCTLib.errors import ModelError
    from CovidCTLib.models.runtime import registry

    path = _tiny_model(tmp_path)
    written = tmp_path / "written-by-the-manifest.txt"
    _edit(
        path,
        lambda m: m.update(
            architecture={
                "builder": "CovidCTLib.atomic:write_text_atomic",
                "kwargs": {"path": str(written), "text": "pwned"},
            }
        ),
    )
    with pytest.raises(ModelError, match="not allowed"):
        registry.load_model("tiny", root=tmp_path)
    assert registry.list_models(tmp_path)[0]["ok"] is False
    assert not written.exists()
    os.environ["COVIDCT_MODELS_DIR"] = str(tmp_path)
    try:
        main(["models"])
    finally:
        del os.environ["COVIDCT_MODELS_DIR"]
    assert not written.exists()


@pytest.mark.parametrize(
    ("architecture", "message"),
    [
        ({"network": "os.system", "kwargs": {}}, "not one of"),
        ({"network": "attention-unet", "kwargs": {"in_channels": 1, "path": "/tmp/x"}}, "does not take 'path'"),
        ({"network": "attention-unet", "kwargs": {"in_channels": "1"}}, "must be int"),
        ({"network": "attention-unet", "kwargs": {"in_channels": True}}, "must be int"),
        ({"network": "attention-unet", "kwargs": {"channels": [4, 10**9]}}, "outside"),
        ({"network": "unet", "kwargs": {"channels": "abc"}}, "list of"),
        ({"network": "efficientnet", "kwargs": {"model_name": "../../evil"}}, "allowed: efficientnet-b0"),
        ({"network": "unet", "kwargs": {"dropout": 5.0}}, "outside"),
        ({"network": "seg-feature-classifier", "kwargs": {"head": {"kind": "os.system"}}}, "must name a head kind"),
        ({"network": "seg-feature-classifier", "kwargs": {"head": {"kind": "mlp-ensemble", "hidden": 8}}}, "takes"),
        (
            {
                "network": "seg-feature-classifier",
                "kwargs": {"head": {"kind": "mlp-ensemble", "hidden": 8, "members": 10**6}},
            },
            "outside",
        ),
    ],
)
def test_manifest_arguments_are_typed_and_validated(tmp_path: Path, architecture: dict, message: str) -> None:
    from CovidCTLib.errors import ModelError
    from CovidCTLib.models.runtime import registry

    path = _tiny_model(tmp_path)
    _edit(path, lambda m: m.update(architecture=architecture))
    with pytest.raises(ModelError, match=message):
        registry.verify("tiny", tmp_path)


def test_edited_or_unsealed_manifest_is_refused(tmp_path: Path) -> None:
    from CovidCTLib.errors import ModelError
    from CovidCTLib.models.runtime import registry
    from CovidCTLib.models.runtime.integrity import SEAL_KEY

    path = _tiny_model(tmp_path)
    registry.load_model("tiny", root=tmp_path)  # as written: accepted
    _edit(path, lambda m: m["input"].update(size=64), reseal=False)  # e.g. a changed threshold or input size
    with pytest.raises(ModelError, match=r"manifest .* was modified"):
        registry.verify("tiny", tmp_path)
    _edit(path, lambda m: m.pop(SEAL_KEY), reseal=False)
    with pytest.raises(ModelError, match=f"has no {SEAL_KEY}"):
        registry.verify("tiny", tmp_path)
    assert registry.list_models(tmp_path)[0]["ok"] is False


def test_shipped_manifests_are_sealed_and_listed(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from CovidCTLib.cli import main
    from CovidCTLib.models.runtime import registry
    from CovidCTLib.models.runtime.architectures import NETWORKS
    from CovidCTLib.models.runtime.integrity import SEAL_KEY, manifest_digest

    for name in ("lung-attunet", "infection-unet", "covid-classifier"):
        raw = json.loads((registry.models_dir() / name / "manifest.json").read_text(encoding="utf-8"))
        assert raw[SEAL_KEY] == manifest_digest(raw) and raw["architecture"]["network"] in NETWORKS
        assert "builder" not in raw["architecture"]
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("lung-attunet", "infection-unet", "covid-classifier"):
        assert f"{name}  version" in out
    assert "NOT USABLE" not in out and out.count("verified") == 3


# ------------------------------------------------------------- a refused model is never dropped silently
@pytest.fixture(scope="module")
def small_ct(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from CovidCTLib.io.writers import write_image

    phantom = make_phantom(shape=(48, 96, 96), spacing=(3.0, 2.0, 2.0), seed=4)
    path = tmp_path_factory.mktemp("ct") / "chest.nii.gz"
    write_image(phantom.ct.image, path)
    return path


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def tampered_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A copy of the shipped models with the lung and classifier weights modified."""
    import shutil

    from CovidCTLib.models.runtime import registry

    copy = tmp_path / "Models"
    shutil.copytree(registry.models_dir(), copy)
    lung = copy / "lung-attunet" / "weights.pt"
    classifier = copy / "covid-classifier" / "covid-classifier.pt"
    _flip_a_byte(lung)
    _flip_a_byte(classifier)
    monkeypatch.setenv("COVIDCT_MODELS_DIR", str(copy))
    return {"lung": lung, "classifier": classifier}


def test_auto_states_the_fallback_when_a_model_is_refused(
    small_ct: Path, tampered_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from CovidCTLib.cli import main

    out = tmp_path / "out"
    assert main(["analyze", str(small_ct), "-o", str(out), "--method", "auto", "--no-report"]) == 0
    console = capsys.readouterr().out
    assert "Method: classical" in console
    assert "WARNING: Fallback: the trained segmentation model was REFUSED" in console
    assert str(tampered_models["lung"]) in console and "checksum" in console
    assert "WARNING: Fallback: the COVID classifier was REFUSED" in console
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["method"] == "classical" and report["classification"] is None
    # no classifier ran: the top-level probability is the assessment's, from the segmentation alone
    assert report["covid_probability"] == report["covid_assessment"]["probability"]
    assert len(report["fallbacks"]) == 2 and all(text in report["notes"] for text in report["fallbacks"])
    assert str(tampered_models["classifier"]) in report["fallbacks"][1]


def test_refused_model_is_stated_in_the_html_and_pdf_report(
    small_ct: Path, tampered_models: dict[str, Path], tmp_path: Path
) -> None:
    from CovidCTLib.outputs.html_pdf import write_reports
    from CovidCTLib.pipeline import analyze

    result = analyze(str(small_ct), method="auto", device="cpu")
    paths = write_reports(result, tmp_path, render_3d=False)
    html = paths["report_html"].read_text(encoding="utf-8")
    assert "trained segmentation model was REFUSED" in html and "COVID classifier was REFUSED" in html
    assert paths["report_pdf"].stat().st_size > 0


def test_auto_without_models_says_classical_was_used(
    small_ct: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from CovidCTLib.pipeline import analyze

    monkeypatch.setenv("COVIDCT_MODELS_DIR", str(tmp_path / "no-models"))
    result = analyze(str(small_ct), method="auto", device="cpu")
    assert result.method == "classical"
    assert result.report["fallbacks"] == [n for n in result.report["notes"] if n.startswith("Fallback:")]
    assert "no trained segmentation model is installed" in result.report["fallbacks"][0]


def test_model_method_names_the_refused_file(
    small_ct: Path, tampered_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from CovidCTLib.cli import main

    out = tmp_path / "out"
    assert main(["analyze", str(small_ct), "-o", str(out), "--method", "model"]) == 2
    err = capsys.readouterr().err
    assert str(tampered_models["lung"]) in err and "does not match its manifest checksum" in err
    assert "not installed" not in err
    assert not out.exists() or not any(out.iterdir())


# ------------------------------------------------------------------------------- privacy of the outputs
_SECRETS = {
    "PatientName": "Doe^Jane",
    "PatientID": "MRN-4711-SECRET",
    "PatientBirthDate": "19451224",
    "AccessionNumber": "ACC-99887766",
    "ReferringPhysicianName": "House^Gregory",
    "PatientAge": "079Y",
    "OtherPatientIDs": "OTHER-ID-31337",
    "PatientSex": "F",
    "StudyID": "STUDY-5150",
    "InstitutionName": "Saint Nobody Hospital",
}


@pytest.fixture(scope="module")
def named_dicom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DICOM chest CT series with patient identifiers, in a folder named after the patient."""
    import pydicom
    from dicom_factory import write_series

    phantom = make_phantom(shape=(40, 96, 96), spacing=(3.0, 2.0, 2.0), seed=5)
    import SimpleITK as sitk

    folder = tmp_path_factory.mktemp("pacs") / "Doe_Jane_MRN-4711-SECRET"
    hu = sitk.GetArrayFromImage(phantom.ct.image)
    for path in write_series(folder, hu, spacing=phantom.ct.image.GetSpacing()):
        ds = pydicom.dcmread(path)
        for keyword, value in _SECRETS.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    return folder


def _secrets_in(data: bytes) -> list[str]:
    return [k for k, v in _SECRETS.items() if k != "PatientSex" and v.encode() in data]


def test_default_outputs_carry_no_patient_identifier(named_dicom: Path, tmp_path: Path) -> None:
    import json

    import highdicom as hd
    import pydicom

    from CovidCTLib.cli import main

    out = tmp_path / "out"
    assert (
        main(["analyze", str(named_dicom), "-o", str(out), "--method", "classical", "--no-report", "--no-classify"])
        == 0
    )
    source = pydicom.dcmread(sorted(named_dicom.iterdir())[0], stop_before_pixels=True)
    seg = pydicom.dcmread(out / "segmentation.dcm")
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyID",
        "StudyDate",
    ):
        assert str(seg.get(keyword, "")) == "", keyword
    assert "PatientAge" not in seg and "OtherPatientIDs" not in seg
    # what a viewer needs to attach the SEG to its CT is kept
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert len(hd.seg.segread(out / "segmentation.dcm").get_source_image_uids()) == 40
    for name in ("segmentation.dcm", "report.json", "report.csv", "segmentation.seg.nrrd"):
        data = (out / name).read_bytes()
        assert _secrets_in(data) == [], name
        assert str(named_dicom.parent).encode() not in data, name  # no full path
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["input"]["source"] == "DICOM folder" and "patient" not in report["input"]
    assert report["input"]["study_uid"] == source.StudyInstanceUID


def test_include_identifiers_copies_the_patient_module(named_dicom: Path, tmp_path: Path) -> None:
    import json

    import pydicom

    from CovidCTLib.cli import main

    out = tmp_path / "out"
    assert (
        main(
            [
                "analyze",
                str(named_dicom),
                "-o",
                str(out),
                "--method",
                "classical",
                "--no-report",
                "--no-classify",
                "--include-identifiers",
            ]
        )
        == 0
    )
    seg = pydicom.dcmread(out / "segmentation.dcm")
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "ReferringPhysicianName"):
        assert str(seg.get(keyword)) == _SECRETS[keyword], keyword
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["input"]["source"] == str(named_dicom)
    assert report["input"]["patient"]["id"] == _SECRETS["PatientID"]


def test_readme_lists_the_quasi_identifiers_kept() -> None:
    from CovidCTLib.privacy import REPORT_KEPT, SEG_KEPT

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    for item in (*SEG_KEPT, *REPORT_KEPT):
        assert item in readme, item


def test_report_names_a_file_input_by_its_basename_only(tmp_path: Path) -> None:
    from CovidCTLib.privacy import report_for_output

    source = tmp_path / "Doe_Jane_MRN-4711" / "chest.nii.gz"
    source.parent.mkdir()
    source.write_bytes(b"")
    report = {
        "input": {"source": str(source), "series_uid": "1.2.3"},
        "notes": [f"skipped {source.parent}/scout.nii.gz", f"read {source}"],
        "fallbacks": [],
    }
    written = report_for_output(report, include_identifiers=False, patient={"name": "Doe^Jane"})
    assert written["input"] == {"source": "chest.nii.gz", "series_uid": "1.2.3"}
    assert written["notes"] == ["skipped <input folder>/scout.nii.gz", "read chest.nii.gz"]
    assert report["input"]["source"] == str(source)  # the in-memory result keeps the path for the session
    full = report_for_output(report, include_identifiers=True, patient={"name": "Doe^Jane"})
    assert full["input"]["source"] == str(source) and full["input"]["patient"] == {"name": "Doe^Jane"}


# ------------------------------------------------------------------------ a wheel ships the trained models
def test_packaged_models_are_found_when_there_is_no_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from CovidCTLib.resources import PACKAGED_MODELS, default_models_dir

    monkeypatch.delenv("COVIDCT_MODELS_DIR", raising=False)
    package = tmp_path / "site-packages" / "CovidCTLib"
    (package / PACKAGED_MODELS).mkdir(parents=True)
    assert default_models_dir(package) == package / PACKAGED_MODELS
    assert default_models_dir(REPO_ROOT / "CovidCTLib") == REPO_ROOT / "Resources" / "Models"  # a checkout


def test_wheel_carries_the_models_and_finds_them_installed(tmp_path: Path) -> None:
    import hashlib
    import zipfile

    dist = tmp_path / "dist"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(REPO_ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = dist.glob("*.whl")
    shipped = sorted(p for p in (REPO_ROOT / "Resources" / "Models").glob("*/*") if p.is_file())
    with zipfile.ZipFile(wheel) as archive:
        for path in shipped:
            member = f"CovidCTLib/_models/{path.parent.name}/{path.name}"
            assert hashlib.sha256(archive.read(member)).digest() == hashlib.sha256(path.read_bytes()).digest()
        archive.extractall(tmp_path / "site")  # a pure-Python wheel installs by unpacking
    env = {k: v for k, v in os.environ.items() if k != "COVIDCT_MODELS_DIR"}
    env["PYTHONPATH"] = str(tmp_path / "site")
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import CovidCTLib, CovidCTLib.cli as c; print(CovidCTLib.__file__); c.main(['models'])",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0].startswith(str(tmp_path / "site"))  # the unpacked wheel, not the checkout
    for name in ("covid-classifier", "infection-unet", "lung-attunet"):
        assert f"{name}  version" in run.stdout
    assert run.stdout.count("checksum verified") == 3 and "NOT USABLE" not in run.stdout
