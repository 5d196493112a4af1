"""The study's networks and their reference solvers.

Public API::

    from lowprec.models import build_model, MODELS, SOLVERS, default_solver

    model = build_model("cifar10_quick", num_classes=10, in_channels=3, image_size=32)
    solver = default_solver("cifar10_quick")          # SolverConfig
    opt = solver.make_optimizer(model)                 # SGD with Caffe's per-parameter multipliers
    sched = solver.make_scheduler(opt, total_iterations=5000)

Every network is built from named submodules (``conv1``, ``pool1``, ``relu1``, ..., ``ip1``) so
per-layer recipe overrides can address them by the names :meth:`torch.nn.Module.named_modules`
reports (for ResNet-20: ``conv1``, ``layer2.0.conv1``, ``fc`` ...).  Each ReLU is its own module
instance.  Every builder takes ``num_classes``, ``in_channels`` and ``image_size`` (an int or an
``(H, W)`` pair); flatten sizes are found with a dry run, so all models also accept 1x28x28
Fashion-MNIST images (and ``small_cnn`` 1x8x8 digits).

Models
------
``cifar10_quick``
    Caffe's ``examples/cifar10/cifar10_quick_train_test.prototxt``: conv1 (32, 5x5, pad 2) ->
    max-pool 3/2 -> ReLU -> conv2 (32, 5x5, pad 2) -> ReLU -> avg-pool 3/2 -> conv3 (64, 5x5,
    pad 2) -> ReLU -> avg-pool 3/2 -> ip1 (64) -> ip2 (classes).  As in Caffe there is **no**
    nonlinearity between ip1 and ip2.  Pools use ``ceil_mode=True`` like Caffe, giving 16, 8 and
    4 pixels for a 32-pixel input (PyTorch's divisor for partial windows at the border matches
    Caffe's: only in-image cells count).  Init: Gaussian std 1e-4 (conv1), 0.01 (conv2, conv3),
    0.1 (ip1, ip2); biases 0.  145,578 parameters for 3x32x32 input and 10 classes.
``cifar10_full``
    Caffe's ``cifar10_full_train_test.prototxt``: conv1 (32) -> max-pool 3/2 -> ReLU -> norm1 ->
    conv2 (32) -> ReLU -> avg-pool 3/2 -> norm2 -> conv3 (64) -> ReLU -> avg-pool 3/2 -> ip1
    (classes).  Init std 1e-4, 0.01, 0.01, 0.01; biases 0.  89,578 parameters.
    LRN: Caffe uses ``local_size 3, alpha 5e-5, beta 0.75, norm_region WITHIN_CHANNEL`` (a 3x3
    spatial neighbourhood in each channel).  By default we use ``nn.LocalResponseNorm(3, 5e-5,
    0.75, k=1)``, which normalises over 3 neighbouring *channels* at the same pixel instead;
    with alpha = 5e-5 both are within a fraction of a percent of the identity for normalised
    inputs, but they are different functions.  ``build_model("cifar10_full", lrn="within")``
    gives Caffe's exact within-channel form (:class:`WithinChannelLRN`).
``resnet20``
    He et al. (2016) CIFAR ResNet with n=3: a 3x3 16-channel stem, three stages of three basic
    blocks (16, 32, 64 channels; stride 2 at the start of stages 2 and 3), BatchNorm, global
    average pool, fc.  Shortcuts are option **A** by default, as the paper used for CIFAR:
    identity, with stride-2 subsampling and zero-padded extra channels when the shape changes
    (parameter-free; 269,722 parameters).  ``shortcut="B"`` uses 1x1 conv + BN projections
    there instead (272,474 parameters).  Init: Kaiming normal (``fan_out``, ReLU gain) for
    convs as in fb.resnet.torch/torchvision, BN weight 1 / bias 0, fc PyTorch default weights
    and zero bias.
``small_cnn``
    A small fast CNN for tests and ``--quick`` runs: conv1 (16, 3x3, pad 1) -> ReLU ->
    max-pool 2 -> conv2 (32, 3x3, pad 1) -> ReLU -> adaptive avg-pool to 4x4 -> fc (classes).
    9,930 parameters for 1-channel input and 10 classes.  PyTorch default init.

Solvers
-------
:data:`SOLVERS` holds the study's reference training setup per model as a :class:`SolverConfig`
(SGD; learning-rate steps are *fractions of the run* so shorter runs scale).  Each also names the
data normalisation and augmentation it was designed for.  Caffe's two CIFAR nets are trained on
mean-subtracted 0-255 pixels (``normalize="caffe"``) with lr 0.001; with ``normalize="standard"``
the inputs are about 60 times smaller and that learning rate is likely far too low: retune it
(or keep the paired ``"caffe"`` normalisation, the default pairing here).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MODELS",
    "SOLVERS",
    "BasicBlock",
    "CifarResNet",
    "ShortcutA",
    "SolverConfig",
    "WithinChannelLRN",
    "build_model",
    "cifar10_full",
    "cifar10_quick",
    "default_solver",
    "resnet20",
    "small_cnn",
]

MODELS: dict[str, str] = {
    "cifar10_quick": "Caffe's cifar10_quick: 3 conv (32-32-64, 5x5) + 2 fc, ~146k parameters",
    "cifar10_full": "Caffe's cifar10_full: 3 conv (32-32-64, 5x5) + 2 LRN + 1 fc, ~90k parameters",
    "resnet20": "CIFAR ResNet-20 (He et al. 2016): 3x3 basic blocks, BN, option-A shortcuts, ~270k",
    "small_cnn": "small fast CNN (conv16-pool-conv32-avgpool4-fc) for digits and quick runs, ~11k",
}

ImageSize = int | tuple[int, int]


def _hw(image_size: ImageSize) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def _dry_run_features(layers: Iterable[nn.Module], in_channels: int, image_size: ImageSize) -> int:
    """Return the flattened feature size after ``layers`` for one input image."""
    h, w = _hw(image_size)
    x = torch.zeros(1, in_channels, h, w)
    try:
        with torch.no_grad():
            for layer in layers:
                x = layer(x)
    except RuntimeError as exc:
        raise ValueError(f"input {in_channels}x{h}x{w} is too small for this model: {exc}") from exc
    if x.numel() == 0:
        raise ValueError(f"input {in_channels}x{h}x{w} is too small for this model")
    return int(x[0].numel())


def _gaussian_(module: nn.Conv2d | nn.Linear, std: float) -> None:
    """Caffe's ``gaussian`` weight filler with ``constant`` (0) bias filler."""
    nn.init.normal_(module.weight, mean=0.0, std=std)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class WithinChannelLRN(nn.Module):
    """Caffe's LRN with ``norm_region: WITHIN_CHANNEL``.

    ``y = x * (1 + alpha * avg_{size x size}(x^2)) ** -beta``, the average taken over a
    zero-padded ``size x size`` spatial window of the same channel, padding counted in the
    divisor (Caffe builds it from an AVE pooling layer with pad ``(size-1)/2``).
    """

    def __init__(self, size: int = 3, alpha: float = 5e-5, beta: float = 0.75) -> None:
        """Store the window size (odd), ``alpha`` and ``beta``."""
        super().__init__()
        if size % 2 != 1:
            raise ValueError("size must be odd")
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` [B,C,H,W]."""
        pad = (self.size - 1) // 2
        avg = F.avg_pool2d(x * x, self.size, stride=1, padding=pad, count_include_pad=True)
        return x * (1.0 + self.alpha * avg).pow(-self.beta)

    def extra_repr(self) -> str:
        """Show the parameters."""
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}"


def _lrn(kind: str) -> nn.Module:
    if kind == "across":
        return nn.LocalResponseNorm(3, alpha=5e-5, beta=0.75, k=1.0)
    if kind == "within":
        return WithinChannelLRN(3, alpha=5e-5, beta=0.75)
    raise ValueError(f"lrn must be 'across' or 'within', got {kind!r}")


def cifar10_quick(
    num_classes: int = 10, in_channels: int = 3, image_size: ImageSize = 32
) -> nn.Sequential:
    """Caffe's ``cifar10_quick`` (see the module docstring)."""
    feats: OrderedDict[str, nn.Module] = OrderedDict(
        [
            ("conv1", nn.Conv2d(in_channels, 32, 5, padding=2)),
            ("pool1", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
            ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(32, 32, 5, padding=2)),
            ("relu2", nn.ReLU()),
            ("pool2", nn.AvgPool2d(3, stride=2, ceil_mode=True)),
            ("conv3", nn.Conv2d(32, 64, 5, padding=2)),
            ("relu3", nn.ReLU()),
            ("pool3", nn.AvgPool2d(3, stride=2, ceil_mode=True)),
        ]
    )
    flat = _dry_run_features(feats.values(), in_channels, image_size)
    feats["flatten"] = nn.Flatten()
    feats["ip1"] = nn.Linear(flat, 64)
    feats["ip2"] = nn.Linear(64, num_classes)
    model = nn.Sequential(feats)
    for name, std in (
        ("conv1", 1e-4),
        ("conv2", 0.01),
        ("conv3", 0.01),
        ("ip1", 0.1),
        ("ip2", 0.1),
    ):
        _gaussian_(getattr(model, name), std)
    return model


def cifar10_full(
    num_classes: int = 10, in_channels: int = 3, image_size: ImageSize = 32, lrn: str = "across"
) -> nn.Sequential:
    """Caffe's ``cifar10_full``; ``lrn="across"`` (default) or ``"within"`` (Caffe-exact)."""
    feats: OrderedDict[str, nn.Module] = OrderedDict(
        [
            ("conv1", nn.Conv2d(in_channels, 32, 5, padding=2)),
            ("pool1", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
            ("relu1", nn.ReLU()),
            ("norm1", _lrn(lrn)),
            ("conv2", nn.Conv2d(32, 32, 5, padding=2)),
            ("relu2", nn.ReLU()),
            ("pool2", nn.AvgPool2d(3, stride=2, ceil_mode=True)),
            ("norm2", _lrn(lrn)),
            ("conv3", nn.Conv2d(32, 64, 5, padding=2)),
            ("relu3", nn.ReLU()),
            ("pool3", nn.AvgPool2d(3, stride=2, ceil_mode=True)),
        ]
    )
    flat = _dry_run_features(feats.values(), in_channels, image_size)
    feats["flatten"] = nn.Flatten()
    feats["ip1"] = nn.Linear(flat, num_classes)
    model = nn.Sequential(feats)
    for name, std in (("conv1", 1e-4), ("conv2", 0.01), ("conv3", 0.01), ("ip1", 0.01)):
        _gaussian_(getattr(model, name), std)
    return model


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad the extra channels (no params)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        """Map ``in_planes`` channels to ``planes`` (>= in_planes) with spatial ``stride``."""
        super().__init__()
        if planes < in_planes:
            raise ValueError("option-A shortcut cannot reduce channels")
        self.stride = stride
        extra = planes - in_planes
        self.pad_lo, self.pad_hi = extra // 2, extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subsample and pad channels."""
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad_lo or self.pad_hi:
            x = F.pad(x, (0, 0, 0, 0, self.pad_lo, self.pad_hi))
        return x

    def extra_repr(self) -> str:
        """Show the configuration."""
        return f"stride={self.stride}, pad_channels=({self.pad_lo}, {self.pad_hi})"


class BasicBlock(nn.Module):
    """Basic block: ``relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A") -> None:
        """Build the block; ``shortcut`` is ``"A"`` (pad) or ``"B"`` (1x1 conv projection)."""
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module
        if stride == 1 and in_planes == planes:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = ShortcutA(in_planes, planes, stride)
        elif shortcut == "B":
            self.shortcut = nn.Sequential(
                OrderedDict(
                    [
                        ("conv", nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)),
                        ("bn", nn.BatchNorm2d(planes)),
                    ]
                )
            )
        else:
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al. (2016) CIFAR ResNet of depth ``6n+2`` (20, 32, 44, 56, 110, ...)."""

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut: str = "A",
        widths: tuple[int, int, int] = (16, 32, 64),
    ) -> None:
        """Build the network; ``depth`` must be ``6n+2``."""
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"depth must be 6n+2 (20, 32, 44, 56, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu1 = nn.ReLU()
        in_planes = widths[0]
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[2], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class scores [B, num_classes]."""
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def resnet20(
    num_classes: int = 10, in_channels: int = 3, image_size: ImageSize = 32, shortcut: str = "A"
) -> CifarResNet:
    """CIFAR ResNet-20 (option-A shortcuts by default); any image size >= 8 works."""
    h, w = _hw(image_size)
    if min(h, w) < 4:
        raise ValueError(f"resnet20 needs images of at least 4x4, got {h}x{w}")
    return CifarResNet(20, num_classes, in_channels, shortcut)


def small_cnn(
    num_classes: int = 10, in_channels: int = 1, image_size: ImageSize = 8
) -> nn.Sequential:
    """Small fast CNN for 8x8 digits and 28x28 inputs (see the module docstring)."""
    h, w = _hw(image_size)
    if min(h, w) < 2:
        raise ValueError(f"small_cnn needs images of at least 2x2, got {h}x{w}")
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(in_channels, 16, 3, padding=1)),
                ("relu1", nn.ReLU()),
                ("pool1", nn.MaxPool2d(2)),
                ("conv2", nn.Conv2d(16, 32, 3, padding=1)),
                ("relu2", nn.ReLU()),
                ("pool2", nn.AdaptiveAvgPool2d(4)),
                ("flatten", nn.Flatten()),
                ("fc", nn.Linear(32 * 4 * 4, num_classes)),
            ]
        )
    )


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "cifar10_quick": cifar10_quick,
    "cifar10_full": cifar10_full,
    "resnet20": resnet20,
    "small_cnn": small_cnn,
}


def build_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: ImageSize = 32,
    **kwargs: Any,
) -> nn.Module:
    """Build one of :data:`MODELS` (freshly initialised; seed with ``torch.manual_seed``).

    Args:
        name: a key of :data:`MODELS` (``-`` and ``_`` are interchangeable).
        num_classes: output classes.
        in_channels: input channels (3 for CIFAR-10, 1 for Fashion-MNIST and digits).
        image_size: input height/width (int) or ``(H, W)``.
        **kwargs: model options: ``lrn=`` for ``cifar10_full``, ``shortcut=`` for ``resnet20``.
    """
    key = name.strip().lower().replace("-", "_")
    if key not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return _BUILDERS[key](
        num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs
    )


# ---------------------------------------------------------------------------------------------
# Solvers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SolverConfig:
    """A model's reference training setup (plain SGD with momentum and step decay).

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

    def make_optimizer(self, model: nn.Module) -> torch.optim.SGD:
        """``torch.optim.SGD`` over :meth:`param_groups` with this momentum."""
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
}


def default_solver(name: str) -> SolverConfig:
    """The reference :class:`SolverConfig` for model ``name`` (see :data:`SOLVERS`)."""
    key = name.strip().lower().replace("-", "_")
    if key not in SOLVERS:
        raise ValueError(f"no solver for model {name!r}; known: {', '.join(SOLVERS)}")
    return SOLVERS[key]
