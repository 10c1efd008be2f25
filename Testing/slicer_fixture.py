"""A real MRML scene (slicer-core wheel) for tests that run without the Slicer application.

What is real: the MRML scene, the application logic, the core module logics the CovidCT adapter needs
(colors, segmentations, subject hierarchy, volumes, tables), VTK, the engine and our code.

What is stood in for (only the Slicer *application shell*, which the wheel does not have), see
:func:`install_app_standins`:

* ``slicer.app`` (``connect`` records connections; no layout manager, so no views are touched),
* ``slicer.mrmlScene`` (points at the real test scene), ``slicer.modules`` (empty namespace),
* ``slicer.ScriptedLoadableModule`` base classes (plain Python / ``unittest.TestCase``;
  ``getParameterNode`` returns a real ``vtkMRMLScriptedModuleNode`` singleton of the scene),
* ``slicer.parameterNodeWrapper`` (the decorator keeps the class and its annotations, its instances wrap
  the real parameter node and hold plain attributes; ``WithinRange``/``Choice`` record their arguments),
  and empty ``qt`` / ``ctk`` modules (the widget is never built in CI),
* ``slicer.util`` dialog helpers that need a GUI (``confirmOkCancelDisplay`` answers "Cancel" and records
  the question, ``errorDisplay``/``infoDisplay``/``delayDisplay`` record the message).
* optionally (:func:`install_widget_standins`) the Qt widgets of the panel: ``slicer.util.loadUI`` builds one
  plain attribute object per widget named in the real ``CovidCT.ui``, ``qt.QTimer`` is fired by the test,
  ``qt.QFileDialog`` answers a given folder. The Widget's own code runs unchanged against them.
"""

from __future__ import annotations

import sys
import types
import unittest
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from required import require_module  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO_ROOT / "CovidCTExtension" / "CovidCT"


@dataclass
class MRMLContext:
    """A scene with its application logic and the module logics, keyed by module name."""

    scene: Any
    app_logic: Any
    logics: dict[str, Any] = field(default_factory=dict)


def make_mrml_context() -> MRMLContext:
    """Build a scene + ``vtkSlicerApplicationLogic`` and register the core module logics on it."""
    slicer = require_module("slicer", reason="slicer-core wheel not installed")
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    logics: dict[str, Any] = {}
    for name, class_name in (
        ("Colors", "vtkMRMLColorLogic"),
        ("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
        ("Segmentations", "vtkSlicerSegmentationsModuleLogic"),
        ("Volumes", "vtkSlicerVolumesLogic"),
        ("Tables", "vtkSlicerTablesLogic"),
    ):
        logic = getattr(slicer, class_name)()
        if hasattr(logic, "SetMRMLApplicationLogic"):
            logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, logic)
        logics[name] = logic
    return MRMLContext(scene, app_logic, logics)


# ------------------------------------------------------------------------------------ application shell
class _AppStandIn:
    """``slicer.app`` without a GUI: records signal connections, has no layout manager."""

    def __init__(self) -> None:
        self.connections: list[tuple[str, Any]] = []
        self.commandOptions = types.SimpleNamespace(noMainWindow=True)

    def connect(self, signal: str, slot: Any) -> None:
        self.connections.append((signal, slot))

    def layoutManager(self) -> None:
        return None

    def processEvents(self, *args: Any) -> None:
        return None

    def setOverrideCursor(self, cursor: Any) -> None:
        return None

    def restoreOverrideCursor(self) -> None:
        return None

    def testingEnabled(self) -> bool:
        return False

    def topLevelWidgets(self) -> list[Any]:
        return []


def _scripted_loadable_module(scene_getter: Any) -> types.ModuleType:
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent: Any) -> None:
            self.parent = parent
            self.moduleName = type(self).__name__

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent: Any = None) -> None:
            self.parent = parent or types.SimpleNamespace(isEntered=True)
            self.moduleName = type(self).__name__[: -len("Widget")]
            self.layout = types.SimpleNamespace(widgets=[], addWidget=lambda w: self.layout.widgets.append(w))

        def setup(self) -> None:
            return None

        def resourcePath(self, filename: str) -> str:
            return str(MODULE_DIR / "Resources" / filename)

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent: Any = None) -> None:
            self.moduleName = type(self).__name__[: -len("Logic")]

        def getParameterNode(self) -> Any:
            scene = scene_getter()
            node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
                node.SetSingletonTag(self.moduleName)
                node.SetModuleName(self.moduleName)
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message: str, msec: int = 1000) -> None:
            print(message)

    module.ScriptedLoadableModule = ScriptedLoadableModule
    module.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    module.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    module.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    module.__all__ = [
        "ScriptedLoadableModule",
        "ScriptedLoadableModuleWidget",
        "ScriptedLoadableModuleLogic",
        "ScriptedLoadableModuleTest",
    ]
    return module


def _parameter_node_wrapper() -> types.ModuleType:
    module = types.ModuleType("slicer.parameterNodeWrapper")

    @dataclass
    class WithinRange:
        minimum: float
        maximum: float

    @dataclass
    class Choice:
        choices: list[Any]

    def parameterNodeWrapper(cls: type) -> type:
        """Keeps the annotations; instances wrap the real node and hold plain attribute values."""

        def wrap(self: Any, parameterNode: Any) -> None:
            object.__setattr__(self, "parameterNode", parameterNode)

        def assign(self: Any, name: str, value: Any) -> None:
            object.__setattr__(self, name, value)
            if name in cls.__annotations__:
                self.parameterNode.Modified()  # like the real wrapper, which writes into the node

        cls.__init__ = wrap
        cls.__setattr__ = assign
        cls.connectGui = lambda self, ui: object()
        cls.disconnectGui = lambda self, tag: None
        cls.AddObserver = lambda self, *args: self.parameterNode.AddObserver(*args)
        cls.RemoveObserver = lambda self, *args: self.parameterNode.RemoveObserver(*args)
        for name in cls.__annotations__:
            if not hasattr(cls, name):
                setattr(cls, name, None)
        cls.__covidct_standin__ = True
        return cls

    module.WithinRange = WithinRange
    module.Choice = Choice
    module.parameterNodeWrapper = parameterNodeWrapper
    return module


@dataclass
class AppShell:
    """What the stand-ins recorded: dialogs shown, app connections."""

    app: _AppStandIn
    dialogs: list[tuple[str, str]]


def install_app_standins(monkeypatch: pytest.MonkeyPatch, context: MRMLContext) -> AppShell:
    """Stand in for the Slicer application shell (see the module docstring) around a real scene."""
    import slicer

    dialogs: list[tuple[str, str]] = []
    app = _AppStandIn()
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", context.scene, raising=False)
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(), raising=False)
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    monkeypatch.setitem(sys.modules, "ctk", types.ModuleType("ctk"))
    slm = _scripted_loadable_module(lambda: slicer.mrmlScene)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    monkeypatch.setattr(slicer, "ScriptedLoadableModule", slm, raising=False)
    pnw = _parameter_node_wrapper()
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", pnw)
    monkeypatch.setattr(slicer, "parameterNodeWrapper", pnw, raising=False)

    def record(kind: str, answer: Any = None) -> Any:
        def display(text: str, *args: Any, **kwargs: Any) -> Any:
            dialogs.append((kind, str(text)))
            return answer

        return display

    for target in (slicer, slicer.util):
        monkeypatch.setattr(target, "confirmOkCancelDisplay", record("confirm", False), raising=False)
        monkeypatch.setattr(target, "errorDisplay", record("error"), raising=False)
        monkeypatch.setattr(target, "infoDisplay", record("info"), raising=False)
        monkeypatch.setattr(target, "delayDisplay", record("delay"), raising=False)
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    monkeypatch.delitem(sys.modules, "CovidCT", raising=False)
    return AppShell(app, dialogs)


# ------------------------------------------------------------------------------- widgets of the .ui file
class FakeWidget:
    """A widget of the .ui file with the PythonQt surface the module uses (properties as attributes,
    ``connect("signal(args)", slot)``, combo-box items). ``emit`` plays a user action."""

    def __init__(self, name: str, class_name: str) -> None:
        self.name, self.className = name, class_name
        self.text, self.toolTip = "", ""
        self.enabled = self.visible = True
        self.collapsed, self.checked = False, False
        self.value, self.currentIndex = 0, -1
        self.items: list[tuple[str, Any]] = []
        self.slots: dict[str, list[Any]] = {}
        self.scene = None

    def connect(self, signal: str, slot: Any) -> None:
        self.slots.setdefault(signal, []).append(slot)

    def emit(self, signal: str, *args: Any) -> None:
        """Call the connected slots; like PythonQt, a slot taking fewer parameters gets fewer arguments."""
        import inspect

        for slot in self.slots.get(signal, []):
            parameters = inspect.signature(slot).parameters.values()
            if any(p.kind == p.VAR_POSITIONAL for p in parameters):
                slot(*args)
            else:
                slot(*args[: len([p for p in parameters if p.default is p.empty])])

    def setMRMLScene(self, scene: Any) -> None:
        self.scene = scene

    def clear(self) -> None:
        self.items, self.currentIndex = [], -1

    def addItem(self, text: str, data: Any = None) -> None:
        self.items.append((text, data))
        if self.currentIndex < 0:
            self.currentIndex = 0

    def itemData(self, index: int) -> Any:
        return self.items[index][1]

    def itemText(self, index: int) -> str:
        return self.items[index][0]

    def findData(self, data: Any) -> int:
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)


class _Timer:
    """qt.QTimer driven by the test: ``fire()`` calls the connected slots while started."""

    def __init__(self) -> None:
        self.active, self.interval, self.slots = False, 0, []

    def setInterval(self, msec: int) -> None:
        self.interval = msec

    def connect(self, signal: str, slot: Any) -> None:
        self.slots.append(slot)

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    def fire(self) -> None:
        for slot in list(self.slots):
            slot()

    @staticmethod
    def singleShot(msec: int, slot: Any) -> None:
        """Run the slot after the delay (blocking: the test has no event loop)."""
        import time

        time.sleep(msec / 1000.0)
        slot()


def install_widget_standins(monkeypatch: pytest.MonkeyPatch, dialog_folder: Path | None = None) -> None:
    """Stand in for Qt widgets: ``loadUI`` returns one :class:`FakeWidget` per widget of the real .ui file
    (so using a widget the .ui lacks fails), ``qt.QTimer`` is test-driven, ``QFileDialog`` answers
    ``dialog_folder``. Call after :func:`install_app_standins`."""
    import xml.etree.ElementTree as ET

    import slicer

    qt = sys.modules["qt"]
    qt.QTimer = _Timer
    qt.Qt = types.SimpleNamespace(WaitCursor=3)
    qt.QFileDialog = types.SimpleNamespace(
        getExistingDirectory=lambda *args: str(dialog_folder) if dialog_folder else ""
    )

    def load_ui(path: str) -> Any:
        root = ET.parse(path).getroot()
        top = FakeWidget("CovidCT", "qMRMLWidget")
        top.children = {w.get("name"): FakeWidget(w.get("name"), w.get("class")) for w in root.iter("widget")}
        return top

    def child_widget_variables(widget: Any) -> Any:
        return types.SimpleNamespace(**widget.children)

    monkeypatch.setattr(slicer.util, "loadUI", load_ui)
    monkeypatch.setattr(slicer.util, "childWidgetVariables", child_widget_variables)
