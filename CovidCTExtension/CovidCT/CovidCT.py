"""CovidCT: COVID-19 chest CT analysis in 3D Slicer (research software, not a diagnosis).

Module / Widget / Logic / Test as in Slicer's scripted-module template. The Widget binds the .ui to the
parameter node and calls the Logic; the Logic runs the engine (``CovidCTLib``) in a background process
(interactive) or in-process (blocking, for scripts and tests) and hands the result to ``CovidCTLib.mrml``,
which creates every MRML node.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


def libraryRoot() -> Path:
    """The folder that contains the ``CovidCTLib`` package.

    Built extension: the package is installed next to this file. Source checkout:
    ``<repo>/CovidCTExtension/CovidCT/CovidCT.py`` -> ``<repo>``.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here, here.parent, here.parent.parent):
        if (candidate / "CovidCTLib" / "__init__.py").is_file():
            return candidate
    raise ImportError(f"CovidCTLib not found next to {here} or in the source checkout above it")


_LIBRARY_ROOT = str(libraryRoot())
if _LIBRARY_ROOT not in sys.path:
    sys.path.insert(0, _LIBRARY_ROOT)

from CovidCTLib.version import DISCLAIMER, __version__  # noqa: E402


def forgetLibraryModules(modules: dict[str, Any] | None = None) -> list[str]:
    """Drop ``CovidCTLib`` and its sub-modules from ``modules`` (default ``sys.modules``) so the next import
    reads the library's files again; returns the names dropped. Used by the developer "Reload" button."""
    modules = sys.modules if modules is None else modules
    names = [name for name in modules if name == "CovidCTLib" or name.startswith("CovidCTLib.")]
    for name in names:
        del modules[name]
    return names


METHOD_LABELS = {
    "auto": "Automatic (trained models when installed, else classical)",
    "classical": "Classical (HU thresholds, no model)",
    "model": "Trained models",
}


#
# CovidCT
#


class CovidCT(ScriptedLoadableModule):
    """Module description shown in Slicer (see the template's ScriptedLoadableModule)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "CovidCT"
        self.parent.categories = ["Chest Imaging"]
        self.parent.dependencies = []
        self.parent.contributors = ["CovidCT developers"]
        self.parent.helpText = (
            "Segments the lungs and COVID-19 infection (ground-glass opacity, consolidation) on a chest CT, "
            "estimates a COVID probability when a classifier is installed, and quantifies involvement "
            "(volumes, per-lung percentages, CT severity score, lesion list).<br><b>" + DISCLAIMER + "</b>"
        )
        self.parent.acknowledgementText = (
            f"CovidCT {__version__}. Research software; not a medical device. Synthetic phantom sample data "
            "is generated locally."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Sample data: a synthetic chest CT generated locally (no download)
#


def _loadPhantomSample(source=None):
    """SampleData custom loader: build the phantom and add it to the scene."""
    volume, _ = CovidCTLogic().createPhantomVolume(name="CovidCTPhantom")
    return [volume]


def registerSampleData():
    """Add the synthetic phantom to the Sample Data module."""
    import SampleData

    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="CovidCT",
        sampleName="CovidCTPhantom",
        uris="covidct-phantom://generated-locally",
        fileNames="CovidCTPhantom.nrrd",
        nodeNames="CovidCTPhantom",
        thumbnailFileName=os.path.join(iconsPath, "CovidCT.png"),
        customDownloader=_loadPhantomSample,
    )


#
# Parameter node
#


@parameterNodeWrapper
class CovidCTParameterNode:
    """GUI state saved with the scene.

    inputVolume - the chest CT. method - auto / classical / model (set from the method combo box).
    device - where networks run. computeSurfaces / smoothing - 3-D surfaces of the segments.
    segmentation / statisticsTable / lesionsTable / heatmapVolume - the last results (heatmapVolume: the
    classifier's Grad-CAM heatmap, when one was made). baselineVolume / followupVolume -
    the longitudinal comparison inputs.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    method: str = "auto"
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    computeSurfaces: bool = True
    smoothing: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    segmentation: vtkMRMLSegmentationNode
    statisticsTable: vtkMRMLTableNode
    lesionsTable: vtkMRMLTableNode
    heatmapVolume: vtkMRMLScalarVolumeNode
    baselineVolume: vtkMRMLScalarVolumeNode
    followupVolume: vtkMRMLScalarVolumeNode


#
# CovidCTWidget
#


class CovidCTWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Binds the panel to the parameter node and forwards actions to the logic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._compareJob = None
        self._compareTimer = None
        self._timer = None
        self._deviceProbe = None

    def onReload(self) -> None:
        """Developer "Reload": re-import CovidCTLib as well, so library edits apply without restarting Slicer."""
        dropped = forgetLibraryModules()
        logging.info("CovidCT: reloading the module and %d CovidCTLib modules", len(dropped))
        ScriptedLoadableModuleWidget.onReload(self)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CovidCT.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CovidCTLogic()

        self._fillMethodComboBox()
        self.ui.disclaimerLabel.text = DISCLAIMER
        self.ui.progressBar.visible = False
        self.ui.resultsCollapsibleButton.collapsed = True
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onTimer)
        self._compareTimer = qt.QTimer()
        self._compareTimer.setInterval(300)
        self._compareTimer.connect("timeout()", self.onCompareTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)
        self.logic.restoreComparisonLayout()  # a scene loaded before the panel was first opened

        self.ui.methodComboBox.connect("currentIndexChanged(int)", self.onMethodChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.showTableButton.connect("clicked(bool)", self.onShowTable)
        self.ui.saveReportButton.connect("clicked(bool)", self.onSaveReport)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.compareButton.connect("clicked(bool)", self.onCompare)
        self.ui.showHeatmapCheckBox.connect("toggled(bool)", self.onShowHeatmap)

        self.initializeParameterNode()
        # Device detection imports torch (slow): do it once the panel is shown, never installing anything.
        qt.QTimer.singleShot(0, self._updateDeviceStatus)

    def cleanup(self) -> None:
        if self._compareTimer is not None:
            self._compareTimer.stop()
        if self._compareJob is not None:
            self._compareJob.runner.cancel(wait=True)
            self._compareJob.cleanup()
            self._compareJob = None
        if self._timer is not None:
            self._timer.stop()
        if self._job is not None:
            self._job.runner.cancel(wait=True)
            self._job.cleanup()
            self._job = None
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None:  # its input volume is going away
            self._timer.stop()
            self._job.runner.cancel(wait=True)
            self._job.cleanup()
            self._job = None
            self._setStatus("Cancelled: the scene was closed.")
        self.setParameterNode(None)

    def onSceneEndImport(self, caller, event) -> None:
        """A loaded scene (.mrb) may hold a comparison: Slicer does not save layouts, so register it again."""
        self.logic.restoreComparisonLayout()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
            self._updateGUI()

    # ------------------------------------------------------------------------------------------ GUI state
    def _fillMethodComboBox(self) -> None:
        combo = self.ui.methodComboBox
        combo.clear()
        models = self.logic.installedModels()
        for method in ("auto", "classical", "model"):
            label = METHOD_LABELS[method]
            if method == "model":
                label += ": " + (", ".join(models) if models else "none installed")
            combo.addItem(label, method)

    def onMethodChanged(self, index: int) -> None:
        if self._parameterNode is not None and index >= 0:
            self._parameterNode.method = self.ui.methodComboBox.itemData(index)

    def _updateDeviceStatus(self) -> None:
        """Show what device is available; torch is inspected in another process, never installed here."""
        from CovidCTLib.mrml.dependencies import device_probe_command, is_importable
        from CovidCTLib.runner.background import BackgroundAnalysis, python_executable

        if not is_importable("torch"):
            self.ui.deviceStatusLabel.text = "PyTorch not installed (CPU)"
            return
        self.ui.deviceStatusLabel.text = "checking for a GPU..."
        self._deviceProbe = BackgroundAnalysis(device_probe_command(python_executable()))
        self._pollDeviceProbe()

    def _pollDeviceProbe(self) -> None:
        probe = self._deviceProbe
        probe.poll()
        if not probe.finished:
            qt.QTimer.singleShot(250, self._pollDeviceProbe)
            return
        found = [e for e in probe.events if e.get("event") == "device"]
        self.ui.deviceStatusLabel.text = found[-1]["message"] if found else "GPU check failed; CPU"
        probe.cleanup()

    def _updateGUI(self, caller=None, event=None) -> None:
        node = self._parameterNode
        if node is None:
            return
        index = self.ui.methodComboBox.findData(node.method)
        if index >= 0 and index != self.ui.methodComboBox.currentIndex:
            self.ui.methodComboBox.currentIndex = index
        running = self._job is not None
        if running:
            self.ui.applyButton.text = "Cancel"
            self.ui.applyButton.toolTip = "Stop the running analysis"
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.text = "Apply"
            self.ui.applyButton.enabled = bool(node.inputVolume)
            self.ui.applyButton.toolTip = "Analyse the selected CT" if node.inputVolume else "Select an input CT volume"
        self.ui.smoothingSlider.enabled = node.computeSurfaces
        hasResults = bool(node.segmentation and node.statisticsTable)
        for button in (self.ui.showTableButton, self.ui.saveReportButton, self.ui.exportButton):
            button.enabled = hasResults and not running
        self.ui.compareButton.enabled = bool(node.baselineVolume and node.followupVolume) and not running
        self._showSummary(node.statisticsTable)
        self._showHeatmapState(node)

    def _showHeatmapState(self, node) -> None:
        """Issue 16.2: the toggle follows the heatmap node and whether the slice views show it."""
        from CovidCTLib.mrml.heatmap import heatmap_visible

        heat = node.heatmapVolume
        self.ui.showHeatmapCheckBox.enabled = heat is not None
        self.ui.showHeatmapCheckBox.checked = heatmap_visible(slicer.mrmlScene, heat)

    def onShowHeatmap(self, checked: bool) -> None:
        """Show or hide the Grad-CAM heatmap as the foreground of the slice views."""
        node = self._parameterNode
        if node is None:
            return
        self.logic.setHeatmapVisible(node.heatmapVolume, bool(checked))

    def _showSummary(self, table) -> None:
        summary = self.logic.summaryFromTable(table) if table else None
        if not summary:
            self.ui.probabilityValueLabel.text = "-"
            self.ui.involvementValueLabel.text = "-"
            self.ui.severityValueLabel.text = "-"
            self.ui.heatValueLabel.text = "-"
            self.ui.lobarSeverityValueLabel.text = "-"
            return
        self.ui.resultsCollapsibleButton.collapsed = False
        probability = summary.get("covid_probability")
        self.ui.probabilityValueLabel.text = (
            "n/a (no classifier installed)"
            if probability is None
            else f"{probability:.2f} (research use, not a diagnosis)"
        )
        category = summary.get("covid_assessment.category")  # issue 13: RSNA category, 0..3
        if category is not None and category == category:
            from CovidCTLib.assessment import CATEGORIES

            self.ui.probabilityValueLabel.text += f"; {CATEGORIES[int(category)]} appearance"
        self.ui.involvementValueLabel.text = (
            f"{summary['infection.percent_of_lungs']:.1f} % (right {summary['infection.right_percent']:.1f} %, "
            f"left {summary['infection.left_percent']:.1f} %)"
        )
        self.ui.severityValueLabel.text = f"zones {summary['severity_score.total']:.0f} /30"
        lobar = summary.get("severity_score_lobar.total")  # issue 14: NaN when the lobes were not segmented
        self.ui.lobarSeverityValueLabel.text = (
            "lobes n/a (not segmented)" if lobar is None or lobar != lobar else f"lobes {lobar:.0f} /25"
        )
        self.ui.heatValueLabel.text = self.logic.heatText(summary)

    def _setStatus(self, text: str, fraction: float | None = None) -> None:
        self.ui.statusLabel.text = text
        if fraction is not None:
            self.ui.progressBar.visible = True
            self.ui.progressBar.value = int(round(100 * fraction))
        slicer.app.processEvents()

    # ---------------------------------------------------------------------------------------- actions
    def onApplyButton(self) -> None:
        if self._job is not None:
            self._setStatus("Cancelling...")
            self.logic.cancelBackground(self._job)
            return
        node = self._parameterNode
        try:
            with slicer.util.tryWithErrorDisplay("CovidCT could not start the analysis.", waitCursor=True):
                self.logic.ensureDependencies(node.method, interactive=True)
                self._job = self.logic.startBackground(node.inputVolume, method=node.method, device=node.device)
                self._setStatus("Starting the analysis...", 0.0)
                self._timer.start()
        finally:
            self._updateGUI()

    def onTimer(self) -> None:
        job = self._job
        if job is None:
            self._timer.stop()
            return
        for event in job.poll():
            if event.get("event") == "progress":
                self._setStatus(event.get("message") or event.get("step", ""), float(event.get("fraction", 0.0)))
        if not job.finished:
            return
        self._timer.stop()
        self._job = None
        node = self._parameterNode
        if node is None:  # the scene was closed meanwhile: nothing to show the result on
            job.cleanup()
            return
        try:
            # the volume chosen when Apply was pressed, even if the selector changed during the run
            nodes = self.logic.finishBackground(
                job, job.inputVolume, surfaces=node.computeSurfaces, smoothing=node.smoothing
            )
        except Exception as error:  # noqa: BLE001 - shown to the user, scene left as it was
            self.ui.progressBar.visible = False
            if job.cancelled:
                self._setStatus("Cancelled; the scene was not changed.")
            else:
                self._setStatus(f"Failed: {error}")
                slicer.util.errorDisplay(f"CovidCT analysis failed:\n{error}")
            self._updateGUI()
            return
        node.segmentation = nodes["segmentation"]
        node.statisticsTable = nodes["statistics"]
        node.lesionsTable = nodes["lesions"]
        node.heatmapVolume = nodes.get("heatmap")
        self.ui.progressBar.visible = False
        warnings = "".join(f"WARNING: {text} " for text in self.logic.fallbackWarnings())  # issue 12: never silent
        self._setStatus(f"Done in {job.elapsed_s:.0f} s. {warnings}{DISCLAIMER}")
        self._updateGUI()

    def onShowTable(self) -> None:
        self.logic.showTable(self._parameterNode.statisticsTable)

    def _resultVolume(self):
        """The volume the shown results were computed on (falls back to the current input selection)."""
        return self.logic.inputVolumeOf(self._parameterNode.statisticsTable) or self._parameterNode.inputVolume

    def onSaveReport(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Save the CovidCT report into")
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay("Saving the report failed.", waitCursor=True):
            table = self._parameterNode.statisticsTable
            paths = self.logic.saveReport(self._resultVolume(), table, folder, interactive=True)
            self._setStatus("Report saved: " + ", ".join(p.name for p in paths))

    def onExport(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Export the CovidCT results into")
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
            paths = self.logic.exportResults(self._resultVolume(), folder, interactive=True)
            self._setStatus(f"Exported {len(paths)} files to {folder}")

    def onCompare(self) -> None:
        """Start the comparison in a background process; :meth:`onCompareTimer` shows it when it ends."""
        node = self._parameterNode
        if self._compareJob is not None:
            self.logic.cancelBackground(self._compareJob)
            self.ui.compareStatusLabel.text = "Cancelling the comparison..."
            return
        try:
            with slicer.util.tryWithErrorDisplay("Comparison failed.", waitCursor=True):
                self.logic.ensureDependencies(node.method, interactive=True)
                self._compareJob = self.logic.startCompare(
                    node.baselineVolume, node.followupVolume, method=node.method, device=node.device
                )
                self.ui.compareStatusLabel.text = "Comparing (registration can take a minute)..."
                self._compareTimer.start()
        except Exception as error:
            self.ui.compareStatusLabel.text = f"Failed: {error}"
            raise

    def onCompareTimer(self) -> None:
        job = self._compareJob
        if job is None:
            self._compareTimer.stop()
            return
        for event in job.poll():
            if event.get("event") == "progress":
                fraction = float(event.get("fraction", 0.0))
                self.ui.compareStatusLabel.text = f"Comparing: {event.get('message') or ''} ({100 * fraction:.0f} %)"
        if not job.finished:
            return
        self._compareTimer.stop()
        self._compareJob = None
        try:
            self.ui.compareStatusLabel.text = self.logic.finishCompare(job)
        except Exception as error:  # noqa: BLE001 - shown to the user, scene left as it was
            self.ui.compareStatusLabel.text = "Comparison cancelled." if job.cancelled else f"Failed: {error}"


#
# Background job bookkeeping
#


class CovidCTJob:
    """A running background analysis: the process, its temporary folder and the input volume."""

    def __init__(self, runner, workdir: Path, inputVolume) -> None:
        self.runner = runner
        self.workdir = workdir
        self.inputVolume = inputVolume
        self.started = time.monotonic()
        self.process = runner.process

    def poll(self) -> list[dict[str, Any]]:
        return self.runner.poll()

    @property
    def finished(self) -> bool:
        return self.runner.finished

    @property
    def cancelled(self) -> bool:
        return self.runner.cancelled

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def cancel(self) -> None:
        self.runner.cancel(wait=False)

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


#
# CovidCTLogic
#


class CovidCTLogic(ScriptedLoadableModuleLogic):
    """Runs the engine and puts its results into the scene; usable without the GUI.

    Blocking use (scripts, tests)::

        nodes = CovidCTLogic().process(volumeNode, method="classical", device="cpu", surfaces=True)
    """

    def __init__(self, runnerFactory=None) -> None:
        """``runnerFactory(command, logdir=...)`` starts a background engine process; default
        :class:`CovidCTLib.runner.background.BackgroundAnalysis` (tests pass their own)."""
        ScriptedLoadableModuleLogic.__init__(self)
        self.lastResult = None
        self.lastVolumeID = None  # the volume node lastResult belongs to
        self.runnerFactory = runnerFactory

    def getParameterNode(self):
        return CovidCTParameterNode(super().getParameterNode())

    # --------------------------------------------------------------------------------------- engine info
    @staticmethod
    def installedModels() -> list[str]:
        """``name version`` of every installed model (empty when none, or when the registry is absent)."""
        try:
            from CovidCTLib.models.runtime.registry import list_models

            return [f"{m.get('name')} {m.get('version')}" for m in list_models()]
        except Exception as error:  # noqa: BLE001 - a broken model folder must not break the panel
            logging.warning(f"CovidCT: could not list models: {error}")
            return []

    def ensureDependencies(self, method: str, interactive: bool = True) -> list[str]:
        """Install what the chosen method needs (asking first); returns what was installed.

        ``classical`` needs scipy/scikit-image, ``model`` also torch/monai (raises when they stay missing).
        ``auto`` offers torch/monai only when trained models are installed; if the user declines (or in
        scripts, ``interactive=False``) the analysis falls back to the classical method.
        """
        from CovidCTLib.mrml.dependencies import DependencyError, ensure_dependencies

        installed = ensure_dependencies(["classical", "model"] if method == "model" else ["classical"], interactive)
        if method == "auto" and self.installedModels():
            try:
                installed += ensure_dependencies(["model"], interactive)
            except DependencyError as error:
                logging.info(f"CovidCT: trained models not usable ({error}); the classical method is used")
        return installed

    # -------------------------------------------------------------------------------------- phantom input
    def createPhantomVolume(self, name: str = "CovidCTPhantom", **phantomArgs):
        """Add the synthetic chest CT phantom as a volume node; returns ``(volumeNode, phantom)``."""
        from CovidCTLib.mrml import add_volume_from_image
        from CovidCTLib.mrml.display import set_lung_window
        from CovidCTLib.phantom import make_phantom

        phantom = make_phantom(**phantomArgs)
        volume = add_volume_from_image(slicer.mrmlScene, phantom.ct.image, name)
        set_lung_window(volume)
        return volume, phantom

    @staticmethod
    def volumeToCT(inputVolume):
        """The volume node as an engine ``CTVolume`` (HU assumed for a scalar CT volume)."""
        from CovidCTLib.mrml import image_from_volume_node
        from CovidCTLib.volume import CTVolume

        image = image_from_volume_node(inputVolume)
        return CTVolume(image=image, intensity="HU", source=inputVolume.GetName(), modality="CT")

    # ------------------------------------------------------------------------------------ blocking mode
    def process(
        self,
        inputVolume,
        method: str = "auto",
        device: str = "auto",
        surfaces: bool = True,
        smoothing: float = 0.5,
        interactive: bool = False,
        progressCallback=None,
    ) -> dict[str, Any]:
        """Analyse ``inputVolume`` in this process and create the result nodes; returns them by role.

        ``interactive`` allows asking the user to install missing packages. Nothing is added to the scene
        when the analysis fails.
        """
        if not inputVolume or inputVolume.GetImageData() is None:
            raise ValueError("Select an input CT volume that has voxel data.")
        from CovidCTLib.mrml import result_to_mrml
        from CovidCTLib.pipeline import analyze
        from CovidCTLib.progress import Reporter

        self.ensureDependencies(method, interactive=interactive)
        start = time.time()
        reporter = Reporter(progressCallback)
        result = analyze(self.volumeToCT(inputVolume), method=method, device=device, reporter=reporter)
        nodes = result_to_mrml(slicer.mrmlScene, inputVolume, result, surfaces=surfaces, smoothing=smoothing)
        self.lastResult = result
        self._remember(inputVolume, nodes)
        logging.info(f"CovidCT: analysis of {inputVolume.GetName()} finished in {time.time() - start:.1f} s")
        return nodes

    def _remember(self, inputVolume, nodes: dict[str, Any]) -> None:
        self.lastVolumeID = inputVolume.GetID()
        inputVolume.SetAttribute("CovidCT.Segmentation", nodes["segmentation"].GetID())
        inputVolume.SetAttribute("CovidCT.Statistics", nodes["statistics"].GetID())
        heat = nodes.get("heatmap")
        inputVolume.SetAttribute("CovidCT.Heatmap", heat.GetID() if heat is not None else "")
        report = getattr(self.lastResult, "report", None)
        if report is not None:
            nodes["statistics"].SetAttribute("CovidCT.ReportJSON", json.dumps(report, default=str))

    # ---------------------------------------------------------------------------------- background mode
    def startBackground(self, inputVolume, method: str = "auto", device: str = "auto") -> CovidCTJob:
        """Export the volume to a temporary NRRD and start ``covidct analyze --json-progress`` on it."""
        import SimpleITK as sitk

        from CovidCTLib.mrml import image_from_volume_node
        from CovidCTLib.runner.background import BackgroundAnalysis, analyze_command

        startRunner = self.runnerFactory or BackgroundAnalysis
        if not inputVolume or inputVolume.GetImageData() is None:
            raise ValueError("Select an input CT volume that has voxel data.")
        workdir = Path(tempfile.mkdtemp(prefix="CovidCT-"))
        try:
            inputPath = workdir / "input.nrrd"
            sitk.WriteImage(image_from_volume_node(inputVolume), str(inputPath), False)  # temporary: no compression
            runner = startRunner(analyze_command(inputPath, workdir / "out", method, device), logdir=workdir / "log")
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return CovidCTJob(runner, workdir, inputVolume)

    def cancelBackground(self, job: CovidCTJob) -> None:
        job.cancel()

    def finishBackground(self, job: CovidCTJob, inputVolume, surfaces: bool = True, smoothing: float = 0.5):
        """Load a finished background run into the scene (or raise its error); removes its temp folder."""
        from CovidCTLib.mrml import check_result_geometry, results_to_mrml
        from CovidCTLib.results import AnalysisResult
        from CovidCTLib.runner.background import read_heatmap, read_lobes, read_outputs

        try:
            error = job.runner.error_message()
            if error:
                # the engine names its input file: name the volume instead of the temporary export
                raise RuntimeError(error.replace(str(job.workdir / "input.nrrd"), f"'{inputVolume.GetName()}'"))
            done = job.runner.done_event()
            if done is None:
                raise RuntimeError("The analysis ended without reporting its outputs.")
            outdir = Path(done.get("outdir") or job.workdir / "out")
            lungsImage, lungs, infection, report = read_outputs(outdir)
            lobes = read_lobes(outdir)
            heatmap = read_heatmap(outdir)
            check_result_geometry(inputVolume, lungsImage)
            nodes = results_to_mrml(
                slicer.mrmlScene,
                inputVolume,
                lungs,
                infection,
                report,
                surfaces=surfaces,
                smoothing=smoothing,
                lobes=lobes,
                heatmap=heatmap,
            )
            self.lastResult = AnalysisResult(
                ct=self.volumeToCT(inputVolume),
                lungs=lungs,
                infection=infection,
                report=report,
                covid_probability=report.get("covid_probability"),
                method=str(report.get("method", "")),
                model_versions=dict((report.get("versions") or {}).get("models") or {}),
                lobes=lobes,
                heatmap=heatmap,
            )
            self._remember(inputVolume, nodes)
            return nodes
        finally:
            job.cleanup()

    # ---------------------------------------------------------------------------------------- results
    def fallbackWarnings(self) -> list[str]:
        """The fallbacks of the last analysis (a refused or missing model), to show in the panel."""
        report = self.lastResult.report if self.lastResult is not None else {}
        return [str(text) for text in report.get("fallbacks") or []]

    @staticmethod
    def heatText(summary: dict[str, Any]) -> str:
        """The panel line of the heat-in-infection fraction (issue 16.2), from the statistics-table summary."""
        value = summary.get("explanation.heat_in_infection")
        if value is None or value != value:
            return "n/a (no classifier heatmap)"
        return f"{100 * float(value):.1f} % of the classifier's heat lies in the segmented infection"

    @staticmethod
    def setHeatmapVisible(heatNode, visible: bool) -> int:
        """Show (or hide) the heatmap as the slice views' foreground; returns the number of views changed."""
        from CovidCTLib.mrml.heatmap import set_heatmap_visible

        return set_heatmap_visible(slicer.mrmlScene, heatNode, visible)

    @staticmethod
    def summaryFromTable(table) -> dict[str, Any] | None:
        """Key numbers from a statistics table node (``None`` for a missing/foreign table)."""
        if table is None or table.GetTable() is None or table.GetTable().GetColumnByName("Key") is None:
            return None
        from CovidCTLib.mrml.tables import table_rows

        values = {row["Key"]: row["Value"] for row in table_rows(table)}
        summary: dict[str, Any] = {key: values.get(key, float("nan")) for key in values}
        probability = values.get("covid_probability")
        summary["covid_probability"] = None if probability is None or probability != probability else probability
        return summary

    def resultFor(self, inputVolume, statisticsTable=None):
        """The analysis result of ``inputVolume`` (re-read from the scene when needed, e.g. after reload)."""
        if self.lastResult is not None and self.lastVolumeID == inputVolume.GetID():
            return self.lastResult
        from CovidCTLib.mrml.segmentation import segment_array
        from CovidCTLib.results import AnalysisResult

        segmentation = slicer.mrmlScene.GetNodeByID(inputVolume.GetAttribute("CovidCT.Segmentation") or "")
        table = statisticsTable or slicer.mrmlScene.GetNodeByID(inputVolume.GetAttribute("CovidCT.Statistics") or "")
        if segmentation is None or table is None or not table.GetAttribute("CovidCT.ReportJSON"):
            raise ValueError("No CovidCT result for this volume in the scene; press Apply first.")
        lungs = segment_array(segmentation, "right_lung") + 2 * segment_array(segmentation, "left_lung")
        infection = segment_array(segmentation, "ggo") + 2 * segment_array(segmentation, "consolidation")
        report = json.loads(table.GetAttribute("CovidCT.ReportJSON"))
        heatNode = slicer.mrmlScene.GetNodeByID(inputVolume.GetAttribute("CovidCT.Heatmap") or "")
        heatmap = None
        if heatNode is not None and heatNode.GetImageData() is not None:
            from CovidCTLib.mrml.geometry import array_from_image_data

            heatmap = array_from_image_data(heatNode.GetImageData()).astype("float32")
        return AnalysisResult(
            ct=self.volumeToCT(inputVolume),
            lungs=lungs.astype("uint8"),
            infection=infection.astype("uint8"),
            report=report,
            covid_probability=report.get("covid_probability"),
            method=str(report.get("method", "")),
            heatmap=heatmap,
        )

    def _reportsAvailable(self, interactive: bool) -> bool:
        """True when the HTML/PDF report writer is installed (its packages installed on first use)."""
        from CovidCTLib.mrml.dependencies import is_importable

        if not is_importable("CovidCTLib.outputs.html_pdf"):
            return False
        if interactive:
            self._ensureGroup("report")
        from CovidCTLib.mrml.dependencies import missing_packages

        return not missing_packages(["report"])

    def _ensureGroup(self, group: str) -> None:
        from CovidCTLib.mrml.dependencies import ensure_dependencies

        ensure_dependencies([group], interactive=True)

    @staticmethod
    def inputVolumeOf(resultNode):
        """The volume a CovidCT result node (segmentation or table) was computed on, or None."""
        if resultNode is None or not resultNode.GetAttribute("CovidCT.InputVolume"):
            return None
        return slicer.mrmlScene.GetNodeByID(resultNode.GetAttribute("CovidCT.InputVolume"))

    def saveReport(self, inputVolume, statisticsTable, folder, interactive: bool = False) -> list[Path]:
        """report.json + report.csv, and report.html/.pdf when the report module is installed (one output set)."""
        from CovidCTLib.outputs.base import OutputOptions
        from CovidCTLib.outputs.registry import REPORT_WRITERS, write_outputs

        result = self.resultFor(inputVolume, statisticsTable)
        reports = self._reportsAvailable(interactive)
        if not reports:
            logging.info("CovidCT: HTML/PDF report not available; writing report.json and report.csv")
        written = write_outputs(
            result, Path(folder), overwrite=True, options=OutputOptions(reports=reports), only=REPORT_WRITERS
        )
        return list(written.values())

    def exportResults(self, inputVolume, folder, interactive: bool = False) -> list[Path]:
        """Every engine output (labelmaps, seg.nrrd, reports, STL surfaces) into ``folder``, from the writer
        registry (one output set: a folder holding other files is refused, never overwritten)."""
        from CovidCTLib.outputs.base import OutputOptions
        from CovidCTLib.outputs.registry import write_outputs

        result = self.resultFor(inputVolume)
        options = OutputOptions(reports=self._reportsAvailable(interactive), dicom_seg=False, surfaces="stl")
        written = write_outputs(result, Path(folder), overwrite=True, options=options)
        return list(written.values())

    def showTable(self, table) -> None:
        """Show a table node in a table view (application only)."""
        layoutManager = slicer.app.layoutManager() if hasattr(slicer.app, "layoutManager") else None
        if table is None or layoutManager is None:
            return
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetActiveTableID(table.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()

    # ------------------------------------------------------------------------------------ longitudinal
    def restoreComparisonLayout(self) -> bool:
        """Re-register the side-by-side layout of a comparison saved in the scene; False when there is none."""
        try:
            from CovidCTLib.mrml.compare import restore_comparison_layout
        except ImportError:
            return False
        return restore_comparison_layout(slicer.mrmlScene)

    def startCompare(self, baselineVolume, followupVolume, method: str = "auto", device: str = "auto") -> CovidCTJob:
        """Export both volumes and start ``covidct compare --json-progress`` on them in the background."""
        import SimpleITK as sitk

        from CovidCTLib.mrml import image_from_volume_node
        from CovidCTLib.runner.background import BackgroundAnalysis, compare_command

        if not baselineVolume or not followupVolume:
            raise ValueError("Select a baseline and a follow-up volume.")
        if baselineVolume == followupVolume:
            raise ValueError("Baseline and follow-up are the same volume; select two scans of the patient.")
        startRunner = self.runnerFactory or BackgroundAnalysis
        workdir = Path(tempfile.mkdtemp(prefix="CovidCT-compare-"))
        try:
            inputs = []
            for label, volume in (("baseline", baselineVolume), ("followup", followupVolume)):
                path = workdir / f"{label}.nrrd"
                sitk.WriteImage(image_from_volume_node(volume), str(path), False)
                inputs.append(path)
            runner = startRunner(compare_command(inputs, workdir / "out", method, device), logdir=workdir / "log")
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        job = CovidCTJob(runner, workdir, baselineVolume)
        job.followupVolume = followupVolume
        return job

    def finishCompare(self, job: CovidCTJob) -> str:
        """Show a finished background comparison (or raise its error); removes its temporary folder."""
        from CovidCTLib.longitudinal.readback import read_compare_outputs
        from CovidCTLib.mrml.compare import show_comparison

        try:
            error = job.runner.error_message()
            if error:
                for label, volume in (("baseline", job.inputVolume), ("followup", job.followupVolume)):
                    error = error.replace(str(job.workdir / f"{label}.nrrd"), f"'{volume.GetName()}'")
                raise RuntimeError(error)
            done = job.runner.done_event()
            if done is None:
                raise RuntimeError("The comparison ended without reporting its outputs.")
            cts = [self.volumeToCT(job.inputVolume), self.volumeToCT(job.followupVolume)]
            result = read_compare_outputs(Path(done.get("outdir") or job.workdir / "out"), cts)
            show_comparison(slicer.mrmlScene, job.inputVolume, job.followupVolume, result)
        finally:
            job.cleanup()
        return "Comparison shown (research use, not a diagnosis)."

    def compare(
        self,
        baselineVolume,
        followupVolume,
        method: str = "auto",
        device: str = "auto",
        interactive: bool = True,
        timeout: float = 900.0,
    ) -> str:
        """Blocking comparison (scripts, tests): :meth:`startCompare`, wait, :meth:`finishCompare`."""
        self.ensureDependencies(method, interactive=interactive)
        job = self.startCompare(baselineVolume, followupVolume, method, device)
        job.runner.wait(timeout=timeout)
        return self.finishCompare(job)


#
# CovidCTTest
#


class CovidCTTest(ScriptedLoadableModuleTest):
    """Self-test on the synthetic phantom (runs in Slicer via "Reload and Test", and in CI)."""

    #: small phantom so that the test runs in seconds on a laptop CPU
    PHANTOM = {"shape": (40, 96, 96), "spacing": (5.0, 3.0, 3.0), "seed": 3}

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_CovidCT_Phantom()
        self.setUp()
        self.test_CovidCT_ObliqueGeometry()
        self.setUp()
        self.test_CovidCT_FailureLeavesScene()

    def test_CovidCT_Phantom(self):
        """Blocking analysis of the phantom: nodes, segment names, volumes near the truth, table = report."""
        import numpy as np

        from CovidCTLib.labels import SEGMENTS
        from CovidCTLib.mrml.segmentation import segment_array

        self.delayDisplay("Analysing the synthetic phantom")
        logic = CovidCTLogic()
        volume, phantom = logic.createPhantomVolume(**self.PHANTOM)
        nodes = logic.process(volume, method="classical", device="cpu", surfaces=True, smoothing=0.5)
        segmentation = nodes["segmentation"]
        self.assertEqual(
            [segmentation.GetSegmentation().GetSegment(s.key).GetName() for s in SEGMENTS],
            [s.name for s in SEGMENTS],
        )
        voxelMl = phantom.ct.voxel_volume_ml
        report = logic.lastResult.report
        for key, label in (("right_lung", 1), ("left_lung", 2)):
            found = segment_array(segmentation, key).astype(bool)
            truth = phantom.lungs == label
            dice = 2 * np.logical_and(found, truth).sum() / (found.sum() + truth.sum())
            self.assertGreater(dice, 0.85, f"{key} Dice {dice:.3f}")
        truthLungMl = float((phantom.lungs > 0).sum() * voxelMl)
        self.assertAlmostEqual(report["lungs"]["total_ml"], truthLungMl, delta=0.15 * truthLungMl)
        truthInfectionMl = float((phantom.infection > 0).sum() * voxelMl)
        self.assertGreater(report["infection"]["total_ml"], 0.3 * truthInfectionMl)
        self.assertLess(report["infection"]["total_ml"], 2.0 * truthInfectionMl + 5.0)
        summary = logic.summaryFromTable(nodes["statistics"])
        self.assertAlmostEqual(summary["lungs.total_ml"], report["lungs"]["total_ml"], places=6)
        self.assertAlmostEqual(summary["infection.percent_of_lungs"], report["infection"]["percent_of_lungs"], places=6)
        self.assertEqual(summary["severity_score.total"], report["severity_score"]["total"])
        poly = vtk.vtkPolyData()
        self.assertTrue(segmentation.GetClosedSurfaceRepresentation("right_lung", poly))
        self.assertGreater(poly.GetNumberOfPoints(), 100)
        self.assertEqual(volume.GetDisplayNode().GetWindow(), 1500)
        self.delayDisplay("Phantom test passed")

    def test_CovidCT_ObliqueGeometry(self):
        """On an oblique phantom the result lies exactly on the input grid."""
        import numpy as np

        from CovidCTLib.mrml import results_to_mrml
        from CovidCTLib.mrml.geometry import numpy_matrix, volume_ijk_to_ras

        logic = CovidCTLogic()
        volume, phantom = logic.createPhantomVolume(oblique=True, **self.PHANTOM)
        nodes = results_to_mrml(slicer.mrmlScene, volume, phantom.lungs, phantom.infection, {}, surfaces=False)
        labelmapName = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
        layer = nodes["segmentation"].GetSegmentation().GetSegment("left_lung").GetRepresentation(labelmapName)
        matrix = vtk.vtkMatrix4x4()
        layer.GetImageToWorldMatrix(matrix)
        self.assertTrue(np.allclose(numpy_matrix(matrix), volume_ijk_to_ras(volume), atol=1e-6))
        self.assertEqual(layer.GetExtent(), volume.GetImageData().GetExtent())

    def test_CovidCT_FailureLeavesScene(self):
        """A volume without lungs fails with a clear message and adds no node."""
        import numpy as np
        import SimpleITK as sitk

        from CovidCTLib.errors import CovidCTError
        from CovidCTLib.mrml import add_volume_from_image

        body = np.full((20, 48, 48), -1000, dtype=np.int16)
        body[:, 8:40, 8:40] = 40  # a soft-tissue block in air, with noise: a plausible CT in HU, but no lung
        body += np.random.default_rng(0).integers(-10, 11, body.shape).astype(np.int16)
        image = sitk.GetImageFromArray(body)
        image.SetSpacing((3.0, 3.0, 5.0))
        volume = add_volume_from_image(slicer.mrmlScene, image, "soft tissue block")
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(CovidCTError) as context:
            CovidCTLogic().process(volume, method="classical", device="cpu")
        self.assertIn("lung", str(context.exception).lower())
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
