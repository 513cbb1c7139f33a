"""Start-up to ready: mevwatch (its own process collector only, and the embedded default config) vs
prometheus-node-exporter, and what mevwatch's first round waits on.

Each is started --runs times on a free loopback port. node_exporter is ready when its /metrics
answers 200; mevwatch when /-/ready does (its first collection round is done: every collector
has run once). For mevwatch the bench also prints when the port first accepted a connection
(interpreter, imports, config), the CPU the process used until ready, and the first run of each
collector (its exported duration): the slowest of them is what the round waited on after the
imports. Goal: the default config ready in < 0.5 s. Figures are min/median/max of the runs.

mevwatch's modules are byte-compiled first, as an installed Python package's are: with
PYTHONDONTWRITEBYTECODE set (as in this machine's environment) or a read-only install without
.pyc files, every start compiles every module again, about an eighth of the start-up's CPU
(py-spy). --no-compile measures that case.

    .venv/bin/python bench/startup.py [--runs 3]
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from _common import REPO, byte_compile, cpu_ns, free_port, load_average, machine, record, spread, stop

PROCESS_ONLY = "collectors:\n  - process: {}\n"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def start_to_ready(argv: list[str], port: int, ready_path: str, env: dict[str, str] | None = None
                   ) -> tuple[float, float, float, subprocess.Popen[bytes]]:
    """(seconds to listening, seconds to ready, CPU seconds until ready) of one start."""
    import os

    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    listening = 0.0
    while time.monotonic() - t0 < 60:
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[0]} exited with {proc.returncode}")
        if not listening and _listening(port):
            listening = time.monotonic() - t0
        if listening and _status(f"http://127.0.0.1:{port}{ready_path}") == 200:
            ready = time.monotonic() - t0
            return listening, ready, cpu_ns(proc.pid) / 1e9, proc
        time.sleep(0.002)
    stop(proc)
    raise TimeoutError(f"{argv[0]} not ready in 60 s")


def first_runs(port: int) -> list[tuple[float, str]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    found = re.findall(r'^mevwatch_collector_duration_seconds\{collector="(\w+)"[^}]*\} (\S+)$', text, re.M)
    return sorted(((float(v), c) for c, v in found), reverse=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true", help="do not byte-compile mevwatch's modules first")
    args = ap.parse_args()
    if not args.no_compile:
        byte_compile()
    node_exporter = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"
    print(f"machine: {machine()}; load average {load_average()}")
    results: dict[str, list[tuple[float, float, float]]] = {"node_exporter": [], "mevwatch process only": [],
                                                             "mevwatch default config": []}
    slowest: list[str] = []
    for _ in range(args.runs):
        port = free_port()
        listening, ready, cpu, proc = start_to_ready(
            [node_exporter, f"--web.listen-address=127.0.0.1:{port}"], port, "/metrics")
        stop(proc)
        results["node_exporter"].append((listening, ready, cpu))
        for name, config in (("mevwatch process only", PROCESS_ONLY), ("mevwatch default config", None)):
            with tempfile.TemporaryDirectory() as tmp:
                port = free_port()
                argv = [str(REPO / ".venv/bin/mevwatch"), "run", "--web.listen-address", f"127.0.0.1:{port}"]
                if config is not None:
                    (Path(tmp) / "c.yaml").write_text(config)
                    argv += ["--config", str(Path(tmp) / "c.yaml")]
                listening, ready, cpu, proc = start_to_ready(argv, port, "/-/ready",
                                                             env={"STATE_DIRECTORY": f"{tmp}/state"})
                try:
                    runs = first_runs(port)
                finally:
                    stop(proc)
                results[name].append((listening, ready, cpu))
                if config is None:
                    slowest.append(", ".join(f"{c} {d * 1000:.0f} ms" for d, c in runs[:4]))
    print(f"\nmin/median/max of {args.runs} starts; load average {load_average()}")
    print(f"{'':26}{'listening s':>20}{'ready s':>20}{'CPU until ready s':>20}")
    for name, rows in results.items():
        cols = ["{:.3f}/{:.3f}/{:.3f}".format(*spread([r[i] for r in rows])) for i in range(3)]
        print(f"{name:26}{cols[0]:>20}{cols[1]:>20}{cols[2]:>20}")
    print("slowest first runs of the default config, per start: " + " | ".join(slowest))
    ne = spread([r[1] for r in results["node_exporter"]])[1]
    for name in ("mevwatch process only", "mevwatch default config"):
        mid = spread([r[1] for r in results[name]])[1]
        record(f"start-up to ready, {name.removeprefix('mevwatch ')}", mevwatch=mid, unit="s",
               anchor_name="node_exporter", anchor=ne, goal="< 0.5 s" if "default" in name else "",
               met=mid < 0.5 if "default" in name else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
