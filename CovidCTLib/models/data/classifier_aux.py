"""Auxiliary training slices for the COVID classifier from the segmentation datasets (``--aux-data``).

The COVID-CT images are paper figures; real scans are HU volumes. To teach the classifier what a
COVID-19 pattern looks like on real CT, training batches can mix in lung-cropped slices prepared the
same way inference prepares a scan (:func:`CovidCTLib.models.runtime.classifier_inference.classify_scan`):

- ``png256:`` COVID-19-CT-Seg slices (every slice holds infection: label 1), cropped with their lung mask;
  the Radiopaedia slices, stored upside down, are turned back to the radiological view;
- ``lidc-synth:`` LIDC-IDRI HU volumes (non-COVID): every 2nd lung slice as it is (label 0) and the same
  slice with synthetic ground-glass / consolidation lesions inserted (label 1 when the lesions cover at
  least ``MIN_LESION_SHARE`` of that slice's lung), so the only difference the network can use is the lesion.

- ``covid-images:`` / ``noncovid-images:`` a folder of 8-bit images (e.g. the output of ``covidct synthesize``)
  labelled COVID (1) / non-COVID (0), lung-cropped automatically like the COVID-CT images (issue 16).

Auxiliary slices are only ever used for training: validation stays on the COVID-CT groups.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np

from CovidCTLib.errors import InputError
from CovidCTLib.models.runtime.classifier import crop_to_lungs, to_unit

#: Lesion share of a slice's lung above which a synthetic-lesion slice counts as COVID-like.
MIN_LESION_SHARE = 0.03
#: Aux kinds understood by :func:`build_aux_cache`.
AUX_KINDS = ("png256", "lidc-synth", "covid-images", "noncovid-images")
#: label of the image-folder kinds
IMAGE_KINDS = {"covid-images": 1, "noncovid-images": 0}


def _png256(root: Path, size: int, every: int = 2) -> tuple[list[np.ndarray], list[int], list[str]]:
    from PIL import Image

    index = root / "index.csv"
    if not index.is_file():
        raise InputError(f"{root} has no index.csv; give the covid19_ct_seg_png256 folder for png256:.")
    crops, labels, groups = [], [], []
    with index.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        if i % every:
            continue
        img = np.asarray(Image.open(root / row["ct"]).convert("L"), dtype=np.float32)
        lung = np.asarray(Image.open(root / row["lung_mask"]).convert("L")) > 127
        if row.get("vertically_flipped_vs_coronacases", "no") == "yes":
            img, lung = img[::-1], lung[::-1]
        crop, _ = crop_to_lungs(to_unit(img, "8bit"), lung, size)
        crops.append(crop)
        labels.append(1)
        groups.append(f"png256/{row.get('inferred_group', '')}")
    return crops, labels, groups


def _image_folder(root: Path, label: int, size: int) -> tuple[list[np.ndarray], list[int], list[str]]:
    from CovidCTLib.models.data.classifier_data import IMAGE_SUFFIXES, preprocess_8bit, read_image

    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if root.is_dir() else []
    if not files:
        raise InputError(f"{root} holds no PNG/JPEG images for the covid-images: / noncovid-images: aux kinds.")
    crops = [preprocess_8bit(read_image(p), size)[0] for p in files]
    return crops, [label] * len(files), [f"images/{root.name}"] * len(files)


def _lidc_synth(
    path: Path, size: int, seed: int, cache: Path | None, every: int = 2
) -> tuple[list[np.ndarray], list[int], list[str]]:
    import SimpleITK as sitk

    from CovidCTLib.models.data.datasets import synthetic_volume
    from CovidCTLib.models.runtime.classifier import quantize_8bit
    from CovidCTLib.models.runtime.classifier_inference import lung_slices
    from CovidCTLib.models.runtime.normalization import orient_lps

    files = sorted(path.glob("*.nii.gz")) + sorted(path.glob("*.nii")) if path.is_dir() else [path]
    if not files:
        raise InputError(f"No NIfTI volumes in {path} for lidc-synth:.")
    crops, labels, groups = [], [], []
    for f in files:
        image = orient_lps(sitk.ReadImage(str(f)))  # LPS: rows run to posterior, columns to the left
        hu = sitk.GetArrayFromImage(image).astype(np.float32)
        lesioned, inf, lung = synthetic_volume(f, image, hu, seed, 0, cache)
        for z in lung_slices(lung)[::every]:
            box_mask = lung[z] > 0
            share = float((inf[z] > 0).sum()) / max(int(box_mask.sum()), 1)
            for arr, label in ((hu[z], 0), (lesioned[z], 1)):
                if label == 1 and share < MIN_LESION_SHARE:
                    continue
                crop, _ = crop_to_lungs(quantize_8bit(to_unit(arr, "HU")), box_mask, size)
                crops.append(crop)
                labels.append(label)
                groups.append(f"synth/{f.name.split('.')[0]}")
    return crops, labels, groups


def build_aux_cache(spec: str, cache_dir: str | Path, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Lung-cropped auxiliary slices (uint8 crops, CLAHE versions, labels, groups), cached as ``.npz``."""
    from skimage.exposure import equalize_adapthist

    from CovidCTLib.models.data.datasets import parse_data_spec

    sources: list[tuple[str, Path]] = []
    for item in [part.strip() for part in spec.split(",") if part.strip()]:
        prefix, _, rest = item.partition(":")
        if prefix in IMAGE_KINDS:  # image folders (issue 16): not a segmentation --data kind
            if not Path(rest).is_dir():
                raise InputError(f"--aux-data {item}: {rest} is not a folder of images.")
            sources.append((prefix, Path(rest)))
        else:
            sources += parse_data_spec(item)
    for kind, _ in sources:
        if kind not in AUX_KINDS:
            raise InputError(
                f"--aux-data kind {kind!r} is not supported for the classifier; use "
                f"{' or '.join(AUX_KINDS)} (for example png256:<folder>,lidc-synth:<volume>)."
            )
    key = hashlib.sha1(
        f"{[(k, str(p.resolve())) for k, p in sources]}|{size}|{seed}|{MIN_LESION_SHARE}|v1".encode()
    ).hexdigest()[:12]
    path = Path(cache_dir) / f"classifier_aux_{size}_{key}.npz"
    if path.exists():
        data = np.load(path)
        return {k: data[k] for k in data.files}
    crops: list[np.ndarray] = []
    labels: list[int] = []
    groups: list[str] = []
    for kind, p in sources:
        if kind in IMAGE_KINDS:
            c, lab, g = _image_folder(p, IMAGE_KINDS[kind], size)
        elif kind == "png256":
            c, lab, g = _png256(p, size)
        else:
            c, lab, g = _lidc_synth(p, size, seed, Path(cache_dir))
        crops += c
        labels += lab
        groups += g
    out = {
        "crops": np.stack([(c * 255).round().astype(np.uint8) for c in crops]),
        "clahe": np.stack([(equalize_adapthist(c, clip_limit=0.02) * 255).round().astype(np.uint8) for c in crops]),
        "labels": np.array(labels, dtype=np.int64),
        "groups": np.array(groups),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **out)
    tmp.replace(path)
    return out
