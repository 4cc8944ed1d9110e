"""The package's structure, read from its own imports (module level and inside functions): no
import circles, each third-party library imported by its one owner, workflows above the core, and
no module past ~400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "diffcls_plugin"
# third-party library -> the only part of the package that may import it
OWNERS = {
    "clip_benchmark": ("diffcls_plugin.harness",),
    "open_clip": ("diffcls_plugin.prefilter",),
    "diffusers": ("diffcls_plugin.adapters",),
}
MAX_LINES = 420


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module ``path`` imports, anywhere in it: ``from a import b`` counts as ``a.b`` when that is a module."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                found.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: {m for m in imports(path, name, known) if m in known and m != name} for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_scan_sees_circles_and_owners():
    """The checks below can fail: a planted circle is found, and so is an import inside a function."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    source = "def f():\n    from diffcls_plugin.harness import names\n    import open_clip\n"
    tree_imports = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            tree_imports.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            tree_imports.add(node.module)
    assert {"open_clip", "diffcls_plugin.harness"} <= tree_imports


def test_no_import_circles_including_function_level_imports():
    edges = graph()
    assert "diffcls_plugin.harness.patches" in edges["diffcls_plugin.harness"]  # the scan reads the package
    assert cycles(edges) == []


def test_each_library_is_imported_by_its_owner_only():
    offenders = []
    mods = modules()
    known = set(mods)
    for name, path in mods.items():
        for imported in imports(path, name, known):
            top = imported.split(".")[0]
            owners = OWNERS.get(top)
            if owners and not any(name == o or name.startswith(o + ".") for o in owners):
                offenders.append(f"{name} imports {imported}")
    assert offenders == []


def test_the_core_never_imports_the_workflows_or_the_cli():
    edges = graph()
    above = ("diffcls_plugin.workflows", "diffcls_plugin.cli")
    offenders = [f"{a} -> {b}" for a, targets in edges.items() for b in targets if b.startswith(above) and not a.startswith(above)]
    assert offenders == []


def test_no_module_is_longer_than_about_400_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_documented_layout_lists_every_module():
    """docs/integration.md's tree names every module of the package, and nothing that is gone."""
    text = (PACKAGE.parent / "docs" / "integration.md").read_text()
    tree = text[text.index("```text\ndiffcls_plugin/") :].split("```")[1].splitlines()[2:]
    listed, folder = set(), ""
    for line in tree:
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        name = line.split()[0]
        if name.endswith("/"):
            folder = name if depth == 1 else folder
            continue
        listed.add((folder if depth == 2 else "") + name)
    actual = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")}
    # a folder's __init__.py may go unlisted when it holds only a docstring
    trivial = {f for f in actual - listed if f.endswith("__init__.py") and len((PACKAGE / f).read_text().splitlines()) <= 3}
    assert listed - actual == set()
    assert actual - listed - trivial == set()
