#!/usr/bin/env bash
# On the lent GPU machine (device tool, from the repo root), for issues "many users" and "live": the GPU tests, the
# load test against the session (random:b4, torch-cuda fp16, unbatched and batched, same run) and the live/video
# bench. av travels as a wheel in .whl-av/ (carry it); no gradio on that image, so no app load run there.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-out/device}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl-av/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/env.txt"
if [ "${TESTS:-1}" = 1 ]; then
    timeout "${TESTS_TIMEOUT:-240}" python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_torch_cuda.py \
        2>&1 | tee "$OUT/gpu_tests.log" | tail -8
fi
if [ "${LOAD:-1}" = 1 ]; then
    timeout "${LOAD_TIMEOUT:-300}" python3 -m segdemo bench --load --load-targets session --model random:b4 \
        --backend torch-cuda --clients "${CLIENTS:-32}" --requests "${REQUESTS:-20}" --max-batch "${BATCH:-16}" \
        --warmup 2 --build-dir /tmp/many-build --out "$OUT/load" 2>&1 | grep -v Warning | tail -12
fi
if [ "${LIVE:-1}" = 1 ]; then
    timeout "${LIVE_TIMEOUT:-200}" python3 -m segdemo bench --live --video --model random:b4 --backend torch-cuda \
        --build-dir /tmp/many-build --out "$OUT/live" --markdown "$OUT/benchmarks-live.md" --section live-h100 \
        2>&1 | grep -v Warning | tail -14
fi
