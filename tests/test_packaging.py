"""pyproject.toml declares every package the code imports, and the code imports what it declares."""

from __future__ import annotations

import ast
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own TOML reader
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CODE = [ROOT / "run.py", *sorted((ROOT / "src" / "cvt_lab").rglob("*.py"))]
# modules only hparams_search=optuna loads: they may import the [sweep] extra
SWEEP_ONLY = {ROOT / "src" / "cvt_lab" / "sampler.py"}


def declared(extra: str | None = None) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def imported(path: Path, providers: dict[str, list[str]]) -> set[str]:
    """The distributions of the third-party modules ``path`` imports (a module no installed
    distribution provides stands for itself)."""
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    names |= {node.module for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module}
    tops = {name.split(".")[0] for name in names} - set(sys.stdlib_module_names) - {"cvt_lab"}
    return {canonicalize_name(dist) for top in tops for dist in providers.get(top, [top])}


def test_every_imported_package_is_declared():
    runtime, sweep, providers = declared(), declared("sweep"), packages_distributions()
    missing = {path.relative_to(ROOT).as_posix():
               sorted(imported(path, providers) - runtime - (sweep if path in SWEEP_ONLY else set()))
               for path in CODE}
    assert {k: v for k, v in missing.items() if v} == {}


def test_every_declared_runtime_dependency_is_imported():
    providers = packages_distributions()
    used = set().union(*(imported(path, providers) for path in CODE))
    assert declared() - used == set()
