"""Training-data readers for the lung and infection networks, and the grouped train/validation split.

Every reader returns a :class:`SliceSet` of 2-D slices already normalised
(:mod:`CovidCTLib.models.runtime.normalization`) and resized to the training size, with two intensity variants per
slice (``img``: default normalisation, ``img_alt``: CLAHE toggled) that training picks at random.

Sources (``--data`` accepts a comma-separated list of ``kind:path`` or plain paths whose kind is detected):

* ``png256``: COVID-19-CT-Seg slices (``index.csv`` with ct / lung_mask / infection_mask, groups from
  ``inferred_group``); binary infection.
* ``medseg``: MedSeg / Inf-Net slices (``Imgs/N.jpg``, ``GT_multiclass/N.png`` 0/1/2); no lung mask; no
  patient identity, so every slice is its own group.
* ``lidc-synth``: HU NIfTI volumes (``*.nii.gz``, e.g. LIDC-IDRI) with synthetic GGO/consolidation inserted
  (:mod:`CovidCTLib.models.data.synthetic_lesions`), cached as ``.npz`` in the cache folder; group = volume.
* ``nifti``: users' own labelled volumes: a folder with ``images/`` and ``masks/`` holding files of the same
  name, or files named ``<case>_img.nii.gz`` + ``<case>_seg.nii.gz``. Images in HU (or 8-bit). Masks: for
  the lung task any value > 0 is lung; for the infection task 1 = GGO, 2 = consolidation (multiclass), or
  pass ``nifti-binary:`` for 0/1 infection masks. Group = case. Axial slices with a label (and every 2nd
  slice without) are used.
"""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from PIL import Image

from CovidCTLib.errors import InputError
from CovidCTLib.models.runtime.normalization import fit, lung_box, normalize_slice, orient_lps, resize_mask

# infection label kinds per slice
INF_NONE, INF_BINARY, INF_MULTI = 0, 1, 2


@dataclass
class SliceSet:
    """Normalised training slices (all arrays share the first axis)."""

    img: np.ndarray  # (N, S, S) float16 in [0, 1]
    img_alt: np.ndarray  # (N, S, S) float16, CLAHE toggled
    lung: np.ndarray  # (N, S, S) uint8 0/1
    lung_known: np.ndarray  # (N,) bool
    inf: np.ndarray  # (N, S, S) uint8 0/1 (binary) or 0/1/2 (multiclass)
    inf_kind: np.ndarray  # (N,) uint8 INF_NONE / INF_BINARY / INF_MULTI
    groups: list[str] = field(default_factory=list)
    source: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.groups)

    def subset(self, idx: np.ndarray | list[int]) -> SliceSet:
        idx = np.asarray(idx, dtype=int)
        return SliceSet(
            self.img[idx],
            self.img_alt[idx],
            self.lung[idx],
            self.lung_known[idx],
            self.inf[idx],
            self.inf_kind[idx],
            [self.groups[i] for i in idx],
            [self.source[i] for i in idx],
        )

    @staticmethod
    def concat(sets: list[SliceSet]) -> SliceSet:
        sets = [s for s in sets if len(s)]
        if not sets:
            raise InputError("No training slices found in the given --data folders.")
        return SliceSet(
            np.concatenate([s.img for s in sets]),
            np.concatenate([s.img_alt for s in sets]),
            np.concatenate([s.lung for s in sets]),
            np.concatenate([s.lung_known for s in sets]),
            np.concatenate([s.inf for s in sets]),
            np.concatenate([s.inf_kind for s in sets]),
            sum((s.groups for s in sets), []),
            sum((s.source for s in sets), []),
        )


# set by load_sources: crop every slice with a lung mask to the lung box (infection task)
CROP_TO_LUNG = {"on": False}


class _Builder:
    def __init__(self, size: int) -> None:
        self.size = size
        self.crop = CROP_TO_LUNG["on"]
        self.rows: dict[str, list] = defaultdict(list)

    def add(
        self,
        img: np.ndarray,
        kind: str,
        lung: np.ndarray | None,
        inf: np.ndarray | None,
        inf_kind: int,
        group: str,
        source: str,
        clahe_default: bool,
    ) -> None:
        s = self.size
        a = normalize_slice(img, kind, clahe_default, None)
        b = normalize_slice(img, kind, not clahe_default, None)
        box = lung_box(lung > 0) if (self.crop and lung is not None) else None
        if self.crop and lung is not None and box is None:
            return  # the infection network only sees slices with lung
        if box is not None:
            a, b, lung = a[box], b[box], lung[box]
            inf = inf[box] if inf is not None else None
        self.rows["img"].append(fit(a, s).astype(np.float16))
        self.rows["img_alt"].append(fit(b, s).astype(np.float16))
        self.rows["lung"].append(
            resize_mask((lung > 0).astype(np.uint8), s) if lung is not None else np.ones((s, s), np.uint8)
        )
        self.rows["lung_known"].append(lung is not None)
        self.rows["inf"].append(resize_mask(inf.astype(np.uint8), s) if inf is not None else np.zeros((s, s), np.uint8))
        self.rows["inf_kind"].append(inf_kind)
        self.rows["groups"].append(group)
        self.rows["source"].append(source)

    def build(self) -> SliceSet:
        r, s = self.rows, self.size
        if not r["groups"]:
            z = np.zeros((0, s, s))
            return SliceSet(
                z.astype(np.float16),
                z.astype(np.float16),
                z.astype(np.uint8),
                np.zeros(0, bool),
                z.astype(np.uint8),
                np.zeros(0, np.uint8),
                [],
                [],
            )
        return SliceSet(
            np.stack(r["img"]),
            np.stack(r["img_alt"]),
            np.stack(r["lung"]),
            np.array(r["lung_known"]),
            np.stack(r["inf"]),
            np.array(r["inf_kind"], np.uint8),
            list(r["groups"]),
            list(r["source"]),
        )


def _read_gray(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


def load_png256(root: str | Path, size: int = 128, limit: int | None = None, predicted_lungs: bool = False) -> SliceSet:
    """COVID-19-CT-Seg per-slice PNGs (already min-max + CLAHE; CLAHE is not applied again by default).

    ``predicted_lungs``: use the installed lung model's masks instead of the reference lung masks (for the
    infection network, so that it learns from the same lung input it gets at inference).
    """
    root = Path(root)
    index = root / "index.csv"
    if not index.is_file():
        raise InputError(f"{root} has no index.csv; expected the covid19_ct_seg_png256 layout.")
    b = _Builder(size)
    with index.open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:limit]
    images = [_read_gray(root / row["ct"]) for row in rows]
    if predicted_lungs:
        from CovidCTLib.models.runtime.inference import slice_lungs

        lungs = [m for i in range(0, len(images), 64) for m in slice_lungs(images[i : i + 64], "cpu")]
    else:
        lungs = [_read_gray(root / row["lung_mask"]) > 127 for row in rows]
    for row, img, lung in zip(rows, images, lungs, strict=True):
        inf = (_read_gray(root / row["infection_mask"]) > 127).astype(np.uint8)
        b.add(img, "8bit", lung, inf, INF_BINARY, f"png256/{row['inferred_group']}", "png256", False)
    return b.build()


def load_medseg(root: str | Path, size: int = 128) -> SliceSet:
    """MedSeg / Inf-Net slices with GGO (1) / consolidation (2) labels; no lung mask (all ones, unknown)."""
    root = Path(root)
    imgs = sorted((root / "Imgs").glob("*.jpg"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)
    if not imgs:
        raise InputError(f"{root}/Imgs has no .jpg images; expected the medseg_infnet_train layout.")
    b = _Builder(size)
    for p in imgs:
        img = _read_gray(p)
        gt = np.asarray(Image.open(root / "GT_multiclass" / f"{p.stem}.png"))
        if gt.ndim == 3:
            gt = gt[..., 0]
        b.add(img, "8bit", None, np.clip(gt, 0, 2), INF_MULTI, f"medseg/{p.stem}", "medseg", False)
    return b.build()


def _volume_slices(
    b: _Builder,
    hu: np.ndarray,
    lung: np.ndarray | None,
    inf: np.ndarray | None,
    inf_kind: int,
    group: str,
    source: str,
    kind: str = "HU",
) -> None:
    """Add the axial slices that contain a label (and every 2nd slice without one)."""
    ref = lung if lung is not None else inf
    for z in range(hu.shape[0]):
        has = ref is not None and bool(ref[z].any())
        if not has and z % 2:
            continue
        b.add(
            hu[z],
            kind,
            None if lung is None else lung[z],
            None if inf is None else inf[z],
            inf_kind,
            group,
            source,
            kind == "HU",
        )


def _cache_key(path: Path, seed: int, variant: int) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime}|{seed}|{variant}|v3".encode()).hexdigest()[:16]


def load_lidc_synthetic(
    root: str | Path, size: int = 128, variants: int = 2, seed: int = 0, cache: Path | None = None
) -> SliceSet:
    """HU volumes with synthetic lesions (``variants`` differently seeded copies per volume)."""
    root = Path(root)
    files = sorted(root.glob("*.nii.gz")) + sorted(root.glob("*.nii")) if root.is_dir() else [root]
    if not files:
        raise InputError(f"No NIfTI volumes in {root} for synthetic lesions.")
    b = _Builder(size)
    for f in files:
        image = orient_lps(sitk.ReadImage(str(f)))
        hu = sitk.GetArrayFromImage(image).astype(np.float32)
        lung = None
        for v in range(variants):
            out, inf, lung = synthetic_volume(f, image, hu, seed, v, cache, lung)
            _volume_slices(b, out, lung, inf, INF_MULTI, f"synth/{f.name.split('.')[0]}", "lidc-synth")
    return b.build()


def synthetic_volume(
    path: Path,
    image: sitk.Image,
    hu: np.ndarray,
    seed: int,
    variant: int,
    cache: Path | None,
    lung: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(hu_with_lesions, infection, lung)`` of one LPS-oriented volume; cached per (file, seed, variant)."""
    from CovidCTLib.models.data.synthetic_lesions import insert_lesions, lung_mask_for

    npz = cache / f"synth-{path.name.split('.')[0]}-{_cache_key(path, seed, variant)}.npz" if cache else None
    if npz is not None and npz.is_file():
        d = np.load(npz)
        return d["hu"], d["inf"], d["lung"]
    sp = image.GetSpacing()[::-1]
    if lung is None:
        lung = lung_mask_for(image, hu, sp)
    out, inf = insert_lesions(hu, lung, sp, seed=seed * 1000 + variant)
    if npz is not None:
        npz.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(npz, hu=out.astype(np.int16), inf=inf, lung=lung)
    return out, inf, lung


def nifti_pairs(root: Path) -> list[tuple[Path, Path, str]]:
    pairs = []
    if (root / "images").is_dir() and (root / "masks").is_dir():
        for img in sorted((root / "images").iterdir()):
            mask = root / "masks" / img.name
            if mask.is_file():
                pairs.append((img, mask, img.name.split(".")[0]))
    else:
        for img in sorted(root.glob("*_img.nii*")):
            mask = img.with_name(img.name.replace("_img.", "_seg."))
            if mask.is_file():
                pairs.append((img, mask, img.name.split("_img.")[0]))
    return pairs


def load_nifti_pairs(root: str | Path, task: str, size: int = 128, binary: bool = False) -> SliceSet:
    """Users' own labelled volumes (see the module docstring for the folder layout)."""
    root = Path(root)
    pairs = nifti_pairs(root)
    if not pairs:
        raise InputError(
            f"No image/mask pairs in {root}: use images/ + masks/ with the same file names, "
            "or <case>_img.nii.gz + <case>_seg.nii.gz."
        )
    b = _Builder(size)
    for img_p, mask_p, case in pairs:
        image = orient_lps(sitk.ReadImage(str(img_p)))
        mask = orient_lps(sitk.ReadImage(str(mask_p)))
        arr = sitk.GetArrayFromImage(image).astype(np.float32)
        lab = sitk.GetArrayFromImage(mask)
        if arr.shape != lab.shape:
            raise InputError(f"{img_p.name} and {mask_p.name} differ in size; masks must match their image.")
        kind = "HU" if float(arr.min()) < -500 else "8bit"
        if task == "lung":
            _volume_slices(b, arr, (lab > 0).astype(np.uint8), None, INF_NONE, f"nifti/{case}", "nifti", kind)
        else:
            inf = (lab > 0).astype(np.uint8) if binary else np.clip(lab, 0, 2).astype(np.uint8)
            _volume_slices(b, arr, None, inf, INF_BINARY if binary else INF_MULTI, f"nifti/{case}", "nifti", kind)
    return b.build()


def detect_kind(path: Path) -> str:
    """Guess a data folder's layout."""
    if (path / "index.csv").is_file():
        return "png256"
    if (path / "Imgs").is_dir() and (path / "GT_multiclass").is_dir():
        return "medseg"
    if nifti_pairs(path):
        return "nifti"
    if list(path.glob("*.nii.gz")):
        return "lidc-synth"
    raise InputError(
        f"Cannot tell what training data {path} holds; prefix it with png256:, medseg:, lidc-synth:, "
        "nifti: or nifti-binary:."
    )


DATA_KINDS = ("png256", "medseg", "lidc-synth", "nifti", "nifti-binary")


def parse_data_spec(spec: str) -> list[tuple[str, Path]]:
    """Split a ``--data`` specification (comma-separated ``kind:path`` or plain paths) into (kind, path).

    Plain paths get their kind from :func:`detect_kind`; a path that does not exist is refused.
    """
    sources = []
    for item in [part.strip() for part in spec.split(",") if part.strip()]:
        prefix, _, rest = item.partition(":")
        kind, path = (prefix, Path(rest)) if prefix in DATA_KINDS else ("", Path(item))
        if not path.exists():
            raise InputError(f"Training data {path} (from --data) does not exist.")
        sources.append((kind or detect_kind(path), path))
    return sources


def load_sources(
    spec: str,
    task: str,
    size: int,
    seed: int = 0,
    cache: Path | None = None,
    limit: int | None = None,
    predicted_lungs: bool = False,
) -> SliceSet:
    """Load a comma-separated ``--data`` specification (``kind:path`` or plain paths).

    For the infection task every slice that has a lung mask is cropped to its lung box first;
    ``predicted_lungs`` takes the png256 lung masks from the installed lung model (see :func:`load_png256`).
    """
    CROP_TO_LUNG["on"] = task == "infection"
    sets = []
    for kind, path in parse_data_spec(spec):
        if kind == "png256":
            sets.append(load_png256(path, size, limit, predicted_lungs))
        elif kind == "medseg":
            sets.append(load_medseg(path, size))
        elif kind == "lidc-synth":
            sets.append(load_lidc_synthetic(path, size, seed=seed, cache=cache))
        else:
            sets.append(load_nifti_pairs(path, task, size, binary=kind == "nifti-binary"))
    return SliceSet.concat(sets)


def grouped_split(groups: list[str], val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split slice indices into train / validation by group (never by slice), per source prefix.

    Within each source (text before ``/`` in the group name) groups are shuffled with a generator seeded
    by ``seed`` (fresh for every source, so a source's split does not depend on the other sources) and taken
    into validation until ``val_fraction`` of that source's slices is reached (at least one group when the
    source has two or more). Returns (train indices, validation indices).
    """
    by_source: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, g in enumerate(groups):
        by_source[g.split("/")[0]][g].append(i)
    val: list[int] = []
    for src in sorted(by_source):
        gmap = by_source[src]
        names = sorted(gmap)
        if len(names) < 2:
            continue
        np.random.default_rng(seed).shuffle(names)  # one fresh generator per source: stable splits
        total = sum(len(v) for v in gmap.values())
        taken = 0
        for name in names:
            if taken >= val_fraction * total or len(names) - 1 <= 0:
                break
            if taken and taken + len(gmap[name]) > 1.6 * val_fraction * total:
                continue
            val.extend(gmap[name])
            taken += len(gmap[name])
    val_arr = np.array(sorted(val), dtype=int)
    train_arr = np.array(sorted(set(range(len(groups))) - set(val)), dtype=int)
    return train_arr, val_arr


# ---------------------------------------------------------------- evaluation items

Item = dict[str, Any]


def read_gray(path: Path) -> np.ndarray:
    """An image file as an 8-bit grey array."""
    return np.asarray(Image.open(path).convert("L"))


def png256_items(root: Path) -> list[Item]:
    """COVID-19-CT-Seg png256 slices as evaluation items (image, lung, infection paths and group)."""
    with (root / "index.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [
        {
            "source": "png256",
            "id": r["index"],
            "group": f"png256/{r['inferred_group']}",
            "image": root / r["ct"],
            "lung": root / r["lung_mask"],
            "inf": root / r["infection_mask"],
        }
        for r in rows
    ]


def medseg_items(root: Path) -> list[Item]:
    """MedSeg slices as evaluation items (every slice its own group; multiclass truth)."""
    out = []
    for p in sorted((root / "Imgs").glob("*.jpg"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0):
        out.append(
            {
                "source": "medseg",
                "id": p.stem,
                "group": f"medseg/{p.stem}",
                "image": p,
                "lung": None,
                "inf": root / "GT_multiclass" / f"{p.stem}.png",
                "multiclass": True,
            }
        )
    return out
