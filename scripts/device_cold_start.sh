#!/usr/bin/env bash
# On the lent GPU machine (device tool, from the repo root), for issue "ready in a second": restarts of a torch-cuda
# session (random:b4, fp16) on an empty build folder — the first start compiles, the next ones load — with this
# checkout, then with the checkout in old/ (the code before the compiled-network cache), same machine, same run.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-out/device}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/env.txt"
python3 -c "import torch; print(torch.__version__, torch.version.cuda)" | tee -a "$OUT/env.txt"
for code in new ${OLD:+old}; do
    args=(--cold-start "${STARTS:-3}" --model "${MODEL:-random:b4}" --backend torch-cuda --precision fp16
          --build-dir "/tmp/cold-$code" --out "$OUT/$code")
    [ "$code" = old ] && args+=(--code old)
    timeout "${TIMEOUT:-400}" python3 -m segdemo bench "${args[@]}" 2>&1 | grep -v Warning | tail -8
done
