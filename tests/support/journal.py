"""A systemd-journald of the test's own, in a private mount namespace: the host's journal (or its absence) is
untouched. Programs that must see it (a daemon, ``mevwatch diagnose``, ``systemd-cat``) run through
``nsenter -t PID -m --``."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.peers import need_root

__all__ = ["JOURNALD", "journal_err", "journald_namespace", "nsenter"]

JOURNALD = Path("/lib/systemd/systemd-journald")
_JOURNAL_NS = """
set -e
mount -t tmpfs tmpfs /run/systemd/journal
mount -t tmpfs tmpfs /run/log
mkdir /run/log/journal
exec {journald}
"""


@contextmanager
def journald_namespace() -> Iterator[int]:
    """The pid of a systemd-journald running in a mount namespace of its own (skips where it cannot start)."""
    need_root()
    for tool in ("unshare", "nsenter", "journalctl", "systemd-cat"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    if not JOURNALD.exists():
        pytest.skip(f"{JOURNALD} not installed")
    made = [p for p in (Path("/run/systemd/journal"), Path("/run/log")) if not p.exists()]  # mount points
    for p in made:
        p.mkdir(parents=True)
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                             _JOURNAL_NS.format(journald=JOURNALD)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        socket = Path(f"/proc/{proc.pid}/root/run/systemd/journal/socket")  # seen through its namespace
        deadline = time.monotonic() + 10
        while not socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else ""
                pytest.skip(f"systemd-journald does not start in a mount namespace here: {err.strip()}")
            time.sleep(0.05)
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(10)
        for p in made:
            p.rmdir()


def nsenter(pid: int) -> list[str]:
    """The argv prefix that runs a program in the namespace of ``pid``."""
    return ["nsenter", "-t", str(pid), "-m", "--"]


def journal_err(pid: int, tag: str, lines: str) -> None:
    """Write ``lines`` to the namespace's journal at priority err, as ``tag``."""
    subprocess.run([*nsenter(pid), "systemd-cat", "-t", tag, "-p", "err"], input=lines.encode(), check=True,
                   timeout=10)
