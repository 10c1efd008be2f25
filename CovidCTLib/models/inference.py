"""Run the shipped lung and infection networks on CT volumes and 2-D images.

* Device: ``auto`` picks CUDA when available, else CPU; on CUDA the forward pass runs under autocast.
* Volumes are reoriented to LPS (radiological display, as the training slices) without resampling, every
  axial slice is normalised (:mod:`CovidCTLib.models.normalization`), resized to the network size, run in
  batches, and the class probabilities are resized back (bilinear) before the arg-max, so the labelmaps
  are on the CT's own voxel grid. Results are mapped back to the original axis order.
* Lungs: on HU volumes solid 2-D components (median > -200 HU: liver, spleen) are dropped, the largest
  3-D components kept, holes filled per slice, then right (1) / left (2) from
  ``CovidCTLib.classical.lungs.split_right_left``. Infection: only slices containing lung go through the
  infection network, each cropped to its lung box (``normalization.lung_box``); output is restricted
  to the lungs.
* Test-time flips: a model whose manifest lists ``postprocess.test_time_flips`` (for example ``["h", "v",
  "hv"]``) is also run on the horizontally / vertically / doubly mirrored inputs and the probabilities,
  mirrored back, are averaged (the flips the network was trained with; about one forward pass more each).
* Progress via ``reporter.update`` (which also checks cancellation) after every batch.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from CovidCTLib.errors import InputError, ModelError
from CovidCTLib.models import registry
from CovidCTLib.models.normalization import fit, lung_box, normalize_slice, orient_lps, resize_mask
from CovidCTLib.progress import Reporter
from CovidCTLib.volume import CTVolume

LUNG_MODEL = "lung-attunet"
INFECTION_MODEL = "infection-unet"
BATCH = 16
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


def pick_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available; use --device auto or cpu.")
    return str(device)


def get_model(name: str, device: str = "auto") -> registry.LoadedModel:
    """Load (once per process and device) a verified registry model."""
    dev = pick_device(device)
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
    for task, name in (("lung", LUNG_MODEL), ("infection", INFECTION_MODEL)):
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
    for name in (LUNG_MODEL, INFECTION_MODEL):
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


def _forward(model: registry.LoadedModel, batch: Any, flips: list[str]) -> Any:
    """Softmax probabilities of ``batch``, averaged over the identity and the mirrored inputs ``flips``."""
    import torch

    use_amp = model.device.startswith("cuda")
    total = None
    for axes in [(), *(FLIP_AXES[f] for f in flips)]:
        x = torch.flip(batch, axes) if axes else batch
        with torch.no_grad(), torch.autocast("cuda", enabled=use_amp):
            probs = torch.softmax(model.module(x).float(), dim=1)
        probs = torch.flip(probs, axes) if axes else probs
        total = probs if total is None else total + probs
    return total / (1 + len(flips))


def _predict_probs(
    model: registry.LoadedModel,
    inputs: list[np.ndarray],
    out_shapes: list[tuple[int, int]],
    reporter: Reporter | None = None,
    step: str = "model",
) -> list[np.ndarray]:
    """Run ``inputs`` (each ``(C, S, S)`` float32) in batches; return class probabilities ``(K, h, w)``.

    With ``postprocess.test_time_flips`` in the model's manifest the probabilities are flip-averaged.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    dev = model.device
    flips = test_time_flips(model)
    results: list[np.ndarray] = []
    n = len(inputs)
    for start in range(0, n, BATCH):
        chunk = np.stack(inputs[start:start + BATCH]).astype(np.float32)
        probs = _forward(model, torch.from_numpy(chunk).to(dev), flips)
        for j in range(probs.shape[0]):
            h, w = out_shapes[start + j]
            p = probs[j:j + 1]
            if (h, w) != tuple(p.shape[-2:]):
                p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
            results.append(p[0].cpu().numpy())
        if reporter is not None:
            reporter.update(step, min(start + BATCH, n) / max(n, 1), f"{min(start + BATCH, n)}/{n} slices")
    return results


SOLID_COMPONENT_HU = -200.0


GAS_HU = -600.0
GAS_MAX_SHARE = 0.25


def drop_gas_below_lungs(mask: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """Remove air pockets under the lungs (stomach / bowel gas below the diaphragm) from a lung mask.

    ``mask`` and ``hu`` are LPS-oriented ``(z, y, x)`` arrays (z grows to the head). The air of the mask
    (< ``GAS_HU``) is split into 3-D components; the lungs are those of at least ``GAS_MAX_SHARE`` of the
    largest. A smaller component with most of its voxels below the lowest slice of the lungs' air is gas
    under the diaphragm: it is removed with a 2-voxel in-plane rim (the stomach or bowel wall).
    """
    air = mask & (hu < GAS_HU)
    lab, n = ndi.label(air)
    if n < 2:
        return mask
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    boxes = ndi.find_objects(lab)
    lungs = sizes >= GAS_MAX_SHARE * sizes.max()
    floor = min(boxes[i][0].start for i in np.nonzero(lungs)[0])
    below = np.bincount(lab[:floor].ravel(), minlength=n + 1)[1:] / np.maximum(sizes, 1)
    gas = np.nonzero(~lungs & (below > 0.5))[0]
    if len(gas) == 0:
        return mask
    out = mask.copy()
    ring = np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool)
    for i in gas:
        box = (boxes[i][0], *(slice(max(b.start - 2, 0), b.stop + 2) for b in boxes[i][1:]))  # room for the rim
        rim = ndi.binary_dilation(lab[box] == i + 1, structure=ring, iterations=2)
        out[box] &= ~rim
    return out


def fill_holes_3d(mask: np.ndarray) -> np.ndarray:
    """Fill the background pockets of ``mask`` that do not reach the volume's border (one labelling pass)."""
    background, n = ndi.label(~mask)
    if n == 0:
        return mask
    faces = [background[0], background[-1], background[:, 0], background[:, -1], background[:, :, 0],
             background[:, :, -1]]
    outside = np.unique(np.concatenate([f.ravel() for f in faces]))
    return mask | ((background > 0) & ~np.isin(background, outside[outside > 0]))


def _clean_lungs(mask: np.ndarray, hu: np.ndarray | None = None) -> np.ndarray:
    """Post-process a 3-D lung mask.

    With HU: remove gas under the lungs (:func:`drop_gas_below_lungs`), then drop per-slice 2-D components
    whose median is above ``SOLID_COMPONENT_HU`` (solid organs such as liver or spleen; lung, even with
    consolidation, contains aerated parts). Then keep the large 3-D components (>= 10 % of the largest,
    at most 2) and fill their holes in 3-D: a dense lesion enclosed by lung stays in, while the dome of
    the liver or spleen, enclosed by lung in its top slices but joined to the abdomen below, stays out.
    Works inside the mask's bounding box (one voxel of margin), which gives the same result faster.
    """
    found = ndi.find_objects(mask.astype(np.uint8))
    if not found:
        return np.zeros(mask.shape, bool)
    box = tuple(slice(max(b.start - 1, 0), min(b.stop + 1, dim)) for b, dim in zip(found[0], mask.shape, strict=True))
    out = np.zeros(mask.shape, bool)
    out[box] = _clean_lungs_in_box(mask[box], None if hu is None else hu[box])
    return out


def _clean_lungs_in_box(mask: np.ndarray, hu: np.ndarray | None) -> np.ndarray:
    mask = mask.copy()
    if hu is not None:
        mask = drop_gas_below_lungs(mask, hu)
        for z in range(mask.shape[0]):
            if not mask[z].any():
                continue
            lab2, n2 = ndi.label(mask[z])
            med = ndi.median(hu[z], lab2, range(1, n2 + 1))
            for i, m in enumerate(np.atleast_1d(med), start=1):
                if m > SOLID_COMPONENT_HU:
                    mask[z][lab2 == i] = False
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = ndi.sum(mask, lab, range(1, n + 1))
    order = np.argsort(sizes)[::-1][:2]
    keep = [i + 1 for i in order if sizes[i] >= 0.1 * sizes[order[0]]]
    out = np.isin(lab, keep)
    return fill_holes_3d(out)


def _oriented(ct: CTVolume) -> tuple[sitk.Image, str]:
    original = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(ct.image.GetDirection())
    return orient_lps(ct.image), original


def _back(array_lps: np.ndarray, oriented: sitk.Image, original: str, ct: CTVolume) -> np.ndarray:
    img = sitk.GetImageFromArray(array_lps.astype(np.uint8))
    img.CopyInformation(oriented)
    back = sitk.GetArrayFromImage(sitk.DICOMOrient(img, original))
    if back.shape != ct.shape:
        raise ModelError("Internal orientation mapping failed; please report this with the input's geometry.")
    return back


def _split_sides(mask: np.ndarray, ct: CTVolume) -> np.ndarray:
    from CovidCTLib.classical.lungs import split_right_left

    return split_right_left(mask, ct).astype(np.uint8)


def _volume_slices(ct: CTVolume) -> tuple[np.ndarray, sitk.Image, str]:
    if ct.image.GetDimension() == 2:
        arr = sitk.GetArrayFromImage(ct.image)[None]
        return arr, ct.image, ""
    oriented, original = _oriented(ct)
    return sitk.GetArrayFromImage(oriented), oriented, original


_NORM_CACHE: dict[str, Any] = {}


def _normalized(ct: CTVolume, arr: np.ndarray, z: int) -> np.ndarray:
    """Slice ``z`` normalised at its own resolution (cached for the last CT: lungs then infection reuse it)."""
    key = (id(ct.image), ct.image.GetSize(), ct.intensity)
    if _NORM_CACHE.get("key") != key:
        _NORM_CACHE.clear()
        _NORM_CACHE.update(key=key, slices={})
    slices = _NORM_CACHE["slices"]
    if z not in slices:
        slices[z] = normalize_slice(arr[z], ct.intensity, None, None).astype(np.float16)
    return slices[z].astype(np.float32)


_fit = fit


def lung_threshold(device: str = "auto") -> float:
    """Probability threshold of the lung model (``postprocess.threshold`` in its manifest, default 0.5)."""
    return float(get_model(LUNG_MODEL, device).manifest.get("postprocess", {}).get("threshold", 0.5))


def infection_threshold(device: str = "auto") -> float:
    """Threshold on P(GGO) + P(consolidation) (``postprocess.threshold`` of the infection manifest, 0.5)."""
    return float(get_model(INFECTION_MODEL, device).manifest.get("postprocess", {}).get("threshold", 0.5))


def _infection_labels(probs: np.ndarray, threshold: float) -> np.ndarray:
    """0 / 1 (GGO) / 2 (consolidation): infection where P(GGO) + P(cons) >= threshold, then the likelier type."""
    infected = probs[1] + probs[2] >= threshold
    return np.where(infected, np.where(probs[2] > probs[1], 2, 1), 0).astype(np.uint8)


def lung_probability(ct: CTVolume, device: str = "auto", reporter: Reporter | None = None) -> np.ndarray:
    """Per-voxel lung probability ``(z, y, x)`` (float32) on the LPS-oriented grid of ``ct``."""
    model = get_model(LUNG_MODEL, device)
    arr, _, _ = _volume_slices(ct)
    size = model.input_size
    inputs = [_fit(_normalized(ct, arr, z), size)[None] for z in range(arr.shape[0])]
    probs = _predict_probs(model, inputs, [s.shape for s in arr], reporter, "lungs")
    return np.stack([p[1] for p in probs]).astype(np.float32)


def segment_lungs_model(ct: CTVolume, device: str = "auto", reporter: Reporter | None = None) -> np.ndarray:
    """Lung labelmap ``(z, y, x)`` uint8 on the CT grid: 1 right lung, 2 left lung (model + side split)."""
    arr, oriented, original = _volume_slices(ct)
    prob = lung_probability(ct, device, reporter)
    thr = lung_threshold(device)
    if ct.image.GetDimension() != 3:
        return _split_sides((prob >= thr).reshape(ct.shape), ct)
    hu = arr if ct.intensity == "HU" else None
    mask = _clean_lungs(prob >= thr, hu) if ct.is_3d else prob >= thr
    return _split_sides(_back(mask.astype(np.uint8), oriented, original, ct) > 0, ct)


def segment_infection_model(
    ct: CTVolume, lungs: np.ndarray, device: str = "auto", reporter: Reporter | None = None
) -> np.ndarray:
    """Infection labelmap ``(z, y, x)`` uint8: 1 ground-glass, 2 consolidation, always inside ``lungs``."""
    lungs = np.asarray(lungs)
    shape = ct.shape if ct.image.GetDimension() == 3 else (1, *ct.shape[1:])
    if lungs.reshape(-1).size != int(np.prod(shape)):
        raise InputError(f"lung labelmap shape {lungs.shape} does not match the CT {ct.shape} (z, y, x).")
    lungs = lungs.reshape(shape)
    model = get_model(INFECTION_MODEL, device)
    arr, oriented, original = _volume_slices(ct)
    if ct.image.GetDimension() == 3:
        lung_img = sitk.GetImageFromArray((lungs > 0).astype(np.uint8))
        lung_img.CopyInformation(ct.image)
        lung_o = sitk.GetArrayFromImage(orient_lps(lung_img)) > 0
    else:
        lung_o = lungs > 0
    out = np.zeros(arr.shape, np.uint8)
    zs = [z for z in range(arr.shape[0]) if lung_o[z].any()]
    boxes = [lung_box(lung_o[z]) for z in zs]
    size = model.input_size
    inputs = [_infection_input(_normalized(ct, arr, z), lung_o[z], box, size) for z, box in zip(zs, boxes, strict=True)]
    shapes = [(b[0].stop - b[0].start, b[1].stop - b[1].start) for b in boxes]
    probs = _predict_probs(model, inputs, shapes, reporter, "infection")
    thr = infection_threshold(device)
    for z, box, p in zip(zs, boxes, probs, strict=True):
        out[z][box] = np.where(lung_o[z][box], _infection_labels(p, thr), 0).astype(np.uint8)
    _NORM_CACHE.clear()  # the pipeline's lungs -> infection sequence is done with this CT
    if ct.image.GetDimension() == 3:
        out = _back(out, oriented, original, ct)
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


def slice_lung_probabilities(grays: list[np.ndarray], device: str = "auto",
                             reporter: Reporter | None = None) -> list[np.ndarray]:
    """P(lung) of each 8-bit greyscale image, at the image's size."""
    lung_model = get_model(LUNG_MODEL, device)
    lin = [normalize_slice(g, "8bit", False, lung_model.input_size)[None] for g in grays]
    return [p[1] for p in _predict_probs(lung_model, lin, [g.shape for g in grays], reporter, "lungs")]


def slice_lungs(grays: list[np.ndarray], device: str = "auto", reporter: Reporter | None = None) -> list[np.ndarray]:
    """Lung masks (bool) of 8-bit greyscale images: the manifest threshold, then the 2-D clean-up."""
    thr = lung_threshold(device)
    return [_clean_2d(p >= thr) for p in slice_lung_probabilities(grays, device, reporter)]


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
        inside = _infection_labels(self.probs, threshold)
        lab[self.box] = inside if self.is_crop else np.where(self.lung[self.box], inside, 0)
        return lab


def slice_infection_probabilities(grays: list[np.ndarray], lungs: list[np.ndarray], device: str = "auto",
                                  reporter: Reporter | None = None) -> list[SliceInfection]:
    """Run the infection network on the lung-box crop of each 8-bit image (see :func:`segment_slice_images`)."""
    inf_model = get_model(INFECTION_MODEL, device)
    size = inf_model.input_size
    full = [(slice(0, g.shape[0]), slice(0, g.shape[1])) for g in grays]
    boxes = [lung_box(m) or f for m, f in zip(lungs, full, strict=True)]
    # an image whose lung box fills most of it is a lung-region crop (like the MedSeg training images):
    # the lung network is unreliable there, so the infection network gets "lung unknown" (all ones) and
    # its output is not restricted to the lung mask
    crops = [_box_area(b) >= CROP_IMAGE_FRACTION * g.size for b, g in zip(boxes, grays, strict=True)]
    iin = [_infection_input(normalize_slice(g, "8bit", False, None), np.ones_like(m) if c else m, box, size)
           for g, m, box, c in zip(grays, lungs, boxes, crops, strict=True)]
    shapes = [(b[0].stop - b[0].start, b[1].stop - b[1].start) for b in boxes]
    iprobs = _predict_probs(inf_model, iin, shapes, reporter, "infection")
    return [SliceInfection(p, box, m, c) for p, box, m, c in zip(iprobs, boxes, lungs, crops, strict=True)]


CROP_IMAGE_FRACTION = 0.75


def _box_area(box: tuple[slice, slice]) -> int:
    return (box[0].stop - box[0].start) * (box[1].stop - box[1].start)


def _infection_input(norm: np.ndarray, lung: np.ndarray, box: tuple[slice, slice], size: int) -> np.ndarray:
    """Two-channel infection-network input: the lung-box crop of the normalised slice and of the lung mask."""
    lm = resize_mask(lung[box].astype(np.uint8), size).astype(np.float32)
    return np.stack([_fit(norm[box], size), lm])


def _clean_2d(mask: np.ndarray) -> np.ndarray:
    """Drop specks smaller than 2 % of the largest lung component; fill holes."""
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = ndi.sum(mask, lab, range(1, n + 1))
    keep = [i + 1 for i in range(n) if sizes[i] >= 0.02 * sizes.max()]
    return ndi.binary_fill_holes(np.isin(lab, keep))


def model_info() -> dict[str, Any]:
    """Manifests of the installed segmentation models (for reports)."""
    info: dict[str, Any] = {}
    for name in (LUNG_MODEL, INFECTION_MODEL):
        try:
            info[name] = registry.read_manifest(name)
        except ModelError:
            continue
    return info
