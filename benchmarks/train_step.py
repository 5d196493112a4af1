"""Time per training step of a model (Caffe's cifar10_quick unless ``--model``) under each
recipe, as a ratio to fp32.

One SGD step (forward, backward, ``opt.step()``) at batch 100 on random input of the
model's shape (``--input``; Caffe's 0-255 scale for cifar10_quick), with the model's
reference solver (cifar10_quick: momentum 0.9, weight decay 0.004). Every recipe and an
unprepared fp32 model are stepped round-robin in the same process, so a noisy machine
slows them alike; the figure is the ratio of median step times (and of the minima), with
the quartiles of the per-round ratios as the spread, and the ratio of median CPU times of
the process (``time.process_time``: on a loaded machine steadier than the wall clock,
since time spent waiting for a core is not counted). The
target is 1.25x fp32 for the study's recipes with the library's defaults (QPyTorch's
emulation of a similar network costs 8.7x). ``--telemetry`` picks what each recipe is
run with: ``default`` (``prepare`` without ``telemetry_every``, as the README does),
``off`` (0), a number N (every N-th pass), or several, comma-separated: every recipe is
then stepped once per setting in the same rounds (``fp12_sr@off``, ...).

    python benchmarks/train_step.py [--recipes fxp12_sr,pot7] [--rounds 30] [--threads 1]
                                    [--telemetry default,off]

Recipes are preset names or TOML paths. MAC emulation on a small model (issue 17: the
sequential ``block=1`` form, ``benchmarks/fp16_acc_b32.toml`` is ``fp16_acc`` in blocks of 32):

    python benchmarks/train_step.py --model small_cnn --input 1,8,8 --batch 64 --rounds 5 \
        --recipes fp16_acc,benchmarks/fp16_acc_b32.toml
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

import lowprec as lp
from lowprec.study.models import build_model, default_solver


def stepper(name: str, shape: tuple[int, ...], recipe: str | None, batch: int,
            telemetry: str) -> Callable[[], None]:
    """A closure doing one training step of a fresh model ``name`` on inputs of ``shape``
    (prepared unless ``recipe`` is None) with telemetry ``"default"`` (prepare's), ``"off"``
    or every N-th pass (``"N"``)."""
    torch.manual_seed(0)
    model = build_model(name, in_channels=shape[0], num_classes=10)
    if recipe is not None:
        every = {} if telemetry == "default" else {
            "telemetry_every": 0 if telemetry == "off" else int(telemetry)}
        lp.prepare(model, recipe, **every)
    solver = default_solver(name)
    opt = solver.make_optimizer(model)
    if recipe is not None:
        lp.wrap_optimizer(opt, recipe)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *shape, generator=g) * (60 if solver.normalize == "caffe" else 1)
    y = torch.randint(0, 10, (batch,), generator=g)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="cifar10_quick")
    ap.add_argument("--input", default="3,32,32", help="C,H,W of one input")
    ap.add_argument("--recipes", default=",".join(lp.recipes.STUDY[1:]))
    ap.add_argument("--rounds", type=int, default=30, help="timed steps per recipe")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation)")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: steadiest on a shared machine)")
    ap.add_argument("--telemetry", default="default",
                    help="default | off | N, or several comma-separated (default: default)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    settings = args.telemetry.split(",")
    names = ["fp32 (unprepared)", *(r if len(settings) == 1 else f"{r}@{t}"
                                    for r in args.recipes.split(",") for t in settings)]
    shape = tuple(int(v) for v in args.input.split(","))
    steps = {n: stepper(args.model, shape, None if n.startswith("fp32 (") else n.split("@")[0],
                        args.batch, n.split("@")[1] if "@" in n else settings[0])
             for n in names}
    load0 = os.getloadavg()[0]
    warm_up(steps.values(), args.warmup)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for n, step in steps.items():
            t, c = time.perf_counter(), time.process_time()
            step()
            times[n].append(time.perf_counter() - t)
            cpu[n].append(time.process_time() - c)

    base_med, base_min = statistics.median(times[names[0]]), min(times[names[0]])
    print(f"{args.model}, input {shape}, batch {args.batch}, threads {args.threads}, "
          f"backend {os.environ.get('LOWPREC_BACKEND', 'auto')}, telemetry "
          f"{args.telemetry}, {args.rounds} rounds "
          f"(load average {load0:.1f} -> {os.getloadavg()[0]:.1f})")
    print(f"{'recipe':36s} {'median ms':>10s} {'min ms':>8s} {'x fp32 (median)':>16s} "
          f"{'x fp32 (min)':>13s} {'per-round x fp32 p25-p75':>25s} {'CPU ms':>7s} "
          f"{'x fp32 (CPU)':>12s}")
    for n in names:
        med, lo = statistics.median(times[n]), min(times[n])
        q = statistics.quantiles([a / b for a, b in zip(times[n], times[names[0]],
                                                         strict=True)], n=4)
        print(f"{n:36s} {med * 1e3:10.1f} {lo * 1e3:8.1f} {med / base_med:16.2f} "
              f"{lo / base_min:13.2f} {q[0]:18.2f}-{q[2]:.2f} "
              f"{statistics.median(cpu[n]) * 1e3:7.1f} "
              f"{statistics.median(cpu[n]) / statistics.median(cpu[names[0]]):12.2f}")


if __name__ == "__main__":
    main()
