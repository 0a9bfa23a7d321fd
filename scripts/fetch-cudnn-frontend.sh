#!/usr/bin/env bash
# Fetches the headers of NVIDIA's cuDNN frontend (the header-only C++ API over cuDNN 9's graph
# backend) into third_party/cudnn_frontend/include, where CMake looks for them: with them and the
# toolkit's cudnn.h, the CUDA build gains cuDNN's fused attention as a second attention backend
# (src/cuda/attention_cudnn.cpp). The frontend is published on PyPI as a wheel whose include/
# directory holds the headers; only those are kept. Safe to re-run: it does nothing when the
# pinned version is already there. A build without them simply has no cuDNN backend.
set -euo pipefail
cd "$(dirname "$0")/.."

version="1.32.0"
dest="third_party/cudnn_frontend"
if [ -f "$dest/VERSION" ] && [ "$(cat "$dest/VERSION")" = "$version" ] && [ -f "$dest/include/cudnn_frontend.h" ]; then
  exit 0
fi

if ! python3 -m pip --version > /dev/null 2>&1; then
  echo "fetch-cudnn-frontend: python3's pip is missing (apt-get install python3-pip)" >&2
  exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "nvidia-cudnn-frontend==$version"
wheel="$(ls "$tmp"/nvidia_cudnn_frontend-"$version"-*.whl | head -n 1)"
python3 - "$wheel" "$tmp/unpacked" <<'PYEOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    names = [n for n in z.namelist() if n.startswith("include/")]
    if not any(n == "include/cudnn_frontend.h" for n in names):
        sys.exit(f"fetch-cudnn-frontend: {sys.argv[1]} has no include/cudnn_frontend.h")
    z.extractall(sys.argv[2], members=names)
PYEOF
rm -rf "$dest"
mkdir -p "$dest"
mv "$tmp/unpacked/include" "$dest/include"
echo "$version" > "$dest/VERSION"
echo "cuDNN frontend $version headers in $dest/include"
