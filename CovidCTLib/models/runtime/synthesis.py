"""``covidct synthesize``: turn non-COVID chest CT images into COVID-like ones with a trained CycleGAN generator.

Each image is read as 8-bit grey, its lungs are found automatically (the classifier's Otsu lung box), the lung
crop is resized to the generator's size and translated; the **change** the generator makes (output minus
input, at its size) is resized back to the crop and added to the original image, so the result keeps the
input's size, resolution and everything outside the lung box. It is written under the same file name.
Each written image carries a comment (PNG text / JPEG comment) saying it is synthetic, with the software and
model versions and the research-only statement. The generator is loaded only from a sealed model folder
(manifest + SHA-256, :mod:`registry`): a missing or modified model is refused with
:class:`~CovidCTLib.errors.ModelError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from CovidCTLib.errors import InputError, ModelError
from CovidCTLib.version import DISCLAIMER, __version__

MODEL_NAME = "covid-synthesizer"
NORMALIZATION = "lung-crop-display-v1"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def lung_box(unit: np.ndarray, mask: np.ndarray | None = None) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` of the lungs of a display-range slice (automatic mask when ``mask`` is None)."""
    from CovidCTLib.models.runtime.classifier import AUTO_MIN_BOX_FRACTION, lung_bbox, lung_mask_from_unit

    auto = mask is None
    if auto:
        mask = lung_mask_from_unit(unit)
    return lung_bbox(mask, min_box_fraction=AUTO_MIN_BOX_FRACTION if auto else 0.0)


def crop_box(image01: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """The ``box`` region of an image (the whole image when ``box`` is None)."""
    if box is None:
        return image01
    y0, y1, x0, x1 = box
    return image01[y0:y1, x0:x1]


@dataclass
class Synthesizer:
    """A loaded generator, its input size and manifest."""

    module: Any
    size: int
    manifest: dict[str, Any]
    device: str = "cpu"

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", "unknown"))


def model_folder(path: str | Path) -> Path:
    """The model folder of ``--model``: a training run (``RUN/model/covid-synthesizer``) or the folder itself."""
    p = Path(path)
    for candidate in (p / "model" / MODEL_NAME, p):
        if (candidate / "manifest.json").is_file():
            return candidate
    raise ModelError(
        f"no synthesizer model in {p} (neither {p / 'model' / MODEL_NAME / 'manifest.json'} nor "
        f"{p / 'manifest.json'} exists); train one with 'covidct train synthesizer --out RUN'."
    )


def load_synthesizer(path: str | Path, device: str = "cpu") -> Synthesizer:
    """Verify (seal, SHA-256, allowed network) and load the A->B generator of ``path``."""
    from CovidCTLib.models.runtime.registry import load_model

    folder = model_folder(path)
    loaded = load_model(folder.name, device=device, root=folder.parent)
    if loaded.manifest.get("task") != "synthesis" or loaded.manifest.get("normalization") != NORMALIZATION:
        raise ModelError(
            f"{folder} is not a CovidCT synthesizer (task {loaded.manifest.get('task')!r}); give the "
            "folder written by 'covidct train synthesizer'."
        )
    return Synthesizer(loaded.module, loaded.input_size, loaded.manifest, device)


def translate(synth: Synthesizer, image01: np.ndarray) -> np.ndarray:
    """A COVID-like version of a 2-D ``[0, 1]`` grey image, same shape (see the module docstring)."""
    import torch

    from CovidCTLib.models.runtime.classifier import resize, to_unit

    img = np.asarray(image01, dtype=np.float32)
    box = lung_box(to_unit(img * 255.0, "8bit"))
    crop = crop_box(img, box)
    small = np.clip(resize(crop, synth.size), 0.0, 1.0)
    with torch.no_grad():
        x = torch.from_numpy(small[None, None] * 2.0 - 1.0).to(synth.device)
        y = (synth.module(x)[0, 0].float().cpu().numpy() + 1.0) / 2.0
    delta = y - small
    from skimage.transform import resize as sk_resize

    delta_full = sk_resize(delta, crop.shape, order=1, anti_aliasing=False, preserve_range=True).astype(np.float32)
    out = img.copy()
    if box is None:
        out = out + delta_full
    else:
        y0, y1, x0, x1 = box
        out[y0:y1, x0:x1] += delta_full
    return np.clip(out, 0.0, 1.0)


def synthesize_folder(
    src: str | Path, out: str | Path, model: str | Path, device: str = "cpu", overwrite: bool = False
) -> dict[str, Any]:
    """Translate every image of ``src`` into ``out`` (same names and sizes); returns a summary."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from CovidCTLib.atomic import atomic_path
    from CovidCTLib.models.data.classifier_data import read_image

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise InputError(f"--from {src} is not a folder; give a folder of PNG/JPEG images.")
    files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"--from {src} holds no PNG/JPEG/BMP/TIFF images.")
    synth = load_synthesizer(model, device)
    out.mkdir(parents=True, exist_ok=True)
    clashes = [p.name for p in files if (out / p.name).exists()]
    if clashes and not overwrite:
        raise InputError(
            f"{out} already holds {len(clashes)} of the output names (e.g. {clashes[0]}); choose "
            "another -o folder or pass --overwrite."
        )
    note = (
        f"Synthetic image made by CovidCT {__version__} with {synth.manifest.get('name')} {synth.version}; "
        f"not a real patient. {DISCLAIMER}"
    )
    for p in files:
        img = np.clip(read_image(p) / 255.0, 0.0, 1.0)
        result = (translate(synth, img) * 255.0).round().astype(np.uint8)
        fmt = Image.registered_extensions()[p.suffix.lower()]
        extra: dict[str, Any] = {}
        if fmt == "PNG":
            info = PngInfo()
            info.add_text("Comment", note)
            extra["pnginfo"] = info
        elif fmt == "JPEG":
            extra["comment"] = note.encode("utf-8")
        with atomic_path(out / p.name, overwrite=True) as tmp:
            Image.fromarray(result).save(tmp, format=fmt, **extra)
    return {
        "images": len(files),
        "out": str(out),
        "model": synth.manifest.get("name"),
        "model_version": synth.version,
        "model_sha256": synth.manifest.get("sha256"),
    }
