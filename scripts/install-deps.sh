#!/usr/bin/env bash
# Installs the Debian packages flashgpt builds and runs with. Safe to re-run: it only
# calls apt-get when something is missing.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libopenblas-openmp-dev liblapacke-dev
  libcli11-dev nlohmann-json3-dev libfmt-dev libpcre2-dev
  libgtest-dev libgmock-dev libbenchmark-dev librapidcheck-dev
  zlib1g-dev fortunes
  libopenmpi-dev openmpi-bin
)

# pip, for the cuDNN frontend's headers below (only where the CUDA toolkit is).
if [ -x /usr/local/cuda/bin/nvcc ] || command -v nvcc > /dev/null 2>&1; then
  if ! python3 -m pip --version > /dev/null 2>&1; then packages+=(python3-pip); fi
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# cuDNN's fused attention, the CUDA build's optional second attention backend, compiles against
# the cuDNN frontend's headers (from PyPI). Without them the build goes on without that backend.
if [ -x /usr/local/cuda/bin/nvcc ] || command -v nvcc > /dev/null 2>&1; then
  bash "$(dirname "$0")/fetch-cudnn-frontend.sh" ||
    echo "install-deps: no cuDNN frontend headers; the CUDA build will have no cuDNN attention backend" >&2
fi
