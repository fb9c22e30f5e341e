"""The package's layering, read from the source: no import cycle between its modules even counting imports
made inside functions (the lazy ones that keep --help instant), and no function with more than 12 parameters."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "posthoc_csra"
MAX_PARAMETERS = 12


def _modules():
    """{dotted module name: (path, the package relative imports start from)}."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        found[name] = (path, name if is_package else ".".join(parts[:-1]))
    return found


def _imported(node, package):
    """Dotted names an import statement may refer to (the module, and module.name for `from m import name`)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def _graph():
    modules = _modules()
    graph = {}
    for name, (path, package) in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):  # every import, at any depth
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets |= {t for t in _imported(node, package) if t in modules}
        # a package's __init__ importing its own submodules is how it exposes them, not a cycle with them
        graph[name] = {t for t in targets if t != name and not t.startswith(name + ".")}
    return graph


def _cycle(graph):
    """One cycle as a list of modules, or None (depth-first search with colours)."""
    colour, stack = {}, []

    def visit(node):
        colour[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if colour.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in colour:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        colour[node] = "done"
        return None

    for node in sorted(graph):
        if node not in colour:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_counting_imports_inside_functions():
    graph = _graph()
    assert len(graph) > 40 and "posthoc_csra.methods" in graph["posthoc_csra.scorer"]
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_function_takes_more_than_twelve_parameters():
    too_many = []
    for name, (path, _) in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
                count = len(names) + bool(args.vararg) + bool(args.kwarg) - (names[:1] in (["self"], ["cls"]))
                if count > MAX_PARAMETERS:
                    too_many.append(f"{name}.{node.name}: {count}")
    assert not too_many, too_many
