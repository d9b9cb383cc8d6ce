"""The house keeps its shape: folders import one way (no cycle, no upward import),
the job creates its attributes in __init__ only, and `import zoo_adapt` stays torch-free.
Read from the source with `ast`, so nothing is imported to check it."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from helpers import ROOT

PACKAGE = ROOT / "zoo_adapt"
# each folder may import only folders listed before it (and the top-level modules)
FLOORS = ["zoo", "model", "metrics", "data", "engine", "adapt", "ship", "job", "cli"]
TOP = {"errors", "files", "progress", "seeds", "report"}  # modules every folder may use


def module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path) -> set[str]:
    """zoo_adapt modules `path` imports, at the top or inside functions."""
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("zoo_adapt"):
            submodules = {f"{node.module}.{a.name}" for a in node.names} & modules
            found |= submodules or {node.module}  # `from package import module` imports the module
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("zoo_adapt")}
    return found & modules


GRAPH = {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def folder(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in FLOORS) else None


@pytest.mark.parametrize("name", sorted(m for m in GRAPH if folder(m) in FLOORS))
def test_folders_import_only_folders_below_them(name):
    here = FLOORS.index(folder(name))
    for target in GRAPH[name]:
        there = folder(target)
        if there is None:
            assert target.split(".")[-1] in TOP | {"zoo_adapt"}, f"{name} imports {target}"
        else:
            assert FLOORS.index(there) <= here, f"{name} ({folder(name)}/) imports {target} ({there}/), a floor up"


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_the_job_creates_its_attributes_in_init_only():
    tree = ast.parse((PACKAGE / "job" / "finetune.py").read_text())
    job = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Job")
    for method in (n for n in job.body if isinstance(n, ast.FunctionDef) and n.name != "__init__"):
        for node in ast.walk(method):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in targets:
                if isinstance(target, ast.Attribute) and getattr(target.value, "id", None) == "self":
                    raise AssertionError(f"Job.{method.name} sets self.{target.attr} (attributes belong in __init__)")


def test_importing_the_package_imports_no_torch():
    code = "import sys, zoo_adapt; print([m for m in ('torch', 'numpy', 'PIL', 'timm') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
