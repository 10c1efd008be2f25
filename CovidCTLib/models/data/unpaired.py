"""Unpaired image domains for the COVID synthesizer (``covidct train synthesizer --from ... --to-style ...``).

Every image of a domain becomes a **lung crop** in the display range (float ``[0, 1]``, 0 = black), the same
region the COVID classifier looks at (:func:`CovidCTLib.models.runtime.classifier.crop_to_lungs`):

- a folder of 2-D images (PNG / JPEG / BMP / TIFF, 8-bit grey or colour): each image, its lungs found
  automatically (Otsu), values ``/ 255``;
- a ``covid19_ct_seg_png256``-style folder (``index.csv`` with a ``ct`` column): its ``ct`` slices, cropped
  with their lung masks, the upside-down Radiopaedia slices turned back;
- a MedSeg / Inf-Net folder (an ``Imgs/`` sub-folder): its images;
- CT volumes in HU: ``.nii`` / ``.nii.gz`` / ``.nrrd`` / ``.mha`` files in the folder, and DICOM series in it
  or its sub-folders. The lungs are segmented (classical HU rules), the lung-containing axial slices
  (:func:`~CovidCTLib.models.runtime.classifier_inference.lung_slices`, at most ``max_slices_per_volume``,
  evenly spaced) are shown in the radiological view, in the lung window, and cropped to the lungs.

Crops are stored as uint8 at ``store_size`` (a little larger than the training size, for random crops) and
cached as ``.npz`` keyed by the sources and sizes.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from CovidCTLib.errors import InputError
from CovidCTLib.models.runtime.synthesis import crop_box, lung_box

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
CACHE_VERSION = "unpaired-v1"


@dataclass
class Domain:
    """The lung crops of one side of the translation: uint8 ``(n, s, s)``, where each came from and the index
    of its source folder in the ``sources`` given (training draws each source equally often)."""

    crops: np.ndarray
    names: list[str]
    source: np.ndarray

    def __len__(self) -> int:
        return int(self.crops.shape[0])

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` crop indices: a source folder uniformly at random, then one of its crops."""
        present = np.unique(self.source)
        picks = rng.choice(present, size=n)
        return np.array([rng.choice(np.nonzero(self.source == s)[0]) for s in picks], dtype=np.int64)


def read_grey01(path: Path) -> np.ndarray:
    """A 2-D image file as float32 ``[0, 1]`` grey (8-bit scale; 16-bit images scaled by their maximum)."""
    from CovidCTLib.models.data.classifier_data import read_image

    return np.clip(read_image(path) / 255.0, 0.0, 1.0).astype(np.float32)


def _image_crop(path: Path) -> np.ndarray:
    from CovidCTLib.models.runtime.classifier import to_unit

    img = read_grey01(path)
    return crop_box(img, lung_box(to_unit(img * 255.0, "8bit")))


def _png256(root: Path) -> Iterator[tuple[str, np.ndarray]]:
    with (root / "index.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        img = read_grey01(root / row["ct"])
        lung_name = row.get("lung_mask") or ""
        mask = np.asarray(read_grey01(root / lung_name) > 0.5) if lung_name else None
        if row.get("vertically_flipped_vs_coronacases", "no") == "yes":
            img = img[::-1]
            mask = None if mask is None else mask[::-1]
        from CovidCTLib.models.runtime.classifier import to_unit

        box = lung_box(to_unit(img * 255.0, "8bit"), mask)
        yield f"{root.name}/{row['ct']}", crop_box(img, box)


def _volume_slices(path: Path, max_slices: int) -> Iterator[tuple[str, np.ndarray]]:
    from CovidCTLib.classical.lungs import segment_lungs_classical
    from CovidCTLib.io.loader import load_ct
    from CovidCTLib.models.runtime.classifier import to_unit
    from CovidCTLib.models.runtime.classifier_inference import lung_slices, radiological_view

    ct = load_ct(path)
    if ct.intensity != "HU":
        raise InputError(f"{path} is not a CT volume in Hounsfield units; give HU volumes or 2-D images.")
    lungs = np.asarray(segment_lungs_classical(ct))
    arr, lungs = radiological_view(ct.array.reshape(ct.shape), lungs, ct.image)
    zs = lung_slices(lungs)
    if len(zs) > max_slices:
        zs = [zs[int(i)] for i in np.linspace(0, len(zs) - 1, max_slices).round()]
    stem = path.name.split(".")[0] if path.is_file() else f"{path.parent.name}_{path.name}"
    for z in zs:
        unit = to_unit(arr[z], "HU")  # lung window, 0..1
        yield f"{stem}_z{z:03d}", crop_box(unit, lung_box(unit, lungs[z] > 0))


def _dicom_series_dirs(root: Path) -> list[Path]:
    """Folders under ``root`` (itself included) that hold ``.dcm`` files."""
    return sorted({p.parent for p in root.rglob("*.dcm")})


def iter_sources(root: Path, max_slices_per_volume: int) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, [0, 1] lung crop)`` for every image / volume slice of one source folder (or file)."""
    if root.is_file():
        if root.name.lower().endswith(VOLUME_SUFFIXES):
            yield from _volume_slices(root, max_slices_per_volume)
        elif root.suffix.lower() in IMAGE_SUFFIXES:
            yield root.name, _image_crop(root)
        else:
            raise InputError(f"{root} is neither an image nor a CT volume file.")
        return
    if not root.is_dir():
        raise InputError(f"{root} does not exist; give folders of images or of CT volumes.")
    if (root / "index.csv").is_file():
        yield from _png256(root)
        return
    if (root / "Imgs").is_dir():
        root = root / "Imgs"
    files = sorted(p for p in root.iterdir() if p.is_file())
    for p in files:
        if p.suffix.lower() in IMAGE_SUFFIXES:
            yield f"{root.name}/{p.name}", _image_crop(p)
        elif p.name.lower().endswith(VOLUME_SUFFIXES):
            yield from _volume_slices(p, max_slices_per_volume)
    for series in _dicom_series_dirs(root):
        yield from _volume_slices(series, max_slices_per_volume)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from CovidCTLib.models.runtime.classifier import resize

    return resize(image, size)


def load_domain(
    sources: list[str | Path], store_size: int, cache_dir: str | Path | None = None, max_slices_per_volume: int = 40
) -> Domain:
    """All lung crops of ``sources`` resized to ``store_size`` (uint8), cached in ``cache_dir`` when given."""
    paths = [Path(s) for s in sources]
    key = hashlib.sha1(
        f"{[str(p.resolve()) for p in paths]}|{store_size}|{max_slices_per_volume}|{CACHE_VERSION}".encode()
    ).hexdigest()[:12]
    cache = Path(cache_dir) / f"domain_{store_size}_{key}.npz" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        data = np.load(cache)
        return Domain(data["crops"], [str(n) for n in data["names"]], data["source"])
    crops: list[np.ndarray] = []
    names: list[str] = []
    source: list[int] = []
    for k, p in enumerate(paths):
        for name, crop in iter_sources(p, max_slices_per_volume):
            if crop.size == 0 or min(crop.shape) < 8:
                continue
            crops.append((np.clip(_resize(crop, store_size), 0, 1) * 255).round().astype(np.uint8))
            names.append(name)
            source.append(k)
    if not crops:
        raise InputError(
            f"no images or lung-containing CT slices found in {', '.join(map(str, paths))}; "
            "give folders of PNG/JPEG images or of CT volumes (NIfTI, DICOM series)."
        )
    domain = Domain(np.stack(crops), names, np.array(source, dtype=np.int64))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, crops=domain.crops, names=np.array(names), source=domain.source)
        tmp.replace(cache)
    return domain
