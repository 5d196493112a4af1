"""The package's floors: every ``lowprec`` import points down, no module imports in a cycle.

Order: ``numerics < train < cost < study < cli``. Imports are read from the source with
``ast`` (module level *and* inside functions), so a lazy import cannot hide an upward
dependency. The package root (``lowprec/__init__.py``) re-exports the public API and may
import any floor; nothing below it may import the root.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lowprec

ROOT = Path(lowprec.__file__).parent
FLOORS = ("numerics", "train", "cost", "study", "cli")
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``lowprec`` module ``path`` imports, resolved to absolute names."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "lowprec"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "lowprec":
                continue
            found.add(target)
            for alias in node.names:  # "from . import x" may name a module
                sub = f"{target}.{alias.name}"
                if (ROOT.parent / sub.replace(".", "/")).with_suffix(".py").exists() or (
                        ROOT.parent / sub.replace(".", "/")).is_dir():
                    found.add(sub)
    return found


def _floor(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package root
    head = parts[1]
    return FLOORS.index(head) if head in FLOORS else None


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    mine = _floor(module)
    if module in ("lowprec", "lowprec.__main__"):
        return
    assert mine is not None, f"{module} is outside the floors {FLOORS}"
    for target in _imports(MODULES[module]):
        assert target != "lowprec", f"{module} imports the package root"
        theirs = _floor(target)
        assert theirs is not None and theirs <= mine, (
            f"{module} (floor {FLOORS[mine]}) imports {target}, which is above it")


def test_no_import_cycles() -> None:
    graph = {m: {t for t in _imports(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    # a package's __init__ importing its own children is not a cycle through them
    done: set[str] = set()
    stack: list[str] = []

    def visit(m: str) -> None:
        if m in stack:
            cycle = stack[stack.index(m):] + [m]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if m in done:
            return
        stack.append(m)
        for t in sorted(graph[m]):
            if not (MODULES[m].name == "__init__.py" and t.startswith(m + ".")):
                visit(t)
        stack.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_are_short(module: str) -> None:
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines (at most {MAX_LINES})"
