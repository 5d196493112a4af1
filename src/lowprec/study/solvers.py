"""The study's reference solvers: one :class:`SolverConfig` per model of :mod:`.models`.

Public API::

    from lowprec.study.solvers import SOLVERS, SolverConfig, default_solver

    solver = default_solver("cifar10_quick")          # SolverConfig
    opt = solver.make_optimizer(model)                 # SGD with Caffe's per-parameter multipliers
    sched = solver.make_scheduler(opt, total_iterations=5000)

:data:`SOLVERS` holds the study's reference training setup per model as a :class:`SolverConfig`
(SGD; learning-rate steps are *fractions of the run* so shorter runs scale).  Each also names the
data normalisation and augmentation it was designed for.  Caffe's two CIFAR nets are trained on
mean-subtracted 0-255 pixels (``normalize="caffe"``) with lr 0.001; with ``normalize="standard"``
the inputs are about 60 times smaller and that learning rate is likely far too low: retune it
(or keep the paired ``"caffe"`` normalisation, the default pairing here).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["SOLVERS", "SolverConfig", "default_solver"]




@dataclass(frozen=True)
class SolverConfig:
    """A model's reference training setup (SGD with momentum, or AdamW, and step decay).

    ``lr_steps`` are fractions of the run: at iteration ``round(f * total_iterations)`` the
    learning rate is multiplied by ``gamma`` (Caffe's ``multistep``: iterations ``>=`` the
    boundary use the lower rate).  ``iterations`` is the reference run length; pass another
    ``total_iterations`` to scale the schedule.

    Per-parameter multipliers follow Caffe's ``param { lr_mult decay_mult }``: biases (1-D
    parameters named ``*.bias``) get ``bias_lr_mult`` and ``bias_decay_mult``; ``lr_mult`` and
    ``decay_mult`` map exact parameter names (``"ip1.weight"``) to overrides.  Weight decay is
    L2 added to the gradient, as in both Caffe and ``torch.optim.SGD``.  Note that PyTorch's
    momentum buffer holds unscaled gradients while Caffe's holds lr-scaled updates, so the two
    differ briefly right after a learning-rate step.

    ``optimizer="adamw"`` uses ``torch.optim.AdamW`` instead, with ``betas = (momentum, 0.99)``
    and *decoupled* weight decay (``θ ← θ - η λ θ`` besides the Adam step), per group as above.
    """

    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    iterations: int
    lr_steps: tuple[float, ...] = ()
    gamma: float = 0.1
    normalize: str = "standard"
    augment: bool = False
    nesterov: bool = False
    optimizer: str = "sgd"
    bias_lr_mult: float = 1.0
    bias_decay_mult: float = 1.0
    lr_mult: tuple[tuple[str, float], ...] = ()
    decay_mult: tuple[tuple[str, float], ...] = ()
    note: str = ""

    def replace(self, **changes: Any) -> SolverConfig:
        """Return a copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def step_iterations(self, total_iterations: int | None = None) -> tuple[int, ...]:
        """The iterations at which the learning rate drops, for a run of ``total_iterations``."""
        total = self.iterations if total_iterations is None else int(total_iterations)
        return tuple(round(f * total) for f in self.lr_steps)

    def lr_factor(self, iteration: int, total_iterations: int | None = None) -> float:
        """Multiplier of the base learning rate at 0-based ``iteration``."""
        drops = sum(1 for s in self.step_iterations(total_iterations) if iteration >= s)
        return float(self.gamma**drops)

    def lr_at(self, iteration: int, total_iterations: int | None = None) -> float:
        """Base learning rate at 0-based ``iteration`` of a run of ``total_iterations``."""
        return self.lr * self.lr_factor(iteration, total_iterations)

    def epochs(self, train_size: int, total_iterations: int | None = None) -> float:
        """How many epochs a run of ``total_iterations`` makes on ``train_size`` images."""
        total = self.iterations if total_iterations is None else int(total_iterations)
        return total * self.batch_size / train_size

    def multipliers(self, name: str, param: torch.Tensor) -> tuple[float, float]:
        """``(lr_mult, decay_mult)`` for the parameter called ``name``."""
        is_bias = name.endswith("bias") and param.ndim == 1
        lr_m = self.bias_lr_mult if is_bias else 1.0
        dec_m = self.bias_decay_mult if is_bias else 1.0
        lr_m = dict(self.lr_mult).get(name, lr_m)
        dec_m = dict(self.decay_mult).get(name, dec_m)
        return lr_m, dec_m

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Optimizer parameter groups with the per-parameter multipliers applied.

        Each group has ``params``, ``lr``, ``weight_decay`` and, for reference, ``names``,
        ``lr_mult`` and ``decay_mult``.  Raises ``ValueError`` if an override names no
        parameter of ``model``.
        """
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        known = {n for n, _ in named}
        unknown = sorted({n for n, _ in (*self.lr_mult, *self.decay_mult)} - known)
        if unknown:
            raise ValueError(f"solver overrides name unknown parameters: {unknown}")
        groups: dict[tuple[float, float], dict[str, Any]] = {}
        for name, p in named:
            lr_m, dec_m = self.multipliers(name, p)
            g = groups.setdefault(
                (lr_m, dec_m),
                {
                    "params": [],
                    "names": [],
                    "lr": self.lr * lr_m,
                    "weight_decay": self.weight_decay * dec_m,
                    "lr_mult": lr_m,
                    "decay_mult": dec_m,
                },
            )
            g["params"].append(p)
            g["names"].append(name)
        return list(groups.values())

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """``torch.optim.SGD`` (or ``AdamW``) over :meth:`param_groups` with this momentum."""
        if self.optimizer == "adamw":
            return torch.optim.AdamW(self.param_groups(model), lr=self.lr,
                                     betas=(self.momentum, 0.99))
        if self.optimizer != "sgd":
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        return torch.optim.SGD(
            self.param_groups(model), lr=self.lr, momentum=self.momentum, nesterov=self.nesterov
        )

    def make_scheduler(
        self, optimizer: torch.optim.Optimizer, total_iterations: int | None = None
    ) -> torch.optim.lr_scheduler.LambdaLR:
        """Per-iteration step schedule (call ``scheduler.step()`` after every optimizer step)."""
        total = self.iterations if total_iterations is None else int(total_iterations)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: self.lr_factor(it, total))


_CAFFE_NOTE = (
    "Caffe recipe: mean-subtracted 0-255 pixels (normalize='caffe'), no augmentation, biases "
    "with lr_mult 2. With normalize='standard' inputs are ~60x smaller; retune lr."
)

SOLVERS: dict[str, SolverConfig] = {
    # cifar10_quick_solver.prototxt (4000 it at 0.001) + cifar10_quick_solver_lr1 (to 5000 at 1e-4)
    "cifar10_quick": SolverConfig(
        lr=0.001,
        momentum=0.9,
        weight_decay=0.004,
        batch_size=100,
        iterations=5000,
        lr_steps=(4000 / 5000,),
        normalize="caffe",
        augment=False,
        bias_lr_mult=2.0,
        note=_CAFFE_NOTE,
    ),
    # cifar10_full_solver{,_lr1,_lr2}.prototxt: 0.001 to 60k, 1e-4 to 65k, 1e-5 to 70k.
    # Prototxt multipliers: conv3 has none (bias lr_mult 1), ip1 weight decay_mult 250,
    # ip1 bias decay_mult 0.
    "cifar10_full": SolverConfig(
        lr=0.001,
        momentum=0.9,
        weight_decay=0.004,
        batch_size=100,
        iterations=70000,
        lr_steps=(60000 / 70000, 65000 / 70000),
        normalize="caffe",
        augment=False,
        bias_lr_mult=2.0,
        lr_mult=(("conv3.bias", 1.0),),
        decay_mult=(("ip1.weight", 250.0), ("ip1.bias", 0.0)),
        note=_CAFFE_NOTE,
    ),
    # He et al. 2016, sec. 4.2: lr 0.1, /10 at 32k and 48k, stop at 64k; batch 128.
    "resnet20": SolverConfig(
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        batch_size=128,
        iterations=64000,
        lr_steps=(0.5, 0.75),
        normalize="standard",
        augment=True,
        note="He et al. 2016: per-channel normalised inputs, 4-pixel pad + crop + flip.",
    ),
    "small_cnn": SolverConfig(
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        batch_size=64,
        iterations=300,
        normalize="standard",
        augment=False,
        note="Quick runs: digits reach >90% test accuracy within a few epochs.",
    ),
    # nanoGPT's shakespeare_char setup scaled down: AdamW, betas (0.9, 0.99), decay 0.1
    # (not on biases); about 3.5 epochs of the fortunes corpus in 64-character windows.
    "gpt_tiny": SolverConfig(
        lr=2e-3,
        momentum=0.9,
        weight_decay=0.1,
        batch_size=64,
        iterations=2000,
        lr_steps=(0.75,),
        normalize="none",
        optimizer="adamw",
        bias_decay_mult=0.0,
        note="Char-level LM: AdamW; inputs are token ids (no normalisation).",
    ),
}


def default_solver(name: str) -> SolverConfig:
    """The reference :class:`SolverConfig` for model ``name`` (see :data:`SOLVERS`)."""
    key = name.strip().lower().replace("-", "_")
    if key not in SOLVERS:
        raise ValueError(f"no solver for model {name!r}; known: {', '.join(SOLVERS)}")
    return SOLVERS[key]
