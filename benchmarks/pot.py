"""Speed and exactness of the multiplier-free power-of-two kernels (:mod:`lowprec.pot`).

For a linear layer and cifar10_quick's conv2 (pot7 inputs and errors, fp12 weights) it
times, in the same run: torch's own op (BLAS / oneDNN: multiplies), the multiply-based
reference with the kernel's blocking (``reference=True``), and the exponent-addition
kernel eager and compiled (``LOWPREC_BACKEND``), for the forward, grad-input and
grad-weight products, and checks every kernel result against the reference bit for bit.
Then it counts the multiplications pot7 removes from a cifar10_quick training step.

    python benchmarks/pot.py [--batch 8] [--repeat 3] [--step-batch 100]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import lowprec as lp
from lowprec import recipes
from lowprec.cost import analysis
from lowprec.numerics import pot
from lowprec.study.models import build_model


def best_time(fn: Callable[[], torch.Tensor], repeat: int) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up (and compile)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def cases(batch: int) -> dict[str, dict[str, Callable[..., torch.Tensor]]]:
    """Per layer and product: (torch op, pot function taking ``reference=``)."""
    g = torch.Generator().manual_seed(0)
    q = lambda t: lp.quantize(t, "pot7")  # noqa: E731
    x = q(torch.randn(batch * 16, 1024, generator=g).relu())
    w = lp.quantize(torch.randn(64, 1024, generator=g) * 0.03, "fp12")
    e = q(torch.randn(batch * 16, 64, generator=g) * 1e-3)
    xc = q(torch.randn(batch, 32, 16, 16, generator=g).relu())
    wc = lp.quantize(torch.randn(32, 32, 5, 5, generator=g) * 0.01, "fp12")
    ec = q(torch.randn(batch, 32, 16, 16, generator=g) * 1e-3)
    return {
        f"linear {tuple(x.shape)} x {tuple(w.shape)}": {
            "forward": (lambda: F.linear(x, w), lambda r: pot.linear(x, w, reference=r)),
            "grad_input": (lambda: e @ w, lambda r: pot.linear_grad_input(e, w, reference=r)),
            "grad_weight": (lambda: e.t() @ x,
                            lambda r: pot.linear_grad_weight(e, x, reference=r)),
        },
        f"conv2 {tuple(xc.shape)} * {tuple(wc.shape)}": {
            "forward": (lambda: F.conv2d(xc, wc, padding=2),
                        lambda r: pot.conv2d(xc, wc, None, 1, 2, reference=r)),
            "grad_input": (lambda: torch.nn.grad.conv2d_input(xc.shape, wc, ec, padding=2),
                           lambda r: pot.conv2d_grad_input(ec, wc, (16, 16), 1, 2,
                                                           reference=r)),
            "grad_weight": (lambda: torch.nn.grad.conv2d_weight(xc, wc.shape, ec, padding=2),
                            lambda r: pot.conv2d_grad_weight(ec, xc, 5, 1, 2, reference=r)),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--step-batch", type=int, default=100)
    args = ap.parse_args()
    print(f"threads {torch.get_num_threads()}; times: best of {args.repeat}, ms (measured)")
    print("| layer | product | torch op | reference (multiply) | pot eager | pot compiled "
          "| compiled / torch op | bit-exact |")
    print("|---|---|---|---|---|---|---|---|")
    for layer, products in cases(args.batch).items():
        for name, (op, fn) in products.items():
            t_op, _ = best_time(op, args.repeat)
            t_ref, ref = best_time(lambda fn=fn: fn(True), args.repeat)
            times, same = {}, True
            for backend in ("eager", "compiled"):
                os.environ["LOWPREC_BACKEND"] = backend
                times[backend], got = best_time(lambda fn=fn: fn(False), args.repeat)
                same &= torch.equal(got.view(torch.int32), ref.view(torch.int32))
            print(f"| {layer} | {name} | {t_op * 1e3:.2f} | {t_ref * 1e3:.1f} | "
                  f"{times['eager'] * 1e3:.1f} | {times['compiled'] * 1e3:.1f} | "
                  f"{times['compiled'] / t_op:.0f}x | {'yes' if same else 'NO'} |")
    torch.manual_seed(0)
    r = analysis.multiplications_removed(build_model("cifar10_quick"), (args.step_batch, 3, 32, 32),
                                    recipes.get("pot7"))
    print(f"\ncifar10_quick, pot7, batch {args.step_batch}: {r['total']:,} of {r['products']:,} "
          f"products per training step are shifts ({r['total'] / r['products']:.1%}); "
          "per layer (forward, grad-input, grad-weight):")
    for name, d in r["layers"].items():
        print(f"  {name}: " + ", ".join(f"{k} {v:,}" for k, v in d.items()))


if __name__ == "__main__":
    main()
