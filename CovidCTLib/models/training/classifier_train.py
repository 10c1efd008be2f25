"""Training, fine-tuning and evaluation of the COVID vs non-COVID slice classifier.

Entry points take an argparse namespace (``covidct train classifier`` / ``finetune`` / ``evaluate``):
``data`` (folder with COVID/ and NonCOVID/), ``out``, ``epochs``, ``seed``, ``device``, ``resume``,
``batch_size``, ``max_steps``; optional ``arch``, ``input_size``, ``lr``, ``val_fraction``, ``fold``,
``patience``, ``cache_dir``, ``model``. Checkpoints are written every epoch (``last.pt``, resumable) and
the best one by validation AUC (``best.pt``); the best is exported as an installable model folder.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from CovidCTLib.atomic import atomic_path, write_text_atomic
from CovidCTLib.errors import InputError
from CovidCTLib.models.data.classifier_data import (
    AUGMENT_PRESETS,
    Item,
    augment_batch,
    build_cache,
    eval_batch,
    grouped_split,
    list_dataset,
)
from CovidCTLib.models.evaluation.metrics import binary_metrics, roc_curve
from CovidCTLib.models.runtime.classifier import (
    CROP_SIZE,
    ClassifierConfig,
    build_classifier,
    predict_crops,
    standardize,
)
from CovidCTLib.models.runtime.device import resolve_device, set_training_threads
from CovidCTLib.models.training.checkpoints import load_checkpoint
from CovidCTLib.models.training.trainer import LoopHooks, TrainConfig, train_loop
from CovidCTLib.version import DISCLAIMER, __version__

DEFAULTS: dict[str, Any] = {
    "epochs": 40,
    "seed": 0,
    "device": "auto",
    "resume": False,
    "batch_size": 16,
    "max_steps": None,
    "arch": "efficientnet-b0",
    "input_size": 96,
    "lr": 2e-3,
    "weight_decay": 5e-4,
    "val_fraction": 0.2,
    "fold": 0,
    "patience": 40,
    "cache_dir": None,
    "ema_decay": 0.98,
    "model": None,
    "threads": 1,
    "aug": "medium",
    "aux_data": None,
    "aux_fraction": 0.35,
    "drop_real_covid": False,
}


def _opt(args: argparse.Namespace, name: str) -> Any:
    value = getattr(args, name, None)
    return DEFAULTS[name] if value is None else value


def training_device(device: str | None, threads: int | None = None) -> torch.device:
    """The training device; on the CPU ``threads`` torch threads (default 1).

    One thread is the default for training: on a shared 2-core machine under load, 2 threads measured
    5-10x *slower* per image than 1 (OpenMP threads waiting on each other while the cores are busy).
    """
    dev = resolve_device(device)
    if dev.type == "cpu":
        set_training_threads(int(threads or DEFAULTS["threads"]))
    return dev


# ---------------------------------------------------------------- model helpers


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, batches: list[torch.Tensor], device: torch.device) -> None:
    """Recompute BatchNorm running statistics as the exact average over ``batches`` ("precise BN").

    MONAI's EfficientNet starts with tiny activations; exponential running statistics that still carry
    their initial value (variance 1) shrink every layer's output in eval mode until the prediction is a
    constant. Recomputing them from training crops before each evaluation removes that bias.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns or not batches:
        return
    saved = [m.momentum for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for x in batches:
        model(standardize(x).to(device))
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    model.train(was_training)


class EMA:
    """Exponential moving average of the weights (evaluated and exported instead of the raw weights)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        import copy

        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for e, p in zip(self.model.parameters(), model.parameters(), strict=True):
            e.mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)
        for e, b in zip(self.model.buffers(), model.buffers(), strict=True):  # BN statistics: copied
            e.copy_(b)


def export_model(
    module: torch.nn.Module, config: ClassifierConfig, out_dir: Path, info: dict[str, Any]
) -> dict[str, Any]:
    """Write an installable model folder (registry format): fp16 weights + manifest.json with SHA-256."""
    from CovidCTLib.models.runtime.classifier_inference import WEIGHTS_FILE, classifier_manifest
    from CovidCTLib.models.runtime.registry import save_model

    return save_model(module, out_dir, classifier_manifest(config, info), weights_name=WEIGHTS_FILE)


# ---------------------------------------------------------------- training


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _data_and_out(args: argparse.Namespace) -> tuple[str, Path]:
    """Check ``--data`` is the dataset folder and create ``--out``."""
    data = getattr(args, "data", None)
    if not data or not Path(data).is_dir():
        raise InputError(f"--data {data!r} is not a folder; give the folder holding COVID/ and NonCOVID/.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return data, out


def _prepare(args: argparse.Namespace) -> tuple[list[Item], dict[str, np.ndarray], list[int], list[int], Path]:
    data, out = _data_and_out(args)
    items = list_dataset(data)
    cache_dir = Path(_opt(args, "cache_dir") or out / "cache")
    cache = build_cache(items, cache_dir, CROP_SIZE)
    train_idx, val_idx = grouped_split(
        items, float(_opt(args, "val_fraction")), int(_opt(args, "seed")), int(_opt(args, "fold"))
    )
    if _opt(args, "drop_real_covid"):  # issue 16 (a): COVID examples only from --aux-data (e.g. synthetic)
        if not _opt(args, "aux_data"):
            raise InputError("--drop-real-covid needs --aux-data with COVID examples (e.g. covid-images:<folder>).")
        train_idx = [i for i in train_idx if items[i].label == 0]
    return items, cache, train_idx, val_idx, out


def train_classifier(
    args: argparse.Namespace, init_state: dict[str, torch.Tensor] | None = None, config: ClassifierConfig | None = None
) -> dict[str, Any]:
    """Train or fine-tune the classifier with the one training loop (its recipe as hooks); returns the final
    summary (also in ``metrics.json``)."""
    seed = int(_opt(args, "seed"))
    device = training_device(_opt(args, "device"), _opt(args, "threads"))
    items, cache, train_idx, val_idx, out = _prepare(args)
    config = config or ClassifierConfig(arch=_opt(args, "arch"), input_size=int(_opt(args, "input_size")))
    epochs, bs = int(_opt(args, "epochs")), int(_opt(args, "batch_size"))
    max_steps = _opt(args, "max_steps")
    lr, patience = float(_opt(args, "lr")), int(_opt(args, "patience"))
    torch.manual_seed(seed)

    model = build_classifier(config).to(device)
    if init_state is not None:
        model.load_state_dict({k: v.float() for k, v in init_state.items()})
    aux, aux_probs, n_aux = _aux_pool(args, out, seed, bs)
    bs_main = max(2, bs - n_aux)
    steps_per_epoch = max(1, math.ceil(len(train_idx) / bs_main))
    total = epochs * steps_per_epoch
    warm = min(3 * steps_per_epoch, total // 10 + 1)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    ema = EMA(model, float(_opt(args, "ema_decay")))
    labels = cache["labels"]
    y_train = labels[train_idx]
    n_pos = int((y_train == 1).sum())  # none with --drop-real-covid: the aux slices balance the classes
    pos_weight = torch.tensor([(y_train == 0).sum() / n_pos if n_pos else 1.0], dtype=torch.float32)
    val_x = eval_batch(cache["crops"][val_idx], config.input_size)
    if _opt(args, "aug") not in AUGMENT_PRESETS:
        raise InputError(f"--aug must be one of {', '.join(AUGMENT_PRESETS)}")
    aug = AUGMENT_PRESETS[_opt(args, "aug")]
    epoch_batches: list[np.ndarray] = []

    def start_epoch(epoch: int, rng: np.random.Generator) -> None:
        perm = rng.permutation(train_idx)
        epoch_batches[:] = [perm[b * bs_main : (b + 1) * bs_main] for b in range(steps_per_epoch)][::-1]

    def make_batch(rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor] | None:
        idx = epoch_batches.pop()
        if len(idx) < 2:
            return None
        crops, clahe, y_np = cache["crops"][idx], cache["clahe"][idx], labels[idx]
        if aux is not None:
            a_idx = rng.choice(len(aux_probs), size=n_aux, p=aux_probs)
            crops = np.concatenate([crops, aux["crops"][a_idx]])
            clahe = np.concatenate([clahe, aux["clahe"][a_idx]])
            y_np = np.concatenate([y_np, aux["labels"][a_idx]])
        x = standardize(augment_batch(crops, clahe, config.input_size, aug, rng)).to(device)
        return x, torch.from_numpy(y_np.astype(np.float32)).to(device)

    def loss_fn(net: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        logit = net(x).float().view(-1)
        return F.binary_cross_entropy_with_logits(logit, y * 0.95 + 0.025, pos_weight=pos_weight.to(device))

    def before_validate(rng: np.random.Generator) -> None:
        calib = eval_batch(
            cache["crops"][rng.choice(train_idx, min(len(train_idx), 4 * bs), replace=False)], config.input_size
        )
        recalibrate_bn(ema.model, list(torch.split(calib, bs)), device)

    def validate(net: torch.nn.Module) -> dict[str, float]:
        return binary_metrics(labels[val_idx], predict_crops(net, val_x, device, tta=False))

    hooks = LoopHooks(
        step_lr=lr_at,
        start_epoch=start_epoch,
        after_step=ema.update,
        evaluated=lambda _model: ema.model,
        before_validate=before_validate,
        extra_state=lambda: {"ema": ema.model.state_dict()},
        load_extra_state=lambda state: ema.model.load_state_dict(state["ema"]),
    )
    cfg = TrainConfig(
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        lr=lr,
        weight_decay=float(_opt(args, "weight_decay")),
        patience=patience,
        seed=seed,
        device=str(device),
        max_steps=None if max_steps is None else int(max_steps),
        monitor="auc",
    )
    _log(
        f"{config.arch} @ {config.input_size}px on {device}: {len(train_idx)} train / {len(val_idx)} val images, "
        f"{epochs} epochs"
    )
    run = train_loop(
        model, make_batch, loss_fn, validate, out, cfg, resume=bool(_opt(args, "resume")), log=_log, hooks=hooks
    )
    history = [
        {
            "epoch": r["epoch"] - 1,
            "loss": None if r["loss"] is None else round(r["loss"], 4),
            "val_auc": r.get("auc"),
            "val_f1": r.get("f1"),
            "val_acc": r.get("accuracy"),
            "lr": r["lr"],
            "seconds": r["seconds"],
        }
        for r in run["history"]
    ]
    best_path = out / "best.pt"

    # final: best checkpoint, validation with test-time augmentation, per-image CSV, exported model
    best = load_checkpoint(best_path)
    best["val"] = best["metrics"]
    p_val = predict_crops(ema.model, val_x, device, tta=True)  # ema.model holds the best weights (train_loop)
    final = binary_metrics(labels[val_idx], p_val)
    _write_predictions(out / "val_predictions.csv", [items[i] for i in val_idx], p_val)
    _write_history(out / "history.csv", history)
    keys = (
        "data",
        "out",
        "epochs",
        "seed",
        "arch",
        "input_size",
        "batch_size",
        "lr",
        "val_fraction",
        "fold",
        "patience",
        "aug",
        "aux_data",
        "aux_fraction",
    )
    optional = {"aug", "aux_data", "aux_fraction"}  # written only when not the default
    cmd = (
        "covidct train classifier "
        + " ".join(
            f"--{k.replace('_', '-')} {_opt(args, k)}"
            for k in keys
            if k not in optional or _opt(args, k) != DEFAULTS[k]
        )
        + (" --drop-real-covid" if _opt(args, "drop_real_covid") else "")
    )
    summary = {
        "model": config.__dict__,
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "validation": final,
        "validation_no_tta_best": best["val"],
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "n_val_groups": len({items[i].group for i in val_idx}),
        "seed": seed,
        "software_version": __version__,
        "training_command": cmd,
        "disclaimer": DISCLAIMER,
    }
    write_text_atomic(out / "metrics.json", json.dumps(summary, indent=2))
    export_model(
        ema.model,
        config,
        out / "model",
        {
            "metrics": {"grouped_validation": final},
            "training": {
                "command": cmd,
                "seed": seed,
                "best_epoch": best["epoch"],
                "epochs_run": len(history),
                "n_train": len(train_idx),
                "n_val": len(val_idx),
                "n_val_groups": summary["n_val_groups"],
                "data": "COVID-CT dataset (Zhao et al., arXiv:2003.13865; 8-bit images from papers), "
                "grouped by source (paper / series) for the split"
                + (
                    f"; auxiliary training slices {_opt(args, 'aux_data')} ({n_aux} of {bs} slices per batch)"
                    if aux is not None
                    else ""
                ),
                "n_aux": 0 if aux is None else len(aux["labels"]),
                "licence": "research use only (each image's copyright stays with its publisher)",
            },
        },
    )
    _log("final validation (TTA): " + json.dumps(final))
    return summary


def _aux_pool(
    args: argparse.Namespace, out: Path, seed: int, batch_size: int
) -> tuple[dict[str, np.ndarray] | None, np.ndarray | None, int]:
    """Auxiliary slices (``--aux-data``), their class-balanced sampling probabilities and slices per batch."""
    spec = _opt(args, "aux_data")
    if not spec:
        return None, None, 0
    from CovidCTLib.models.data.classifier_aux import build_aux_cache

    fraction = float(_opt(args, "aux_fraction"))
    if not 0.0 < fraction < 1.0:
        raise InputError(f"--aux-fraction {fraction} must lie between 0 and 1 (share of each batch).")
    aux = build_aux_cache(spec, Path(_opt(args, "cache_dir") or out / "cache"), CROP_SIZE, seed)
    lab = aux["labels"]
    counts = np.bincount(lab, minlength=2).astype(float)
    probs = 1.0 / counts[lab]
    _log(f"auxiliary slices: {int(counts[1])} COVID-like / {int(counts[0])} non-COVID from {spec}")
    return aux, probs / probs.sum(), max(1, int(round(batch_size * fraction)))


def _write_predictions(path: Path, items: list[Item], probs: np.ndarray) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "group", "label", "covid_probability"])
    for it, p in zip(items, probs, strict=True):
        w.writerow([it.path, it.group, it.label, f"{p:.5f}"])
    write_text_atomic(path, buf.getvalue())


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(history[0]))
    w.writeheader()
    w.writerows(history)
    write_text_atomic(path, buf.getvalue())


def main_train(args: argparse.Namespace) -> dict[str, Any]:
    """``covidct train classifier``: train from scratch (grouped split), export to ``<out>/model``.

    ``--arch seg-features``: the classifier on the segmentation networks' features
    (:mod:`CovidCTLib.models.training.seg_feature_train`, the shipped 2.x recipe).
    """
    if getattr(args, "arch", None) == "seg-features":
        from CovidCTLib.models.training.seg_feature_train import train_seg_feature_classifier

        return train_seg_feature_classifier(args)
    return train_classifier(args)


def main_finetune(args: argparse.Namespace) -> dict[str, Any]:
    """``covidct finetune classifier``: continue from the installed (or ``--model``) classifier, lower LR."""
    from CovidCTLib.models.runtime.classifier_inference import load_classifier

    loaded = load_classifier(getattr(args, "model", None), device="cpu")
    if loaded.config.arch == "seg-features":
        raise InputError(
            "the installed classifier is a segmentation-feature classifier: it is not fine-tuned but retrained "
            "(a few minutes): `covidct train classifier --arch seg-features --data DIR --out OUT`."
        )
    if getattr(args, "lr", None) is None:
        args.lr = 3e-4
    return train_classifier(args, init_state=loaded.model.state_dict(), config=loaded.config)


def main_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """``covidct evaluate classifier``: metrics, per-image CSV and ROC curve PNG on a labelled folder.

    ``args.split``: ``all`` (default, every image: for a held-out test folder) or ``val`` (the grouped
    validation split given by ``seed`` / ``val_fraction`` / ``fold``).
    """
    from CovidCTLib.models.runtime.classifier_inference import classify_images, load_classifier

    data, out = _data_and_out(args)
    items = list_dataset(data)
    if getattr(args, "split", "all") == "val":
        _, idx = grouped_split(
            items, float(_opt(args, "val_fraction")), int(_opt(args, "seed")), int(_opt(args, "fold"))
        )
        items = [items[i] for i in idx]
    loaded = load_classifier(getattr(args, "model", None), device=_opt(args, "device"))
    probs = np.asarray(classify_images([it.path for it in items], device=_opt(args, "device"), loaded=loaded))
    labels = np.array([it.label for it in items])
    metrics = binary_metrics(labels, probs)
    _write_predictions(out / "predictions.csv", items, probs)
    _plot_roc(out / "roc.png", labels, probs, metrics, loaded.manifest)
    result = {
        "metrics": metrics,
        "model": loaded.manifest.get("name"),
        "model_version": loaded.manifest.get("version"),
        "data": str(data),
        "split": getattr(args, "split", "all"),
        "software_version": __version__,
        "disclaimer": DISCLAIMER,
    }
    write_text_atomic(out / "metrics.json", json.dumps(result, indent=2))
    print(json.dumps(metrics), file=sys.stderr)
    return result


def _plot_roc(
    path: Path, labels: np.ndarray, probs: np.ndarray, metrics: dict[str, float], manifest: dict[str, Any]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr, _ = roc_curve(labels, probs)
    fig, ax = plt.subplots(figsize=(5, 5.4))
    ax.plot(fpr, tpr, lw=2, label=f"AUC = {metrics['auc']:.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set_xlabel("1 - specificity (false-positive rate)")
    ax.set_ylabel("sensitivity (true-positive rate)")
    ax.set_title(f"COVID classifier ROC (n = {metrics['n']})")
    ax.legend(loc="lower right")
    fig.text(
        0.01,
        0.01,
        f"{manifest.get('name')} {manifest.get('version')} - CovidCT {__version__}. "
        "Research software, not a diagnosis.",
        fontsize=6,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train / evaluate the CovidCT COVID classifier (research use).")
    p.add_argument("action", choices=["train", "finetune", "evaluate"])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    for name in ("epochs", "seed", "batch_size", "max_steps", "input_size", "fold", "patience", "threads"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=None)
    for name in ("lr", "val_fraction", "aux_fraction"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=None)
    p.add_argument("--arch", default=None)
    p.add_argument("--aux-data", default=None)
    p.add_argument("--aug", default=None, choices=sorted(AUGMENT_PRESETS))
    p.add_argument("--device", default="auto")
    p.add_argument("--model", default=None)
    p.add_argument("--split", default="all", choices=["all", "val"])
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--drop-real-covid", action="store_true")
    p.add_argument("--views", type=int, default=None)
    p.add_argument("--aux-weight", type=float, default=None)
    return p


if __name__ == "__main__":  # python -m CovidCTLib.models.training.classifier_train train --data ... --out ...
    a = _parser().parse_args()
    {"train": main_train, "finetune": main_finetune, "evaluate": main_evaluate}[a.action](a)
