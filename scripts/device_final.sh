#!/usr/bin/env bash
# On the lent GPU machine (device tool, from the repo root; carry .whl), for issues "ready in a second"
# and "many users": the GPU tests, restarts of a torch-cuda session (random:b4 fp16; the first start exports, traces
# and compiles, later ones start from the trace), the load test against the session and the app (unbatched and
# batched, same run), then (LIVE=1) live/video. Each part can be turned off (TESTS=0 COLD=0 LOAD=0 APPLOAD=0).
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
OUT=${OUT:-out/device}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    $(ls .whl-av/*.whl 2>/dev/null) \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/env.txt"
BUILD=/tmp/final-build
if [ "${TESTS:-1}" = 1 ]; then
    timeout "${TESTS_TIMEOUT:-300}" python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_torch_cuda.py \
        2>&1 | tee "$OUT/gpu_tests.log" | tail -6
fi
if [ "${COLD:-1}" = 1 ]; then
    timeout "${COLD_TIMEOUT:-300}" python3 -m segdemo bench --cold-start "${STARTS:-3}" --model random:b4 \
        --backend torch-cuda --precision fp16 --build-dir "$BUILD" --out "$OUT/cold" 2>&1 | grep -v Warn | tail -5
fi
if [ "${LOAD:-1}" = 1 ]; then
    timeout "${LOAD_TIMEOUT:-300}" python3 -m segdemo bench --load --load-targets session --model random:b4 \
        --backend torch-cuda --clients 32 --requests "${REQUESTS:-20}" --max-batch "${BATCH:-16}" --warmup 2 \
        --build-dir "$BUILD" --out "$OUT/load" 2>&1 | grep -v Warn | grep "max batch\|^|"
fi
if [ "${APPLOAD:-1}" = 1 ]; then
    timeout "${APPLOAD_TIMEOUT:-400}" python3 -m segdemo bench --load --load-targets app --model random:b4 \
        --backend torch-cuda --clients 32 --requests "${APP_REQUESTS:-8}" --max-batch "${BATCH:-16}" --warmup 1 \
        --build-dir "$BUILD" --out "$OUT/appload" 2>&1 | grep -v Warn | grep "max batch\|^|\|rror"
fi
if [ "${LIVE:-0}" = 1 ]; then  # --video needs .whl-av (too big to carry beside .whl)
    timeout "${LIVE_TIMEOUT:-200}" python3 -m segdemo bench --live --video --model random:b4 --backend torch-cuda \
        --build-dir "$BUILD" --out "$OUT/live" --markdown "$OUT/benchmarks-live.md" --section live-h100 \
        2>&1 | grep -v Warn | tail -14
fi
