"""Measured memory of a training step with packed saved tensors, per recipe, vs fp32.

For each recipe the model is prepared (``lowprec.training.prepare``), one warm-up step
is run, and then one step without and one with :class:`lowprec.packing.PackHook`
attached, in the same process. Two measurements, both *measured* (nothing modelled):

* ``saved``: the bytes autograd holds for the backward pass, summed by the hook over
  every tensor it is handed (packed data, or the storage of a tensor kept as is, each
  counted once; parameters, which the model holds anyway, not counted). Exact and
  deterministic: it is what the graph keeps, whatever the allocator does.
* ``peak``: on CUDA, ``torch.cuda.max_memory_allocated()`` during the step minus the
  allocation before it; on CPU the peak resident set size (``VmHWM``, reset through
  ``/proc/self/clear_refs``) minus the RSS before the step, with glibc's mmap
  threshold pinned at 64 KiB so large tensors are returned to the OS when freed. RSS
  includes allocator slack and temporaries of the step (e.g. the decode of a packed
  tensor), so it is the noisier, end-to-end figure.

Ratios: packed / unpacked for the same recipe, and packed / the fp32 recipe's step.

    python benchmarks/memory.py [--model cifar10_quick] [--batch 100] [--recipes fp32,pot7]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from lowprec import packing, recipes, training
from lowprec.models import build_model

_STATUS = Path("/proc/self/status")


def _rss_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", _STATUS.read_text()).group(1))


def _pin_mmap_threshold() -> None:
    """glibc: serve allocations >= 64 KiB by mmap (freed ones leave RSS), no dynamic raise."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        print("note: not glibc; CPU peak RSS includes memory the allocator keeps")


def _step(model, opt, x, y, device: str) -> int:
    """One training step; returns its peak memory delta in bytes (see the module doc)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")
        before = _rss_kib("VmRSS") * 1024
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    return _rss_kib("VmHWM") * 1024 - before


def measure(name: str, args: argparse.Namespace) -> dict[str, tuple[int, int, int]]:
    """{"off"|"on": (saved bytes, peak bytes, tensors packed)} for recipe ``name``."""
    recipe = recipes.get(name)
    torch.manual_seed(0)
    model = build_model(args.model, 10, 3, 32).to(args.device)
    training.prepare(model, recipe, seed=0)
    opt = training.wrap_optimizer(torch.optim.SGD(model.parameters(), 1e-3, momentum=0.9),
                                  recipe)
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(args.batch, 3, 32, 32, generator=g) * 50).to(args.device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(args.device)
    out = {}
    for mode, formats in (("off", []), ("on", recipe)):
        hook = packing.PackHook(formats)
        handles = hook.attach(model)
        _step(model, opt, x, y, args.device)  # warm-up: optimizer state, allocator
        peak = _step(model, opt, x, y, args.device)
        out[mode] = (hook.held_bytes, peak, hook.packed)
        for h in handles:
            h.remove()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="cifar10_quick")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--recipes", default=",".join(recipes.STUDY))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.device == "cpu":
        _pin_mmap_threshold()
    peak_how = "cuda max_memory_allocated" if args.device == "cuda" else "peak RSS (VmHWM)"
    print(f"{args.model}, batch {args.batch}, device {args.device}, "
          f"threads {torch.get_num_threads()}; measured: saved = bytes autograd holds "
          f"(pack hook), peak = {peak_how} delta over the step")
    names = args.recipes.split(",")
    results = {n: measure(n, args) for n in names}
    base = results["fp32"]["off"] if "fp32" in results else None
    mib = 2.0**20
    print("| recipe | packed tensors | saved MiB off | saved MiB on | saved on/off | saved on/fp32 "
          "| peak MiB off | peak MiB on | peak on/off | peak on/fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, r in results.items():
        (s_off, p_off, _), (s_on, p_on, k) = r["off"], r["on"]
        vs = (f"{s_on / base[0]:.3f} | " if base else "- | ")
        vp = (f"{p_on / base[1]:.3f}" if base and base[1] > 0 else "-")
        print(f"| {n} | {k} | {s_off / mib:.2f} | {s_on / mib:.2f} | {s_on / s_off:.3f} | {vs}"
              f"{p_off / mib:.2f} | {p_on / mib:.2f} | {p_on / max(p_off, 1):.3f} | {vp} |")


if __name__ == "__main__":
    main()
