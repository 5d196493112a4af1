"""A prepared cifar10_quick step, eager and under ``torch.compile``, as a ratio to fp32 eager.

One SGD step (forward, backward, ``opt.step()``) at batch 100 on random CIFAR-shaped input,
as ``benchmarks/train_step.py`` does, for each recipe twice: the prepared model called
eagerly and ``torch.compile(model)`` of it (the optimizer and its rounding hooks stay
eager), stepped round-robin with an unprepared fp32 model in one process. Printed: the
compile time (first steps), the frames dynamo compiled (1: one graph, no recompiles),
whether the compiled steps gave the eager ones' bits (the warm-up losses and the final
parameters, from the same start), and the ratios of median step times to fp32 eager. The
warm-up compiles the eager variants' rounding kernels too (as ``benchmarks/steady.py``), so
both sides run as they do in a long training run.
Telemetry is off (``telemetry_every=0``: it is not recorded under compile).

    python benchmarks/compile_step.py [--recipes fp12_sr,fxp12_sr_ls] [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from unittest import mock

import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend

import lowprec as lp
from lowprec.numerics import backend
from lowprec.study.models import build_model, default_solver


def stepper(recipe: str | None, batch: int, compiled: bool,
            counter: CompileCounterWithBackend | None,
            ) -> tuple[Callable[[], float], torch.nn.Module]:
    """One training step of a fresh cifar10_quick (prepared unless None), returning the loss."""
    torch.manual_seed(0)
    model = build_model("cifar10_quick")
    if recipe is not None:
        lp.prepare(model, recipe, telemetry_every=0)
    opt = default_solver("cifar10_quick").make_optimizer(model)
    if recipe is not None:
        lp.wrap_optimizer(opt, recipe)
    run = torch.compile(model, backend=counter) if compiled else model
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 32, 32, generator=g) * 60  # Caffe-scale inputs
    y = torch.randint(0, 10, (batch,), generator=g)

    def step() -> float:
        opt.zero_grad()
        loss = F.cross_entropy(run(x), y)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step, model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--recipes", default="fp12_sr,fxp12_sr_ls")
    ap.add_argument("--rounds", type=int, default=20, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation)")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    names = ["fp32 eager", "fp32 compiled"]
    for r in args.recipes.split(","):
        names += [f"{r} eager", f"{r} compiled"]
    steps, models, counters, warm, losses = {}, {}, {}, {}, {}
    load0 = os.getloadavg()[0]
    # the eager variants' rounding kernels compiled from their second call, as a long run
    # has them (benchmarks/steady.py); the same bits as their eager path
    with mock.patch.object(backend, "EAGER_SECONDS", 0.0):
        for n in names:
            recipe, mode = n.split(" ")
            counter = CompileCounterWithBackend("inductor") if mode == "compiled" else None
            steps[n], models[n] = stepper(None if recipe == "fp32" else recipe, args.batch,
                                          mode == "compiled", counter)
            counters[n] = counter
            t = time.perf_counter()
            losses[n] = [steps[n]() for _ in range(args.warmup)]
            warm[n] = time.perf_counter() - t
        backend.wait_all()
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for n in names:
            t = time.perf_counter()
            steps[n]()
            times[n].append(time.perf_counter() - t)
    base = statistics.median(times[names[0]])
    print(f"cifar10_quick, batch {args.batch}, threads {args.threads}, {args.rounds} rounds, "
          f"telemetry off (load average {load0:.1f} -> {os.getloadavg()[0]:.1f})")
    print(f"{'variant':24s} {'warm-up s':>9s} {'frames':>6s} {'eager bits':>10s} "
          f"{'median ms':>10s} {'x fp32 eager':>12s}")
    for n in names:
        c = counters[n]
        same = ""
        if c is not None:  # both took the same steps from the same start
            eager = n.replace("compiled", "eager")
            same = str(losses[n] == losses[eager] and all(
                torch.equal(a, b) for a, b in zip(models[n].state_dict().values(),
                                                  models[eager].state_dict().values(),
                                                  strict=True)))
        med = statistics.median(times[n])
        print(f"{n:24s} {warm[n]:9.1f} {c.frame_count if c else '':>6} {same:>10s} "
              f"{med * 1e3:10.1f} {med / base:12.2f}")


if __name__ == "__main__":
    main()
