#!/usr/bin/env bash
# Builds the GPU programs on this machine (which has the Debian libraries flashgpt links) and
# gathers them, with every shared library they need beyond the C/C++ runtime, into gpu-bundle/,
# so that a GPU machine without those libraries can run them (scripts/gpu-check.sh does), and
# packs that into gpu-bundle.tar.xz (about 11 MB) to carry there.
#   scripts/gpu-bundle.sh                 (CUDA architecture 90a: Hopper)
#   CUDA_ARCHS="80;90a" scripts/gpu-bundle.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
archs="${CUDA_ARCHS:-90a}"
build="build-gpu"
# No -march=native: the GPU machine's CPU may lack this one's instruction sets. No MPI: one GPU.
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHGPT_NATIVE=OFF -DFLASHGPT_MPI=OFF \
  -DCMAKE_CUDA_ARCHITECTURES="$archs" -DFLASHGPT_BUILD_BENCH=OFF > /dev/null
programs=(flashgpt tests/test_cuda_attention tests/test_cuda_ops tests/test_cuda_latent_decode tests/test_cuda_flash_decode tests/test_cuda_matmul
          tests/test_cuda_gpt tests/test_train_cuda tests/test_cuda_warpgroup tests/test_cuda_attention_cudnn tests/test_device
          tests/test_attention)
cmake --build "$build" --parallel --target flashgpt_cli test_cuda_attention test_cuda_ops test_cuda_latent_decode test_cuda_flash_decode \
  test_cuda_matmul test_cuda_gpt test_train_cuda test_cuda_warpgroup test_cuda_attention_cudnn test_device test_attention

rm -rf gpu-bundle
mkdir -p gpu-bundle/bin gpu-bundle/lib
for p in "${programs[@]}"; do cp "$build/$p" gpu-bundle/bin/; done
# Libraries the programs load, but not the C and C++ runtime (the GPU machine's own are newer) nor
# the CUDA toolkit's (cuBLASLt is hundreds of MB; the GPU machine has the toolkit, and
# scripts/gpu-check.sh puts its libraries on the path).
for p in "${programs[@]}"; do ldd "$build/$p"; done | awk '/=> \//{print $3}' | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libstdc++.so*|libgcc_s.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libmvec.so*) ;;
    libcublas*|libcudart*|libcuda.so*) ;;
    *) cp -L "$lib" gpu-bundle/lib/ ;;
  esac
done
echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo -dirty)" > gpu-bundle/COMMIT
cat > gpu-bundle/ENV <<ENVEOF
archs=$archs
built_on=$(uname -srm)
ENVEOF
# Compressed for the trip (OpenBLAS alone is 36 MB); gpu-check.sh unpacks it.
tar -cJf gpu-bundle.tar.xz gpu-bundle
du -sh gpu-bundle gpu-bundle.tar.xz
echo "bundle: $(ls gpu-bundle/bin | tr '\n' ' ')| libraries: $(ls gpu-bundle/lib | wc -l)"
