"""The ``lowprec`` command line (also ``python -m lowprec``).

::

    lowprec train --recipe pot7 --model cifar10_quick --dataset cifar10 --epochs 10 --out runs/
    lowprec train --recipe-file my.toml --dataset digits --epochs 5
    torchrun --nproc_per_node 2 -m lowprec train --recipe fp12_sr --dataset digits --ddp
    lowprec reproduce --dataset cifar10 --out runs/study --seeds 0,1,2   # study recipes + report
    lowprec reproduce --quick            # digits + small_cnn: minutes on a CPU, no download
    lowprec report runs/study            # rebuild report.md from the saved runs
    lowprec sweep sweep.toml --out runs/grid                # a grid of runs (lowprec.sweep)
    lowprec sweep sweep.toml --out runs/grid --backend ray  # one Ray task per run
    lowprec cost --model cifar10_quick --recipe pot7   # modelled energy/memory (lowprec.cost)
    lowprec formats                      # format presets: bits and ranges
    lowprec recipes                      # recipe presets: one line each

Runs are resumable (rerun the same command) and skipped once finished, see
:mod:`lowprec.study.runs`; ``--restart`` starts them over. Data errors, bad recipe files,
unknown names, bad options (seeds are integers in [0, 2**32), learning rates finite and
positive) and unusable run folders (damaged or foreign files, a folder another process
is writing) end with a ``lowprec: error:`` line on stderr and exit status 2 (no
traceback), before anything is written; a diverged ``train`` run exits with 1, an
interrupted one with 130.
A ``sweep`` with a diverged or failed run exits with 1, after running all the others.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .cost import tables as cost
from .cost.energy import MEMORY_PJ_PER_64_BITS
from .numerics import presets as formats
from .numerics.scaling import ScaledFormat
from .study.data import DATASETS, DataError
from .study.models import MODELS, build_model
from .study.progress import bar
from .study.report import write_report
from .study.rundir import SEEDS, finite_positive
from .study.runs import RunError, RunResult, RunSpec, load_data, train_run
from .study.steplog import TensorBoardMissing, require_tensorboard
from .study.sweep import Sweep, SweepError
from .study.sweep_runner import PROBLEMS, SUMMARY, RayOptions, run_sweep
from .train import distributed, recipes
from .train import prepare as training
from .train.coverage import format_coverage
from .train.recipe import Recipe, RecipeError

__all__ = ["QUICK", "build_parser", "main"]

#: what ``reproduce --quick`` changes: embedded data, a small network, a few epochs
QUICK = {"dataset": "digits", "model": "small_cnn", "epochs": 8}


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value < SEEDS:
        raise argparse.ArgumentTypeError(f"seeds are integers in [0, 2**32), got {value}")
    return value


def _seeds(text: str) -> list[int]:
    return [_seed(x) for x in text.split(",") if x.strip()]


def _learning_rate(text: str) -> float:
    try:
        return finite_positive(float(text), "the learning rate")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("'", "")) from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _device(text: str) -> str:
    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: runs train on cpu or cuda devices")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("CUDA is not available on this machine")
    return text


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _run_options() -> argparse.ArgumentParser:
    """Options shared by ``train`` and ``reproduce``."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--dataset", choices=list(DATASETS), help="data set (default: cifar10)")
    p.add_argument("--model", choices=list(MODELS),
                   help="network (default: small_cnn for digits, gpt_tiny for text, "
                   "else cifar10_quick)")
    p.add_argument("--epochs", type=_positive,
                   help="epochs (default: the solver's reference length)")
    p.add_argument("--data-dir", help="where the data set's files are (or go)")
    p.add_argument("--batch-size", type=_positive, help="override the solver's batch size")
    p.add_argument("--lr", type=_learning_rate,
                   help="override the solver's base learning rate (finite, > 0)")
    p.add_argument("--device", type=_device,
                   default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--telemetry-every", type=int, default=10, metavar="N",
                   help="record numerics telemetry every N-th training step (0: never)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    _tensorboard_option(p)
    p.add_argument("--out", help="output folder (one sub-folder per run)")
    p.add_argument("--restart", action="store_true",
                   help="start the runs over: their folders' files are replaced")
    # for tests and schedulers: stop each run after N new epochs (rerun to resume)
    p.add_argument("--max-epochs-this-call", type=_positive, help=argparse.SUPPRESS)
    return p


def _tensorboard_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard events into <run>/tensorboard/ "
                        "(view: tensorboard --logdir <out>; pip install 'lowprec[tensorboard]')")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="lowprec", description="Train neural networks in emulated low-precision arithmetic.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = _run_options()

    train = sub.add_parser("train", parents=[run], help="train one run (resumable)")
    which = train.add_mutually_exclusive_group(required=True)
    which.add_argument("--recipe", choices=recipes.names(), help="a preset recipe")
    which.add_argument("--recipe-file", type=Path, help="a TOML recipe file")
    train.add_argument("--seed", type=_seed, default=0, help="an integer in [0, 2**32)")
    train.add_argument("--ddp", action="store_true",
                       help="data-parallel over torchrun's processes: torchrun "
                            "--nproc_per_node N -m lowprec train ... --ddp")
    train.set_defaults(func=_train, out="runs")

    repro = sub.add_parser("reproduce", parents=[run],
                           help="every study recipe (x seeds), then the report")
    repro.add_argument("--quick", action="store_true",
                       help=f"digits + small_cnn, {QUICK['epochs']} epochs: minutes on a CPU")
    repro.add_argument("--seeds", type=_seeds, default=[0], help="e.g. 0,1,2 (default: 0)")
    repro.add_argument("--recipes", type=_names, default=list(recipes.STUDY),
                       help="comma-separated presets (default: the study's six)")
    repro.set_defaults(func=_reproduce)

    report = sub.add_parser("report", help="rebuild report.md from saved runs")
    report.add_argument("folder", type=Path)
    report.set_defaults(func=_report)

    _add_sweep(sub)
    _add_cost(sub)
    _add_inspect(sub)
    sub.add_parser("formats", help="list format presets").set_defaults(func=_formats)
    sub.add_parser("recipes", help="list recipe presets").set_defaults(func=_recipes)
    return parser


def _recipe(args: argparse.Namespace) -> Recipe:
    return recipes.resolve(args.recipe or args.recipe_file)


def _spec(args: argparse.Namespace, recipe: Recipe, seed: int) -> RunSpec:
    return RunSpec(args.dataset, args.model, recipe, seed, args.epochs, args.batch_size, args.lr,
                   args.device, args.telemetry_every)


def _fill_defaults(args: argparse.Namespace) -> None:
    args.dataset = args.dataset or "cifar10"
    args.model = args.model or {"digits": "small_cnn", "text": "gpt_tiny"}.get(
        args.dataset, "cifar10_quick")


def _say(result: RunResult) -> None:
    name = result.folder.name
    if result.status == "diverged":
        print(f"lowprec: {name} diverged: {result.reason}", file=sys.stderr)
        return
    done = "already finished" if result.skipped else result.status
    acc = f", test accuracy {result.metrics[-1]['test_acc']:.2%}" if result.metrics else ""
    tqdm.write(f"{name}: {done}{acc} ({result.reason or result.folder})")


def _train(args: argparse.Namespace) -> int:
    _fill_defaults(args)
    recipe = _recipe(args)
    if args.tensorboard:
        require_tensorboard()
    dataset = load_data(args.dataset, args.model, args.data_dir)
    with distributed.launched(args.ddp, args.device) as world:
        args.device = world.device
        result = train_run(_spec(args, recipe, args.seed), args.out, dataset, quiet=args.quiet,
                           max_epochs=args.max_epochs_this_call, tensorboard=args.tensorboard,
                           restart=args.restart)
    if world.main:
        _say(result)
    return 1 if result.status == "diverged" else 0


def _reproduce(args: argparse.Namespace) -> int:
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    _fill_defaults(args)
    args.out = args.out or ("runs/quick" if args.quick else "runs/study")
    unknown = sorted(set(args.recipes) - set(recipes.names()))
    if unknown:
        raise RecipeError(f"unknown recipe(s) {unknown}; known: {', '.join(recipes.names())}")
    if args.tensorboard:
        require_tensorboard()
    dataset = load_data(args.dataset, args.model, args.data_dir)
    specs = [_spec(args, recipes.get(r), s) for r in args.recipes for s in args.seeds]
    for spec in bar(specs, desc="study", unit="run", quiet=args.quiet):
        _say(train_run(spec, args.out, dataset, quiet=args.quiet,
                       max_epochs=args.max_epochs_this_call, tensorboard=args.tensorboard,
                       restart=args.restart))
    print(f"report: {write_report(args.out)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    print(f"report: {write_report(args.folder)}")
    return 0


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="a grid of runs from a TOML sweep file (resumable)",
                       description="Run every run of a sweep file (format: lowprec.sweep's "
                                   "docstring, examples/sweep_fp_split.toml).")
    p.add_argument("file", type=Path, help="the sweep file (TOML)")
    p.add_argument("--out", type=Path, help="output folder (default: runs/<sweep name>)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: a process pool; ray: one Ray task per run")
    p.add_argument("--workers", type=_positive,
                   help="processes (default: one per core, at most one per run; 1 for cuda), "
                        "each with cores // workers torch threads; with --backend ray and no "
                        "--address, the local instance gets workers x cpus-per-run CPUs")
    p.add_argument("--data-dir", help="where the data sets' files are (or go)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _tensorboard_option(p)
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    p.add_argument("--restart", action="store_true",
                   help="start every run over: their folders' files are replaced")
    ray = p.add_argument_group("ray backend")
    ray.add_argument("--address", help="a Ray cluster's address (default: a local instance)")
    ray.add_argument("--cpus-per-run", type=float, help="CPUs (and torch threads) per run "
                     "(default 1)")
    ray.add_argument("--gpus-per-run", type=float,
                     help="GPUs per run (default: 1 for a cuda device, else 0)")
    ray.add_argument("--no-shared-disk", action="store_true",
                     help="workers train in a local temporary folder; files come back to --out")
    p.add_argument("--max-epochs-this-call", type=_positive, help=argparse.SUPPRESS)
    p.set_defaults(func=_sweep)


def _sweep(args: argparse.Namespace) -> int:
    sweep = Sweep.from_file(args.file)
    out = args.out or Path("runs") / sweep.name
    ray_only = {"--address": args.address, "--cpus-per-run": args.cpus_per_run,
                "--gpus-per-run": args.gpus_per_run, "--no-shared-disk": args.no_shared_disk}
    given = [k for k, v in ray_only.items() if v not in (None, False)]
    if args.backend != "ray" and given:
        raise SweepError(f"{', '.join(given)}: only with --backend ray")
    if args.dry_run:
        for run in sweep.runs:
            print(f"{run.folder}  {run.variant.formats} ({run.variant.bits} bits)")
        print(f"{len(sweep.runs)} runs into {out}")
        return 0
    ray = RayOptions(args.address, cpus_per_run=args.cpus_per_run or 1.0,
                     gpus_per_run=args.gpus_per_run, shared_disk=not args.no_shared_disk)
    outcomes = run_sweep(sweep, out, backend=args.backend, workers=args.workers,
                         data_dir=args.data_dir, max_epochs=args.max_epochs_this_call,
                         quiet=args.quiet, ray_options=ray, tensorboard=args.tensorboard,
                         restart=args.restart)
    counts = ", ".join(f"{n} {s}" for s, n in Counter(o.status for o in outcomes).items())
    print(f"sweep {sweep.name}: {counts}; summary {out / SUMMARY}; report: lowprec report {out}")
    return 1 if any(o.status in PROBLEMS for o in outcomes) else 0


# -- cost -----------------------------------------------------------------------------------
_DEFAULT_INPUT = {"small_cnn": (1, 8)}  # model: (channels, image size); others (3, 32)


def _add_cost(sub: Any) -> None:
    p = sub.add_parser("cost", help="modelled energy and memory of a recipe (lowprec.cost)")
    p.add_argument("--model", default="cifar10_quick", choices=list(MODELS))
    p.add_argument("--recipe", action="append", dest="recipes",
                   help="preset name or TOML file; repeat for several (default: pot7)")
    p.add_argument("--batch", type=_positive, default=100, help="inputs per training step")
    p.add_argument("--memory", default="dram", choices=list(MEMORY_PJ_PER_64_BITS))
    p.add_argument("--num-classes", type=_positive, default=10)
    p.add_argument("--in-channels", type=_positive, help="default: 1 for small_cnn, else 3")
    p.add_argument("--image-size", type=_positive, help="default: 8 for small_cnn, else 32")
    p.add_argument("--per-layer", action="store_true", help="also print each layer")
    p.add_argument("--out", type=Path, help="write cost.png and cost.svg into this folder")
    p.set_defaults(func=_cost)


def _cost(args: argparse.Namespace) -> int:
    """Print the tables (and write the plots)."""
    c, s = _DEFAULT_INPUT.get(args.model, (3, 32))
    c, s = args.in_channels or c, args.image_size or s
    torch.manual_seed(0)
    model = build_model(args.model, args.num_classes, c, s)
    rows = cost.recipe_table(model, (args.batch, c, s, s), args.recipes or ["pot7"],
                             memory=args.memory, per_layer=args.per_layer)
    print(f"{args.model}: {cost.note(args.batch, args.memory)}\n")
    print(cost.format_table(rows))
    for r in rows if args.per_layer else ():
        print(f"\n{r['recipe']} per layer (* = needs a multiplier; modelled):\n")
        print(cost.format_layers(r["layers"], args.memory))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for path in cost.plot(rows, args.out / "cost", f"{args.model}, batch {args.batch}: "
                              "modelled cost, ratio to fp32"):
            print(f"wrote {path}")
    return 0


# -- inspect --------------------------------------------------------------------------------
def _add_inspect(sub: Any) -> None:
    p = sub.add_parser("inspect", help="one training step of a study model under a recipe: "
                                       "every op executed and what was rounded")
    p.add_argument("--model", default="small_cnn", choices=list(MODELS))
    p.add_argument("--recipe", required=True, help="preset name or TOML file")
    p.add_argument("--batch", type=_positive, default=4)
    p.set_defaults(func=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    """Build the model, run one step on random data, print :func:`lowprec.coverage`."""
    torch.manual_seed(0)
    if args.model.startswith("gpt"):
        model = build_model(args.model)
        emb = next(m for m in model.modules() if isinstance(m, torch.nn.Embedding))
        x = torch.randint(emb.num_embeddings, (args.batch, 32))
    else:
        c, s = _DEFAULT_INPUT.get(args.model, (3, 32))
        model = build_model(args.model, 10, c, s)
        x = torch.randn(args.batch, c, s, s)
    model = training.prepare(model, recipes.resolve(args.recipe))
    opt = training.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=0.01))
    out = model(x)
    out.float().square().mean().backward()
    opt.step()
    print(f"{args.model} under {args.recipe}: one training step on random data\n")
    print(format_coverage(training.coverage(model)))
    return 0


def _formats(args: argparse.Namespace) -> int:
    print(f"{'name':<15} {'bits':>4} {'max':>11} {'min normal':>11} {'min subnorm':>11}  "
          "description")
    for name in formats.names():
        fmt = formats.get(name)
        elem = fmt.element if isinstance(fmt, ScaledFormat) else fmt
        note = " (element range, before the block scale)" if elem is not fmt else ""
        print(f"{name:<15} {fmt.bits:>4} {elem.max:>11.4g} {elem.min_normal:>11.4g} "
              f"{elem.min_subnormal:>11.4g}  {formats.describe(name)}{note}")
    return 0


def _recipes(args: argparse.Namespace) -> int:
    for name in recipes.names():
        kind = "study" if name in recipes.STUDY else "field"
        line = textwrap.shorten(recipes.describe(name), width=110, placeholder=" ...")
        print(f"{name:<12} {kind:<5}  {line}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    # bad input or a missing optional package: one line, no traceback
    except (DataError, RunError, OSError, ValueError, TensorBoardMissing) as exc:
        print(f"lowprec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lowprec: interrupted; rerun the same command to resume from the last "
              "finished epoch", file=sys.stderr)
        return 130
