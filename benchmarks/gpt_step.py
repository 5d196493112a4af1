"""Wall time of one GPT training step under op-level recipes, against the fp32 step.

A GPT (d=256, 4 heads, 2 blocks, vocab 256, tied embedding, learned positions, LayerNorm,
GELU MLP, attention by ``F.scaled_dot_product_attention``) trains on 8 x 128 random
tokens with AdamW. For each recipe the model is prepared with ``prepare``'s defaults
(telemetry every step included) and the optimizer wrapped; after warm-up steps (which
also compile the rounding kernel under ``LOWPREC_BACKEND=auto``) the median of the timed
steps is compared with the unprepared fp32 step measured in the same run, on
``--threads`` CPU threads.

    python benchmarks/gpt_step.py [--threads 2] [--steps 5] [--recipes fp8_hybrid,mxfp8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import lowprec as lp


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int = 256, d: int = 256, heads: int = 4, blocks: int = 2,
                 ctx: int = 128) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Parameter(torch.randn(ctx, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(blocks))
        self.ln = nn.LayerNorm(d)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe[: idx.shape[1]]
        for blk in self.blocks:
            x = blk(x)
        return F.linear(self.ln(x), self.wte.weight)


def time_steps(recipe: str | None, steps: int, warmup: int) -> float:
    """Median seconds per step (forward, backward, AdamW step) after ``warmup`` steps."""
    torch.manual_seed(0)
    model = GPT()
    if recipe is not None:
        lp.prepare(model, recipe)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if recipe is not None:
        lp.wrap_optimizer(opt)
    g = torch.Generator().manual_seed(0)
    times = []
    for i in range(warmup + steps):
        idx = torch.randint(256, (8, 128), generator=g)
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = F.cross_entropy(model(idx).flatten(0, 1), idx.roll(-1, 1).flatten())
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--recipes", default="fp8_hybrid,mxfp8")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = time_steps(None, args.steps, args.warmup)
    print(f"GPT d=256, 2 blocks, 8x128 tokens, AdamW, {args.threads} threads, "
          f"median of {args.steps} steps")
    print(f"{'recipe':<14} {'s/step':>8} {'x fp32':>7}")
    print(f"{'fp32 (plain)':<14} {base:>8.3f} {1.0:>7.2f}")
    for name in args.recipes.split(","):
        t = time_steps(name, args.steps, args.warmup)
        print(f"{name:<14} {t:>8.3f} {t / base:>7.2f}")


if __name__ == "__main__":
    main()
