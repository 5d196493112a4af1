"""Training-step time of a model under MAC-emulating recipes, as a ratio to its fp32 step.

For issue 17's second speed criterion (the sequential ``block=1`` form usable on small
models): one SGD step (forward, backward, ``opt.step()``) of a fresh model on random input,
each recipe and the unprepared fp32 model stepped round-robin in the same process after
``--warmup`` untimed steps (compilation); prints the median wall and process-CPU times and
their ratios to fp32. Recipes are preset names or TOML paths (e.g.
``benchmarks/fp16_acc_b32.toml``: ``fp16_acc`` with blocks of 32).

    python benchmarks/mac_step.py [--model small_cnn] [--input 1,8,8] [--batch 64]
        [--recipes fp16_acc,benchmarks/fp16_acc_b32.toml] [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import lowprec as lp
from lowprec.study.models import build_model


def stepper(model_name: str, shape: tuple[int, ...], batch: int,
            recipe: str | None) -> Callable[[], None]:
    """One SGD step of a fresh ``model_name`` (prepared with ``recipe`` unless None)."""
    torch.manual_seed(0)
    model = build_model(model_name, in_channels=shape[0], num_classes=10)
    if recipe is not None:
        lp.prepare(model, recipe)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if recipe is not None:
        lp.wrap_optimizer(opt, recipe)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *shape, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--input", default="1,8,8", help="C,H,W of one input")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--recipes", default="fp16_acc,benchmarks/fp16_acc_b32.toml")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.input.split(","))
    names = ["fp32", *args.recipes.split(",")]
    steps = {n: stepper(args.model, shape, args.batch, None if n == "fp32" else n)
             for n in names}
    load0 = os.getloadavg()[0]
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for n, step in steps.items():
            t, c = time.perf_counter(), time.process_time()
            step()
            wall[n].append(time.perf_counter() - t)
            cpu[n].append(time.process_time() - c)
    print(f"{args.model}, input {shape}, batch {args.batch}, threads {args.threads}, "
          f"{args.rounds} rounds (load average {load0:.1f} -> {os.getloadavg()[0]:.1f})")
    print(f"{'recipe':36s} {'median ms':>10s} {'x fp32':>7s} {'CPU ms':>8s} {'x fp32 (CPU)':>12s}")
    w0, c0 = statistics.median(wall["fp32"]), statistics.median(cpu["fp32"])
    for n in names:
        w, c = statistics.median(wall[n]), statistics.median(cpu[n])
        print(f"{n:36s} {w * 1e3:10.1f} {w / w0:7.2f} {c * 1e3:8.1f} {c / c0:12.2f}")


if __name__ == "__main__":
    main()
