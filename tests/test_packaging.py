"""The wheel ships every package in the tree.

CI installs the checkout non-editably (`pip install .`), so a subpackage that
pyproject.toml does not name is missing from the installed copy while every
test run from the source tree still passes."""

import sys
from pathlib import Path

from helpers import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _packages_in(folder: Path, name: str) -> set[str]:
    found = set()
    for init in folder.rglob("__init__.py"):
        if "__pycache__" in init.parts:
            continue
        rel = init.parent.relative_to(folder)
        found.add(".".join((name, *rel.parts)))
    return found


def test_pyproject_names_every_package():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    in_tree = set()
    for package, folder in setup["package-dir"].items():
        in_tree |= _packages_in(ROOT / folder, package)
    assert in_tree - listed == set(), "add these to [tool.setuptools] packages"
    assert listed - in_tree == set(), "these are listed but have no __init__.py"
