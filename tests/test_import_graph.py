"""The package's dependency direction: no import cycle between its parts.

Every ``import`` of a ``pyg_mlic`` module (at module level or inside a function) is an
edge between the importing part and the imported one; a part is a subpackage
(``pyg_mlic.engine``) or a top-level module (``pyg_mlic.cli``). The graph must be
acyclic: the low layers (utils, data, the layers and graphs, models, embeddings) never
import the training engine, the demo or the command line, which build on them.
"""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "pyg_mlic"


def _part(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def import_graph():
    edges = {}
    for f in PKG.rglob("*.py"):
        mod = ".".join(f.relative_to(PKG.parent).with_suffix("").parts)
        mod = mod[: -len(".__init__")] if mod.endswith(".__init__") else mod
        src = _part(mod)
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                path = PKG.parent / Path(*t.split("."))
                if t.startswith("pyg_mlic.") and (path.is_dir() or path.with_suffix(".py")
                                                  .is_file()):
                    dst = _part(t)
                    if dst != src:
                        edges.setdefault(src, {}).setdefault(dst, set()).add(
                            str(f.relative_to(PKG.parent)))
    return edges


def _cycle(edges):
    """A cycle of the graph as a list of parts, or None."""
    colour, stack = {}, []

    def visit(v):
        colour[v] = 1
        stack.append(v)
        for w in edges.get(v, {}):
            if colour.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in colour:
                found = visit(w)
                if found:
                    return found
        colour[v] = 2
        stack.pop()
        return None

    for v in sorted(edges):
        if v not in colour:
            found = visit(v)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle():
    edges = import_graph()
    assert "pyg_mlic.engine" in edges and "pyg_mlic.models" in edges["pyg_mlic.engine"]
    cycle = _cycle(edges)
    where = [f"{a} -> {b} ({sorted(edges[a][b])[0]})" for a, b in zip(cycle, cycle[1:])] \
        if cycle else []
    assert cycle is None, "import cycle: " + "; ".join(where)


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b": {"x"}}, "b": {"c": {"y"}}, "c": {"a": {"z"}}}) == \
        ["a", "b", "c", "a"]
    assert _cycle({"a": {"b": {"x"}}, "b": {"c": {"y"}}}) is None


def test_lower_layers_do_not_import_the_engine_or_the_cli():
    edges = import_graph()
    for low in ("pyg_mlic.utils", "pyg_mlic.data", "pyg_mlic.nn", "pyg_mlic.graphs",
                "pyg_mlic.models", "pyg_mlic.embeddings", "pyg_mlic.backbones"):
        for top in ("pyg_mlic.engine", "pyg_mlic.cli", "pyg_mlic.demo"):
            assert top not in edges.get(low, {}), (low, top, edges.get(low, {}).get(top))
    assert edges.get("pyg_mlic.utils", {}) == {}  # utils imports nothing of the package
