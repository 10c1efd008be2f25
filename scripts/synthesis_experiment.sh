#!/bin/bash
# Issue 16: the CycleGAN synthesis experiment of the classifier's model card ("Synthetic COVID images").
# Usage: scripts/synthesis_experiment.sh DATA OUT   (DATA: the shared data folder; OUT: a folder outside the repo)
# Research software, not a diagnosis. Runs for hours on a 2-core CPU.
set -euo pipefail
DATA=$1; OUT=$2
CC=$DATA/covid_ct_classification
covidct() { nice -n 10 python -m CovidCTLib.cli "$@"; }
mkdir -p "$OUT"
# 1. links to the COVID-CT images outside the validation groups of folds 0 and 1 (CycleGAN training), and to the
#    training-group images of each fold (synthesis sources)
python - "$CC" "$OUT" <<'PY'
import os, sys
from pathlib import Path
from CovidCTLib.models.data.classifier_data import grouped_split, list_dataset
items, out = list_dataset(sys.argv[1]), Path(sys.argv[2]) / "data"
val = {f: set(grouped_split(items, 0.2, 0, f)[1]) for f in (0, 1)}
def link(name, idx):
    (out / name).mkdir(parents=True, exist_ok=True)
    for i in idx:
        t = out / name / Path(items[i].path).name
        if not t.exists():
            os.symlink(items[i].path, t)
for label, cls in ((0, "NonCOVID"), (1, "COVID")):
    link(f"kept_{cls}", [i for i, it in enumerate(items) if it.label == label and i not in val[0] | val[1]])
    for f in (0, 1):
        link(f"f{f}_train_{cls}", [i for i, it in enumerate(items) if it.label == label and i not in val[f]])
PY
# 2. the synthesizer
covidct train synthesizer --from "$OUT/data/kept_NonCOVID" "$DATA/lidc_idri_chest_ct" "$DATA/lung_pet_ct_dx" \
  --to-style "$OUT/data/kept_COVID" "$DATA/covid19_ct_seg_png256" "$DATA/medseg_infnet_train" \
  --out "$OUT/cyclegan64" --size 64 --max-steps 1600 --batch-size 4 --seed 0 --threads 1 --device cpu --resume
# 3. synthetic versions of the non-COVID images; per fold only those of its training groups
[ -d "$OUT/synth/all" ] || covidct synthesize --from "$CC/NonCOVID" -o "$OUT/synth/all" --model "$OUT/cyclegan64"
for f in 0 1; do
  mkdir -p "$OUT/synth/f${f}_train"
  for p in "$OUT/data/f${f}_train_NonCOVID"/*; do ln -sf "$OUT/synth/all/$(basename "$p")" "$OUT/synth/f${f}_train/"; done
done
# 4. the classifier arms (one shortened recipe for all)
REC=(--epochs 20 --input-size 64 --batch-size 16 --seed 0 --threads 1 --patience 20 --cache-dir "$OUT/cls/cache")
arm() { local name=$1; shift; [ -f "$OUT/cls/$name/metrics.json" ] || covidct train classifier --data "$CC" --out "$OUT/cls/$name" "${REC[@]}" "$@"; }
for f in 0 1; do
  arm "without_f$f" --fold $f
  arm "with_f$f" --fold $f --aux-data "covid-images:$OUT/synth/f${f}_train" --aux-fraction 0.35
  arm "synthonly_f$f" --fold $f --aux-data "covid-images:$OUT/synth/f${f}_train" --aux-fraction 0.5 --drop-real-covid
done
arm without10_f0 --fold 0 --batch-size 10
for d in "$OUT"/cls/*/metrics.json; do
  python -c "import json,sys; print(sys.argv[1], json.load(open(sys.argv[1]))['validation'])" "$d"
done
