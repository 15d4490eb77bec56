#!/usr/bin/env bash
# On the lent GPU machine (device tool, from the repo root), for issue "click to pixels": the GPU tests, then what
# the user waits for — `segdemo bench --app` (the app's API round trips beside a do-nothing Gradio app, torch-cuda,
# random:b4; no Chromium on that image, so no browser timing) — and the engine bench at 12 MP (the transformers
# pipeline beside torch-cuda). gradio/plotly and the dependencies the image lacks travel as wheels in .whl/.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
OUT=${OUT:-out/device}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
    python3 -c "import torch, gradio, plotly; print(torch.__version__, torch.version.cuda, gradio.__version__,
                plotly.__version__, torch.cuda.get_device_name(0))"
} 2>&1 | tee "$OUT/env.txt"

if [ "${TESTS:-1}" = 1 ]; then
    timeout "${TESTS_TIMEOUT:-240}" python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_torch_cuda.py \
        2>&1 | tee "$OUT/gpu_tests.log" | tail -15
fi
if [ "${APP:-1}" = 1 ]; then
    timeout "${APP_TIMEOUT:-300}" python3 -m segdemo bench --app --model random:b4 --backend torch-cuda --no-browser \
        --iters "${ITERS:-20}" --warmup 3 --out "$OUT/app" --markdown "$OUT/benchmarks.md" --section app-h100 \
        2>&1 | grep -v Warning | tee /tmp/app.log | tail -30
fi
if [ "${ENGINE:-1}" = 1 ]; then
    timeout "${ENGINE_TIMEOUT:-200}" python3 -m segdemo bench --device cuda --model random:b4 --sizes "${ENGINE_SIZES:-4032x3024}" \
        --iters "${ENGINE_ITERS:-10}" --warmup 3 --concurrency 1 --images 2 --backends torch-cuda --out "$OUT/bench12" \
        --markdown "$OUT/benchmarks.md" --section "${ENGINE_SECTION:-h100-12mp}" 2>&1 | grep -v Warning | tee /tmp/bench12.log | tail -12
fi
rm -f "$OUT/bench12/bench.html" "$OUT/app/bench-app.md" "$OUT/bench12/bench.md"  # the results JSONs and benchmarks.md hold it all (≤ 8 files come back)
