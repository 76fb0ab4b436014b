"""The package's layout: layers that only point down, no import cycles, and a README code map that names every module.

Imports are read from the source (``ast``), all of them: top-level, under ``TYPE_CHECKING`` and inside functions.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mmpool"
# Lowest first: a unit may import its own layer and the ones before it, never one after it.
LAYERS = ["errors", "format", "sampling", "config", "store", "augment", "stream", "convert", "testing", "ops", "cli"]
FACADES = {"mmpool", "mmpool.__main__"}  # the public names and ``python -m mmpool``: above everything
FILE_IO = {"os", "io", "mmap", "pathlib", "shutil", "tempfile", "h5py", "zipfile", "tarfile", "gzip"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> set[str]:
    """Every module ``name`` imports (mmpool modules resolved to the module, others to their top-level name)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for alias in node.names:  # ``from mmpool.convert import lc0`` imports the module mmpool.convert.lc0
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    out = set()
    for target in found:
        if target.startswith("mmpool"):
            while target not in MODULES:  # ``import mmpool.store.gather as g`` and the like
                target = target.rpartition(".")[0]
            out.add(target)
        else:
            out.add(target.split(".")[0])
    out.discard(name)
    return out


GRAPH = {name: {t for t in imports(name) if t.startswith("mmpool")} for name in MODULES}


def unit(name: str) -> str:
    """The subpackage (or top-level module) a module belongs to: ``mmpool.store.gather`` -> ``store``."""
    return name.split(".")[1] if name.count(".") >= 1 else name


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_cycle_between_modules() -> None:
    assert find_cycle(GRAPH) is None


def test_no_import_cycle_between_subpackages() -> None:
    units: dict[str, set[str]] = {}
    for name, targets in GRAPH.items():
        if name in FACADES:
            continue
        units.setdefault(unit(name), set()).update(
            unit(t) for t in targets if t not in FACADES and unit(t) != unit(name)
        )
    assert find_cycle(units) is None


def test_every_unit_has_a_layer() -> None:
    assert {unit(n) for n in MODULES if n not in FACADES} == set(LAYERS)


@pytest.mark.parametrize("name", [n for n in MODULES if n not in FACADES])
def test_layers_only_point_down(name: str) -> None:
    mine = LAYERS.index(unit(name))
    upward = sorted(t for t in GRAPH[name] if t not in FACADES and LAYERS.index(unit(t)) > mine)
    assert not upward, f"{name} (layer {unit(name)}) imports from higher layers: {upward}"
    assert "mmpool" not in GRAPH[name], f"{name} imports the package facade; import the module that defines the name"


def test_sampling_is_numpy_only() -> None:
    for name in (n for n in MODULES if unit(n) == "sampling"):
        outside = {t for t in imports(name) if not t.startswith("mmpool")}
        assert not outside & ({"torch", "psutil", "tqdm"} | FILE_IO), f"{name} imports {outside & FILE_IO}"
        inside = {unit(t) for t in GRAPH[name]}
        assert inside <= {"errors", "sampling"}, f"{name} imports {inside}"
        tree = ast.parse(MODULES[name].read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "open"]
        assert not calls, f"{name} opens a file"


def test_format_imports_nothing_of_mmpool_but_errors() -> None:
    for name in (n for n in MODULES if unit(n) == "format" and n != "mmpool.format"):
        assert GRAPH[name] <= {"mmpool.errors"}, f"{name} imports {GRAPH[name]}"


def test_the_iterator_never_reads_the_dataset() -> None:
    assert "mmpool.stream.dataset" not in GRAPH["mmpool.stream.iterator"]
    init = next(
        n
        for n in ast.walk(ast.parse(MODULES["mmpool.stream.iterator"].read_text()))
        if isinstance(n, ast.ClassDef) and n.name == "StreamIterator"
    ).body
    params = next(f for f in init if isinstance(f, ast.FunctionDef) and f.name == "__init__").args.args
    assert [a.arg for a in params][:3] == ["self", "config", "catalog"]  # configuration comes as a StreamConfig


def test_the_layering_check_sees_every_kind_of_import(tmp_path: Path) -> None:
    # The check must see imports under TYPE_CHECKING and inside functions, or a cycle could hide there.
    assert "mmpool.stream.dataset" in GRAPH["mmpool"]  # only under TYPE_CHECKING in mmpool/__init__.py
    assert "mmpool.convert.converter" in GRAPH["mmpool.cli"]  # at the top and inside functions
    assert "mmpool.ops.sizing" in GRAPH["mmpool.cli"]  # only inside a function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_every_package_init_says_what_it_holds() -> None:
    for name, path in MODULES.items():
        if path.name == "__init__.py":
            doc = ast.get_docstring(ast.parse(path.read_text()))
            assert doc, f"{path} has no docstring"
            for sub in (n for n in MODULES if n.rpartition(".")[0] == name and n != name):
                if name != "mmpool":
                    assert f"``{sub.rpartition('.')[2]}``" in doc, f"{path}'s docstring does not name {sub}"


def test_readme_code_map_names_every_module() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Code map")
    section = readme[start : readme.find("\n## ", start + 1)]
    listed = set(re.findall(r"`(mmpool/[\w/]+\.py)`", section))
    wanted = {str(p.relative_to(ROOT)) for p in MODULES.values() if p.name not in ("__init__.py", "__main__.py")}
    assert wanted - listed == set(), f"modules missing from the README's code map: {sorted(wanted - listed)}"
    assert listed - wanted == set(), f"the code map names modules that do not exist: {sorted(listed - wanted)}"
