"""Where this build came from (version, branch, revision, build user and date), printed as Prometheus' --version.

A built wheel or Debian package carries ``mevwatch/_build_info.json``, written by setup.py's build step;
a checkout (editable install) asks git instead; anything unknown reads ``unknown``.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from mevwatch import __version__

__all__ = ["BUILD_INFO_FILE", "BuildInfo", "as_dict", "build_info", "collect_build_info", "version_text"]

BUILD_INFO_FILE = "_build_info.json"
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class BuildInfo:
    version: str
    branch: str
    revision: str
    build_user: str
    build_date: str


def _git(repo: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    return out.stdout.strip() or UNKNOWN


def collect_build_info(repo: Path, *, user: str, date: str) -> BuildInfo:
    """What a build from the checkout at ``repo`` records (used by setup.py and by a checkout at run time).

    A build from a copy without git (``make deb``) gets branch and revision from MEVWATCH_BUILD_BRANCH
    and MEVWATCH_BUILD_REVISION."""
    return BuildInfo(
        version=__version__,
        branch=os.environ.get("MEVWATCH_BUILD_BRANCH") or _git(repo, "rev-parse", "--abbrev-ref", "HEAD"),
        revision=os.environ.get("MEVWATCH_BUILD_REVISION") or _git(repo, "rev-parse", "HEAD"),
        build_user=user,
        build_date=date,
    )


@functools.cache
def build_info() -> BuildInfo:
    try:
        data = json.loads(resources.files("mevwatch").joinpath(BUILD_INFO_FILE).read_text(encoding="utf-8"))
        return BuildInfo(**{k: str(data.get(k, UNKNOWN)) for k in BuildInfo.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        pass
    repo = Path(__file__).resolve().parents[1]
    if (repo / ".git").exists() and (repo / "pyproject.toml").is_file():
        return collect_build_info(repo, user=UNKNOWN, date=UNKNOWN)
    return BuildInfo(__version__, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)


def version_text(info: BuildInfo | None = None) -> str:
    """``mevwatch --version`` in the layout of Prometheus and its exporters (python in place of go)."""
    info = info or build_info()
    machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return (
        f"mevwatch, version {info.version} (branch: {info.branch}, revision: {info.revision})\n"
        f"  build user:       {info.build_user}\n"
        f"  build date:       {info.build_date}\n"
        f"  python version:   {platform.python_implementation().lower()}{platform.python_version()}\n"
        f"  platform:         {platform.system().lower()}/{machine}\n"
    )


def as_dict(info: BuildInfo) -> dict[str, str]:
    return asdict(info)
