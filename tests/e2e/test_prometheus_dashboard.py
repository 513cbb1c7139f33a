"""Every collector against real peers, scraped by a real Prometheus: every dashboard query returns data.

Also on the same full scrape: ``promtool check metrics`` reports nothing, every family is declared, and
the series count stays bounded (20 watched files, 5 RPC endpoints, 50 tables).
A second mevwatch runs the cpu collector on the fixture sysfs (cpufreq, governors, thermal throttling),
which a VM does not have, so the CPU governor row is proven too.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mevwatch.daemon.dashboard import panel_queries
from mevwatch.daemon.docgen import all_metric_specs
from tests.support.daemon import RunningDaemon, parse_metrics
from tests.support.fullstack import (
    DEV_ACCOUNT,
    WALLET,
    FullStack,
    Prometheus,
    full_stack,
    memory_cgroup,
    oom_kill,
    prometheus_scraping,
    wait_until,
)
from tests.support.peers import REPO, need_binary
from tests.support.rpcproxy import Fault
from tests.support.rule_cases import RULES_FILE

pytestmark = [pytest.mark.slow]

WATCHED_FILES, ENDPOINTS, TABLES = 20, 5, 50
MAX_SERIES = 2000
FIXTURE_CPU = f"""\
paths: {{sysfs: {REPO / 'tests' / 'fixtures' / 'sys'}}}
alerts: {{enabled: false}}
collectors:
  - cpu: {{interval: 1s}}
"""


@dataclass
class Setup:
    stack: FullStack
    prometheus: Prometheus
    cpu_port: int
    oom: str  # why no OOM kill was produced, or "" when one was


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("fullstack")
    fixture_tmp = tmp_path_factory.mktemp("fixture-cpu")
    with memory_cgroup() as cgroup, \
            full_stack(tmp, watched_files=WATCHED_FILES, endpoints=ENDPOINTS, tables=TABLES,
                       oom_cgroup=cgroup) as stack, \
            RunningDaemon(fixture_tmp, FIXTURE_CPU) as cpu_daemon, \
            prometheus_scraping(tmp, [stack.daemon.port, cpu_daemon.port], rules=RULES_FILE) as prom:
        oom = "" if cgroup else "needs root and a writable memory cgroup"
        # increase() needs the counters' values from before the incidents, as a page would
        for baseline in ('mevwatch_log_matches_total{pattern="no_space_left"}',
                         "mevwatch_wallet_unexpected_transactions_total", "mevwatch_integrity_violations"):
            wait_until(f"{baseline} in Prometheus", lambda q=baseline: bool(prom.query(q)), 30.0)
        _produce_events(stack, cgroup)
        yield Setup(stack, prom, cpu_daemon.port, oom)


def _produce_events(stack: FullStack, cgroup: str | None) -> None:
    """The incidents some panels need: an OOM kill, a tampered file, log errors, a slow query, RPC errors."""
    stack.daemon.wait_for("mevwatch_integrity_files_watched", 20.0)
    stack.watched[0].write_text("tampered: true\n")
    with stack.logfile.open("a") as f:
        f.write("ERROR Execution failed: reverted\nERROR No space left on device\n")
    stack.pg.psql("SELECT pg_sleep(0.2)", stack.database)
    stack.proxies[-1].set("eth_chainId", Fault(http_status=429))
    stack.anvil.rpc("eth_sendTransaction", [{"from": WALLET, "to": DEV_ACCOUNT, "value": "0x1"}])
    if cgroup is not None:
        assert oom_kill(cgroup) == -9, "the memory hog was not OOM-killed"


def _instant(expr: str) -> str:
    """A dashboard query as Prometheus runs it for one instant: Grafana's variables filled in."""
    return expr.replace("$__rate_interval", "20s").replace('host=~"$host"', 'host=~".*"')


def test_every_panel_query_returns_data(setup: Setup) -> None:
    queries = panel_queries()
    assert len(queries) > 50
    missing: dict[str, str] = {}

    def all_answer() -> bool:
        missing.clear()
        for row, panel, expr in queries:
            if not setup.prometheus.query(_instant(expr)):
                missing[f"{row} / {panel}"] = expr
        return not missing

    try:
        wait_until("data for every panel", all_answer, 60.0)
    except AssertionError:
        allowed = {k: v for k, v in missing.items() if "mevwatch_oom_kills_total" in v and setup.oom}
        rest = {k: v for k, v in missing.items() if k not in allowed}
        assert not rest, "panels without data:\n" + "\n".join(f"{k}: {v}" for k, v in rest.items())
        pytest.skip(f"OOM kill panel not proven: {setup.oom}")


def test_host_variable_lists_both_daemons(setup: Setup) -> None:
    result = setup.prometheus.query("group by (host) (mevwatch_build_info)")
    assert {r["metric"]["host"] for r in result} == {"mev-host-1", "mev-host-2"}


def _scrape(setup: Setup) -> str:
    text = setup.stack.daemon.get()
    for family in ("mevwatch_postgres_table_dead_tuples", "mevwatch_chain_peers", "mevwatch_integrity_violation",
                   "mevwatch_wallet_balance_ether", "mevwatch_http_request_duration_seconds_bucket"):
        assert family in text, f"{family} not in the scrape: a collector is not running"
    return text


def test_promtool_check_metrics_on_the_full_scrape_is_clean(setup: Setup) -> None:
    text = _scrape(setup)
    proc = subprocess.run([need_binary("promtool"), "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "", proc.stdout
    assert proc.stderr.strip() == "", proc.stderr


def test_full_scrape_series_stay_bounded(setup: Setup) -> None:
    text = _scrape(setup)
    series = parse_metrics(text)
    tables = {dict(lbl).get("table") for (name, lbl) in series if name == "mevwatch_postgres_table_dead_tuples"}
    assert len(tables) == TABLES
    endpoints = {dict(lbl).get("endpoint") for (name, lbl) in series if name == "mevwatch_rpc_up"}
    assert len(endpoints) == ENDPOINTS
    print(f"full scrape: {len(series)} series")
    assert len(series) < MAX_SERIES, f"{len(series)} series"


def test_every_scraped_family_is_declared(setup: Setup) -> None:
    declared = {spec.name: spec for _, spec in all_metric_specs().values()}
    problems = []
    for fam in text_string_to_metric_families(_scrape(setup)):
        name, kind = fam.name, fam.type
        if name not in declared and name.endswith("_info") and name.removesuffix("_info") in declared:
            name, kind = name.removesuffix("_info"), "info"  # the text format carries info as a gauge
        spec = declared.get(name)
        if spec is None:
            problems.append(f"{fam.name}: not declared")
            continue
        if kind != spec.type:
            problems.append(f"{fam.name}: scraped as {kind}, declared {spec.type}")
        for s in fam.samples:
            if set(s.labels) - {"le", "quantile"} != set(spec.labels):
                problems.append(f"{fam.name}: labels {sorted(s.labels)}, declared {sorted(spec.labels)}")
                break
    assert problems == []


def test_exported_rules_fire_in_prometheus_on_real_data(setup: Setup) -> None:
    """Prometheus loaded deploy/prometheus/mevwatch-rules.yml: the produced incidents fire its alerts."""
    expected = {"IntegrityViolation", "NoSpaceLeftLogged", "UnexpectedOutgoingTransaction"}
    firing: set[str] = set()

    def fired() -> bool:
        result = setup.prometheus.query('ALERTS{alertstate="firing"}')
        firing.update(r["metric"]["alertname"] for r in result)
        return expected <= firing

    wait_until(f"{sorted(expected)} firing in Prometheus", fired, 40.0)
    alert = setup.prometheus.query('ALERTS{alertname="IntegrityViolation", alertstate="firing"}')[0]["metric"]
    assert alert["path"] == str(setup.stack.watched[0])
    assert alert["severity"] == "critical"
    assert alert["host"] == "mev-host-1"
