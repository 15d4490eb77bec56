#!/usr/bin/env bash
# The package as users install it: build the wheel, install it with its default dependencies into a fresh virtual
# environment outside the checkout, and run it from outside the checkout — the command line (a photo, a video, a
# Triton model repository), the app, and an import of every module of the installed copy.
#
#   .ci/wheel_check.sh        PYTHON=python3.12 picks the interpreter; KEEP=1 keeps the temporary folder
#
# Dependencies install at requirements.txt's exact pins (as constraints: pyproject.toml's ranges choose the packages,
# requirements.txt their versions), so this tests what CI tests and pip's cache makes a second run quick.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/segdemo-wheel.XXXXXX")
APP_PID=
cleanup() {
    if [ -n "$APP_PID" ]; then kill "$APP_PID" 2>/dev/null || true; wait "$APP_PID" 2>/dev/null || true; fi
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
unset PYTHONPATH
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_DISABLE_TELEMETRY=1 PIP_DISABLE_PIP_VERSION_CHECK=1
START=$SECONDS
step() { echo "wheel check [$((SECONDS - START)) s] $*"; }
fail() { echo "wheel check FAILED: $*" >&2; exit 1; }
need() { for f in "$@"; do [ -s "$f" ] || fail "$f was not written"; done; }

# A copy of what a clean clone holds, so nothing the checkout has lying around (build/, stubs) can reach the wheel.
step "building the wheel"
mkdir -p "$TMP/src" "$TMP/dist" "$TMP/work"
cp "$ROOT/pyproject.toml" "$ROOT/README.md" "$TMP/src/"
cp -r "$ROOT/segdemo" "$TMP/src/"
"$PY" -m pip wheel -q --no-deps -w "$TMP/dist" "$TMP/src"
WHEEL=$(ls "$TMP/dist"/segdemo-*.whl)
echo "  $(basename "$WHEEL"): $(du -k "$WHEEL" | cut -f1) KiB"

step "installing it into a fresh environment"
"$PY" -m venv "$TMP/venv"
VENV=$TMP/venv
sed -E 's/\[[^]]*\]//' "$ROOT/requirements.txt" >"$TMP/constraints.txt"  # constraints carry no extras
"$VENV/bin/pip" install -q -c "$TMP/constraints.txt" "$WHEEL"
echo "  site-packages: $(du -sm "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" | cut -f1) MiB"

# From here on nothing runs in, or imports from, the checkout.
cd "$TMP/work"
export PATH="$VENV/bin:$PATH"

step "segdemo --help"
segdemo --help | grep -q "segment" || fail "segdemo --help does not list the segment command"
python -m segdemo --help >/dev/null

step "every module of the installed package imports"
python - "$VENV" "$ROOT" <<'EOF'
import importlib, pkgutil, sys
from pathlib import Path

venv, checkout = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
import segdemo

where = Path(segdemo.__file__).resolve()
assert where.is_relative_to(venv), f"segdemo imported from {where}, not from the fresh environment {venv}"
# Run by the command line (__main__) or inside tritonserver (python_model, which imports its utilities).
SKIP = {"segdemo.__main__", "segdemo.triton.python_model"}
names = [m.name for m in pkgutil.walk_packages(segdemo.__path__, "segdemo.", onerror=lambda name: sys.exit(name))]
for name in names:
    if name not in SKIP:
        importlib.import_module(name)
packages = sorted(m.name for m in pkgutil.walk_packages(segdemo.__path__, "segdemo.") if m.ispkg)
outside = [m.__name__ for m in list(sys.modules.values())
           if m.__name__.startswith("segdemo") and getattr(m, "__file__", None)
           and Path(m.__file__).resolve().is_relative_to(checkout)]
assert not outside, f"imported from the checkout: {outside}"
assert "segdemo.triton" in packages, packages
assert "segdemo.triton.python_model" in names
print(f"  {len(names) - len(SKIP)} modules imported (of {len(names)}); packages: segdemo, {', '.join(packages)}")
EOF

step "segdemo segment: a photo and a video (random:tiny)"
python - <<'EOF'
from fractions import Fraction

import av
import numpy as np
from PIL import Image
from skimage import data

Image.fromarray(data.astronaut()).save("photo.jpg", quality=92)
with av.open("clip.mp4", "w") as out:
    stream = out.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
    stream.time_base = Fraction(1, 10)
    frame = data.astronaut()[:96 * 3:3, :160 * 3:3]
    for i in range(6):
        out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(np.roll(frame, 4 * i, 1)),
                                                         format="rgb24")))
    out.mux(stream.encode())
EOF
segdemo segment photo.jpg --model random:tiny --no-show --out out/photo --build-dir build
need out/photo/classes.png out/photo/overlay.png out/photo/legend.json out/photo/profiling.json
segdemo segment clip.mp4 --model random:tiny --no-show --out out/clip --build-dir build
need out/clip/overlay.mp4 out/clip/shares.csv out/clip/shares.json out/clip/profiling.json

step "segdemo triton export"
segdemo triton export --model random:tiny --out triton --variants python,onnxruntime --build-dir build
need triton/python/segformer/config.pbtxt triton/python/segformer/1/model.py triton/python/segformer/1/model.onnx \
    triton/onnxruntime/segformer/config.pbtxt triton/onnxruntime/segformer/1/model.onnx
cmp -s triton/python/segformer/1/model.py "$(python -c 'import segdemo.triton as t; print(t.__path__[0])')/python_model.py" \
    || fail "the Triton model file is not the installed segdemo/triton/python_model.py"

# app.py is the checkout's entry point, not part of the package; a copy run here imports the installed segdemo.
step "the app (a copy of app.py) serves a segmentation and its MCP tool"
cp "$ROOT/app.py" .
PORT=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python app.py --model random:tiny --port "$PORT" --build-dir build --mcp >app.log 2>&1 &
APP_PID=$!
python - "http://127.0.0.1:$PORT/" "$APP_PID" <<'EOF' || { tail -n 40 app.log >&2; fail "the app did not serve"; }
import json, os, sys, time, urllib.request

from gradio_client import Client, handle_file

url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 180
while True:
    try:
        urllib.request.urlopen(url, timeout=5).close()
        break
    except OSError:
        os.kill(pid, 0)  # the app is still running
        if time.monotonic() > deadline:
            sys.exit("no answer after 180 s")
        time.sleep(1)
overlay, classes, legend, timings = Client(url, verbose=False).predict(
    handle_file("photo.jpg"), 0.5, False, api_name="/segment")
assert legend["image_size"] == [512, 512] and legend["classes"], legend
assert os.path.getsize(overlay) > 0 and os.path.getsize(classes) > 0
print(f"  /segment: {len(legend['classes'])} classes, backend {timings['backend']}")
with urllib.request.urlopen(url + "gradio_api/mcp/schema", timeout=30) as answer:  # gradio[mcp] came with it
    tools = [tool["name"] for tool in json.load(answer)]
assert tools == ["segment_image"], tools
print(f"  MCP tools: {', '.join(tools)}")
EOF

step "passed"
