"""``covidct evaluate lung|infection``: run the installed (or a given) model through the public inference
path on labelled data at the data's own resolution and write metrics.

Outputs in ``out``: ``per_image.csv`` (one row per slice: source, id, group, Dice, IoU, precision, recall,
specificity, accuracy, pixel counts) and ``metrics.json`` (per source: pooled and mean-per-image metrics;
for multiclass data also GGO / consolidation Dice), each with the model version and the research-only
statement. ``split="val"`` keeps only the grouped validation split of ``seed`` (the one training used).

8-bit data (png256, medseg) goes through :func:`CovidCTLib.models.runtime.inference.segment_slice_images` (the
infection task runs the lung model first, as users' 2-D images do); HU volumes (``lidc-synth``, ``nifti``)
through ``segment_lungs_model`` / ``segment_infection_model`` (infection inside the model's lungs).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from PIL import Image

from CovidCTLib.atomic import write_text_atomic
from CovidCTLib.errors import InputError
from CovidCTLib.models.data.datasets import (
    grouped_split,
    medseg_items,
    nifti_pairs,
    parse_data_spec,
    png256_items,
    read_gray,
)
from CovidCTLib.models.evaluation.metrics import confusion, mask_metrics, mean_metrics, pooled_metrics
from CovidCTLib.models.runtime import inference
from CovidCTLib.version import DISCLAIMER, __version__

Item = dict[str, Any]


def _eval_2d(task: str, items: list[Item], rows: list[dict[str, Any]], batch: int = 32) -> None:
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        images = [read_gray(it["image"]) for it in chunk]
        preds = inference.segment_slice_images("lung" if task == "lung" else "lesion-type", images)
        for it, pred in zip(chunk, preds, strict=True):
            truth_path = it["lung"] if task == "lung" else it["inf"]
            truth = np.asarray(Image.open(truth_path))
            if truth.ndim == 3:
                truth = truth[..., 0]
            truth_lab = np.clip(truth, 0, 2) if it.get("multiclass") else (truth > 127).astype(np.uint8)
            rows.append(_row(it, pred, truth_lab, bool(it.get("multiclass")) and task != "lung"))


def _row(it: Item, pred: np.ndarray, truth: np.ndarray, multiclass: bool) -> dict[str, Any]:
    counts = confusion(pred > 0, truth > 0)
    row: dict[str, Any] = {
        "source": it["source"],
        "id": it["id"],
        "group": it["group"],
        **{k: round(v, 5) for k, v in mask_metrics(pred > 0, truth > 0).items()},
        "truth_px": int((truth > 0).sum()),
        "pred_px": int((pred > 0).sum()),
        "_counts": counts,
    }
    if multiclass:
        for c, name in ((1, "ggo"), (2, "cons")):
            row[f"_counts_{name}"] = confusion(pred == c, truth == c)
    return row


def _eval_volumes(
    task: str, root: Path, kind: str, rows: list[dict[str, Any]], seed: int, cache: Path, keep: Any = None
) -> None:
    from CovidCTLib.models.data.synthetic_lesions import insert_lesions, lung_mask_for
    from CovidCTLib.models.runtime.normalization import orient_lps
    from CovidCTLib.volume import CTVolume

    cases: list[tuple[str, sitk.Image, np.ndarray | None, np.ndarray | None]] = []
    if kind == "lidc-synth":
        for f in sorted(root.glob("*.nii.gz")):
            if keep is not None and not keep(f"synth/{f.name.split('.')[0]}"):
                continue
            image = orient_lps(sitk.ReadImage(str(f)))
            hu = sitk.GetArrayFromImage(image).astype(np.float32)
            name = f.name.split(".")[0]
            npz = cache / f"eval-synth-{name}-{seed}.npz"
            if npz.is_file():
                d = np.load(npz)
                out, inf, lung = d["hu"], d["inf"], d["lung"]
            else:
                lung = lung_mask_for(image, hu, image.GetSpacing()[::-1])
                out, inf = insert_lesions(hu, lung, image.GetSpacing()[::-1], seed=10_000 + seed)
                cache.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(npz, hu=out.astype(np.int16), inf=inf, lung=lung)
            img = sitk.GetImageFromArray(out.astype(np.int16))
            img.CopyInformation(image)
            cases.append((f"synth/{name}", img, lung, inf))
    else:
        for img_p, mask_p, case in nifti_pairs(root):
            if keep is not None and not keep(f"nifti/{case}"):
                continue
            img = sitk.ReadImage(str(img_p))
            lab = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_p)))
            cases.append(
                (
                    f"nifti/{case}",
                    img,
                    lab > 0 if task == "lung" else None,
                    np.clip(lab, 0, 2) if task != "lung" else None,
                )
            )
    for group, img, lung, inf in cases:
        arr = sitk.GetArrayFromImage(img)
        ct = CTVolume(img, "HU" if float(arr.min()) < -500 else "8bit", group)
        lungs_pred = inference.segment_lungs_model(ct)
        if task == "lung":
            pred, truth = lungs_pred > 0, lung
        else:
            pred, truth = inference.segment_infection_model(ct, lungs_pred), inf
        for z in range(arr.shape[0]):
            if truth[z].any() or pred[z].any():
                it = {"source": group.split("/")[0], "id": f"{group}#{z}", "group": group}
                row = _row(it, pred[z].astype(np.uint8), truth[z].astype(np.uint8), task != "lung")
                if task == "lung" and inf is not None:  # is (synthetic) infection kept inside the lungs?
                    row["_lesion_px"] = int((inf[z] > 0).sum())
                    row["_lesion_inside"] = int(((inf[z] > 0) & pred[z]).sum())
                    row["_cons_px"] = int((inf[z] == 2).sum())
                    row["_cons_inside"] = int(((inf[z] == 2) & pred[z]).sum())
                rows.append(row)


def _summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for src in sorted({r["source"] for r in rows}):
        sel = [r for r in rows if r["source"] == src]
        counts = [r["_counts"] for r in sel]
        per = [{k: r[k] for k in ("dice", "iou", "precision", "recall", "specificity", "f1", "accuracy")} for r in sel]
        entry: dict[str, Any] = {
            "n_images": len(sel),
            "pooled": {k: round(v, 4) for k, v in pooled_metrics(counts).items()},
            "mean_per_image": {k: round(v, 4) for k, v in mean_metrics(per, counts).items()},
        }
        for name in ("ggo", "cons"):
            key = f"_counts_{name}"
            if any(key in r for r in sel):
                entry[f"dice_{name}_pooled"] = round(pooled_metrics([r[key] for r in sel if key in r])["dice"], 4)
        if any("_lesion_px" in r for r in sel):
            for key, label in (("lesion", "infection"), ("cons", "consolidation")):
                total = sum(r.get(f"_{key}_px", 0) for r in sel)
                inside = sum(r.get(f"_{key}_inside", 0) for r in sel)
                entry[f"{label}_inside_predicted_lung"] = round(inside / total, 4) if total else None
        summary[src] = entry
    return summary


def evaluate(
    task: str,
    data: str,
    out: str | Path,
    model: str | None = None,
    device: str = "auto",
    split: str = "all",
    seed: int = 0,
    val_fraction: float = 0.2,
) -> dict[str, Any]:
    """Evaluate the lung / infection model on ``data`` (comma-separated, kind-prefixed like training)."""
    if task not in ("lung", "infection"):
        raise InputError(f"unknown task {task!r}")
    name = inference.model_name(task)
    if model:
        inference.use_model_folder(name, model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for kind, root in parse_data_spec(data):
        if kind in ("png256", "medseg"):
            items = png256_items(root) if kind == "png256" else medseg_items(root)
            if task == "lung" and kind == "medseg":
                raise InputError("medseg data has no lung masks; evaluate the lung model on png256 or nifti data.")
            if split == "val":
                _, va = grouped_split([it["group"] for it in items], val_fraction, seed)
                items = [items[i] for i in va]
            _eval_2d(task, items, rows)
        else:
            keep = None
            if split == "val":  # the validation volumes of the grouped split (one entry per volume)
                if kind == "lidc-synth":
                    names = [f"synth/{f.name.split('.')[0]}" for f in sorted(root.glob("*.nii.gz"))]
                else:
                    names = [f"nifti/{case}" for _, _, case in nifti_pairs(root)]
                _, va = grouped_split(names, val_fraction, seed)
                val_names = {names[i] for i in va}
                keep = val_names.__contains__
            _eval_volumes(task, root, kind, rows, seed, out / "cache", keep)
    if not rows:
        raise InputError("No labelled slices to evaluate in --data.")
    summary = _summarise(rows)
    versions = inference.models_available()
    result = {
        "task": task,
        "data": data,
        "split": split,
        "seed": seed,
        "models": versions,
        "software_version": __version__,
        "summary": summary,
        "disclaimer": DISCLAIMER,
    }
    cols = [
        "source",
        "id",
        "group",
        "dice",
        "iou",
        "precision",
        "recall",
        "specificity",
        "accuracy",
        "truth_px",
        "pred_px",
    ]
    buf = io.StringIO()
    buf.write(f"# {DISCLAIMER} Models: {versions}. CovidCT {__version__}.\n")
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "per_image.csv", buf.getvalue())
    write_text_atomic(out / "metrics.json", json.dumps(result, indent=2) + "\n")
    return result


def infection_burden(inputs: list[str], device: str = "auto") -> list[dict[str, Any]]:
    """Lung volume and model infection burden (% of lung) of each scan (unlabelled sanity check: COVID
    scans should show a clearly higher burden than non-COVID ones)."""
    import time

    from CovidCTLib.io.loader import load_ct

    rows = []
    for path in inputs:
        ct = load_ct(path)
        t0 = time.time()
        lungs = inference.segment_lungs_model(ct, device)
        t1 = time.time()
        inf = inference.segment_infection_model(ct, lungs, device)
        t2 = time.time()
        lung_ml = float((lungs > 0).sum() * ct.voxel_volume_ml)
        rows.append(
            {
                "input": str(path),
                "shape_zyx": list(ct.shape),
                "lung_ml": round(lung_ml, 1),
                "right_ml": round(float((lungs == 1).sum() * ct.voxel_volume_ml), 1),
                "left_ml": round(float((lungs == 2).sum() * ct.voxel_volume_ml), 1),
                "ggo_ml": round(float((inf == 1).sum() * ct.voxel_volume_ml), 1),
                "consolidation_ml": round(float((inf == 2).sum() * ct.voxel_volume_ml), 1),
                "burden_percent": round(100.0 * float((inf > 0).sum()) / max(float((lungs > 0).sum()), 1.0), 2),
                "lung_seconds": round(t1 - t0, 1),
                "infection_seconds": round(t2 - t1, 1),
            }
        )
    return rows
