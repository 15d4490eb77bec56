#!/usr/bin/env bash
# On the lent GPU machine (device tool, repo root), issue 14: where a batched session's time goes (spans + py-spy),
# then `segdemo bench --load` (floor, app) with client processes. Wheels: .whl/ (gradio …), .whl-tools/ (py-spy).
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
OUT=${OUT:-out/device}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl .whl-tools/*.whl \
    && export PYTHONPATH=/tmp/site:.${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/env.txt"; nproc | tee -a "$OUT/env.txt"
if [ "${SESSION:-1}" = 1 ]; then
    timeout "${SESSION_TIMEOUT:-300}" py-spy record -r 100 -f raw -o "$OUT/spy-session.txt" --nonblocking ${SPY_ARGS:-} -- \
        python3 scripts/diag_session_load.py ${SESSION_ARGS:-} 2>&1 | grep -v Warning | tail -30 | tee "$OUT/session.txt"
fi
if [ "${LOAD:-1}" = 1 ]; then
    timeout "${LOAD_TIMEOUT:-400}" python3 -m segdemo bench --load --load-targets "${TARGETS:-floor,app}" \
        --model random:b4 --backend torch-cuda --precision fp16 --clients 32 --requests "${REQUESTS:-10}" \
        --max-batch 16 --front-ends "${FRONT_ENDS:-1}" --warmup 1 --out "$OUT/load" 2>&1 | grep -v Warning \
        | grep -v " INFO " | tail -40; cp "$OUT/load/load.json" "$OUT/load.json" 2>/dev/null
fi
if [ "${NETWORK:-0}" = 1 ]; then
    timeout "${NETWORK_TIMEOUT:-300}" python3 scripts/diag_network.py 2>&1 | grep -v Warning | grep -v " INFO " | tail -20
fi
if [ "${TESTS:-0}" = 1 ]; then
    timeout "${TESTS_TIMEOUT:-300}" python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_torch_cuda.py \
        2>&1 | tail -15
fi
