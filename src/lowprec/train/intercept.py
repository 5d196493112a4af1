"""Op-level rounding: a ``TorchFunctionMode`` around a prepared model's forward.

For a recipe with ``ops`` (:class:`~lowprec.Recipe`), :func:`lowprec.prepare` enters an
:class:`OpMode` around the model's forward (root pre-/post-hooks) and keeps a stack of
the modules running (pre-/post-hooks on every submodule), so each intercepted call is
attributed to the innermost module it runs in and rounds with that module's specs
(:meth:`Recipe.for_layer`: per-module override globs keep working). For an op of a kind
the recipe lists (table: :mod:`lowprec.train.ops`)::

    product  y = f(Q_in(x), Q_w(W))        every non-parameter operand x: class input;
                                           a parameter (or a view of one) W: class weight
    any op   ŷ = Q_activation(y)           its output
    backward ĝ = Q_error(∂L/∂ŷ), then the op's own backward: for a product
             ∂L/∂x = ĝ·Q_w(W), ∂L/∂W = ĝ^T·Q_in(x)  (its saved, rounded operands)

so every forward product has operands in format and every backward product has the
rounded error as one operand and a rounded forward operand as the other. Operand
rounding is straight-through for the gradient. Parameters are rounded in place (stored
in the weight format, or as ``Q_weight(master)`` with ``master_weights``) by the layer
that owns them: the module holding the parameter, adopted at its first use as a product
operand (so the optimizer hooks of ``wrap_optimizer`` see it); a tied parameter has one
owner and one master. Block scaling of an operand runs along the product's reduction
axis (:mod:`.ops`). The backward reuses the forward-rounded operands, except where a
block-scaled spec rounds a linear or matmul: then each backward product rounds the
unrounded operands (a held parameter's fp32 master) and the error along its own
reduction axis (:mod:`.requant`).

``F.scaled_dot_product_attention``, when ``attention`` is listed, is decomposed into
``S = Q_in(q)·Q_in(k)^T · scale`` (+ mask) ``→ P = softmax(S) → dropout → Q_in(P)·Q_in(v)``,
both products of kind ``attention``, so whatever fused kernel torch would pick, its
products see rounded operands; the softmax output is rounded with ``activation``. Not
listed, SDPA runs as torch's fused op and :func:`coverage` shows it unrounded.

With ``product`` / ``accumulate`` in the recipe, every product op it rounds then runs
through :func:`lowprec.train.mac_ops.run` (rounded products, blocked rounded sums, in the
forward and in both backward products) instead of torch's kernel.

Stochastic rounding here is keyed, not drawn: the seed of each rounding is
``h(seed, step, module, op position in the module's call, operand)``
(:func:`~lowprec.train.quantizer.keyed_generator`), so recomputing a forward (activation
checkpointing) rounds to the same bits; the rank joins the key of data-dependent
classes. In evaluation (``model.eval()``), op roundings are to nearest unless
``prepare(..., eval_rounding="recipe")``.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..numerics import presets
from ..numerics.formats import Format
from . import mac_ops
from .ops import OPAQUE, REQUANT, Op, lookup
from .quantizer import Quantizer, keyed_generator
from .recipe import QuantSpec, Recipe
from .requant import product

__all__ = ["OpMode", "OpRun"]

_CLASS_CODE = {"input": 1, "weight": 2, "activation": 3, "error": 4}


def _param_of(t: torch.Tensor) -> nn.Parameter | None:
    """The parameter ``t`` is, or is a view of."""
    if isinstance(t, nn.Parameter):
        return t
    base = t._base
    return base if isinstance(base, nn.Parameter) else None


def _with_axis(spec: QuantSpec, axis: int) -> QuantSpec:
    s = spec.scaling
    if s is None or s.granularity != "block" or s.axis == axis:
        return spec
    return dataclasses.replace(spec, scaling=dataclasses.replace(s, axis=axis))


def _blocked(spec: QuantSpec | None) -> bool:
    return spec is not None and spec.scaling is not None and spec.scaling.granularity == "block"


def _nearest(spec: QuantSpec) -> QuantSpec:
    if spec.rounding != "stochastic":
        return spec
    return dataclasses.replace(spec, rounding="nearest", rand_bits=None)


class _Frame:
    __slots__ = ("name", "count", "hash", "entered")

    def __init__(self, name: str, hash: int = 0) -> None:
        """``hash``: ``crc32(name)``, computed once per module at attach (0 for ``""``)."""
        self.name, self.count, self.hash = name, 0, hash
        self.entered = False


class _RoundOperand(torch.autograd.Function):
    """Forward ``Q(x)``; backward straight through."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, q: Quantizer, gen: torch.Generator | None,
                record: bool) -> torch.Tensor:
        return q(x, record, generator=gen)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        return g, None, None, None


def _round_error(err: Quantizer, key: tuple[int, ...], record: bool,
                 g: torch.Tensor) -> torch.Tensor:
    """``Q_error(g)``, keyed by the op that produced the tensor ``g`` is the gradient of."""
    stochastic = err.spec.rounding == "stochastic"
    gen = keyed_generator(*key, _CLASS_CODE["error"]) if stochastic else None
    return err(g, record, generator=gen)


class _RoundOutput(torch.autograd.Function):
    """Forward ``Q_activation(y)``; backward ``Q_error(g)`` (or ``g``)."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, act: Quantizer, err: Quantizer | None,
                key: tuple[int, ...], record: bool) -> torch.Tensor:
        ctx.err, ctx.key, ctx.record = err, key, record
        gen = keyed_generator(*key, _CLASS_CODE["activation"])
        return act(y, record, generator=gen if act.spec.rounding == "stochastic" else None)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.err is not None:
            g = _round_error(ctx.err, ctx.key, ctx.record, g)
        return g, None, None, None, None


class OpRun:
    """The op-level state of one prepared model.

    ``adopt(p, axis)`` is :func:`lowprec.prepare`'s: it makes ``p``'s owner a prepared
    layer (in-place weight rounding, optimizer hooks) and returns whether ``p`` is now
    kept in the weight format; ``sync(p)`` re-rounds it if changed since.
    """

    def __init__(self, recipe: Recipe, run: Any, seed: int, eval_rounding: str,
                 adopt: Callable[[nn.Parameter, int], bool],
                 sync: Callable[[nn.Parameter], None]) -> None:
        if eval_rounding not in ("nearest", "recipe"):
            raise ValueError(f"eval_rounding={eval_rounding!r}; allowed: 'nearest', 'recipe'")
        self.recipe, self.run, self.seed = recipe, run, seed
        self.kinds = frozenset(recipe.ops or ())
        self.eval_nearest = eval_rounding == "nearest"
        self.adopt, self.sync = adopt, sync
        #: the fp32 master of a parameter held in its weight format (``p``: none kept)
        self.master: Callable[[nn.Parameter], torch.Tensor] = lambda p: p
        self.stack: list[_Frame] = []
        self.training = True
        self.specs: dict[str, dict[str, QuantSpec | None]] = {}
        self.quantizers: dict[tuple[Any, ...], Quantizer | None] = {}
        self.managed: dict[int, bool] = {}
        self.records: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.mode = OpMode(self)

    # -- hooks --------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> list[Any]:
        """Hooks entering the mode around ``model``'s forward and tracking module names."""
        handles = [model.register_forward_pre_hook(self._enter),
                   model.register_forward_hook(self._exit, always_call=True)]
        for name, m in model.named_modules():
            if m is model:
                continue
            push = functools.partial(self._push, name, zlib.crc32(name.encode()))
            handles.append(m.register_forward_pre_hook(lambda mod, args, f=push: f()))
            handles.append(m.register_forward_hook(self._pop, always_call=True))
        return handles

    def _enter(self, module: nn.Module, args: Any) -> None:
        self.stack[:] = [_Frame("")]
        self.training = module.training
        self.mode.__enter__()

    def _exit(self, module: nn.Module, args: Any, out: Any) -> None:
        self.mode.__exit__(None, None, None)
        self.stack.clear()

    def _push(self, name: str, hash: int) -> None:
        """A submodule starts. Called outside the model's forward (a recomputation by
        activation checkpointing, in the backward), it enters the mode itself."""
        frame = _Frame(name, hash)
        if not self.stack:
            frame.entered = True
            self.mode.__enter__()
        self.stack.append(frame)

    def _pop(self, module: nn.Module, args: Any, out: Any) -> None:
        if self.stack and self.stack[-1].name != "" and self.stack.pop().entered:
            self.mode.__exit__(None, None, None)

    # -- rounding -----------------------------------------------------------------------
    def module_specs(self, name: str) -> dict[str, QuantSpec | None]:
        specs = self.specs.get(name)
        if specs is None:
            specs = self.specs[name] = self.recipe.for_layer(name)
        return specs

    def quantizer(self, frame: _Frame, label: str, cls: str, slot: int,
                  axis: int = -1) -> Quantizer | None:
        """The quantizer of one (module, op position, class, operand): its own scale state."""
        key = (frame.name, label, cls, slot, self.training, axis)
        if key not in self.quantizers:
            spec = self.module_specs(frame.name)[cls]
            if spec is not None:
                spec = _with_axis(spec, axis)
                if not self.training and self.eval_nearest:
                    spec = _nearest(spec)
            where = f"{frame.name or 'model'}.{label}.{cls}{slot if cls == 'input' else ''}"
            self.quantizers[key] = None if spec is None else Quantizer(
                spec, log=self.run.log, key=where)
        return self.quantizers[key]

    def _key(self, frame: _Frame, index: int, per_rank: bool) -> tuple[int, ...]:
        rank = self.run.rank
        base = (self.seed, self.run.passes, frame.hash, index)
        return base if rank is None or not per_rank else (*base, rank + 1)

    def _note(self, frame: _Frame, op: Op, label: str, cls: str, fmt: Format | None) -> None:
        rec = self.records.setdefault((frame.name, label, op.kind), {
            "module": frame.name, "op": op.name, "kind": op.kind, "product": op.product,
            "rounded": {}, "calls": 0})
        if cls == "call":
            rec["calls"] += 1
        elif fmt is not None:
            rec["rounded"][cls] = fmt

    def call(self, func: Any, op: Op, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run one intercepted op with the rounding its kind and module call for."""
        frame = self.stack[-1] if self.stack else _Frame("")
        index = frame.count
        frame.count += 1
        label = f"{op.name}#{index}"
        if func is F.multi_head_attention_forward and self.kinds & {"linear", "attention"}:
            out = self._mha(*args, **kwargs)
            if out is not None:
                self._note(frame, Op(op.kind, "mha (decomposed)"), label, "call", None)
                return out
            op = dataclasses.replace(op, kind="opaque")  # bias_k, static k/v, zero attention
        if op.kind not in self.kinds:
            self._note(frame, op, label, "call", None)
            return func(*args, **kwargs)
        if func is F.scaled_dot_product_attention:  # not a product itself: its parts are
            self._note(frame, Op(op.kind, "sdpa (decomposed)"), label, "call", None)
            return self._sdpa(*args, **kwargs)
        self._note(frame, op, label, "call", None)
        record = self.run.recording
        specs = self.module_specs(frame.name)
        # block-scaled operands requantize for the backward (not yet combined with MAC
        # emulation: a recipe with [accumulate] reuses the forward-rounded operands)
        if func in REQUANT and not self.recipe.emulates_mac and any(
                _blocked(specs[c]) for c in ("input", "weight", "error")):
            out = self._requant(func, frame, op, label, index, args, kwargs, record)
            if out is not None:
                return self._output(frame, op, label, index, out, specs, record, error=False)
        if op.product:
            args = list(args)
            if func is torch.einsum and len(args) == 2 and isinstance(args[1], list | tuple):
                args = [args[0], *args[1]]
            for slot, (pos, axis) in enumerate(op.operands(args)):  # type: ignore[misc]
                t = args[pos] if pos < len(args) else None
                if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                    continue
                p = _param_of(t)
                if p is not None and specs["weight"] is not None and self._held(p, axis):
                    self._note(frame, op, label, "weight", specs["weight"].format)
                    continue
                cls = "weight" if p is not None else "input"
                q = self.quantizer(frame, label, cls, slot, axis)
                if q is None:
                    continue
                stochastic = q.spec.rounding == "stochastic"
                gen = keyed_generator(*self._key(frame, index, cls == "input"),
                                      _CLASS_CODE[cls], slot) if stochastic else None
                args[pos] = _RoundOperand.apply(t, q, gen, record)
                self._note(frame, op, label, cls, q.spec.format)
        if op.product and op.kind != "embedding" and self.recipe.emulates_mac:
            for cls, spec in self.recipe.mac_specs().items():
                self._note(frame, op, label, cls, spec and spec.format)
            arith = mac_ops.arithmetic(self.recipe, self._key(frame, index, True),
                                       nearest=not self.training and self.eval_nearest)
            out = mac_ops.run(func, op.name, args, kwargs, arith)
        else:
            out = func(*args, **kwargs)
        return self._output(frame, op, label, index, out, specs, record)

    def _held(self, p: nn.Parameter, axis: int) -> bool:
        """Whether ``p`` is kept in its weight format in place (adopted at first use,
        re-rounded here if changed since)."""
        held = self.managed.get(id(p))
        if held is None:
            held = self.managed[id(p)] = self.adopt(p, axis)
        if held:
            self.sync(p)
        return held

    def _requant(self, func: Any, frame: _Frame, op: Op, label: str, index: int,
                 args: tuple[Any, ...], kwargs: dict[str, Any],
                 record: bool) -> torch.Tensor | None:
        """A linear / matmul / convolution whose backward products requantize along their
        own reduction axes (:mod:`.requant`); ``None``: a call it does not cover (1-d,
        unbatched, ``out=``, string padding, ...)."""
        kind = REQUANT[func]
        names = {"linear": ("bias",), "matmul": (),
                 "conv": ("bias", "stride", "padding", "dilation", "groups")}[kind]
        if set(kwargs) - set(names) or len(args) < 2:
            return None
        a, b = args[0], args[1]
        given = dict(zip(names, args[2:], strict=False), **kwargs)
        bias = given.get("bias")
        if not all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in (a, b)) \
                or kind == "linear" and b.ndim != 2 or kind == "matmul" and min(a.ndim, b.ndim) < 2:
            return None
        conv_args = (given.get("stride", 1), given.get("padding", 0), given.get("dilation", 1),
                     given.get("groups", 1))
        if kind == "conv" and (a.ndim != b.ndim or isinstance(conv_args[1], str)):
            return None
        specs = self.module_specs(frame.name)
        roles: list[tuple[str, bool]] = []  # per operand: class, held in its format
        for slot, (_, axis) in enumerate(op.operands((a, b))):  # type: ignore[misc]
            p = _param_of((a, b)[slot])
            held = p is not None and specs["weight"] is not None and self._held(p, axis)
            roles.append(("weight" if p is not None else "input", held))
            q = self.quantizer(frame, label, roles[-1][0], slot, axis)
            if held or q is not None:
                self._note(frame, op, label, roles[-1][0], specs[roles[-1][0]].format)
        if specs["error"] is not None and torch.is_grad_enabled():
            self._note(frame, op, label, "error", specs["error"].format)
        key = self._key(frame, index, True)

        def rnd(operand: int, phase: str, t: torch.Tensor, axis: int) -> torch.Tensor:
            if operand == 2:
                cls, k = "error", (*key, _CLASS_CODE["error"])
            else:
                cls, held = roles[operand]
                if held:
                    if phase == "fwd":
                        return t  # the parameter holds Q_weight(master) already
                    p = _param_of(t)
                    m = self.master(p)  # type: ignore[arg-type]
                    t = t if m is p else m.as_strided(  # the same view of the master
                        t.shape, t.stride(), t.storage_offset() - p.storage_offset())
                k = (*self._key(frame, index, cls == "input"), _CLASS_CODE[cls], operand)
            q = self.quantizer(frame, label, cls, operand if operand < 2 else 0, axis)
            if q is None:
                return t
            # the roundings the reuse path does too keep its keys and telemetry
            first = phase == "fwd" or phase == "dgrad" and operand == 2
            gen = (keyed_generator(*k, *(() if first else (1,)))
                   if q.spec.rounding == "stochastic" else None)
            return q(t, record and first, generator=gen)

        return product(kind, a, b, bias, rnd, conv_args)

    def _output(self, frame: _Frame, op: Op, label: str, index: int, out: Any,
                specs: dict[str, QuantSpec | None], record: bool, error: bool = True) -> Any:
        if not (isinstance(out, torch.Tensor) and out.is_floating_point()):
            return out
        act = self.quantizer(frame, label, "activation", 0)
        err = (self.quantizer(frame, label, "error", 0) if error and out.requires_grad
               else None)
        if act is None and err is None:
            return out
        for cls, q in (("activation", act), ("error", err)):
            if q is not None:
                self._note(frame, op, label, cls, q.spec.format)
        key = self._key(frame, index, True)
        if act is not None:
            return _RoundOutput.apply(out, act, err, key, record)
        # a gradient hook, not a new node: the op's saved output keeps its version
        out.register_hook(functools.partial(_round_error, err, key, record))
        return out

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
              is_causal: bool = False, scale: float | None = None,
              enable_gqa: bool = False) -> torch.Tensor:
        """Scaled dot-product attention as two rounded products around a softmax."""
        from .ops import OPS  # the table's matmul and softmax entries, relabelled
        mm = dataclasses.replace(OPS[torch.matmul], kind="attention", name="sdpa.matmul")
        sm = dataclasses.replace(OPS[torch.softmax], kind="attention", name="sdpa.softmax")
        L, S = q.size(-2), k.size(-2)
        scale = q.size(-1) ** -0.5 if scale is None else scale
        if enable_gqa and k.size(-3) != q.size(-3):
            k = k.repeat_interleave(q.size(-3) // k.size(-3), -3)
            v = v.repeat_interleave(q.size(-3) // v.size(-3), -3)
        s = self.call(torch.matmul, mm, (q, k.transpose(-2, -1)), {}) * scale
        if is_causal:
            keep = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()
            s = s.masked_fill(~keep, float("-inf"))
        if attn_mask is not None:
            s = (s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool
                 else s + attn_mask)
        p = self.call(torch.softmax, sm, (s, -1), {})
        if dropout_p > 0:
            p = F.dropout(p, dropout_p)
        return self.call(torch.matmul, mm, (p, v), {})

    def _mha(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
             embed_dim: int, num_heads: int, in_w: torch.Tensor | None,
             in_b: torch.Tensor | None, bias_k: Any, bias_v: Any, add_zero_attn: bool,
             dropout_p: float, out_w: torch.Tensor, out_b: torch.Tensor | None,
             training: bool = True, key_padding_mask: torch.Tensor | None = None,
             need_weights: bool = True, attn_mask: torch.Tensor | None = None,
             use_separate_proj_weight: bool = False, q_proj_weight: Any = None,
             k_proj_weight: Any = None, v_proj_weight: Any = None, static_k: Any = None,
             static_v: Any = None, average_attn_weights: bool = True,
             is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """``F.multi_head_attention_forward`` op by op: three linear projections, the two
        attention products around a softmax, the output projection (``None``: a variant
        not decomposed). Inputs are ``(L, N, E)``, as nn.MultiheadAttention passes them."""
        from .ops import OPS
        if bias_k is not None or bias_v is not None or add_zero_attn or static_k is not None \
                or static_v is not None or query.dim() != 3:
            return None
        frame = self.stack[-1] if self.stack else _Frame("")
        if "linear" in self.kinds and self.module_specs(frame.name)["weight"] is not None:
            for w in (in_w, in_b):  # rounded in place before the chunks below view them
                if isinstance(w, nn.Parameter):
                    self._held(w, -1)
        lin = OPS[F.linear]
        mm = dataclasses.replace(OPS[torch.matmul], kind="attention", name="mha.matmul")
        sm = dataclasses.replace(OPS[torch.softmax], kind="attention", name="mha.softmax")
        ws = ((q_proj_weight, k_proj_weight, v_proj_weight) if use_separate_proj_weight
              else in_w.chunk(3))  # type: ignore[union-attr]
        bs = (None,) * 3 if in_b is None else in_b.chunk(3)
        L, N, E = query.shape
        S, H = key.shape[0], num_heads

        def heads(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
            y = self.call(F.linear, lin, (x, w, b), {})
            return y.reshape(y.shape[0], N, H, E // H).permute(1, 2, 0, 3)

        q, k, v = (heads(x, w, b) for x, w, b in zip((query, key, value), ws, bs, strict=True))
        s = self.call(torch.matmul, mm, (q, k.transpose(-2, -1)), {}) * (E // H) ** -0.5
        for m in (attn_mask, key_padding_mask):
            if m is None:
                continue
            m = m.view(N, 1, 1, S) if m is key_padding_mask else (
                m.view(N, H, L, S) if m.dim() == 3 else m)
            s = s.masked_fill(m, float("-inf")) if m.dtype == torch.bool else s + m
        p = self.call(torch.softmax, sm, (s, -1), {})
        pd = F.dropout(p, dropout_p) if training and dropout_p > 0 else p
        o = self.call(torch.matmul, mm, (pd, v), {}).permute(2, 0, 1, 3).reshape(L, N, E)
        out = self.call(F.linear, lin, (o, out_w, out_b), {})
        if not need_weights:
            return out, None
        return out, (p.mean(1) if average_attn_weights else p)

    def opaque(self, func: Any) -> None:
        """Note a call computing products out of reach (an RNN kernel, ...)."""
        frame = self.stack[-1] if self.stack else _Frame("")
        op = Op("opaque", getattr(func, "__name__", repr(func)), lambda args: [])
        self._note(frame, op, op.name, "call", None)

    def coverage(self) -> list[dict[str, Any]]:
        """Every op seen since prepare (or the last reset), in first-seen order."""
        names: dict[Format, str] = {}
        return [dict(r, rounded={c: names.setdefault(f, presets.name_of(f))
                                 for c, f in r["rounded"].items()})
                for r in self.records.values()]


class OpMode(TorchFunctionMode):
    """Routes the ops of :data:`~lowprec.train.ops.OPS` through :meth:`OpRun.call`."""

    def __init__(self, run: OpRun) -> None:
        super().__init__()
        self.ops = run

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        op = lookup(func)
        if op is not None:
            return self.ops.call(func, op, args, kwargs)
        if getattr(func, "__name__", "") in OPAQUE:
            self.ops.opaque(func)
        return func(*args, **kwargs)

