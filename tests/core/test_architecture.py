"""The import direction of docs/architecture.md, read from the source with ``ast``.

The CLI → ``modules/``, ``callbacks/``, ``report/`` (Lightning, loggers, files) → the core
folders (tensors in, tensors out) → ``models/``, ``utils/`` → torch. The core never
imports Lightning, a logger or an edge folder, and the folders' import graph has no cycle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import lightning_fv

ROOT = Path(lightning_fv.__file__).parent
CORE = {"optvis", "analysis", "adversarial", "manipulation", "diffusion", "ifv"}
BASE = {"models", "utils"}
EDGE = {"modules", "callbacks", "report", "commands", "cli", "demo"}
FORBIDDEN_IN_CORE = {"lightning", "pytorch_lightning", "mlflow", "wandb", "tensorboard",
                     "tensorboardX", "jinja2"}


def _imports() -> dict[str, set[tuple[str, str]]]:
    """``folder → {(imported top-level name or lightning_fv folder, file)}``."""
    out: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for f in ROOT.rglob("*.py"):
        rel = f.relative_to(ROOT)
        folder = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "lightning_fv" and len(parts) > 1:
                    out[folder].add((parts[1], str(rel)))
                else:
                    out[folder].add((parts[0], str(rel)))
    return out


def _folder_graph() -> dict[str, set[str]]:
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    folders |= {p.stem for p in ROOT.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = defaultdict(set)
    for a, deps in _imports().items():
        graph[a] |= {b for b, _ in deps if b in folders and b != a}
    return graph


def test_core_and_base_folders_never_import_lightning_loggers_or_edges() -> None:
    bad = sorted((folder, name, f) for folder, deps in _imports().items()
                 if folder in CORE | BASE for name, f in deps
                 if name in FORBIDDEN_IN_CORE or name in EDGE)
    assert bad == [], f"core/base files importing Lightning, a logger or an edge: {bad}"


def test_base_folders_never_import_the_core() -> None:
    bad = sorted((folder, name, f) for folder, deps in _imports().items()
                 if folder == "utils" for name, f in deps if name in CORE | {"models"})
    assert bad == [], f"utils imports the core: {bad}"


def test_no_two_folders_import_each_other() -> None:
    graph = _folder_graph()
    # depth-first search for any cycle, reported as its path
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == [], f"folder import cycles: {cycles}"


def test_the_graph_is_read_from_real_imports() -> None:
    """Guards the two tests above against reading nothing."""
    graph = _folder_graph()
    assert "utils" in graph["optvis"]
    assert "optvis" in graph["analysis"]
    assert "lightning" in {n for n, _ in _imports()["callbacks"]}
