"""What the services and rpc collectors' host scans cost as the host grows, against the commands
the runbook uses for the same answer.

1. services (process backend, the default units): one scan of /proc with --procs extra processes
   running, against `pgrep -x NAME` once per unit (what a shell check of the seven services runs);
2. rpc's established-connection count to one endpoint port with --sockets extra established
   loopback connections to another port, against `ss -Htn state established dport = :PORT`
   (the runbook's `netstat | grep :8545 | wc -l`, with the same kernel filter).

CPU of mevwatch's function in this process (user + system, process_time) against the CPU of the
command's process (its rusage); each figure is min/median/max of --repeat calls, at each size.
Both count the same things: the bench prints both counts (the connection counts must agree; the
process counts may differ by what started or ended between the calls).

    .venv/bin/python bench/hostscans.py [--procs 0,1000] [--sockets 0,4000] [--repeat 21]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _common import load_average, machine, record, spread

from mevwatch.collectors.rpc import count_established, read_tcp_sockets
from mevwatch.collectors.services import ServicesOptions, scan_processes

T = tuple[float, float, float]


def cpu_of_call(fn: Callable[[], int], repeat: int) -> tuple[T, int]:
    times, result = [], 0
    for _ in range(repeat):
        t0 = time.process_time()
        result = fn()
        times.append((time.process_time() - t0) * 1000)
    return spread(times), result


def cpu_of_command(argv: list[str], repeat: int) -> tuple[T, str]:
    times, out = [], ""
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        times.append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000)
    return spread(times), out


def fmt(t: T) -> str:
    return "{:.2f}/{:.2f}/{:.2f}".format(*t)


def services(sizes: list[int], repeat: int) -> None:
    units = ServicesOptions().units
    comms = frozenset(u.process_comm for u in units if u.process_comm is not None)
    pgrep = shutil.which("pgrep") or "pgrep"
    print(f"\nservices: a scan for the {len(units)} default units vs pgrep -x once per unit, CPU ms min/median/max")
    for extra in sizes:
        procs = [subprocess.Popen(["sleep", "600"]) for _ in range(extra)]
        try:
            total = sum(1 for p in Path("/proc").iterdir() if p.name.isdigit())
            mw, found = cpu_of_call(lambda: len(scan_processes(Path("/proc"), False, comms)), repeat)
            per_unit = [cpu_of_command([pgrep, "-x", c], repeat) for c in sorted(comms)]
            low, mid, high = (sum(t[0][i] for t in per_unit) for i in range(3))  # the seven calls' sum
            anchor: T = (low, mid, high)
            pgrep_found = sum(len(out.split()) for _, out in per_unit)
            print(f"  {total:6d} processes: mevwatch {fmt(mw)}   pgrep x{len(per_unit)} {fmt(anchor)}   "
                  f"(found {found} / {pgrep_found}: other users' processes come and go)")
            record(f"services scan, {total} processes", mevwatch=mw[1], unit="ms CPU",
                   anchor_name=f"pgrep -x, {len(per_unit)} units", anchor=anchor[1])
        finally:
            for p in procs:
                p.kill()
                p.wait()


def connections(sizes: list[int], repeat: int) -> None:
    ss = shutil.which("ss") or "/usr/bin/ss"
    print("\nrpc: established connections to one endpoint port vs ss with a dport filter, CPU ms min/median/max")
    endpoint = socket.socket()
    endpoint.bind(("127.0.0.1", 0))
    endpoint.listen(16)
    port = endpoint.getsockname()[1]
    ours = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    ours += [endpoint.accept()[0] for _ in range(3)]
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen(1024)
    try:
        for extra in sizes:
            crowd: list[socket.socket] = []
            try:
                for _ in range(extra // 2):  # each connection is two established sockets
                    crowd.append(socket.create_connection(other.getsockname()))
                    crowd.append(other.accept()[0])
                mw, found = cpu_of_call(
                    lambda: count_established(read_tcp_sockets(Path("/proc"), frozenset({port})), "127.0.0.1", port),
                    repeat)
                anchor, out = cpu_of_command([ss, "-Htn", "state", "established", "dport", "=", f":{port}"], repeat)
                assert found == len(out.splitlines()) == 3, (found, out)
                print(f"  {extra + 6:6d} established sockets: mevwatch {fmt(mw)}   ss {fmt(anchor)}   "
                      f"(both found {found})")
                record(f"rpc connection count, {extra + 6} established sockets", mevwatch=mw[1], unit="ms CPU",
                       anchor_name="ss dport filter", anchor=anchor[1])
            finally:
                for s in crowd:
                    s.close()
    finally:
        for s in (*ours, endpoint, other):
            s.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--procs", default="0,1000", help="extra processes, a comma list")
    ap.add_argument("--sockets", default="0,4000", help="extra established sockets, a comma list")
    ap.add_argument("--repeat", type=int, default=21)
    args = ap.parse_args()
    need = 2 * max(int(n) for n in args.sockets.split(",")) + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    print(f"machine: {machine()}; load average {load_average()}")
    services([int(n) for n in args.procs.split(",")], args.repeat)
    connections([int(n) for n in args.sockets.split(",")], args.repeat)
    print(f"\nload average at the end {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
