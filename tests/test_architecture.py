"""The package's structure holds (docs/architecture.md): the layers and private modules of
.importlinter, no module reading another module's private names, no backend switched by the
library, and the size limits of modules and functions."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import landscape

PACKAGE = Path(landscape.__file__).parent
ROOT = PACKAGE.parent


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_import_contracts_are_kept():
    pytest.importorskip("importlinter")
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    run = subprocess.run([exe, "--config", str(ROOT / ".importlinter")], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def private_imports(path: Path) -> list[str]:
    """`from X import _name` in `path` (names private to another module; a private module of
    the package itself, `from . import _points`, is the import contract's business)."""
    tree = ast.parse(path.read_text())
    return [f"{path.relative_to(ROOT)}:{node.lineno} {alias.name} from {node.module}"
            for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
            for alias in node.names
            if alias.name.startswith("_") and not alias.name.startswith("__")]


def private_attributes(path: Path) -> list[str]:
    """`obj._name` in `path` where obj is another object than self/cls (a module, a probe) and
    `_name` is not a member that this module's own classes define (a clone of one's own class
    may be set up by its module): reading another module's private member. torch's own
    members are not ours."""
    tree = ast.parse(path.read_text())
    own = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
           and ast.unparse(node.value) == "self"}
    own |= {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            continue
        owner = ast.unparse(node.value)
        if owner in ("self", "cls") or owner.split(".")[0] in ("torch", "nn", "q", "np"):
            continue
        if node.attr in own:
            continue
        out.append(f"{path.relative_to(ROOT)}:{node.lineno} {owner}.{node.attr}")
    return out


def test_no_module_reads_another_modules_private_names():
    found = [hit for p in modules() for hit in private_imports(p) + private_attributes(p)]
    assert found == []


def test_the_library_never_switches_the_matplotlib_backend():
    offenders = [str(p.relative_to(ROOT)) for p in modules()
                 if not p.name.startswith("cli") and re.search(r"matplotlib\.use\(", p.read_text())]
    assert offenders == []


def body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body, its docstring aside."""
    body = fn.body
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
            and isinstance(first.value.value, str):
        body = body[1:]
    return 0 if not body else body[-1].end_lineno - body[0].lineno + 1


def test_modules_and_functions_are_small():
    long_modules = [f"{p.relative_to(ROOT)}: {n}" for p in modules()
                    if (n := len(p.read_text().splitlines())) > 500]
    long_functions = [f"{p.relative_to(ROOT)}:{node.lineno} {node.name}: {body_lines(node)}"
                      for p in modules() for node in ast.walk(ast.parse(p.read_text()))
                      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and body_lines(node) > 80]
    assert long_modules == [] and long_functions == []
