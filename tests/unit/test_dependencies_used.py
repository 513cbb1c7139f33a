"""No dependency that nothing uses: every runtime dependency is imported by mevwatch's own code, and every
package of an extra by the code that extra is for."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import packages_distributions

import pytest

from tests.support.peers import REPO

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
PACKAGE_DIRS = ("daemon", "collectors", "alerts", "mevwatch")
#: what an extra is for: where its packages must be imported (tools run as programs, not imported)
EXTRA_USERS = {"test": ("tests", "bench"), "bench": ("bench",)}
#: run as programs or loaded as pytest plugins, not imported
TOOLS = {
    "pytest",
    "mypy",
    "ruff",
    "shtab",
    "argparse-manpage",
    "pytest-asyncio",
    "pytest-timeout",
    "pytest-xdist",  # make test runs pytest -n
    "looptime",
}
_IMPORT_RE = re.compile(r"^\s*(?:from|import)\s+([A-Za-z_][A-Za-z0-9_]*)", re.M)


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imported(dirs: tuple[str, ...]) -> set[str]:
    """Distributions whose top-level modules the code under ``dirs`` imports."""
    by_module = packages_distributions()
    names: set[str] = set()
    for d in dirs:
        for path in (REPO / d).rglob("*.py"):
            for module in _IMPORT_RE.findall(path.read_text(encoding="utf-8")):
                # a module of a distribution not installed here counts under its own name (matplotlib)
                names.update(n.lower().replace("_", "-") for n in by_module.get(module, (module,)))
    return names


def test_every_runtime_dependency_is_imported_by_mevwatch() -> None:
    unused = {_name(r) for r in PROJECT["dependencies"]} - _imported(PACKAGE_DIRS)
    assert unused == set(), f"runtime dependencies nothing in {PACKAGE_DIRS} imports: {sorted(unused)}"


@pytest.mark.parametrize("extra", sorted(PROJECT.get("optional-dependencies", {})))
def test_every_package_of_an_extra_is_imported_where_it_is_for(extra: str) -> None:
    assert extra in EXTRA_USERS, f"extra {extra!r}: say in EXTRA_USERS which code uses it"
    wanted = {_name(r) for r in PROJECT["optional-dependencies"][extra]} - TOOLS
    wanted = {n for n in wanted if not n.startswith("types-")}  # stubs are read by mypy, never imported
    unused = wanted - _imported(EXTRA_USERS[extra])
    assert unused == set(), f"extra {extra!r} installs what nothing imports: {sorted(unused)}"
