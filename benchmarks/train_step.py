"""Time per training step of Caffe's cifar10_quick under each recipe, as a ratio to fp32.

One SGD step (forward, backward, ``opt.step()``) at batch 100 on random CIFAR-shaped
input, with the reference solver (momentum 0.9, weight decay 0.004). Every recipe and an
unprepared fp32 model are stepped round-robin in the same process, so a noisy machine
slows them alike; the figure is the ratio of median step times (and of the minima). The
target is 1.25x fp32 for the study's recipes (QPyTorch's emulation of a similar network
costs 8.7x). Telemetry is off unless ``--telemetry-every`` is given.

    python benchmarks/train_step.py [--recipes fxp12_sr,pot7] [--rounds 30] [--threads 1]
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
from lowprec.study.models import build_model, default_solver


def stepper(recipe: str | None, batch: int, telemetry_every: int) -> Callable[[], None]:
    """A closure doing one training step of a fresh cifar10_quick (prepared unless None)."""
    torch.manual_seed(0)
    model = build_model("cifar10_quick")
    if recipe is not None:
        lp.prepare(model, recipe, telemetry_every=telemetry_every)
    opt = default_solver("cifar10_quick").make_optimizer(model)
    if recipe is not None:
        lp.wrap_optimizer(opt, recipe)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 32, 32, generator=g) * 60  # Caffe-scale inputs
    y = torch.randint(0, 10, (batch,), generator=g)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--recipes", default=",".join(lp.recipes.STUDY[1:]))
    ap.add_argument("--rounds", type=int, default=30, help="timed steps per recipe")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation)")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: steadiest on a shared machine)")
    ap.add_argument("--telemetry-every", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    names = ["fp32 (unprepared)", *args.recipes.split(",")]
    steps = {n: stepper(None if n.startswith("fp32 (") else n, args.batch, args.telemetry_every)
             for n in names}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for n, step in steps.items():
            t = time.perf_counter()
            step()
            times[n].append(time.perf_counter() - t)

    base_med, base_min = statistics.median(times[names[0]]), min(times[names[0]])
    print(f"cifar10_quick, batch {args.batch}, threads {args.threads}, "
          f"backend {os.environ.get('LOWPREC_BACKEND', 'auto')}, telemetry_every "
          f"{args.telemetry_every}, {args.rounds} rounds (load average {os.getloadavg()[0]:.1f})")
    print(f"{'recipe':18s} {'median ms':>10s} {'min ms':>8s} {'x fp32 (median)':>16s} "
          f"{'x fp32 (min)':>13s}")
    for n in names:
        med, lo = statistics.median(times[n]), min(times[n])
        print(f"{n:18s} {med * 1e3:10.1f} {lo * 1e3:8.1f} {med / base_med:16.2f} "
              f"{lo / base_min:13.2f}")


if __name__ == "__main__":
    main()
