"""Time of ``lowprec.mac_matmul`` against the plain float32 ``a @ b`` on cifar10_quick's layers.

Shapes are the layers' matrix products for a batch of 100 3x32x32 images, convolutions as
im2col (``[N*H*W, C_in*kh*kw] @ [C_in*kh*kw, C_out]``). ``fwd`` rows are the forward products;
with ``--backward`` also the two backward products per layer (``dX = dY W^T``, reducing over
``C_out``, and ``dW = X^T dY``, reducing over the batch/pixel axis; ``X^T`` is a transposed
view, as autograd hands it). Each case prints the best of ``--repeat`` times and its ratio to
the float32 ``a @ b`` measured in the same run; the ``total`` row sums them: with
``--backward`` it estimates a training step's products (forward + both backward products of
every layer) against the float32 ones. On a machine shared with other jobs, ``--cpu-time``
measures the process's CPU time (all threads) instead of wall time, which other jobs disturb
less.

    python benchmarks/mac.py [--threads 2] [--repeat 3] [--blocks 32,1] [--acc fp16]
        [--backward] [--cpu-time]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from steady import warm_up

import lowprec as lp

#: (layer, M, K, N) of the forward products, batch 100.
FORWARD = (
    ("conv1", 100 * 32 * 32, 3 * 5 * 5, 32),
    ("conv2", 100 * 16 * 16, 32 * 5 * 5, 32),
    ("conv3", 100 * 8 * 8, 32 * 5 * 5, 64),
    ("ip1", 100, 64 * 4 * 4, 64),
    ("ip2", 100, 64, 10),
)


def shapes(backward: bool) -> list[tuple[str, int, int, int]]:
    """``(name, M, K, N)`` of the products to time."""
    out = [(f"{name} fwd", m, k, n) for name, m, k, n in FORWARD]
    if backward:
        out += [(f"{name} dX", m, n, k) for name, m, k, n in FORWARD]
        out += [(f"{name} dW", -k, m, n) for name, m, k, n in FORWARD]  # -: a is X^T
    return out


def best_time(fn: Callable[[], object], repeat: int, clock: Callable[[], float]) -> float:
    """Smallest ``clock`` time of ``repeat`` calls after a warm-up (steady.py)."""
    warm_up([fn], 1)
    times = []
    for _ in range(repeat):
        t = clock()
        fn()
        times.append(clock() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--blocks", default="32,1")
    ap.add_argument("--acc", default="fp16", help="accumulator format (nearest-even)")
    ap.add_argument("--backward", action="store_true", help="also time the backward products")
    ap.add_argument("--cpu-time", action="store_true", help="process CPU time, not wall time")
    args = ap.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter
    torch.set_num_threads(args.threads)
    blocks = [int(b) for b in args.blocks.split(",")]
    gen = torch.Generator().manual_seed(0)
    totals = {b: [0.0, 0.0] for b in blocks}
    print(f"{'product':>10} {'M x K x N':>20} {'fp32 ms':>9}"
          + "".join(f" {'b=' + str(b) + ' ms':>10} {'ratio':>6}" for b in blocks))
    for name, m, k, n in shapes(args.backward):
        a = torch.randn(m, k, generator=gen) if m > 0 else torch.randn(k, -m, generator=gen).T
        m = abs(m)
        b = torch.randn(k, n, generator=gen)
        t_ref = best_time(lambda a=a, b=b: a @ b, args.repeat, clock)
        row = f"{name:>10} {f'{m}x{k}x{n}':>20} {1e3 * t_ref:9.2f}"
        for blk in blocks:
            t = best_time(lambda a=a, b=b, blk=blk: lp.mac_matmul(a, b, accumulate=args.acc,
                                                                  block=blk), args.repeat,
                           clock)
            totals[blk][0] += t_ref
            totals[blk][1] += t
            row += f" {1e3 * t:10.2f} {t / t_ref:6.2f}"
        print(row)
    ref = next(iter(totals.values()))[0]
    print(f"{'total':>10} {'':>20} {1e3 * ref:9.2f}"
          + "".join(f" {1e3 * t:10.2f} {t / r:6.2f}" for r, t in totals.values()))


if __name__ == "__main__":
    main()
