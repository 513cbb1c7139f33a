"""logwatch throughput vs ``grep -E -c`` with the same built-in patterns, on one generated mixed log;
and the daemon's CPU against the rate lines are written at, vs ``tail -F | grep``.

The log (1,000,000 lines by default) mixes nginx combined lines, sshd auth lines, MEV service
lines at every level and syslog/kernel lines. logwatch has its sources all pointed at that file,
so every built-in pattern applies, reading from the start: in ``mevwatch run`` (HTTP server, alert
engine; timed from ready to its lines-read counter reaching the end, polled every 100 ms), and as
the collector alone in this process (where the time goes, without the daemon around it). Prints
lines/s and the ratios. Target: logwatch >= 300,000 lines/s.

Growth (--rates): the daemon follows the file while a writer appends at each rate for
--rate-seconds; its CPU beside that of ``tail -n0 -F FILE | grep -E --line-buffered`` with the
same patterns.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import cpu_ns, load_average, machine, mevwatch_daemon, record, stop

from mevwatch.aio import wait_for
from mevwatch.collectors.base import CollectorContext
from mevwatch.collectors.logwatch import LogwatchCollector, LogwatchOptions
from mevwatch.daemon.state import StateDB

TARGET = 300_000

# The built-in patterns as POSIX ERE (what `grep -E` takes): same lines, one alternation.
GREP_PATTERNS = [
    r"sshd\[[0-9]+\]: Failed password for (invalid user )?[^ ]* from [^ ]+",
    r"sshd\[[0-9]+\]: Invalid user [^ ]* ?from [^ ]+",
    r'^[^ ]+ [^ ]+ [^ ]+ \[[^]]*\] "([^"\\]|\\.)*" 40[13] ([0-9]+|-) "([^"\\]|\\.)*" "([^"\\]|\\.)*"',
    r"(^|[^A-Za-z0-9_])ERROR([^A-Za-z0-9_]|$)",
    r"(^|[^A-Za-z0-9_])WARN(ING)?([^A-Za-z0-9_]|$)",
    r"No space left on device",
    r"Killed process [0-9]+",
]

_PATHS = ["/api/v2/opportunities", "/api/v2/execute", "/health", "/api/v2/strategies/7", "/metrics", "/admin"]
_AGENTS = ["curl/8.5.0", "python-requests/2.31", "Mozilla/5.0 (X11; Linux x86_64)", "Go-http-client/1.1"]
_MODULES = ["strategy.arbitrage", "strategy.sandwich", "detection.mempool", "execution.bundle", "analytics.writer"]


def mixed_line(rng: random.Random, i: int) -> str:
    kind = rng.random()
    ts = f"Nov 25 10:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}"
    if kind < 0.25:
        status = rng.choices([200, 401, 403, 404, 500], [80, 5, 3, 7, 5])[0]
        path = rng.choice(_PATHS) + (f"?page={rng.choice([401, 403, 2])}" if rng.random() < 0.1 else "")
        return (
            f'203.0.113.{i % 250} - - [25/Nov/2026:10:00:{i % 60:02d} +0000] "GET {path} HTTP/1.1" {status} '
            f'{rng.choice([0, 179, 401, 612, 4096])} "-" "{rng.choice(_AGENTS)}"'
        )
    if kind < 0.40:
        pid = 20000 + i % 5000
        r = rng.random()
        if r < 0.3:
            return f"{ts} mev-host sshd[{pid}]: Accepted publickey for deploy from 10.0.0.4 port {i % 65536} ssh2"
        if r < 0.7:
            return f"{ts} mev-host sshd[{pid}]: Failed password for root from 198.51.100.{i % 250} port 22 ssh2"
        if r < 0.9:
            return f"{ts} mev-host sshd[{pid}]: Invalid user admin{i % 97} from 198.51.100.{i % 250} port 4444"
        return f"{ts} mev-host sshd[{pid}]: pam_unix(sshd:auth): authentication failure; rhost=198.51.100.7"
    if kind < 0.85:
        level = rng.choices(["INFO", "DEBUG", "WARNING", "ERROR"], [70, 15, 8, 5])[0]
        msg = f"processed opportunity 0x{i:08x} profit={rng.random():.6f} ETH gas={rng.randrange(10**6)}"
        if level == "ERROR" and rng.random() < 0.2:
            msg = "OSError: [Errno 28] No space left on device: '/data/analytics/batch.parquet'"
        return f"2026-11-25 10:00:00,{i % 1000:03d} - {rng.choice(_MODULES)} - {level} - {msg}"
    if rng.random() < 0.02:
        return (
            f"{ts} mev-host kernel: Out of memory: Killed process {i % 30000} (mev-detection) "
            "total-vm:8123456kB, anon-rss:4012345kB"
        )
    return f"{ts} mev-host CRON[{i % 9000}]: (root) CMD (command -v debian-sa1 > /dev/null && debian-sa1 1 1)"


def write_log(path: Path, lines: int, seed: int = 1) -> int:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, lines, 10_000):
            f.write("\n".join(mixed_line(rng, i) for i in range(start, min(start + 10_000, lines))) + "\n")
    return path.stat().st_size


async def run_logwatch(path: Path, lines: int, state_dir: Path) -> tuple[float, float, dict[str, int]]:
    """(wall seconds, CPU seconds, matches by pattern) for logwatch to read the whole file."""
    opts = LogwatchOptions.model_validate(
        {
            "sources": [{"name": n, "paths": [str(path)]} for n in ("auth", "nginx_access", "mev", "syslog")],
            "journal": {"enabled": False},
            "start_at": "beginning",
        }
    )
    db = StateDB.open_dir(state_dir)
    ctx = CollectorContext(kind="logwatch", instance="bench", interval=0.01, timeout=60.0, state=db)
    collector = LogwatchCollector(ctx, opts)
    done = asyncio.Event()

    def emit(_: object) -> None:
        if collector.stats.get("mev") and collector.stats["mev"].lines >= lines:
            done.set()

    cpu0, t0 = time.process_time(), time.perf_counter()
    task = asyncio.create_task(collector.run(emit))
    await wait_for(done.wait(), 600)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await collector.close()
    db.close()
    matches: dict[str, int] = {}
    for st in collector.stats.values():
        for name, n in st.matches.items():
            matches[name] = max(matches.get(name, 0), n)
    return wall, cpu, matches


def _sources(path: Path) -> list[dict[str, object]]:
    return [{"name": n, "paths": [str(path)]} for n in ("auth", "nginx_access", "mev", "syslog")]


def _lines_read(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('mevwatch_log_lines_read_total{source="mev"'))


def _ready(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise TimeoutError("mevwatch not ready")


def run_daemon(path: Path, lines: int, tmp: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of `mevwatch run` reading the whole file, from ready to the last line."""
    config = {"collectors": [{"logwatch": {"sources": _sources(path), "journal": {"enabled": False},
                                           "start_at": "beginning"}}]}
    proc, port = mevwatch_daemon(json.dumps(config), tmp)
    try:
        _ready(port)
        t0, cpu0 = time.perf_counter(), cpu_ns(proc.pid)
        while _lines_read(port) < lines:
            if time.perf_counter() - t0 > 600:
                raise TimeoutError("logwatch did not read the whole file in 600 s")
            time.sleep(0.1)
        return time.perf_counter() - t0, (cpu_ns(proc.pid) - cpu0) / 1e9
    finally:
        stop(proc)


def _pids(proc: subprocess.Popen[bytes]) -> list[int]:
    """The shell pipeline's processes (its children)."""
    out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False).stdout
    return [proc.pid, *(int(p) for p in out.split())]


def follow_rates(rates: list[int], seconds: float, tmp: Path) -> list[tuple[int, float, float]]:
    """(lines/s, mevwatch CPU cores, tail|grep CPU cores) while a writer appends at each rate."""
    rng = random.Random(5)
    sample = [mixed_line(rng, i) + "\n" for i in range(10_000)]
    out = []
    for rate in rates:
        path = tmp / f"follow-{rate}.log"
        path.write_text("")
        config = {"collectors": [{"logwatch": {"sources": _sources(path), "journal": {"enabled": False}}}]}
        proc, port = mevwatch_daemon(json.dumps(config), tmp / f"follow-{rate}")
        grep = "|".join(f"({p})" for p in GREP_PATTERNS).replace("'", "'\\''")
        pipe = subprocess.Popen(["sh", "-c", f"tail -n0 -F {path} | LC_ALL=C grep -E --line-buffered '{grep}'"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            _ready(port)
            time.sleep(2.0)
            pids = _pids(pipe)
            c_mw, c_pipe = cpu_ns(proc.pid), sum(cpu_ns(p) for p in pids)
            t0 = time.monotonic()
            written = 0
            with path.open("a") as f:
                while (now := time.monotonic()) < t0 + seconds:
                    due = int((now - t0) * rate)
                    if due > written:
                        f.writelines(sample[(written + i) % len(sample)] for i in range(due - written))
                        f.flush()
                        written = due
                    time.sleep(0.01)
            time.sleep(1.5)  # the last lines read by both
            elapsed = time.monotonic() - t0
            mw = (cpu_ns(proc.pid) - c_mw) / 1e9 / elapsed
            pp = (sum(cpu_ns(p) for p in pids) - c_pipe) / 1e9 / elapsed
            read = _lines_read(port)
        finally:
            stop(proc)
            # the pipeline runs in its own session: stop the whole group, or tail -F outlives sh
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pipe.pid, signal.SIGTERM)
            stop(pipe)
        print(f"{rate:>8,} lines/s for {seconds:g}s: mevwatch {mw * 100:.2f} % of a core (read {read:,.0f} of "
              f"{written:,}), tail -F | grep {pp * 100:.2f} %; load average {load_average()}")
        out.append((rate, mw, pp))
    return out


def run_grep(path: Path) -> tuple[float, int]:
    grep = shutil.which("grep") or "grep"
    argv = [grep, "-E", "-c", "|".join(f"({p})" for p in GREP_PATTERNS), str(path)]
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"}, check=False)
    wall = time.perf_counter() - t0
    if out.returncode not in (0, 1):
        raise RuntimeError(f"grep failed: {out.stderr}")
    return wall, int(out.stdout.strip() or 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; the best is reported")
    ap.add_argument("--keep", type=Path, help="write the generated log here and keep it")
    ap.add_argument("--rates", default="100,1000,10000", help="lines/s appended while the daemon follows ('': skip)")
    ap.add_argument("--rate-seconds", type=float, default=20.0, help="seconds of writing at each rate")
    args = ap.parse_args()
    print(f"machine: {machine()}; load average {load_average()}")
    with tempfile.TemporaryDirectory(prefix="mevwatch-bench-logwatch-") as tmp:
        path = args.keep or Path(tmp) / "mixed.log"
        t0 = time.perf_counter()
        size = write_log(path, args.lines)
        print(f"log: {args.lines:,} lines, {size / 1e6:.1f} MB, generated in {time.perf_counter() - t0:.1f}s")
        best_lw: tuple[float, float, dict[str, int]] | None = None
        best_grep: tuple[float, int] | None = None
        daemon_walls = []
        for i in range(args.repeat):
            dw, dc = run_daemon(path, args.lines, Path(tmp) / f"daemon{i}")
            daemon_walls.append(dw)
            lw = asyncio.run(run_logwatch(path, args.lines, Path(tmp) / f"state{i}"))
            gr = run_grep(path)
            print(f"run {i + 1}: mevwatch run {dw:.2f}s wall {dc:.2f}s CPU; collector in process {lw[0]:.2f}s wall "
                  f"{lw[1]:.2f}s CPU; grep -E -c {gr[0]:.2f}s; load average {load_average()}")
            if best_lw is None or lw[0] < best_lw[0]:
                best_lw = lw
            if best_grep is None or gr[0] < best_grep[0]:
                best_grep = gr
        assert best_lw is not None
        assert best_grep is not None
    lw_rate = args.lines / best_lw[0]
    grep_rate = args.lines / best_grep[0]
    print("matches by pattern (logwatch): " + ", ".join(f"{k}={v}" for k, v in sorted(best_lw[2].items())))
    print(f"lines matching any pattern (grep -E -c): {best_grep[1]}")
    print(f"logwatch: {lw_rate:,.0f} lines/s ({best_lw[0]:.2f}s wall, {best_lw[1]:.2f}s CPU)")
    print(f"grep -E -c: {grep_rate:,.0f} lines/s ({best_grep[0]:.2f}s)")
    print(f"ratio logwatch/grep: {lw_rate / grep_rate:.2f}")
    daemon_rate = args.lines / min(daemon_walls)
    print(f"mevwatch run: {daemon_rate:,.0f} lines/s (best of {args.repeat}: {min(daemon_walls):.2f}s, "
          f"median {statistics.median(daemon_walls):.2f}s)")
    print(f"target >= {TARGET:,} lines/s in the daemon: {'met' if daemon_rate >= TARGET else 'NOT met'}")
    record("logwatch lines/s reading a backlog, in the daemon", mevwatch=daemon_rate, unit="lines/s",
           anchor_name="grep -E -c", anchor=grep_rate, goal=f">= {TARGET:,}", met=daemon_rate >= TARGET)
    if args.rates:
        with tempfile.TemporaryDirectory(prefix="mevwatch-bench-logwatch-") as tmp:
            rows = follow_rates([int(r) for r in args.rates.split(",")], args.rate_seconds, Path(tmp))
        for rate, mw, pp in rows:
            record(f"logwatch daemon CPU following {rate:,} lines/s", mevwatch=mw * 100, unit="% core",
                   anchor_name="tail -F | grep", anchor=pp * 100)


if __name__ == "__main__":
    main()
