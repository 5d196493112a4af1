"""Data-parallel training: ranks, batch shards, and gradients communicated in a format.

Launch with torchrun (one process per rank; ``--ddp`` reads ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` from its environment; gloo on CPU,
nccl on CUDA with device ``cuda:LOCAL_RANK``)::

    torchrun --nproc_per_node 2 -m lowprec train --recipe fp12_sr --dataset digits --ddp

:func:`lowprec.experiment.train_run` then trains with torch's ``DistributedDataParallel``
over ``W`` ranks (:func:`current`), as follows.

Data. Every rank iterates the same global loader (same seed: same permutation and
augmentation) and keeps its shard of each global batch of ``B`` images
(:meth:`World.shard`, ``n_r`` images, sizes differing by at most one). Rank ``r`` scales
its mean loss ``L_r`` by ``W n_r / B``, so that DDP's averaged gradient
``(1/W) Σ_r (W n_r / B) ∇L_r = (1/B) Σ_i ∇ℓ_i`` is the global batch's mean gradient:
``W`` ranks with global batch ``B`` train as one process with batch ``B`` does, up to
floating-point reduction order (each weight gradient's sum over the batch is split into
``W`` partial sums that the all-reduce adds) and the per-rank rounding streams below.
Batch-norm statistics are per shard, as in plain DDP. Loss and accuracy are summed over
ranks at every step (:meth:`World.sum`; so every rank sees a non-finite loss at the same
step), evaluation is sharded and summed the same way, telemetry is rank 0's, and only
rank 0 prints and writes the run folder. ``config.json`` records ``world_size`` (absent:
one process), and a run resumes only with the same world size.

Rounding streams. ``prepare(..., rank=r)`` gives the data-dependent classes
(activations, errors) a per-rank stochastic-rounding stream, while weights, weight
gradients and updates use the stream shared by all ranks; every rank draws the same
sequence from the shared generator (:mod:`lowprec.training`). Ranks hold the same
weights, optimizer state and random states after every step, bit for bit, so rank 0's
checkpoint serves every rank. Results are reproducible for a given seed and world size.

Gradient communication. ``Recipe.grad_comm = Q`` (``None``: DDP's fp32 all-reduce)
installs :func:`grad_comm_hook`: for each parameter of a gradient bucket, with ``g_r``
rank ``r``'s local gradient,

    G = Q_post( fl32(Σ_r Q_pre,r(g_r)) / W )

``Q_pre,r`` rounds with rank ``r``'s own stream, ``Q_post`` with a stream shared by all
ranks (so they obtain the same bits); both are :func:`~lowprec.training.keyed_generator`
streams keyed by (seed, parameter index in ``model.parameters()``, step), never drawn
inside backward, so neither the order in which buckets finish nor how DDP groups
parameters into buckets (it regroups them after the first step of every process) can
change or desynchronise them. This emulates a reduction
whose operands and result are in the format: the actual all-reduce adds in fp32 in the
backend's order, and its partial sums are not rounded into ``Q`` as a ring all-reduce
sending the format at every hop would round them. With a scaling, each parameter's
gradient is scaled on its own. Division by ``W`` is exact for powers of two.
"""

# no ``from __future__ import annotations``: DDP checks the hook's annotations as objects
import contextlib
import gc
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..numerics.quantize import quantize
from . import prepare as training
from .recipe import QuantSpec

__all__ = ["GradComm", "World", "current", "grad_comm_hook", "init", "launched", "teardown"]

#: the environment torchrun sets for each rank
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_PRE, _POST = 0, 1  # key words of the hook's two roundings


@dataclass(frozen=True)
class World:
    """This process among the data-parallel ranks (``parallel=False``: a single process)."""

    rank: int = 0
    size: int = 1
    parallel: bool = False
    device: str = "cpu"  # this rank's torch device (collectives of :meth:`sum` run there)

    @property
    def main(self) -> bool:
        """Rank 0: the one that prints and writes files."""
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a global batch along dim 0: ``torch.tensor_split`` into
        ``size`` parts (``n_r = floor(B/W)`` or one more; the whole batch for one process)."""
        return torch.tensor_split(batch, self.size)[self.rank]

    def sum(self, values: Sequence[float]) -> list[float]:
        """``Σ_r values_r`` over the ranks (float64 all-reduce; the values themselves for a
        single process)."""
        if not self.parallel:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def wrap(self, model: nn.Module, grad_comm: QuantSpec | None, seed: int) -> nn.Module:
        """``model`` itself for one process; else ``DistributedDataParallel(model)``,
        communicating gradients in ``grad_comm`` (``None``: fp32). ``model`` must be
        prepared (:func:`lowprec.prepare`; its pass count numbers the steps) and equal on
        every rank (built from the same seed): DDP's initial broadcast is skipped, since
        prepared layers would take its in-place copy for an outside edit of the weights
        (re-rounding them, and with master weights adopting the rounded copies)."""
        if not self.parallel:
            return model
        ddp = DistributedDataParallel(model, init_sync=False)
        if grad_comm is not None:
            ddp.register_comm_hook(GradComm(grad_comm, seed, self, model), grad_comm_hook)
        return ddp


def current() -> World:
    """This process's :class:`World`, from the default process group if one is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    nccl = dist.get_backend() == "nccl"
    device = f"cuda:{torch.cuda.current_device()}" if nccl else "cpu"
    return World(dist.get_rank(), dist.get_world_size(), True, device)


def init(device: str) -> World:
    """Join the process group torchrun's environment describes (nccl if ``device`` is
    CUDA, using ``cuda:LOCAL_RANK``; else gloo). Raises ``ValueError`` outside torchrun."""
    missing = [k for k in TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise ValueError(f"--ddp needs the environment torchrun sets ({', '.join(missing)} "
                         "missing): launch with torchrun --nproc_per_node N -m lowprec train "
                         "... --ddp")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=collective_timeout())
    return current()


def collective_timeout() -> timedelta:
    """How long a collective waits for a stopped rank before failing (instead of blocking
    the others forever): ``$LOWPREC_DDP_TIMEOUT_S`` seconds, default 600."""
    text = os.environ.get("LOWPREC_DDP_TIMEOUT_S", "600")
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"LOWPREC_DDP_TIMEOUT_S={text!r}: give a positive number of seconds")
    return timedelta(seconds=seconds)


def teardown() -> None:
    """Leave the process group, if one is initialised. Garbage is collected first: a DDP
    wrapper (they sit in reference cycles) left for the interpreter's exit to free aborted
    about one gloo process in five there (torch 2.13: "terminate called without an active
    exception")."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


@contextlib.contextmanager
def launched(ddp: bool, device: str) -> Iterator[World]:
    """For the block: with ``ddp``, :func:`init` and at the end :func:`teardown`; without,
    a single process on ``device``."""
    if not ddp:
        yield World(device=device)
        return
    world = init(device)
    try:
        yield world
    finally:
        teardown()


class GradComm:
    """State of :func:`grad_comm_hook`: the format, the run's seed, this rank's world and
    the prepared model (its :func:`~lowprec.training.training_passes` number the steps,
    the order of its parameters numbers them)."""

    def __init__(self, spec: QuantSpec, seed: int, world: World, model: nn.Module) -> None:
        self.spec, self.seed, self.world, self.model = spec, seed, world, model
        self.index = {id(p): i for i, p in enumerate(model.parameters())}

    def round(self, flat: torch.Tensor, params: Sequence[torch.Tensor],
              key: Sequence[int]) -> None:
        """Round each parameter's slice of a flat bucket in place, parameter ``i`` (of
        ``model.parameters()``) with ``keyed_generator(seed, i, *key)``."""
        s = self.spec
        views = torch.split(flat, [p.numel() for p in params])
        for view, p in zip(views, params, strict=True):
            v = view.view(p.shape)
            gen = training.keyed_generator(self.seed, self.index[id(p)], *key)
            quantize(v, s.format, s.rounding, generator=gen, rand_bits=s.rand_bits,
                     overflow=s.overflow, scaling=s.scaling, out=v)


def grad_comm_hook(state: GradComm,
                   bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: ``G = Q_post(fl32(Σ_r Q_pre,r(g_r)) / W)`` per parameter of
    ``bucket`` (module docstring)."""
    params, world = bucket.parameters(), state.world
    step = training.training_passes(state.model)
    state.round(bucket.buffer(), params, (step, _PRE, world.rank))
    reduced = dist.all_reduce(bucket.buffer(), async_op=True).get_future()  # type: ignore[union-attr]

    def mean(fut: torch.futures.Future[list[torch.Tensor]]) -> torch.Tensor:
        total = fut.value()[0].div_(world.size)
        state.round(total, params, (step, _POST))
        return total

    return reduced.then(mean)
