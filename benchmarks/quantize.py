"""Throughput of ``lowprec.quantize`` per preset and rounding mode.

Prints elements/second on a 2**24-element float32 tensor next to ``x.clone()``
and ``x.to(torch.bfloat16).float()`` measured in the same run, as ratios
(higher is better). Every quantize call writes into a preallocated ``out=``
tensor, and the baselines write into preallocated outputs too (``copy_``), so
page faults on fresh allocations do not dominate the figures.

Then scaled quantization of the same data as a ``[2**n / 1024, 1024]`` matrix (per
tensor, per row ``channel axis=0``, blocks of 32 along rows), as time ratios to the
unscaled quantize of the same format and mode (``x unscaled``, higher is better).

Telemetry columns (time ratios to the same quantize without telemetry, lower is better):
``info`` is ``return_info=True`` (measured in the rounding pass, read back once), ``f64 ref``
the float64 reference ``QuantInfo.measure`` run after the rounding (the former path).

    python benchmarks/quantize.py [--n 24] [--presets fp16,pot7] [--repeat 5]
        [--scaled fp8_e4m3,fxp12] [--scaled-modes nearest,stochastic] [--no-info]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
from steady import warm_up

import lowprec as lp
from lowprec.numerics.telemetry import QuantInfo


def best_time(fn: Callable[[], object], repeat: int) -> float:
    warm_up([fn], 1)  # the kernels of a long run: compiled (steady.py)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=24, help="log2 of the element count")
    ap.add_argument("--presets", default=",".join(lp.formats.names()))
    ap.add_argument("--modes", default=",".join(lp.rounding.MODES))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--scaled", default="fp8_e4m3,fxp12", help="formats for scaled cases")
    ap.add_argument("--scaled-modes", default="nearest,stochastic")
    ap.add_argument("--no-info", dest="info", action="store_false",
                    help="skip the telemetry columns")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    x = torch.randn(2**args.n, device=args.device)
    out = torch.empty_like(x)
    bf = torch.empty_like(x, dtype=torch.bfloat16)
    g = torch.Generator(device=args.device).manual_seed(0)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)

    def timed(fn: Callable[[], object]) -> float:
        return best_time(lambda: (fn(), sync()), args.repeat)

    t_clone = timed(lambda: out.copy_(x))
    t_bf16 = timed(lambda: out.copy_(bf.copy_(x)))
    n = x.numel()
    print(
        f"device={args.device} n=2**{args.n} threads={torch.get_num_threads()} "
        f"backend={os.environ.get('LOWPREC_BACKEND', 'auto')}"
    )
    print(f"clone (copy_ into out):      {n / t_clone / 1e9:7.3f} Gelem/s  ratio 1.00")
    print(
        f"bf16 round trip (into out):  {n / t_bf16 / 1e9:7.3f} Gelem/s  "
        f"ratio {t_clone / t_bf16:.2f}"
    )
    print(f"{'preset':10s} {'mode':13s} {'Gelem/s':>8s} {'x clone':>8s} {'info':>6s} "
          f"{'f64 ref':>7s}")
    for name in args.presets.split(","):
        fmt = lp.formats.get(name)
        for mode in args.modes.split(","):
            t = timed(lambda fmt=fmt, mode=mode: lp.quantize(x, fmt, mode, generator=g, out=out))
            cells = ""
            if args.info:  # telemetry in the rounding pass; the float64 reference after it
                t_info = timed(lambda fmt=fmt, mode=mode: lp.quantize(
                    x, fmt, mode, generator=g, out=out, return_info=True)[1].amax)
                t_ref = timed(lambda fmt=fmt, mode=mode: QuantInfo.measure(
                    x, lp.quantize(x, fmt, mode, generator=g, out=out), fmt).amax)
                cells = f" {t_info / t:6.2f} {t_ref / t:7.2f}"
            print(f"{name:10s} {mode:13s} {n / t / 1e9:8.3f} {t_clone / t:8.2f}{cells}")

    x2, out2 = x.view(-1, min(n, 1024)), out.view(-1, min(n, 1024))
    cases = [("tensor", lp.Scaling()), ("channel", lp.Scaling("channel", axis=0)),
             ("block32", lp.Scaling("block", block=32))]
    print(f"{'scaled':10s} {'mode':13s} {'scaling':8s} {'Gelem/s':>8s} {'x unscaled':>10s}")
    for name in filter(None, args.scaled.split(",")):  # --scaled "" skips them
        for mode in args.scaled_modes.split(","):
            t0 = timed(lambda f=name, m=mode: lp.quantize(x2, f, m, generator=g, out=out2))
            for label, s in cases:
                t = timed(lambda f=name, m=mode, s=s: lp.quantize(x2, f, m, generator=g,
                                                                    scaling=s, out=out2))
                print(f"{name:10s} {mode:13s} {label:8s} {n / t / 1e9:8.3f} {t0 / t:10.2f}")


if __name__ == "__main__":
    main()
