"""Train any PyTorch model in emulated low precision by applying a :class:`~lowprec.Recipe`.

``prepare(model, recipe)`` hooks every layer of a registered type (``nn.Linear``,
``nn.Conv1d/2d/3d``; :func:`register_layer` adds more) without touching the model's
code, parameter objects or ``state_dict`` keys; ``wrap_optimizer(opt)`` hooks
``opt.step()``. Write ``Q_c`` for rounding with the layer's spec of class ``c``
(:meth:`Recipe.for_layer`; identity where the spec is ``None``). For a prepared layer
``y = f(x; θ)`` (``θ``: its own parameters, weight and bias) a training step is::

    forward    θ ← Q_weight(θ)   in place, before the layer runs (forward-pre-hook)
               ŷ = Q_activation(f(x; θ))   returned instead of the output (forward hook)
    backward   ĝ = Q_error(∂L/∂ŷ); the layer's own backward then uses ĝ for both
               ∂L/∂x = J_x^T ĝ  and  ∂L/∂θ = J_θ^T ĝ
    step       G = Q_weight_grad(∂L/∂θ)   (p.grad, before the optimizer; step-pre-hook)
               θ', s' = step(θ, G, s)     (SGD: v' = μ v + G + λ θ, θ' = θ - η v';
                                           Adam: m', v' moments of G + λ θ, ...)
               θ ← Q_weight(Q_update(θ')),  s ← Q_update(s')   (step-post-hook)

``s`` is every floating tensor of ``optimizer.state[p]`` shaped like ``p``
(``momentum_buffer``, ``exp_avg``, ``exp_avg_sq``, ...). With ``Q_update`` = ``None``
the stored weights get ``Q_weight`` alone; with both equal it is applied once. So after
``opt.step()`` every parameter of a prepared layer is representable in its weight
format (the study: no fp32 copy exists), and the forward-pre-hook rounds only
parameters changed since (their version counter moved: e.g. ``load_state_dict``).

With ``master_weights=True`` an fp32 master ``m`` is kept per parameter and the
parameter tensor holds ``w = Q_weight(m)``, as mixed precision does: the step runs on
``m`` (its ``.data`` is swapped in around ``step()``, so the optimizer state stays
attached to the same parameter), using the gradient taken at ``w``::

    m ← Q_update(step(m, G)),  w ← Q_weight(m)

``state_dict`` then reports ``m`` under the usual keys; a working copy changed from
outside (``load_state_dict``, an unwrapped optimizer, an in-place edit) is taken as the
new ``m`` and rounded again. Move the model to its device before :func:`prepare`.

A layer whose input values and errors are all powers of two (``pot7``: activations of
the previous layer, after ReLU / max-pool, and errors are ``0`` or ``±2**e``) needs no
multiplier: each product ``x_i w_ij = ±ldexp(w_ij, log2|x_i|)`` is an exponent shift of
the other operand, exactly (forward ``x·w``, backward ``ĝ·w`` and ``ĝ·x``), barring
over/underflow of float32. An average pool between two layers breaks this (it divides by
the window size), and the ``pot7`` preset keeps the last layer's output (the logits) fp32.
Rounding applies in evaluation too: a prepared model computes in the recipe's arithmetic
(stochastic modes included) until :func:`unprepare`.

Stochastic rounding draws its seeds from one CPU ``torch.Generator`` per prepared model,
seeded with ``seed``: the kernel hashes ``(seed, element index)`` on the tensor's own
device, so a CPU generator serves every device without a device sync per rounding and a
run is reproducible (same model, data and order of calls). Under data parallelism
(``prepare(..., rank=r)``, see :mod:`lowprec.distributed`) every rank draws the same
sequence from that generator, but the data-dependent classes (:data:`PER_RANK`:
activations, errors) round with a per-rank stream: each such stochastic rounding draws
one word ``u`` from the shared generator and rounds with :func:`keyed_generator` ``(u, r)``.
Weights, weight gradients and updates round with the shared generator itself, so ranks
holding the same values round them to the same bits. Telemetry: every rounding in
a recorded training pass (every ``telemetry_every``-th forward in training mode, and the
optimizer step after it; ``0``: never) adds a :class:`~lowprec.quantinfo.QuantInfo` to the
model's :class:`~lowprec.quantinfo.TelemetryLog` under ``"<layer>.<class>"`` (a layer's
weight and bias pool together; optimizer state: ``"<layer>.update.<state name>"``);
:func:`telemetry` returns its summary. Measuring costs float64 reductions over each
rounded tensor, in the rounding's own pass (1.4-2.4x that pass): the default records every
10th pass (:data:`TELEMETRY_EVERY`).

``torch.compile(model)`` of a model prepared with a module-level recipe traces its
roundings (forward and backward, scaled or not) into one graph, compiled once per input
shape, with the eager bits: the seeds come from the model's generator, in the same order,
through the opaque op ``lowprec::seed_words``. Compiled passes record no telemetry and do
not count as training passes; parameters changed outside the optimizer and
``load_state_dict`` are not re-rounded before a compiled forward. Op-level recipes
(keyed streams, block scaling) still break the graph at each rounding.
"""

from __future__ import annotations

import fnmatch
import functools
import itertools
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..numerics.cast import register_generator, unregister_generator
from ..numerics.telemetry import TelemetryLog
from . import recipes
from .intercept import OpRun, _with_axis
from .packing import PackHook
from .quantizer import Quantizer, keyed_generator
from .recipe import POSITIONS, QuantSpec, Recipe

__all__ = [
    "PER_RANK",
    "coverage",
    "keyed_generator",
    "layer_types",
    "load_rounding_state",
    "prepare",
    "register_layer",
    "rounding_state",
    "telemetry",
    "training_passes",
    "unprepare",
    "wrap_optimizer",
]

_LAYER_TYPES: list[type[nn.Module]] = [nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d]
_ATTR = "_lowprec_run"  # attribute of a prepared model holding its _Run
_OWNERS: weakref.WeakValueDictionary[int, _Layer] = weakref.WeakValueDictionary()
#: the data-dependent tensor classes: stochastic rounding streams differ per rank
PER_RANK = ("activation", "error", "input")
#: ``prepare``'s default ``telemetry_every``, module- and op-level alike (the CLI's too):
#: recording every pass costs 0.3-0.4x an fp32 step of cifar10_quick and more of a GPT's
#: (benchmarks/train_step.py, gpt_step.py)
TELEMETRY_EVERY = 10
def register_layer(cls: type[nn.Module]) -> type[nn.Module]:
    """Have :func:`prepare` quantize layers of type ``cls`` (also usable as a decorator).

    The layer's own parameters are its weights and its outputs (tensors that its
    backward does not save; each floating tensor of a returned tuple, e.g.
    ``nn.MultiheadAttention``'s or ``nn.LSTM``'s) its activations. Global: prefer
    ``prepare(..., layers=[cls])``, which adds ``cls`` for that call only.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_layer expects an nn.Module subclass, got {cls!r}")
    if cls not in _LAYER_TYPES:
        _LAYER_TYPES.append(cls)
    return cls


def layer_types() -> tuple[type[nn.Module], ...]:
    """The layer types :func:`prepare` quantizes."""
    return tuple(_LAYER_TYPES)


class _Run:
    """Per-model state: recipe, seed generator, rank, telemetry and the pass counter."""

    def __init__(self, recipe: Recipe, seed: int, telemetry_every: int,
                 rank: int | None) -> None:
        self.recipe = recipe
        self.generator = register_generator(torch.Generator().manual_seed(seed))
        self.rank = rank
        self.log = TelemetryLog()
        self.every = telemetry_every
        self.passes = 0
        self.recording = False
        self.layers: list[_Layer] = []
        self.handles: list[Any] = []
        self.pack_hook: Any = None  # a packing.PackHook when saved tensors are packed
        self.ops: OpRun | None = None  # op-level recipes: the interception state

    def begin_pass(self, module: nn.Module, args: Any) -> None:
        """Root forward-pre-hook: decide whether this training pass is recorded. Inside a
        graph ``torch.compile`` traces nothing is recorded nor counted (a Python counter
        there would be a constant of the graph: one recompilation per pass)."""
        if torch.compiler.is_compiling():
            self.recording = False
            return
        self.recording = module.training and self.every > 0 and self.passes % self.every == 0
        self.passes += module.training

    def stream(self, per_rank: bool) -> torch.Generator:
        """The generator of one rounding: the shared one, or for a per-rank stochastic
        rounding under data parallelism ``keyed_generator(u, rank)``, ``u`` one draw from
        the shared one (so every rank draws the same sequence from it)."""
        if not per_rank or self.rank is None:
            return self.generator
        u = int(torch.randint(2**62, (), generator=self.generator))
        return keyed_generator(u, self.rank)


class _Rounder(Quantizer):
    """A :class:`~lowprec.train.quantizer.Quantizer` of one (layer, class, tensor) drawing
    from its model's streams; ``per_rank``: a data-dependent class (:data:`PER_RANK`)."""

    def __init__(self, spec: QuantSpec, key: str, run: _Run, per_rank: bool) -> None:
        per_rank = per_rank and spec.rounding == "stochastic"
        super().__init__(spec, generator=lambda: run.stream(per_rank), log=run.log, key=key)
        self.run = run

    def __call__(self, x: torch.Tensor, record: bool | None = None,  # type: ignore[override]
                 out: torch.Tensor | None = None) -> torch.Tensor:
        """``Q(x)`` into ``out`` (may be ``x``) or a new tensor; telemetry is recorded if
        ``record`` (default: if this pass is recorded)."""
        return super().__call__(x, self.run.recording if record is None else record, out)


class _Layer:
    """One prepared layer: its specs, rounders, hooks and (master mode) fp32 masters."""

    def __init__(self, name: str, module: nn.Module, specs: dict[str, QuantSpec | None],
                 run: _Run) -> None:
        self.name, self.module, self.specs, self.run = name, module, specs, run
        self.rounders: dict[tuple[str, str], _Rounder | None] = {}
        self.clean: dict[str, tuple[int, int]] = {}  # name -> (version, data_ptr) once rounded
        self.masters: dict[str, torch.Tensor] = {}
        self.parked: dict[str, torch.Tensor] = {}
        self.names: dict[int, str] = {}
        self.axes: dict[str, int] = {}  # op level: a parameter's reduction axis (block scaling)
        self.own: set[str] | None = None  # op level: the parameters it owns (None: all)

    def params(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.module._parameters.items()
                if p is not None and (self.own is None or n in self.own))

    def bind(self) -> None:
        """(Re)register the layer as the owner of its parameter objects."""
        self.names = {id(p): n for n, p in self.params()}
        for i in self.names:
            _OWNERS[i] = self

    def rounder(self, cls: str, tensor: str, log: str = "") -> _Rounder | None:
        key = (cls, tensor)
        if key not in self.rounders:
            spec = self.specs[cls]
            if spec is not None and tensor in self.axes:
                spec = _with_axis(spec, self.axes[tensor])
            label = f"{self.name}.{cls}{'.' + log if log else ''}"
            self.rounders[key] = (None if spec is None
                                  else _Rounder(spec, label, self.run, cls in PER_RANK))
        return self.rounders[key]

    @torch.no_grad()
    def round_weight(self, name: str, p: torch.Tensor) -> None:
        """``p ← Q_weight(p)`` in place; or from the master ``w ← Q_weight(m)``."""
        w = self.rounder("weight", name)
        if w is None:
            return
        if name in self.masters:
            p.detach().copy_(w(self.masters[name]))
        else:
            w.inplace(p.detach())
        self.clean[name] = (p._version, p.data_ptr())

    @torch.no_grad()
    def sync(self) -> None:
        """Round the parameters changed since they were last rounded. With master weights a
        working copy changed from outside (``load_state_dict``, an unwrapped optimizer)
        becomes the new master. Not while ``torch.compile`` traces (no data pointers
        there): the optimizer hooks and ``load_state_dict`` round eagerly."""
        if torch.compiler.is_compiling():
            return
        for n, p in self.params():
            if self.clean.get(n) != (p._version, p.data_ptr()):
                if n in self.masters:
                    self.masters[n].copy_(p.detach())
                self.round_weight(n, p)

    def forward_pre_hook(self, module: nn.Module, args: Any) -> None:
        self.sync()

    def forward_hook(self, module: nn.Module, args: Any, out: Any) -> Any:
        """Every floating tensor the layer returns is an activation: a tensor, or the
        tensors of a (nested) tuple/list such as ``nn.MultiheadAttention``'s
        ``(output, weights)`` or ``nn.LSTM``'s ``(output, (h, c))``; the first is logged as
        ``<layer>.activation``, the i-th after it as ``<layer>.activation.out<i>``."""
        count = itertools.count()

        def round_all(o: Any) -> Any:
            if isinstance(o, torch.Tensor):
                if not o.is_floating_point():
                    return o
                i = next(count)
                tag = f"out{i}" if i else ""
                act, err = self.rounder("activation", tag, tag), self.rounder("error", tag, tag)
                return _RoundOutput.apply(o, act, err, self.run.recording)
            if isinstance(o, (tuple, list)) and not hasattr(o, "_fields"):
                return type(o)(round_all(e) for e in o)
            if o is None:
                return o
            raise TypeError(f"lowprec: layer {self.name!r} returned {type(o).__name__}; "
                            "a layer's outputs can be tensors or tuples/lists of them. Use an "
                            "op-level recipe (ops = [...]) to round inside such a layer")

        return round_all(out)

    @torch.no_grad()
    def before_step(self, name: str, p: nn.Parameter) -> None:
        g = self.rounder("weight_grad", name)
        if g is not None and p.grad is not None:
            g.inplace(p.grad)
        if name in self.masters:
            self.parked[name], p.data = p.data, self.masters[name]

    @torch.no_grad()
    def after_step(self, name: str, p: nn.Parameter, state: dict[str, Any]) -> None:
        u = self.rounder("update", name)
        if name in self.masters:
            p.data = self.parked.pop(name)
        if u is not None:
            u.inplace(self.masters.get(name, p.detach()))
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and v.is_floating_point() and v.shape == p.shape:
                    self.rounder("update", f"{name}.{k}", k).inplace(v)  # type: ignore[union-attr]
        if u is None or name in self.masters or u.spec != self.specs["weight"]:
            self.round_weight(name, p)
        else:
            self.clean[name] = (p._version, p.data_ptr())

    def state_dict_hook(self, module: nn.Module, sd: dict[str, Any], prefix: str,
                        meta: Any) -> None:
        for n, m in self.masters.items():
            sd[prefix + n] = m  # shares storage, as state_dict does with parameters

    def load_post_hook(self, module: nn.Module, incompatible: Any) -> None:
        self.bind()  # load_state_dict(assign=True) brings new parameter objects
        self.sync()


class _RoundOutput(torch.autograd.Function):
    """Forward ``ŷ = Q_activation(y)``; backward ``ĝ = Q_error(g)``."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, act: _Rounder | None, err: _Rounder | None,
                record: bool) -> torch.Tensor:
        ctx.err, ctx.record = err, record
        if act is not None:
            return act(y, record)
        ctx.mark_dirty(y)  # returned as is: dirty, not a view, so in-place ReLUs may follow
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.err is not None:
            g = ctx.err(g, ctx.record)  # a new tensor: g may be shared
        return g, None, None, None


def _run(model: nn.Module) -> _Run:
    run = model.__dict__.get(_ATTR)
    if run is None:
        raise ValueError("model is not prepared: call lowprec.prepare(model, recipe) first")
    return run


def prepare(model: nn.Module, recipe: Recipe | str, *, seed: int = 0,
            telemetry_every: int | None = None, pack: bool | None = None,
            rank: int | None = None, eval_rounding: str = "nearest",
            layers: Sequence[type[nn.Module]] = ()) -> nn.Module:
    """Quantize every layer of a registered type in ``model`` as ``recipe`` says; with an
    op-level recipe (``recipe.ops``), every op of a listed kind (:mod:`.intercept`).

    Args:
        model: any module; its code is not changed, only hooks are added.
        recipe: a :class:`~lowprec.Recipe` or a preset name (:func:`lowprec.recipes.names`).
        seed: seeds the model's generator for stochastic rounding.
        telemetry_every: record telemetry every N-th training forward pass (0: never);
            default :data:`TELEMETRY_EVERY` (10; the first pass is recorded).
        pack: store the tensors autograd saves for backward as their format's packed
            integer codes (:class:`~lowprec.packing.PackHook`; exact); default: ``recipe.pack``.
        rank: this process's rank under data parallelism: stochastic roundings of the
            :data:`PER_RANK` classes then use per-rank streams (module docstring); ``None``:
            a single process.
        eval_rounding: op-level recipes: ``"nearest"`` rounds stochastic specs to nearest
            while the model is in ``eval()`` mode (deterministic evaluation); ``"recipe"``
            keeps the recipe's modes.
        layers: module-level recipes: layer types quantized in this call besides
            ``nn.Linear``/``nn.Conv*`` and those of :func:`register_layer`.

    Returns ``model`` itself. Raises ``ValueError`` if it is already prepared, has no
    layer of a registered type, or an override glob matches no such layer.
    """
    recipe = recipes.resolve(recipe)
    if _ATTR in model.__dict__:
        raise ValueError("model is already prepared: call lowprec.unprepare(model) first")
    if telemetry_every is None:
        telemetry_every = TELEMETRY_EVERY
    if type(telemetry_every) is not int or telemetry_every < 0:
        raise ValueError(f"telemetry_every must be an int >= 0, got {telemetry_every!r}")
    if recipe.op_level:
        return _prepare_ops(model, recipe, seed, telemetry_every, pack, rank, eval_rounding)
    types = (*_LAYER_TYPES, *layers)
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, types)]
    if not found:
        names = ", ".join(t.__name__ for t in _LAYER_TYPES)
        raise ValueError(f"model has no layer of a registered type ({names})")
    unused = [g for g in recipe.overrides
              if g not in POSITIONS and not any(fnmatch.fnmatchcase(n, g) for n, _ in found)]
    if unused:
        raise ValueError(f"override(s) {unused} match no layer; layers: {[n for n, _ in found]}")
    run = _Run(recipe, seed, telemetry_every, rank)
    for i, (name, module) in enumerate(found):
        at = [pos for pos, hit in zip(POSITIONS, (i == 0, i == len(found) - 1), strict=True) if hit]
        specs = recipe.for_layer(name, at)
        if any(s is not None for s in specs.values()):
            run.layers.append(_attach(name or "model", module, specs, run))
    run.handles.append(model.register_forward_pre_hook(run.begin_pass, prepend=True))
    if recipe.pack if pack is None else pack:
        run.pack_hook = PackHook(recipe)
        run.handles += run.pack_hook.attach(model)
    model.__dict__[_ATTR] = run
    return model


def _prepare_ops(model: nn.Module, recipe: Recipe, seed: int, telemetry_every: int,
                 pack: bool | None, rank: int | None, eval_rounding: str) -> nn.Module:
    """:func:`prepare` for an op-level recipe: an :class:`~.intercept.OpRun` rounds ops;
    a module becomes a :class:`_Layer` when one of its parameters is first a product
    operand (one owner per parameter object: tied parameters have one master)."""
    names = [n for n, _ in model.named_modules()]
    unused = [g for g in recipe.overrides if not any(fnmatch.fnmatchcase(n, g) for n in names)]
    if unused:
        raise ValueError(f"override(s) {unused} match no module; modules: {names}")
    run = _Run(recipe, seed, telemetry_every, rank)
    owners: dict[int, tuple[str, nn.Module]] = {}
    for mname, m in model.named_modules():
        for p in m._parameters.values():
            if p is not None:
                owners.setdefault(id(p), (mname, m))

    def adopt(p: nn.Parameter, axis: int) -> bool:
        mname, module = owners.get(id(p), ("", None))
        specs = recipe.for_layer(mname)
        if module is None or specs["weight"] is None:
            return False
        layer = _Layer(mname or "model", module, specs, run)
        layer.own = {n for n, q in module._parameters.items()
                     if q is not None and owners[id(q)][1] is module and id(q) not in _OWNERS}
        layer.axes = {n: axis for n, q in module._parameters.items() if q is p}
        run.layers.append(layer)
        run.handles += _attach_params(layer, module, run, forward_hooks=False)
        return id(p) in layer.names

    def sync(p: nn.Parameter) -> None:
        _OWNERS[id(p)].sync()

    def master(p: nn.Parameter) -> torch.Tensor:
        layer = _OWNERS.get(id(p))
        return p if layer is None else layer.masters.get(layer.names.get(id(p), ""), p)

    ops = OpRun(recipe, run, seed, eval_rounding, adopt, sync)
    ops.master = master
    run.ops = ops
    run.handles.append(model.register_forward_pre_hook(run.begin_pass, prepend=True))
    run.handles += ops.attach(model)
    run.handles.append(model.register_state_dict_post_hook(
        functools.partial(_tied_masters, model)))
    if recipe.pack if pack is None else pack:
        run.pack_hook = PackHook(recipe)
        run.handles += run.pack_hook.attach(model)
    model.__dict__[_ATTR] = run
    return model


def _tied_masters(model: nn.Module, module: nn.Module, sd: dict[str, Any], prefix: str,
                  meta: Any) -> None:
    """Every key of a parameter with a master reports the master (tied keys included)."""
    for n, p in model.named_parameters(remove_duplicate=False):
        layer = _OWNERS.get(id(p))
        if layer is not None and layer.names.get(id(p)) in layer.masters and prefix + n in sd:
            sd[prefix + n] = layer.masters[layer.names[id(p)]]


def _attach(name: str, module: nn.Module, specs: dict[str, QuantSpec | None],
            run: _Run) -> _Layer:
    layer = _Layer(name, module, specs, run)
    run.handles += _attach_params(layer, module, run, forward_hooks=True)
    return layer


def _attach_params(layer: _Layer, module: nn.Module, run: _Run,
                   forward_hooks: bool) -> list[Any]:
    """Own, round (masters first) and hook the layer's parameters; returns the handles."""
    specs = layer.specs
    layer.bind()
    master = run.recipe.master_weights and specs["weight"] is not None
    for n, p in layer.params():
        if master:
            layer.masters[n] = p.detach().clone()
        layer.round_weight(n, p)
    if forward_hooks:  # made now, not at the first forward: torch.compile traces no dict
        for cls in ("activation", "error"):  # insertion (one recompile after the first step)
            layer.rounder(cls, "")
    hooks = [module.register_load_state_dict_post_hook(layer.load_post_hook)]
    if specs["weight"] is not None and forward_hooks:
        hooks.append(module.register_forward_pre_hook(layer.forward_pre_hook))
    if (specs["activation"] is not None or specs["error"] is not None) and forward_hooks:
        hooks.append(module.register_forward_hook(layer.forward_hook))
    if master:
        # partial: torch tags state_dict hooks with an attribute, which bound methods refuse
        hook = functools.partial(_Layer.state_dict_hook, layer)
        hooks.append(module.register_state_dict_post_hook(hook))
    return hooks


def unprepare(model: nn.Module) -> nn.Module:
    """Remove every hook :func:`prepare` added; master mode restores the fp32 masters."""
    run = _run(model)
    for h in run.handles:
        h.remove()
    for layer in run.layers:
        for n, p in layer.params():
            if n in layer.masters:
                p.data = layer.masters[n]
        for i in layer.names:
            _OWNERS.pop(i, None)
    unregister_generator(run.generator)
    del model.__dict__[_ATTR]
    return model


def coverage(model: nn.Module) -> list[dict[str, Any]]:
    """What a prepared model rounded (op-level recipes; run a step first): one entry per
    op executed (module, op and its position in the module's call, kind, calls) with
    ``rounded``: class -> format name (``input``, ``weight``, ``activation``, ``error``)
    and ``product``: whether it is a product. A product with no ``input`` nor ``weight``
    entry ran unrounded. A module-level recipe reports its layers' classes."""
    run = _run(model)
    if run.ops is not None:
        return run.ops.coverage()
    return [{"module": la.name, "op": type(la.module).__name__, "kind": "layer",
             "product": True, "calls": run.passes,
             "rounded": {c: s.format.name for c, s in la.specs.items() if s is not None}}
            for la in run.layers]


def rounding_state(model: nn.Module) -> dict[str, Any]:
    """What a checkpoint needs to continue a prepared model's roundings bit for bit: the
    stochastic-rounding generator's state and the training-pass counter (telemetry)."""
    run = _run(model)
    return {"generator": run.generator.get_state(), "passes": run.passes}


def load_rounding_state(model: nn.Module, state: dict[str, Any]) -> None:
    """Restore :func:`rounding_state`."""
    run = _run(model)
    run.generator.set_state(state["generator"])
    run.passes = int(state["passes"])


def training_passes(model: nn.Module) -> int:
    """Training-mode forward passes of a prepared model since :func:`prepare` (restored by
    :func:`load_rounding_state`): during a training step, that step's 1-based number."""
    return _run(model).passes


def telemetry(model: nn.Module, reset: bool = False) -> dict[str, dict[str, float]]:
    """Per ``"<layer>.<class>"``: :meth:`TelemetryLog.summary` of the recorded roundings
    (underflow, overflow, SQNR, amax, ...) since prepare or the last reset; ``reset``
    then forgets them (e.g. once per epoch)."""
    log = _run(model).log
    summary = log.summary()
    if reset:
        log.reset()
    return summary


def _owned(optimizer: torch.optim.Optimizer) -> Iterator[tuple[_Layer, str, nn.Parameter]]:
    for group in optimizer.param_groups:
        for p in group["params"]:
            layer = _OWNERS.get(id(p))
            if layer is not None:
                yield layer, layer.names[id(p)], p


def wrap_optimizer(optimizer: torch.optim.Optimizer,
                   recipe: Recipe | str | None = None) -> torch.optim.Optimizer:
    """Round gradients before and weights/state after every ``optimizer.step()``.

    Works by step pre/post hooks, so the optimizer stays the same object (schedulers,
    ``state_dict`` and ``zero_grad`` are unaffected). Parameters of prepared layers
    use their layer's specs; others are left alone. ``recipe``, if given, must be the
    recipe the model was prepared with (a check against mix-ups). Returns ``optimizer``.
    """
    if getattr(optimizer, "_lowprec_wrapped", False):
        raise ValueError("optimizer is already wrapped")
    expected = None if recipe is None else recipes.resolve(recipe)
    if expected is not None and any(lay.run.recipe != expected for lay, *_ in _owned(optimizer)):
        raise ValueError("wrap_optimizer: the recipe differs from the one the model was "
                         "prepared with")

    def pre(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for layer, name, p in _owned(opt):
            layer.before_step(name, p)

    def post(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for layer, name, p in _owned(opt):
            layer.after_step(name, p, opt.state.get(p, {}))

    optimizer.register_step_pre_hook(pre)
    optimizer.register_step_post_hook(post)
    optimizer._lowprec_wrapped = True  # type: ignore[attr-defined]
    return optimizer
