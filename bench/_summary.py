"""The one table `make bench` ends with: every bench's summary rows (measure, anchor, mevwatch, ratio,
goal, met) from the JSON lines they appended to MEVWATCH_BENCH_SUMMARY, and the benches that crashed.

A goal that is not met is a figure, not a failure: this always exits 0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from _common import load_average, machine


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def main(argv: list[str]) -> int:
    rows = []
    path = Path(argv[0]) if argv else None
    if path is not None and path.exists():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    crashed = argv[1:]
    header = ("bench", "measure", "anchor", "mevwatch", "ratio", "goal", "met")
    table = [header]
    for r in rows:
        anchor = f"{r['anchor_name']} {_num(r['anchor'])} {r['unit']}" if r["anchor"] is not None else "-"
        ratio = f"{r['mevwatch'] / r['anchor']:.2f}x" if r["anchor"] else "-"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        table.append((r["bench"], r["measure"], anchor, f"{_num(r['mevwatch'])} {r['unit']}", ratio,
                      r["goal"] or "-", met))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print(f"\n== summary ({machine()}; load average now {load_average()})")
    for n, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    goals = [r for r in rows if r["met"] is not None]
    print(f"\ngoals met: {sum(1 for r in goals if r['met'])} of {len(goals)}")
    if crashed:
        print(f"benches that did not finish (their rows are missing): {' '.join(crashed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
