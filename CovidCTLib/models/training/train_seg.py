"""Train / fine-tune the lung (AttentionUnet, Focal Tversky) and infection (UNet, partial labels) networks.

``train(task, data, out, ...)`` loads the ``--data`` sources (:mod:`CovidCTLib.models.data.datasets`), splits
them by group, trains with augmentation (:mod:`CovidCTLib.models.training.augment`) in the resumable loop
(:mod:`CovidCTLib.models.training.trainer`) and exports the best checkpoint as a registry model folder
``<out>/model/<name>/`` (fp16 weights, manifest.json with SHA-256). ``finetune`` starts from a shipped model.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from CovidCTLib.errors import InputError
from CovidCTLib.models.data.datasets import INF_MULTI, SliceSet, grouped_split, load_sources
from CovidCTLib.models.runtime import networks, registry
from CovidCTLib.models.runtime.architectures import build_network
from CovidCTLib.models.runtime.device import device_name, set_training_threads
from CovidCTLib.models.runtime.normalization import NORMALIZATION_ID
from CovidCTLib.models.training.augment import AugmentConfig, augment_batch
from CovidCTLib.models.training.losses import focal_tversky_loss, partial_label_infection_loss
from CovidCTLib.models.training.trainer import TrainConfig, train_loop
from CovidCTLib.progress import Reporter
from CovidCTLib.version import DISCLAIMER, __version__

MODEL_NAMES = {"lung": "lung-attunet", "infection": "infection-unet"}
ARCH = {
    "lung": {
        "network": "attention-unet",
        "kwargs": {"in_channels": 1, "out_channels": 2, "channels": [16, 32, 64, 128]},
    },
    "infection": {
        "network": "unet",
        "kwargs": {"in_channels": 2, "out_channels": 3, "channels": [16, 32, 64, 128, 256], "num_res_units": 1},
    },
}
SOURCE_WEIGHTS = {
    "lung": {"png256": 0.5, "lidc-synth": 0.5, "nifti": 1.0},
    "infection": {"png256": 0.5, "medseg": 0.25, "lidc-synth": 0.25, "nifti": 1.0},
}
LICENCE_NOTE = (
    "Trained on COVID-19-CT-Seg (annotations CC BY 4.0; Radiopaedia images CC BY-NC-SA 3.0), MedSeg/Inf-Net "
    "slices (non-commercial use only) and LIDC-IDRI (CC BY 3.0) with synthetic lesions: the weights inherit "
    "the NON-COMMERCIAL restriction."
)


def _task_subset(data: SliceSet, task: str) -> SliceSet:
    keep = np.nonzero(data.lung_known if task == "lung" else data.inf_kind > 0)[0]
    if len(keep) == 0:
        raise InputError(f"The given --data has no slices labelled for the {task} task.")
    return data.subset(keep)


def lesion_share(data: SliceSet) -> np.ndarray:
    """Per slice: the fraction of its lung covered by labelled infection (0 where either is unknown)."""
    lung_px = data.lung.reshape(len(data), -1).sum(1).astype(np.float64)
    inf_px = ((data.inf > 0) & (data.lung > 0)).reshape(len(data), -1).sum(1).astype(np.float64)
    known = data.lung_known & (data.inf_kind > 0) & (lung_px > 0)
    return np.where(known, inf_px / np.maximum(lung_px, 1.0), 0.0)


def _sampling_probs(
    data: SliceSet, task: str, weights: dict[str, float] | None = None, lesion_emphasis: float = 0.0
) -> np.ndarray:
    """Per-slice sampling probability: each source gets its weight, shared by its slices.

    Within a source a slice is drawn in proportion to ``1 + lesion_emphasis * lesion_share``: with an emphasis
    above 0 the slices whose lung is largely consolidated (the hard cases of lung segmentation) come more often.
    """
    weights = {**SOURCE_WEIGHTS[task], **(weights or {})}
    sources = np.array(data.source)
    per_slice = 1.0 + max(lesion_emphasis, 0.0) * lesion_share(data)
    p = np.zeros(len(data))
    present = sorted(set(data.source))
    for s in present:
        sel = sources == s
        p[sel] = weights.get(s, 1.0) * per_slice[sel] / per_slice[sel].sum()
    total = p.sum()
    return p / total if total > 0 else p


def _inputs(
    data: SliceSet,
    idx: np.ndarray,
    task: str,
    rng: np.random.Generator | None,
    p_alt: float = 0.4,
    p_lung_drop: float = 0.15,
) -> torch.Tensor:
    use_alt = (rng.random(len(idx)) < p_alt) if rng is not None else np.zeros(len(idx), bool)
    img = np.where(use_alt[:, None, None], data.img_alt[idx], data.img[idx]).astype(np.float32)
    chans = [img]
    if task == "infection":
        lung = data.lung[idx].astype(np.float32)
        if rng is not None:
            drop = rng.random(len(idx)) < p_lung_drop
            lung[drop] = 1.0
        chans.append(lung)
    return torch.from_numpy(np.stack(chans, 1))


def dice_stats(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(pooled Dice, mean per-image Dice over images with truth or prediction) for (N, H, W) 0/1 arrays."""
    inter = (pred & truth).sum((1, 2)).astype(float)
    sums = pred.sum((1, 2)).astype(float) + truth.sum((1, 2))
    pooled = 2 * inter.sum() / max(sums.sum(), 1.0)
    valid = sums > 0
    per = 2 * inter[valid] / sums[valid]
    return float(pooled), float(per.mean()) if valid.any() else 1.0


def _validator(val: SliceSet, task: str, device: str, batch: int = 32):
    def validate(model: torch.nn.Module) -> dict[str, float]:
        if len(val) == 0:
            return {"dice": 0.0}
        preds = []
        for i in range(0, len(val), batch):
            idx = np.arange(i, min(i + batch, len(val)))
            x = _inputs(val, idx, task, None).to(device)
            logits = model(x).float()
            if task == "lung":
                preds.append(logits.argmax(1).cpu().numpy().astype(np.uint8))
            else:
                lab = logits.argmax(1).cpu().numpy().astype(np.uint8)
                preds.append(lab * (val.lung[idx] > 0))
        pred = np.concatenate(preds)
        out: dict[str, float] = {}
        sources = np.array(val.source)
        if task == "lung":
            pooled, mean = dice_stats(pred > 0, val.lung > 0)
            out.update(dice=round(pooled, 4), dice_mean_image=round(mean, 4))
        else:
            pooled, mean = dice_stats(pred > 0, val.inf > 0)
            out.update(dice=round(pooled, 4), dice_mean_image=round(mean, 4))
            mc = val.inf_kind == INF_MULTI
            for c, name in ((1, "ggo"), (2, "cons")):
                if mc.any():
                    out[f"dice_{name}"] = round(dice_stats(pred[mc] == c, val.inf[mc] == c)[0], 4)
        for s in sorted(set(val.source)):
            sel = sources == s
            truth = val.lung[sel] > 0 if task == "lung" else val.inf[sel] > 0
            p, m = dice_stats(pred[sel] > 0, truth)
            out[f"dice_{s}"], out[f"dice_mean_{s}"] = round(p, 4), round(m, 4)
        # early stopping monitors the mean over sources, so no single source dominates
        out["dice"] = round(float(np.mean([out[f"dice_{s}"] for s in sorted(set(val.source))])), 4)
        out["dice_all_pooled"] = round(pooled, 4)
        return out

    return validate


def _load_cached(
    data: str, task: str, size: int, seed: int, cache: Path, limit: int | None, lung_input: str = "truth"
) -> SliceSet:
    """Load the ``--data`` slices once; later runs (``--resume``) reuse ``<out>/cache/slices-*.npz``."""
    import hashlib

    variant = "" if lung_input == "truth" else f"|lungs-{lung_input}-{_lung_model_tag()}"
    key = hashlib.sha1(f"{data}|{task}|{size}|{seed}|{limit}|v4{variant}".encode()).hexdigest()[:16]
    path = cache / f"slices-{key}.npz"
    if path.is_file():
        d = np.load(path, allow_pickle=False)
        return SliceSet(
            d["img"],
            d["img_alt"],
            d["lung"],
            d["lung_known"],
            d["inf"],
            d["inf_kind"],
            d["groups"].tolist(),
            d["source"].tolist(),
        )
    ss = load_sources(data, task, size, seed=seed, cache=cache, limit=limit, predicted_lungs=lung_input == "predicted")
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        img=ss.img,
        img_alt=ss.img_alt,
        lung=ss.lung,
        lung_known=ss.lung_known,
        inf=ss.inf,
        inf_kind=ss.inf_kind,
        groups=np.array(ss.groups),
        source=np.array(ss.source),
    )
    return ss


def _lung_model_tag() -> str:
    """Name, version and checksum of the installed lung model (the predicted lung masks depend on it)."""
    from CovidCTLib.models.runtime.inference import get_model, model_name

    m = get_model(model_name("lung"), "cpu").manifest
    return f"{m['name']}-{m['version']}-{m['sha256'][:12]}"


def build_model(task: str) -> torch.nn.Module:
    """Untrained network for ``task`` (lung / infection)."""
    arch = ARCH[task]
    return build_network(arch)


def train(
    task: str,
    data: str,
    out: str | Path,
    epochs: int = 30,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    device: str = "auto",
    resume: bool = False,
    max_steps: int | None = None,
    size: int = 128,
    steps_per_epoch: int | None = None,
    patience: int = 8,
    val_fraction: float = 0.2,
    init_from: str | None = None,
    threads: int = 2,
    source_weights: dict[str, float] | None = None,
    lung_input: str = "truth",
    lesion_emphasis: float = 0.0,
    tversky: tuple[float, float] = (0.7, 0.3),
    limit: int | None = None,
    reporter: Reporter | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Train the ``task`` network on ``data``; writes checkpoints, log.jsonl and ``<out>/model/<name>/``.

    ``init_from``: a registry model name or model folder to start from (fine-tuning). ``source_weights``:
    sampling weight per data kind, overriding the task's default mix (``SOURCE_WEIGHTS``). ``lung_input`` (infection):
    ``truth`` feeds the reference lung masks of png256 data, ``predicted`` the installed lung model's masks,
    as at inference. ``lesion_emphasis``: draw slices with more labelled infection in their lung more often
    (see ``_sampling_probs``). ``tversky``: the lung loss's (alpha, beta) weights of false negatives and false
    positives. Returns a summary dictionary.
    """
    if task not in ARCH:
        raise InputError(f"Unknown task {task!r}; use lung or infection.")
    set_training_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    logf = (out / "train.log").open("a", encoding="utf-8")

    def log(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    dev = device_name(device)
    t0 = time.time()
    if lung_input not in ("truth", "predicted"):
        raise InputError(f"--lung-input {lung_input!r}: use truth or predicted.")
    if lung_input == "predicted" and task != "infection":
        raise InputError("--lung-input predicted only applies to the infection network.")
    if lesion_emphasis < 0:
        raise InputError(f"--lesion-emphasis {lesion_emphasis}: use 0 (off) or a positive number such as 4.")
    all_data = _task_subset(_load_cached(data, task, size, seed, out / "cache", limit, lung_input), task)
    tr_idx, va_idx = grouped_split(all_data.groups, val_fraction, seed)
    train_set, val_set = all_data.subset(tr_idx), all_data.subset(va_idx)
    val_groups = sorted(set(val_set.groups))
    log(
        f"{task}: {len(train_set)} train / {len(val_set)} validation slices ({time.time() - t0:.0f}s to load); "
        f"validation groups {val_groups}"
    )
    (out / "split.json").write_text(
        json.dumps(
            {"validation_groups": val_groups, "seed": seed, "train_groups": sorted(set(train_set.groups))}, indent=1
        )
    )
    model = build_model(task)
    if init_from:
        folder = Path(init_from)
        if (folder / "manifest.json").is_file():  # a trained model folder (<out>/model/<name>)
            loaded = registry.load_model(folder.name, "cpu", root=folder.parent)
        else:
            loaded = registry.load_model(init_from, "cpu")
        model.load_state_dict(loaded.module.state_dict())
        log(f"initialised from model {init_from} {loaded.version} (sha256 {loaded.manifest['sha256'][:12]}...)")
    model = model.to(memory_format=torch.channels_last)
    probs = _sampling_probs(train_set, task, source_weights, lesion_emphasis)
    if probs.sum() <= 0:
        raise InputError(
            "--source-weights leaves no training slice to sample; give a weight above 0 to a "
            f"kind present in --data ({', '.join(sorted(set(train_set.source)))})."
        )
    aug = AugmentConfig()
    gen = torch.Generator().manual_seed(seed)

    def make_batch(rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = rng.choice(len(train_set), size=batch_size, p=probs)
        x = _inputs(train_set, idx, task, rng)
        target = train_set.lung[idx] if task == "lung" else train_set.inf[idx]
        y = torch.from_numpy(target.astype(np.int64))[:, None]
        x, y = augment_batch(x, y, aug, gen, mask_channels_in_image=1 if task == "infection" else 0)
        mc = torch.from_numpy(train_set.inf_kind[idx] == INF_MULTI)
        return x, y[:, 0], mc

    def loss_fn(m: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y, mc = (t.to(dev) for t in batch)
        logits = m(x.contiguous(memory_format=torch.channels_last))
        if task == "lung":
            return focal_tversky_loss(torch.softmax(logits.float(), 1), y, alpha=tversky[0], beta=tversky[1])
        return partial_label_infection_loss(logits, y, mc)

    spe = steps_per_epoch or max(10, len(train_set) // batch_size)
    cfg = TrainConfig(
        epochs=epochs, steps_per_epoch=spe, lr=lr, patience=patience, seed=seed, device=dev, max_steps=max_steps
    )
    summary = train_loop(model, make_batch, loss_fn, _validator(val_set, task, dev), out, cfg, resume, reporter, log)
    model = model.to("cpu").to(memory_format=torch.contiguous_format).float()
    name = MODEL_NAMES[task]
    best_metrics = summary["history"][summary["best_epoch"] - 1] if summary["history"] else {}
    manifest = {
        "name": name,
        "version": "1.0.0",
        "task": task,
        "software_version": __version__,
        "architecture": ARCH[task],
        "input": {
            "channels": ARCH[task]["kwargs"]["in_channels"],
            "size": size,
            "channel_meaning": ["normalised CT slice"] + (["lung mask 0/1"] if task == "infection" else []),
            "crop": "lung box (normalization.lung_box, 10 % margin)" if task == "infection" else "none",
            "orientation": "axial slice, radiological display (SimpleITK array of an LPS-oriented volume)",
        },
        "output": {
            "classes": ["background", "lung"]
            if task == "lung"
            else ["background", "ground-glass opacity", "consolidation"]
        },
        "normalization": NORMALIZATION_ID,
        "training": {
            "command": command or " ".join(shlex.quote(a) for a in sys.argv),
            "seed": seed,
            "source_weights": {**SOURCE_WEIGHTS[task], **(source_weights or {})},
            "lung_input": lung_input if lung_input == "truth" else f"predicted by {_lung_model_tag()}",
            "lesion_emphasis": lesion_emphasis,
            "tversky_alpha_beta": list(tversky) if task == "lung" else None,
            "epochs_run": summary["last_epoch"],
            "best_epoch": summary["best_epoch"],
            "data": data,
            "validation_groups": val_groups,
            "train_slices": len(train_set),
            "validation_slices": len(val_set),
            "licence": LICENCE_NOTE,
            "init_from": init_from,
            "seconds": round(time.time() - t0),
        },
        "metrics": {"validation_at_training_size": {k: v for k, v in best_metrics.items() if k.startswith("dice")}},
        "intended_use": "Research: segmentation of "
        + ("the lungs" if task == "lung" else "COVID-19 ground-glass opacity and consolidation inside the lungs")
        + " on axial chest CT slices (HU volumes or 8-bit images).",
        "limitations": [
            "Trained on a small public set (about 15 COVID-19 patients, 50 MedSeg slices, 3 LIDC volumes with "
            "synthetic lesions); not validated on other scanners, children, or other lung diseases.",
            f"2-D slice model at {size}x{size}"
            + (" on the lung-box crop" if task == "infection" else "")
            + "; fine structures are smoothed.",
        ],
        "research_only": DISCLAIMER,
    }
    exported = registry.save_model(model, out / "model" / name, manifest)
    log(f"exported {out / 'model' / name} sha256 {exported['sha256'][:16]}...")
    logf.close()
    return {"model_dir": str(out / "model" / name), **summary, "manifest": exported}


def finetune(task: str, data: str, out: str | Path, epochs: int = 5, lr: float = 5e-4, **kw: Any) -> dict[str, Any]:
    """Continue training the shipped model for ``task`` on new data for a few epochs."""
    return train(task, data, out, epochs=epochs, lr=lr, init_from=MODEL_NAMES[task], **kw)


def count_params(task: str) -> int:
    """Parameters of the task's network."""
    return networks.count_parameters(build_model(task))
