"""The module's Qt Designer file: well-formed, has every widget the Widget uses, binds real parameters."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[1] / "CovidCTExtension" / "CovidCT"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "CovidCT.ui"
MODULE_FILE = MODULE_DIR / "CovidCT.py"

#: widget class -> parameter types it can be bound to (Slicer's parameterNodeWrapper GUI connectors)
COMPATIBLE = {
    "qMRMLNodeComboBox": ("vtkMRML",),
    "QCheckBox": ("bool",),
    "ctkSliderWidget": ("float",),
    "QDoubleSpinBox": ("float",),
    "QComboBox": ("Choice",),
    "QLineEdit": ("str",),
}


@pytest.fixture(scope="module")
def ui() -> ET.Element:
    return ET.parse(UI_FILE).getroot()


def widgets(root: ET.Element) -> dict[str, ET.Element]:
    return {w.get("name"): w for w in root.iter("widget")}


def parameter_annotations() -> dict[str, str]:
    """Field name -> annotation source of the @parameterNodeWrapper class in CovidCT.py."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
            getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list
        ):
            return {
                item.target.id: ast.unparse(item.annotation)
                for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            }
    raise AssertionError("no @parameterNodeWrapper class in CovidCT.py")


def test_well_formed_designer_file(ui):
    assert ui.tag == "ui"
    top = ui.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "CovidCT"
    names = [w.get("name") for w in ui.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names"
    declared = {c.findtext("class") for c in ui.iter("customwidget")}
    used_custom = {w.get("class") for w in ui.iter("widget") if not w.get("class").startswith("Q")}
    assert used_custom <= declared


def test_every_widget_used_by_the_module_exists(ui):
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8")))
    assert used, "the module uses no widget?"
    missing = used - set(widgets(ui))
    assert not missing, f"widgets used in CovidCT.py but missing from CovidCT.ui: {sorted(missing)}"


def test_parameter_bindings_name_real_parameters(ui):
    fields = parameter_annotations()
    bound = {}
    for widget in ui.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[widget.get("name")] = (widget.get("class"), prop.findtext("string"))
                assert prop.get("stdset") == "0", "dynamic properties need stdset=0"
    assert {"inputVolume", "device", "computeSurfaces", "smoothing", "baselineVolume", "followupVolume"} <= {
        p for _, p in bound.values()
    }
    for name, (widget_class, parameter) in bound.items():
        assert parameter in fields, f"{name} binds unknown parameter {parameter!r}"
        annotation = fields[parameter]
        assert any(token in annotation for token in COMPATIBLE[widget_class]), (
            f"{name} ({widget_class}) cannot show parameter {parameter}: {annotation}"
        )


def test_node_selectors_receive_the_scene(ui):
    selectors = {w.get("name") for w in ui.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    connected = {
        c.findtext("receiver")
        for c in ui.iter("connection")
        if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    assert selectors and selectors <= connected


def test_panel_sections(ui):
    names = widgets(ui)
    for section in (
        "inputsCollapsibleButton",
        "optionsCollapsibleButton",
        "resultsCollapsibleButton",
        "compareCollapsibleButton",
    ):
        assert names[section].get("class") == "ctkCollapsibleButton"
    assert names["progressBar"].get("class") == "QProgressBar"
