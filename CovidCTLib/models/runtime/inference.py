"""Run the shipped lung and infection networks on CT volumes and 2-D images.

* Device: ``auto`` picks CUDA when available, else CPU; on CUDA the forward pass runs under autocast.
* Volumes are reoriented to LPS (radiological display, as the training slices) without resampling, every
  axial slice is normalised (:mod:`CovidCTLib.models.runtime.normalization`), resized to the network size, run in
  batches, and the class probabilities are resized back (bilinear) before the arg-max, so the labelmaps
  are on the CT's own voxel grid. Results are mapped back to the original axis order.
* Lungs: on HU volumes solid 2-D components (median > -200 HU: liver, spleen) are dropped, the largest
  3-D components kept, holes filled per slice, then right (1) / left (2) from
  ``CovidCTLib.classical.lungs.split_right_left``. Infection: only slices containing lung go through the
  infection network, each cropped to its lung box (``normalization.lung_box``); output is restricted
  to the lungs.
* Test-time flips: a model whose manifest lists ``postprocess.test_time_flips`` (for example ``["h", "v",
  "hv"]``) is also run on the horizontally / vertically / doubly mirrored inputs and the probabilities,
  mirrored back, are averaged (the flips the network was trained with; the mirrored copies share the forward
  pass of the batch, which costs about as much as one more batch each).
* How each network runs (batch size, batch norm folded, channels-last, ONNX Runtime) is
  :mod:`CovidCTLib.models.runtime.execution`'s plan.
* Progress via ``reporter.update`` (which also checks cancellation) after every batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from CovidCTLib.errors import InputError, ModelError
from CovidCTLib.models.runtime import execution, registry
from CovidCTLib.models.runtime.device import device_name
from CovidCTLib.models.runtime.normalization import (
    fit,
    infection_input,
    is_lung_region_crop,
    lung_box,
    normalize_slice,
)
from CovidCTLib.models.runtime.slice_inferer import SliceInferer
from CovidCTLib.progress import Reporter
from CovidCTLib.segmentation.postprocess import MAX_HOLE_SHARE_2D, clean_lung_mask, clean_lung_mask_2d
from CovidCTLib.segmentation.sides import split_right_left
from CovidCTLib.volume import CTVolume

#: names the trainers give their models; at run time the model of a task is the one its manifest names
LUNG_MODEL = "lung-attunet"
INFECTION_MODEL = "infection-unet"
DEFAULT_MODELS = {"lung": LUNG_MODEL, "infection": INFECTION_MODEL}
_CACHE: dict[tuple[str, str], registry.LoadedModel] = {}
_LOCK = threading.Lock()
_FOLDERS: dict[str, Path] = {}


def use_model_folder(name: str, folder: str | Path | None) -> None:
    """Use the model in ``folder`` (holding manifest.json) instead of the installed ``name`` (None resets)."""
    with _LOCK:
        for key in [k for k in _CACHE if k[0] == name]:
            del _CACHE[key]
        if folder is None:
            _FOLDERS.pop(name, None)
            return
        folder = Path(folder)
        if not (folder / "manifest.json").is_file():
            raise ModelError(f"{folder} holds no manifest.json; give a model folder such as <out>/model/{name}.")
        _FOLDERS[name] = folder


def model_name(task: str) -> str:
    """The model used for ``task`` (``lung`` / ``infection``): a folder given with :func:`use_model_folder`
    for that task, else the installed model whose manifest names the task, else the default name (so the
    "not installed" message names it)."""
    for name, folder in _FOLDERS.items():
        if registry.model_for_task(task, folder.parent) == name or name == DEFAULT_MODELS.get(task):
            return name
    return registry.model_for_task(task) or DEFAULT_MODELS[task]


def get_model(name: str, device: str = "auto") -> registry.LoadedModel:
    """Load (once per process and device) a verified registry model."""
    dev = device_name(device)
    with _LOCK:
        key = (name, dev)
        if key not in _CACHE:
            folder = _FOLDERS.get(name)
            if folder is not None:
                loaded = registry.load_model(folder.name, dev, root=folder.parent)
            else:
                loaded = registry.load_model(name, dev)
            _CACHE[key] = loaded
        return _CACHE[key]


def models_available() -> dict[str, str]:
    """``{"lung": "lung-attunet 1.0.0", "infection": ...}`` for the installed models whose checksum verifies."""
    out: dict[str, str] = {}
    for task in ("lung", "infection"):
        name = model_name(task)
        folder = _FOLDERS.get(name)
        try:
            manifest, _ = registry.verify(folder.name, folder.parent) if folder else registry.verify(name)
        except ModelError:
            continue
        out[task] = f"{name} {manifest['version']}"
    return out


def model_problems() -> dict[str, tuple[bool, str]]:
    """``{model name: (installed, why it cannot be used)}`` for the lung / infection models that do not verify
    (``installed`` is False when the folder has no manifest at all). Empty when both are usable."""
    out: dict[str, tuple[bool, str]] = {}
    for name in (model_name("lung"), model_name("infection")):
        folder = _FOLDERS.get(name)
        try:
            registry.verify(folder.name, folder.parent) if folder else registry.verify(name)
        except ModelError as exc:
            base = folder if folder else registry.models_dir() / name
            out[name] = ((base / registry.MANIFEST).is_file(), str(exc))
    return out


#: image axes mirrored by each test-time flip name (tensor layout ``(B, C, y, x)``)
FLIP_AXES = {"h": (3,), "v": (2,), "hv": (2, 3)}


def test_time_flips(model: registry.LoadedModel) -> list[str]:
    """The manifest's ``postprocess.test_time_flips`` (validated); empty when the model has none."""
    flips = list(model.manifest.get("postprocess", {}).get("test_time_flips", []))
    unknown = [f for f in flips if f not in FLIP_AXES]
    if unknown:
        raise ModelError(f"{model.name}: unknown test_time_flips {unknown} in its manifest; use h, v or hv.")
    return flips


def _forward(net: Any, batch: Any, flips: list[str]) -> Any:
    """Softmax probabilities of ``batch``, averaged over the identity and the mirrored inputs ``flips``.

    The mirrored copies go through the network in the same forward pass as the batch (one stacked batch:
    the same per-slice results, measured 1.7x faster on the CPU than one pass per flip).
    Call inside :func:`CovidCTLib.models.runtime.execution.running` (grad-free, autocast on CUDA).
    """
    import torch

    if not flips:
        return torch.softmax(net(batch).float(), dim=1)
    n = batch.shape[0]
    stacked = torch.cat([batch, *(torch.flip(batch, FLIP_AXES[f]) for f in flips)])
    probs = torch.softmax(net(stacked).float(), dim=1)
    total = probs[:n].clone()
    for k, f in enumerate(flips, start=1):
        total += torch.flip(probs[k * n : (k + 1) * n], FLIP_AXES[f])
    return total / (1 + len(flips))


def _predict_probs(
    model: registry.LoadedModel,
    inputs: list[np.ndarray],
    out_shapes: list[tuple[int, int]],
    reporter: Reporter | None = None,
    step: str = "model",
    reduce: Callable[[np.ndarray], np.ndarray] | None = None,
    channels: tuple[int, ...] | None = None,
) -> list[np.ndarray]:
    """Run ``inputs`` (each ``(C, S, S)`` float32) in batches; return class probabilities ``(K, h, w)``.

    With ``postprocess.test_time_flips`` in the model's manifest the probabilities are flip-averaged.
    ``reduce``: applied to each slice's ``(K, h, w)`` probabilities as soon as they are computed (e.g. keep
    one class, or threshold), so the full-resolution probabilities of the whole scan are never held at once.
    ``channels``: only these classes are resized and returned, in this order (bilinear resizing treats each
    class alone, so their values are the same; the lung network needs only its lung class).
    How the batches run (memory layout, autocast, pinned memory) is :mod:`.execution`'s plan.
    """
    import torch.nn.functional as F  # noqa: N812

    plan = execution.plan_for(model.device, execution.network_of(model))
    net = execution.network(model, plan)
    flips = test_time_flips(model)
    results: list[np.ndarray] = []
    n = len(inputs)
    step_n = max(1, plan.batch // (1 + len(flips)))  # slices per forward pass, their flips included
    for start in range(0, n, step_n):
        shapes = out_shapes[start : start + step_n]
        with execution.running(plan):
            probs = _forward(net, execution.to_batch(np.stack(inputs[start : start + step_n]), plan), flips)
            if channels is not None:
                probs = probs[:, list(channels)]
            if len(set(shapes)) == 1 and tuple(shapes[0]) != tuple(probs.shape[-2:]):  # one resize for the batch
                probs = F.interpolate(probs, size=tuple(shapes[0]), mode="bilinear", align_corners=False)
            for j, (h, w) in enumerate(shapes):
                p = probs[j : j + 1]
                if (h, w) != tuple(p.shape[-2:]):
                    p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
                out = p[0].cpu().numpy()
                results.append(reduce(out) if reduce is not None else out)
        if reporter is not None:
            done = min(start + step_n, n)
            reporter.update(step, done / max(n, 1), f"{done}/{n} slices")
    return results


def _split_sides(mask: np.ndarray, ct: CTVolume) -> np.ndarray:
    return split_right_left(mask, ct).astype(np.uint8)


_fit = fit


def lung_threshold(device: str = "auto") -> float:
    """Probability threshold of the lung model (``postprocess.threshold`` in its manifest, default 0.5)."""
    return float(get_model(model_name("lung"), device).manifest.get("postprocess", {}).get("threshold", 0.5))


def infection_threshold(device: str = "auto") -> float:
    """Threshold on P(GGO) + P(consolidation) (``postprocess.threshold`` of the infection manifest, 0.5)."""
    return float(get_model(model_name("infection"), device).manifest.get("postprocess", {}).get("threshold", 0.5))


def _infection_labels(probs: np.ndarray, threshold: float) -> np.ndarray:
    """0 / 1 (GGO) / 2 (consolidation): infection where P(GGO) + P(cons) >= threshold, then the likelier type."""
    infected = probs[1] + probs[2] >= threshold
    return np.where(infected, np.where(probs[2] > probs[1], 2, 1), 0).astype(np.uint8)


def _lung_slices(
    ct: CTVolume,
    device: str,
    reporter: Reporter | None,
    inferer: SliceInferer,
    reduce: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """``reduce`` of each slice's lung probability ``(h, w)``, stacked ``(z, y, x)`` on the LPS-oriented grid."""
    model = get_model(model_name("lung"), device)
    arr = inferer.array
    size = model.input_size
    inputs = inferer.map_slices(lambda z: _fit(inferer.normalized(z), size)[None], range(arr.shape[0]))
    shapes = [s.shape for s in arr]
    lung_only = _predict_probs(model, inputs, shapes, reporter, "lungs", lambda p: reduce(p[0]), channels=(1,))
    return np.stack(lung_only)


def lung_probability(
    ct: CTVolume, device: str = "auto", reporter: Reporter | None = None, inferer: SliceInferer | None = None
) -> np.ndarray:
    """Per-voxel lung probability ``(z, y, x)`` (float32) on the LPS-oriented grid of ``ct``."""
    return _lung_slices(ct, device, reporter, inferer or SliceInferer(ct), lambda p: p.astype(np.float32))


def segment_lungs_model(
    ct: CTVolume, device: str = "auto", reporter: Reporter | None = None, inferer: SliceInferer | None = None
) -> np.ndarray:
    """Lung labelmap ``(z, y, x)`` uint8 on the CT grid: 1 right lung, 2 left lung (model + side split).

    ``inferer``: the CT's :class:`SliceInferer` when the infection network will run next (its normalised
    slices are reused). Each slice is thresholded as it comes out of the network (no probability volume).
    """
    inferer = inferer or SliceInferer(ct)
    thr = lung_threshold(device)
    lung = _lung_slices(ct, device, reporter, inferer, lambda p: p >= thr)
    if ct.image.GetDimension() != 3:
        return _split_sides(lung.reshape(ct.shape), ct)
    hu = inferer.array if ct.intensity == "HU" else None
    mask = clean_lung_mask(lung, hu) if ct.is_3d else lung
    return _split_sides(inferer.to_ct_grid(mask) > 0, ct)


def segment_infection_model(
    ct: CTVolume,
    lungs: np.ndarray,
    device: str = "auto",
    reporter: Reporter | None = None,
    inferer: SliceInferer | None = None,
) -> np.ndarray:
    """Infection labelmap ``(z, y, x)`` uint8: 1 ground-glass, 2 consolidation, always inside ``lungs``."""
    lungs = np.asarray(lungs)
    shape = ct.shape if ct.image.GetDimension() == 3 else (1, *ct.shape[1:])
    if lungs.reshape(-1).size != int(np.prod(shape)):
        raise InputError(f"lung labelmap shape {lungs.shape} does not match the CT {ct.shape} (z, y, x).")
    lungs = lungs.reshape(shape)
    model = get_model(model_name("infection"), device)
    inferer = inferer or SliceInferer(ct)
    arr = inferer.array
    lung_o = inferer.from_ct_grid(lungs) > 0 if ct.image.GetDimension() == 3 else lungs > 0
    out = np.zeros(arr.shape, np.uint8)
    zs = [z for z in range(arr.shape[0]) if lung_o[z].any()]
    boxes = [lung_box(lung_o[z]) for z in zs]
    size = model.input_size
    inputs = inferer.map_slices(
        lambda i: infection_input(inferer.normalized(zs[i]), lung_o[zs[i]], boxes[i], size), range(len(zs))
    )
    shapes = [(b[0].stop - b[0].start, b[1].stop - b[1].start) for b in boxes]
    thr = infection_threshold(device)
    # labels as each slice leaves the network: the class probabilities of the scan are never held at once
    labels = _predict_probs(model, inputs, shapes, reporter, "infection", lambda p: _infection_labels(p, thr))
    for z, box, lab in zip(zs, boxes, labels, strict=True):
        out[z][box] = np.where(lung_o[z][box], lab, 0).astype(np.uint8)
    if ct.image.GetDimension() == 3:
        out = inferer.to_ct_grid(out)
    return out.reshape(lungs.shape)


def _as_gray(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].astype(np.float32).mean(-1)
    if a.ndim != 2:
        raise InputError(f"expected a 2-D grey or colour image, got shape {a.shape}")
    return a


def segment_slice_images(
    task: str, images: list[np.ndarray], device: str = "auto", reporter: Reporter | None = None
) -> list[np.ndarray]:
    """Segment 8-bit axial CT images (display orientation); each result has its image's size.

    ``task``: ``lung`` (0/1), ``infection`` (0/1) or ``lesion-type`` (0 none, 1 GGO, 2 consolidation).
    Infection needs lungs: the lung network runs first; the infection network sees the lung-box crop and
    its output is kept inside the lung mask. Images that are already lung-region crops (the lung box
    covers >= 75 % of the image) are segmented without the lung mask (channel all ones, no restriction).
    """
    if task not in ("lung", "infection", "lesion-type"):
        raise InputError(f"unknown task {task!r}; use lung, infection or lesion-type.")
    grays = [_as_gray(im) for im in images]
    lungs = slice_lungs(grays, device, reporter)
    if task == "lung":
        return [m.astype(np.uint8) for m in lungs]
    ithr = infection_threshold(device)
    out = []
    for region in slice_infection_probabilities(grays, lungs, device, reporter):
        lab = region.labels(ithr)
        out.append(lab if task == "lesion-type" else (lab > 0).astype(np.uint8))
    return out


def slice_lung_probabilities(
    grays: list[np.ndarray], device: str = "auto", reporter: Reporter | None = None
) -> list[np.ndarray]:
    """P(lung) of each 8-bit greyscale image, at the image's size."""
    lung_model = get_model(model_name("lung"), device)
    lin = [normalize_slice(g, "8bit", False, lung_model.input_size)[None] for g in grays]
    return [p[1] for p in _predict_probs(lung_model, lin, [g.shape for g in grays], reporter, "lungs")]


def slice_lungs(
    grays: list[np.ndarray],
    device: str = "auto",
    reporter: Reporter | None = None,
    max_hole_share: float = MAX_HOLE_SHARE_2D,
) -> list[np.ndarray]:
    """Lung masks (bool) of 8-bit greyscale images: the manifest threshold, then the 2-D clean-up (holes of
    up to ``max_hole_share`` of the lung filled, see :func:`clean_lung_mask_2d`)."""
    thr = lung_threshold(device)
    return [clean_lung_mask_2d(p >= thr, max_hole_share) for p in slice_lung_probabilities(grays, device, reporter)]


@dataclass
class SliceInfection:
    """Infection class probabilities of one image inside its lung box, and how to turn them into labels."""

    probs: np.ndarray  # (3, h, w) background / GGO / consolidation over the box
    box: tuple[slice, slice]
    lung: np.ndarray  # (H, W) bool lung mask of the whole image
    is_crop: bool  # the image is a lung-region crop: labels are not restricted to the lung mask

    def labels(self, threshold: float) -> np.ndarray:
        """(H, W) uint8: 0 none, 1 GGO, 2 consolidation."""
        lab = np.zeros(self.lung.shape, np.uint8)
        if not self.lung.any():  # issue 12.1: no lung found, so no infection (not a search of the whole image)
            return lab
        inside = _infection_labels(self.probs, threshold)
        lab[self.box] = inside if self.is_crop else np.where(self.lung[self.box], inside, 0)
        return lab


def slice_infection_probabilities(
    grays: list[np.ndarray], lungs: list[np.ndarray], device: str = "auto", reporter: Reporter | None = None
) -> list[SliceInfection]:
    """Run the infection network on the lung-box crop of each 8-bit image (see :func:`segment_slice_images`)."""
    inf_model = get_model(model_name("infection"), device)
    size = inf_model.input_size
    full = [(slice(0, g.shape[0]), slice(0, g.shape[1])) for g in grays]
    boxes = [lung_box(m) or f for m, f in zip(lungs, full, strict=True)]
    # an image whose lung box fills most of it is a lung-region crop (like the MedSeg training images):
    # the lung network is unreliable there, so the infection network gets "lung unknown" (all ones) and
    # its output is not restricted to the lung mask
    crops = [is_lung_region_crop(b, g.shape) for b, g in zip(boxes, grays, strict=True)]
    iin = [
        infection_input(normalize_slice(g, "8bit", False, None), np.ones_like(m) if c else m, box, size)
        for g, m, box, c in zip(grays, lungs, boxes, crops, strict=True)
    ]
    shapes = [(b[0].stop - b[0].start, b[1].stop - b[1].start) for b in boxes]
    iprobs = _predict_probs(inf_model, iin, shapes, reporter, "infection")
    return [SliceInfection(p, box, m, c) for p, box, m, c in zip(iprobs, boxes, lungs, crops, strict=True)]
