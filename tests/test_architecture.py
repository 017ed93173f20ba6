"""The package's modules import each other without cycles (function-level imports included)."""

import ast
from pathlib import Path

import graphreg

PACKAGE = Path(graphreg.__file__).resolve().parent


def module_files() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("graphreg",) + path.relative_to(PACKAGE).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """graphreg modules that ``name`` imports anywhere in its source (a package's own parents and
    imports for type checking only excluded)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {id(child) for node in ast.walk(tree)  # `if TYPE_CHECKING:` imports are not run
                 if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
                 for child in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name and not name.startswith(t + "."))
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return components


def test_no_import_cycles():
    modules = module_files()
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert graph["graphreg.api"], "the import graph is empty: the parser is broken"
    assert cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


LAYERS = ("core", "ops", "io", "result", "runtime", "methods", "training", "checks", "datasets", "analysis", "apps")
# What each layer may import besides itself and graphreg.errors; apps and the package face import anything.
MAY_IMPORT = {
    "core": {"ops", "io"},
    "ops": {"core"},
    "io": {"core", "ops"},
    "runtime": {"core", "io", "ops"},
}
NEVER_IMPORTED_BELOW = "apps"


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else ""


def test_every_module_lives_in_a_layer_folder():
    top_level = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert top_level == ["__init__", "api", "errors"]
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert folders == sorted(LAYERS)


def test_layers_import_only_downwards():
    modules = module_files()
    wrong = []
    for name, path in modules.items():
        layer = layer_of(name)
        for target in imported_modules(name, path, modules):
            target_layer = layer_of(target)
            if target_layer in ("", layer):
                continue
            if target_layer == NEVER_IMPORTED_BELOW and layer != NEVER_IMPORTED_BELOW:
                wrong.append(f"{name} -> {target}")
            elif layer in MAY_IMPORT and target_layer not in MAY_IMPORT[layer]:
                wrong.append(f"{name} -> {target}")
    assert wrong == []


def test_tests_mirror_the_package():
    tests = Path(__file__).resolve().parent
    folders = {p.relative_to(tests) for p in tests.rglob("*") if p.is_dir() and p.name != "__pycache__"
               and any(p.glob("test_*.py"))}
    missing = [str(f) for f in folders if not (PACKAGE / f / "__init__.py").exists()]
    assert missing == []
