"""The package's layers: imports run one way only,
cli -> service -> live / batch -> inference / sources -> settings -> errors, results.

Every module's imports are read with ast (lazy imports inside functions too), so a
module that reaches up a layer, or sideways into a sibling of its layer (live <-> batch,
inference <-> sources), fails here with its file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "edge_app"

# group -> rank; a module may import its own group or any group of a lower rank.
RANKS = {
    "edge_app": 0,  # the package itself: __version__
    "errors": 0,
    "results": 0,
    "measure": 0,
    "text": 0,
    "settings": 1,
    "inference": 2,
    "sources": 2,
    "live": 3,
    "batch": 3,
    "learn": 4,  # trains on folders through batch's decoding and workers
    "service": 5,
    "cli": 6,
    "__main__": 7,
}


def group_of(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == "edge_app", module
    return parts[1] if len(parts) > 1 else "edge_app"


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, here: str, is_package: bool):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = here.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target


def violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = module_name(path)
        mine = group_of(here)
        assert mine in RANKS, f"{path}: a new top-level module or package needs a rank here"
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for line, target in imported_modules(tree, here, path.name == "__init__.py"):
            if target != "edge_app" and not target.startswith("edge_app."):
                continue
            theirs = group_of(target)
            if theirs == mine:
                continue
            if RANKS[theirs] >= RANKS[mine]:
                kind = "sideways" if RANKS[theirs] == RANKS[mine] else "upward"
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {kind} import {target}")
    return found


def test_every_import_runs_down_the_layers():
    assert violations() == []


def test_the_walk_sees_lazy_and_relative_imports():
    tree = ast.parse("def f():\n    from edge_app.cli import options\nfrom . import x\n")
    found = list(imported_modules(tree, "edge_app.live.pipeline", is_package=False))
    assert (2, "edge_app.cli") in found and (3, "edge_app.live") in found
    assert RANKS[group_of("edge_app.cli")] > RANKS[group_of("edge_app.live.pipeline")]
