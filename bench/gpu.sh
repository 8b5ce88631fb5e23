#!/usr/bin/env bash
# The GPU benchmark: full-size SDXL architecture (random weights) in bf16 at 1024 px, batch 4,
# rank-4 MoSLoRA, moslora against the diffusers + peft reference (bench/reference.py) on the
# same machine and the same weights: seconds per training step (with and without gradient
# checkpointing), peak GPU memory, achieved TFLOP/s, and one 50-step 1024 px image with
# guidance 5 and the adapter merged. Runs unattended in under 10 minutes on one H100/H200.
#
#   bench/gpu.sh              on the GPU machine, from the repository root
#   bench/gpu.sh --dry-run    the same logic on the CPU with the tiny model (a check, here)
#
# What it needs there (nothing is built or downloaded on the GPU machine):
#   * target/release/moslora and target/release/moslora-bench, built on the CPU machine with
#     `cargo build --release` (tch 0.24 on the PyPI torch 2.11 wheel) and carried over;
#   * python3 with torch 2.11 (its lib/ is the libtorch the binaries then load:
#     LD_LIBRARY_PATH is set to it below);
#   * diffusers 0.42.1 and peft 0.21.2 for the reference: wheels in $WHEELS (default `.whl`),
#     installed into a scratch folder when that folder exists. Fetch them on a machine with
#     the registry (pure Python, about 5 MB):
#       python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         -d .whl diffusers==0.42.1 peft==0.21.2
#     (transformers, safetensors, huggingface-hub, numpy and pillow are on the GPU image;
#     add their wheels the same way where they are not).
#
# Output: a table on stdout, and gpu-<date>.md / .json in $BENCH_OUT (default
# bench/results, or $OUT when that is set, as on the device machine; a dry run writes into
# its scratch folder).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1

BIN=${BIN:-$ROOT/target/release}
WHEELS=${WHEELS:-$ROOT/.whl}
PYTHON=${PYTHON:-python3}
if [ "$DRY" = 1 ] && [ -x "$ROOT/.venv/bin/python" ]; then PYTHON=$ROOT/.venv/bin/python; fi
WORK=${BENCH_WORK:-/tmp/moslora-gpu-bench}
RESULTS=${BENCH_OUT:-${OUT:-$ROOT/bench/results}}
[ "$DRY" = 1 ] && RESULTS=${BENCH_OUT:-$WORK}
mkdir -p "$WORK" "$RESULTS"

if [ "$DRY" = 1 ]; then
  DEVICE=cpu DTYPE=f32 PRESET=tiny RES=64 BATCH=2 WARMUP=1 STEPS=2 SIZE=64 SAMPLE_STEPS=3
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
else
  DEVICE=cuda DTYPE=bf16 PRESET=sdxl-base RES=1024 BATCH=4 WARMUP=3 STEPS=10 SIZE=1024 SAMPLE_STEPS=50
fi

log() { echo "[gpu.sh $(date +%H:%M:%S)] $*" >&2; }
SCRIPT_START_S=$SECONDS

# The binaries load the libtorch of this machine's torch (same 2.11 ABI as the build's).
TORCH_LIB=$("$PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1 PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1
log "torch: $("$PYTHON" -c 'import torch; print(torch.__version__, torch.cuda.is_available())') ($TORCH_LIB)"

# The reference's packages, from carried wheels when they are here.
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WORK/site" "$WHEELS"/*.whl
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
REF_OK=1
"$PYTHON" -c 'import diffusers, peft, transformers' 2>/dev/null || {
  REF_OK=0
  log "diffusers/peft/transformers not importable: the reference side is skipped"
}

"$BIN/moslora" --version >/dev/null || { log "cannot start $BIN/moslora"; exit 1; }

# GPU memory: the device's used memory polled every 100 ms while a case runs (the same
# measure for both sides, allocator cache and CUDA context included), minus the idle level.
gpu_used() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 | head -1; }
HAVE_SMI=0
if [ "$DEVICE" = cuda ] && command -v nvidia-smi >/dev/null; then
  HAVE_SMI=1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2
fi

# The whole run must end inside the device machine's 10-minute command limit: each case gets
# at most its own limit and what is left of BUDGET_S, and is skipped when too little is left.
BUDGET_S=${BUDGET_S:-540}
START_S=$SCRIPT_START_S

# measure NAME TIMEOUT CMD...: runs CMD, keeps its RESULT line as $WORK/NAME.json with the
# GPU peak added; a failed, skipped or timed-out case is recorded as such and the script goes on.
measure() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET_S - (SECONDS - START_S) - 15))
  if [ "$left" -lt 30 ]; then
    log "$name: skipped, ${left}s of the budget left"
    echo '{"failed": "skipped: out of time"}' >"$WORK/$name.json"
    return
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  log "$name: $*"
  local poller="" idle=0
  if [ "$HAVE_SMI" = 1 ]; then
    idle=$(gpu_used)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 100 \
      >"$WORK/$name.smi" 2>/dev/null &
    poller=$!
  fi
  local rc=0
  timeout "$limit" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || rc=$?
  [ -n "$poller" ] && kill "$poller" 2>/dev/null && wait "$poller" 2>/dev/null || true
  local peak=null
  if [ "$HAVE_SMI" = 1 ] && [ -s "$WORK/$name.smi" ]; then
    peak=$(sort -n "$WORK/$name.smi" | tail -1)
    peak=$((peak - idle))
  fi
  if [ "$rc" = 0 ] && grep -q '^RESULT ' "$WORK/$name.out"; then
    grep '^RESULT ' "$WORK/$name.out" | tail -1 | cut -c8- |
      "$PYTHON" -c "import json,sys; d=json.load(sys.stdin); d['gpu_peak_mib']=json.loads('$peak'); print(json.dumps(d))" \
        >"$WORK/$name.json"
    log "$name: done"
  else
    echo "{\"failed\": $rc, \"gpu_peak_mib\": $peak}" >"$WORK/$name.json"
    log "$name: FAILED ($rc); last lines:"
    tail -5 "$WORK/$name.err" >&2 || true
  fi
}

rm -f "$WORK"/*.json
MODEL=$WORK/model-$PRESET
if [ ! -f "$MODEL/model_index.json" ]; then
  log "writing a random $PRESET model (f16 files) to $MODEL"
  "$BIN/moslora" init-model --preset "$PRESET" --dtype f16 --seed 0 --out "$MODEL" --force >&2
fi
DEV=(--device "$DEVICE" --dtype "$DTYPE")
STEP=(train-step --model "$MODEL" "${DEV[@]}" --adapter moslora --rank 4 --batch "$BATCH"
  --resolution "$RES" --warmup "$WARMUP" --steps "$STEPS")
SAMPLE=(sample --model "$MODEL" "${DEV[@]}" --steps "$SAMPLE_STEPS" --guidance 5 --size "$SIZE")

# The adapter the renders apply: MoSLoRA with non-zero B, and its exact plain-LoRA export
# for diffusers' load_lora_weights.
"$BIN/moslora-bench" make-adapter --model "$MODEL" "${DEV[@]}" --adapter moslora \
  --out "$WORK/moslora.safetensors" >/dev/null
"$BIN/moslora" export "$WORK/moslora.safetensors" --format diffusers \
  --out "$WORK/moslora-diffusers.safetensors" >/dev/null

# Most important first: the steps and the images, then checkpointing.
REF=("$PYTHON" "$ROOT/bench/reference.py")
measure ours-step 180 "$BIN/moslora-bench" "${STEP[@]}"
[ "$REF_OK" = 1 ] && measure ref-step 180 "${REF[@]}" "${STEP[@]}"
measure ours-sample 150 "$BIN/moslora-bench" "${SAMPLE[@]}" --adapter "$WORK/moslora.safetensors" \
  --out "$WORK/ours.png"
[ "$REF_OK" = 1 ] && measure ref-sample 150 "${REF[@]}" "${SAMPLE[@]}" \
  --lora "$WORK/moslora-diffusers.safetensors" --out "$WORK/reference.png"
measure ours-step-ckpt 150 "$BIN/moslora-bench" "${STEP[@]}" --gradient-checkpointing
[ "$REF_OK" = 1 ] && measure ref-step-ckpt 150 "${REF[@]}" "${STEP[@]}" --gradient-checkpointing
log "done in $((SECONDS - START_S)) s"

"$PYTHON" "$ROOT/bench/gpu_table.py" "$WORK" "$RESULTS" "$DRY" "$BATCH"
