"""The import graph of olmo_jax: no cycles, and project imports at module level.

Read from the source with `ast` (nothing is imported), so the tests are fast and see every import,
including those inside functions, which a run only executes on some paths.

The graph's edges say "running this module's code imports that module". `from olmo_jax.x import y`
imports `olmo_jax.x.y` when `y` is a submodule and `olmo_jax.x` otherwise. Importing `olmo_jax.a.b`
first runs the `__init__` of `olmo_jax.a`, so that package is an edge too, except from a module inside
`olmo_jax.a`: Python has started the package's `__init__` before it runs any of its modules. Imports under
`if TYPE_CHECKING:` never run and are not edges.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "olmo_jax"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

# Function-level imports of project modules that are there on purpose: (importer, imported) -> why.
ALLOWED_FUNCTION_IMPORTS: dict[tuple[str, str], str] = {
    ("olmo_jax.data.__main__", "olmo_jax.curate.pipeline"): (
        "the curation pipeline needs datatrove, an optional extra (`curate`) that only `data curate` uses"
    ),
    ("olmo_jax.data.__main__", "olmo_jax.curate.report"): "the same: the report reads the datatrove stages' logs",
    ("olmo_jax.data.__main__", "olmo_jax.curate.spec"): "the same: a spec is checked against datatrove's steps",
    ("olmo_jax", "olmo_jax.pretrained"): (
        "`olmo_jax.from_pretrained` is a lazy attribute: `import olmo_jax.config` runs the package's "
        "__init__, and the CLIs import the config before JAX starts"
    ),
}

# Package __init__ files hold only a docstring naming their modules, except these: module -> why.
ALLOWED_INIT_CODE: dict[str, str] = {
    "olmo_jax": "the documented `olmo_jax.from_pretrained`, a lazy attribute (see ALLOWED_FUNCTION_IMPORTS)",
}

# The five CLI entry points are being rewritten (they are the lead's); each still imports project modules
# inside functions. Delete an entry when its import moves to module level or goes; the test fails on a
# listed import that no longer exists, so this list cannot silently outlive them.
PENDING_CLI_REWRITE: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Import:
    """One import statement's dependency: `importer` (at `where`) imports `imported`."""

    importer: str
    imported: str
    where: str
    in_function: bool
    # True for a package whose __init__ runs because a module inside it is imported.
    implicit: bool = False


def project_modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package (a package is its __init__)."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, importer: str, path: Path, modules: dict[str, Path]) -> list[str]:
    """The project modules one import statement names (not yet their packages)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in modules]
    if node.level:
        package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    if base not in modules:
        return []
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]


def _packages_run(target: str, importer: str) -> list[str]:
    """`target` and the packages whose __init__ importing it runs, less those already running for `importer`."""
    parts = target.split(".")
    chain = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return [m for m in chain if m == target or not (importer == m or importer.startswith(m + "."))]


def project_imports() -> list[Import]:
    """Every runtime import of a project module by a project module, with where it is."""
    modules = project_modules()
    found: list[Import] = []
    for importer, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))

        def visit(node: ast.AST, in_function: bool, importer: str = importer, path: Path = path) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and _is_type_checking(child.test):
                    for stmt in child.orelse:
                        visit(stmt, in_function)
                    continue
                if isinstance(child, ast.Import | ast.ImportFrom):
                    where = f"{path.relative_to(PACKAGE_DIR.parent)}:{child.lineno}"
                    for target in dict.fromkeys(_targets(child, importer, path, modules)):
                        for imported in _packages_run(target, importer):
                            if imported != importer:
                                found.append(Import(importer, imported, where, in_function, imported != target))
                visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

        visit(tree, False)
    return list(dict.fromkeys(found))


def find_cycle(imports: list[Import]) -> list[Import] | None:
    """One import cycle (as its edges, in order), or None when the graph has none."""
    graph: dict[str, list[Import]] = {}
    for edge in imports:
        graph.setdefault(edge.importer, []).append(edge)
    done: set[str] = set()
    path: list[Import] = []
    on_path: dict[str, int] = {}

    def dfs(module: str) -> list[Import] | None:
        on_path[module] = len(path)
        for edge in graph.get(module, []):
            if edge.imported in on_path:
                return path[on_path[edge.imported] :] + [edge]
            if edge.imported not in done:
                path.append(edge)
                cycle = dfs(edge.imported)
                if cycle:
                    return cycle
                path.pop()
        del on_path[module]
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            cycle = dfs(module)
            if cycle:
                return cycle
    return None


def test_the_scan_sees_imports_at_every_level():
    # A checker that found nothing would pass everything: pin a few imports that must be seen.
    edges = {(i.importer, i.imported, i.in_function) for i in project_imports()}
    assert ("olmo_jax.train", "olmo_jax.model", False) in edges
    assert ("olmo_jax", "olmo_jax.pretrained", True) in edges
    # `from olmo_jax.data.tokenizer import ...` in the convert package runs olmo_jax/data/__init__.py too,
    # but a module inside olmo_jax.data does not run its own package's __init__ again.
    assert ("olmo_jax.convert.tokenizer_files", "olmo_jax.data", False) in edges
    assert ("olmo_jax.data.pipeline", "olmo_jax.data", False) not in edges
    # `from olmo_jax import atomic, sharding` names submodules, not attributes of the package.
    assert ("olmo_jax.train", "olmo_jax.sharding", False) in edges


def test_cycles_are_found():
    a_b = Import("a", "b", "a.py:1", False)
    b_c = Import("b", "c", "b.py:1", True)
    c_a = Import("c", "a", "c.py:1", False)
    assert find_cycle([a_b, b_c]) is None
    assert find_cycle([a_b, b_c, c_a]) == [a_b, b_c, c_a]


def test_no_import_cycles():
    cycle = find_cycle(project_imports())
    if cycle:
        steps = "\n".join(
            f"  {e.importer} -> {e.imported}  ({e.where}{', in a function' if e.in_function else ''})" for e in cycle
        )
        raise AssertionError(f"import cycle:\n{steps}")


def test_project_imports_are_at_module_level():
    in_functions = [i for i in project_imports() if i.in_function and not i.implicit]
    pairs = {(i.importer, i.imported) for i in in_functions}
    allowed = set(ALLOWED_FUNCTION_IMPORTS) | PENDING_CLI_REWRITE
    unexpected = [i for i in in_functions if (i.importer, i.imported) not in allowed]
    assert not unexpected, "project imports inside functions (move them to module level):\n" + "\n".join(
        f"  {i.where}: {i.imported}" for i in unexpected
    )
    stale = allowed - pairs
    assert not stale, f"allow-listed function-level imports that no longer exist (remove them): {sorted(stale)}"


def test_package_inits_only_name_their_modules():
    modules = project_modules()
    inits = {name: path for name, path in modules.items() if path.name == "__init__.py"}
    with_code = {}
    for name, path in inits.items():
        body = ast.parse(path.read_text()).body
        assert body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), (
            f"{path} has no docstring naming its modules"
        )
        if len(body) > 1:
            with_code[name] = path
    unexpected = sorted(set(with_code) - set(ALLOWED_INIT_CODE))
    assert not unexpected, f"package __init__ files with code (move it into a named module): {unexpected}"
    stale = sorted(set(ALLOWED_INIT_CODE) - set(with_code))
    assert not stale, f"allow-listed __init__ files that hold only a docstring now (remove them): {stale}"
