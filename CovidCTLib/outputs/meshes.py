"""Write segment surfaces as STL, OBJ, PLY, VTP or glTF files (atomic writes, LPS coordinates).

Every file is in LPS patient coordinates in millimetres (the space of the CT file and of DICOM) and records
that the way 3D Slicer does, so Slicer loads it in the right place without asking:

* STL: binary, header ``CovidCT <version> <segment>. SPACE=LPS``;
* OBJ: leading comment lines ``# CovidCT ...`` and ``# SPACE=LPS``;
* PLY: binary, header comment ``SPACE=LPS``, the segment colour on every face;
* VTP: field data ``SPACE`` = ``LPS``, ``SegmentName``, ``Disclaimer``, ``Software``;
* glTF 2.0 (``.gltf``, buffers inlined): one node per segment with its colour. glTF itself assumes metres
  and +Y up; the coordinates are still LPS millimetres, scale/rotate in the viewer if needed.

``multiblock=True`` writes one file for all segments instead of one per segment: ``segments.<ext>`` with a
``SegmentLabel`` cell array (1..4 in :data:`CovidCTLib.labels.SEGMENTS` order; VTP/PLY keep it, STL/OBJ keep
only the geometry), or for glTF one scene with a node per segment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import vtk
from vtk.util.numpy_support import numpy_to_vtk

from CovidCTLib.atomic import check_writable, write_with
from CovidCTLib.errors import CovidCTError
from CovidCTLib.labels import SEGMENTS, SegmentSpec
from CovidCTLib.version import DISCLAIMER, __version__

FORMATS = ("stl", "obj", "ply", "vtp", "gltf")


def _spec(key: str) -> SegmentSpec | None:
    return next((spec for spec in SEGMENTS if spec.key == key), None)


def _rgb255(key: str) -> tuple[int, int, int]:
    spec = _spec(key)
    color = spec.color if spec else (0.8, 0.8, 0.8)
    return tuple(int(round(255 * c)) for c in color)  # type: ignore[return-value]


def _with_colors(poly: vtk.vtkPolyData, key: str, label: int) -> vtk.vtkPolyData:
    """Shallow copy with uint8 RGB point colours and a SegmentLabel cell array."""
    out = vtk.vtkPolyData()
    out.ShallowCopy(poly)
    colors = np.tile(np.array(_rgb255(key), dtype=np.uint8), (poly.GetNumberOfPoints(), 1))
    array = numpy_to_vtk(colors, deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
    array.SetName("Colors")
    out.GetPointData().AddArray(array)
    out.GetPointData().SetActiveScalars("Colors")
    labels = numpy_to_vtk(
        np.full(poly.GetNumberOfCells(), label, dtype=np.uint8), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR
    )
    labels.SetName("SegmentLabel")
    out.GetCellData().AddArray(labels)
    return out


def _string_field(poly: vtk.vtkPolyData, name: str, value: str) -> None:
    array = vtk.vtkStringArray()
    array.SetName(name)
    array.InsertNextValue(value)
    poly.GetFieldData().AddArray(array)


def _title(name: str) -> str:
    return f"CovidCT {__version__} {name}"


def _write_stl(poly: vtk.vtkPolyData, path: Path, name: str) -> None:
    writer = vtk.vtkSTLWriter()
    writer.SetInputData(poly)
    writer.SetFileName(str(path))
    writer.SetFileTypeToBinary()
    writer.SetHeader(f"{_title(name)[:60]}. SPACE=LPS")  # binary STL headers hold 80 bytes
    if not writer.Write():
        raise CovidCTError(f"Could not write {path}; check the disk space and permissions of the folder.")


def _write_obj(poly: vtk.vtkPolyData, path: Path, name: str) -> None:
    plain = vtk.vtkPolyData()
    plain.SetPoints(poly.GetPoints())
    plain.SetPolys(poly.GetPolys())
    normals = poly.GetPointData().GetNormals()
    if normals is not None:
        plain.GetPointData().SetNormals(normals)
    writer = vtk.vtkOBJWriter()
    writer.SetInputData(plain)
    writer.SetFileName(str(path))
    if not writer.Write():
        raise CovidCTError(f"Could not write {path}; check the disk space and permissions of the folder.")
    body = path.read_bytes()
    header = f"# {_title(name)}. Research software, not for diagnosis.\n# SPACE=LPS\n".encode()
    path.write_bytes(header + body)


def _write_ply(poly: vtk.vtkPolyData, path: Path, name: str) -> None:
    writer = vtk.vtkPLYWriter()
    writer.SetInputData(poly)
    writer.SetFileName(str(path))
    writer.SetFileTypeToBinary()
    writer.AddComment("SPACE=LPS")
    writer.AddComment(_title(name))
    writer.AddComment("Research software, not for diagnosis")
    if poly.GetPointData().GetArray("Colors") is not None:
        writer.SetArrayName("Colors")
        writer.SetColorModeToDefault()
    if not writer.Write():
        raise CovidCTError(f"Could not write {path}; check the disk space and permissions of the folder.")


def _write_vtp(poly: vtk.vtkPolyData, path: Path, name: str) -> None:
    out = vtk.vtkPolyData()
    out.ShallowCopy(poly)
    out.SetFieldData(vtk.vtkFieldData())
    _string_field(out, "SPACE", "LPS")
    _string_field(out, "SegmentName", name)
    _string_field(out, "Software", _title(name))
    _string_field(out, "Disclaimer", DISCLAIMER)
    writer = vtk.vtkXMLPolyDataWriter()
    writer.SetInputData(out)
    writer.SetFileName(str(path))
    writer.SetDataModeToAppended()
    writer.SetCompressorTypeToZLib()
    if not writer.Write():
        raise CovidCTError(f"Could not write {path}; check the disk space and permissions of the folder.")


def _write_gltf(blocks: list[tuple[str, vtk.vtkPolyData]], path: Path) -> None:
    multiblock = vtk.vtkMultiBlockDataSet()
    multiblock.SetNumberOfBlocks(len(blocks))
    for index, (name, poly) in enumerate(blocks):
        # vtkGLTFWriter expects a multiblock of "buildings", each a multiblock of polydata parts
        part = vtk.vtkPolyData()
        part.SetPoints(poly.GetPoints())
        part.SetPolys(poly.GetPolys())
        if poly.GetPointData().GetNormals() is not None:
            part.GetPointData().SetNormals(poly.GetPointData().GetNormals())
        spec = next((s for s in SEGMENTS if s.name == name), None)
        material = {
            "diffuse_color": spec.color if spec else (0.8, 0.8, 0.8),
            "transparency": (1.0 - (spec.opacity_3d if spec else 1.0),),
        }
        for key, values in material.items():
            array = vtk.vtkFloatArray()
            array.SetName(key)
            array.SetNumberOfComponents(len(values))
            array.InsertNextTuple([float(v) for v in values])
            part.GetFieldData().AddArray(array)
        building = vtk.vtkMultiBlockDataSet()
        building.SetNumberOfBlocks(1)
        building.SetBlock(0, part)
        building.GetMetaData(0).Set(vtk.vtkCompositeDataSet.NAME(), name)
        multiblock.SetBlock(index, building)
        multiblock.GetMetaData(index).Set(vtk.vtkCompositeDataSet.NAME(), name)
    writer = vtk.vtkGLTFWriter()
    writer.SetInputData(multiblock)
    writer.SetFileName(str(path))
    writer.SetInlineData(True)
    writer.SetSaveNormal(True)
    writer.SetSaveActivePointColor(False)
    writer.Write()
    if not path.exists() or path.stat().st_size == 0:
        raise CovidCTError(f"Could not write {path}; check the disk space and permissions of the folder.")


_WRITERS = {"stl": _write_stl, "obj": _write_obj, "ply": _write_ply, "vtp": _write_vtp}


def _polydatas(result_or_polydatas) -> dict[str, vtk.vtkPolyData]:
    if isinstance(result_or_polydatas, Mapping):
        return dict(result_or_polydatas)
    from CovidCTLib.surfaces import result_surfaces

    return result_surfaces(result_or_polydatas)


def export_surfaces(
    result_or_polydatas,
    outdir: str | os.PathLike,
    fmt: str = "stl",
    multiblock: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Write the segment surfaces of an AnalysisResult (or a ``{segment_key: vtkPolyData}`` dict).

    One file per non-empty segment, named ``<segment_key>.<fmt>`` (``right_lung.stl`` ...), or with
    ``multiblock`` one ``segments.<fmt>`` file. Empty segments are skipped. Returns the written paths.
    Refuses (before writing anything) when a target exists and ``overwrite`` is False.
    """
    fmt = fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise CovidCTError(f"Unknown surface format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    outdir = Path(outdir)
    polys = _polydatas(result_or_polydatas)
    order = [spec.key for spec in SEGMENTS if spec.key in polys] + [k for k in polys if _spec(k) is None]
    blocks: list[tuple[str, str, vtk.vtkPolyData]] = []
    for index, key in enumerate(order, start=1):
        poly = polys[key]
        if poly is None or poly.GetNumberOfCells() == 0:
            continue
        spec = _spec(key)
        blocks.append((key, spec.name if spec else key, _with_colors(poly, key, index)))
    if multiblock:
        targets = [outdir / f"segments.{fmt}"] if blocks else []
    else:
        targets = [outdir / f"{key}.{fmt}" for key, _, _ in blocks]
    for target in targets:
        check_writable(target, overwrite)
    outdir.mkdir(parents=True, exist_ok=True)

    written: list[Path] = []
    if fmt == "gltf":
        groups = [[(name, poly) for _, name, poly in blocks]] if multiblock else [[(n, p)] for _, n, p in blocks]
        for target, group in zip(targets, groups, strict=True):
            written.append(write_with(target, lambda tmp, g=group: _write_gltf(g, tmp), overwrite))
        return written
    writer = _WRITERS[fmt]
    if multiblock and blocks:
        append = vtk.vtkAppendPolyData()
        for _, _, poly in blocks:
            append.AddInputData(poly)
        append.Update()
        name = "segments " + ", ".join(name for _, name, _ in blocks)
        written.append(write_with(targets[0], lambda tmp: writer(append.GetOutput(), tmp, name), overwrite))
        return written
    for target, (_, name, poly) in zip(targets, blocks, strict=True):
        written.append(write_with(target, lambda tmp, p=poly, n=name: writer(p, tmp, n), overwrite))
    return written
