#!/usr/bin/env bash
# The prepared GPU run of issue 7 part 5 (anchors/profiling.md §8), one command:
#
#     OUT=/path/for/results bash benchmarks/gpu_profile.sh
#
# Profiles Llama-3-8B on the GPU (CUDA graphs, events, L2 flush, shuffled full grid, float64
# gate, measured KV terms), then Llama-2-7B if the first took less than half of BUDGET_S, and
# prints each profile's comparison with profiling.md §4.3 and, where ../shared/calibration is
# present and has the same GPU and model, with Vidur's published per-op data.
#
# Expected duration on an H100: about 85 s per 8B model (profiling.md §6.4: ~60 s measuring +
# ~25 s setup; at most about twice that if kernels or graph captures are slower than the
# roofline), plus ~10 s of checks: about 3-4 minutes for both models. Run it under a 540 s
# limit; BUDGET_S (default 420) stops the second model early rather than overrun.
#
# Needs python3 with torch (CUDA), numpy, scipy, pandas, pyyaml and click; NOT simpy or
# pydantic. Only reads GPU state (nvidia-smi queries); never changes clocks or power limits.
# Writes under $OUT: gpu.txt, profile_<model>_<gpu>.json, samples_<model>_<gpu>.json,
# run_<model>.log, check_<model>.txt. A dry run of the script's flow without a GPU:
#     OUT=/tmp/x DEVICE=cpu MODELS="tiny tiny" GRID=ci bash benchmarks/gpu_profile.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to the folder for the results}"
PY="${PYTHON:-python3}"
BUDGET_S="${BUDGET_S:-420}"
GRID="${GRID:-full}"
CAL="${CALIBRATION:-}"  # empty: 'check' looks in ../shared/calibration and skips if absent
DEVICE="${DEVICE:-cuda}"
MODELS="${MODELS:-llama-3-8b llama-2-7b}"
export PYTHONUNBUFFERED=1
start=$SECONDS
mkdir -p "$OUT"

{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total,power.limit \
    --format=csv
  "$PY" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, \
'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/gpu.txt"
if [ "$DEVICE" = cpu ]; then
  gpu=cpu
else
  gpu=$("$PY" -c "import torch; from sim.profile.check import gpu_key; \
print(gpu_key(torch.cuda.get_device_name()))") || { echo "no usable CUDA torch"; exit 2; }
fi

profile_one() {
  local model=$1 left=$((BUDGET_S - (SECONDS - start)))
  local file="$OUT/profile_${model}_${gpu}.json"
  timeout "$left" "$PY" -m sim.profile run --model "$model" --device "$DEVICE" --grid "$GRID" \
    --out "$file" --samples "$OUT/samples_${model}_${gpu}.json" 2>&1 | tee "$OUT/run_${model}.log"
  if [ -f "$file" ]; then
    "$PY" -m sim.profile check "$file" ${CAL:+--calibration "$CAL"} 2>&1 \
      | tee "$OUT/check_${model}.txt"
  else
    echo "no profile written for $model (see $OUT/run_${model}.log)"
  fi
}

first=1
for model in $MODELS; do
  used=$((SECONDS - start))
  if [ "$first" = 1 ] || [ "$used" -lt $((BUDGET_S / 2)) ]; then
    profile_one "$model"
  else
    echo "skipping $model: ${used} s used of BUDGET_S=${BUDGET_S}"
  fi
  first=0
done
nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu --format=csv 2>&1 \
  | tee -a "$OUT/gpu.txt"
echo "done in $((SECONDS - start)) s; files in $OUT"
