#!/usr/bin/env bash
# Same-run figures for one CPU tier: flintlm with its kernels (and torch) forced to TIER against
# llama.cpp built for the same tier, on one model. Run on a quiet machine (nothing else busy:
# 2-thread OpenMP runs collapse when the other core is taken). Results: JSON files in OUT.
#
#   bench/tiers.sh TIER MODEL LLAMA_BIN_DIR [OUT]
#     TIER           avx512 | avx2 | generic (FLINTLM_CPU_ISA for flintlm)
#     MODEL          default | llama-3.2-1b-q4_0 | ... (a bench model name, see make-model)
#     LLAMA_BIN_DIR  llama.cpp's build/bin for that tier (llama-bench, llama-batched-bench,
#                    llama-server), e.g. cmake -DGGML_NATIVE=OFF -DGGML_AVX2=ON ... for avx2
#   Workload sizes (defaults: the embedded model's issue-#13 workloads):
#     NUM_PROMPTS=64 INPUT_LEN=128 OUTPUT_LEN=128 CONCURRENCY=32 SINGLE_PROMPTS=4 RUNS=3
#   KV_CACHE=2GiB: flintlm's KV-cache budget, sized like llama.cpp's -c so the whole batch fits
#     (the engine's default stops at 512 MiB: 8192 tokens of the 1B shape in float32, where
#     64 x 256 need 1 GiB, and the rest would be preempted and recomputed)
#   KV_DTYPE=bfloat16: flintlm's KV-cache element type (--kv-cache-dtype), 16 bits as
#     llama.cpp's default float16 cache; auto keeps the model's dtype (float32 on AVX2)
#   LLAMA_REPACK=0|1: llama-bench's and llama-batched-bench's weight repacking (llama.cpp's
#     extra buffer types); default `flintlm.bench.peers.DEFAULT_LLAMA_REPACK`, off on AMX CPUs
#     only, where its AMX matmul crashes; llama-server always gets that default
set -euo pipefail
cd "$(dirname "$0")/.."
TIER=$1 MODEL=$2 BIN=$3
OUT=${4:-bench/results/tiers-$(date +%F)}
NUM_PROMPTS=${NUM_PROMPTS:-64} INPUT_LEN=${INPUT_LEN:-128} OUTPUT_LEN=${OUTPUT_LEN:-128}
CONCURRENCY=${CONCURRENCY:-32} SINGLE_PROMPTS=${SINGLE_PROMPTS:-4} RUNS=${RUNS:-3}
KV_CACHE=${KV_CACHE:-2GiB} KV_DTYPE=${KV_DTYPE:-bfloat16}
PY=.venv/bin/python
LLAMA_REPACK=${LLAMA_REPACK:-$($PY -c "from flintlm.bench.peers import DEFAULT_LLAMA_REPACK as r; print(int(r))")}
export LLAMA_ARG_REPACK=$LLAMA_REPACK  # llama-batched-bench's --repack / --no-repack
TAG="$TIER-$MODEL"
mkdir -p "$OUT"
GGUF=$($PY -c "import sys; from flintlm.bench.model_cache import resolve_bench_model as r; \
from flintlm.loading.loader import resolve_model_path as p; print(p(r(sys.argv[1], echo=lambda m: None)))" "$MODEL")
export FLINTLM_CPU_ISA=$TIER
echo "== $TAG: $GGUF; llama.cpp from $BIN (repack $LLAMA_REPACK); $(date +%T), load $(cut -d' ' -f1-3 /proc/loadavg)"

# The dispatch table this tier measured (cached by the first load; shown for the record).
$PY -m flintlm info --model "$GGUF" --json > "$OUT/$TAG-info.json"

# 1. Offline batch + single stream (flintlm's LLM API, 2 threads).
$PY -m flintlm.bench offline --model "$MODEL" --num-prompts "$NUM_PROMPTS" \
  --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" --single-stream-prompts "$SINGLE_PROMPTS" \
  --runs "$RUNS" --threads 2 --kv-cache-memory "$KV_CACHE" --kv-cache-dtype "$KV_DTYPE" \
  --out "$OUT" --tag "$TAG-offline"

# 2. llama.cpp: llama-bench (pp512, tg128) and llama-batched-bench, each RUNS times.
for run in $(seq "$RUNS"); do
  "$BIN/llama-bench" -m "$GGUF" -p 512 -n "$OUTPUT_LEN" -r 1 -t 2 --repack "$LLAMA_REPACK" -o jsonl 2>/dev/null \
    >> "$OUT/$TAG-llama-bench.jsonl"
  "$BIN/llama-batched-bench" -m "$GGUF" -c $((NUM_PROMPTS * (INPUT_LEN + OUTPUT_LEN) + 256)) \
    -b 2048 -ub 512 -npp "$INPUT_LEN" -ntg "$OUTPUT_LEN" -npl "$NUM_PROMPTS" -t 2 \
    --output-format jsonl 2>/dev/null | grep '^{' >> "$OUT/$TAG-llama-batched.jsonl"
done

# 3. Serving: this checkout's server and llama-server, driven alike.
$PY -m flintlm.bench serve --launch --model "$MODEL" \
  --serve-args "--kv-cache-memory $KV_CACHE --kv-cache-dtype $KV_DTYPE" \
  --peer llama-cpp \
  --llama-server "$BIN/llama-server" --concurrency "$CONCURRENCY" --num-prompts $((2 * CONCURRENCY)) \
  --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" --runs "$RUNS" --threads 2 \
  --out "$OUT" --tag "$TAG-serve"
echo "== $TAG done $(date +%T), load $(cut -d' ' -f1-3 /proc/loadavg)"
