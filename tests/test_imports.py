"""No import cycle among the modules of core/ and devfs/.

Every import counts, at module level or inside a function: a function-local
import that dodges a cycle is still a cycle (the table imports the handler
modules, no handler imports the table; core never imports devfs).
"""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("core", "devfs")


def _modules():
    """{dotted name: path} of every module of the packages."""
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


def _targets(name, path, node, mods):
    """The modules of ``mods`` an import statement of module ``name`` loads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in mods]
    if node.level:
        base = name.split(".")
        if path.name != "__init__.py":
            base.pop()
        base = base[:len(base) - (node.level - 1)]
        pkg = ".".join(base + ([node.module] if node.module else []))
    else:
        pkg = node.module
    subs = [f"{pkg}.{a.name}" for a in node.names if f"{pkg}.{a.name}" in mods]
    # ``from pkg import submodule`` takes nothing from pkg's __init__: only
    # names that are not submodules make the package itself a target.
    takes_from_pkg = len(subs) < len(node.names)
    return ([pkg] if pkg in mods and takes_from_pkg else []) + subs


def import_graph():
    """{module: set of modules it imports}, over core/ and devfs/."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(t for t in _targets(name, path, node, mods) if t != name)
    return graph


def cycles(graph):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_finder_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_graph_sees_the_table_and_its_handlers():
    g = import_graph()
    assert "core.iommufd.ioas" in g["core.iommufd.dispatch"]
    assert "core.iommufd.ucmd" in g["core.iommufd.ioas"]


def test_no_import_cycle_in_core_or_devfs():
    assert cycles(import_graph()) == []


def test_core_imports_no_transport():
    g = import_graph()
    bad = {m: sorted(e) for m, e in g.items()
           if m.startswith("core") and any(t.startswith("devfs") for t in e)}
    assert bad == {}


def test_devfs_reaches_core_only_through_its_face():
    """devfs knows core's file protocol and the emulator, never a family of
    core objects (what a file is stays core's: no node-kind switch)."""
    g = import_graph()
    families = ("core.iommufd", "core.iommu", "core.vfio", "core.pci")
    bad = {m: sorted(t for t in e if t.startswith(families))
           for m, e in g.items() if m.startswith("devfs")}
    assert {m: e for m, e in bad.items() if e} == {}
