"""The package's shape: no import cycles in svg/ (imports inside functions count), every module says what it owns."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def import_graph() -> dict[str, set[str]]:
    """svg module -> the svg modules it imports anywhere in its file (package __init__s included)."""
    files = {}
    for path in (ROOT / "svg").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def owner(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            targets |= {o for n in names if n.startswith("svg") and (o := owner(n)) and o not in ("svg", module)}
        # a module importing its own package's __init__ is how submodules load: not an edge back
        graph[module] = {t for t in targets if not module.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, path = {}, []

    def visit(u):
        state[u] = "open"
        path.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == "open":
                return path[path.index(v) :] + [v]
            if v not in state and (cycle := visit(v)):
                return cycle
        path.pop()
        state[u] = "done"
        return None

    return next((c for u in sorted(graph) if u not in state and (c := visit(u))), None)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_svg_has_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_training_imports_nothing_that_imports_it_back():
    graph = import_graph()
    assert "svg.evaluation" in graph["svg.train"]
    assert "svg.train" not in graph["svg.evaluation"]
    assert not any("svg.train" in targets for module, targets in graph.items() if module != "svg.train")


def test_modules_say_what_they_own():
    for path in (ROOT / "svg").rglob("*.py"):
        if path.name != "__init__.py":
            assert ast.get_docstring(ast.parse(path.read_text())), f"{path} has no opening docstring"
