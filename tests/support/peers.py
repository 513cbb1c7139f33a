"""Finding and starting the real peers tests talk to; a missing peer skips, or fails under CI.

``MEVWATCH_REQUIRE_ALL=1`` (set by .ci/run) turns every skip for a missing peer into a failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

__all__ = [
    "REPO",
    "REQUIRE_ALL",
    "free_port",
    "missing",
    "need_binary",
    "need_root",
    "start_alertmanager",
    "start_process",
    "stop_process",
    "wait_port",
    "wait_port_async",
]

REPO = Path(__file__).resolve().parents[2]
REQUIRE_ALL = os.environ.get("MEVWATCH_REQUIRE_ALL") == "1"
_EXTRA_PATH = [REPO / ".tools" / "node" / "node_modules" / ".bin", Path("/usr/sbin"), Path("/usr/bin")]


def missing(reason: str) -> None:
    """Skip the test for a missing peer, or fail it when CI requires every peer."""
    if REQUIRE_ALL:
        pytest.fail(f"required peer missing (MEVWATCH_REQUIRE_ALL=1): {reason}")
    pytest.skip(reason)


def need_binary(name: str) -> str:
    path = shutil.which(name) or next(
        (str(d / name) for d in _EXTRA_PATH if (d / name).is_file() and os.access(d / name, os.X_OK)), None
    )
    if path is None:
        missing(f"{name} not installed (make test installs it)")
        raise AssertionError("unreachable")
    return path


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


async def wait_port_async(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def start_process(
    argv: Sequence[str], port: int | None = None, env: dict[str, str] | None = None,
    cwd: Path | None = None, log: Path | None = None, timeout: float = 20.0,
) -> subprocess.Popen[bytes]:
    """Start a server process (own process group) and wait until it listens on ``port``."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        list(argv), stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        cwd=cwd, start_new_session=True,
    )
    if port is not None:
        try:
            wait_port(port, timeout, proc)
        except Exception:
            stop_process(proc)
            if log and log.exists():
                raise RuntimeError(f"{argv[0]} did not start:\n{log.read_text(errors='replace')[-3000:]}") from None
            raise
    return proc


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, 15)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait(timeout)


def start_alertmanager(tmp: Path, name: str, config: Path, web: int, cluster: int | None = None,
                       peers: Sequence[int] = ()) -> subprocess.Popen[bytes]:
    """Debian's prometheus-alertmanager on 127.0.0.1:``web``, its data in ``tmp/<name>-data`` (kept across a
    restart, as its silences are); with ``cluster``, a gossip peer of ``peers`` with timings short enough
    for a test, else alone."""
    gossip = ([f"--cluster.listen-address=127.0.0.1:{cluster}", *(f"--cluster.peer=127.0.0.1:{p}" for p in peers),
               "--cluster.peer-timeout=2s", "--cluster.settle-timeout=2s", "--cluster.gossip-interval=100ms",
               "--cluster.pushpull-interval=2s", "--cluster.probe-interval=500ms"]
              if cluster is not None else ["--cluster.listen-address="])
    return start_process([need_binary("prometheus-alertmanager"), f"--config.file={config}",
                          f"--storage.path={tmp / f'{name}-data'}", f"--web.listen-address=127.0.0.1:{web}", *gossip],
                         port=web, log=tmp / f"{name}.log")
