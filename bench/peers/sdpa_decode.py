#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention at decoding shapes, the peer of `flashgpt bench
flash-decode`: one new query (or a few) per sequence over a cache of `context` keys and values, bf16,
through each SDPA backend that takes the case (flash, cuDNN, memory-efficient), GQA through
enable_gqa. Timed as flashgpt times its kernels: CUDA events around back-to-back calls, each call
reading its own copy of the cache out of at least 256 MiB so that L2 never holds it, the median of
--repeats; the bytes a call must move (keys, values, queries, outputs) over that time give its GB/s.

  python3 bench/peers/sdpa_decode.py [--batch 1,16,64] [--heads 12] [--kv-heads 0] [--head-dim 64]
                                     [--new-tokens 1] [--contexts 1024,4096,16384] [--repeats 9]
                                     [--json] [--jsonl FILE]
"""
import argparse
import math
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from peer_common import emit, time_ms

BACKENDS = {"torch_flash": SDPBackend.FLASH_ATTENTION, "torch_cudnn": SDPBackend.CUDNN_ATTENTION,
            "torch_efficient": SDPBackend.EFFICIENT_ATTENTION}


def run_case(backend, b, hq, hkv, tq, d, context, repeats):
    cache_bytes = 2 * b * hkv * context * d * 2
    copies = max(1, min(64, math.ceil(2**28 / cache_bytes)))
    q = torch.randn(b, hq, tq, d, device="cuda", dtype=torch.bfloat16)
    ks = torch.randn(copies, b, hkv, context, d, device="cuda", dtype=torch.bfloat16)
    vs = torch.randn(copies, b, hkv, context, d, device="cuda", dtype=torch.bfloat16)
    # The new queries are the cache's last tq positions: query i sees keys 0 … context − tq + i.
    mask = None
    if tq > 1:
        rows = torch.arange(tq, device="cuda").unsqueeze(1) + (context - tq)
        mask = torch.arange(context, device="cuda").unsqueeze(0) <= rows
    turn = [0]

    def call():
        i = turn[0]
        turn[0] = (i + 1) % copies
        return F.scaled_dot_product_attention(q, ks[i], vs[i], attn_mask=mask, enable_gqa=hq != hkv)

    with sdpa_kernel(backend):
        call()  # raises where the backend does not take the case
        ms = time_ms(call, repeats, inner=20)
    moved = cache_bytes + 2 * q.numel() * 2  # keys and values, queries and outputs
    return ms, moved


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", default="1,16,64")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--kv-heads", type=int, default=0, help="0: as many as --heads")
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=1)
    ap.add_argument("--contexts", default="1024,4096,16384")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--json", action="store_true", help="print JSON lines instead of the table")
    ap.add_argument("--jsonl", help="also write every case as a JSON line to this file")
    a = ap.parse_args()
    hkv = a.kv_heads or a.heads
    if a.heads % hkv:
        print(f"--kv-heads: {hkv} must divide --heads {a.heads}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("no GPU visible to PyTorch", file=sys.stderr)
        return 1
    props = torch.cuda.get_device_properties(0)
    print(f"# {props.name}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}", flush=True,
          file=sys.stderr if a.json else sys.stdout)
    rows = []
    for b in map(int, a.batch.split(",")):
        for context in map(int, a.contexts.split(",")):
            for name, backend in BACKENDS.items():
                try:
                    ms, moved = run_case(backend, b, a.heads, hkv, a.new_tokens, a.head_dim, context, a.repeats)
                except RuntimeError as e:  # a backend that does not take this case
                    print(f"# {name} B{b} context {context}: {e}".splitlines()[0], file=sys.stderr)
                    continue
                row = {"peer": name, "batch": b, "heads": a.heads, "kv_heads": hkv, "head_dim": a.head_dim,
                       "new_tokens": a.new_tokens, "context": context, "ms": ms, "gbps": moved / ms / 1e6}
                rows.append(row)
                emit(row, a.json, a.jsonl)
    if not a.json:
        print("| peer | B | heads | D | context | ms | GB/s |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['peer']} | {r['batch']} | {r['heads']}/{r['kv_heads']} | {r['head_dim']} | {r['context']} | "
                  f"{r['ms']:.4f} | {r['gbps']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
