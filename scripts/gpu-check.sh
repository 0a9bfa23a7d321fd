#!/usr/bin/env bash
# On a GPU machine: the CUDA tests against the CPU reference, compute-sanitizer's memcheck and
# racecheck over them, and PyTorch's attention as the peer, all written to one report with the
# GPU, driver, commit and date. Fits well within 25 minutes.
#   scripts/gpu-check.sh                  report in bench/results/ (or in $OUT when set)
#   GPU_CHECK_USE_BUNDLE=1 scripts/gpu-check.sh   skip building here, use gpu-bundle/
#
# Programs: built here when this machine has flashgpt's build dependencies; otherwise those of
# gpu-bundle/, which scripts/gpu-bundle.sh makes on a machine that has them (carry it along).
set -uo pipefail
cd "$(dirname "$0")/.."

out="${OUT:-bench/results}"
mkdir -p "$out"
stamp="$(date -u +%Y-%m-%dT%H%MZ)"
report="$out/gpu-check-$stamp.md"
logs="$out/gpu-check-$stamp-logs"
mkdir -p "$logs"
say() { echo "$@" | tee -a "$report"; }
status=0

commit="${FLASHGPT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || cat gpu-bundle/COMMIT 2>/dev/null || echo unknown)}"
say "# flashgpt GPU check, $stamp"
say ""
say "- commit: $commit"
say "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | head -1)"
say "- CUDA compiler here: $(nvcc --version 2>/dev/null | tail -1 || echo none)"
say "- host: $(uname -srm), $(nproc) cores"

# --- programs -------------------------------------------------------------------------------
bin=""
if [ -z "${GPU_CHECK_USE_BUNDLE:-}" ] &&
   cmake -S . -B build-gpu-here -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHGPT_MPI=OFF -DFLASHGPT_NATIVE=OFF \
     -DCMAKE_CUDA_ARCHITECTURES=native -DFLASHGPT_BUILD_BENCH=OFF > "$logs/configure.log" 2>&1 &&
   cmake --build build-gpu-here --parallel --target flashgpt_cli test_cuda_attention test_cuda_ops \
     test_cuda_latent_decode test_device test_attention > "$logs/build.log" 2>&1; then
  mkdir -p build-gpu-here/bin
  cp build-gpu-here/flashgpt build-gpu-here/tests/test_cuda_attention build-gpu-here/tests/test_cuda_ops \
     build-gpu-here/tests/test_cuda_latent_decode build-gpu-here/tests/test_device \
     build-gpu-here/tests/test_attention build-gpu-here/bin/
  bin=build-gpu-here/bin
  say "- programs: built here (native architecture)"
elif [ -d gpu-bundle/bin ]; then
  bin=gpu-bundle/bin
  export LD_LIBRARY_PATH="$PWD/gpu-bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  why="${GPU_CHECK_USE_BUNDLE:+as asked}"
  why="${why:-building here failed: $(grep -m1 -iE 'error|could not' "$logs/configure.log" "$logs/build.log" 2>/dev/null | cut -c1-160)}"
  say "- programs: gpu-bundle, commit $(cat gpu-bundle/COMMIT 2>/dev/null) ($(tr '\n' ' ' < gpu-bundle/ENV)); $why"
else
  say "- programs: none (no build dependencies here and no gpu-bundle/; run scripts/gpu-bundle.sh elsewhere and carry it)"
  status=1
fi

run() {  # name, command…: runs it, keeps its log, records pass/fail and seconds
  local name="$1"; shift
  local t0=$SECONDS
  "$@" > "$logs/$name.log" 2>&1
  local rc=$?
  say "| $name | $([ $rc -eq 0 ] && echo pass || echo "FAIL ($rc)") | $((SECONDS - t0)) s | $(grep -E 'PASSED|FAILED|SKIPPED|ERROR SUMMARY' "$logs/$name.log" | tail -2 | tr '\n' ' ' | cut -c1-120) |"
  [ $rc -eq 0 ] || status=1
}

if [ -n "$bin" ]; then
  say ""
  say "## Tests"
  say ""
  say "| check | result | time | summary |"
  say "|---|---|---|---|"
  run info "$bin/flashgpt" info --preset d12
  run test_device "$bin/test_device"
  cuda_tests=(test_cuda_attention test_cuda_ops test_cuda_latent_decode)
  for t in "${cuda_tests[@]}"; do run "$t" "$bin/$t"; done
  run test_attention_cpu "$bin/test_attention"
  if command -v compute-sanitizer > /dev/null; then
    for t in "${cuda_tests[@]}"; do
      run "memcheck_$t" compute-sanitizer --tool memcheck --error-exitcode 3 "$bin/$t"
      run "racecheck_$t" compute-sanitizer --tool racecheck --error-exitcode 3 "$bin/$t"
    done
  else
    say "| sanitizer | not installed | | |"
  fi
fi

# --- peers ----------------------------------------------------------------------------------
say ""
say "## Peer: PyTorch scaled_dot_product_attention (bf16)"
say ""
if python3 -c "import torch; assert torch.cuda.is_available()" 2> /dev/null; then
  timeout 900 python3 bench/peers/sdpa_attention.py --repeats 20 --jsonl "$out/gpu-check-$stamp-peers.jsonl" \
    > "$logs/peers.md" 2> "$logs/peers.err" || say "(the peer run failed: $(tail -1 "$logs/peers.err"))"
  cat "$logs/peers.md" >> "$report"
else
  say "PyTorch with CUDA is not available here."
fi

say ""
say "Logs: $logs"
echo
echo "report: $report"
exit $status
