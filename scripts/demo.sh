#!/usr/bin/env bash
# The flashgpt demo: builds flashgpt, turns the English fortune files into a training corpus,
# trains a small GPT for a few minutes (on the GPU when flashgpt finds one it can train on, else on
# the CPU), then writes some text with it.
# Re-running reuses the build and the prepared corpus.
#   DEMO_STEPS=400 (default) sets the length of the training run.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
build_dir="${BUILD_DIR:-build}"
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build "$build_dir" --parallel --target flashgpt_cli
flashgpt="$build_dir/flashgpt"
# OpenBLAS picks its AVX2 kernels on some AVX-512 CPUs (AMD Zen 4 among them); its AVX-512 ones
# are much faster there. A user's own setting wins.
if [ -z "${OPENBLAS_CORETYPE:-}" ] && grep -q avx512bw /proc/cpuinfo && grep -q avx512vl /proc/cpuinfo \
   && grep -q avx512dq /proc/cpuinfo; then
  export OPENBLAS_CORETYPE=SkylakeX
fi

data=data/fortunes
if [ ! -f "$data/tokenizer.json" ]; then
  echo "== preparing the corpus: the fortune files of the 'fortunes' package =="
  mapfile -t files < <(find /usr/share/games/fortunes -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' | sort)
  "$flashgpt" prepare "${files[@]}" --out "$data" --tokenizer bpe --vocab-size 2048 --doc-separator $'\n%\n'
fi

out=out/demo
steps="${DEMO_STEPS:-400}"
echo "== training a 4-layer GPT (3.7M parameters) for $steps steps =="
"$flashgpt" train --data "$data" --preset d6 --n-layer 4 --n-head 4 --n-embd 256 --block-size 128 \
  --batch-size 16 --seq-len 128 --steps "$steps" --lr 2e-3 --warmup-steps 20 --weight-decay 0.1 \
  --val-every 100 --val-batches 20 --sample-every 100 --sample-tokens 48 --out "$out"
"$flashgpt" plot "$out/metrics.jsonl" -o "$out/loss.svg"

echo "== samples =="
"$flashgpt" sample --checkpoint "$out/ckpt.safetensors" --num-samples 3 --max-tokens 120 --top-k 40 --temperature 0.9
echo
"$flashgpt" sample --checkpoint "$out/ckpt.safetensors" --prompt "The secret of life is" --max-tokens 60 --top-k 40
echo
echo "checkpoint: $out/ckpt.safetensors   metrics: $out/metrics.jsonl   chart: $out/loss.svg"
