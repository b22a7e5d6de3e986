"""Imports point one way (docs STYLE, "The shape of the house"), checked by parsing every .py file.

`distill` is the method and knows nothing of Prefect or of where files live; `storage` knows files
and nothing of Prefect, the heavy ML libraries, or the method; `tasks` never imports `flows`, and
`tasks.jobs` (job descriptions and the bodies that run in child processes and Ray actors) imports no
Prefect, not even through another module of `tasks`; `flows` loads the heavy ML libraries only inside
the functions that need them. Imports inside functions count (except where a rule says top level),
and no module of the project imports itself back through a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("distill", "storage", "tasks", "flows")

# folder -> module prefixes it may not import (anywhere in a file)
FORBIDDEN = {
    "distill": {"prefect", "storage", "tasks", "flows"},
    "storage": {"prefect", "torch", "vllm", "transformers", "tasks", "flows", "distill"},
    "tasks": {"flows"},
    "tasks/jobs": {"prefect", "flows", "tasks.generate", "tasks.evaluate", "tasks.train", "tasks.verify",
                   "tasks.problems", "tasks.mix", "tasks.distill_set", "tasks.steps", "tasks.progress", "tasks.gpu"},
}
# folder -> module prefixes it may not import at the top of a file
FORBIDDEN_AT_TOP = {"flows": {"torch", "vllm", "transformers"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, package: str, top_level_only: bool = False) -> set[str]:
    """Dotted names of every module `source` imports (relative imports resolve to `package`)."""
    tree = ast.parse(source)
    nodes = tree.body if top_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package if node.level else (node.module or "")
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _matches(name: str, prefixes: set[str]) -> str | None:
    return next((p for p in sorted(prefixes) if name == p or name.startswith(p + ".")), None)


def python_files(folder: str) -> list[Path]:
    return sorted((REPO_ROOT / folder).rglob("*.py"))


def offences(rules: dict[str, set[str]], top_level_only: bool) -> list[str]:
    found = []
    for folder, prefixes in rules.items():
        files = python_files(folder)
        assert files, f"no Python files under {folder}/"
        for path in files:
            names = imported_modules(path.read_text(encoding="utf-8"), folder.split("/")[0], top_level_only)
            bad = {hit for name in names if (hit := _matches(name, prefixes))}
            found += [f"{path.relative_to(REPO_ROOT)} imports {name}" for name in sorted(bad)]
    return found


def test_package_imports_point_one_way():
    found = offences(FORBIDDEN, top_level_only=False)
    assert not found, "\n".join(found)


def test_heavy_libraries_load_inside_functions_only():
    found = offences(FORBIDDEN_AT_TOP, top_level_only=True)
    assert not found, "\n".join(found)


def import_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports anywhere: at its top level, inside functions, under
    `if TYPE_CHECKING:`. An import deferred into a function still ties the two modules together, so
    it counts. A module's own parent packages are left out: Python has them initialised before the
    module runs."""
    files = {module_name(p): p for package in PACKAGES for p in python_files(package)}
    graph = {}
    for name, path in files.items():
        imported = imported_modules(path.read_text(encoding="utf-8"), name.split(".")[0])
        graph[name] = {m for m in imported if m in files and m != name and not name.startswith(m + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_checkers_see_every_form_of_import_and_a_cycle():
    source = (
        "import prefect.tasks\n"
        "from torch import nn\n"
        "def later():\n"
        "    import vllm\n"
        "    from transformers.models import llama\n"
        "from . import sibling\n"
        "import os, storage.fs as sfs\n"
    )
    names = imported_modules(source, "distill")
    assert {"prefect.tasks", "torch", "vllm", "transformers.models", "distill.sibling", "os", "storage.fs"} <= names
    assert "vllm" not in imported_modules(source, "distill", top_level_only=True)
    assert _matches("tasks.generate", {"tasks.generate"}) and not _matches("tasks.generated", {"tasks.generate"})
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
