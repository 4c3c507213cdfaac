#!/usr/bin/env bash
# One device call: the Rust device_check (carried, built with --features cuda)
# and diffusers' gpu_compare.py on the same card, with peak GPU memory sampled
# by nvidia-smi for each side. Results land in $OUT (rust.jsonl, torch.jsonl, summary.txt).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
STEPS=${STEPS:-50}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
sample() { while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.2; done; }
base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits)
chmod +x target/release/examples/device_check
sample > "$OUT/mem_rust.txt" & P=$!
timeout ${RUST_TIMEOUT:-240} target/release/examples/device_check . --steps "$STEPS" --runs 10 --precision f16 2>"$OUT/rust.err" | tee "$OUT/rust.jsonl"
echo "rust exit $?" | tee -a "$OUT/summary.txt"
kill $P
sample > "$OUT/mem_torch.txt" & P=$!
timeout ${TORCH_TIMEOUT:-150} python3 scripts/bench/gpu_compare.py --steps "$STEPS" --runs 10 2>"$OUT/torch.err" | tee "$OUT/torch.jsonl"
echo "torch exit $?" | tee -a "$OUT/summary.txt"
kill $P
echo "baseline MiB $base; peak MiB rust $(sort -n "$OUT/mem_rust.txt" | tail -1), diffusers $(sort -n "$OUT/mem_torch.txt" | tail -1)" | tee -a "$OUT/summary.txt"
tail -n 5 "$OUT/rust.err" "$OUT/torch.err"
