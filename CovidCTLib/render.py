"""Pictures for the reports: an offscreen VTK 3-D rendering and slice overlay montages.

3-D: :func:`render_surfaces_png` draws the segment surfaces (lungs semi-transparent, lesions opaque, colours
and opacities from :data:`CovidCTLib.labels.SEGMENTS`) from the front (anterior view: patient right on the
image left, head up). It needs an OpenGL context without a screen: the VTK wheels use EGL (Mesa: Debian
packages ``libegl1 libegl-mesa0 libgl1-mesa-dri``) when there is no X display, or X (e.g. ``xvfb-run``).
Whether that works is checked once per process in a child process (a broken OpenGL stack then cannot crash
the caller); when it does not, :class:`RenderUnavailableError` says what to install.

2-D: :func:`overlay_montage_png` (drawn by :mod:`CovidCTLib.montage`) shows the axial or coronal slices with
the most infection in a lung window (W 1500 / L -600 HU) with lung outlines and infection filled, in
radiological orientation (anterior up on axial views, superior up on coronal views, patient right on the
image left), using the image direction matrix (each index axis mapped to its nearest patient axis, as
``DICOMOrient`` does) so that oblique or
flipped scans are shown the right way.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from CovidCTLib.atomic import write_bytes_atomic
from CovidCTLib.errors import CovidCTError
from CovidCTLib.labels import SEGMENTS

LUNG_WINDOW = (-600.0, 1500.0)  # level, width in HU

_PROBE = """
import vtk
window = vtk.vtkRenderWindow()
window.SetOffScreenRendering(1)
window.SetSize(8, 8)
renderer = vtk.vtkRenderer()
renderer.SetBackground(1, 0, 0)
window.AddRenderer(renderer)
window.Render()
grab = vtk.vtkWindowToImageFilter()
grab.SetInput(window)
grab.Update()
value = grab.GetOutput().GetScalarComponentAsDouble(4, 4, 0, 0)
print("OK" if value > 200 else "BLANK", window.GetClassName())
"""


class RenderUnavailableError(CovidCTError):
    """No offscreen OpenGL context can be made on this machine."""


_PROBE_LOCK = threading.Lock()
_PROBED: list = []  # the one outcome of this process: the window class name, or the RenderUnavailableError


def offscreen_backend() -> str:
    """Check (once per process, in a child process) that offscreen VTK rendering works; return the window
    class used. Raises :class:`RenderUnavailableError` when it does not (every time, without re-checking).
    """
    with _PROBE_LOCK:
        _check_once()
    outcome = _PROBED[0]
    if isinstance(outcome, RenderUnavailableError):
        raise outcome
    return outcome


def _check_once() -> None:
    """Run the check unless it ran (the caller holds :data:`_PROBE_LOCK`)."""
    if not _PROBED:
        try:
            _PROBED.append(_probe_backend())
        except RenderUnavailableError as exc:
            _PROBED.append(exc)


def _probe_backend() -> str:
    """:func:`offscreen_backend` without the lock.

    Without an X display, EGL is tried first (``VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow``, which also
    avoids VTK's "bad X server connection" warning), then VTK's default choice.
    """
    attempts: list[dict[str, str]] = []
    if not os.environ.get("DISPLAY") and "VTK_DEFAULT_OPENGL_WINDOW" not in os.environ:
        attempts.append({"VTK_DEFAULT_OPENGL_WINDOW": "vtkEGLRenderWindow"})
    attempts.append({})
    problems = []
    for extra in attempts:
        try:
            done = subprocess.run(
                [sys.executable, "-c", _PROBE],
                env={**os.environ, **extra},
                capture_output=True,
                text=True,
                timeout=120,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            problems.append(str(exc))
            continue
        words = done.stdout.split()
        if done.returncode == 0 and words[:1] == ["OK"]:
            os.environ.update(extra)
            return words[1] if len(words) > 1 else "vtkRenderWindow"
        problems.append(_last_message(done.stderr) or f"exit code {done.returncode}")
    raise RenderUnavailableError(
        "3-D rendering is not available here (no offscreen OpenGL context: "
        + "; ".join(dict.fromkeys(problems))
        + "). "
        "Install Mesa EGL (Debian/Ubuntu: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri) or OSMesa "
        "(libosmesa6), or run under a virtual X server (apt-get install xvfb; xvfb-run -a covidct ...). "
        "The reports are still written, without the 3-D picture."
    )


def _last_message(stderr: str) -> str:
    """The last line of a child's stderr without colour codes and VTK's log prefix."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in stderr.splitlines()]
    lines = [line.split("| ", 1)[-1] for line in lines if line]
    return lines[-1][:200] if lines else ""


def render_surfaces_png(
    polydatas: Mapping[str, object],
    path: str | os.PathLike | None = None,
    size: tuple[int, int] = (800, 800),
    view: str = "anterior",
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> bytes:
    """Render segment surfaces (``{segment_key: vtkPolyData}`` in LPS mm) offscreen; return PNG bytes.

    Writes the PNG to ``path`` too when given. ``view`` is ``"anterior"`` (from the front, patient right on
    the image left) or ``"posterior"``. Raises :class:`RenderUnavailableError` without OpenGL.
    """
    if view not in ("anterior", "posterior"):
        raise ValueError("view must be 'anterior' or 'posterior'")
    offscreen_backend()
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    renderer = vtk.vtkRenderer()
    renderer.SetBackground(*background)
    # see-through lungs over opaque lesions: VTK's order-independent translucency (one pass); depth peeling
    # drew the same RICORD picture (mean difference 0.6 of 255) at three times the cost on the CPU (Mesa)
    renderer.SetUseDepthPeeling(0)
    renderer.SetUseOIT(1)
    shown = 0
    order = {spec.key: spec for spec in SEGMENTS}
    for key, poly in polydatas.items():
        if poly is None or poly.GetNumberOfCells() == 0:
            continue
        spec = order.get(key)
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputData(poly)
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        prop = actor.GetProperty()
        prop.SetColor(*(spec.color if spec else (0.8, 0.8, 0.8)))
        prop.SetOpacity(spec.opacity_3d if spec else 1.0)
        prop.SetSpecular(0.2)
        prop.SetSpecularPower(20)
        if spec is not None and spec.opacity_3d < 1.0:
            prop.BackfaceCullingOn()
        renderer.AddActor(actor)
        shown += 1

    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetAlphaBitPlanes(1)
    window.SetMultiSamples(0)
    window.SetSize(int(size[0]), int(size[1]))
    window.AddRenderer(renderer)
    camera = renderer.GetActiveCamera()
    camera.SetFocalPoint(0.0, 0.0, 0.0)
    # LPS: anterior is -y, superior +z; looking from -y towards +y puts +x (patient left) on the image right
    camera.SetPosition(0.0, -1.0 if view == "anterior" else 1.0, 0.0)
    camera.SetViewUp(0.0, 0.0, 1.0)
    if shown:
        renderer.ResetCamera()
        camera.Zoom(1.15)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    image = grab.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[::-1]
    window.Finalize()
    data = _png_bytes(np.ascontiguousarray(pixels[..., :3]))
    if path is not None:
        write_bytes_atomic(path, data)
    return data


def _png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    from CovidCTLib.montage import PNG_LEVEL

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------- 2-D montages


def lps_view(array: np.ndarray, reference: sitk.Image) -> tuple[np.ndarray, tuple[float, float, float]]:
    """View of a ``(z, y, x)`` array re-axed to (toward Superior, toward Posterior, toward patient Left).

    Each index axis is mapped to the patient axis its direction is closest to (as ``DICOMOrient`` does, no
    resampling), flipping where it points the other way. Returns the view and its spacing (x, y, z) in mm.
    """
    direction = np.asarray(reference.GetDirection(), dtype=float).reshape(3, 3)
    spacing = reference.GetSpacing()
    # array axis for index axis i (x, y, z) is 2 - i
    patient_axis = [int(np.argmax(np.abs(direction[:, i]))) for i in range(3)]
    if sorted(patient_axis) != [0, 1, 2]:
        patient_axis = [0, 1, 2]  # degenerate (45 degree) case: keep the stored order
    view = array
    for i in range(3):
        if direction[patient_axis[i], i] < 0:
            view = np.flip(view, axis=2 - i)
    # new array axis 0 <- patient z (S), 1 <- patient y (P), 2 <- patient x (L)
    source_axes = [2 - patient_axis.index(p) for p in (2, 1, 0)]
    view = np.transpose(view, source_axes)
    new_spacing = tuple(float(spacing[patient_axis.index(p)]) for p in (0, 1, 2))
    return view, new_spacing  # type: ignore[return-value]


def choose_slices(counts: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` indices with the largest positive ``counts``, in increasing order.

    First pass: only slices at least len/(4n) apart (spread over the affected region); second pass fills up
    with the next best positive slices. The best slice alone when every count is zero.
    """
    gap = max(1, len(counts) // (4 * max(n, 1)))
    ranked = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
    chosen: list[int] = []
    for index in ranked:
        if len(chosen) < n and all(abs(index - c) >= gap for c in chosen):
            chosen.append(index)
    for index in ranked:
        if len(chosen) < n and index not in chosen:
            chosen.append(index)
    if not chosen and len(counts):
        chosen = [int(np.argmax(counts))]
    return sorted(chosen)


def overlay_montage_png(
    ct,
    lungs: np.ndarray,
    infection: np.ndarray,
    plane: str = "axial",
    n: int = 6,
    columns: int = 3,
    path: str | os.PathLike | None = None,
) -> bytes:
    """Montage of the ``n`` slices with the most infection (most lung when there is none); PNG bytes.

    ``plane`` is ``"axial"`` or ``"coronal"``. The CT is shown in a lung window (or 0..255 for 8-bit input),
    lung outlines in the lung colours, ground-glass and consolidation filled semi-transparently.
    """
    if plane not in ("axial", "coronal"):
        raise ValueError("plane must be 'axial' or 'coronal'")
    volume, spacing = lps_view(sitk.GetArrayViewFromImage(ct.image), ct.image)
    lung, _ = lps_view(np.asarray(lungs), ct.image)
    inf, _ = lps_view(np.asarray(infection), ct.image)
    axis = 0 if plane == "axial" else 1
    sum_axes = (1, 2) if axis == 0 else (0, 2)
    counts = (inf > 0).sum(axis=sum_axes).astype(float)
    basis = "infection"
    if counts.max() <= 0:
        counts, basis = (lung > 0).sum(axis=sum_axes).astype(float), "lung"
    picks = choose_slices(counts, n)
    if plane == "axial":
        picks = picks[::-1]  # head first
    if ct.intensity == "HU":
        level, width = LUNG_WINDOW
        window = (level - width / 2, level + width / 2)
    else:
        window = (0.0, 255.0)

    from CovidCTLib.montage import Tile, montage_png

    specs = {s.key: s for s in SEGMENTS}
    tiles = []
    for index in picks:
        if plane == "axial":
            # rows: anterior (top) to posterior; columns: patient right (left) to left
            ct_slice, lung_slice, inf_slice = volume[index], lung[index], inf[index]
            aspect = spacing[1] / spacing[0]
            marks = ("R", "L", "A", "P")
        else:
            # coronal: superior at the top, patient right on the left
            ct_slice, lung_slice, inf_slice = volume[::-1, index], lung[::-1, index], inf[::-1, index]
            aspect = spacing[2] / spacing[0]
            marks = ("R", "L", "S", "I")
        title = f"{plane} {index + 1}/{volume.shape[axis]}"
        if basis == "infection":
            title += f"  infection {float(counts[index]) * ct.voxel_volume_ml:.1f} mL"
        tiles.append(Tile(ct_slice, lung_slice, inf_slice, aspect, title, marks))
    data = montage_png(
        tiles,
        columns,
        window,
        {1: specs["right_lung"].color, 2: specs["left_lung"].color},
        {1: (specs["ggo"].color, 0.55), 2: (specs["consolidation"].color, 0.7)},
    )
    if path is not None:
        write_bytes_atomic(Path(path), data)
    return data
