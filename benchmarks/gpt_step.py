"""Wall time of one GPT training step under op-level recipes, against the fp32 step.

A GPT (d=256, 4 heads, 2 blocks, vocab 256, tied embedding, learned positions, LayerNorm,
GELU MLP, attention by ``F.scaled_dot_product_attention``) trains on 8 x 128 random
tokens with AdamW. For each recipe the model is prepared (``--telemetry``: ``default``,
``prepare``'s; ``off``; ``N``, every N-th pass; several, comma-separated, each run) and
the optimizer wrapped; after warm-up steps (which also compile the rounding kernel under
``LOWPREC_BACKEND=auto``) every model is stepped round-robin, and the median step is
compared with the unprepared fp32 step's, on ``--threads`` CPU threads; also the ratio of
median CPU times of the process (``time.process_time``: steadier on a loaded machine).

    python benchmarks/gpt_step.py [--threads 2] [--steps 5] [--recipes fp8_hybrid,mxfp8]
                                  [--telemetry default,1,off]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from steady import warm_up
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


def stepper(recipe: str | None, telemetry: str) -> Callable[[], None]:
    """A closure doing one training step (forward, backward, AdamW step) of a fresh GPT,
    prepared unless ``recipe`` is None, telemetry ``"default"``, ``"off"`` or ``"N"``."""
    torch.manual_seed(0)
    model = GPT()
    if recipe is not None:
        every = {} if telemetry == "default" else {
            "telemetry_every": 0 if telemetry == "off" else int(telemetry)}
        lp.prepare(model, recipe, **every)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if recipe is not None:
        lp.wrap_optimizer(opt)
    g = torch.Generator().manual_seed(0)

    def step() -> None:
        idx = torch.randint(256, (8, 128), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(idx).flatten(0, 1), idx.roll(-1, 1).flatten()).backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed rounds")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--recipes", default="fp8_hybrid,mxfp8")
    p.add_argument("--telemetry", default="default",
                   help="default | off | N, or several comma-separated (default: default)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    settings = args.telemetry.split(",")
    names = ["fp32 (plain)", *(r if len(settings) == 1 else f"{r}@{t}"
                               for r in args.recipes.split(",") for t in settings)]
    steps = {n: stepper(None if n == names[0] else n.split("@")[0],
                        n.split("@")[1] if "@" in n else settings[0]) for n in names}
    load0 = os.getloadavg()[0]
    warm_up(steps.values(), args.warmup)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.steps):
        for n, step in steps.items():
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            times[n].append(time.perf_counter() - t0)
            cpu[n].append(time.process_time() - c0)
    base = statistics.median(times[names[0]])
    base_cpu = statistics.median(cpu[names[0]])
    print(f"GPT d=256, 2 blocks, 8x128 tokens, AdamW, {args.threads} threads, telemetry "
          f"{args.telemetry}, median of {args.steps} interleaved rounds "
          f"(load average {load0:.1f} -> {os.getloadavg()[0]:.1f})")
    print(f"{'recipe':<22} {'s/step':>8} {'x fp32':>7} {'per-round x fp32 min-max':>25} "
          f"{'CPU x fp32':>11}")
    for n in names:
        r = [a / b for a, b in zip(times[n], times[names[0]], strict=True)]
        print(f"{n:<22} {statistics.median(times[n]):>8.3f} "
              f"{statistics.median(times[n]) / base:>7.2f} {min(r):>18.2f}-{max(r):.2f} "
              f"{statistics.median(cpu[n]) / base_cpu:>11.2f}")


if __name__ == "__main__":
    main()
