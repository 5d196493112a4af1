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
``gpt_tiny``
    A character-level GPT (:mod:`lowprec.study.gpt`): tied token embedding / LM head, learned
    positions, pre-LayerNorm blocks of causal self-attention and a GELU MLP.  Options
    ``vocab_size`` (``num_classes`` stands for it), ``block_size`` (context), ``d_model``,
    ``n_layers``, ``n_heads``, ``attention="sdpa"|"matmul"``; defaults 128 wide, 2 layers,
    4 heads, 64 tokens: 417,792 parameters for a 100-character vocabulary.  It maps token ids
    [B,T] to next-token logits [B,T,vocab]; :data:`LANGUAGE_MODELS` lists such models.

Solvers
-------
The reference training setups (:data:`SOLVERS`, :class:`SolverConfig`, :func:`default_solver`)
live in :mod:`lowprec.study.solvers` and are re-exported here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .gpt import gpt_tiny
from .solvers import SOLVERS, SolverConfig, default_solver

__all__ = [
    "LANGUAGE_MODELS",
    "MODELS",
    "SOLVERS",
    "BasicBlock",
    "CifarResNet",
    "ShortcutA",
    "SolverConfig",
    "WithinChannelLRN",
    "build_model",
    "check_inputs",
    "cifar10_full",
    "cifar10_quick",
    "build_for_data",
    "default_solver",
    "gpt_tiny",
    "resnet20",
    "small_cnn",
]

MODELS: dict[str, str] = {
    "cifar10_quick": "Caffe's cifar10_quick: 3 conv (32-32-64, 5x5) + 2 fc, ~146k parameters",
    "cifar10_full": "Caffe's cifar10_full: 3 conv (32-32-64, 5x5) + 2 LRN + 1 fc, ~90k parameters",
    "resnet20": "CIFAR ResNet-20 (He et al. 2016): 3x3 basic blocks, BN, option-A shortcuts, ~270k",
    "small_cnn": "small fast CNN (conv16-pool-conv32-avgpool4-fc) for digits and quick runs, ~11k",
    "gpt_tiny": "char-level GPT: d 128, 2 pre-LN blocks, 4 heads, context 64, tied head, ~0.4M",
}

#: models over token ids [B,T] -> logits [B,T,vocab] (the others take images [B,C,H,W])
LANGUAGE_MODELS: frozenset[str] = frozenset({"gpt_tiny"})

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
    "gpt_tiny": gpt_tiny,
}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def build_model(
    name: str,
    num_classes: int | None = None,
    in_channels: int | None = None,
    image_size: ImageSize | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build one of :data:`MODELS` (freshly initialised; seed with ``torch.manual_seed``).

    Args:
        name: a key of :data:`MODELS` (``-`` and ``_`` are interchangeable).
        num_classes: output classes (default 10); for a language model, its vocabulary size
            (the classes of the next token; ``vocab_size=`` says the same).
        in_channels: input channels (default 3; 1 for Fashion-MNIST and digits); image models.
        image_size: input height/width (int) or ``(H, W)`` (default 32); image models.
        **kwargs: model options: ``lrn=`` for ``cifar10_full``, ``shortcut=`` for ``resnet20``,
            ``vocab_size``, ``block_size``, ``d_model``, ``n_layers``, ``n_heads``,
            ``attention`` for ``gpt_tiny``.
    """
    key = _key(name)
    if key not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    if key in LANGUAGE_MODELS:
        if in_channels is not None or image_size is not None:
            raise ValueError(f"{key} reads token ids, not images: give vocab_size= (or "
                             "num_classes=) and block_size=, not in_channels/image_size")
        if num_classes is not None and kwargs.setdefault("vocab_size", num_classes) != num_classes:
            raise ValueError(f"num_classes {num_classes} and vocab_size "
                             f"{kwargs['vocab_size']} disagree")
        return _BUILDERS[key](**kwargs)
    return _BUILDERS[key](
        num_classes=10 if num_classes is None else num_classes,
        in_channels=3 if in_channels is None else in_channels,
        image_size=32 if image_size is None else image_size,
        **kwargs,
    )


def check_inputs(name: str, input_shape: tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless model ``name`` reads inputs of this shape: ``(C,H,W)``
    images for the image models, ``(T,)`` token windows for :data:`LANGUAGE_MODELS`."""
    language = _key(name) in LANGUAGE_MODELS
    if language != (len(input_shape) == 1):
        kind = "token windows (--dataset text)" if language else "images"
        raise ValueError(f"model {name!r} takes {kind}; this data set has inputs of shape "
                         f"{tuple(input_shape)}")


def build_for_data(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Build model ``name`` for a data set's ``num_classes`` and one input's shape
    (:func:`check_inputs`); a language model gets ``vocab_size = num_classes`` and
    ``block_size = T``."""
    check_inputs(name, input_shape)
    if len(input_shape) == 1:
        return build_model(name, num_classes, block_size=int(input_shape[0]))
    c, h, w = input_shape
    return build_model(name, num_classes, c, (h, w))
