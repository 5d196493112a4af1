"""Measured memory of a training step with packed saved tensors, per recipe, vs fp32.

For each recipe the model is prepared (``lowprec.training.prepare``), one warm-up step
is run, and then one step without and one with :class:`lowprec.packing.PackHook`
attached, in the same process. Two measurements, both *measured* (nothing modelled):

* ``saved``: the bytes autograd holds for the backward pass, summed by the hook over
  every tensor it is handed (packed data, or the storage of a tensor kept as is, each
  counted once; parameters, which the model holds anyway, not counted). Exact and
  deterministic: it is what the graph keeps, whatever the allocator does.
* ``kept``: the memory held at the end of the forward pass (when the saved tensors are
  all alive) minus that before it: ``torch.cuda.memory_allocated()`` on CUDA; on CPU the
  resident set size (``VmRSS``), with glibc's mmap threshold pinned at 64 KiB so freed
  tensors are returned to the OS. End to end (allocator, logits, anything the step
  keeps), so the independent check of ``saved``.
* ``peak``: the step's high-water mark over the start: ``torch.cuda.max_memory_allocated()``
  on CUDA, peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``) on CPU. It also
  counts temporaries (the rounding kernel's, a packed tensor's decode), which on a CPU
  with the eager rounding kernel are larger than the saved tensors.

Ratios: packed / unpacked for the same recipe, and packed / the fp32 recipe's step.
Also the wall time of each measured step: packing adds an encode and an exactness check
per saved tensor in the forward and a decode in the backward.

    python benchmarks/memory.py [--model cifar10_quick] [--batch 100] [--recipes fp32,pot7]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import re
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lowprec import recipes
from lowprec.study.models import build_model
from lowprec.train import packing
from lowprec.train import prepare as training

_STATUS = Path("/proc/self/status")


def _rss_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", _STATUS.read_text()).group(1))


def _pin_mmap_threshold() -> None:
    """glibc: serve allocations >= 64 KiB by mmap (freed ones leave RSS), no dynamic raise."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        print("note: not glibc; CPU peak RSS includes memory the allocator keeps")


def _now(device: str) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()
    return _rss_kib("VmRSS") * 1024


def _step(model, opt, x, y, device: str) -> tuple[int, int, float]:
    """One training step: memory retained after the forward and peak (bytes over the
    start), and the step's wall time in seconds."""
    opt.zero_grad()
    gc.collect()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")
    before = _now(device)
    start = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    retained = _now(device) - before
    loss.backward()
    opt.step()
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else _rss_kib("VmHWM") * 1024)
    return retained, peak - before, time.perf_counter() - start


def measure(name: str, args: argparse.Namespace) -> dict[str, tuple[Any, ...]]:
    """{"off"|"on": (saved, kept, peak bytes, seconds, tensors packed)} for ``name``."""
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
        out[mode] = (hook.held_bytes, *_step(model, opt, x, y, args.device), hook.packed)
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
    how = "cuda memory_allocated" if args.device == "cuda" else "RSS"
    print(f"{args.model}, batch {args.batch}, device {args.device}, "
          f"threads {torch.get_num_threads()}; all measured: saved = bytes autograd holds "
          f"(pack hook), kept = {how} retained by the forward, peak = {how} high-water "
          "mark of the step; MiB, and ratios packed/unpacked and packed/fp32 recipe")
    results = {n: measure(n, args) for n in args.recipes.split(",")}
    base = results.get("fp32", {}).get("off")
    print("| recipe | packed tensors | saved off | saved on | on/off | on/fp32 | kept off | "
          "kept on | on/off | on/fp32 | peak off | peak on | on/off | step s off | step s on |")
    print("|" + "---|" * 15)
    for n, r in results.items():
        off, on = r["off"], r["on"]
        cells = [str(on[4])]
        for i in range(3):
            cells += [f"{off[i] / 2**20:.2f}", f"{on[i] / 2**20:.2f}",
                      f"{on[i] / max(off[i], 1):.3f}"]
            if i < 2:
                cells.append(f"{on[i] / max(base[i], 1):.3f}" if base else "-")
        cells += [f"{off[3]:.2f}", f"{on[3]:.2f}"]
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
