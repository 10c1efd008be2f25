"""Redraw the README's explanation picture (docs/images/phantom_heatmap.png) with the installed models.

The picture is the default analysis of the built-in phantom (``covidct demo``'s, seed 0): its top three slices
with the COVID heatmap, the infection outline and the hot-region boxes, as the HTML / PDF report draws them.
Run from the repository root after a classifier change: ``.venv/bin/python scripts/readme_heatmap.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from CovidCTLib.explain.figure import explanation_png
from CovidCTLib.phantom import make_phantom
from CovidCTLib.pipeline import analyze


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images/phantom_heatmap.png", help="PNG to write")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed (default 0, the demo's)")
    args = parser.parse_args()
    phantom = make_phantom(seed=args.seed)
    result = analyze(phantom.ct, method="auto")
    explanation = (result.report or {}).get("explanation")
    png = explanation_png(result.ct, result.infection, result.heatmap, explanation) if explanation else None
    if png is None:
        raise SystemExit("the analysis gave no explanation (is the classifier installed?); nothing written")
    Path(args.out).write_bytes(png)
    versions = result.report.get("versions", {"models": {}})
    probability = result.report.get("covid_probability")
    print(f"wrote {args.out} ({len(png)} bytes); covid_probability {probability}; models {versions['models']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
