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
"""

from __future__ import annotations

import sys
import types
import unittest
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

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
    slicer = pytest.importorskip("slicer", reason="slicer-core wheel not installed")
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

    def processEvents(self) -> None:
        return None


def _scripted_loadable_module(scene_getter: Any) -> types.ModuleType:
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent: Any) -> None:
            self.parent = parent
            self.moduleName = type(self).__name__

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent: Any = None) -> None:
            self.parent = parent
            self.moduleName = type(self).__name__[: -len("Widget")]

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
            self.parameterNode = parameterNode

        cls.__init__ = wrap
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


