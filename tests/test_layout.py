"""The library's layout: subpackages that follow the data, imports only downward, no circles."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the subpackages in the order the data flows; each may import only itself and those before it
LAYERS = ("core", "data", "classifier", "cam", "masks", "refine", "evaluate", "segment")


def import_graph(root: Path) -> dict[str, set[str]]:
    """``{module: the pipeline.* modules it imports}`` (at the top or inside a function) for
    every module under ``root/pipeline``."""
    graph = {}
    for path in sorted((root / "pipeline").rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if (root / sub.replace(".", "/")).with_suffix(".py").is_file() else node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.split(".")[0] == "pipeline")
        graph[module] = found
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, imported in sorted(graph.items()):
        layer = module.split(".")[1] if module.count(".") else None
        for target in sorted(imported):
            t = target.split(".")[1] if target.count(".") else None
            if layer and t and LAYERS.index(t) > LAYERS.index(layer):
                found.append(f"{module} imports {target}")
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    found = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt not in graph or nxt == node:
                continue
            if state.get(nxt) == 1:
                found.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    return found


def test_pipeline_is_subpackages_only():
    pipeline = REPO / "pipeline"
    assert sorted(p.name for p in pipeline.glob("*.py")) == ["__init__.py"]
    assert sorted(p.name for p in pipeline.iterdir() if (p / "__init__.py").is_file()) == sorted(LAYERS)
    for name in LAYERS:
        doc = ast.get_docstring(ast.parse((pipeline / name / "__init__.py").read_text()))
        assert doc and len(doc) > 80, f"pipeline/{name}/__init__.py: say what the step does and what it hands on"


def test_imports_only_go_downward_and_never_in_a_circle():
    graph = import_graph(REPO)
    assert len(graph) > 30 and "pipeline.core.io" in graph["pipeline.data.voc"]
    assert upward_imports(graph) == []
    assert import_cycles(graph) == []


def test_the_checks_see_an_upward_import_and_a_circle(tmp_path):
    for layer in LAYERS:
        (tmp_path / "pipeline" / layer).mkdir(parents=True)
        (tmp_path / "pipeline" / layer / "__init__.py").write_text('"""A step."""\n')
    (tmp_path / "pipeline" / "core" / "a.py").write_text("def f():\n    from pipeline.segment.b import g\n")
    (tmp_path / "pipeline" / "segment" / "b.py").write_text("from pipeline.core import a\n")
    graph = import_graph(tmp_path)
    assert graph["pipeline.core.a"] == {"pipeline.segment.b"} and graph["pipeline.segment.b"] == {"pipeline.core.a"}
    assert upward_imports(graph) == ["pipeline.core.a imports pipeline.segment.b"]
    assert import_cycles(graph) == ["pipeline.core.a -> pipeline.segment.b -> pipeline.core.a"]
