"""Install a trained model folder into the models directory and render its MODEL_CARD.md from the manifest.

``python -m CovidCTLib.models.evaluation.model_card <trained model folder> [--metrics evaluate/metrics.json ...]``
copies ``weights.pt`` + ``manifest.json`` into ``Resources/Models/<name>/`` (or ``$COVIDCT_MODELS_DIR``),
merges measured evaluation metrics into the manifest and writes the card.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from CovidCTLib.atomic import write_text_atomic
from CovidCTLib.models.runtime.registry import MANIFEST, models_dir, sha256_file, verify, write_manifest
from CovidCTLib.version import DISCLAIMER


def _metrics_lines(metrics: dict[str, Any], size: int) -> list[str]:
    lines = []
    for key, entry in metrics.items():
        if key == "validation_at_training_size":
            lines.append(f"- validation at training size ({size} px, measured during training): `{json.dumps(entry)}`")
            continue
        if not isinstance(entry, dict) or "summary" not in entry:
            lines.append(f"- {key}: `{json.dumps(entry)}`")
            continue
        lines.append(f"- **{key}** ({entry.get('description', '')}):")
        lines.append("")
        lines.append(
            "| source | images | pooled Dice | mean Dice / image | IoU (pooled) | precision | recall |"
            " specificity | extra |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for src, s in entry["summary"].items():
            p, m = s["pooled"], s["mean_per_image"]
            extra = ", ".join(f"{k} {v}" for k, v in s.items() if k.startswith("dice_"))
            lines.append(
                f"| {src} | {s['n_images']} | {p['dice']} | {m['dice']} | {p['iou']} | {p['precision']} |"
                f" {p['recall']} | {p['specificity']} | {extra} |"
            )
        lines.append("")
    return lines


def _extra_sections(sections: list[dict[str, Any]]) -> list[str]:
    """Free-form card sections recorded in the manifest: ``{"title": ..., "lines": [markdown lines]}``."""
    lines: list[str] = []
    for section in sections:
        lines += [f"## {section['title']}", "", *section.get("lines", []), ""]
    return lines


def _burden_lines(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = [
        "## Unlabelled sanity check: infection burden with the shipped models (3-D HU inference)",
        "",
        "| scan | lung ml | GGO ml | consolidation ml | burden % of lung |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {Path(r['input']).parent.name if r['input'].endswith('dicom') else Path(r['input']).name}"
            f" | {r['lung_ml']} | {r['ggo_ml']} | {r['consolidation_ml']} | {r['burden_percent']} |"
        )
    lines += ["", "RICORD is a COVID-19 scan; the LIDC-IDRI scans are lung-cancer screening scans without COVID.", ""]
    return lines


def _experiment_lines(rows: list[dict[str, Any]]) -> list[str]:
    """'Tried and not shipped' table: ``{"run", "result", "command"}`` per experiment."""
    if not rows:
        return []
    lines = ["## Tried and not shipped", "", "| run | result (same validation split) |", "|---|---|"]
    lines += [f"| {r['run']} | {r['result']} |" for r in rows]
    lines += ["", *[f"- `{r['command']}`" for r in rows if r.get("command")], ""]
    return lines


def _flip_lines(flips: list[str]) -> list[str]:
    if not flips:
        return []
    return [
        f"- Test-time flips: {', '.join(flips)} (h: left-right, v: up-down); the class probabilities of the "
        f"mirrored inputs, mirrored back, are averaged with the plain pass ({1 + len(flips)} forward passes)."
    ]


def render_card(manifest: dict[str, Any]) -> str:
    """Markdown model card from a manifest."""
    t = manifest.get("training", {})
    arch = manifest["architecture"]
    lines = [
        f"# {manifest['name']} {manifest['version']}",
        "",
        f"**{DISCLAIMER}**",
        "",
        f"Task: {manifest['task']} segmentation. Intended use: {manifest.get('intended_use', '')}",
        "",
        "## Network and input",
        f"- Architecture: `{arch.get('network', arch.get('builder'))}` with `{json.dumps(arch.get('kwargs', {}))}`",
        f"- Input: {json.dumps(manifest['input'])}",
        f"- Output classes: {json.dumps(manifest.get('output', {}))}",
        f"- Normalisation: `{manifest['normalization']}` (see `CovidCTLib/models/normalization.py`)",
        f"- Weights: `{manifest['weights']}` ({manifest.get('weights_dtype', '')}), SHA-256 `{manifest['sha256']}`",
        "",
        f"- Post-processing: `{json.dumps(manifest.get('postprocess', {}))}`",
        *_flip_lines(manifest.get("postprocess", {}).get("test_time_flips", [])),
        "",
        "## Training",
        f"- Last command: `{t.get('command', '')}`",
        *[f"- Run history: `{h}`" for h in t.get("history", [])],
        f"- Reproduce in one go: `{t.get('reproduce', t.get('command', ''))}`",
        f"- Seed {t.get('seed')}, epochs run {t.get('epochs_run')}, best epoch {t.get('best_epoch')}, "
        f"{t.get('train_slices')} training / {t.get('validation_slices')} validation slices, "
        f"{t.get('seconds')} s on {t.get('hardware', 'CPU (2 shared cores)')}",
        f"- Data: `{t.get('data')}`",
        f"- Validation groups (grouped split, never by slice): {', '.join(t.get('validation_groups', []))}",
        f"- Licence: {t.get('licence', '')}",
        "",
        "## Measured metrics",
        *_metrics_lines(manifest.get("metrics", {}), int(manifest["input"]["size"])),
        "",
        *_burden_lines(manifest.get("burden_check_unlabelled", [])),
        *_experiment_lines(manifest.get("experiments_not_shipped", [])),
        *_extra_sections(manifest.get("extra_sections", [])),
        "## Limitations",
        *[f"- {x}" for x in manifest.get("limitations", [])],
        "",
    ]
    return "\n".join(lines)


def install(
    src: Path,
    metrics_files: list[tuple[str, Path, str]] | None = None,
    extra: dict[str, Any] | None = None,
    root: Path | None = None,
) -> Path:
    """Copy a trained model folder into the models directory, add metrics, write the card."""
    manifest = json.loads((src / MANIFEST).read_text(encoding="utf-8"))
    if sha256_file(src / manifest["weights"]) != manifest["sha256"]:
        raise ValueError(f"{src} weights do not match their manifest")
    dest = (root or models_dir()) / manifest["name"]
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / manifest["weights"], dest / manifest["weights"])
    for key, path, description in metrics_files or []:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
        manifest.setdefault("metrics", {})[key] = {
            "description": description,
            "summary": result["summary"],
            "split": result.get("split"),
        }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(manifest.get(key), dict):
            manifest[key].update(value)
        else:
            manifest[key] = value
    manifest = write_manifest(dest / MANIFEST, manifest)
    write_text_atomic(dest / "MODEL_CARD.md", render_card(manifest))
    verify(manifest["name"], dest.parent)
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Install a trained CovidCT model folder and write its model card.")
    p.add_argument("src", type=Path)
    p.add_argument("--metrics", nargs=3, action="append", metavar=("KEY", "METRICS_JSON", "DESCRIPTION"), default=[])
    p.add_argument("--extra", default=None, help="JSON object merged into the manifest")
    a = p.parse_args(argv)
    dest = install(a.src, [(k, Path(f), d) for k, f, d in a.metrics], json.loads(a.extra) if a.extra else None)
    print(dest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
