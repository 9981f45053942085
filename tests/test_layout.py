"""The package layout is the architecture: one-way imports between stages, no import circles.

The rules checked here are the ones written in ``docs/architecture.md``.
Imports are read from the source (``ast``), function-level ones included;
imports under ``if TYPE_CHECKING:`` are left out (they never run).
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

import mimir
from mimir import _moved

SRC = Path(mimir.__file__).resolve().parent

#: package (first level under mimir) -> the packages it may import. Keep in step with docs/architecture.md.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "utils": {"errors"},
    "preprocessing": {"errors", "utils"},
    "models": {"errors", "utils"},
    "synth": {"errors", "utils", "preprocessing"},
    "inference": {"errors", "utils", "preprocessing", "models"},
    "outputs": {"errors", "utils", "inference"},
    "training": {"errors", "utils", "preprocessing", "models"},
    "batch": {"errors", "utils", "preprocessing", "models", "inference", "outputs"},
    "analysis": {"errors", "utils", "models", "training"},
    "demo": {"errors", "utils", "preprocessing", "models", "inference", "outputs", "synth"},
    "cli": {"errors", "utils", "preprocessing", "models", "inference", "outputs", "synth", "training", "batch", "demo", "analysis"},
    "__main__": {"cli"},
    "_moved": set(),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _runtime_imports(module: str, path: Path) -> set[str]:
    """The mimir modules that ``module`` imports when it runs (any depth, TYPE_CHECKING blocks left out)."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"

    def resolve(name: str) -> str | None:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        return name or None

    def visit(node: ast.AST) -> None:
        if _is_type_checking(node):
            return
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            target = resolve(name) if name.startswith("mimir") else None
            if target and target != module:
                found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


GRAPH = {m: _runtime_imports(m, p) for m, p in MODULES.items()}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "mimir"


def test_every_package_is_known_to_the_layer_rules() -> None:
    packages = {_package(m) for m in MODULES} - {"mimir"}
    assert packages == set(ALLOWED), "a new package needs its line in ALLOWED and docs/architecture.md"


def test_no_import_circles() -> None:
    try:
        order = list(TopologicalSorter(GRAPH).static_order())
    except CycleError as exc:  # pragma: no cover - the failure message is the point
        pytest.fail(f"import circle: {' -> '.join(exc.args[1])}")
    assert set(order) == set(MODULES)


def test_imports_follow_the_data_flow() -> None:
    # mimir/__init__ itself installs the old-path aliases and the lazy re-exports
    rules = {**ALLOWED, "mimir": {"_moved", "utils"}}
    wrong = []
    for module, targets in GRAPH.items():
        here = _package(module)
        for target in targets:
            there = _package(target)
            if there == here or target == "mimir":  # within a package; mimir itself (for __version__)
                continue
            if there not in rules[here]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against docs/architecture.md: " + ", ".join(sorted(wrong))


def test_every_module_imports_in_dependency_order_in_a_fresh_interpreter() -> None:
    order = [m for m in TopologicalSorter(GRAPH).static_order() if m != "mimir.__main__"]  # __main__ runs the CLI
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    r = subprocess.run([sys.executable, "-c", code, *order], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]


def test_public_api_names_resolve() -> None:
    for name in mimir.__all__:
        assert getattr(mimir, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mimir.nope  # noqa: B018


@pytest.mark.parametrize("old", sorted(_moved.MOVED))
def test_old_import_paths_still_work_and_say_where_the_module_went(old: str) -> None:
    new = _moved.MOVED[old]
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert messages == [f"{old} moved to {new}; import it from there (the old path will be removed)"]


def test_old_names_that_became_packages_keep_their_attributes() -> None:
    from mimir.inference import Predictor, predict
    from mimir.inference.predictor import Predictor as P2

    assert Predictor is P2 and callable(predict)


def test_tests_mirror_the_packages() -> None:
    """tests/<package>/test_<module>.py for the stage packages, so a module's tests are easy to find."""
    tests = Path(__file__).resolve().parent
    for folder in tests.iterdir():
        if folder.is_dir() and not folder.name.startswith((".", "_")):
            assert (SRC / folder.name).is_dir(), f"tests/{folder.name} has no package"
