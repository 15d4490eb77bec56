#!/usr/bin/env bash
# On the lent GPU machine (device tool, from the repo root): environment, GPU tests, then `segdemo bench` for
# random:b4 at 512x512 and 1024x768. Everything worth keeping lands in $OUT (≤ 8 files, ≤ 2 folders deep).
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-out/device}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then  # pure-Python wheels the image lacks (plotly), carried along
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,power.draw \
        --format=csv
    nproc
    python3 - <<'PY'
import importlib.metadata as md, sys
import torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for name in ("transformers", "onnx", "onnxruntime", "numpy", "pillow", "filelock", "plotly", "scikit-image"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "MISSING")
PY
} 2>&1 | tee "$OUT/env.txt"

if [ "${TESTS:-1}" = 1 ]; then
    timeout "${TESTS_TIMEOUT:-400}" python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_torch_cuda.py \
        tests/test_network.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
fi

# First start on this machine: export the fused graph and compile the network (torch.compile's kernels are cached
# under build/), so the bench's cold starts below are from cached artifacts, as in the issue. Logs the first-ever
# init time too.
if [ "${PREWARM:-1}" = 1 ]; then
    python3 -c "import skimage.data; from PIL import Image; Image.fromarray(skimage.data.coffee()).save('/tmp/prewarm.jpg')"
    python3 -m segdemo segment /tmp/prewarm.jpg --model random:b4 --backend torch-cuda --precision fp16 --no-show \
        --out /tmp/prewarm 2>&1 | grep -v Warning | tee "$OUT/prewarm.log" | tail -5
fi

python3 -m segdemo bench --device cuda --model random:b4 --sizes "${SIZES:-512x512,1024x768}" \
    --iters "${ITERS:-100}" --warmup 10 --concurrency 4 --backends "${BACKENDS:-torch-cuda,torch-cuda:fp16+eager,torch-cuda:fp32}" \
    --out "$OUT/bench" --markdown "$OUT/benchmarks.md" --section h100 2>&1 | tee "$OUT/bench.log" | tail -40

# Diagnostics (not run by default): replay time, kernel count and agreement per precision variant.
if [ -n "${VARIANTS:-}" ]; then
    PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} timeout 200 python3 scripts/torch_cuda_variants.py --model random:b4 \
        --compile 2>&1 | grep -v Warning | tee "$OUT/variants.log" | tail -12
fi
