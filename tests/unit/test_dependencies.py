"""Every runtime dependency is bounded below its next major and pinned in constraints.txt.

The fault played for real: pip is offered, next to the versions the project is tested with, a release
of every runtime dependency at its next major version; the resolver must never pick one, neither with
the constraints file (what ``make`` installs with) nor from the pyproject bounds alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _project() -> dict[str, object]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project: dict[str, object] = data["project"]
    return project


def _runtime() -> list[Requirement]:
    deps = _project()["dependencies"]
    assert isinstance(deps, list)
    return [Requirement(d) for d in deps]


def _all_requirements() -> list[Requirement]:
    extras = _project()["optional-dependencies"]
    assert isinstance(extras, dict)
    return _runtime() + [Requirement(r) for reqs in extras.values() for r in reqs]


def _pins() -> dict[str, Version]:
    out: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt: {line!r} is not name==version"
        out[canonicalize_name(name)] = Version(version)
    return out


def _upper(req: Requirement) -> Version:
    uppers = [Version(s.version) for s in req.specifier if s.operator == "<"]
    assert len(uppers) == 1, f"{req}: needs exactly one upper bound '<N' (the next major version)"
    return uppers[0]


def test_every_dependency_has_a_lower_and_a_major_upper_bound() -> None:
    for req in _all_requirements():
        upper = _upper(req)
        assert upper.release[1:] in ((), (0,), (0, 0)), f"{req}: the upper bound is a major version, not {upper}"
        assert any(s.operator == ">=" for s in req.specifier), f"{req}: needs a lower bound"


def test_every_runtime_dependency_is_pinned_to_its_newest_major() -> None:
    pins = _pins()
    for req in _runtime():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a runtime dependency but not in constraints.txt (add name==version)"
        pin = pins[name]
        assert req.specifier.contains(pin), f"constraints.txt pins {name}=={pin}, outside {req.specifier}"
        # the bound sits right above the tested major: a new major needs a deliberate change of both
        assert _upper(req).major == pin.major + 1, f"{req}: the bound is not the next major after {pin}"


def test_make_installs_with_the_constraints() -> None:
    make = (ROOT / "Makefile").read_text()
    installs = [ln for ln in make.splitlines() if "pip install" in ln and "-e " in ln]
    assert installs, "the Makefile installs the project"
    assert all("-c constraints.txt" in ln for ln in installs), installs
    assert "constraints.txt" in next(ln for ln in make.splitlines() if ln.startswith("$(STAMP):"))


def _wheel(where: Path, name: str, version: Version) -> None:
    dist = canonicalize_name(name).replace("-", "_")
    with zipfile.ZipFile(where / f"{dist}-{version}-py3-none-any.whl", "w") as zf:
        info = f"{dist}-{version}.dist-info"
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")


def _resolve(index: Path, reqs: list[str], constraints: bool, tmp: Path) -> dict[str, Version]:
    report = tmp / "report.json"
    argv = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-index", "--no-deps",
            "--disable-pip-version-check", "--quiet", "--find-links", str(index), "--report", str(report)]
    if constraints:
        argv += ["-c", str(ROOT / "constraints.txt")]
    proc = subprocess.run([*argv, *reqs], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    chosen = json.loads(report.read_text())["install"]
    return {canonicalize_name(i["metadata"]["name"]): Version(i["metadata"]["version"]) for i in chosen}


@pytest.mark.slow
def test_pip_never_picks_a_new_major(tmp_path: Path) -> None:
    pins = _pins()
    index = tmp_path / "index"
    index.mkdir()
    reqs = _runtime()
    for req in reqs:
        pin = pins[canonicalize_name(req.name)]
        _wheel(index, req.name, pin)
        _wheel(index, req.name, Version(f"{pin.major + 1}.0.0"))  # the new major, newest on the index
    specs = [str(r) for r in reqs]
    for constraints in (True, False):
        chosen = _resolve(index, specs, constraints, tmp_path)
        assert chosen == {canonicalize_name(r.name): pins[canonicalize_name(r.name)] for r in reqs}, chosen
    # the control: without the bounds, pip takes every new major it is offered
    bare = _resolve(index, [r.name for r in reqs], False, tmp_path)
    assert all(v.major == pins[n].major + 1 for n, v in bare.items()), bare
