"""Side-by-side MRML layout of a longitudinal comparison: baseline | follow-up | change, linked through the
registration.

What :func:`show_comparison` builds (MRML API only, present in 3D Slicer and in the slicer-core wheel):

* a custom layout (id :data:`COMPARE_LAYOUT_ID`) registered on the layout node with ``AddLayoutDescription``:
  three columns, baseline (views ``BaselineAxial``, ``BaselineCoronal``, ``Baseline3D``), follow-up
  (``FollowupAxial``, ``FollowupCoronal``, ``Followup3D``) and change (``ChangeAxial``, ``ChangeCoronal`` and
  the plot view ``CompareTrend``). The view nodes are created here with those layout names / singleton tags,
  so Slicer's layout manager reuses them (node IDs ``vtkMRMLSliceNodeBaselineAxial`` ...).
* the follow-up volume and its segmentation under a transform node holding the registration: the ITK
  transform maps baseline points to follow-up points, which is Slicer's "transform from parent" of the
  follow-up (converted LPS -> RAS); linear registrations give a ``vtkMRMLLinearTransformNode``, deformable
  ones a ``vtkMRMLGridTransformNode`` (displacement field sampled on the baseline box). Both scans are thus
  shown in baseline space.
* slice linking: all slice views share view group 0 and their composite nodes have linked control on, so
  Slicer's slice-link logic moves every view of the same orientation to the same RAS offset; as the
  follow-up is displayed through the registration, the same RAS offset is the same anatomical position.
  The views start at the same offset (the centre of the baseline lungs).
* segmentations visible only in their own column (display node view restriction: ``SetViewNodeIDs``):
  baseline lungs+infection, follow-up lungs+infection, change map (persistent amber, new red, resolved green).
* a table of the per-region changes and a trend table + plot chart (infection % per lung per time point).

A saved scene (.mrml / .mrb) keeps the view, display, transform and link settings, but Slicer does not
save custom layout descriptions: the layout XML is kept as the layout node attribute
``CovidCT.CompareLayout`` and :func:`restore_comparison_layout` registers it again after loading.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from CovidCTLib.longitudinal.change import CHANGE_COLORS, CHANGE_NAMES
from CovidCTLib.mrml.geometry import LPS_TO_RAS, oriented_image_from_array, volume_ijk_to_ras, vtk_matrix
from CovidCTLib.mrml.segmentation import add_segmentation_node
from CovidCTLib.version import DISCLAIMER, __version__

COMPARE_LAYOUT_ID = 8501
LAYOUT_ATTRIBUTE = "CovidCT.CompareLayout"
LAYOUT_ID_ATTRIBUTE = "CovidCT.CompareLayoutId"
COLUMNS = ("Baseline", "Followup", "Change")
SLICE_VIEWS = {f"{c}{o}": o for c in COLUMNS for o in ("Axial", "Coronal")}
THREED_VIEWS = ("Baseline3D", "Followup3D")
PLOT_VIEW = "CompareTrend"
VIEW_COLORS = {"Baseline": "#3A7BD5", "Followup": "#D5833A", "Change": "#9B3AD5"}


def _slice_view_xml(name: str, orientation: str, label: str, color: str) -> str:
    return (
        f'<item><view class="vtkMRMLSliceNode" singletontag="{name}">'
        f'<property name="orientation" action="default">{orientation}</property>'
        f'<property name="viewlabel" action="default">{label}</property>'
        f'<property name="viewcolor" action="default">{color}</property>'
        '<property name="viewgroup" action="default">0</property>'
        "</view></item>"
    )


def layout_xml() -> str:
    """The three-column layout description (baseline | follow-up | change + trend)."""
    columns = []
    for column in COLUMNS:
        color = VIEW_COLORS[column]
        items = [
            _slice_view_xml(f"{column}Axial", "Axial", f"{column[0]}A", color),
            _slice_view_xml(f"{column}Coronal", "Coronal", f"{column[0]}C", color),
        ]
        if column == "Change":
            items.append(
                f'<item><view class="vtkMRMLPlotViewNode" singletontag="{PLOT_VIEW}">'
                '<property name="viewlabel" action="default">T</property></view></item>'
            )
        else:
            items.append(
                f'<item><view class="vtkMRMLViewNode" singletontag="{column}3D">'
                f'<property name="viewlabel" action="default">{column[0]}</property>'
                '<property name="viewgroup" action="default">0</property></view></item>'
            )
        columns.append('<item><layout type="vertical">' + "".join(items) + "</layout></item>")
    return '<layout type="horizontal">' + "".join(columns) + "</layout>"


@dataclass
class ComparisonNodes:
    """The nodes :func:`show_comparison` created or configured."""

    layout: Any
    slice_nodes: dict[str, Any]
    composite_nodes: dict[str, Any]
    view_nodes: dict[str, Any]
    plot_view: Any
    transform: Any
    baseline_segmentation: Any
    followup_segmentation: Any
    change_segmentation: Any
    changes_table: Any
    trend_table: Any
    trend_chart: Any
    series: list[Any] = field(default_factory=list)


# ----------------------------------------------------------------------------------------- layout / views
def layout_node(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLLayoutNode:
    """The scene's layout node (created as the singleton when the scene has none, e.g. outside Slicer)."""
    node = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if node is None:
        node = slicer.vtkMRMLLayoutNode()
        node.SetSingletonTag("vtkMRMLLayoutNode")
        node = scene.AddNode(node)
    return node


def register_layout(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLLayoutNode:
    """Register (or refresh) the comparison layout description and keep it as a layout node attribute."""
    node = layout_node(scene)
    xml = layout_xml()
    if node.IsLayoutDescription(COMPARE_LAYOUT_ID):
        node.SetLayoutDescription(COMPARE_LAYOUT_ID, xml)
    else:
        node.AddLayoutDescription(COMPARE_LAYOUT_ID, xml)
    node.SetAttribute(LAYOUT_ATTRIBUTE, xml)
    node.SetAttribute(LAYOUT_ID_ATTRIBUTE, str(COMPARE_LAYOUT_ID))
    return node


def restore_comparison_layout(scene: slicer.vtkMRMLScene) -> bool:
    """After loading a saved scene: register the comparison layout again from the layout node attribute.

    Returns True when the scene held a comparison layout (and re-applies it if it was the current one).
    """
    node = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if node is None or not node.GetAttribute(LAYOUT_ATTRIBUTE):
        return False
    layout_id = int(node.GetAttribute(LAYOUT_ID_ATTRIBUTE) or COMPARE_LAYOUT_ID)
    xml = node.GetAttribute(LAYOUT_ATTRIBUTE)
    if node.IsLayoutDescription(layout_id):
        node.SetLayoutDescription(layout_id, xml)
    else:
        node.AddLayoutDescription(layout_id, xml)
    if node.GetViewArrangement() == layout_id:
        node.SetViewArrangement(layout_id)
        node.Modified()
    return True


def _singleton(scene: slicer.vtkMRMLScene, class_name: str, tag: str) -> Any:
    node = scene.GetSingletonNode(tag, class_name)
    if node is None:
        node = scene.CreateNodeByClass(class_name)
        node.SetSingletonTag(tag)
        if hasattr(node, "SetLayoutName"):
            node.SetLayoutName(tag)
        node.SetName(tag)
        node = scene.AddNode(node)
    return node


def _views(scene: slicer.vtkMRMLScene, layout: Any) -> tuple[dict, dict, dict, Any]:
    slices, composites, views = {}, {}, {}
    for name, orientation in SLICE_VIEWS.items():
        node = _singleton(scene, "vtkMRMLSliceNode", name)
        node.SetOrientation(orientation)
        node.SetViewGroup(0)
        node.SetLayoutLabel(name[0] + orientation[0])
        node.SetAndObserveParentLayoutNodeID(layout.GetID())
        slices[name] = node
        composite = _singleton(scene, "vtkMRMLSliceCompositeNode", name)
        composite.SetLinkedControl(1)
        composite.SetHotLinkedControl(0)
        composites[name] = composite
    for name in THREED_VIEWS:
        node = _singleton(scene, "vtkMRMLViewNode", name)
        node.SetViewGroup(0)
        node.SetLayoutLabel(name[0])
        node.SetAndObserveParentLayoutNodeID(layout.GetID())
        views[name] = node
    plot_view = _singleton(scene, "vtkMRMLPlotViewNode", PLOT_VIEW)
    plot_view.SetAndObserveParentLayoutNodeID(layout.GetID())
    return slices, composites, views, plot_view


def column_view_ids(column: str, slices: dict, views: dict) -> list[str]:
    """IDs of the views of one column (its slice views and its 3-D view)."""
    ids = [slices[f"{column}{o}"].GetID() for o in ("Axial", "Coronal")]
    if f"{column}3D" in views:
        ids.append(views[f"{column}3D"].GetID())
    return ids


# ---------------------------------------------------------------------------------------------- transform
def _transform_3d(transform: sitk.Transform) -> sitk.Transform:
    """A 2-D registration (slices) as the equivalent 3-D transform (z unchanged)."""
    if transform.GetDimension() == 3:
        return transform
    if isinstance(transform, sitk.CompositeTransform) or not hasattr(transform, "GetMatrix"):
        raise ValueError("only linear 2-D registrations can be shown in 3-D views")
    matrix = np.eye(3)
    matrix[:2, :2] = np.array(transform.GetMatrix()).reshape(2, 2)
    out = sitk.AffineTransform(3)
    out.SetMatrix(matrix.ravel().tolist())
    out.SetCenter((*transform.GetCenter(), 0.0))
    out.SetTranslation((*transform.GetTranslation(), 0.0))
    return out


def _linear_matrix_lps(transform: sitk.Transform) -> np.ndarray | None:
    """4x4 matrix of a linear SimpleITK transform (LPS), or None when it is not linear."""
    linear = (sitk.AffineTransform, sitk.Euler3DTransform, sitk.VersorRigid3DTransform, sitk.Similarity3DTransform)
    if isinstance(transform, sitk.CompositeTransform) and transform.GetNumberOfTransforms() == 1:
        transform = transform.GetNthTransform(0)
    if not isinstance(transform, linear):
        return None
    a = np.array(transform.GetMatrix()).reshape(3, 3)
    c = np.array(transform.GetCenter())
    t = np.array(transform.GetTranslation())
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = -a @ c + c + t
    return m


def add_registration_transform(
    scene: slicer.vtkMRMLScene, transform: sitk.Transform, reference: sitk.Image, name: str, field_mm: float = 4.0
) -> Any:
    """Transform node whose "from parent" is the ITK registration (baseline -> follow-up), in RAS."""
    transform = _transform_3d(transform)
    matrix = _linear_matrix_lps(transform)
    if matrix is not None:
        node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
        node.SetMatrixTransformFromParent(vtk_matrix(LPS_TO_RAS @ matrix @ LPS_TO_RAS))
        return node
    # non-linear: displacement field on the baseline box (RAS), sampled every ~field_mm
    if reference.GetDimension() == 3 and reference.GetSize()[2] == 1:
        raise ValueError("a deformable registration of single slices cannot be shown")
    spacing = np.maximum(np.array(reference.GetSpacing()), field_mm)
    extent_mm = np.array(reference.GetSize()) * np.array(reference.GetSpacing())
    size = np.maximum(2, np.ceil(extent_mm / spacing)).astype(int)
    direction_lps = np.array(reference.GetDirection()).reshape(3, 3)
    origin_lps = np.array(reference.GetOrigin())
    field = sitk.TransformToDisplacementField(
        transform,
        sitk.sitkVectorFloat64,
        size.tolist(),
        origin_lps.tolist(),
        spacing.tolist(),
        reference.GetDirection(),
    )
    disp_lps = sitk.GetArrayFromImage(field)  # (z, y, x, 3): T(p) - p, LPS
    flip = np.array([-1.0, -1.0, 1.0])
    disp_ras = disp_lps * flip  # C (T(C r)) - r with r = C p
    grid = vtk.vtkImageData()
    grid.SetOrigin(*(origin_lps * flip))
    grid.SetSpacing(*spacing)
    grid.SetDimensions(*size.tolist())
    vectors = numpy_support.numpy_to_vtk(
        np.ascontiguousarray(disp_ras.reshape(-1, 3)), deep=True, array_type=vtk.VTK_DOUBLE
    )
    vectors.SetNumberOfComponents(3)
    grid.GetPointData().SetScalars(vectors)
    grid_direction = np.eye(4)
    grid_direction[:3, :3] = np.diag(flip) @ direction_lps
    grid_transform = slicer.vtkOrientedGridTransform()
    grid_transform.SetDisplacementGridData(grid)
    grid_transform.SetGridDirectionMatrix(vtk_matrix(grid_direction))
    grid_transform.SetInterpolationModeToCubic()
    node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", name)
    node.SetAndObserveTransformFromParent(grid_transform)
    return node


# ------------------------------------------------------------------------------------------ segmentations
def add_change_segmentation(scene: slicer.vtkMRMLScene, volume_node: Any, change: np.ndarray, name: str) -> Any:
    """Segmentation with the persistent / new / resolved segments of a change map on the volume's grid."""
    ijk_to_ras = volume_ijk_to_ras(volume_node)
    layer = oriented_image_from_array(np.asarray(change, dtype=np.uint8), ijk_to_ras)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    labelmap_name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    segmentation = node.GetSegmentation()
    for value, key in CHANGE_NAMES.items():
        segment = slicer.vtkSegment()
        segment.SetName(f"{key.capitalize()} infection")
        segment.SetColor(*CHANGE_COLORS[value])
        segment.AddRepresentation(labelmap_name, layer)
        segment.SetLabelValue(value)
        segmentation.AddSegment(segment, key)
    node.SetAttribute("CovidCT.Disclaimer", DISCLAIMER)
    return node


def _restrict(node: Any, view_ids: list[str]) -> None:
    display = node.GetDisplayNode()
    display.SetViewNodeIDs(view_ids)


# --------------------------------------------------------------------------------------------- tables/plot
def _table(scene: slicer.vtkMRMLScene, name: str, columns: list[tuple[str, list[Any]]]) -> Any:
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = node.GetTable()
    for column_name, values in columns:
        if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            array = vtk.vtkDoubleArray()
            for v in values:
                array.InsertNextValue(float(v))
        else:
            array = vtk.vtkStringArray()
            for v in values:
                array.InsertNextValue("" if v is None else str(v))
        array.SetName(column_name)
        table.AddColumn(array)
    node.SetAttribute("CovidCT.Disclaimer", DISCLAIMER)
    node.SetAttribute("CovidCT.Version", __version__)
    node.Modified()
    return node


def changes_table(scene: slicer.vtkMRMLScene, report: dict[str, Any], followup: int, name: str) -> Any:
    """One row per region: percent before/after, change, verdict, new/resolved/persistent sizes."""
    entry = report["changes"][followup - 1]
    regions = entry["regions_vs_baseline"]
    sizes = entry["change_map_on_baseline_grid"]["regions"]
    unit = entry["change_map_on_baseline_grid"]["unit"]
    names = list(regions)
    return _table(
        scene,
        name,
        [
            ("Region", names),
            ("Baseline %", [regions[n]["percent_before"] for n in names]),
            ("Follow-up %", [regions[n]["percent_after"] for n in names]),
            ("Change (points)", [regions[n]["percent_change_points"] for n in names]),
            (f"Baseline infection ({unit})", [regions[n]["infection_before"] for n in names]),
            (f"Follow-up infection ({unit})", [regions[n]["infection_after"] for n in names]),
            ("Verdict", [regions[n]["verdict"] for n in names]),
            (f"New ({unit})", [sizes.get(n, {}).get("new", 0.0) for n in names]),
            (f"Resolved ({unit})", [sizes.get(n, {}).get("resolved", 0.0) for n in names]),
            (f"Persistent ({unit})", [sizes.get(n, {}).get("persistent", 0.0) for n in names]),
        ],
    )


def trend_plot(scene: slicer.vtkMRMLScene, report: dict[str, Any], plot_view: Any) -> tuple[Any, Any, list[Any]]:
    """Trend table (one row per time point), plot series per lung and a chart shown in ``plot_view``."""
    tps = report["timepoints"]
    table = _table(
        scene,
        "CovidCT trend",
        [
            ("Time point", [float(tp["index"]) for tp in tps]),
            ("Date", [tp["date"] or "" for tp in tps]),
            ("Right lung %", [tp["numbers"]["regions"]["right"]["percent"] for tp in tps]),
            ("Left lung %", [tp["numbers"]["regions"]["left"]["percent"] for tp in tps]),
            ("Both lungs %", [tp["numbers"]["regions"]["total"]["percent"] for tp in tps]),
        ],
    )
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "CovidCT trend chart")
    chart.SetTitle("Infection trend (research software, not for diagnosis)")
    chart.SetXAxisTitle("time point")
    chart.SetYAxisTitle("infected lung (%)")
    series = []
    colors = {"Right lung %": (0.2, 0.6, 0.2), "Left lung %": (0.2, 0.4, 0.85), "Both lungs %": (0.3, 0.3, 0.3)}
    for column, color in colors.items():
        node = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", column)
        node.SetAndObserveTableNodeID(table.GetID())
        node.SetXColumnName("Time point")
        node.SetYColumnName(column)
        node.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        node.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        node.SetColor(*color)
        chart.AddAndObservePlotSeriesNodeID(node.GetID())
        series.append(node)
    plot_view.SetPlotChartNodeID(chart.GetID())
    return table, chart, series


# ------------------------------------------------------------------------------------------------- entry
def _lung_centre_ras(volume_node: Any, lungs: np.ndarray) -> np.ndarray:
    ijk_to_ras = volume_ijk_to_ras(volume_node)
    idx = np.argwhere(lungs > 0)
    centre = idx.mean(axis=0) if idx.size else (np.array(lungs.shape) - 1) / 2.0
    return (ijk_to_ras @ np.array([centre[2], centre[1], centre[0], 1.0]))[:3]


def show_comparison(
    scene: slicer.vtkMRMLScene,
    baseline_volume: Any,
    followup_volume: Any,
    result: Any,
    followup: int = -1,
    surfaces: bool = False,
) -> ComparisonNodes:
    """Show a :class:`~CovidCTLib.longitudinal.compare.CompareResult` in the comparison layout.

    ``baseline_volume`` / ``followup_volume`` are the volume nodes of the two compared scans (the grids of
    ``result.timepoints[0]`` and ``result.timepoints[followup]``); ``followup`` picks the follow-up when
    there are several (default the last). ``surfaces`` also builds 3-D closed surfaces (slower).
    """
    index = followup if followup > 0 else len(result.timepoints) - 1
    base, follow = result.timepoints[0], result.timepoints[index]
    registration = result.registrations[index]
    change = result.changes[index]
    layout = register_layout(scene)
    slices, composites, views, plot_view = _views(scene, layout)

    transform = add_registration_transform(scene, registration.transform, base.ct.image, "CovidCT registration")
    transform.SetAttribute("CovidCT.Disclaimer", DISCLAIMER)
    followup_volume.SetAndObserveTransformNodeID(transform.GetID())

    base_seg = add_segmentation_node(
        scene, baseline_volume, base.lungs, base.infection, f"{baseline_volume.GetName()} CovidCT (baseline)"
    )
    follow_seg = add_segmentation_node(
        scene, followup_volume, follow.lungs, follow.infection, f"{followup_volume.GetName()} CovidCT (follow-up)"
    )
    follow_seg.SetAndObserveTransformNodeID(transform.GetID())
    change_seg = add_change_segmentation(scene, baseline_volume, change, "CovidCT change map")
    _restrict(base_seg, column_view_ids("Baseline", slices, views))
    _restrict(follow_seg, column_view_ids("Followup", slices, views))
    _restrict(change_seg, column_view_ids("Change", slices, views))
    if surfaces:
        for node in (base_seg, follow_seg, change_seg):
            node.CreateClosedSurfaceRepresentation()

    volumes = {"Baseline": baseline_volume, "Followup": followup_volume, "Change": baseline_volume}
    centre = _lung_centre_ras(baseline_volume, base.lungs)
    for name, composite in composites.items():
        column = next(c for c in COLUMNS if name.startswith(c))
        composite.SetBackgroundVolumeID(volumes[column].GetID())
        composite.SetForegroundVolumeID(None)
        composite.SetLabelVolumeID(None)
        node = slices[name]
        offset = centre[2] if name.endswith("Axial") else centre[1]
        node.SetSliceOffset(float(offset))

    table = changes_table(scene, result.report, index, "CovidCT changes")
    trend_table, chart, series = trend_plot(scene, result.report, plot_view)
    layout.SetViewArrangement(COMPARE_LAYOUT_ID)
    return ComparisonNodes(
        layout,
        slices,
        composites,
        views,
        plot_view,
        transform,
        base_seg,
        follow_seg,
        change_seg,
        table,
        trend_table,
        chart,
        series,
    )
