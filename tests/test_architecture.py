"""The package's shape stays what issue 24 made it: small functions, no import cycle, registries
instead of op-type if/elif chains. Read from the source with ast (nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "onnxprune"
MAX_PARAMETERS = 12
MAX_LINES = 80
MAX_CHAIN = 3


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()
TREES = {name: ast.parse(path.read_text()) for name, path in MODULES.items()}


def _functions():
    for name, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield name, node


def _parameters(fn: ast.FunctionDef) -> int:
    a = fn.args
    count = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)
    first = (a.posonlyargs + a.args)[:1]
    return count - (1 if first and first[0].arg in ("self", "cls") else 0)


def test_no_function_takes_more_than_twelve_parameters():
    wide = [f"{m}.{fn.name} ({_parameters(fn)})" for m, fn in _functions() if _parameters(fn) > MAX_PARAMETERS]
    assert not wide, f"functions over {MAX_PARAMETERS} parameters: {wide} (group them into an options object)"


def test_no_function_is_over_eighty_lines():
    long = [f"{m}.{fn.name} ({fn.end_lineno - fn.lineno + 1})" for m, fn in _functions()
            if fn.end_lineno - fn.lineno + 1 > MAX_LINES]
    assert not long, f"functions over {MAX_LINES} lines: {long}"


def _imports(name: str) -> set[str]:
    """The package modules `name` imports, function-local imports included."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for candidate in [target, *(f"{target}.{a.name}" for a in node.names)]:
                if candidate in MODULES and candidate != name:
                    out.add(candidate)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in MODULES and a.name != name)
    return out


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle():
    # A package imports its own submodules (groups/__init__ registers its handlers): that is not a cycle
    # unless a submodule imports the package back, which the edges from the submodule show.
    edges = {name: {t for t in _imports(name) if not t.startswith(name + ".")} for name in MODULES}
    assert not _cycles(edges), f"import cycles (function-local imports count): {_cycles(edges)}"


def test_the_cycle_finder_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def _chain_length(node: ast.If) -> int:
    length = 1
    while len(node.orelse) == 1 and isinstance(node.orelse[0], ast.If):
        node = node.orelse[0]
        length += 1
    return length


def _on_op_type(test: ast.expr) -> bool:
    text = ast.unparse(test)
    return "op_type" in text or "op ==" in text or "op in " in text


def test_no_op_type_if_elif_chain_longer_than_three():
    chains = []
    for name, tree in TREES.items():
        nested = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and id(node) not in nested and _on_op_type(node.test):
                if _chain_length(node) > MAX_CHAIN:
                    chains.append(f"{name}:{node.lineno} ({_chain_length(node)} branches)")
                inner = node
                while len(inner.orelse) == 1 and isinstance(inner.orelse[0], ast.If):
                    inner = inner.orelse[0]
                    nested.add(id(inner))
    assert not chains, f"op-type if/elif chains over {MAX_CHAIN} branches (register handlers instead): {chains}"
