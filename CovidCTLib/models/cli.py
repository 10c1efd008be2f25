"""``covidct train | finetune | evaluate  lung | infection | classifier`` subcommands.

``register(subparsers)`` is called by ``CovidCTLib/cli.py``; ``python -m CovidCTLib.models.cli ...`` runs the
same commands stand-alone. The classifier is delegated to ``CovidCTLib.models.training.classifier_train``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import sys
from typing import Any

from CovidCTLib.errors import CovidCTError, InputError

SEG_DEFAULTS: dict[str, dict[str, Any]] = {
    "lung": {"epochs": 30, "batch_size": 16, "lr": 2e-3, "patience": 8},
    "infection": {"epochs": 40, "batch_size": 16, "lr": 2e-3, "patience": 10},
}


def _add_options(p: argparse.ArgumentParser, action: str) -> None:
    volumes = ("volumes",) if action == "evaluate" else ()  # issue 13: covidct evaluate volumes
    synth = ("synthesizer",) if action == "train" else ()  # issue 16: covidct train synthesizer
    p.add_argument("task", choices=("lung", "infection", "classifier", *volumes, *synth))
    if synth:
        p.add_argument(
            "--from",
            dest="from_dirs",
            nargs="+",
            default=None,
            metavar="DIR",
            help="synthesizer: non-COVID sources (folders of images, CT volumes or DICOM series)",
        )
        p.add_argument(
            "--to-style",
            dest="to_style",
            nargs="+",
            default=None,
            metavar="DIR",
            help="synthesizer: COVID sources (folders of images, png256 / MedSeg folders, volumes)",
        )
    p.add_argument(
        "--data",
        required=not synth,
        nargs="+" if volumes else None,
        help="training data: comma-separated folders, optionally kind-prefixed "
        "(png256:, medseg:, lidc-synth:, nifti:, nifti-binary:); see CovidCTLib/models/datasets.py"
        + ("; volumes: one or more folders / files of real CT volumes" if volumes else ""),
    )
    p.add_argument("--out", "-o", required=True, help="output folder (checkpoints, log, exported model)")
    if volumes:
        p.add_argument("--overwrite", action="store_true", help="volumes: replace existing outputs in OUTDIR")
    p.add_argument("--seed", type=int, default=None, help="random seed (split, sampling, init; default 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu or cuda")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps (smoke runs)")
    p.add_argument("--model", default=None, help="model name or folder (finetune / evaluate; default: shipped)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--val-fraction", type=float, default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    # classifier-only options are accepted here and passed through
    p.add_argument("--arch", default=None, help=argparse.SUPPRESS)
    p.add_argument("--input-size", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--fold", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    if action in ("train", "finetune"):
        p.add_argument(
            "--aux-data",
            default=None,
            metavar="KIND:PATH,...",
            help="classifier only: extra training slices from segmentation data (png256:<folder>, "
            "lidc-synth:<volume or folder>) or image folders (covid-images:<folder>, "
            "noncovid-images:<folder>), mixed into every batch; never used for validation",
        )
        p.add_argument(
            "--aux-fraction",
            type=float,
            default=None,
            help="classifier only: share of each batch taken from --aux-data (default 0.35)",
        )
        p.add_argument(
            "--drop-real-covid",
            action="store_true",
            help="classifier only: train without the real COVID images (COVID examples only from "
            "--aux-data, e.g. covid-images:<synthetic folder>); validation stays real",
        )
    if action == "train":
        p.add_argument(
            "--head",
            choices=("mlp", "linear"),
            default=None,
            help="classifier --arch seg-features only: head on the pooled features: mlp (three one-hidden-layer "
            "perceptrons per cross-validation fold, the 2.1.0 recipe; default) or linear (L2 logistic "
            "regression, the 2.0.x recipe)",
        )
        p.add_argument(
            "--views",
            type=int,
            default=None,
            help="classifier --arch seg-features only: views per training image (original, flip, then random "
            "augmentations; default 6)",
        )
        p.add_argument(
            "--aux-weight",
            type=float,
            default=None,
            help="classifier --arch seg-features only: total weight of the --aux-data slices (noncovid-volume:, "
            "covid-slices:) as a multiple of a quarter of the training images (default 1)",
        )
    if action in ("train", "finetune"):
        p.add_argument("--epochs", type=int, default=None)
        p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
        p.add_argument("--steps-per-epoch", type=int, default=None)
        p.add_argument(
            "--size",
            type=int,
            default=None,
            help="training slice size (default 128; finetune: the shipped model's size)",
        )
        p.add_argument(
            "--lung-input",
            default=None,
            choices=("truth", "predicted"),
            help="infection: lung-mask channel of png256 slices from the reference masks (truth, "
            "default) or from the installed lung model (predicted, as at inference)",
        )
        p.add_argument(
            "--source-weights",
            default=None,
            metavar="KIND=W,...",
            help="how often each data kind is sampled, e.g. png256=0.8,lidc-synth=0.2 "
            "(default: the task's built-in mix)",
        )
        p.add_argument(
            "--lesion-emphasis",
            type=float,
            default=None,
            metavar="K",
            help="draw a slice in proportion to 1 + K x (share of its lung labelled infection): "
            "more consolidated-lung examples for the lung network (default 0: off)",
        )
        p.add_argument(
            "--tversky",
            default=None,
            metavar="ALPHA,BETA",
            help="lung network: Focal Tversky weights of false negatives and false positives (default 0.7,0.3, "
            "the published recall-weighted setting; 0.5,0.5 is a focal Dice loss)",
        )
    else:
        p.add_argument(
            "--split",
            default="all",
            choices=("all", "val"),
            help="evaluate all slices, or only the grouped validation split of --seed",
        )
        p.add_argument("--size", type=int, default=128, help=argparse.SUPPRESS)


def _command_line(args: argparse.Namespace) -> str:
    """The equivalent ``covidct`` command (for the manifest), rebuilt from the parsed options."""
    parts = ["covidct", getattr(args, "seg_action", "train"), args.task]
    for key in (
        "data",
        "out",
        "epochs",
        "steps_per_epoch",
        "batch_size",
        "size",
        "lr",
        "patience",
        "val_fraction",
        "seed",
        "max_steps",
        "model",
        "source_weights",
        "lung_input",
        "lesion_emphasis",
        "tversky",
    ):
        value = getattr(args, key, None)
        if value is not None:
            parts += [f"--{key.replace('_', '-')}", str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def parse_source_weights(text: str | None) -> dict[str, float] | None:
    """``"png256=0.8,lidc-synth=0.2"`` -> ``{"png256": 0.8, "lidc-synth": 0.2}`` (None when not given)."""
    if not text:
        return None
    weights: dict[str, float] = {}
    for item in text.split(","):
        kind, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not kind.strip() or weight < 0:
            raise InputError(
                f"--source-weights item {item!r} is not KIND=WEIGHT with a weight >= 0 "
                "(example: png256=0.8,lidc-synth=0.2)."
            )
        weights[kind.strip()] = weight
    if sum(weights.values()) <= 0:
        raise InputError("--source-weights: at least one weight must be above 0.")
    return weights


def _seg_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    d = SEG_DEFAULTS[args.task]
    return {
        "epochs": args.epochs if args.epochs is not None else d["epochs"],
        "batch_size": args.batch_size or d["batch_size"],
        "lr": args.lr if args.lr is not None else d["lr"],
        "patience": args.patience if args.patience is not None else d["patience"],
        "seed": args.seed if args.seed is not None else 0,
        "device": args.device,
        "resume": args.resume,
        "max_steps": args.max_steps,
        "size": args.size or 128,
        "steps_per_epoch": args.steps_per_epoch,
        "threads": args.threads,
        "source_weights": parse_source_weights(getattr(args, "source_weights", None)),
        "lung_input": getattr(args, "lung_input", None) or "truth",
        "lesion_emphasis": getattr(args, "lesion_emphasis", None) or 0.0,
        "tversky": parse_tversky(getattr(args, "tversky", None)),
        "val_fraction": args.val_fraction if args.val_fraction is not None else 0.2,
        "command": _command_line(args),
    }


def parse_tversky(text: str | None) -> tuple[float, float]:
    """``ALPHA,BETA`` -> the Focal Tversky weights (default 0.7, 0.3); both must be positive."""
    if not text:
        return (0.7, 0.3)
    try:
        alpha, beta = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--tversky {text!r}: give two numbers, e.g. 0.7,0.3 or 0.5,0.5.") from None
    if alpha <= 0 or beta <= 0:
        raise InputError(f"--tversky {text!r}: both weights must be positive.")
    return (alpha, beta)


def _classifier(name: str) -> Any:
    try:
        return getattr(importlib.import_module("CovidCTLib.models.training.classifier_train"), name)
    except (ImportError, AttributeError) as exc:
        raise InputError("The COVID classifier trainer is not installed in this build.") from exc


def _reporter(cancel: Any) -> Any:
    from CovidCTLib.progress import Reporter

    return Reporter(None, cancel) if cancel is not None else None


def run_train(args: argparse.Namespace, cancel: Any = None) -> int:
    """``covidct train <task>`` (SIGINT/SIGTERM cancel between steps; resume later with --resume)."""
    if args.task == "classifier":
        _classifier("main_train")(args)
        return 0
    if args.task == "synthesizer":
        from CovidCTLib.models.synth_cli import run_train_synthesizer

        return run_train_synthesizer(args, _reporter(cancel))
    if not args.data:
        raise InputError(f"covidct train {args.task} needs --data (the training data folders).")
    from CovidCTLib.models.training.train_seg import train

    summary = train(args.task, args.data, args.out, reporter=_reporter(cancel), **_seg_kwargs(args))
    print(
        json.dumps(
            {"model_dir": summary["model_dir"], "best_epoch": summary["best_epoch"], "best_dice": summary["best"]}
        )
    )
    return 0


def run_finetune(args: argparse.Namespace, cancel: Any = None) -> int:
    """``covidct finetune <task>``: a few epochs from the shipped model on new data."""
    if args.task == "classifier":
        _classifier("main_finetune")(args)
        return 0
    from CovidCTLib.models.runtime.registry import read_manifest
    from CovidCTLib.models.training.train_seg import MODEL_NAMES, train

    kw = _seg_kwargs(args)
    name = args.model or MODEL_NAMES[args.task]
    if args.size is None:
        kw["size"] = int(read_manifest(name)["input"]["size"])
    if args.epochs is None:
        kw["epochs"] = 5
    if args.lr is None:
        kw["lr"] = 5e-4
    summary = train(args.task, args.data, args.out, init_from=name, reporter=_reporter(cancel), **kw)
    print(
        json.dumps(
            {"model_dir": summary["model_dir"], "best_epoch": summary["best_epoch"], "best_dice": summary["best"]}
        )
    )
    return 0


def run_evaluate(args: argparse.Namespace, cancel: Any = None) -> int:  # noqa: ARG001
    """``covidct evaluate <task>``: metrics table, per-image CSV."""
    if args.task == "volumes":  # issue 13 hook
        from CovidCTLib.evaluate_volumes import evaluate_volumes

        evaluate_volumes(args.data, args.out, overwrite=args.overwrite, device=args.device)
        return 0
    args.data = ",".join(args.data)
    if args.task == "classifier":
        _classifier("main_evaluate")(args)
        return 0
    from CovidCTLib.models.evaluation.evaluate import evaluate

    result = evaluate(
        args.task,
        args.data,
        args.out,
        model=args.model,
        device=args.device,
        split=args.split,
        seed=args.seed if args.seed is not None else 0,
        val_fraction=args.val_fraction if args.val_fraction is not None else 0.2,
    )
    print(json.dumps(result["summary"], indent=1))
    return 0


def run_calibrate(args: argparse.Namespace, cancel: Any = None) -> int:  # noqa: ARG001
    """``covidct calibrate <task>``: pick the probability threshold on training groups, store it in the manifest."""
    from CovidCTLib.models.evaluation.calibrate import calibrate, calibrate_classifier

    if args.task == "classifier":
        result = calibrate_classifier(
            args.data, args.model, seed=args.seed, val_fraction=args.val_fraction, fold=args.fold
        )
    else:
        result = calibrate(
            args.task, args.data, args.model, seed=args.seed, val_fraction=args.val_fraction, split=args.split
        )
    print(json.dumps(result, indent=1))
    return 0


def _add_calibrate(subparsers: Any) -> None:
    text = (
        "choose a lung / infection model's probability threshold on the training groups, or fit the "
        "classifier's probability calibration on its validation split (stored in the model's manifest)"
    )
    p = subparsers.add_parser("calibrate", help=text, description=text + ". Research software, not for diagnosis.")
    p.add_argument("task", choices=("lung", "infection", "classifier"))
    p.add_argument(
        "--data",
        required=True,
        help="the training --data (lung / infection: its png256: and medseg: "
        "sources are used; classifier: the COVID/ NonCOVID/ folder)",
    )
    p.add_argument("--model", required=True, help="model folder to calibrate, e.g. runs/lung/model/lung-attunet")
    p.add_argument("--seed", type=int, default=0, help="split seed used for training (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation fraction used for training")
    p.add_argument("--fold", type=int, default=0, help="classifier: validation fold used for training")
    p.add_argument(
        "--split",
        default="train",
        choices=("train", "val"),
        help="lung / infection: choose the threshold on the training groups (default) or on the "
        "validation groups (then the validation numbers are optimistic)",
    )
    p.set_defaults(handler=run_calibrate)


def run_soup(args: argparse.Namespace, cancel: Any = None) -> int:  # noqa: ARG001
    """``covidct soup <task> --run DIR``: export the average of a finished run's best and last checkpoints."""
    from CovidCTLib.models.training.soup import soup_run

    checkpoints = tuple(c.strip() for c in args.checkpoints.split(",") if c.strip())
    folder, written = soup_run(args.task, args.run, args.out, checkpoints)
    print(
        f"exported {folder} sha256 {written['sha256']} (epochs {written['training']['soup']['epochs']}); "
        f"choose its threshold next: covidct calibrate {args.task} --data ... --model {folder}"
    )
    return 0


def _add_soup(subparsers: Any) -> None:
    text = "average the weights of a finished lung / infection run's best and last checkpoints (a uniform soup)"
    p = subparsers.add_parser("soup", help=text, description=text + ". Research software, not for diagnosis.")
    p.add_argument("task", choices=("lung", "infection"))
    p.add_argument("--run", required=True, help="the run's --out folder (holds best.pt, last.pt, model/<name>)")
    p.add_argument("--out", default=None, help="model folder to write (default <run>/soup/<name>)")
    p.add_argument("--checkpoints", default="best.pt,last.pt", help="comma-separated checkpoint files of the run")
    p.set_defaults(handler=run_soup)


def register(subparsers: Any) -> None:
    """Add ``train``, ``finetune`` and ``evaluate`` to the ``covidct`` argparse sub-parsers."""
    for action, handler, text in (
        ("train", run_train, "train a network (lung, infection or classifier) on labelled data"),
        ("finetune", run_finetune, "continue training a shipped network on new data for a few epochs"),
        ("evaluate", run_evaluate, "measure a network on labelled data (Dice, IoU, ...; per-image CSV)"),
    ):
        p = subparsers.add_parser(action, help=text, description=text + ". Research software, not for diagnosis.")
        _add_options(p, action)
        p.set_defaults(handler=handler, seg_action=action)
    _add_calibrate(subparsers)
    _add_soup(subparsers)
    from CovidCTLib.models.synth_cli import add_synthesize

    add_synthesize(subparsers)  # issue 16: covidct synthesize


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: ``python -m CovidCTLib.models.cli train lung --data ... --out ...``."""
    parser = argparse.ArgumentParser(prog="covidct", description="CovidCT model training (research use only).")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except CovidCTError as exc:
        print(f"covidct: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
