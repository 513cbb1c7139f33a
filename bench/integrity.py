"""Integrity benchmark: mevwatch baseline/verify vs sha256sum and AIDE on one generated tree, plus realtime latency.

Run: .venv/bin/python bench/integrity.py [--files 20000] [--size 1GiB] [--changes 1000] [--repeat 3]
The tree goes under /tmp and is removed afterwards. Needs /usr/bin/aide and sha256sum.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mevwatch.blocking import BlockingPool  # noqa: E402
from mevwatch.collectors.base import CollectorContext  # noqa: E402
from mevwatch.collectors.integrity import IntegrityCollector, IntegrityOptions  # noqa: E402
from mevwatch.daemon.state import StateDB  # noqa: E402
from mevwatch.fields import parse_bytes  # noqa: E402

LARGE_FILES = 16
THREADS = 4


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


def timed(argv: list[str], repeat: int, ok: tuple[int, ...] = (0,), env: dict[str, str] | None = None) -> float:
    """Median wall time of ``repeat`` runs of ``argv`` (output discarded)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        times.append(time.perf_counter() - t0)
        if r.returncode not in ok:
            raise SystemExit(f"{argv[0]} exited {r.returncode}: {r.stderr.decode(errors='replace')[-2000:]}")
    return statistics.median(times)


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
        await asyncio.wait_for(first.wait(), 120)
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
    ap.add_argument("--realtime-only", action="store_true", help="skip the sha256sum and AIDE comparisons")
    args = ap.parse_args()
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
        listing.write_bytes(b"".join(str(p).encode() + b"\0" for p in paths))
        aide_conf = work / "aide.conf"
        aide_conf.write_text(
            f"database_in=file:{work}/aide.db\ndatabase_out=file:{work}/aide.db.new\ngzip_dbout=no\n"
            f"report_url=stdout\nnum_workers={THREADS}\nChecks = sha256+p+u+g+s+i+n+m+c\n{tree} Checks\n"
        )
        # Warm the page cache once so every tool reads from memory.
        subprocess.run(["sh", "-c", f"xargs -0 cat < {listing} > /dev/null"], check=True)

        if args.realtime_only:
            timed([*mevwatch, "integrity", "baseline", "-c", str(cfg)], 1)
        else:
            compare_tools(args, cfg, work, tree, listing, total, sha, aide, mevwatch)
        rng = random.Random(11)
        small = paths[LARGE_FILES:]
        targets = rng.sample(small, min(args.changes, len(small)))
        lat = asyncio.run(realtime_latency(body, state, targets))
        print(f"realtime detection over {len(lat)} single-file changes: p50 {pct(lat, 0.5) * 1000:.1f} ms, "
              f"p99 {pct(lat, 0.99) * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms (target p99 < 200 ms)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def compare_tools(
    args: argparse.Namespace, cfg: Path, work: Path, tree: Path, listing: Path, total: int, sha: str, aide: str,
    mevwatch: list[str],
) -> None:
    """sha256sum vs baseline, aide --check vs verify and verify --quick, each the median of --repeat runs."""
    aide_conf = work / "aide.conf"
    sha_s = timed(["sh", "-c", f"xargs -0 {sha} < {listing} > /dev/null"], args.repeat)
    base_s = timed([*mevwatch, "integrity", "baseline", "--force", "-c", str(cfg)], args.repeat)
    gib = total / 2**30
    print(f"hash all:  sha256sum {sha_s:.2f}s ({gib / sha_s:.2f} GiB/s)   "
          f"mevwatch integrity baseline {base_s:.2f}s ({gib / base_s:.2f} GiB/s)   "
          f"ratio {sha_s / base_s:.2f}x sha256sum's throughput (target >= 0.8x)")

    r = subprocess.run([aide, f"--config={aide_conf}", "--init"], capture_output=True)
    if r.returncode != 0:
        raise SystemExit(f"aide --init failed: {r.stderr.decode(errors='replace')}")
    os.replace(work / "aide.db.new", work / "aide.db")
    aide_s = timed([aide, f"--config={aide_conf}", "--check"], args.repeat)
    # AIDE's own default is one hashing worker; the run above gives it as many as mevwatch.
    aide1_conf = work / "aide1.conf"
    aide1_conf.write_text(aide_conf.read_text().replace(f"num_workers={THREADS}\n", ""))
    aide1_s = timed([aide, f"--config={aide1_conf}", "--check"], args.repeat)
    full_s = timed([*mevwatch, "integrity", "verify", "-c", str(cfg)], args.repeat)
    quick_s = timed([*mevwatch, "integrity", "verify", "--quick", "-c", str(cfg)], args.repeat)
    version_s = timed([*mevwatch, "check-config", str(cfg)], args.repeat)
    print(f"verify, no change (whole command):  aide --check {aide_s:.2f}s ({THREADS} workers), "
          f"{aide1_s:.2f}s (default 1 worker)   mevwatch verify {full_s:.2f}s ({aide_s / full_s:.2f}x faster)   "
          f"mevwatch verify --quick {quick_s:.2f}s ({aide_s / quick_s:.1f}x / {aide1_s / quick_s:.1f}x faster, "
          f"target >= 10x); of which interpreter start + config load {version_s:.2f}s")
    in_full, in_quick = in_process_verify(cfg, args.repeat)
    print(f"verify in process (the daemon's periodic verify, no interpreter start):  full {in_full:.2f}s "
          f"({aide_s / in_full:.1f}x faster than aide)   quick {in_quick:.3f}s ({aide_s / in_quick:.1f}x faster)")


def in_process_verify(cfg: Path, repeat: int) -> tuple[float, float]:
    """Median seconds of a full and a quick verify, baseline load included, as the daemon runs them."""
    from mevwatch.collectors._integrity_baseline import BaselineStore
    from mevwatch.collectors._integrity_scan import verify
    from mevwatch.collectors.integrity import watch_set
    from mevwatch.daemon.config import load_config

    conf = load_config(cfg)
    opts = conf.collectors[0].options
    assert isinstance(opts, IntegrityOptions)
    ws = watch_set(opts)
    db = StateDB.open_dir(conf.state_dir)
    out = []
    try:
        for quick in (False, True):
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                base = BaselineStore(db, opts.instance).load()
                _, violations = verify(ws, base.records, quick=quick, threads=opts.hash_threads)
                times.append(time.perf_counter() - t0)
                assert not violations, violations[:3]
            out.append(statistics.median(times))
    finally:
        db.close()
    return out[0], out[1]


if __name__ == "__main__":
    raise SystemExit(main())
