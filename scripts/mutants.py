"""A small mutation test: change one operator of a module at a time and see whether its tests fail.

    python scripts/mutants.py --module landscape/sharpness.py --tests tests/test_sharpness.py \
        --count 12 --seed 0

Each mutant flips one comparison (< and <=, > and >=, == and !=), one arithmetic operator
(+ and -, * and /), one boolean operator (and, or) or adds 1 to one integer constant, chosen at
random (seeded) among the module's code outside docstrings; the module is rewritten
(`ast.unparse`), the tests run (`pytest -x -q -m "not slow"`, a timeout counts as killed), and
the file is restored. Prints one line per mutant and the score, killed / all. A survivor is a
place to look: either a test is missing, or the mutant does not change the result (an
equivalent mutant). A hand-rolled stand-in for mutmut, which needs more time per mutant than
this machine gives.
"""

from __future__ import annotations

import argparse
import ast
import random
import subprocess
import sys
from pathlib import Path

SWAPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
         ast.NotEq: ast.Eq, ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div,
         ast.Div: ast.Mult, ast.And: ast.Or, ast.Or: ast.And}


def sites(tree: ast.AST) -> list[tuple[int, str]]:
    """(index in ast.walk order, description) of every mutable node."""
    out = []
    for i, node in enumerate(ast.walk(tree)):
        if isinstance(node, ast.Compare) and type(node.ops[0]) in SWAPS:
            out.append((i, f"line {node.lineno}: {type(node.ops[0]).__name__}"))
        elif isinstance(node, (ast.BinOp, ast.BoolOp)) and type(node.op) in SWAPS:
            out.append((i, f"line {node.lineno}: {type(node.op).__name__}"))
        elif (isinstance(node, ast.Constant) and type(node.value) is int
              and not isinstance(node.value, bool)):
            out.append((i, f"line {node.lineno}: {node.value} + 1"))
    return out


def mutate(source: str, index: int) -> str:
    tree = ast.parse(source)
    node = list(ast.walk(tree))[index]
    if isinstance(node, ast.Compare):
        node.ops[0] = SWAPS[type(node.ops[0])]()
    elif isinstance(node, (ast.BinOp, ast.BoolOp)):
        node.op = SWAPS[type(node.op)]()
    else:
        node.value = node.value + 1
    return ast.unparse(tree)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", required=True, type=Path)
    parser.add_argument("--tests", required=True, nargs="+")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    original = args.module.read_text()
    candidates = sites(ast.parse(original))
    chosen = random.Random(args.seed).sample(candidates, min(args.count, len(candidates)))
    killed = 0
    try:
        for index, what in sorted(chosen):
            args.module.write_text(mutate(original, index))
            try:
                run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-m",
                                      "not slow", "-p", "no:cacheprovider", *args.tests],
                                     capture_output=True, timeout=args.timeout)
                dead = run.returncode != 0
            except subprocess.TimeoutExpired:
                dead = True
            killed += dead
            print(f"{args.module} {what}: {'killed' if dead else 'SURVIVED'}", flush=True)
    finally:
        args.module.write_text(original)
    print(f"score {killed}/{len(chosen)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
