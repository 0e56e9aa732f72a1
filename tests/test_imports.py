"""The package's import graph has no cycle: every import counts, module-level or inside a function, and importing
``a.b.c`` imports ``a.b`` first (its ``__init__``); only ``if TYPE_CHECKING:`` blocks are left out."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import lhas_ray

ROOT = Path(lhas_ray.__file__).parent


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _imported(tree: ast.AST, package: str) -> list[str]:
    """Dotted names imported anywhere in ``tree``, TYPE_CHECKING blocks aside."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                head = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*head, base] if base else head)
            names.extend([base, *(f"{base}.{a.name}" for a in node.names)])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for name in _imported(ast.parse(path.read_text()), package):
            while name and name not in mods:  # lhas_ray.x.y where y is a function: the module lhas_ray.x
                name = name.rpartition(".")[0]
            while name:  # the module, and every package above it (their __init__ runs first)
                if name != mod and not mod.startswith(name + "."):
                    graph[mod].add(name)
                name = name.rpartition(".")[0]
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path a -> ... -> a, or None (depth-first search with an explicit stack)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, iters = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while path:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph[nxt])))
    return None


def test_the_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_lhas_ray_has_no_import_cycle():
    graph = import_graph()
    assert {"lhas_ray.protocol", "lhas_ray.launch", "lhas_ray.tuning.sweep", "lhas_ray.config"} <= set(graph)
    assert "lhas_ray.train_entry" in graph["lhas_ray.launch"]  # the walker sees real edges,
    assert "lhas_ray.protocol" in graph["lhas_ray.train_entry"]  # function-level ones included
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_building_a_trainer_imports_no_model_stack():
    """The driver, each Tune trial of side-by-side groups and Ray Train's controller import ``launch``, the train
    function's module and the dataset config's module; transformers and DeepSpeed belong to the workers only."""
    code = (
        "import sys, lhas_ray.launch, lhas_ray.train_entry, lhas_ray.scoring.whole_pool; "
        "print(sorted(m for m in ('transformers', 'deepspeed', 'lhas_ray.protocol', 'lhas_ray.model') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
