"""Cold start: wall time of a fresh process training one digits epoch, per recipe.

Each run is a new ``python -m lowprec train --dataset digits --model small_cnn --epochs 1``
subprocess (import, data, model, one epoch, exit), timed from outside. Rounds:

* ``first ever``: a fresh, empty ``TORCHINDUCTOR_CACHE_DIR`` (nothing compiled before);
* ``warm``: the same cache directory again (an earlier run compiled the kernels).

Prints seconds per recipe and round and the excess over ``fp32`` measured in the same
run (lower is better); every figure is the best of ``--repeat`` runs.

    python benchmarks/coldstart.py [--recipes fp32,fp12_sr] [--repeat 2] [--backend auto]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train_once(recipe: str, cache: Path, out: Path, backend: str) -> float:
    """Seconds for one fresh ``lowprec train`` process (one digits epoch)."""
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "LOWPREC_BACKEND": backend,
           "PYTHONPATH": os.pathsep.join(filter(None, (str(src), os.environ.get("PYTHONPATH"))))}
    cmd = [sys.executable, "-m", "lowprec", "train", "--dataset", "digits", "--model",
           "small_cnn", "--epochs", "1", "--quiet", "--recipe", recipe, "--out", str(out)]
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t
    shutil.rmtree(out)  # a finished run in out would be skipped by the next one
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--recipes", default="fp32,fp12_sr")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--backend", default="auto", choices=("auto", "compiled", "eager"))
    args = ap.parse_args()
    recipes = args.recipes.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        rows: dict[str, dict[str, float]] = {r: {} for r in recipes}
        for recipe in recipes:
            cache = Path(tmp) / f"cache-{recipe}"  # first ever: nothing compiled yet
            rows[recipe]["first ever"] = train_once(recipe, cache, Path(tmp) / "runs", args.backend)
            rows[recipe]["warm"] = min(train_once(recipe, cache, Path(tmp) / "runs", args.backend)
                                       for _ in range(args.repeat))
    base = rows[recipes[0]]
    print(f"one digits epoch in a fresh process, LOWPREC_BACKEND={args.backend} (seconds; "
          f"excess over {recipes[0]})")
    print(f"{'recipe':12s} {'first ever':>16s} {'warm':>16s}")
    for recipe, r in rows.items():
        cells = [f"{r[k]:6.1f} (+{r[k] - base[k]:4.1f})" for k in ("first ever", "warm")]
        print(f"{recipe:12s} {cells[0]:>16s} {cells[1]:>16s}")


if __name__ == "__main__":
    main()
