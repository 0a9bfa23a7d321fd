#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention on the GPU, the peer flashgpt's attention kernels are
measured against: the flash and cuDNN backends over head dims, lengths and causality, bf16, forward
and forward+backward, timed with CUDA events (median of repeats after warm-up). FLOPs follow
flash-attention's convention: forward 4·B·H·T²·D, halved when causal; backward 2.5× forward.

  python3 bench/peers/sdpa_attention.py [--head-dims 64,128] [--seqs 1024,2048,4096,8192]
                                        [--tokens 16384] [--repeats 20] [--json] [--jsonl FILE]

The batch is tokens / T and the heads 2048 / head dim (flash-attention's benchmark shapes), so
every case does comparable work. It also writes golden values for tests with --golden FILE: one
small case's inputs and outputs in fp32 (safetensors).
"""
import argparse
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from peer_common import emit, time_ms


def flops(b, h, t, d, causal, mode):
    f = 4.0 * b * h * t * t * d / (2 if causal else 1)
    return f if mode == "fwd" else 3.5 * f  # forward + backward (2.5×)


def run_case(backend, b, h, t, d, causal, repeats):
    q, k, v = (torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16)
    with sdpa_kernel(backend):
        fwd = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), repeats)

        def fwd_bwd():
            o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            o.backward(do)

        both = time_ms(fwd_bwd, repeats)
    return fwd, both


def write_golden(path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    b, h, t, d = 2, 4, 77, 64
    q, k, v = (torch.randn(b, h, t, d, device="cuda", dtype=torch.float64) for _ in range(3))
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    save_file({n: x.float().cpu().contiguous() for n, x in {"q": q, "k": k, "v": v, "o": o}.items()}, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--head-dims", default="64,128")
    ap.add_argument("--seqs", default="1024,2048,4096,8192")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", action="store_true", help="print JSON lines instead of the table")
    ap.add_argument("--jsonl", help="also write every case as a JSON line to this file")
    ap.add_argument("--golden")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("no GPU visible to PyTorch", file=sys.stderr)
        return 1
    if a.golden:
        write_golden(a.golden)
    props = torch.cuda.get_device_properties(0)
    print(f"# {props.name}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}", flush=True)
    backends = {"torch_flash": SDPBackend.FLASH_ATTENTION, "torch_cudnn": SDPBackend.CUDNN_ATTENTION}
    rows = []
    for d in map(int, a.head_dims.split(",")):
        for t in map(int, a.seqs.split(",")):
            for causal in (False, True):
                b, h = max(1, a.tokens // t), 2048 // d
                for name, backend in backends.items():
                    try:
                        fwd, both = run_case(backend, b, h, t, d, causal, a.repeats)
                    except RuntimeError as e:  # a backend that does not take this case
                        print(f"# {name} d{d} T{t}: {e}".splitlines()[0], file=sys.stderr)
                        continue
                    row = {"peer": name, "batch": b, "heads": h, "seq": t, "head_dim": d, "causal": causal,
                           "fwd_ms": fwd, "fwd_bwd_ms": both,
                           "fwd_tflops": flops(b, h, t, d, causal, "fwd") / fwd / 1e9,
                           "fwd_bwd_tflops": flops(b, h, t, d, causal, "both") / both / 1e9}
                    rows.append(row)
                    emit(row, a.json, a.jsonl)
    if not a.json:
        print("| peer | B | H | T | D | causal | fwd ms | fwd+bwd ms | fwd TFLOP/s | fwd+bwd TFLOP/s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['peer']} | {r['batch']} | {r['heads']} | {r['seq']} | {r['head_dim']} | {r['causal']} | "
                  f"{r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | {r['fwd_tflops']:.1f} | {r['fwd_bwd_tflops']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
