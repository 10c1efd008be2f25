"""Classification dataset: reading, grouping by source, grouped splits, lung-cropped cache, augmentation.

Layout expected (COVID-CT dataset): ``<root>/COVID/*.png`` (label 1) and ``<root>/NonCOVID/*.png``
(label 0). Images taken from one paper or one series are near-duplicates, so every split is made
by *source group* (see :func:`group_of`), never image by image.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from CovidCTLib.errors import InputError
from CovidCTLib.models.runtime.classifier import crop_to_lungs, to_gray, to_unit

CLASS_DIRS = {"COVID": 1, "NonCOVID": 0}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
#: Purely numeric file names closer than this are treated as one series (consecutive exports).
NUMERIC_RUN_GAP = 1


@dataclass(frozen=True)
class Item:
    """One labelled image: path, label (1 = COVID) and source group."""

    path: str
    label: int
    group: str


def group_of(name: str) -> str:
    """Source group of a file name: the prefix before ``-p<digit>`` or ``_``; else the stem itself.

    ``2020.02.10.20021584-p6-52_0.png`` -> ``2020.02.10.20021584``; ``10_0.png`` -> ``10``;
    ``PIIS0140673620301549_0_0.png`` -> ``PIIS0140673620301549``; ``1029.png`` -> ``1029``.
    """
    stem = Path(name).stem
    return re.split(r"-p\d|_", stem, maxsplit=1)[0] or stem


def _merge_numeric_runs(items: list[Item]) -> list[Item]:
    """Give purely numeric names of 100 and above that follow each other (gap <= 1) one group.

    Such names (``1210.png`` ... ``1218.png``) are consecutive exports of one scan; this is stricter
    than the README's rule and only removes leakage, never adds it.
    """
    numeric = sorted({int(it.group) for it in items if it.group.isdigit() and int(it.group) >= 100})
    run_of: dict[int, int] = {}
    start = None
    prev = None
    for n in numeric:
        if prev is None or n - prev > NUMERIC_RUN_GAP:
            start = n
        run_of[n] = start  # type: ignore[assignment]
        prev = n
    out = []
    for it in items:
        if it.group.isdigit() and int(it.group) in run_of:
            it = Item(it.path, it.label, f"n{run_of[int(it.group)]}")
        out.append(it)
    return out


def list_dataset(root: str | Path) -> list[Item]:
    """All images under ``root/COVID`` and ``root/NonCOVID`` with labels and source groups."""
    root = Path(root)
    items: list[Item] = []
    for folder, label in CLASS_DIRS.items():
        d = root / folder
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                items.append(Item(str(p), label, f"{folder}:{group_of(p.name)}"))
    if not items or len({it.label for it in items}) < 2:
        raise InputError(
            f"{root} must contain the sub-folders COVID/ and NonCOVID/ with images (PNG/JPEG) of each class."
        )
    # numeric-run merging works on the bare group names, class by class
    merged: list[Item] = []
    for folder in CLASS_DIRS:
        sub = [Item(it.path, it.label, it.group.split(":", 1)[1]) for it in items if it.group.startswith(folder)]
        merged += [Item(it.path, it.label, f"{folder}:{it.group}") for it in _merge_numeric_runs(sub)]
    return merged


def grouped_kfold(items: list[Item], k: int, seed: int) -> list[list[int]]:
    """Split item indices into ``k`` folds by group, balancing images per class (greedy, seeded)."""
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    counts = np.zeros((k, 2))
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it.group, []).append(i)
    names = list(groups)
    rng.shuffle(names)
    names.sort(key=lambda g: -len(groups[g]))  # largest first, ties in seeded random order
    for g in names:
        idx = groups[g]
        label = items[idx[0]].label
        f = int(np.argmin(counts[:, label] + 1e-3 * rng.random(k)))
        folds[f] += idx
        counts[f, label] += len(idx)
    return [sorted(f) for f in folds]


def grouped_split(items: list[Item], val_fraction: float, seed: int, fold: int = 0) -> tuple[list[int], list[int]]:
    """Train / validation indices: fold ``fold`` of a grouped k-fold with k = round(1/val_fraction)."""
    k = max(2, int(round(1.0 / val_fraction)))
    folds = grouped_kfold(items, k, seed)
    val = folds[fold % k]
    val_set = set(val)
    train = [i for i in range(len(items)) if i not in val_set]
    return train, val


def read_image(path: str | Path) -> np.ndarray:
    """Read a 2-D image file as a greyscale float array in its native range (0..255 for 8-bit)."""
    import SimpleITK as sitk

    try:
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as exc:
        raise InputError(f"cannot read image {path}: {exc}; use PNG, JPEG, BMP or TIFF.") from exc
    arr = to_gray(arr)
    if arr.dtype == np.uint16 or arr.max() > 255:
        arr = arr.astype(np.float32) * (255.0 / max(float(arr.max()), 1.0))
    return arr.astype(np.float32)


def preprocess_8bit(image: np.ndarray, size: int) -> tuple[np.ndarray, bool]:
    """8-bit greyscale image -> lung-cropped ``size x size`` 0..1 float32 crop (and whether lungs were found)."""
    return crop_to_lungs(to_unit(image, "8bit"), None, size)


def build_cache(items: list[Item], cache_dir: str | Path, size: int) -> dict[str, np.ndarray]:
    """Lung-crop and resize every image once (and its CLAHE version); cached as ``.npz`` by content key."""
    from skimage.exposure import equalize_adapthist

    key = hashlib.sha1(("|".join(f"{it.path}:{it.label}" for it in items) + f"|{size}|v2").encode()).hexdigest()
    path = Path(cache_dir) / f"classifier_cache_{size}_{key[:12]}.npz"
    if path.exists():
        data = np.load(path)
        return {k: data[k] for k in data.files}
    crops, clahe, found = [], [], []
    for it in items:
        crop, ok = preprocess_8bit(read_image(it.path), size)
        crops.append((crop * 255).round().astype(np.uint8))
        clahe.append((equalize_adapthist(crop, clip_limit=0.02) * 255).round().astype(np.uint8))
        found.append(ok)
    out = {
        "crops": np.stack(crops),
        "clahe": np.stack(clahe),
        "lung_found": np.array(found),
        "labels": np.array([it.label for it in items], dtype=np.int64),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **out)
    tmp.replace(path)
    return out


@dataclass
class AugmentConfig:
    """Augmentation strengths (training only)."""

    scale: tuple[float, float] = (0.55, 1.0)
    ratio: tuple[float, float] = (0.8, 1.25)
    rotation_deg: float = 15.0
    flip_lr: float = 0.5
    flip_ud: float = 0.1
    gamma: tuple[float, float] = (0.7, 1.5)
    contrast: tuple[float, float] = (0.75, 1.3)
    brightness: float = 0.1
    noise_std: float = 0.04
    clahe_p: float = 0.5
    erase_p: float = 0.5
    blur_p: float = 0.2


#: Named augmentation presets: ``medium`` (the default, shipped model) and ``heavy`` (stronger; learnt
#: too slowly for the CPU schedules tried).
AUGMENT_PRESETS = {
    "heavy": AugmentConfig(),
    "medium": AugmentConfig(
        scale=(0.7, 1.0),
        rotation_deg=10.0,
        flip_ud=0.0,
        gamma=(0.8, 1.25),
        contrast=(0.85, 1.15),
        brightness=0.05,
        noise_std=0.03,
        clahe_p=0.5,
        erase_p=0.3,
        blur_p=0.1,
    ),
}


def augment_batch(
    crops: np.ndarray, clahe: np.ndarray, size: int, cfg: AugmentConfig, rng: np.random.Generator
) -> torch.Tensor:
    """Random resized crop + rotation + flips (one affine grid-sample), CLAHE on/off, gamma/contrast,
    noise, blur and random erasing (mimics arrows / text). Returns a (B, 1, size, size) tensor in 0..1."""
    b = crops.shape[0]
    use_clahe = rng.random(b) < cfg.clahe_p
    src = np.where(use_clahe[:, None, None], clahe, crops).astype(np.float32) / 255.0
    x = torch.from_numpy(src)[:, None]
    area = rng.uniform(*cfg.scale, b)
    log_r = rng.uniform(math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), b)
    ratio = np.exp(log_r)
    sx = np.sqrt(area * ratio).clip(0.3, 1.0)
    sy = np.sqrt(area / ratio).clip(0.3, 1.0)
    tx = rng.uniform(-1, 1, b) * (1 - sx)
    ty = rng.uniform(-1, 1, b) * (1 - sy)
    ang = np.deg2rad(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg, b))
    fx = np.where(rng.random(b) < cfg.flip_lr, -1.0, 1.0)
    fy = np.where(rng.random(b) < cfg.flip_ud, -1.0, 1.0)
    cos, sin = np.cos(ang), np.sin(ang)
    theta = np.zeros((b, 2, 3), dtype=np.float32)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = cos * sx * fx, -sin * sy, tx
    theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sin * sx, cos * sy * fy, ty
    grid = F.affine_grid(torch.from_numpy(theta), [b, 1, size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gamma = torch.from_numpy(rng.uniform(*cfg.gamma, b).astype(np.float32)).view(b, 1, 1, 1)
    x = x.clamp(0, 1) ** gamma
    contrast = torch.from_numpy(rng.uniform(*cfg.contrast, b).astype(np.float32)).view(b, 1, 1, 1)
    bright = torch.from_numpy(rng.uniform(-cfg.brightness, cfg.brightness, b).astype(np.float32)).view(b, 1, 1, 1)
    mean = x.mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * contrast + mean + bright
    blur = torch.from_numpy(rng.random(b) < cfg.blur_p)
    if blur.any():
        k = torch.tensor([1.0, 2.0, 1.0]) / 4.0
        kern = (k[:, None] * k[None, :]).view(1, 1, 3, 3)
        x[blur] = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), kern)
    sigma = torch.from_numpy(rng.uniform(0, cfg.noise_std, b).astype(np.float32)).view(b, 1, 1, 1)
    x = x + sigma * torch.randn_like(x)
    for i in np.nonzero(rng.random(b) < cfg.erase_p)[0]:
        h = int(rng.uniform(0.05, 0.25) * size)
        w = int(rng.uniform(0.05, 0.25) * size)
        y0, x0 = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
        x[i, :, y0 : y0 + h, x0 : x0 + w] = float(rng.choice([0.0, 1.0, rng.random()]))
    return x.clamp(0, 1)


def eval_batch(crops: np.ndarray, size: int) -> torch.Tensor:
    """Cached crops (uint8) as a (B, 1, size, size) 0..1 tensor, resized when the cache size differs."""
    x = torch.from_numpy(crops.astype(np.float32) / 255.0)[:, None]
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x
