"""The Slicer module (CovidCT.py) without the Slicer application: real MRML scene, real engine, real processes.

Only the application shell is stood in for (see Testing/slicer_fixture.py). The module's own self-test
class ``CovidCTTest`` runs here exactly as in Slicer's "Reload and Test".
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
import types
import unittest

import pytest
from required import require_module  # noqa: E402

slicer = require_module("slicer", reason="slicer-core wheel not installed")

from slicer_fixture import REPO_ROOT, install_app_standins, make_mrml_context  # noqa: E402

from CovidCTLib.mrml import add_volume_from_image  # noqa: E402
from CovidCTLib.runner.background import BackgroundAnalysis, analyze_command, read_lobes, read_outputs  # noqa: E402


def _engine_available() -> bool:
    for name in ("CovidCTLib.classical.lungs", "CovidCTLib.classical.infection", "CovidCTLib.quantify"):
        try:
            importlib.import_module(name)
        except ImportError:
            return False
    return True


needs_engine = pytest.mark.skipif(
    not _engine_available(), reason="classical engine (classical.lungs/infection, quantify) not installed yet"
)


@pytest.fixture
def module(monkeypatch):
    """``import CovidCT`` inside a real scene with the application-shell stand-ins."""
    context = make_mrml_context()
    shell = install_app_standins(monkeypatch, context)
    covidct = importlib.import_module("CovidCT")
    yield types.SimpleNamespace(module=covidct, scene=context.scene, shell=shell)
    context.scene.Clear(1)


def test_module_description_and_sample_data(module):
    parent = types.SimpleNamespace()
    module.module.CovidCT(parent)
    assert parent.title == "CovidCT"
    assert parent.categories == ["Chest Imaging"]
    assert "not a diagnosis" in parent.helpText
    assert ("startupCompleted()", module.module.registerSampleData) in module.shell.app.connections
    assert module.module.libraryRoot() == REPO_ROOT
    # the sample data loader builds the phantom locally (no download)
    nodes = module.module._loadPhantomSample()
    assert nodes[0].GetName() == "CovidCTPhantom"
    assert nodes[0].GetImageData().GetDimensions()[0] > 32
    assert nodes[0].GetDisplayNode().GetWindow() == pytest.approx(1500)


def test_parameter_node_fields(module):
    annotations = module.module.CovidCTParameterNode.__annotations__
    for name in ("inputVolume", "method", "device", "computeSurfaces", "smoothing", "baselineVolume", "followupVolume"):
        assert name in annotations
    node = module.module.CovidCTLogic().getParameterNode()
    assert node is not None


@pytest.mark.parametrize(
    "test_name",
    [
        pytest.param("test_CovidCT_Phantom", marks=needs_engine),
        "test_CovidCT_ObliqueGeometry",
        pytest.param("test_CovidCT_FailureLeavesScene", marks=needs_engine),
    ],
)
def test_module_self_test(module, test_name):
    """The very CovidCTTest methods that "Reload and Test" runs inside Slicer."""
    case = module.module.CovidCTTest(test_name)
    result = unittest.TestResult()
    case.run(result)
    problems = [text for _case, text in result.errors + result.failures]
    assert not problems, "\n".join(problems)
    assert result.testsRun == 1


def test_blocking_mode_refuses_volume_without_data(module):
    empty = module.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    before = module.scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="voxel data"):
        module.module.CovidCTLogic().process(empty, method="classical")
    assert module.scene.GetNumberOfNodes() == before


def test_dependencies_asked_before_install(module, monkeypatch):
    from CovidCTLib.mrml import dependencies

    monkeypatch.setitem(dependencies.GROUPS, "classical", {"covidct-no-such-package": "covidct_no_such_package"})
    with pytest.raises(dependencies.DependencyError, match="covidct-no-such-package"):
        module.module.CovidCTLogic().ensureDependencies("classical", interactive=True)
    assert module.shell.dialogs and module.shell.dialogs[0][0] == "confirm"
    assert "covidct-no-such-package" in module.shell.dialogs[0][1]
    # scripts/tests never install and never ask
    module.shell.dialogs.clear()
    with pytest.raises(dependencies.DependencyError):
        dependencies.ensure_dependencies(["classical"], interactive=False)
    assert module.shell.dialogs == []
    # Slicer's own packages are never installed
    calls = []
    monkeypatch.setattr(slicer.util, "pip_install", lambda *a, **k: calls.append(a), raising=False)
    dependencies._pip_install(types.SimpleNamespace(util=slicer.util), ["numpy", "vtk", "SimpleITK", "pydicom"])
    assert calls == []


def test_device_status_does_not_install(module):
    from CovidCTLib.mrml.dependencies import torch_cuda_status

    status = torch_cuda_status()
    assert "CPU" in status or "GPU" in status


# ---------------------------------------------------------------------------------- background process
def test_background_error_is_reported(tmp_path):
    job = BackgroundAnalysis(analyze_command(tmp_path / "missing.nrrd", tmp_path / "out", "classical", "cpu"))
    job.wait(timeout=120)
    assert job.returncode == 2
    assert "does not exist" in job.error_message()
    assert job.done_event() is None
    job.cleanup()
    assert not job.logdir.exists()


def test_background_reads_split_lines_and_much_output(tmp_path):
    """Events written in pieces arrive whole; a process writing far more than a pipe buffer never blocks."""
    script = textwrap.dedent(
        """
        import json, sys, time
        sys.stderr.write("x" * 300000 + "\\n")
        for i in range(2000):
            print(json.dumps({"event": "progress", "step": "s", "fraction": i / 2000, "message": "m" * 50}))
        sys.stdout.write('{"event": "done", ')
        sys.stdout.flush()
        time.sleep(0.5)
        sys.stdout.write('"outdir": "o", "report": "r"}\\n')
        """
    )
    job = BackgroundAnalysis([sys.executable, "-c", script], logdir=tmp_path / "log")
    seen = []
    while not job.finished:
        seen.extend(job.poll())
        time.sleep(0.02)
    assert job.returncode == 0
    assert len([e for e in job.events if e["event"] == "progress"]) == 2000
    assert job.done_event() == {"event": "done", "outdir": "o", "report": "r"}
    assert all(e["event"] in ("progress", "done") for e in job.events)  # no half line became a "log" event
    assert job.error_message() is None


def test_background_cancel_kills_process_tree(tmp_path):
    pid_file = tmp_path / "child.pid"
    script = textwrap.dedent(
        f"""
        import json, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        print(json.dumps({{"event": "progress", "step": "load", "fraction": 0.1, "message": "working"}}), flush=True)
        time.sleep(120)
        """
    )
    job = BackgroundAnalysis([sys.executable, "-c", script])
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not job.events:
        job.poll()
        assert time.monotonic() < deadline, "the test process did not start"
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert job.events[0]["step"] == "load"
    started = time.monotonic()
    job.cancel(grace_s=2)
    job.wait(timeout=10)
    assert time.monotonic() - started < 8
    assert job.cancelled and job.returncode != 0
    assert job.error_message() == "Cancelled by the user."
    for _ in range(50):  # the grandchild is gone too (reaped by init once killed)
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child)
    job.cleanup()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = f"/proc/{pid}/stat"
    if os.path.exists(stat):  # a zombie is dead
        with open(stat) as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    return True


@needs_engine
def test_background_analysis_end_to_end(module, tmp_path):
    """Apply as the panel does: NRRD export, `covidct analyze --json-progress` process, nodes from its output."""
    logic = module.module.CovidCTLogic()
    volume, phantom = logic.createPhantomVolume(shape=(40, 96, 96), spacing=(5.0, 3.0, 3.0), seed=4)
    job = logic.startBackground(volume, method="classical", device="cpu")
    workdir = job.workdir
    events = job.runner.wait(timeout=150)
    fractions = [e["fraction"] for e in events if e.get("event") == "progress"]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    done = job.runner.done_event()
    assert done is not None
    _, lungs, infection, report = read_outputs(done["outdir"])
    lobes = read_lobes(done["outdir"])  # shown as their own segmentation node
    nodes = logic.finishBackground(job, volume, surfaces=False)
    assert not workdir.exists()  # temporary export removed
    summary = logic.summaryFromTable(nodes["statistics"])
    assert summary["lungs.total_ml"] == pytest.approx(report["lungs"]["total_ml"])
    from CovidCTLib.mrml.segmentation import segment_array

    assert int(segment_array(nodes["segmentation"], "left_lung").sum()) == int((lungs == 2).sum())
    assert int(segment_array(nodes["segmentation"], "ggo").sum()) == int((infection == 1).sum())
    assert nodes["lobes"].GetSegmentation().GetNumberOfSegments() == 5
    assert int(segment_array(nodes["lobes"], "rll").sum()) == int((lobes == 3).sum()) > 0
    saved = logic.saveReport(volume, nodes["statistics"], tmp_path / "report")
    assert json.loads((tmp_path / "report" / "report.json").read_text())["lungs"] == report["lungs"]
    assert all(p.exists() for p in saved)


def test_failed_background_run_adds_nothing(module, tmp_path):
    logic = module.module.CovidCTLogic()
    image = __import__("SimpleITK").GetImageFromArray(__import__("numpy").zeros((4, 8, 8), "int16"))
    volume = add_volume_from_image(module.scene, image, "tiny")
    job = logic.startBackground(volume, method="classical", device="cpu")
    job.runner.wait(timeout=120)
    before = module.scene.GetNumberOfNodes()
    with pytest.raises(RuntimeError):
        logic.finishBackground(job, volume)
    assert module.scene.GetNumberOfNodes() == before
    assert not job.workdir.exists()


def test_python_executable_is_this_interpreter():
    from CovidCTLib.runner.background import python_executable

    exe = python_executable()
    out = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    assert out.returncode == 0


# ------------------------------------------------------------------------------------------ the panel
@pytest.fixture
def widget(module, monkeypatch, tmp_path):
    """The module widget set up on the real .ui widget names (Qt widgets stood in, logic/scene real)."""
    from slicer_fixture import install_widget_standins

    install_widget_standins(monkeypatch, dialog_folder=tmp_path / "saved")
    panel = module.module.CovidCTWidget()
    panel.setup()
    yield panel
    panel.cleanup()


def _run_until_idle(panel, timeout=150):
    deadline = time.monotonic() + timeout
    while panel._job is not None:
        assert time.monotonic() < deadline, "the background analysis did not end"
        panel._timer.fire()
        time.sleep(0.1)


def test_panel_setup(widget, module):
    ui = widget.ui
    assert [d for _, d in ui.methodComboBox.items] == ["auto", "classical", "model"]
    assert "not a diagnosis" in ui.disclaimerLabel.text
    assert "CPU" in ui.deviceStatusLabel.text or "GPU" in ui.deviceStatusLabel.text
    assert not ui.applyButton.enabled  # no input yet
    volume, _ = module.module.CovidCTLogic().createPhantomVolume(shape=(24, 48, 48), spacing=(6.0, 4.0, 4.0))
    widget._parameterNode.inputVolume = volume  # as the node selector would
    assert ui.applyButton.enabled and ui.applyButton.text == "Apply"
    ui.methodComboBox.currentIndex = 1
    ui.methodComboBox.emit("currentIndexChanged(int)", 1)
    assert widget._parameterNode.method == "classical"


def test_panel_failure_then_cancel(widget, module):
    """A CT without lungs: clear error, nothing added; then Apply + Cancel: stopped, nothing added."""
    import numpy as np
    import SimpleITK as sitk

    body = np.full((20, 48, 48), -1000, dtype=np.int16)
    body[:, 8:40, 8:40] = 40  # a soft-tissue block in air: a CT in HU, but no lung
    body += np.random.default_rng(0).integers(-10, 11, body.shape).astype(np.int16)  # plausible CT values
    image = sitk.GetImageFromArray(body)
    image.SetSpacing((3.0, 3.0, 5.0))
    volume = add_volume_from_image(module.scene, image, "soft tissue block")
    widget._parameterNode.inputVolume = volume
    widget._parameterNode.method = "classical"
    before = module.scene.GetNumberOfNodes()
    widget.ui.applyButton.emit("clicked(bool)", False)
    assert widget.ui.applyButton.text == "Cancel" and widget._timer.active
    _run_until_idle(widget)
    assert widget.ui.applyButton.text == "Apply" and not widget._timer.active
    status = widget.ui.statusLabel.text
    assert status.startswith("Failed:") and "lung" in status.lower(), status
    assert "input.nrrd" not in status  # the temporary export is never shown to the user
    assert module.shell.dialogs[-1][0] == "error"
    assert module.scene.GetNumberOfNodes() == before
    dialogs = len(module.shell.dialogs)
    widget.ui.applyButton.emit("clicked(bool)", False)
    job = widget._job
    widget.ui.applyButton.emit("clicked(bool)", False)  # Cancel
    _run_until_idle(widget, timeout=30)
    assert job.cancelled and widget.ui.statusLabel.text.startswith("Cancelled")
    assert len(module.shell.dialogs) == dialogs  # no error box for a cancel
    assert module.scene.GetNumberOfNodes() == before
    assert not job.workdir.exists() or not any(job.workdir.iterdir())


@needs_engine
def test_panel_apply_shows_results(widget, module, tmp_path):
    volume, _ = module.module.CovidCTLogic().createPhantomVolume(shape=(40, 96, 96), spacing=(5.0, 3.0, 3.0))
    node = widget._parameterNode
    node.inputVolume, node.method, node.device = volume, "classical", "cpu"
    views = [module.scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]  # the slice views
    assert not widget.ui.showHeatmapCheckBox.enabled and widget.ui.heatValueLabel.text == "-"
    widget.ui.applyButton.emit("clicked(bool)", False)
    other, _ = module.module.CovidCTLogic().createPhantomVolume(name="other", shape=(24, 48, 48), seed=9)
    node.inputVolume = other  # the user picks another volume while the analysis runs
    _run_until_idle(widget)
    assert node.segmentation.GetAttribute("CovidCT.InputVolume") == volume.GetID()
    assert node.segmentation is not None and node.statisticsTable is not None and node.lesionsTable is not None
    assert widget.ui.statusLabel.text.startswith("Done")
    assert "%" in widget.ui.involvementValueLabel.text
    report = json.loads(node.statisticsTable.GetAttribute("CovidCT.ReportJSON"))
    assert widget.ui.severityValueLabel.text == f"zones {report['severity_score']['total']} /30"
    # issue 14: the lobar score (0-25) stands next to the zone score
    assert report["severity_score_lobar"] is not None
    assert widget.ui.lobarSeverityValueLabel.text == f"lobes {report['severity_score_lobar']['total']} /25"
    assert "n/a" in widget.ui.probabilityValueLabel.text or "not a diagnosis" in widget.ui.probabilityValueLabel.text
    _check_heatmap_toggle(widget, node, views)
    assert widget.ui.saveReportButton.enabled
    widget.ui.saveReportButton.emit("clicked(bool)", False)
    assert (tmp_path / "saved" / "report.json").exists()
    widget.logic.lastResult = None  # as after a module reload: the result is rebuilt from the scene
    widget.ui.exportButton.emit("clicked(bool)", False)
    assert (tmp_path / "saved" / "segmentation.seg.nrrd").exists()
    assert (tmp_path / "saved" / "surfaces" / "left_lung.stl").exists()


def _check_heatmap_toggle(widget, node, views) -> None:
    """Issue 16.2: the heatmap is shown over the CT; "Show COVID heatmap" hides and shows it again."""
    from CovidCTLib.pipeline import classifier_available

    ui = widget.ui
    if not classifier_available():  # no classifier, no heatmap: the toggle stays off
        assert node.heatmapVolume is None and not ui.showHeatmapCheckBox.enabled and "n/a" in ui.heatValueLabel.text
        return
    heat = node.heatmapVolume
    assert heat is not None and heat.GetAttribute("CovidCT.InputVolume") == node.segmentation.GetAttribute(
        "CovidCT.InputVolume"
    )
    assert ui.showHeatmapCheckBox.enabled and ui.showHeatmapCheckBox.checked
    assert "% of the classifier's heat" in ui.heatValueLabel.text
    assert all(view.GetForegroundVolumeID() == heat.GetID() for view in views)
    ui.showHeatmapCheckBox.emit("toggled(bool)", False)
    assert all(view.GetForegroundVolumeID() is None for view in views)
    widget._updateGUI()
    assert not ui.showHeatmapCheckBox.checked
    ui.showHeatmapCheckBox.emit("toggled(bool)", True)
    assert all(view.GetForegroundVolumeID() == heat.GetID() for view in views)


@needs_engine
def test_panel_states_a_refused_model(widget, module, tmp_path, monkeypatch):
    """--method auto with modified lung weights: the run falls back to classical and the panel says so."""
    import shutil

    from CovidCTLib.models.runtime.registry import models_dir

    copy = tmp_path / "Models"
    shutil.copytree(models_dir(), copy)
    weights = copy / "lung-attunet" / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    monkeypatch.setenv("COVIDCT_MODELS_DIR", str(copy))  # inherited by the background process
    volume, _ = module.module.CovidCTLogic().createPhantomVolume(shape=(32, 80, 80), spacing=(5.0, 3.0, 3.0))
    node = widget._parameterNode
    node.inputVolume, node.method, node.device = volume, "auto", "cpu"
    widget.ui.applyButton.emit("clicked(bool)", False)
    _run_until_idle(widget)
    status = widget.ui.statusLabel.text
    assert status.startswith("Done") and "WARNING: Fallback: the trained segmentation model was REFUSED" in status
    assert str(weights) in status
    assert widget.logic.fallbackWarnings() and "REFUSED" in widget.logic.fallbackWarnings()[0]


def test_compare_section(widget, module):
    """Compare is wired to the logic; without the longitudinal parts it says so instead of failing."""
    logic = module.module.CovidCTLogic()
    base, _ = logic.createPhantomVolume(name="baseline", shape=(40, 96, 96), spacing=(5.0, 3.0, 3.0), seed=1)
    follow, _ = logic.createPhantomVolume(name="followup", shape=(40, 96, 96), spacing=(5.0, 3.0, 3.0), seed=2)
    widget._parameterNode.method = "classical"
    assert not widget.ui.compareButton.enabled
    widget._parameterNode.baselineVolume = base
    widget._parameterNode.followupVolume = follow
    assert widget.ui.compareButton.enabled
    if importlib.util.find_spec("CovidCTLib.mrml.compare") is None:
        widget.ui.compareButton.emit("clicked(bool)", False)
        assert "not installed" in widget.ui.compareStatusLabel.text
    else:
        with pytest.raises(ValueError, match="same volume"):
            logic.compare(base, base, interactive=False)
        widget.ui.compareButton.emit("clicked(bool)", False)
        assert widget._compareJob is not None  # runs in a background process: the GUI is not blocked
        assert widget.ui.compareStatusLabel.text.startswith("Comparing")
        deadline = time.monotonic() + 300
        while widget._compareJob is not None:
            assert time.monotonic() < deadline, "the background comparison did not end"
            widget._compareTimer.fire()
            time.sleep(0.1)
        assert widget.ui.compareStatusLabel.text.startswith("Comparison shown"), widget.ui.compareStatusLabel.text
        names = [
            module.scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode").GetName()
            for i in range(module.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))
        ]
        assert any("change" in name for name in names), names


def test_auto_falls_back_when_model_packages_missing(module, monkeypatch):
    from CovidCTLib.mrml import dependencies

    logic = module.module.CovidCTLogic()
    monkeypatch.setattr(logic, "installedModels", lambda: ["lung-unet 1.0"])
    monkeypatch.setitem(dependencies.GROUPS, "model", {"covidct-no-such-torch": "covidct_no_such_torch"})
    assert logic.ensureDependencies("auto", interactive=False) == []  # classical packages are there
    with pytest.raises(dependencies.DependencyError, match="covidct-no-such-torch"):
        logic.ensureDependencies("model", interactive=False)
    assert module.shell.dialogs == []


def test_reload_forgets_library_modules(module):
    """The developer Reload re-imports CovidCTLib: its modules are dropped from the module table given."""
    table = {"CovidCTLib": 1, "CovidCTLib.models.runtime.inference": 2, "CovidCTLibrary": 3, "numpy": 4}
    dropped = module.module.forgetLibraryModules(table)
    assert sorted(dropped) == ["CovidCTLib", "CovidCTLib.models.runtime.inference"]
    assert table == {"CovidCTLibrary": 3, "numpy": 4}
    assert callable(module.module.CovidCTWidget.onReload)


def test_logic_takes_its_runner_as_a_parameter(module, tmp_path):
    """The Logic starts the engine through the runner it was given (here one that records the command and
    reports a failure): nothing is added to the scene and the error is the runner's."""

    class RecordingRunner:
        commands: list[list[str]] = []

        def __init__(self, command, logdir=None):
            self.command = list(command)
            self.process = None  # no process: nothing is started
            RecordingRunner.commands.append(self.command)

        def error_message(self):
            return "engine refused the input (from the stand-in runner)"

        def done_event(self):
            return None

        def cancel(self, wait=False):
            return None

    logic = module.module.CovidCTLogic(runnerFactory=RecordingRunner)
    volume, _ = logic.createPhantomVolume(shape=(40, 96, 96), spacing=(5.0, 3.0, 3.0), seed=4)
    job = logic.startBackground(volume, method="classical", device="cpu")
    assert RecordingRunner.commands and RecordingRunner.commands[-1][3] == "analyze"
    assert "--json-progress" in RecordingRunner.commands[-1]
    before = module.scene.GetNumberOfNodes()
    with pytest.raises(RuntimeError, match="stand-in runner"):
        logic.finishBackground(job, volume)
    assert module.scene.GetNumberOfNodes() == before and not job.workdir.exists()


def test_panel_says_when_the_lobes_were_not_segmented(widget, monkeypatch):
    """8-bit input has no lobes: the lobar score row is NaN and the panel says n/a beside the zone score."""
    summary = {
        "covid_probability": None,
        "infection.percent_of_lungs": 1.0,
        "infection.right_percent": 1.5,
        "infection.left_percent": 0.5,
        "severity_score.total": 3.0,
        "severity_score_lobar.total": float("nan"),
    }
    monkeypatch.setattr(widget.logic, "summaryFromTable", lambda table: summary)
    widget._showSummary(object())
    assert widget.ui.severityValueLabel.text == "zones 3 /30"
    assert widget.ui.lobarSeverityValueLabel.text == "lobes n/a (not segmented)"
    summary["severity_score_lobar.total"] = 4.0
    widget._showSummary(object())
    assert widget.ui.lobarSeverityValueLabel.text == "lobes 4 /25"
