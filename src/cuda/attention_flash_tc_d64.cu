// The tensor-core flash kernels for head dim 64, bf16 and fp16.
#include "cuda/attention_flash_tc_launch.h"

FLASHGPT_FLASH_TC_INSTANTIATE(64, 64)
