"""`make deb`, then `apt-get install ./mevwatch_*.deb` on this machine: the installed daemon runs, its unit
verifies and names the installed paths, and `apt-get purge` leaves nothing but the state directory.

Also the wheel: built, installed into a fresh venv outside the checkout, it runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mevwatch import __version__
from mevwatch.daemon.clidocs import OUTPUTS
from tests.support.peers import REPO, free_port, missing, need_binary, need_root
from tests.support.unitfile import unit_settings

APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300"]
ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
STATE_DIR = Path("/var/lib/mevwatch")

pytestmark = pytest.mark.slow


def _run(argv: list[str], timeout: float = 300, **kw: object) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=ENV, **kw)  # type: ignore[call-overload]
    assert out.returncode == 0, f"{' '.join(argv)} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """The package built and installed; yields the paths it installed; purges it afterwards."""
    need_root()
    for tool in ("dpkg-buildpackage", "dh_virtualenv", "systemd-analyze"):
        need_binary(tool)
    if subprocess.run(["dpkg-query", "-W", "mevwatch"], capture_output=True).returncode == 0:
        missing("a mevwatch package is installed on this machine already; not touching it")
    out = tmp_path_factory.mktemp("deb")
    _run(["make", "-C", str(REPO), "deb", f"DEB_BUILD={out / 'build'}", f"DEB_OUT={out}"], timeout=600)
    [deb] = sorted(out.glob("mevwatch_*.deb"))
    assert deb.name.startswith(f"mevwatch_{__version__}_")
    state_existed = STATE_DIR.exists()
    try:
        _run([*APT, "install", f"./{deb.name}"], cwd=out)
        files = _run(["dpkg-query", "-L", "mevwatch"]).stdout.splitlines()
        yield files
    finally:
        if subprocess.run(["dpkg-query", "-W", "mevwatch"], capture_output=True).returncode == 0:
            _run([*APT, "purge", "mevwatch"])
        if not state_existed:
            shutil.rmtree(STATE_DIR, ignore_errors=True)


def test_the_installed_command_reports_its_version(installed: list[str]) -> None:
    out = _run(["mevwatch", "--version"]).stdout
    assert out.startswith(f"mevwatch, version {__version__} (branch: ")
    assert "revision: unknown" not in out
    assert "python version:   cpython3.11" in out


def test_the_installed_unit_verifies_and_names_the_installed_paths(installed: list[str]) -> None:
    unit_path = "/lib/systemd/system/mevwatch.service"
    assert unit_path in installed
    _run(["systemd-analyze", "verify", unit_path])
    unit = unit_settings(Path(unit_path).read_text())
    exec_start = unit["ExecStart"][0].split()
    binary = Path(exec_start[0])
    assert str(binary) in installed
    assert os.access(binary, os.X_OK)
    assert binary.resolve() == Path("/opt/venvs/mevwatch/bin/mevwatch")
    config = Path(exec_start[exec_start.index("--config") + 1])
    conffiles = _run(["dpkg-query", "-W", "-f=${Conffiles}", "mevwatch"]).stdout
    assert str(config) in conffiles, "the unit's config is a conffile of the package"
    # the service's user and group come from the package's sysusers file, and may read the config
    sysusers = Path("/usr/lib/sysusers.d/mevwatch.conf").read_text()
    assert re.search(rf"^u {unit['User'][0]}\b", sysusers, re.M)
    assert config.stat().st_gid == int(_run(["getent", "group", unit["Group"][0]]).stdout.split(":")[2])
    assert config.stat().st_mode & 0o777 == 0o640
    _run(["runuser", "-u", unit["User"][0], "--", str(binary), "check-config", str(config)])
    # its state directory is the one it may write
    state = Path("/var/lib") / unit["StateDirectory"][0]
    assert str(state) in " ".join(unit["ReadWritePaths"])
    for doc in " ".join(unit["Documentation"]).split():
        if doc.startswith("file://"):
            assert doc[len("file://"):] in installed, doc
        elif doc.startswith("man:"):
            name, section = re.fullmatch(r"man:([\w-]+)\((\d)\)", doc).groups()  # type: ignore[union-attr]
            assert f"/usr/share/man/man{section}/{name}.{section}.gz" in installed
    for target in OUTPUTS.values():  # completions and the man page where clidocs says
        assert target in installed, target


def test_the_installed_daemon_serves_metrics_as_its_service_user(installed: list[str]) -> None:
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)  # what StateDirectory= does before the service starts
    shutil.chown(STATE_DIR, "mevwatch", "mevwatch")
    port = free_port()
    config = STATE_DIR / "test-config.yaml"  # where the service user can read it (pytest's tmp is root's)
    config.write_text("collectors:\n  - process: {}\n  - memory: {}\n")
    shutil.chown(config, "mevwatch", "mevwatch")
    proc = subprocess.Popen(["runuser", "-u", "mevwatch", "--", "env", f"STATE_DIRECTORY={STATE_DIR}",
                             "/usr/bin/mevwatch", "run", "--config", str(config),
                             "--web.listen-address", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        body = ""
        while time.monotonic() < deadline and "mevwatch_process_threads" not in body:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                    body = resp.read().decode()
            except OSError:
                time.sleep(0.2)
        assert "mevwatch_process_threads" in body
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(10)
    assert any(STATE_DIR.iterdir()), "the daemon keeps its state in the state directory"


def test_the_installed_modules_are_byte_compiled(installed: list[str]) -> None:
    """The service cannot write byte code into /opt: postinst compiled it, so no start compiles again."""
    python = "/opt/venvs/mevwatch/bin/python"
    tag = _run([python, "-c", "import sys; print(sys.implementation.cache_tag)"]).stdout.strip()
    sources = [Path(p) for p in installed if p.endswith(".py") and "/site-packages/mevwatch/" in p]
    assert sources
    uncompiled = [s for s in sources if not (s.parent / "__pycache__" / f"{s.stem}.{tag}.pyc").is_file()]
    assert uncompiled == []


def test_purge_leaves_nothing_but_the_state_dir(installed: list[str]) -> None:
    # runs last in this module: purge now (the fixture's purge then finds nothing to do)
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    _run(["runuser", "-u", "mevwatch", "--", "/usr/bin/mevwatch", "--version"])  # a run as the service user
    _run([*APT, "purge", "mevwatch"])
    shared = {"/", "/etc", "/lib", "/lib/systemd", "/lib/systemd/system", "/opt", "/usr", "/usr/bin", "/usr/lib",
              "/usr/share", "/usr/share/doc", "/usr/share/man", "/usr/share/man/man1", "/usr/lib/tmpfiles.d",
              "/usr/lib/sysusers.d", "/usr/share/bash-completion", "/usr/share/bash-completion/completions",
              "/usr/share/zsh", "/usr/share/zsh/vendor-completions", "/."}
    left = [p for p in installed if p not in shared and os.path.lexists(p)]
    assert left == []
    wants = "/etc/systemd/system/multi-user.target.wants/mevwatch.service"
    for path in ("/opt/venvs/mevwatch", "/etc/mevwatch", wants):
        assert not os.path.lexists(path), path
    assert STATE_DIR.is_dir(), "purge keeps the state directory"


def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(REPO)], timeout=300)
    [wheel] = dist.glob("mevwatch-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    _run([str(venv / "bin" / "pip"), "install", "-q", "--no-compile", "-c", str(REPO / "constraints.txt"), str(wheel)],
         timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    version = _run([str(venv / "bin" / "mevwatch"), "--version"], cwd=elsewhere).stdout
    assert version.startswith(f"mevwatch, version {__version__} (branch: ")
    assert "revision: unknown" not in version  # the wheel carries its build information
    check = _run([str(venv / "bin" / "mevwatch"), "check-config", str(REPO / "config.example.yaml")], cwd=elsewhere)
    assert "OK" in check.stdout
