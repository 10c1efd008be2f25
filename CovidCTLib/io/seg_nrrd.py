"""3D Slicer segmentation files (``.seg.nrrd``): write the four CovidCT segments, read them back.

The file is a gzip-compressed NRRD written with numpy (no extra dependency), in the layout Slicer's
``vtkMRMLSegmentationStorageNode`` writes and reads:

* two shared labelmap layers, because lungs and infection overlap: a 4-D NRRD with
  ``kinds: list domain domain domain`` and ``sizes: 2 X Y Z`` (layer 0 = lungs labelmap, layer 1 = infection);
* ``space: left-posterior-superior`` with ``space directions`` / ``space origin`` taken exactly from the
  reference image (oblique directions included), on the reference's full grid
  (``Segmentation_ReferenceImageExtentOffset:=0 0 0``, so the file overlays the CT voxel for voxel);
* per segment ``Segment{i}_ID/Name/Color/LabelValue/Layer/Extent/Tags`` with the names, colours, label values
  and terminology (``TerminologyEntry`` tag) from :data:`CovidCTLib.labels.SEGMENTS`. Slicer builds a layer's
  labelmap from the ``Extent`` of the first segment in that layer, so every segment of a layer carries the
  layer's bounding box.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from CovidCTLib.atomic import atomic_path
from CovidCTLib.errors import InputError
from CovidCTLib.labels import SEGMENTS, SegmentSpec
from CovidCTLib.version import DISCLAIMER, __version__

#: gzip level of the voxel data: 1 compresses label maps about twice as fast as 6 (files stay a few MB)
GZIP_LEVEL = 1

TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
LAYERS = ("lungs", "infection")  # layer index -> labelmap
_NRRD_TYPES = {
    "unsigned char": np.uint8,
    "uchar": np.uint8,
    "uint8": np.uint8,
    "uint8_t": np.uint8,
    "signed char": np.int8,
    "int8": np.int8,
    "int8_t": np.int8,
    "short": np.int16,
    "int16": np.int16,
    "signed short": np.int16,
    "int16_t": np.int16,
    "unsigned short": np.uint16,
    "ushort": np.uint16,
    "uint16": np.uint16,
    "uint16_t": np.uint16,
    "int": np.int32,
    "int32": np.int32,
    "signed int": np.int32,
    "int32_t": np.int32,
    "unsigned int": np.uint32,
    "uint": np.uint32,
    "uint32": np.uint32,
    "uint32_t": np.uint32,
    "float": np.float32,
    "double": np.float64,
}


def terminology_entry(spec: SegmentSpec) -> str:
    """Slicer's serialized terminology: ``context~category~type~modifier~anatomicContext~region~regionModifier``."""
    empty = "^^"
    return "~".join(
        (
            TERMINOLOGY_CONTEXT,
            spec.category.slicer_string(),
            spec.type.slicer_string(),
            spec.modifier.slicer_string() if spec.modifier else empty,
            ANATOMIC_CONTEXT,
            empty,
            empty,
        )
    )


def _num(value: float) -> str:
    """Shortest exact text for a float (``repr`` round-trips)."""
    value = float(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _vector(values: Any) -> str:
    return "(" + ",".join(_num(v) for v in values) + ")"


def _geometry_lps(reference: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Columns = IJK axis vectors in LPS (direction x spacing); and the origin."""
    direction = np.array(reference.GetDirection(), dtype=float).reshape(3, 3)
    axes = direction * np.array(reference.GetSpacing(), dtype=float)[None, :]
    return axes, np.array(reference.GetOrigin(), dtype=float)


def _reference_geometry_string(reference: sitk.Image) -> str:
    """Slicer's serialized image geometry (IJK-to-RAS 4x4 row-major, then extent)."""
    axes, origin = _geometry_lps(reference)
    flip = np.diag([-1.0, -1.0, 1.0])
    matrix = np.eye(4)
    matrix[:3, :3] = flip @ axes
    matrix[:3, 3] = flip @ origin
    nx, ny, nz = reference.GetSize()
    values = [*matrix.ravel(), 0, nx - 1, 0, ny - 1, 0, nz - 1]
    return "".join(f"{_num(v)};" for v in values)


def _extent(labels: np.ndarray) -> str:
    """``i0 i1 j0 j1 k0 k1`` bounding box of the nonzero voxels of a (z, y, x) array, or Slicer's empty extent.

    Two passes over the volume: the slices that hold a voxel, and the (y, x) footprint of all slices.
    """
    slices = np.flatnonzero(labels.any(axis=(1, 2)))
    if slices.size == 0:
        return "0 -1 0 -1 0 -1"
    footprint = labels[slices[0] : slices[-1] + 1].any(axis=0)
    rows = np.flatnonzero(footprint.any(axis=1))
    columns = np.flatnonzero(footprint.any(axis=0))
    bounds = [columns[0], columns[-1], rows[0], rows[-1], slices[0], slices[-1]]  # i (x), j (y), k (z)
    return " ".join(str(int(b)) for b in bounds)


#: slices of the labelmaps compressed at a time (bounds the interleaving copy to a few MB)
_SLAB = 16


def _write_gzip(fh, layers: list[np.ndarray], level: int) -> None:
    """Write the voxel data gzip-compressed: the layers interleaved (layer fastest), slab by slab."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: a gzip stream (header, CRC, size)
    depth = layers[0].shape[0]
    for start in range(0, depth, _SLAB):
        part = [layer[start : start + _SLAB] for layer in layers]
        data = np.stack(part, axis=-1) if len(part) > 1 else np.ascontiguousarray(part[0])
        fh.write(compressor.compress(memoryview(data).cast("B")))
    fh.write(compressor.flush())


def _clean(text: Any) -> str:
    return str(text).replace("\r", " ").replace("\n", " ")


def _check_labels(array: np.ndarray, reference: sitk.Image, what: str) -> np.ndarray:
    if tuple(reversed(array.shape)) != tuple(reference.GetSize()):
        raise ValueError(
            f"{what} labelmap shape {array.shape} (z,y,x) does not match the reference size "
            f"{reference.GetSize()} (x,y,z)"
        )
    if array.dtype != np.uint8 and array.size:  # a uint8 array fits by construction (no pass over the data)
        low, high = array.min(), array.max()
        if low < 0 or high > 255:
            raise ValueError(f"{what} labelmap values {low}..{high} do not fit in uint8")
    return np.ascontiguousarray(array, dtype=np.uint8)


@dataclass(frozen=True)
class LayerSegment:
    """One segment of a layered ``.seg.nrrd``: voxels equal to ``label`` in labelmap layer ``layer``."""

    key: str
    name: str
    color: tuple[float, float, float]
    label: int
    layer: int
    tags: str = ""


def covidct_segments() -> list[LayerSegment]:
    """The four CovidCT segments (lungs layer 0, infection layer 1) with their terminology tags."""
    return [
        LayerSegment(
            spec.key,
            spec.name,
            spec.color,
            spec.label,
            LAYERS.index(spec.source),
            f"TerminologyEntry:{terminology_entry(spec)}|",
        )
        for spec in SEGMENTS
    ]


def build_layered_header(
    layers: list[np.ndarray],
    segments: list[LayerSegment],
    reference: sitk.Image,
    extra_metadata: dict[str, Any] | None = None,
    show_3d: bool = True,
) -> str:
    """The NRRD header text (ending with the blank line) for ``layers`` labelmaps holding ``segments``.

    One layer gives a 3-D NRRD; more give a 4-D one with the layer as the fastest (``list``) axis.
    """
    nx, ny, nz = reference.GetSize()
    axes, origin = _geometry_lps(reference)
    layer_extent = [_extent(arr) for arr in layers]
    spatial = " ".join(_vector(axes[:, i]) for i in range(3))
    layered = len(layers) > 1
    lines = [
        "NRRD0004",
        "# Complete NRRD file format specification at:",
        "# http://teem.sourceforge.net/nrrd/format.html",
        "type: unsigned char",
        f"dimension: {4 if layered else 3}",
        "space: left-posterior-superior",
        f"sizes: {len(layers)} {nx} {ny} {nz}" if layered else f"sizes: {nx} {ny} {nz}",
        f"space directions: none {spatial}" if layered else f"space directions: {spatial}",
        "kinds: list domain domain domain" if layered else "kinds: domain domain domain",
        "encoding: gzip",
        "space origin: " + _vector(origin),
    ]
    for i, seg in enumerate(segments):
        prefix = f"Segment{i}_"
        lines += [
            f"{prefix}Color:={' '.join(_num(c) for c in seg.color)}",
            f"{prefix}ColorAutoGenerated:=0",
            f"{prefix}Extent:={layer_extent[seg.layer]}",
            f"{prefix}ID:={seg.key}",
            f"{prefix}LabelValue:={seg.label}",
            f"{prefix}Layer:={seg.layer}",
            f"{prefix}Name:={seg.name}",
            f"{prefix}NameAutoGenerated:=0",
            f"{prefix}Tags:={seg.tags}",
        ]
    contained = "Binary labelmap|Closed surface|" if show_3d else "Binary labelmap|"
    lines += [
        f"Segmentation_ContainedRepresentationNames:={contained}",
        f"Segmentation_ConversionParameters:=Reference image geometry|{_reference_geometry_string(reference)}|&",
        "Segmentation_MasterRepresentation:=Binary labelmap",
        "Segmentation_ReferenceImageExtentOffset:=0 0 0",
        f"CovidCT_Disclaimer:={_clean(DISCLAIMER)}",
        f"CovidCT_SoftwareVersion:=CovidCT {__version__}",
    ]
    for key, value in (extra_metadata or {}).items():
        safe_key = "CovidCT_" + "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in str(key))
        lines.append(f"{safe_key}:={_clean(value)}")
    return "\n".join(lines) + "\n\n"


def build_header(
    lungs: np.ndarray,
    infection: np.ndarray,
    reference: sitk.Image,
    extra_metadata: dict[str, Any] | None = None,
    show_3d: bool = True,
) -> str:
    """The NRRD header text (ending with the blank line) for the two-layer CovidCT segmentation."""
    return build_layered_header([lungs, infection], covidct_segments(), reference, extra_metadata, show_3d)


def write_layered_seg_nrrd(
    layers: list[np.ndarray],
    segments: list[LayerSegment],
    reference: sitk.Image,
    path: str | os.PathLike,
    overwrite: bool = False,
    extra_metadata: dict[str, Any] | None = None,
    show_3d: bool = True,
    layer_names: list[str] | None = None,
) -> Path:
    """Write labelmap ``layers`` (each ``(z, y, x)`` on the reference grid) and their ``segments`` atomically.

    ``layer_names`` name the layers in error messages (default ``layer 0``, ``layer 1``, ...).
    """
    names = layer_names or [f"layer {i}" for i in range(len(layers))]
    checked = [_check_labels(arr, reference, name) for arr, name in zip(layers, names, strict=True)]
    header = build_layered_header(checked, segments, reference, extra_metadata, show_3d).encode("utf-8")
    target = Path(path)
    with atomic_path(target, overwrite) as tmp, open(tmp, "wb") as fh:
        fh.write(header)
        _write_gzip(fh, checked, GZIP_LEVEL)  # (z, y, x, layer): the layer is the fastest NRRD axis
    return target


def write_seg_nrrd(
    lungs: np.ndarray,
    infection: np.ndarray,
    reference: sitk.Image,
    path: str | os.PathLike,
    overwrite: bool = False,
    extra_metadata: dict[str, Any] | None = None,
    show_3d: bool = True,
) -> Path:
    """Write lungs (1 right, 2 left) and infection (1 GGO, 2 consolidation) as a Slicer ``.seg.nrrd``.

    Args:
        lungs, infection: uint8-compatible ``(z, y, x)`` arrays on the reference grid.
        reference: the CT image whose geometry (size, spacing, origin, direction) the file takes exactly.
        path: output file (``.seg.nrrd`` recommended); written atomically.
        overwrite: replace an existing file (otherwise OutputExistsError).
        extra_metadata: more ``key -> value`` fields, stored as ``CovidCT_<key>:=value``
            (e.g. model versions). The disclaimer and software version are always stored.
        show_3d: ask Slicer to build the closed-surface (3-D) representation on load.
    """
    return write_layered_seg_nrrd(
        [lungs, infection],
        covidct_segments(),
        reference,
        path,
        overwrite,
        extra_metadata,
        show_3d,
        layer_names=list(LAYERS),
    )


def write_label_seg_nrrd(
    labels: np.ndarray,
    reference: sitk.Image,
    segments: list[tuple[int, str, tuple[float, float, float]]],
    path: str | os.PathLike,
    overwrite: bool = False,
) -> Path:
    """Write one labelmap (``(z, y, x)`` on ``reference``'s grid) as a one-layer Slicer segmentation.

    ``segments`` lists ``(label value, name, (r, g, b) in 0..1)``; every listed segment is written even if
    empty (Slicer then shows it with no voxels).
    """
    entries = [
        LayerSegment(
            f"Segment_{value}", name, color, int(value), 0, "CovidCT.Disclaimer:research software, not for diagnosis|"
        )
        for value, name, color in segments
    ]
    return write_layered_seg_nrrd([labels], entries, reference, path, overwrite)


def write_result_seg_nrrd(
    result: Any, path: str | os.PathLike, overwrite: bool = False, extra_metadata: dict[str, Any] | None = None
) -> Path:
    """Convenience: write an :class:`~CovidCTLib.results.AnalysisResult` (its model versions go in the metadata)."""
    meta = {"method": result.method, **{f"model_{k}": v for k, v in result.model_versions.items()}}
    meta.update(extra_metadata or {})
    return write_seg_nrrd(result.lungs, result.infection, result.ct.image, path, overwrite, meta)


# ------------------------------------------------------------------------------------------------ reading


def _parse_header(raw: bytes, path: Path) -> tuple[dict[str, str], dict[str, str], int]:
    end = raw.find(b"\n\n")
    if not raw.startswith(b"NRRD") or end < 0:
        raise InputError(f"{path} is not a NRRD file (no NRRD magic or header end); choose a .seg.nrrd file.")
    fields: dict[str, str] = {}
    keyvalues: dict[str, str] = {}
    for line in raw[:end].decode("utf-8", errors="replace").splitlines()[1:]:
        if not line or line.startswith("#"):
            continue
        if ":=" in line:
            key, value = line.split(":=", 1)
            keyvalues[key] = value
        elif ": " in line:
            key, value = line.split(": ", 1)
            fields[key.strip().lower()] = value.strip()
    return fields, keyvalues, end + 2


def _parse_vectors(text: str) -> list[np.ndarray | None]:
    out: list[np.ndarray | None] = []
    for token in text.replace(") (", ")|(").replace(" (", "|(").replace(") ", ")|").split("|"):
        token = token.strip()
        if not token:
            continue
        out.append(None if token == "none" else np.array([float(v) for v in token.strip("()").split(",")]))
    return out


def read_seg_nrrd(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, sitk.Image, dict[str, Any]]:
    """Read a ``.seg.nrrd`` into (lungs, infection, reference image, metadata).

    Segments are matched to the CovidCT labelmaps by name (or ID) through :data:`labels.SEGMENTS`; this
    reads files written by :func:`write_seg_nrrd` and by Slicer (3-D or 4-D, shared layers or not).
    The reference is an empty uint8 image carrying the file's geometry. ``metadata`` holds ``segments``
    (one dict per segment), ``fields`` (all ``key:=value`` pairs) and ``header`` (NRRD fields).
    """
    p = Path(path)
    raw = p.read_bytes()
    fields, keyvalues, offset = _parse_header(raw, p)
    if "data file" in fields or "datafile" in fields:
        raise InputError(f"{p} is a detached-header NRRD; save it as a single .seg.nrrd file in Slicer.")
    dtype = _NRRD_TYPES.get(fields.get("type", ""))
    if dtype is None:
        raise InputError(f"{p}: unsupported NRRD type '{fields.get('type')}'.")
    sizes = [int(v) for v in fields["sizes"].split()]
    kinds = fields.get("kinds", "").split()
    payload = raw[offset:]
    encoding = fields.get("encoding", "raw")
    if encoding in ("gzip", "gz"):
        payload = gzip.decompress(payload)
    elif encoding != "raw":
        raise InputError(f"{p}: unsupported NRRD encoding '{encoding}' (raw or gzip expected).")
    byteorder = "<" if fields.get("endian", "little") == "little" else ">"
    arr = np.frombuffer(payload, dtype=np.dtype(dtype).newbyteorder(byteorder), count=int(np.prod(sizes)))
    arr = arr.reshape(tuple(reversed(sizes))).astype(np.int64)
    if len(sizes) == 3:
        arr = arr[..., None]
        spatial = sizes
    elif len(sizes) == 4 and (kinds[:1] == ["list"] or kinds[:1] == ["vector"] or len(kinds) == 0):
        spatial = sizes[1:]
    else:
        raise InputError(f"{p}: unsupported NRRD layout sizes={sizes} kinds={kinds}.")
    vectors = [v for v in _parse_vectors(fields["space directions"]) if v is not None]
    axes = np.column_stack(vectors)
    spacing = np.linalg.norm(axes, axis=0)
    direction = axes / spacing[None, :]
    origin = _parse_vectors(fields.get("space origin", "(0,0,0)"))[0]
    space = fields.get("space", "left-posterior-superior")
    if space in ("right-anterior-superior", "RAS"):
        flip = np.diag([-1.0, -1.0, 1.0])
        direction, origin = flip @ direction, flip @ origin
    reference = sitk.Image([int(s) for s in spatial], sitk.sitkUInt8)
    reference.SetSpacing([float(s) for s in spacing])
    reference.SetOrigin([float(o) for o in origin])
    reference.SetDirection([float(d) for d in direction.ravel()])

    lungs = np.zeros(arr.shape[:3], dtype=np.uint8)
    infection = np.zeros(arr.shape[:3], dtype=np.uint8)
    targets = {"lungs": lungs, "infection": infection}
    by_name = {s.name.lower(): s for s in SEGMENTS} | {s.key: s for s in SEGMENTS}
    segments = []
    i = 0
    while f"Segment{i}_ID" in keyvalues:
        get = lambda k, i=i: keyvalues.get(f"Segment{i}_{k}", "")  # noqa: E731
        label = int(get("LabelValue") or 1)
        layer = int(get("Layer") or i)
        info = {
            "index": i,
            "id": get("ID"),
            "name": get("Name"),
            "label_value": label,
            "layer": layer,
            "color": [float(c) for c in get("Color").split()] if get("Color") else None,
            "extent": [int(v) for v in get("Extent").split()] if get("Extent") else None,
            "tags": dict(t.split(":", 1) for t in get("Tags").split("|") if ":" in t),
        }
        segments.append(info)
        spec = by_name.get(info["name"].lower()) or by_name.get(info["id"])
        if spec is not None and layer < arr.shape[3]:
            targets[spec.source][arr[..., layer] == label] = spec.label
        i += 1
    metadata = {"segments": segments, "fields": keyvalues, "header": fields}
    return lungs, infection, reference, metadata
