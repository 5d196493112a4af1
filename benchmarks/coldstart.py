"""Cold start: wall time of a fresh process training one digits epoch, per recipe.

Each run is a new ``python -m lowprec train --dataset digits --model small_cnn --epochs 1``
subprocess (import, data, model, one epoch, exit), timed from outside: wall seconds and
the CPU seconds (user + system) of the process and its children. Rounds:

* ``first ever``: fresh, empty ``TORCHINDUCTOR_CACHE_DIR`` and ``LOWPREC_CACHE_DIR``
  (nothing compiled before);
* ``warm``: the same cache directories again (an earlier run compiled the kernels).

Recipes (and, with ``--backends``, ``LOWPREC_BACKEND`` values) are run **interleaved**,
one of each in turn per repeat, so that a changing load on the machine hits all of them
alike; the figures are medians over ``--repeat`` runs, with the excess over the first
recipe (``fp32``) of the same repeat, and the load average before and after.
``--compare`` times the recipes after the first under the first backend with another
lowprec source tree too
(e.g. an older version, ``git archive``'d), in the same interleaved run.

    python benchmarks/coldstart.py [--recipes fp32,fp12_sr] [--repeat 3] \
        [--backends auto,eager] [--compare OLD/src] [--epochs 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train_once(recipe: str, cache: Path, out: Path, backend: str, src: Path,
               epochs: int) -> tuple[float, float]:
    """Wall and CPU seconds of one fresh ``lowprec train`` process (``epochs`` digits epochs)."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "LOWPREC_BACKEND": backend,
           "LOWPREC_CACHE_DIR": str(cache / "lowprec"),
           "PYTHONPATH": os.pathsep.join(filter(None, (str(src), os.environ.get("PYTHONPATH"))))}
    cmd = [sys.executable, "-m", "lowprec", "train", "--dataset", "digits", "--model",
           "small_cnn", "--epochs", str(epochs), "--quiet", "--recipe", recipe, "--out", str(out)]
    before = os.times()
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system
                                                           - before.children_system)
    shutil.rmtree(out)  # a finished run in out would be skipped by the next one
    return elapsed, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--recipes", default="fp32,fp12_sr")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backends", default="auto",
                    help="LOWPREC_BACKEND values to time the recipes after the first under")
    ap.add_argument("--compare", type=Path, help="another lowprec source tree (its src/)")
    ap.add_argument("--epochs", type=int, default=1,
                    help="digits epochs per run (longer runs: where compiling pays off)")
    args = ap.parse_args()
    srcs = {"this": Path(__file__).resolve().parents[1] / "src"}
    if args.compare:
        srcs["compare"] = args.compare.resolve()
    base, *others = args.recipes.split(",")
    backends = args.backends.split(",")
    cases = [(base, "auto", "this")] + [(r, b, s) for r in others for b in backends
                                        for s in (srcs if b == backends[0] else ["this"])]
    times: dict[tuple[str, ...], list[tuple[float, float]]] = {}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in ("first ever", "warm"):
            for i in range(args.repeat):
                for recipe, backend, src in cases:
                    # first ever: a fresh cache per run; warm: the one its first run filled
                    cache = Path(tmp) / (f"cache-{recipe}-{backend}-{src}" + (
                        f"-{i}" if rnd == "first ever" else "-0"))
                    times.setdefault((rnd, recipe, backend, src), []).append(
                        train_once(recipe, cache, Path(tmp) / "runs", backend, srcs[src],
                                   args.epochs))
    load.append(os.getloadavg()[0])
    print(f"{args.epochs} digits epoch(s) in a fresh process ({srcs}); median of {args.repeat} "
          f"interleaved runs, seconds (excess over {base} in the same repeat); "
          f"load average {load[0]:.1f} before, {load[1]:.1f} after")
    print(f"{'recipe':10s} {'backend':8s} {'src':8s} {'round':11s} {'wall':>16s} {'cpu':>16s}")
    for (rnd, recipe, backend, src), runs in times.items():
        ref = times[(rnd, base, "auto", "this")]
        cells = []
        for k in (0, 1):
            median = statistics.median(r[k] for r in runs)
            excess = statistics.median(r[k] - b[k] for r, b in zip(runs, ref, strict=True))
            cells.append(f"{median:6.1f} ({excess:+5.1f})")
        print(f"{recipe:10s} {backend:8s} {src:8s} {rnd:11s} {cells[0]:>16s} {cells[1]:>16s}")


if __name__ == "__main__":
    main()
