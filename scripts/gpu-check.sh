#!/usr/bin/env bash
# On a GPU machine: the CUDA tests against the CPU reference, compute-sanitizer's memcheck and
# racecheck over them, and PyTorch's attention as the peer, all written to one report with the
# GPU, driver, commit and date. Fits well within 25 minutes.
#   scripts/gpu-check.sh                  report in bench/results/ (or in $OUT when set)
#   GPU_CHECK_USE_BUNDLE=1 scripts/gpu-check.sh   skip building here, use gpu-bundle/ (or gpu-bundle.tar.xz)
#   GPU_CHECK_ONLY="tests flash-decode" scripts/gpu-check.sh   only these parts, of: tests sanitizer
#       attention tiles standard latent-decode flash-decode decode ops train profile kernels peers grid
#       multi-gpu (default: all; multi-gpu needs two or more GPUs, OpenMPI and programs built here)
#   GPU_CHECK_TIMEOUT=300                 seconds each sanitizer run of a test program may take (default 600)
#   GPU_CHECK_TEST_TIMEOUT=120            seconds each test program may take on its own (default 180: the
#                                         whole tests part takes well under a minute, so a kernel that
#                                         hangs costs three minutes, not ten)
#   GPU_CHECK_BENCH_TIMEOUT=300           seconds each benchmark command may take (default 600)
#   Parts' times on an H100 (2026-11-23): tests 35 s; train with its peer ≈ 2 min; peers ≈ 1 min;
#   decode ≈ 2.5 min; attention + standard + latent-decode + flash-decode ≈ 8 min (latent-decode's
#   batches of different lengths, added since, not yet timed: expected ≈ 1.5 min); sanitizer with
#   the default filters not yet timed (memcheck of the six programs ≈ 35 s without the two slow
#   tensor-core attention accuracy tests); ops not yet timed (expected under a minute; ≈ 6 GB of
#   GPU memory); tiles (tall forward, short backward, the wgmma kernels with cp.async loads, TMA
#   loads and warp-specialized, and cuDNN's attention beside the automatic tiles, 176 cases, and
#   flash_mla's 96/64 with wgmma and wgmma-ws against auto, 24 more, split
#   out of attention) and kernels (fourteen ncu runs) not yet timed: expected ≈ 7 and ≈ 3 min; train
#   now also runs d12 with the TMA and the warp-specialized forwards, with cuDNN's attention and
#   with GELU unfused, and prints each run's per-kernel breakdown (≈ 4 min).
#   GPU_CHECK_SANITIZE_FILTER='*Decode*'  gtest filter for the sanitizer's runs (default: every test for
#                                         memcheck; racecheck: see GPU_CHECK_RACECHECK_FILTER)
#   GPU_CHECK_RACECHECK_FILTER='*Graph*'  gtest filter for racecheck (default: small-shape tests for the
#                                         attention and model programs, every test for the others)
#
# Programs: built here when this machine has flashgpt's build dependencies; otherwise those of
# gpu-bundle/, which scripts/gpu-bundle.sh makes on a machine that has them (carry it along).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

out="${OUT:-bench/results}"
mkdir -p "$out"
stamp="$(date -u +%Y-%m-%dT%H%MZ)"
report="$out/gpu-check-$stamp.md"
logs="$out/gpu-check-$stamp-logs"
mkdir -p "$logs"
say() { echo "$@" | tee -a "$report"; }
status=0
only=" ${GPU_CHECK_ONLY:-tests sanitizer attention tiles standard latent-decode flash-decode decode ops train profile kernels peers grid multi-gpu} "
want() { [[ "$only" == *" $1 "* ]]; }
limit="${GPU_CHECK_TIMEOUT:-600}"
test_limit="${GPU_CHECK_TEST_TIMEOUT:-180}"
bench_limit="${GPU_CHECK_BENCH_TIMEOUT:-600}"

if [ ! -d gpu-bundle/bin ] && [ -f gpu-bundle.tar.xz ]; then tar -xJf gpu-bundle.tar.xz; fi
# The programs' commit: the bundle's when it is used (the checkout here may be another).
if [ -n "${GPU_CHECK_USE_BUNDLE:-}" ] && [ -f gpu-bundle/COMMIT ]; then
  commit="$(cat gpu-bundle/COMMIT) (gpu-bundle)"
else
  commit="${FLASHGPT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || cat gpu-bundle/COMMIT 2>/dev/null || echo unknown)}"
fi
say "# flashgpt GPU check, $stamp"
say ""
say "- commit: $commit"
say "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | head -1)"
say "- CUDA compiler here: $(nvcc --version 2>/dev/null | tail -1 || echo none)"
say "- host: $(uname -srm), $(nproc) cores"

# --- programs -------------------------------------------------------------------------------
bin=""
# The GPU's own architecture; Hopper's wgmma exists only in the architecture-specific sm_90a.
gpu_arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')
[ "$gpu_arch" = 90 ] && gpu_arch=90a
test_programs=(test_cuda_attention test_cuda_ops test_cuda_latent_decode test_cuda_flash_decode test_cuda_matmul
               test_cuda_gpt test_train_cuda test_cuda_warpgroup test_cuda_attention_cudnn test_device test_attention)
# Several GPUs and OpenMPI here: build with MPI for the multi-gpu part (data parallelism over them).
gpu_count=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
mpi=OFF
[ "$gpu_count" -ge 2 ] && command -v mpirun > /dev/null && mpi=ON
if [ -z "${GPU_CHECK_USE_BUNDLE:-}" ] && [ -n "$gpu_arch" ] &&
   cmake -S . -B build-gpu-here -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHGPT_MPI=$mpi -DFLASHGPT_NATIVE=OFF \
     -DCMAKE_CUDA_ARCHITECTURES="$gpu_arch" -DFLASHGPT_BUILD_BENCH=OFF > "$logs/configure.log" 2>&1 &&
   cmake --build build-gpu-here --parallel --target flashgpt_cli "${test_programs[@]}" > "$logs/build.log" 2>&1; then
  mkdir -p build-gpu-here/bin
  cp build-gpu-here/flashgpt build-gpu-here/bin/
  for p in "${test_programs[@]}"; do cp "build-gpu-here/tests/$p" build-gpu-here/bin/; done
  # Only where CMake found MPI (a failure here leaves the multi-gpu part to say it is skipped).
  if [ "$mpi" = ON ] && cmake --build build-gpu-here --target test_distributed_cuda >> "$logs/build.log" 2>&1; then
    cp build-gpu-here/tests/test_distributed_cuda build-gpu-here/bin/
  fi
  bin=build-gpu-here/bin
  say "- programs: built here (native architecture)"
elif [ -d gpu-bundle/bin ]; then
  bin=gpu-bundle/bin
  # The bundle leaves out the CUDA toolkit's libraries (cuBLASLt alone is larger than a bundle may
  # be): this machine's toolkit, or the ones PyTorch's wheels carry, provide them.
  cuda_libs=""
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
           $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, s) for p in nvidia.__path__ for s in os.listdir(p)))' 2>/dev/null); do
    for sub in "$d" "$d/lib"; do
      if ls "$sub"/libcublasLt.so.* > /dev/null 2>&1; then cuda_libs="${cuda_libs:+$cuda_libs:}$sub"; fi
    done
  done
  export LD_LIBRARY_PATH="$PWD/gpu-bundle/lib${cuda_libs:+:$cuda_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  why="${GPU_CHECK_USE_BUNDLE:+as asked}"
  why="${why:-building here failed: $(grep -m1 -iE 'error|could not' "$logs/configure.log" "$logs/build.log" 2>/dev/null | cut -c1-160)}"
  say "- programs: gpu-bundle, commit $(cat gpu-bundle/COMMIT 2>/dev/null) ($(tr '\n' ' ' < gpu-bundle/ENV)); $why"
else
  say "- programs: none (no build dependencies here and no gpu-bundle/; run scripts/gpu-bundle.sh elsewhere and carry it)"
  status=1
fi

# Libraries flashgpt loads at run time, where the loader does not already find them: the
# toolkit's copy, else the one PyTorch's wheels carry. cuDNN for the cuDNN attention backend
# (--backend cudnn); NCCL for data parallelism over GPUs (test_cuda_gpt's one-rank NCCL test).
add_runtime_library() {  # add_runtime_library libcudnn.so.9 nvidia.cudnn
  local lib="$1" module="$2" d
  ldconfig -p 2>/dev/null | grep -q "$lib" && return 0
  for d in /usr/local/cuda/lib64 $(python3 -c "import $module, os; print(os.path.join(list($module.__path__)[0], 'lib'))" 2>/dev/null); do
    if ls "$d/$lib" > /dev/null 2>&1; then
      export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      return 0
    fi
  done
}
add_runtime_library libcudnn.so.9 nvidia.cudnn
add_runtime_library libnccl.so.2 nvidia.nccl

# jsonl_table FILE "Header=format" …: a markdown table, one row per JSON line of FILE; each format
# is a Python f-string over the line's object r, e.g. "ms={r['ms']:.3f}".
jsonl_table() {
  python3 - "$@" <<'PYEOF'
import json, sys
cols = [c.split("=", 1) for c in sys.argv[2:]]
print("| " + " | ".join(h for h, _ in cols) + " |")
print("|" + "---|" * len(cols))
for line in open(sys.argv[1]):
    if line.strip():
        r = json.loads(line)
        print("| " + " | ".join(eval("f" + repr(f), {"r": r}) for _, f in cols) + " |")
PYEOF
}

run() {  # name, command…: runs it (within RUN_LIMIT seconds, else $limit), keeps its log, records pass/fail and seconds
  local name="$1"; shift
  local t0=$SECONDS lim="${RUN_LIMIT:-$limit}"
  timeout "$lim" "$@" > "$logs/$name.log" 2>&1
  local rc=$?
  [ $rc -eq 124 ] && echo "(stopped after $lim s)" >> "$logs/$name.log"
  say "| $name | $([ $rc -eq 0 ] && echo pass || echo "FAIL ($rc)") | $((SECONDS - t0)) s | $(grep -E 'PASSED|FAILED|SKIPPED|ERROR SUMMARY' "$logs/$name.log" | tail -2 | tr '\n' ' ' | cut -c1-120) |"
  [ $rc -eq 0 ] || status=1
}

if [ -n "$bin" ] && { want tests || want sanitizer; }; then
  say ""
  say "## Tests"
  say ""
  say "| check | result | time | summary |"
  say "|---|---|---|---|"
  # The instruction layer first (it judges our reading of wgmma and TMA before any kernel built on
  # it runs); the attention kernels, the newest of them Hopper's, last.
  cuda_tests=(test_cuda_warpgroup test_cuda_ops test_cuda_latent_decode test_cuda_flash_decode test_cuda_matmul test_cuda_gpt
              test_train_cuda test_cuda_attention)
  if want tests; then
    RUN_LIMIT=$test_limit run info "$bin/flashgpt" info --preset d12
    RUN_LIMIT=$test_limit run test_device "$bin/test_device"
    for t in "${cuda_tests[@]}"; do RUN_LIMIT=$test_limit run "$t" "$bin/$t"; done
    # cuDNN's attention against the same bound (not under the sanitizers: the kernels are cuDNN's).
    RUN_LIMIT=$test_limit run test_cuda_attention_cudnn "$bin/test_cuda_attention_cudnn"
    RUN_LIMIT=$test_limit run test_attention_cpu "$bin/test_attention"
  fi
  filter="${GPU_CHECK_SANITIZE_FILTER:+--gtest_filter=$GPU_CHECK_SANITIZE_FILTER}"
  if ! want sanitizer; then :
  elif command -v compute-sanitizer > /dev/null; then
    for t in "${cuda_tests[@]}"; do
      # API errors are not the sanitizer's to count: the programs check every call's result, and the
      # graph tests make calls a capture refuses on purpose (and expect the refusal).
      # shellcheck disable=SC2086
      run "memcheck_$t" compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 3 "$bin/$t" $filter
      # racecheck runs shared-memory-heavy kernels a hundred times slower or more (the fp32 attention
      # test alone outlasted 170 s on an H100): by default, for these two programs, the tests with
      # small shapes that still reach every kernel (the tensor-core forward and backward, the model's
      # training, decoding and graph steps).
      race="${GPU_CHECK_RACECHECK_FILTER:-}"
      if [ -z "$race" ] && [ -z "$filter" ]; then
        case "$t" in
          test_cuda_attention) race='CudaAttention.DeterministicFlashBackwardRepeatsItsBits:CudaAttention.TensorCoreKernelsRefuse*' ;;
          test_cuda_gpt) race='CudaGpt.Fp32TracksTheCpuModelMlaWithSvdFactors:CudaGpt.DeterministicTrainingRepeatsItsBits:CudaGpt.DecodingWithTheFlashKernels*:CudaGpt.GraphReplayed*' ;;
          test_train_cuda) race='TrainCuda.GradientAccumulationMatchesTheLargerBatch' ;;  # the kernels are test_cuda_gpt's
        esac
      fi
      [ -n "$race" ] && race="--gtest_filter=$race" || race="$filter"
      # shellcheck disable=SC2086
      run "racecheck_$t" compute-sanitizer --tool racecheck --error-exitcode 3 "$bin/$t" $race
    done
  else
    say "| sanitizer | not installed | | |"
  fi
fi

# --- the tensor-core attention kernels, on the peer's shapes ----------------------------------
if want attention; then
say ""
say "## Attention: flashgpt's tensor-core kernels (checked against the fp32 kernel, then timed)"
say ""
if [ -n "$bin" ]; then
  attn_ok=1
  for d in 64 128; do
    for precision in bf16 fp16; do
      timeout "$bench_limit" "$bin/flashgpt" bench attention --device cuda --precision "$precision" --hidden 2048 --head-dim "$d" \
        --tokens 16384 --seq 1024,2048,4096,8192 --causal both --repeats 20 --json \
        >> "$out/gpu-check-$stamp-attention.jsonl" 2>> "$logs/bench_attention.err" || attn_ok=0
    done
  done
  # Latent attention's training shapes (DeepSeek's 192/128, and head 64 + rope 32).
  timeout "$bench_limit" "$bin/flashgpt" bench attention --device cuda --mechanism flash_mla --hidden 2048 --head-dim 128 \
    --rope-dim 64 --tokens 16384 --seq 1024,4096 --causal yes --repeats 20 --json \
    >> "$out/gpu-check-$stamp-attention.jsonl" 2>> "$logs/bench_attention.err" || attn_ok=0
  timeout "$bench_limit" "$bin/flashgpt" bench attention --device cuda --mechanism flash_mla --hidden 768 --head-dim 64 \
    --rope-dim 32 --tokens 16384 --seq 1024 --causal yes --repeats 20 --json \
    >> "$out/gpu-check-$stamp-attention.jsonl" 2>> "$logs/bench_attention.err" || attn_ok=0
  # The deterministic backward (dQ by a second kernel, no atomics): its cost against the rows above.
  for d in 64 128; do
    timeout "$bench_limit" "$bin/flashgpt" bench attention --device cuda --deterministic --hidden 2048 --head-dim "$d" \
      --tokens 16384 --seq 1024,4096 --causal yes --repeats 20 --json \
      >> "$out/gpu-check-$stamp-attention.jsonl" 2>> "$logs/bench_attention.err" || attn_ok=0
  done
  [ $attn_ok = 1 ] || { say "(a case failed: $(tail -1 "$logs/bench_attention.err" | cut -c1-200))"; status=1; }
  jsonl_table "$out/gpu-check-$stamp-attention.jsonl" "mechanism={r['mechanism']}" "precision={r['precision']}" \
    "dQ={'ordered' if r.get('deterministic') else 'atomics'}" "tiles={r.get('tiles', 'auto')}" \
    "B={r['batch']}" "H={r['heads']}" "T={r['seq']}" "Dqk/Dv={r['dqk']}/{r['dv']}" "causal={r['causal']}" \
    "fwd ms={r['fwd_ms']:.3f}" "fwd+bwd ms={r['fwd_bwd_ms']:.3f}" "fwd TFLOP/s={r['fwd_tflops']:.1f}" \
    "fwd+bwd TFLOP/s={r['fwd_bwd_tflops']:.1f}" "extra MiB={r['extra_bytes'] / 2**20:.1f}" \
    "max rel err={r['max_rel_err']:.1e}" >> "$report"
fi
fi

# --- the tile shapes side by side: tall forward, short backward --------------------------------
if want tiles; then
say ""
say "## Attention tile shapes: automatic, tall forward, short backward, Hopper's wgmma forward and backward, and cuDNN's fused attention (each case back to back)"
say ""
if [ -n "$bin" ]; then
  # tall: the forward's 32 query rows a warp (the backward as auto); short: the backward's 32-query
  # tiles, three blocks an SM (the forward as auto); wgmma: both on Hopper's warpgroup MMA
  # (elsewhere auto), also at head dim 128; wgmma-tma: the same with the forward's tiles copied by
  # the TMA; wgmma-ws: that forward warp-specialized (a producer warpgroup, two computing ones in
  # turns) and the backward warp-specialized too, and without the forward's turns (what the
  # ping-pong itself gains; its backward is wgmma-ws's). The evidence for making any
  # of them the default. cudnn:
  # cuDNN's fused attention on the same tensors (where cuDNN loads), the yardstick beyond FA2.
  timeout "$bench_limit" "$bin/flashgpt" bench attention --device cuda --hidden 768,2048 --head-dim 64 \
    --tokens 16384 --seq 1024,2048,4096,8192 --causal both --tiles auto,tall,short,wgmma,wgmma-tma,wgmma-ws,wgmma-ws-no-pingpong --backend ours,cudnn --repeats 10 --json \
    >> "$out/gpu-check-$stamp-tiles.jsonl" 2>> "$logs/bench_tiles.err" \
    || { say "(a case failed: $(tail -1 "$logs/bench_tiles.err" | cut -c1-200))"; status=1; }
  timeout "$bench_limit" "$bin/flashgpt" bench attention --device cuda --hidden 2048 --head-dim 128 \
    --tokens 16384 --seq 1024,2048,4096,8192 --causal both --tiles auto,wgmma,wgmma-tma,wgmma-ws,wgmma-ws-no-pingpong --backend ours,cudnn --repeats 10 --json \
    >> "$out/gpu-check-$stamp-tiles.jsonl" 2>> "$logs/bench_tiles.err" \
    || { say "(a case failed: $(tail -1 "$logs/bench_tiles.err" | cut -c1-200))"; status=1; }
  # flash_mla at 96/64 (head 64 + rope 32): the wgmma forwards and backwards with their
  # 64-byte-swizzled half panel, against auto.
  timeout "$bench_limit" "$bin/flashgpt" bench attention --device cuda --hidden 768 --head-dim 64 --mechanism flash_mla \
    --tokens 16384 --seq 1024,2048,4096,8192 --causal both --tiles auto,wgmma,wgmma-ws --repeats 10 --json \
    >> "$out/gpu-check-$stamp-tiles.jsonl" 2>> "$logs/bench_tiles.err" \
    || { say "(a case failed: $(tail -1 "$logs/bench_tiles.err" | cut -c1-200))"; status=1; }
  jsonl_table "$out/gpu-check-$stamp-tiles.jsonl" "mechanism={r['mechanism']}" "tiles={'cuDNN' if r.get('backend') == 'cudnn' else r['tiles']}" "B={r['batch']}" "H={r['heads']}" \
    "D={r['head_dim']}" "T={r['seq']}" "causal={r['causal']}" "fwd ms={r['fwd_ms']:.3f}" "bwd ms={r['fwd_bwd_ms'] - r['fwd_ms']:.3f}" \
    "fwd+bwd ms={r['fwd_bwd_ms']:.3f}" "fwd TFLOP/s={r['fwd_tflops']:.1f}" "fwd+bwd TFLOP/s={r['fwd_bwd_tflops']:.1f}" \
    "occupancy fwd/bwd (theoretical)={100 * r['fwd_occupancy']:.0f}% / {100 * r['bwd_occupancy']:.0f}%" \
    "achieved fwd/bwd={100 * r.get('fwd_achieved_occupancy', 0):.0f}% / {100 * r.get('bwd_achieved_occupancy', 0):.0f}%" \
    "max rel err={r['max_rel_err']:.1e}" >> "$report"
fi
fi

# --- why the flash kernels run as fast as they do: the profiler's view of one launch each ------
if want kernels; then
say ""
say "## The flash kernels under ncu (bf16, B=4, H=32, T=4096, D=64, not causal; one launch each)"
say ""
if [ -n "$bin" ] && command -v ncu > /dev/null; then
  # Per tile shape, the first tensor-core forward and backward launch: throughput against the
  # card's peaks, achieved occupancy, and why warps stall (the stall reasons per issued
  # instruction), shared-memory bank conflicts and the dQ atomics' traffic. Full pages in the logs.
  stalls=barrier,long_scoreboard,short_scoreboard,mio_throttle,lg_throttle,math_pipe_throttle,wait,not_selected,dispatch_stall,no_instruction,branch_resolving
  metrics=gpu__time_duration.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active
  metrics=$metrics,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active
  metrics=$metrics,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum
  metrics=$metrics,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum,lts__t_sectors_op_red.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed
  for reason in ${stalls//,/ }; do metrics=$metrics,smsp__average_warps_issue_stalled_${reason}_per_issue_active.ratio; done
  run_ncu() {  # run_ncu NAME ncu-arguments…, for $tiles: stdout to logs/NAME, stderr to logs/NAME.err
    local name="$1"; shift
    timeout "$bench_limit" ncu "$@" -k regex:'flash_(forward|backward)_(tc|wgmma|wgmma_tma|wgmma_ws)_kernel' --launch-count 2 \
      "$bin/flashgpt" bench attention --device cuda --batch 4 --seq 4096 --hidden 2048 --head-dim 64 --causal no \
      --tiles "$tiles" --repeats 1 > "$logs/$name" 2> "$logs/$name.err"
  }
  for tiles in auto short tall wgmma wgmma-tma wgmma-ws wgmma-ws-no-pingpong; do
    say "### tiles: $tiles"
    say ""
    if run_ncu "ncu_kernels_$tiles.csv" --csv --metrics "$metrics"; then
      python3 scripts/ncu_metrics_table.py "$logs/ncu_kernels_$tiles.csv" >> "$report" 2>> "$logs/ncu_kernels_$tiles.csv.err" \
        || { say "(could not summarise: $(tail -1 "$logs/ncu_kernels_$tiles.csv.err" | cut -c1-200))"; status=1; }
    else
      say "(ncu failed: $(cat "$logs/ncu_kernels_$tiles.csv" "$logs/ncu_kernels_$tiles.csv.err" | grep -m1 -E 'ERR|rror' | cut -c1-200))"
      status=1
    fi
    # The profiler's own sections and advice, kept in the logs.
    run_ncu "ncu_sections_$tiles.txt" --section SpeedOfLight --section Occupancy --section WarpStateStats \
      --section MemoryWorkloadAnalysis_Tables --section ComputeWorkloadAnalysis || true
    say ""
  done
else
  say "(needs ncu and the programs)"
fi
fi

# --- flash against the standard kernel: memory and time -------------------------------------
if want standard; then
say ""
say "## Attention: flash against the standard kernel (bf16, causal, 16384 tokens, hidden 2048)"
say ""
if [ -n "$bin" ]; then
  std_ok=1
  for d in 64 128; do
    timeout "$bench_limit" "$bin/flashgpt" bench attention --device cuda --mechanism standard,flash --hidden 2048 --head-dim "$d" \
      --tokens 16384 --seq 1024,2048,4096 --causal yes --repeats 10 --json \
      >> "$out/gpu-check-$stamp-standard.jsonl" 2>> "$logs/bench_standard.err" || std_ok=0
  done
  [ $std_ok = 1 ] || { say "(a case failed: $(tail -1 "$logs/bench_standard.err" | cut -c1-200))"; status=1; }
  python3 - "$out/gpu-check-$stamp-standard.jsonl" >> "$report" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {(r["mechanism"], r["batch"], r["seq"], r["head_dim"]): r for r in rows}
# Peak = the tensors both need (q, k, v, o, dO and the three gradients, bf16) + each one's extra.
print("| B | T | D | standard fwd+bwd ms | flash fwd+bwd ms | flash speed-up | standard peak MiB | flash peak MiB | flash peak saved |")
print("|---|---|---|---|---|---|---|---|---|")
for (mech, b, t, d), s in sorted(by.items(), key=lambda kv: (kv[0][3], kv[0][2])):
    f = by.get(("flash", b, t, d))
    if mech != "standard" or not f:
        continue
    tensors = 2 * b * t * s["heads"] * 4 * (s["dqk"] + s["dv"])
    ps, pf = tensors + s["extra_bytes"], tensors + f["extra_bytes"]
    print(f"| {b} | {t} | {d} | {s['fwd_bwd_ms']:.2f} | {f['fwd_bwd_ms']:.2f} | {s['fwd_bwd_ms'] / f['fwd_bwd_ms']:.2f}× | "
          f"{ps / 2**20:.0f} | {pf / 2**20:.0f} | {100 * (1 - pf / ps):.1f}% |")
PYEOF
fi
fi

# --- the latent decode, beside the copy bandwidth ---------------------------------------------
if want latent-decode; then
say ""
say "## MLA latent decode: batch 128, 128 heads, 576/512 rows, pages of 64 (against this GPU's copy rate)"
say ""
if [ -n "$bin" ]; then
  if timeout "$bench_limit" "$bin/flashgpt" bench latent-decode --batch 128 --heads 128 --latent 512 --rope 64 \
       --context 1024,2048,4096,8192,16384,32768 --kernel wgmma,tensor-cores,cuda-cores --repeats 10 --json \
       > "$out/gpu-check-$stamp-latent-decode.jsonl" 2> "$logs/bench_latent_decode.err"; then
    jsonl_table "$out/gpu-check-$stamp-latent-decode.jsonl" "kernel={r['kernel']}" "context={r['context']}" \
      "splits={r['splits']}" "ms={r['ms']:.3f}" "GB/s={r['gbps']:.0f}" "copy GB/s={r['copy_gbps']:.0f}" \
      "of copy={100 * r['of_copy']:.0f}%" "TFLOP/s={r['tflops']:.1f}" "max rel err={r['max_rel_err']:.1e}" >> "$report"
  else
    say "(failed: $(tail -1 "$logs/bench_latent_decode.err" | cut -c1-200))"
    status=1
  fi
  say ""
  say "Batches of different lengths (the longest 32k): the balanced schedule against the uniform one, same kernel"
  say ""
  if timeout "$bench_limit" "$bin/flashgpt" bench latent-decode --batch 128 --heads 128 --latent 512 --rope 64 \
       --context 4096,32768 --lengths same,one-long,random --schedule uniform,balanced --kernel tensor-cores \
       --repeats 10 --json > "$out/gpu-check-$stamp-latent-decode-lengths.jsonl" \
       2> "$logs/bench_latent_decode_lengths.err"; then
    jsonl_table "$out/gpu-check-$stamp-latent-decode-lengths.jsonl" "lengths={r['lengths']}" \
      "context={r['context']}" "schedule={r['schedule']}" "splits={r['splits']}" "chunks={r['chunks']}" \
      "chunk pages={r['chunk_pages']}" "ms={r['ms']:.3f}" "GB/s={r['gbps']:.0f}" "of copy={100 * r['of_copy']:.0f}%" \
      "max rel err={r['max_rel_err']:.1e}" >> "$report"
  else
    say "(failed: $(tail -1 "$logs/bench_latent_decode_lengths.err" | cut -c1-200))"
    status=1
  fi
fi
fi

# --- flash decode (split-KV) against the flash kernel, beside the copy bandwidth ---------------
if want flash-decode; then
say ""
say "## Flash decode: one new token per sequence over a long cache, against the flash kernel on the same case (bf16); the warps kernel beside the tiles kernel"
say ""
if [ -n "$bin" ]; then
  fd_ok=1
  for shape in "--heads 12 --head-dim 64" "--heads 32 --kv-heads 8 --head-dim 128"; do
    # shellcheck disable=SC2086
    timeout "$bench_limit" "$bin/flashgpt" bench flash-decode $shape --batch 1,16,64 --context 1024,4096,16384 \
      --repeats 9 --json >> "$out/gpu-check-$stamp-flash-decode.jsonl" 2>> "$logs/bench_flash_decode.err" || fd_ok=0
  done
  [ $fd_ok = 1 ] || { say "(a case failed: $(tail -1 "$logs/bench_flash_decode.err" | cut -c1-200))"; status=1; }
  if [ -s "$out/gpu-check-$stamp-flash-decode.jsonl" ]; then
    jsonl_table "$out/gpu-check-$stamp-flash-decode.jsonl" "heads={r['heads']}/{r['kv_heads']}" \
      "D={r['head_dim']}" "batch={r['batch']}" "context={r['context']}" "splits={r['splits']}" \
      "ms={r['ms']:.4f}" "flash kernel ms={r['flash_ms']:.4f}" "vs flash kernel={r['speedup_vs_flash']:.2f}×" \
      "GB/s={r['gbps']:.0f}" "of copy={100 * r['of_copy']:.0f}%" "max rel err={r['max_rel_err']:.1e}" \
      "warps kernel ms={format(r['warps_ms'], '.4f') if r.get('warps_ms') else '—'}" \
      "warps vs tiles={format(r['warps_speedup'], '.2f') + '×' if r.get('warps_speedup') else '—'}" \
      "warps of copy={format(100 * r['warps_of_copy'], '.0f') + '%' if r.get('warps_of_copy') else '—'}" >> "$report"
  fi
fi
fi

# --- generation: the whole model's decode step, MHA's cache against the latent cache -----------
if want decode; then
say ""
say "## Decode step of the whole model (GPT-2 124M shapes, bf16, batch 1 and 16): the sampler's path, launched kernel by kernel and replayed as a CUDA graph, multi-head attention by the flash kernels (split-KV off) and by the automatic choice of flash decode where it wins (auto)"
say ""
if [ -n "$bin" ]; then
  # bench decode at batch 1 and 16 into $out/gpu-check-$stamp-NAME.jsonl: NAME, then its flags.
  decode_runs() {
    local name="$1"; shift
    for batch in 1 16; do
      if timeout "$bench_limit" "$bin/flashgpt" bench decode --device cuda --preset d12 --context 1024,4096 \
           --batch "$batch" --repeats 20 --json "$@" \
           >> "$out/gpu-check-$stamp-$name.jsonl" 2> "$logs/bench_${name}_$batch.err"; then :; else
        say "(batch $batch failed: $(tail -1 "$logs/bench_${name}_$batch.err" | cut -c1-200))"
        status=1
      fi
    done
  }
  decode_runs decode --mechanism flash,flash_mla --cuda-graphs off,on --split-kv off,auto
  if [ -s "$out/gpu-check-$stamp-decode.jsonl" ]; then
    jsonl_table "$out/gpu-check-$stamp-decode.jsonl" "mechanism={r['mechanism']}" "batch={r['batch']}" \
      "context={r['context']}" "split-KV={r['split_kv']}" \
      "CUDA graphs={r['cuda_graphs']} ({r['graph_replays']} replayed)" \
      "ms / step={r['ms_per_token']:.3f}" "tokens/s={r['tokens_per_s']:.0f}" \
      "vs launches={r['speedup_vs_launches']:.2f}×" "vs split-KV off={r['speedup_vs_split_kv_off']:.2f}×" \
      "cache MiB={r['cache_bytes'] / 2**20:.1f}" "vs flash={r['speedup_vs_mha']:.2f}×" \
      "max rel err={r['max_rel_err']:.1e}" >> "$report"
  fi
  say ""
  say "Flash decode's two split kernels in the whole step (multi-head, split-KV on, graphs on), side by side:"
  say ""
  decode_runs decode-kernels --mechanism flash --cuda-graphs on --split-kv on --flash-decode-kernel tiles,warps
  if [ -s "$out/gpu-check-$stamp-decode-kernels.jsonl" ]; then
    jsonl_table "$out/gpu-check-$stamp-decode-kernels.jsonl" "batch={r['batch']}" "context={r['context']}" \
      "kernel={r['flash_decode_kernel']}" "ms / step={r['ms_per_token']:.3f}" \
      "tokens/s={r['tokens_per_s']:.0f}" \
      "warps vs tiles={format(r['speedup_vs_tiles'], '.2f') + '×' if r['speedup_vs_tiles'] else '—'}" \
      "max rel err={r['max_rel_err']:.1e}" >> "$report"
  fi
fi
fi

# --- the training step's memory-bound ops, packed and one element at a time -------------------
if want ops; then
say ""
say "## Memory-bound ops at d12's training sizes (16·1024 rows × 768, loss chunks of 4096 rows, bf16), against this GPU's copy rate"
say ""
if [ -n "$bin" ]; then
  if timeout "$bench_limit" "$bin/flashgpt" bench ops --repeats 9 --json > "$out/gpu-check-$stamp-ops.jsonl" \
       2> "$logs/bench_ops.err"; then
    jsonl_table "$out/gpu-check-$stamp-ops.jsonl" "op={r['op']}" "path={r['path']}" "ms={r['ms']:.3f}" \
      "time / first path's={r['time_vs_first']:.2f}" \
      "GB/s={r['gbps']:.0f}" "of copy={100 * r['of_copy']:.0f}%" "max rel diff={r['max_diff']:.1e}" >> "$report"
  else
    say "(failed: $(tail -1 "$logs/bench_ops.err" | cut -c1-200))"
    status=1
  fi
fi
fi

# --- the training step, beside PyTorch's ----------------------------------------------------
if want train; then
say ""
say "## Training step: GPT-2 124M (d12), B=16, T=1024"
say ""
have_torch=0
python3 -c "import torch; assert torch.cuda.is_available()" 2> /dev/null && have_torch=1
say "| program | batch | params | step (median) | tokens/s | model TFLOP/s | GEMM TFLOP/s | MFU |"
say "|---|---|---|---|---|---|---|---|"
if [ -n "$bin" ]; then
  # GPT-2 124M with flash attention (as the peer's SDPA) in bf16 and fp32, and d12_flash_mla (the
  # seed's FlashMLA model) beside it. (d12's own mechanism, standard, would keep every layer's P.)
  # Then d12 with Hopper's wgmma flash kernels (skipped where the GPU or build has none), and d12
  # with cuDNN's fused attention in place of ours: what our attention costs the step; last, d12
  # with GELU in its own kernels rather than in the MLP's GEMM epilogues (the default), and d12
  # with q, k and v projected by three GEMMs rather than one (the default).
  for run in d12:bf16 d12:fp32 d12_flash_mla:bf16 d12:bf16:det d12:bf16::wgmma d12:bf16::wgmma-tma d12:bf16::wgmma-ws d12:bf16:::cudnn \
             d12:bf16::::off d12:bf16:::::off; do
    IFS=: read -r preset precision det tiles backend gelu qkv <<< "$run"
    tag="${run//:/_}"
    flash=""
    [ "$preset" = d12 ] && flash="--attention flash"
    [ -n "$det" ] && flash="$flash --deterministic"
    [ -n "$tiles" ] && flash="$flash --tiles $tiles"
    [ -n "$backend" ] && flash="$flash --attention-backend $backend"
    [ -n "$gelu" ] && flash="$flash --gelu-fusion $gelu"
    [ -n "$qkv" ] && flash="$flash --qkv-fusion $qkv"
    # shellcheck disable=SC2086
    # --breakdown: three more steps with every kernel timed by CUDA events (where the step goes).
    if timeout "$bench_limit" "$bin/flashgpt" bench train --device cuda --precision "$precision" --preset "$preset" $flash -b 16 -t 1024 \
         --steps 10 --warmup 3 --breakdown 3 --json > "$logs/bench_train_$tag.json" 2> "$logs/bench_train_$tag.err"; then
      cat "$logs/bench_train_$tag.json" >> "$out/gpu-check-$stamp-train.jsonl"
      python3 - "$logs/bench_train_$tag.json" "$preset" >> "$report" <<'PYEOF'
import json, sys
j = json.load(open(sys.argv[1]))
det = ", deterministic" if j.get("deterministic") else ""
det += f", {j['tiles']} tiles" if j.get("tiles", "auto") != "auto" else ""
det += ", cuDNN attention" if j.get("attention_backend") == "cudnn" else ""
det += ", GELU unfused" if j.get("gelu_fusion") is False else ""
det += ", q/k/v in three GEMMs" if j.get("qkv_fusion") is False else ""
print(f"| flashgpt {sys.argv[2]} ({j['precision']}, {j['attention']}{det}) | {j['batch']}×{j['seq']} | {j['params'] / 1e6:.1f}M | "
      f"{j['step_s_median'] * 1e3:.1f} ms | {j['tokens_per_s']:,.0f} | {j['model_gflops'] / 1e3:.1f} | "
      f"{j['gemm_gflops'] / 1e3:.1f} | {100 * j['mfu']:.1f}% |")
PYEOF
    elif grep -q "has no wgmma" "$logs/bench_train_$tag.err"; then
      say "| flashgpt $preset ($precision, $tiles tiles) | skipped: this GPU or build has no wgmma | | | | | | |"
    elif [ -n "$backend" ] && grep -q "attention backend cudnn" "$logs/bench_train_$tag.err"; then
      say "| flashgpt $preset ($precision, cuDNN attention) | skipped: $(tail -1 "$logs/bench_train_$tag.err" | cut -c1-150) | | | | | | |"
    else
      say "| flashgpt $preset ($precision) | FAILED: $(tail -1 "$logs/bench_train_$tag.err" | cut -c1-150) | | | | | | |"
      status=1
    fi
  done
fi
if [ $have_torch = 1 ]; then
  timeout "$bench_limit" python3 bench/peers/gpt_train.py --batch 16 --seq 1024 --jsonl "$out/gpu-check-$stamp-train.jsonl" \
    >> "$report" 2> "$logs/peer_gpt.err" || say "| PyTorch peer | FAILED: $(tail -1 "$logs/peer_gpt.err" | cut -c1-150) | | | | | | |"
fi
# Where the step goes, kernel by kernel (CUDA events, no profiler), for d12 with our attention,
# with cuDNN's, with GELU unfused and with q/k/v in three GEMMs: the kernels' shares and the GPU's
# idle remainder.
for tag in d12_bf16 d12_bf16___cudnn d12_bf16____off d12_bf16_____off d12_flash_mla_bf16; do
  [ -s "$logs/bench_train_$tag.json" ] || continue
  python3 - "$logs/bench_train_$tag.json" >> "$report" <<'PYEOF'
import json, sys
j = json.load(open(sys.argv[1]))
b = j.get("breakdown")
if b:
    step = b["step_s_median"] * 1e3
    what = j["attention"] + (", cuDNN attention" if j.get("attention_backend") == "cudnn" else "")
    what += ", GELU unfused" if j.get("gelu_fusion") is False else ""
    what += ", q/k/v in three GEMMs" if j.get("qkv_fusion") is False else ""
    print(f"\n### Where a {j['params'] / 1e6:.0f}M ({what}) step goes: {b['steps']} steps, each kernel timed by CUDA events (step {step:.1f} ms there)\n")
    print("| group | ms/step | share |\n|---|---|---|")
    for g, ms in sorted(b.get("groups_ms_per_step", {}).items(), key=lambda x: -x[1]):
        print(f"| {g} | {ms:.3f} | {100 * ms / step:.1f}% |")
    print("\n| kernel | launches/step | ms/step | share |\n|---|---|---|---|")
    rows = b["kernels"]
    for k in rows[:20]:
        print(f"| {k['name']} | {k['launches_per_step']:.0f} | {k['ms_per_step']:.3f} | {100 * k['ms_per_step'] / step:.1f}% |")
    rest = rows[20:]
    if rest:
        ms = sum(k["ms_per_step"] for k in rest)
        print(f"| {len(rest)} others | {sum(k['launches_per_step'] for k in rest):.0f} | {ms:.3f} | {100 * ms / step:.1f}% |")
    idle = step - b["kernel_ms_per_step"]
    print(f"| the GPU idle (waiting for the host, or between kernels) | | {idle:.3f} | {100 * idle / step:.1f}% |")
PYEOF
done
fi

# --- where the training step's time goes --------------------------------------------------------
if want profile; then
say ""
say "## Where a d12 training step's GPU time goes (bf16, flash, B=16, T=1024): one step's kernels, each timed by ncu"
say ""
if [ -n "$bin" ] && command -v ncu > /dev/null; then
  # profile NAME ROWS flashgpt-arguments…: the kernels of the step the program marks with
  # --profile-step, each timed by ncu alone (no overlap) at the card's own clocks, as a table of
  # ROWS kernels; their sum against the step's median time is the time the GPU waits for the host.
  profile() {
    local name="$1" rows="$2"; shift 2
    if timeout "$bench_limit" ncu --profile-from-start off --clock-control none --csv --metrics gpu__time_duration.sum \
         "$bin/flashgpt" "$@" --profile-step > "$logs/$name.csv" 2> "$logs/$name.err"; then
      python3 scripts/ncu_breakdown.py "$logs/$name.csv" --top "$rows" >> "$report" 2>> "$logs/$name.err" \
        || { say "(could not summarise: $(tail -1 "$logs/$name.err" | cut -c1-200))"; status=1; }
    else
      say "(failed: $(tail -1 "$logs/$name.err" | cut -c1-200))"
      status=1
    fi
  }
  profile profile_train 30 bench train --device cuda --precision bf16 --preset d12 --attention flash -b 16 -t 1024 \
    --steps 1 --warmup 2
  say ""
  say "One d12 decode step (bf16, flash, split-KV auto, batch 1, context 4096, replayed as a CUDA graph), its kernels timed by ncu:"
  say ""
  profile profile_decode 20 bench decode --device cuda --preset d12 --mechanism flash --context 4096 --batch 1 \
    --cuda-graphs on --split-kv auto --repeats 5
else
  say "(needs ncu and the programs)"
fi
fi

# --- peers ----------------------------------------------------------------------------------
if want peers; then
say ""
say "## Peer: PyTorch scaled_dot_product_attention (bf16)"
say ""
if python3 -c "import torch; assert torch.cuda.is_available()" 2> /dev/null; then
  timeout "$bench_limit" python3 bench/peers/sdpa_attention.py --repeats 20 --jsonl "$out/gpu-check-$stamp-peers.jsonl" \
    > "$logs/peers.md" 2> "$logs/peers.err" || say "(the peer run failed: $(tail -1 "$logs/peers.err"))"
  cat "$logs/peers.md" >> "$report"
  if [ -s "$out/gpu-check-$stamp-attention.jsonl" ]; then
    say ""
    say "### flashgpt against PyTorch, same shapes (bf16; ratio > 1: flashgpt faster)"
    say ""
    python3 - "$out/gpu-check-$stamp-attention.jsonl" "$out/gpu-check-$stamp-peers.jsonl" >> "$report" <<'PYEOF'
import json, sys
ours = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
peers = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
def key(r):
    return (r["batch"], r["heads"], r["seq"], r["head_dim"], bool(r["causal"]))
peer = {(p["peer"],) + key(p): p for p in peers}
print("| B | H | T | D | causal | fwd: ours / torch_flash | fwd+bwd: ours / torch_flash | fwd+bwd: ours / torch_cudnn |")
print("|---|---|---|---|---|---|---|---|")
for r in ours:
    if r["mechanism"] != "flash" or r["precision"] != "bf16":
        continue
    f, c = peer.get(("torch_flash",) + key(r)), peer.get(("torch_cudnn",) + key(r))
    ratio = lambda p, k: f"{r[k] / p[k]:.2f}×" if p else "—"
    print(f"| {r['batch']} | {r['heads']} | {r['seq']} | {r['head_dim']} | {r['causal']} | "
          f"{ratio(f, 'fwd_tflops')} | {ratio(f, 'fwd_bwd_tflops')} | {ratio(c, 'fwd_bwd_tflops')} |")
PYEOF
  fi
  # Decoding: flash decode against SDPA's backends on the shapes bench flash-decode ran.
  say ""
  say "### Decoding: flash decode against PyTorch SDPA, one new token (bf16; ratio > 1: flashgpt faster)"
  say ""
  for shape in "--heads 12 --head-dim 64" "--heads 32 --kv-heads 8 --head-dim 128"; do
    # shellcheck disable=SC2086
    timeout "$bench_limit" python3 bench/peers/sdpa_decode.py $shape --batch 1,16,64 --contexts 1024,4096,16384 --repeats 9 \
      --json >> "$out/gpu-check-$stamp-peers-decode.jsonl" 2>> "$logs/peers_decode.err" \
      || say "(the decode peer failed: $(tail -1 "$logs/peers_decode.err" | cut -c1-200))"
  done
  if [ -s "$out/gpu-check-$stamp-flash-decode.jsonl" ] && [ -s "$out/gpu-check-$stamp-peers-decode.jsonl" ]; then
    python3 - "$out/gpu-check-$stamp-flash-decode.jsonl" "$out/gpu-check-$stamp-peers-decode.jsonl" >> "$report" <<'PYEOF'
import json, sys
ours = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
peers = [json.loads(l) for l in open(sys.argv[2]) if l.strip() and l.startswith("{")]
key = lambda r: (r["batch"], r["heads"], r["kv_heads"], r["head_dim"], r["context"])
peer = {(p["peer"],) + key(p): p for p in peers}
names = ["torch_flash", "torch_cudnn", "torch_efficient"]
print("| B | heads | D | context | ours ms | " + " | ".join(f"vs {n}" for n in names) + " |")
print("|---|---|---|---|---|" + "---|" * len(names))
for r in ours:
    if r["precision"] != "bf16" or r["new_tokens"] != 1:
        continue
    cells = []
    for n in names:
        p = peer.get((n,) + key(r))
        cells.append(f"{p['ms'] / r['ms']:.2f}×" if p else "—")
    print(f"| {r['batch']} | {r['heads']}/{r['kv_heads']} | {r['head_dim']} | {r['context']} | {r['ms']:.4f} | "
          + " | ".join(cells) + " |")
PYEOF
  fi
else
  say "PyTorch with CUDA is not available here."
fi
fi

# --- the seed plan's grid, with occupancy ------------------------------------------------------
if want grid; then
say ""
say "## Attention grid: flash, bf16, causal, head 64 (batch 1/4/8/16 × sequence 512–4096 × hidden 768–4096)"
say ""
if [ -n "$bin" ]; then
  grid_ok=1
  for hidden in 768 2048 4096; do
    timeout "$bench_limit" "$bin/flashgpt" bench attention --device cuda --mechanism flash --batch 1,4,8,16 \
      --seq 512,1024,2048,4096 --hidden "$hidden" --head-dim 64 --causal yes --repeats 5 --json \
      >> "$out/gpu-check-$stamp-grid.jsonl" 2>> "$logs/bench_grid.err" || grid_ok=0
  done
  [ $grid_ok = 1 ] || { say "(a case failed: $(tail -1 "$logs/bench_grid.err" | cut -c1-200))"; status=1; }
  jsonl_table "$out/gpu-check-$stamp-grid.jsonl" "batch={r['batch']}" "seq={r['seq']}" \
    "hidden={r['heads'] * r['head_dim']}" "fwd ms={r['fwd_ms']:.3f}" "fwd+bwd ms={r['fwd_bwd_ms']:.3f}" \
    "fwd TFLOP/s={r['fwd_tflops']:.1f}" "fwd+bwd TFLOP/s={r['fwd_bwd_tflops']:.1f}" \
    "extra MiB={r['extra_bytes'] / 2**20:.1f}" "max rel err={r['max_rel_err']:.1e}" \
    "occupancy fwd/bwd (theoretical)={100 * r['fwd_occupancy']:.0f}% / {100 * r['bwd_occupancy']:.0f}%" \
    "achieved fwd/bwd={100 * r.get('fwd_achieved_occupancy', 0):.0f}% / {100 * r.get('bwd_achieved_occupancy', 0):.0f}%" \
    "blocks/SM achieved fwd/bwd={r.get('fwd_achieved_blocks_per_sm', 0):.2f} / {r.get('bwd_achieved_blocks_per_sm', 0):.2f}" >> "$report"
  # "achieved" is measured by the kernels themselves (each block's span on its SM's clock,
  # flashgpt/cuda/cta_trace.h). Where the profiler's counters are open to this user, its figure
  # for one of the grid's cases, as a cross-check.
  if command -v ncu > /dev/null; then
    say ""
    say "Achieved occupancy by ncu (batch 4, seq 2048, hidden 2048, head 64; the grid's row above for the same case):"
    say ""
    timeout "$bench_limit" ncu --metrics sm__warps_active.avg.pct_of_peak_sustained_active,sm__throughput.avg.pct_of_peak_sustained_elapsed \
      -k regex:flash_.*_tc_kernel --launch-count 4 "$bin/flashgpt" bench attention --device cuda --mechanism flash \
      --batch 4 --seq 2048 --hidden 2048 --head-dim 64 --causal yes --repeats 1 > "$logs/ncu.log" 2>&1
    grep -E "flash_(forward|backward)_tc_kernel|warps_active|sm__throughput|ERR_|permission" "$logs/ncu.log" \
      | sed 's/^ */    /' | head -24 >> "$report" || true
  else
    say "(ncu is not installed: achieved occupancy not measured)"
  fi
fi
fi

if want multi-gpu; then
say ""
say "## Several GPUs: data parallelism, ZeRO-1 and context parallelism"
say ""
if [ "$gpu_count" -lt 2 ]; then
  say "Skipped: this machine has $gpu_count GPU."
elif [ -z "$bin" ] || [ ! -x "$bin/test_distributed_cuda" ]; then
  say "Skipped: no test_distributed_cuda (the gpu-bundle and a build without OpenMPI have no MPI; install openmpi-bin and libopenmpi-dev and build here)."
else
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  say "| check | result | time | summary |"
  say "|---|---|---|---|"
  RUN_LIMIT=$test_limit run test_distributed_cuda_all_gpus mpirun -np "$gpu_count" "$bin/test_distributed_cuda"
  RUN_LIMIT=$test_limit run test_cuda_gpt_gpu_comm "$bin/test_cuda_gpt" --gtest_filter='GpuComm.*'
  # d12 on every GPU: each rank alone first, side by side, then together (bench train's scaling):
  # data parallel, with ZeRO-1, through host memory, with bf16 gradients, then every GPU sharing
  # each sequence.
  for run in nccl:0:1:fp32 nccl:1:1:fp32 host:0:1:fp32 nccl:0:1:bf16 host:0:1:bf16 "nccl:0:$gpu_count:fp32"; do
    IFS=: read -r comm zero cp reduce <<< "$run"
    tag="dp_${comm}_zero${zero}_cp${cp}_$reduce"
    if timeout "$bench_limit" mpirun -np "$gpu_count" "$bin/flashgpt" bench train --device cuda --preset d12 --attention flash \
         -b 16 -t 1024 --steps 10 --warmup 3 --gpu-comm "$comm" --zero "$zero" --context-parallel "$cp" --reduce-dtype "$reduce" --json \
         > "$logs/bench_train_$tag.json" 2> "$logs/bench_train_$tag.err"; then
      grep '^{' "$logs/bench_train_$tag.json" >> "$out/gpu-check-$stamp-multi-gpu.jsonl"
    else
      say "| bench train $tag | FAIL | | $(tail -1 "$logs/bench_train_$tag.err" | cut -c1-120) |"
      status=1
    fi
  done
  if [ -f "$out/gpu-check-$stamp-multi-gpu.jsonl" ]; then
    say ""
    jsonl_table "$out/gpu-check-$stamp-multi-gpu.jsonl" "ranks={r['ranks']}" "sums={r['gpu_comm']}" "ZeRO={r['zero']}" \
      "context-parallel={r['context_parallel']}" "gradients={r['reduce_dtype']}" \
      "one rank ms={1e3 * r['step_s_median']:.1f}" "all ranks ms={1e3 * r['ranks_step_s_median']:.1f}" \
      "tokens/s={r['ranks_tokens_per_s']:.0f}" "scaling={100 * r['scaling_efficiency']:.1f}%" \
      "MB/step sent={r['comm_bytes_per_step'] / 1e6:.1f}" "predicted={r['comm_bytes_per_step_predicted'] / 1e6:.1f}" >> "$report"
  fi
fi
fi

say ""
say "Logs: $logs"
echo
echo "report: $report"
exit $status
