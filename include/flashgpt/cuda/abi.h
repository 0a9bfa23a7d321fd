// The CUDA backend's entry points live in flashgpt::cuda, inside an inline namespace that names
// the build: on_gpu for the real backend (or its stubs in a CPU-only build), on_simt for the same
// kernels compiled for the CPU emulator (src/cuda/simt). The emulated test binaries can then link
// the main library, which has its own flashgpt::cuda, without a clash.
#pragma once

#if defined(FLASHGPT_SIMT)
#define FLASHGPT_CUDA_ABI on_simt
#else
#define FLASHGPT_CUDA_ABI on_gpu
#endif
