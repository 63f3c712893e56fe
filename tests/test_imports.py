"""Every `from policyalign... import name` names something that exists, function-level imports included.

Heavy modules are imported inside functions, so a renamed or moved name breaks only the code path
that reaches it, which pyflakes cannot see: `bench --shape` imported a renamed private function and
failed at every run for a session.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "policyalign").rglob("*.py"), *(ROOT / "bench").glob("*.py"), *(ROOT / "tests").glob("*.py")])


def _imported(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) for each name imported from a policyalign module, relative imports resolved."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            continue
        parts = list(package[:len(package) - node.level + 1]) if node.level else []
        module = ".".join(parts + ([node.module] if node.module else []))
        if module.split(".")[0] == "policyalign":
            found += [(node.lineno, module, alias.name) for alias in node.names if alias.name != "*"]
    return found


def _exists(module: str, name: str) -> bool:
    loaded = importlib.import_module(module)
    if hasattr(loaded, name):
        return True
    try:
        importlib.import_module(f"{module}.{name}")  # a submodule (`from policyalign import hub`)
    except ImportError:
        return False
    return True


def test_every_policyalign_import_names_something_that_exists() -> None:
    missing = [f"{path.relative_to(ROOT)}:{line}: {module} has no {name!r}"
               for path in SOURCES for line, module, name in _imported(path) if not _exists(module, name)]
    assert not missing, "\n".join(missing)


def test_no_policyalign_module_imports_another_ones_private_names() -> None:
    """validation.py imported pack's `_load_manifest`, `_place` and `_seed`: a helper another module
    needs is public under one name, so renaming a private one never breaks a module that reached in."""
    private = [f"{path.relative_to(ROOT)}:{line}: {module}.{name}" for path in SOURCES if path.is_relative_to(ROOT / "policyalign")
               for line, module, name in _imported(path) if name.startswith("_") and not name.startswith("__")]
    assert not private, "\n".join(private)
