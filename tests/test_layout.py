"""The architecture as a test: lab and llm apart, no import cycles inside nlhf.

Every import counts, also those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import nlhf

ROOT = Path(nlhf.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """nlhf modules that ``path`` imports (``from a import b`` counts a.b when a.b is one)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] == "nlhf"}


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: {m for m in _imports(p, name) if m in files and m != name}
            for name, p in files.items()}


def test_lab_and_llm_never_import_each_other() -> None:
    graph = import_graph()
    crossings = [(a, b) for a, deps in graph.items() for b in deps
                 if (a.startswith("nlhf.lab") and b.startswith("nlhf.llm"))
                 or (a.startswith("nlhf.llm") and b.startswith("nlhf.lab"))]
    assert crossings == []


def test_shared_modules_import_neither_half() -> None:
    graph = import_graph()
    shared = [m for m in graph if not m.startswith(("nlhf.lab", "nlhf.llm"))
              and m not in ("nlhf.cli", "nlhf.__main__", "nlhf")]
    assert "nlhf.losses" in shared
    leaks = [(a, b) for a in shared for b in graph[a] if b.startswith(("nlhf.lab", "nlhf.llm"))]
    assert leaks == []


def _is_package_of(a: str, b: str) -> bool:
    """Importing a submodule runs its package's ``__init__``: that edge is not a cycle."""
    return b.startswith(a + ".") or a.startswith(b + ".")


def test_no_import_cycles() -> None:
    graph = {a: {b for b in deps if not _is_package_of(a, b)} for a, deps in import_graph().items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []
