"""The textfile collector: *.prom files parsed, checked and served; invalid files reported and skipped.

The compatibility test runs node_exporter's own textfile collector on the same directory and compares.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import pytest

from mevwatch.blocking import BlockingPool
from mevwatch.collectors.base import CollectorContext
from mevwatch.collectors.textfile import TextfileCollector, TextfileOptions, parse_textfile
from mevwatch.daemon.exposition import render_text
from mevwatch.families import Metric
from tests.support.daemon import parse_metrics
from tests.support.peers import free_port, need_binary, start_process, stop_process

VALID = """\
# HELP backup_last_success_timestamp_seconds Unix time of the last good backup.
# TYPE backup_last_success_timestamp_seconds gauge
backup_last_success_timestamp_seconds{job="pg"} 1.7e+09
# TYPE engine_cron_runs_total counter
engine_cron_runs_total{task="rebalance"} 12
# TYPE job_duration_seconds histogram
job_duration_seconds_bucket{le="1"} 2
job_duration_seconds_bucket{le="+Inf"} 3
job_duration_seconds_sum 4.5
job_duration_seconds_count 3
plain_untyped 7
"""

INVALID = {
    "syntax": ("broken{a=b} 1\n", "text format"),
    "timestamp": ("with_ts 1 1700000000000\n", "timestamps"),
    "own_namespace": ("mevwatch_memory_used_ratio 0.1\n", "belongs to mevwatch"),
    "second_type": ("# TYPE x gauge\nx 1\n# TYPE x counter\n", "second TYPE"),
    "same_series": ('dup{a="1"} 1\ndup{a="1"} 2\n', "the same series twice"),
    "counter_without_total": ("# TYPE c counter\nc 1\n", "samples must be named c_total"),
}


def _ctx() -> CollectorContext:
    return CollectorContext(kind="textfile", instance="t", interval=15.0, timeout=5.0, pool=BlockingPool(2))


def _series(families: list[Metric], skip_prefix: str = "mevwatch_") -> dict[tuple[str, tuple[tuple[str, str], ...]],
                                                                           float]:
    text = render_text([f for f in families if not f.name.startswith(skip_prefix)]).decode()
    return parse_metrics(text)


def test_a_valid_file_round_trips_through_the_exposition() -> None:
    families = parse_textfile(VALID)
    assert {f.name: f.type for f in families} == {
        "backup_last_success_timestamp_seconds": "gauge", "engine_cron_runs": "counter",
        "job_duration_seconds": "histogram", "plain_untyped": "unknown"}
    series = _series(families)
    assert series[("engine_cron_runs_total", (("task", "rebalance"),))] == 12
    assert series[("job_duration_seconds_bucket", (("le", "+Inf"),))] == 3
    assert series[("plain_untyped", ())] == 7
    assert len(series) == 7


@pytest.mark.parametrize("case", sorted(INVALID))
def test_an_invalid_file_is_rejected_with_its_reason(case: str) -> None:
    text, reason = INVALID[case]
    with pytest.raises(ValueError, match=reason):
        parse_textfile(text)


async def test_invalid_files_are_reported_and_skipped_and_the_valid_ones_served(tmp_path: Path) -> None:
    (tmp_path / "good.prom").write_text(VALID)
    os.utime(tmp_path / "good.prom", (1_700_000_000, 1_700_000_000))
    for case, (text, _) in INVALID.items():
        (tmp_path / f"{case}.prom").write_text(text)
    (tmp_path / "latin1.prom").write_bytes(b"caf\xe9 1\n")
    (tmp_path / "clash.prom").write_text(
        '# TYPE engine_cron_runs_total counter\nengine_cron_runs_total{task="rebalance"} 1\n')
    (tmp_path / "ignored.txt").write_text("not_read 1\n")
    collector = TextfileCollector(_ctx(), TextfileOptions(directories=[tmp_path, tmp_path / "missing"]))
    families = list(await collector.collect())
    series = _series(families, skip_prefix="mevwatch_textfile_")
    # files are read in name order: of two files writing one series, the later (good.prom) is skipped
    own = parse_metrics(render_text([f for f in families if f.name.startswith("mevwatch_textfile_")]).decode())
    errors = {dict(lbl)["file"]: v for (n, lbl), v in own.items() if n == "mevwatch_textfile_file_error"}
    bad = {str(tmp_path / f"{c}.prom") for c in INVALID} | {str(tmp_path / "latin1.prom"), str(tmp_path / "good.prom")}
    assert {f for f, v in errors.items() if v == 1} == bad
    assert errors[str(tmp_path / "clash.prom")] == 0
    assert ("engine_cron_runs_total", (("task", "rebalance"),)) in series
    assert ("backup_last_success_timestamp_seconds", (("job", "pg"),)) not in series  # good.prom clashed
    mtimes = {dict(lbl)["file"]: v for (n, lbl), v in own.items() if n == "mevwatch_textfile_mtime_seconds"}
    assert mtimes == {str(tmp_path / "clash.prom"): os.stat(tmp_path / "clash.prom").st_mtime}
    assert own[("mevwatch_textfile_scrape_error", ())] == 1
    details = dict(await collector.details())
    assert "also written by" in details[f"textfile {tmp_path / 'good.prom'}"]
    assert "No such file" in details[f"textfile {tmp_path / 'missing'}"]
    assert "not valid UTF-8" in details[f"textfile {tmp_path / 'latin1.prom'}"]


async def test_a_clean_directory_has_no_scrape_error_and_each_file_its_mtime(tmp_path: Path) -> None:
    (tmp_path / "a.prom").write_text(VALID)
    (tmp_path / "b.prom").write_text('plain_untyped{host="b"} 1\n')
    os.utime(tmp_path / "a.prom", (1_700_000_000, 1_700_000_000))
    families = list(await TextfileCollector(_ctx(), TextfileOptions(directories=[tmp_path])).collect())
    own = parse_metrics(render_text([f for f in families if f.name.startswith("mevwatch_")]).decode())
    assert own[("mevwatch_textfile_scrape_error", ())] == 0
    assert own[("mevwatch_textfile_mtime_seconds", (("file", str(tmp_path / "a.prom")),))] == 1_700_000_000
    series = _series(families)
    assert series[("plain_untyped", ())] == 7  # merged across files, node_exporter does the same
    assert series[("plain_untyped", (("host", "b"),))] == 1


async def test_a_file_over_the_size_limit_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "big.prom").write_text("x 1\n" * 400)
    families = list(await TextfileCollector(_ctx(), TextfileOptions(directories=[tmp_path],
                                                                    max_file_bytes=1024)).collect())
    own = parse_metrics(render_text(families).decode())
    assert own[("mevwatch_textfile_file_error", (("file", str(tmp_path / "big.prom")),))] == 1
    assert ("x", ()) not in own


def _node_exporter_scrape(directory: Path, tmp: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    binary = need_binary("prometheus-node-exporter")
    port = free_port()
    proc = start_process([binary, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
                          "--collector.textfile", f"--collector.textfile.directory={directory}"],
                         port=port, log=tmp / f"node-{port}.log")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            return parse_metrics(resp.read().decode())
    finally:
        stop_process(proc)


@pytest.mark.peer("node_exporter")
async def test_node_exporter_serves_the_same_series_and_rejects_the_same_files(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    (good / "a.prom").write_text(VALID)
    (good / "b.prom").write_text('plain_untyped{host="b"} 1\n')
    theirs = _node_exporter_scrape(good, tmp_path)
    ours = _series(list(await TextfileCollector(_ctx(), TextfileOptions(directories=[good])).collect()))
    passed_through = {k: v for k, v in theirs.items() if not k[0].startswith(("node_", "go_", "process_", "promhttp_"))}
    assert passed_through == ours
    assert theirs[("node_textfile_scrape_error", ())] == 0
    # files both reject; stricter than node_exporter: the own namespace, counter naming, and a repeated
    # series (node_exporter serves its first value and logs a gathering error)
    for case in ("syntax", "timestamp", "second_type"):
        d = tmp_path / case
        d.mkdir()
        (d / "x.prom").write_text(INVALID[case][0])
        assert _node_exporter_scrape(d, tmp_path)[("node_textfile_scrape_error", ())] == 1, case
        own = parse_metrics(render_text(await TextfileCollector(_ctx(), TextfileOptions(directories=[d])).collect())
                            .decode())
        assert own[("mevwatch_textfile_scrape_error", ())] == 1, case
