"""Shared helpers of the benchmark scripts: free ports, process stats from /proc, machine facts."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "REPO", "ProcStats", "byte_compile", "free_port", "load_average", "machine", "mevwatch_daemon", "proc_stats",
    "record", "spread", "start", "stop", "wait_port",
]

REPO = Path(__file__).resolve().parents[1]
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcStats:
    cpu_seconds: float
    rss_bytes: int
    uss_bytes: int = 0  # private (unshared) memory: what the process itself costs the host


def proc_stats(pid: int) -> ProcStats:
    """CPU seconds (user+system, this process and reaped children) and RSS of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = sum(int(x) for x in fields[11:15]) / _TICK
    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    uss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                uss += int(line.split()[1]) * 1024
    except OSError:
        pass
    return ProcStats(cpu, rss, uss)


def cpu_ns(pid: int) -> int:
    """Nanoseconds on CPU of every live thread of ``pid`` (/proc/PID/task/*/schedstat): finer than the
    10 ms ticks of /proc/PID/stat, for figures of about a millisecond per operation."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that exited meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not listening after {timeout}s")


def start(argv: list[str], port: int | None = None, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    if port is not None:
        wait_port(port)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {platform.machine()}, {cpu}, Python {sys.version.split()[0]}"


def load_average() -> str:
    """The 1/5/15-minute load average: the machine is shared, so every figure is printed with it."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def byte_compile() -> None:
    """Byte-compile mevwatch's modules, as an installed Python package's are: with PYTHONDONTWRITEBYTECODE
    set (as on the bench machine) every command would otherwise compile every module again."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", *(str(REPO / d) for d in
                    ("mevwatch", "collectors", "daemon", "alerts"))], check=True, stdout=subprocess.DEVNULL)


def spread(values: list[float]) -> tuple[float, float, float]:
    """(min, median, max) of repeated runs."""
    return min(values), statistics.median(values), max(values)


def record(measure: str, *, mevwatch: float, unit: str, anchor_name: str = "", anchor: float | None = None,
           goal: str = "", met: bool | None = None) -> None:
    """One row of the summary table `make bench` prints: printed here, and appended (JSON) to the file
    named by MEVWATCH_BENCH_SUMMARY when it is set. A goal that is not met is a figure, never a failure."""
    row = {"bench": Path(sys.argv[0]).stem, "measure": measure, "unit": unit, "mevwatch": mevwatch,
           "anchor_name": anchor_name, "anchor": anchor, "goal": goal, "met": met}
    verdict = "-" if met is None else ("met" if met else "NOT met")
    versus = f" vs {anchor_name} {anchor:.4g} {unit}" if anchor is not None else ""
    print(f"summary: {measure}: mevwatch {mevwatch:.4g} {unit}{versus}; goal {goal or '-'}: {verdict}")
    path = os.environ.get("MEVWATCH_BENCH_SUMMARY")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def mevwatch_daemon(config: str | None, tmp: str | Path, env: dict[str, str] | None = None
                    ) -> tuple[subprocess.Popen[bytes], int]:
    """`mevwatch run` as a user runs it (HTTP server, alert engine with the default rules unless the
    config says otherwise) on a free loopback port; config None: the embedded default config."""
    port = free_port()
    argv = [str(REPO / ".venv/bin/mevwatch"), "run", "--web.listen-address", f"127.0.0.1:{port}"]
    if config is not None:
        Path(tmp).mkdir(parents=True, exist_ok=True)
        cfg = Path(tmp) / "mevwatch.yaml"
        cfg.write_text(config)
        argv += ["--config", str(cfg)]
    proc = start(argv, port, env={"STATE_DIRECTORY": f"{tmp}/state", **(env or {})})
    return proc, port
