// The tensor-core flash kernels for query-key head dim 96, value head dim 64 (latent attention with decoupled RoPE), bf16 and fp16.
#include "cuda/attention_flash_tc_launch.h"

FLASHGPT_FLASH_TC_INSTANTIATE(96, 64)
