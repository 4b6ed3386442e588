"""The package's modules import one way: no circle, counting imports inside functions."""

import ast
import sys
from pathlib import Path

import gipp_jax

PACKAGE = Path(gipp_jax.__file__).resolve().parent


def module_imports() -> dict[str, set[str]]:
    """Module name -> the package's modules it imports anywhere in its source (module level
    or inside functions). ``from gipp_jax import model`` counts as importing
    ``gipp_jax.model``, not the package; imports under ``if TYPE_CHECKING:`` never run and
    do not count."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                     and ast.unparse(node.test).endswith("TYPE_CHECKING") for n in ast.walk(node)}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in files)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in files}
                found.update(subs)
                if base in files and len(subs) < len(node.names):
                    found.add(base)
        found.discard(name)
        graph[name] = found
    return graph


def test_no_module_imports_one_that_imports_it_back():
    graph = module_imports()
    assert "gipp_jax.train" in graph and "gipp_jax.raster" in graph["gipp_jax.train"]

    def reachable(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    circles = sorted(f"{a} -> {b} -> ... -> {a}" for a in graph for b in graph[a] if a in reachable(b))
    assert circles == []


def test_the_checker_sees_imports_inside_functions(tmp_path, monkeypatch):
    # A circle made only of in-function imports must be found (the check can fail).
    fake = tmp_path / "gipp_jax"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "a.py").write_text("def f():\n    from gipp_jax import b\n")
    (fake / "b.py").write_text("from gipp_jax.a import f\n")
    (fake / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gipp_jax import a\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    graph = module_imports()
    assert graph["gipp_jax.a"] == {"gipp_jax.b"} and graph["gipp_jax.b"] == {"gipp_jax.a"}
    assert graph["gipp_jax.c"] == set()
