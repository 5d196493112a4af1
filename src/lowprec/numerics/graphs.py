"""Kernel graphs compiled by inductor without dynamo: traced once per signature, guarded,
called directly, and kept on disk for the next process.

Why not ``torch.compile``: dynamo's per-call cost (frame evaluation, guards, AOT autograd
wrappers) was 50-250 us per rounding on the loaded development machine (a GPT step
makes about 90 of them), and every process traced the kernels again before torch's
caches could serve them. Here a compiled graph is called in 10-40 us, and a new process
loads it in 10-20 ms instead of tracing and compiling it (docs/benchmarks.md).

A call's *signature* is its non-tensor arguments; its tensors' dtypes, device types,
ranks, contiguity, and which of their sizes and storage offsets are 0, 1 or more (what
tracing specialises); which arguments are one tensor (aliasing); torch's thread count;
whether the call is *large* (more than one thread, and its largest tensor holds at least
:data:`PARALLEL_MIN` elements). Per signature
the kernel function is traced by ``make_fx`` with symbolic sizes (no duck sizing: sizes
that happen to be equal get symbols of their own) and compiled by inductor
(``torch._inductor.standalone_compile``). What the trace assumed about sizes (0 and 1
specialised, sizes equal, strides, storage offsets: the ``ShapeEnv``'s guards, including
those inductor adds) is compiled into one Python expression checked before each call; a
call that fails it gets a graph of its own. The compiled graph takes the tensors only.
Which graph served a call is remembered per exact call (non-tensor arguments, and the
tensors' dtypes, devices, sizes, strides and storage offsets; up to :data:`_KNOWN_MAX`
of them): the same call again skips the signature and the guards (about 20 us of the
40-60 us a small call cost).

Threads: inductor splits a loop over torch's threads (OpenMP) when the sizes the trace
saw promise enough work, and the graph keeps that choice for every size it later serves
(torch's own FX cache, which keys on the symbolic graph, does the same). A graph first
traced on a 64-element bias update once served a 3.3M-element activation on one thread
(at 2 threads the kernel then ran at 0.7 of the speed it reaches). So the choice is made
per signature instead: large calls get a graph that always splits its loop, the others
one that never does (inductor's ``cpp.min_chunk_size`` set to 1 or to infinity while
compiling). :data:`PARALLEL_MIN` is ATen's own grain size for its parallel loops.

On disk: ``$LOWPREC_CACHE_DIR`` (default ``$XDG_CACHE_HOME/lowprec``, else
``~/.cache/lowprec``; ``off`` disables it), ``kernels/<key>/<n>.bin`` with its guards in
``<n>.guards``. The key hashes the signature, the kernel's qualified name, the sources of
``lowprec.numerics``, torch's version and the host's vector ISA, so a changed kernel or
torch never loads an old graph. Graphs are written atomically (``.guards`` last: an entry
without one is incomplete and ignored); one that fails to load is skipped and compiled
again. torch serialises graphs with pickle, as its own inductor cache does: the directory
is private to the user (mode 0700) and must be as trusted as torch's cache directory.
Graphs of older lowprec or torch versions are never read again; delete the directory to
reclaim their space.

The trace and the compile run in the caller's thread with the global random states saved
and restored, so whether a graph was compiled, loaded or not used changes no result.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import platform
import random
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.fx.experimental._config as fx_config
from torch.utils import _pytree as pytree

__all__ = ["GRAPHS", "PARALLEL_MIN", "DirectCompiled", "cache_dir"]

#: elements of a call's largest tensor from which its graph splits loops over the threads
PARALLEL_MIN = 32768
#: every graph compiled (not loaded) in this process: ``(kernel name, signature)``
GRAPHS: list[tuple[str, tuple[Any, ...]]] = []
_UNSAVED: set[str] = set()  # kernels whose graphs could not be saved (warned once)
#: exact calls (sizes, strides, offsets) whose graph a kernel remembers, at most
_KNOWN_MAX = 4096


def cache_dir() -> Path | None:
    """Where compiled kernel graphs are kept (module docstring); ``None`` when disabled."""
    given = os.environ.get("LOWPREC_CACHE_DIR")
    if given is not None:
        return None if given.strip().lower() in ("", "off", "0") else Path(given) / "kernels"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lowprec" / "kernels"


@functools.lru_cache(maxsize=1)
def _environment() -> str:
    """What a graph on disk depends on besides its signature: lowprec's numerics sources,
    torch's version, the host's architecture and vector instructions (ATen's CPU
    capability: no compiler probe)."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return (f"{h.hexdigest()} torch {torch.__version__} {platform.machine()} "
            f"{torch.backends.cpu.get_cpu_capability()}")


class _Graph:
    """One compiled graph: its guard expression and how to rebuild the kernel's result."""

    def __init__(self, compiled: Callable[..., Any], guards: str | None,
                 spec: pytree.TreeSpec, tensor_leaves: tuple[bool, ...]) -> None:
        from torch.fx.experimental.symbolic_shapes import SYMPY_INTERP

        self.compiled, self.guards_text = compiled, guards
        self._guards = None if guards is None else compile(guards, "<lowprec guards>", "eval")
        self._globals = SYMPY_INTERP
        self.spec, self.tensor_leaves = spec, tensor_leaves

    def admits(self, tensors: list[torch.Tensor]) -> bool:
        if self._guards is None:
            return True
        return bool(eval(self._guards, self._globals,  # noqa: S307 (our own, compiled once)
                         {"L": {f"t{i}": t for i, t in enumerate(tensors)}}))

    def __call__(self, tensors: list[torch.Tensor]) -> Any:
        out = iter(self.compiled(*tensors))
        leaves = [next(out) if is_tensor else None for is_tensor in self.tensor_leaves]
        return pytree.tree_unflatten(leaves, self.spec)


def _describe(spec: pytree.TreeSpec, tensor_leaves: tuple[bool, ...]) -> str:
    return repr((pytree.treespec_dumps(spec), tensor_leaves))


def _signature(args: tuple[Any, ...], threads: int) -> tuple[Any, ...]:
    """The signature of a call (module docstring)."""
    sig: list[Any] = [threads]
    seen: list[torch.Tensor] = []
    for a in args:
        if not isinstance(a, torch.Tensor):
            sig.append(a)
            continue
        alias = next((i for i, t in enumerate(seen) if t is a), None)
        if alias is not None:
            sig.append(("alias", alias))
            continue
        seen.append(a)  # what tracing specialises: sizes and offsets of 0 and 1, layout
        sig.append((a.dtype, a.device.type, tuple(min(n, 2) for n in a.shape),
                    min(a.storage_offset(), 2), a.is_contiguous()))
    sig.append(threads > 1 and max((t.numel() for t in seen), default=0) >= PARALLEL_MIN)
    return tuple(sig)


class DirectCompiled:
    """``fn`` (a kernel: tensors and constants in, tensors, ``None`` or a tuple of them out)
    compiled per signature as the module docstring says; ``self(*args)`` calls it. Tensors
    off the CPU go through ``torch.compile(fn, dynamic=True)`` (inductor's GPU kernels
    are compiled per process by dynamo)."""

    def __init__(self, fn: Callable[..., Any], dynamic: Callable[[], Any]) -> None:
        self.fn = fn
        self.name = f"{fn.__module__}.{fn.__qualname__}"
        self._dynamic_factory = dynamic
        self._dynamic: Callable[..., Any] | None = None
        self._graphs: dict[tuple[Any, ...], list[_Graph]] = {}
        #: the graph of each exact call (sizes, strides, offsets) seen: its guards held
        self._known: dict[tuple[Any, ...], _Graph] = {}

    def __call__(self, *args: Any) -> Any:
        tensors: list[torch.Tensor] = []
        exact: list[Any] = [torch.get_num_threads()]
        for a in args:
            if isinstance(a, torch.Tensor):
                for i, t in enumerate(tensors):
                    if t is a:
                        exact.append(("alias", i))
                        break
                else:
                    exact.append((a.dtype, a.device, a.shape, a.stride(), a.storage_offset()))
                    tensors.append(a)
            else:
                exact.append(a)
        known = tuple(exact)
        graph = self._known.get(known)
        if graph is not None:
            return graph(tensors)
        if any(t.device.type != "cpu" for t in tensors):
            if self._dynamic is None:
                self._dynamic = self._dynamic_factory()
            with fx_config.patch(use_duck_shape=False):  # as the trace below (docstring)
                return self._dynamic(*args)
        key = _signature(args, exact[0])
        graphs = self._graphs.get(key)
        if graphs is None:
            graphs = self._graphs[key] = self._load(key)
        graph = next((g for g in graphs if g.admits(tensors)), None)
        if graph is None:
            graph = self._compile(key, args, tensors)
            graphs.append(graph)
        if len(self._known) >= _KNOWN_MAX:
            self._known.clear()
        self._known[known] = graph
        return graph(tensors)

    def _folder(self, key: tuple[Any, ...]) -> Path | None:
        root = cache_dir()
        if root is None:
            return None
        text = f"{self.name} {key!r} {_environment()}"
        return root / hashlib.sha256(text.encode()).hexdigest()[:32]

    def _load(self, key: tuple[Any, ...]) -> list[_Graph]:
        """The graphs kept on disk for ``key`` (none when the cache is off or empty; an
        entry that fails to load is skipped)."""
        folder = self._folder(key)
        if folder is None or not folder.is_dir():
            return []
        from torch._inductor import CompiledArtifact

        graphs = []
        for meta in sorted(folder.glob("*.guards")):
            try:
                guards, described = meta.read_text().split("\n", 1)
                spec_text, leaves = ast.literal_eval(described)
                art = CompiledArtifact.load(path=str(meta.with_suffix(".bin")), format="binary")
            except Exception:  # incomplete, corrupt, or from another torch: compile again
                continue
            graphs.append(_Graph(art, guards or None, pytree.treespec_loads(spec_text),
                                 tuple(leaves)))
        return graphs

    def _compile(self, key: tuple[Any, ...], args: tuple[Any, ...],
                 tensors: list[torch.Tensor]) -> _Graph:
        """Trace ``fn`` on ``args`` with symbolic sizes, compile it, keep it on disk."""
        from torch._inductor import config as inductor_config
        from torch._inductor import standalone_compile
        from torch.fx.experimental.proxy_tensor import make_fx

        slots = [next((i for i, t in enumerate(tensors) if t is a), None)
                 if isinstance(a, torch.Tensor) else None for a in args]
        shape: dict[str, Any] = {}

        def traced(*ts: torch.Tensor) -> list[torch.Tensor]:
            full = [a if s is None else ts[s] for a, s in zip(args, slots, strict=True)]
            leaves, shape["spec"] = pytree.tree_flatten(self.fn(*full))
            shape["tensor_leaves"] = tuple(isinstance(v, torch.Tensor) for v in leaves)
            outs = [v for v in leaves if isinstance(v, torch.Tensor)]
            return outs or [ts[0]]  # a graph returns a tensor (here: the first input)

        state, py_state = torch.random.get_rng_state(), random.getstate()
        try:
            with torch.no_grad(), fx_config.patch(use_duck_shape=False):
                gm = make_fx(traced, tracing_mode="symbolic")(*tensors)
            for node in next(iter(reversed(gm.graph.nodes))).args[0]:
                node.meta["example_value"] = node.meta["val"]
            fakes = [n.meta["val"] for n in gm.graph.nodes if n.op == "placeholder"]
            chunk = 1 if key[-1] else 2**62  # large: always split over the threads; else never
            with inductor_config.patch({"cpp.min_chunk_size": chunk}):
                art = standalone_compile(gm, fakes, dynamic_shapes="from_graph")
            guards = fakes[0].fake_mode.shape_env.produce_guards_expression(
                fakes, ignore_static=False)
        finally:
            torch.random.set_rng_state(state)
            random.setstate(py_state)
        GRAPHS.append((self.name, key))
        graph = _Graph(art, guards, shape["spec"], shape["tensor_leaves"])
        self._save(key, art, graph)
        return graph

    def _save(self, key: tuple[Any, ...], art: Any, graph: _Graph) -> None:
        """Write ``art`` and its guards into the key's folder, atomically (best effort: a
        read-only or full disk leaves the graph in memory only)."""
        folder = self._folder(key)
        if folder is None:
            return
        name = uuid.uuid4().hex
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for parent in (folder.parent, folder):
                parent.chmod(0o700)
            tmp = folder / f".{name}.bin.tmp"
            art.save(path=str(tmp), format="binary")
            os.replace(tmp, folder / f"{name}.bin")
            meta = folder / f".{name}.guards.tmp"
            meta.write_text(f"{graph.guards_text or ''}\n"
                            f"{_describe(graph.spec, graph.tensor_leaves)}")
            os.replace(meta, folder / f"{name}.guards")
        except (OSError, RuntimeError) as exc:  # unwritable, or a graph torch cannot save
            if self.name not in _UNSAVED:
                _UNSAVED.add(self.name)
                warnings.warn(f"lowprec: a compiled graph of {self.name} was not kept on disk "
                              f"({type(exc).__name__}: {exc}); the next process compiles it "
                              "again. Set LOWPREC_CACHE_DIR=off to silence this.",
                              RuntimeWarning, stacklevel=2)
