#!/usr/bin/env bash
# The main job on the embedded default, with the commands saeshare has today: the emoji dataset,
# the real encoders that registry packages ship, their last layers' pooled activations, an SAE
# each, their codes, and the comparison both ways (wMPPC with its floor baseline). Every step is
# skipped when its output exists, so a second run only prints the results. The streaming study
# (`saeshare run pipelines/demo.toml`) will replace this script.
# Expects the environment of scripts/python-env.sh (the Makefile's `demo` target provides it).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=target/release/saeshare
run=${RUN_DIR:-runs/demo}
encoders=${SAESHARE_CACHE:?}/encoders
mkdir -p "$run/activations" "$run/saes" "$run/codes" "$run/compare"

[ -d "$run/emoji" ] || $bin dataset build-emoji --out "$run/emoji"
$bin dataset inspect "$run/emoji" --show 3

python -m saeshare_export real --out "$encoders"

# name, last layer
for encoder in "all-minilm-l6-v2 6" "mobilenet-v2 features.18"; do
  set -- $encoder
  name=$1 layer=$2
  acts=$run/activations/$name.parquet
  [ -f "$acts" ] || $bin encode --encoder "$encoders/$name" --dataset "$run/emoji" --layers last --out "$acts"
  [ -f "$run/saes/$name/sae.json" ] || $bin sae train --activations "$acts" --layer "$layer" \
    --out "$run/saes/$name" --k 32 --expansion 4 --steps 600 --batch-size 512 --lr 1e-3 --seed 0
  [ -f "$run/codes/$name.parquet" ] || $bin sae encode --sae "$run/saes/$name" --activations "$acts" \
    --layer "$layer" --out "$run/codes/$name.parquet"
done

for pair in "mobilenet-v2 all-minilm-l6-v2" "all-minilm-l6-v2 mobilenet-v2"; do
  set -- $pair
  out=$run/compare/$1__$2
  [ -f "$out/wmppc.parquet" ] || $bin compare --source "$run/codes/$1.parquet" --target "$run/codes/$2.parquet" \
    --baselines 3 --out "$out"
done
echo "results in $run"
