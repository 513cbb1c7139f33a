"""setuptools hook: a built wheel records where it came from (``mevwatch --version``) and carries the
runbooks (docs/runbooks.md as mevwatch/runbooks.md).

Everything else about the package is in pyproject.toml.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import sys
import time
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithInfo(build_py):
    def run(self) -> None:
        super().run()
        if self.dry_run or getattr(self, "editable_mode", False):
            return
        sys.path.insert(0, str(HERE))
        try:
            from daemon.buildinfo import BUILD_INFO_FILE, as_dict, collect_build_info
        finally:
            sys.path.pop(0)
        epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
        user = os.environ.get("MEVWATCH_BUILD_USER") or f"{getpass.getuser()}@{socket.gethostname()}"
        info = collect_build_info(HERE, user=user, date=time.strftime("%Y%m%d-%H:%M:%S", time.gmtime(epoch)))
        target = Path(self.build_lib) / "mevwatch" / BUILD_INFO_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(as_dict(info), indent=1) + "\n", encoding="utf-8")
        # the runbooks the daemon serves at /runbooks and diagnose titles its sections with
        (target.parent / "runbooks.md").write_bytes((HERE / "docs" / "runbooks.md").read_bytes())


setup(cmdclass={"build_py": BuildPyWithInfo})
