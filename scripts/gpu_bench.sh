#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md on any CUDA machine, from the repository root: the environment, the GPU
# tests, then `segdemo bench` of the GPU backends against the transformers pipeline. Results land in $OUT.
#
#   scripts/gpu_bench.sh        MODEL=random:b4 SIZES=512x512,1024x768 ITERS=100 BACKENDS=available SECTION=cuda
#                               TESTS=0 skips the tests; OUT=out/gpu-bench
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu-bench}
mkdir -p "$OUT"
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -m segdemo doctor
} 2>&1 | tee "$OUT/env.txt"

if [ "${TESTS:-1}" = 1 ]; then
    python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
fi

python3 -m segdemo bench --device cuda --model "${MODEL:-random:b4}" --sizes "${SIZES:-512x512,1024x768}" \
    --iters "${ITERS:-100}" --warmup 10 --concurrency 4 --backends "${BACKENDS:-available}" \
    --out "$OUT/bench" --markdown "$OUT/benchmarks.md" --section "${SECTION:-cuda}" 2>&1 | tee "$OUT/bench.log" | tail -40
