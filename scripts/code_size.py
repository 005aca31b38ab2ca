"""Module and function sizes of the package: the table issue #13 asks for.

Usage: python scripts/code_size.py [SRC_DIR]   (default: src/napari_sam)
Prints modules over 500 lines, functions over 60 lines, and the medians.
"""

from __future__ import annotations

import ast
import statistics
import sys
from pathlib import Path


def sizes(root: Path) -> tuple[dict[str, int], dict[str, int]]:
    modules, functions = {}, {}
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        rel = str(path.relative_to(root.parent))
        modules[rel] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                functions[f"{rel}:{node.name}"] = node.end_lineno - node.lineno + 1
    return modules, functions


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "src/napari_sam")
    modules, functions = sizes(root)
    big = {k: v for k, v in modules.items() if v > 500}
    long = {k: v for k, v in functions.items() if v > 60}
    print(
        f"modules: {len(modules)}, lines: {sum(modules.values())}, "
        f"median module {statistics.median(modules.values()):.0f} lines, largest {max(modules.values())}"
    )
    print(
        f"functions: {len(functions)}, median {statistics.median(functions.values()):.0f} lines, "
        f"longest {max(functions.values())}"
    )
    print(f"modules over 500 lines: {len(big)}")
    for k, v in sorted(big.items(), key=lambda kv: -kv[1]):
        print(f"  {v:5d}  {k}")
    print(f"functions over 60 lines: {len(long)}")
    for k, v in sorted(long.items(), key=lambda kv: -kv[1]):
        print(f"  {v:5d}  {k}")


if __name__ == "__main__":
    main()
