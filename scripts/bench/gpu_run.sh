#!/usr/bin/env bash
# One run on a GPU machine without cargo or diffusers: the PyTorch diffusers
# side first (each preset its own process), then diffusion-bench on burn-cuda
# with --peer-json, so one table holds both. Carry: bin/diffusion-bench (built
# here: `CUDARC_CUDA_VERSION=13000 cargo build --release -p diffusion-bench
# --features cuda`, stripped, optionally gzipped to binz/diffusion-bench.gz)
# and .whl (diffusers + importlib_metadata wheels,
# which that machine's Python lacks).
#
#   bash scripts/bench/gpu_run.sh "sd15:unet,profile,ops,vae-decode,text,scheduler,pipeline" "sdxl:unet"
#
# BACKEND (default cuda) picks the Rust backend (cuda-nofusion beside cuda in a
# cuda-fusion build); PEER=0 skips the diffusers side.
set -u
OUT=${OUT:-/tmp/bench-out}
# The carried binary may come gzipped (to fit a 64 MiB transfer limit).
if [ ! -x bin/diffusion-bench ] && [ -f binz/diffusion-bench.gz ]; then
  mkdir -p bin && gunzip -c binz/diffusion-bench.gz > bin/diffusion-bench && chmod +x bin/diffusion-bench
fi
mkdir -p "$OUT"
RUNS=${RUNS:-5}
STEPS=${STEPS:-50}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
for d in /usr/local/cuda/lib64 $(dirname "$(find /opt /usr -name 'libnvrtc.so*' 2>/dev/null | head -1)" 2>/dev/null); do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
export PYTHONUNBUFFERED=1
bin/diffusion-bench --write-tokenizers
for spec in "$@"; do
  preset=${spec%%:*}
  comps=${spec#*:}
  peer_comps=$(echo "$comps" | tr ',' '\n' | grep -v -e '^profile$' -e '^ops$' | paste -sd, -)
  if [ -n "$peer_comps" ] && [ "${PEER:-1}" != 0 ]; then
    timeout "${PEER_TIMEOUT:-150}" python3 scripts/bench/bench_diffusers.py --preset "$preset" --component "$peer_comps" \
      --backend cuda --dtype f16 --batch 2 --runs "$RUNS" --steps "$STEPS" --threads 16 --root . \
      --tokenizers target/bench/tokenizers --json "$OUT/$preset-diffusers.json" 2>&1 | grep -v "should be kept in float32" \
      | tee "$OUT/$preset-diffusers.log"
  fi
  peer=()
  [ -f "$OUT/$preset-diffusers.json" ] && peer=(--compare diffusers --peer-json "$OUT/$preset-diffusers.json")
  timeout "${RUST_TIMEOUT:-300}" bin/diffusion-bench --backend "${BACKEND:-cuda}" --dtype f16 --preset "$preset" --component "$comps" \
    --runs "$RUNS" --steps "$STEPS" "${peer[@]}" --json "$OUT/$preset-${BACKEND:-cuda}.json" 2>&1 | tee "$OUT/$preset-${BACKEND:-cuda}.log"
done
