#!/usr/bin/env bash
# Stop 22's single-stream decode on the Llama-3.2-1B shape (Q4_0), both x86 tiers, peers in the same run.
set -euo pipefail
cd "$(dirname "$0")/../../.."
M=$HOME/.cache/flintlm/synthetic/llama-3.2-1b-q4_0.gguf
OUT=bench/results/stop22-2026-12-05
echo "== start $(date +%T), load $(cut -d' ' -f1-3 /proc/loadavg)"
for run in 1 2 3; do
  /tmp/peers/build-avx512/bin/llama-bench -m "$M" -p 0 -n 128 -r 1 -t 2 --repack 1 -o jsonl 2>/dev/null >> $OUT/avx512-1b-llama-bench-avx512-noamx.jsonl
  /tmp/peers/build-native/bin/llama-bench -m "$M" -p 0 -n 128 -r 1 -t 2 --repack 0 -o jsonl 2>/dev/null >> $OUT/avx512-1b-llama-bench-native-norepack.jsonl
done
FLINTLM_CPU_ISA=avx512 .venv/bin/python -m flintlm.bench offline --model llama-3.2-1b-q4_0 --num-prompts 1 --input-len 128 --output-len 128 --single-stream-prompts 2 --runs 3 --threads 2 --out $OUT --tag avx512-1b-single
for run in 1 2 3; do
  /tmp/peers/build-avx2/bin/llama-bench -m "$M" -p 0 -n 128 -r 1 -t 2 --repack 1 -o jsonl 2>/dev/null >> $OUT/avx2-1b-llama-bench-avx2-vnni.jsonl
done
FLINTLM_CPU_ISA=avx2 .venv/bin/python -m flintlm.bench offline --model llama-3.2-1b-q4_0 --num-prompts 1 --input-len 128 --output-len 128 --single-stream-prompts 2 --runs 3 --threads 2 --out $OUT --tag avx2-1b-single
echo "== done $(date +%T), load $(cut -d' ' -f1-3 /proc/loadavg)"
