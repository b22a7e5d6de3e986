"""Imports point one way (docs STYLE, "The shape of the house"), checked by parsing every .py file.

`distill` is the method and knows nothing of Prefect or of where files live; `storage` knows files
and nothing of Prefect, the heavy ML libraries, or the method. Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "distill": {"prefect", "storage", "tasks", "flows"},
    "storage": {"prefect", "torch", "vllm", "transformers", "tasks", "flows", "distill"},
}


def imported_modules(source: str, package: str) -> set[str]:
    """Top-level names of every module `source` imports (relative imports resolve to `package`)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(package if node.level else (node.module or "").split(".")[0])
    return names


def python_files(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_point_one_way(package):
    files = python_files(package)
    assert files, f"no Python files under {package}/"
    offences = []
    for path in files:
        bad = imported_modules(path.read_text(encoding="utf-8"), package) & FORBIDDEN[package]
        offences += [f"{path.relative_to(REPO_ROOT)} imports {name}" for name in sorted(bad)]
    assert not offences, "\n".join(offences)


def test_the_checker_sees_every_form_of_import():
    source = (
        "import prefect.tasks\n"
        "from torch import nn\n"
        "def later():\n"
        "    import vllm\n"
        "    from transformers.models import llama\n"
        "from . import sibling\n"
        "import os, storage.fs as sfs\n"
    )
    assert imported_modules(source, "distill") == {
        "prefect", "torch", "vllm", "transformers", "distill", "os", "storage",
    }
