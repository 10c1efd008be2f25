"""``covidct train synthesizer`` and ``covidct synthesize`` (issue 16: CycleGAN synthesis of COVID-like CT)."""

from __future__ import annotations

import argparse
import json
import shlex
from typing import Any

from CovidCTLib.errors import InputError
from CovidCTLib.version import DISCLAIMER


def synth_config(args: argparse.Namespace) -> Any:
    """The :class:`~CovidCTLib.models.training.synthesizer.SynthConfig` of the parsed ``train`` options."""
    from CovidCTLib.models.training.synthesizer import SynthConfig

    if not args.from_dirs or not args.to_style:
        raise InputError(
            "covidct train synthesizer needs --from DIR [DIR ...] (non-COVID) and --to-style DIR [DIR ...] (COVID)."
        )
    cfg = SynthConfig(
        sources_a=[str(d) for d in args.from_dirs],
        sources_b=[str(d) for d in args.to_style],
        device=args.device,
        threads=args.threads,
    )
    for key in ("size", "max_steps", "batch_size", "seed", "lr"):
        value = getattr(args, key, None)
        if value is not None:
            setattr(cfg, key, value)
    return cfg


def _command(cfg: Any, out: str) -> str:
    parts = [
        "covidct",
        "train",
        "synthesizer",
        "--from",
        *cfg.sources_a,
        "--to-style",
        *cfg.sources_b,
        "--out",
        out,
        "--size",
        str(cfg.size),
        "--max-steps",
        str(cfg.max_steps),
        "--batch-size",
        str(cfg.batch_size),
        "--seed",
        str(cfg.seed),
        "--lr",
        str(cfg.lr),
    ]
    return " ".join(shlex.quote(p) for p in parts)


def run_train_synthesizer(args: argparse.Namespace, reporter: Any = None) -> int:
    """Train the CycleGAN into ``--out`` (resumable with ``--resume``)."""
    from CovidCTLib.models.training.synthesizer import train_synthesizer

    cfg = synth_config(args)
    summary = train_synthesizer(
        cfg, args.out, resume=bool(args.resume), command=_command(cfg, args.out), reporter=reporter
    )
    print(json.dumps({"model_dir": summary["model_dir"], "steps": summary["steps"]}))
    return 0


def run_synthesize(args: argparse.Namespace, cancel: Any = None) -> int:  # noqa: ARG001
    """``covidct synthesize --from DIR -o OUTDIR --model RUN``."""
    from CovidCTLib.models.runtime.device import device_name
    from CovidCTLib.models.runtime.synthesis import synthesize_folder

    result = synthesize_folder(
        args.from_dir, args.out, args.model, device=device_name(args.device), overwrite=args.overwrite
    )
    print(json.dumps({**result, "note": "synthetic images, not real patients. " + DISCLAIMER}))
    return 0


def add_synthesize(subparsers: Any) -> None:
    """Add ``covidct synthesize`` to the sub-parsers."""
    text = (
        "turn each non-COVID chest CT image of a folder into a COVID-like one (same size and name) with a "
        "trained CycleGAN synthesizer (covidct train synthesizer)"
    )
    p = subparsers.add_parser(
        "synthesize", help=text, description=text + ". Research software, not for diagnosis: the images are synthetic."
    )
    p.add_argument("--from", dest="from_dir", required=True, metavar="DIR", help="folder of PNG/JPEG images")
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder (same file names)")
    p.add_argument(
        "--model",
        required=True,
        metavar="RUN",
        help="the --out folder of 'covidct train synthesizer' (or its model/covid-synthesizer folder)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--overwrite", action="store_true", help="replace images of the same name in OUTDIR")
    p.set_defaults(handler=run_synthesize)
