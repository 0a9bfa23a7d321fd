#!/usr/bin/env python3
"""The PyTorch peer of `flashgpt bench train --device cuda`: the same GPT trained the same way on
the same GPU, so the two tokens/s figures of one run can be set side by side.

The model is flashgpt's GPT-2 architecture (learned positions, pre-norm LayerNorm with biases,
tanh-GELU MLP of 4·C, tied embeddings, the vocabulary padded to a multiple of 128, init std 0.02
with the residual projections scaled by 1/sqrt(2L)); attention through
F.scaled_dot_product_attention (its flash backend) and, with --latent-dim, DeepSeek-V2's latent
attention (keys and values up-projected from a normed latent, no decoupled RoPE: the d12_flash_mla
shape with learned positions). bf16 autocast over fp32 master weights, torch.compile, fused AdamW
(β 0.9/0.95, weight decay 0.1 on matrices), global-norm clipping at 1.0: flashgpt's step.

Timing: CUDA events around whole steps (zero_grad, forward, backward, clip, AdamW) on random
tokens, the median of --steps after --warmup; the bf16 GEMM rate is measured in the same run
(8192³ torch.matmul, median) and MFU uses flashgpt's count, 6·N + 3·L·T·H·(Dqk + Dv) per token.

  python3 bench/peers/gpt_train.py [--batch 16] [--seq 1024] [--layers 12] [--heads 12] [--embd 768]
                                   [--latent-dim 0] [--steps 20] [--warmup 5] [--no-compile] [--jsonl FILE]
"""
import argparse
import json
import math
import statistics
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, c, h, latent, n_layer):
        super().__init__()
        self.h, self.d, self.latent = h, c // h, latent
        if latent:
            self.q = nn.Linear(c, c)
            self.kv_down = nn.Linear(c, latent)
            self.kv_norm = nn.RMSNorm(latent, eps=1e-5)
            self.k_up = nn.Linear(latent, c, bias=False)
            self.v_up = nn.Linear(latent, c, bias=False)
        else:
            self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)

    def forward(self, x):
        b, t, c = x.shape
        if self.latent:
            q = self.q(x)
            ckv = self.kv_norm(self.kv_down(x))
            k, v = self.k_up(ckv), self.v_up(ckv)
        else:
            q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.h, self.d).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(b, t, c))


class Block(nn.Module):
    def __init__(self, c, h, latent, n_layer):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.attn = Attention(c, h, latent, n_layer)
        self.fc, self.mlp_proj = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab, block, n_layer, h, c, latent):
        super().__init__()
        self.vp = (vocab + 127) // 128 * 128
        self.wte, self.wpe = nn.Embedding(self.vp, c), nn.Embedding(block, c)
        self.blocks = nn.ModuleList(Block(c, h, latent, n_layer) for _ in range(n_layer))
        self.lnf = nn.LayerNorm(c)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for blk in self.blocks:  # the residual projections
            for w in (blk.attn.proj.weight, blk.mlp_proj.weight):
                nn.init.normal_(w, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        logits = F.linear(self.lnf(x), self.wte.weight)  # tied head over the padded vocabulary
        return F.cross_entropy(logits.float().view(-1, self.vp), targets.view(-1))


def gemm_rate(n=8192, repeats=7):
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(10):
            a @ b
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 10 / 1e3)
    return 2.0 * n**3 / statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--embd", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--latent-dim", type=int, default=0, help="latent attention with this n_latent (0: multi-head)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--jsonl", help="append the result as one JSON line")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpt_train.py: PyTorch sees no CUDA GPU")
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    model = GPT(a.vocab, a.seq, a.layers, a.heads, a.embd, a.latent_dim).cuda()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    step_model = model if a.no_compile else torch.compile(model)
    x = torch.randint(0, a.vocab, (a.batch, a.seq), device="cuda")
    y = torch.randint(0, a.vocab, (a.batch, a.seq), device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    gemm_before = gemm_rate()
    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    times, loss = [], None
    for _ in range(a.steps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        loss = step()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    gemm = max(gemm_before, gemm_rate())
    step_s = statistics.median(times)
    tok_s = a.batch * a.seq / step_s
    d = a.embd // a.heads
    flops_per_token = 6.0 * n_params + 3.0 * a.layers * a.seq * a.heads * (d + d)
    result = {
        "bench": "train", "peer": "pytorch", "torch": torch.__version__, "gpu": torch.cuda.get_device_name(),
        "compile": not a.no_compile, "attention": "mla" if a.latent_dim else "flash", "params": n_params,
        "batch": a.batch, "seq": a.seq, "steps": a.steps, "step_s_median": step_s, "step_s_min": min(times),
        "step_s_max": max(times), "tokens_per_s": tok_s, "model_tflops": flops_per_token * tok_s / 1e12,
        "gemm_tflops": gemm / 1e12, "mfu": flops_per_token * tok_s / gemm, "loss": float(loss),
        "peak_memory_bytes": torch.cuda.max_memory_allocated(),
    }
    if a.jsonl:
        with open(a.jsonl, "a") as f:
            f.write(json.dumps(result) + "\n")
    print(f"| PyTorch {torch.__version__} ({'compiled' if not a.no_compile else 'eager'}, {result['attention']}) | "
          f"{a.batch}×{a.seq} | {n_params / 1e6:.1f}M | {step_s * 1e3:.1f} ms | {tok_s:,.0f} | "
          f"{result['model_tflops']:.1f} | {gemm / 1e12:.1f} | {100 * result['mfu']:.1f}% |")


if __name__ == "__main__":
    main()
