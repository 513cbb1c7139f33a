"""Integrity benchmark: mevwatch baseline/verify vs sha256sum and AIDE on one generated tree, realtime
latency, and the daemon's memory per watched file.

Equal parallelism: mevwatch hashes on --threads threads (its hash_threads), sha256sum runs as that
many parallel processes (xargs -P, largest files first, small batches) and AIDE with that many
workers (num_workers); AIDE's default of one worker is reported beside it. Memory: ``mevwatch run``
(HTTP server, alert engine) with the integrity collector alone watching --memory-files small files,
RSS after its baseline and first verify (between verifies, and the peak), against the same daemon
watching 1,000.

Run: .venv/bin/python bench/integrity.py [--files 20000] [--size 1GiB] [--changes 1000] [--repeat 3]
     [--memory-files 100000] [--memory-repeat 3]
The trees go under /tmp and are removed afterwards. Needs /usr/bin/aide and sha256sum.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import REPO, byte_compile, load_average, machine, mevwatch_daemon, proc_stats, record, spread, stop

from mevwatch.aio import wait_for

sys.path.insert(0, str(REPO))

from mevwatch.blocking import BlockingPool
from mevwatch.collectors.base import CollectorContext
from mevwatch.collectors.integrity import IntegrityCollector, IntegrityOptions
from mevwatch.daemon.state import StateDB
from mevwatch.fields import parse_bytes

LARGE_FILES = 16
THREADS = 4  # set from --threads: mevwatch's hash_threads, sha256sum's processes, AIDE's workers


def generate(root: Path, files: int, total: int, rng: random.Random) -> tuple[list[Path], int]:
    """``files`` files in 100-file directories: LARGE_FILES share half of ``total``, the rest the other half."""
    large_size = total // 2 // LARGE_FILES
    small_n = files - LARGE_FILES
    small_avg = (total - large_size * LARGE_FILES) // max(small_n, 1)
    block = os.urandom(8 << 20)
    paths: list[Path] = []
    written = 0
    for i in range(files):
        d = root / f"d{i // 100:03d}"
        if i % 100 == 0:
            d.mkdir(parents=True)
        size = large_size if i < LARGE_FILES else rng.randint(small_avg // 4, small_avg * 7 // 4)
        p = d / (f"engine-{i}.bin" if i < LARGE_FILES else f"f{i:05d}.conf")
        with open(p, "wb") as f:
            left, off = size, rng.randrange(len(block) // 2)
            while left:
                n = min(left, len(block) - off)
                f.write(block[off : off + n])
                left -= n
                off = 0
        written += size
        paths.append(p)
    return paths, written


async def realtime_latency(config: dict[str, Any], state: Path, targets: list[Path]) -> list[float]:
    """Seconds from a single-file write to the violation appearing in the emitted families, per change."""
    db = StateDB.open_dir(state)
    pool = BlockingPool(4)
    opts = IntegrityOptions.model_validate(config)
    ctx = CollectorContext("integrity", opts.instance, interval=15.0, timeout=60.0, state=db, pool=pool)
    collector = IntegrityCollector(ctx, opts)
    seen: dict[str, float] = {}
    first = asyncio.Event()

    def emit(families: Any) -> None:
        now = time.perf_counter()
        first.set()
        for fam in families:
            if fam.name == "mevwatch_integrity_violation":
                for s in fam.samples:
                    seen.setdefault(s.labels["path"], now)

    task = asyncio.create_task(collector.run(emit))
    latencies = []
    try:
        await wait_for(first.wait(), 120)
        for p in targets:
            key = str(p)
            t0 = time.perf_counter()
            _flip_first_byte(p)
            while key not in seen:
                if task.done():
                    task.result()
                if time.perf_counter() - t0 > 10:
                    raise SystemExit(f"change of {key} not detected after 10s; state: {collector.debug_state()}")
                await asyncio.sleep(0.001)
            latencies.append(seen[key] - t0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        pool.shutdown()
        db.close()
    return latencies


def _flip_first_byte(p: Path) -> None:
    """Change the content for sure (writing a fixed byte is a no-op when the file starts with it)."""
    with open(p, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--changes", type=int, default=1_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=4, help="hashing threads / processes / workers of each tool")
    ap.add_argument("--memory-files", default="100000",
                    help="files watched in the memory phase, a comma list for growth ('': skip)")
    ap.add_argument("--memory-repeat", type=int, default=3, help="rounds of the memory phase")
    ap.add_argument("--realtime-only", action="store_true", help="skip the sha256sum and AIDE comparisons")
    args = ap.parse_args()
    global THREADS
    THREADS = args.threads
    print(f"machine: {machine()}; load average {load_average()}")
    byte_compile()  # every mevwatch command below starts as an installed package's does
    aide = shutil.which("aide") or "/usr/bin/aide"
    sha = shutil.which("sha256sum") or "sha256sum"
    mevwatch = [sys.executable, "-m", "mevwatch"]
    work = Path(tempfile.mkdtemp(prefix="mevwatch-bench-integrity-", dir="/tmp"))
    try:
        tree = work / "tree"
        t0 = time.perf_counter()
        paths, total = generate(tree, args.files, parse_bytes(args.size), random.Random(7))
        print(f"tree: {len(paths)} files, {total / 2**30:.2f} GiB in {len(paths) // 100} dirs "
              f"(generated in {time.perf_counter() - t0:.1f}s)")
        state = work / "state"
        body = {"files": [], "globs": [], "directories": [{"path": str(tree)}], "hash_threads": THREADS,
                "max_violation_series": args.changes * 2}
        cfg = work / "mevwatch.yaml"
        import json

        cfg.write_text(json.dumps({"state_dir": str(state), "collectors": [{"integrity": body}]}))
        listing = work / "files.txt"
        # largest first, as mevwatch orders its hashing, so no process ends on one large file
        by_size = sorted(paths, key=lambda p: -p.stat().st_size)
        listing.write_bytes(b"".join(str(p).encode() + b"\0" for p in by_size))
        aide_conf = work / "aide.conf"
        aide_conf.write_text(
            f"database_in=file:{work}/aide.db\ndatabase_out=file:{work}/aide.db.new\ngzip_dbout=no\n"
            f"report_url=stdout\nnum_workers={THREADS}\nChecks = sha256+p+u+g+s+i+n+m+c\n{tree} Checks\n"
        )
        # Warm the page cache once so every tool reads from memory.
        subprocess.run(["sh", "-c", f"xargs -0 cat < {listing} > /dev/null"], check=True)

        if args.realtime_only:
            _run_timed([*mevwatch, "integrity", "baseline", "-c", str(cfg)])
        else:
            compare_tools(args, cfg, work, tree, listing, total, sha, aide, mevwatch)
        rng = random.Random(11)
        small = paths[LARGE_FILES:]
        targets = rng.sample(small, min(args.changes, len(small)))
        lat = asyncio.run(realtime_latency(body, state, targets))
        print(f"realtime detection over {len(lat)} single-file changes: p50 {pct(lat, 0.5) * 1000:.1f} ms, "
              f"p99 {pct(lat, 0.99) * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms (target p99 < 200 ms)")
        record("integrity realtime detection p99", mevwatch=pct(lat, 0.99) * 1000, unit="ms", goal="< 200 ms",
               met=pct(lat, 0.99) < 0.2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.memory_files:
        memory_per_file([int(n) for n in args.memory_files.split(",")], args.memory_repeat)
    return 0


def _small_tree(root: Path, files: int) -> None:
    for i in range(files):
        d = root / f"d{i // 100:04d}"
        if i % 100 == 0:
            d.mkdir(parents=True)
        (d / f"f{i:06d}.conf").write_bytes(b"setting = %d\n" % i)


def _daemon_rss(files: int, work: Path) -> tuple[float, float, float, float]:
    """(RSS bytes between verifies, peak RSS bytes, seconds to the first baseline and verify, seconds of
    the last quick verify) of `mevwatch run` watching ``files`` small files.

    The daemon's default verify_interval is an hour: after its first baseline and verify, the RSS is
    sampled for 70 s (the daemon trims malloc's free memory once a minute) and the last sample is
    the figure between verifies; the peak is the highest sample from the start, the first verify
    included. A verify every few seconds would measure the verify's transient, not the set held.
    """
    import json
    import urllib.request

    tree = work / f"tree-{files}"
    _small_tree(tree, files)
    body = {"directories": [{"path": str(tree)}], "hash_threads": THREADS, "auto_baseline": True}
    proc, port = mevwatch_daemon(json.dumps({"collectors": [{"integrity": body}]}), work / f"d{files}")
    t0 = time.monotonic()
    peak = 0
    try:
        while True:  # the first baseline, then its first verify of the whole set
            if proc.poll() is not None or time.monotonic() - t0 > 600:
                raise SystemExit(f"mevwatch watching {files} files did not verify in 600 s")
            peak = max(peak, proc_stats(proc.pid).rss_bytes)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                text = r.read().decode()
            done = sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                       if ln.startswith("mevwatch_integrity_verifies_total"))
            last = [float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                    if ln.startswith("mevwatch_integrity_last_verify_duration_seconds")]
            if done >= 1:
                first = time.monotonic() - t0
                break
            time.sleep(0.2)
        end = time.monotonic() + 70
        while time.monotonic() < end:
            rss = proc_stats(proc.pid).rss_bytes
            peak = max(peak, rss)
            time.sleep(1.0)
        return float(rss), float(peak), first, last[0] if last else float("nan")
    finally:
        stop(proc)
        shutil.rmtree(tree, ignore_errors=True)


def memory_per_file(counts: list[int], repeat: int) -> None:
    """RSS per watched file over the daemon watching 1,000: ``repeat`` rounds, each starting the 1,000-file
    daemon and then one per count, so each per-file figure subtracts the 1,000-file RSS of its own round."""
    work = Path(tempfile.mkdtemp(prefix="mevwatch-bench-integrity-mem-", dir="/tmp"))
    small = 1000
    per_file: dict[int, list[float]] = {files: [] for files in counts}
    try:
        for r in range(repeat):
            here = work / f"round{r}"  # a state dir of its own: a baseline left by the last round is not new
            rss_small, peak_small, _, verify_small = _daemon_rss(small, here)
            print(f"daemon watching {small:,} files: RSS {rss_small / 2**20:.1f} MiB between verifies "
                  f"(peak {peak_small / 2**20:.1f}), quick verify {verify_small:.3f} s")
            for files in counts:
                rss, peak, first, verify_s = _daemon_rss(files, here)
                per_file[files].append((rss - rss_small) / (files - small))
                peak_per_file = (peak - rss_small) / (files - small)
                print(f"daemon watching {files:,} files: RSS {rss / 2**20:.1f} MiB between verifies, "
                      f"{per_file[files][-1] / 1024:.2f} KiB per watched file over {small:,} (target <= 0.5 KiB); "
                      f"peak {peak / 2**20:.1f} MiB ({peak_per_file / 1024:.2f} KiB per file); first baseline and "
                      f"verify {first:.1f} s; quick verify {verify_s:.2f} s; load average {load_average()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for files, values in per_file.items():
        kib = [v / 1024 for v in values]
        print(f"RSS per watched file at {files:,} files over {len(kib)} rounds, min / median / max: "
              f"{_mmm(kib)} KiB (target <= 0.5 KiB)")
        record(f"integrity daemon RSS per watched file at {files:,} files (between verifies)",
               mevwatch=statistics.median(kib), unit="KiB", goal="<= 0.5 KiB", met=statistics.median(kib) <= 0.5)


def _run_timed(argv: list[str]) -> float:
    """Wall seconds of one run of ``argv`` (output discarded)."""
    t0 = time.perf_counter()
    r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{argv[0]} exited {r.returncode}: {r.stderr.decode(errors='replace')[-2000:]}")
    return took


def _rounds(commands: dict[str, list[str]], repeat: int) -> dict[str, list[float]]:
    """Seconds of each command over ``repeat`` rounds, each round running every command once in turn, so
    that a change of the machine's load falls on both sides of a ratio."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, argv in commands.items():
            times[name].append(_run_timed(argv))
    return times


def _mmm(values: list[float], fmt: str = ".2f") -> str:
    lo, mid, hi = spread(values)
    return f"{lo:{fmt}} / {mid:{fmt}} / {hi:{fmt}}"


def compare_tools(
    args: argparse.Namespace, cfg: Path, work: Path, tree: Path, listing: Path, total: int, sha: str, aide: str,
    mevwatch: list[str],
) -> None:
    """sha256sum vs baseline, aide --check vs verify and verify --quick: --repeat interleaved rounds, each
    figure as min / median / max, each ratio per round."""
    aide_conf = work / "aide.conf"
    gib = total / 2**30
    hashed = _rounds({
        "sha256sum": ["sh", "-c", f"xargs -0 -P {THREADS} -n 64 {sha} < {listing} > /dev/null"],
        "baseline": [*mevwatch, "integrity", "baseline", "--force", "-c", str(cfg)],
    }, args.repeat)
    sha_s, base_s = (statistics.median(hashed[k]) for k in ("sha256sum", "baseline"))
    ratios = [s / b for s, b in zip(hashed["sha256sum"], hashed["baseline"], strict=True)]
    print(f"hash all ({len(ratios)} rounds, min / median / max):  {THREADS} parallel sha256sum "
          f"{_mmm(hashed['sha256sum'])} s   mevwatch integrity baseline {_mmm(hashed['baseline'])} s   "
          f"throughput ratio {_mmm(ratios)}x (target >= 0.8x); median {gib / sha_s:.2f} / {gib / base_s:.2f} GiB/s; "
          f"load average {load_average()}")
    record(f"integrity baseline throughput vs {THREADS} parallel sha256sum", mevwatch=gib / base_s, unit="GiB/s",
           anchor_name="sha256sum", anchor=gib / sha_s, goal=">= 0.8x", met=statistics.median(ratios) >= 0.8)

    r = subprocess.run([aide, f"--config={aide_conf}", "--init"], capture_output=True)
    if r.returncode != 0:
        raise SystemExit(f"aide --init failed: {r.stderr.decode(errors='replace')}")
    os.replace(work / "aide.db.new", work / "aide.db")
    # AIDE's own default is one hashing worker; "aide" gives it as many as mevwatch.
    aide1_conf = work / "aide1.conf"
    aide1_conf.write_text(aide_conf.read_text().replace(f"num_workers={THREADS}\n", ""))
    checked = _rounds({
        "aide": [aide, f"--config={aide_conf}", "--check"],
        "aide1": [aide, f"--config={aide1_conf}", "--check"],
        "verify": [*mevwatch, "integrity", "verify", "-c", str(cfg)],
        "quick": [*mevwatch, "integrity", "verify", "--quick", "-c", str(cfg)],
        "start": [*mevwatch, "check-config", str(cfg)],
    }, args.repeat)
    aide_s, aide1_s, full_s, quick_s, start_s = (statistics.median(checked[k])
                                                 for k in ("aide", "aide1", "verify", "quick", "start"))
    full_x = [a / q for a, q in zip(checked["aide"], checked["verify"], strict=True)]
    quick_x = [a / q for a, q in zip(checked["aide"], checked["quick"], strict=True)]
    quick1_x = [a / q for a, q in zip(checked["aide1"], checked["quick"], strict=True)]
    print(f"verify, no change, whole command ({args.repeat} rounds, min / median / max):  aide --check "
          f"{_mmm(checked['aide'])} s ({THREADS} workers), {_mmm(checked['aide1'])} s (default 1 worker)   "
          f"mevwatch verify {_mmm(checked['verify'])} s ({_mmm(full_x, '.1f')}x faster)   mevwatch verify --quick "
          f"{_mmm(checked['quick'], '.3f')} s ({_mmm(quick_x, '.1f')}x faster than aide at {THREADS} workers, "
          f"{_mmm(quick1_x, '.1f')}x than at 1; target >= 10x); of which interpreter start + config load "
          f"(check-config) {_mmm(checked['start'], '.3f')} s; load average {load_average()}")
    record(f"integrity verify --quick, whole command, vs aide --check ({THREADS} workers)", mevwatch=quick_s,
           unit="s", anchor_name="aide", anchor=aide_s, goal=">= 10x faster", met=statistics.median(quick_x) >= 10)
    in_full, in_quick = in_process_verify(cfg, args.repeat)
    print(f"verify in process (the daemon's periodic verify, baseline load included, no interpreter start; "
          f"min / median / max):  full {_mmm(in_full)} s ({aide_s / statistics.median(in_full):.1f}x faster than "
          f"aide's median)   quick {_mmm(in_quick, '.3f')} s ({aide_s / statistics.median(in_quick):.1f}x); "
          f"aide1 {aide1_s:.2f} s, verify {full_s:.2f} s, quick {quick_s:.3f} s, start {start_s:.3f} s (medians)")


def in_process_verify(cfg: Path, repeat: int) -> tuple[list[float], list[float]]:
    """Seconds of each full and quick verify, baseline load included, as the daemon runs them."""
    from mevwatch.collectors._integrity_baseline import BaselineStore
    from mevwatch.collectors._integrity_scan import verify_each
    from mevwatch.collectors.integrity import watch_set
    from mevwatch.daemon.config import load_config

    conf = load_config(cfg)
    opts = conf.collectors[0].options
    assert isinstance(opts, IntegrityOptions)
    ws = watch_set(opts)
    db = StateDB.open_dir(conf.state_dir)
    out: list[list[float]] = []
    try:
        for quick in (False, True):
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                base = BaselineStore(db, opts.instance).load()
                violations = [v for *_, found in verify_each(ws, base.records, quick=quick, threads=opts.hash_threads)
                              for v in found]
                times.append(time.perf_counter() - t0)
                assert not violations, violations[:3]
            out.append(times)
    finally:
        db.close()
    return out[0], out[1]


if __name__ == "__main__":
    raise SystemExit(main())
