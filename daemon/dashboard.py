"""The Grafana dashboard deploy/grafana/mevwatch.json: a row per runbook section, queries over declared metrics.

``python -m mevwatch.daemon.dashboard`` rewrites the file; a test checks it is current and that every
query names declared metrics only, and the end-to-end test runs every query against a real Prometheus.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ROWS", "Panel", "Row", "dashboard", "main", "metric_names", "panel_queries"]

I = 'host=~"$host"'  # noqa: E741 - the host matcher every query carries (docs/fleet.md, the label contract)
RATE = "$__rate_interval"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    #: (PromQL, legend) pairs
    targets: tuple[tuple[str, str], ...]
    unit: str = "short"
    kind: str = "timeseries"  # timeseries, stat, bargauge, table
    description: str = ""
    max: float | None = None


@dataclass(frozen=True, slots=True)
class Row:
    title: str
    runbook: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def _q(expr: str) -> str:
    return expr.replace("{I}", "{" + I + "}").replace("{I,", "{" + I + ",").replace("[R]", f"[{RATE}]")


def P(title: str, *targets: tuple[str, str], **kw: Any) -> Panel:
    return Panel(title, tuple((_q(e), legend) for e, legend in targets), **kw)


#: the hosts a query is about: every panel of the fleet row joins its series on them
_HOSTS = "group by (host) (mevwatch_build_info{I})"

ROWS: tuple[Row, ...] = (
    Row("Fleet overview", "host-down", (
        P("Firing alerts by host", ('sum by (host) (mevwatch_alerts{I,state="firing"})', "{{host}}"),
          kind="bargauge", description="mevwatch's own count on each host (0: nothing firing)."),
        P("Firing alerts by severity", ('sum by (severity) (mevwatch_alerts{I,state="firing"})', "{{severity}}"),
          kind="stat"),
        P("What fires where", (f'ALERTS{{alertstate="firing"}} * on (host) group_left () {_HOSTS}',
                               "{{host}} {{alertname}}"), kind="table",
          description="Prometheus' view of the exported rules and the fleet's watcher rules, one line per "
                      "alert and host."),
        P("Hosts reporting", (f"count({_HOSTS})", "hosts"), kind="stat",
          description="Hosts whose mevwatch Prometheus scrapes now; MevwatchHostDown pages for the others."),
    )),
    Row("Alerts and notifications", "alertmanager-unreachable", (
        P("Firing alerts per host (Prometheus)",
          (f'count by (host) (ALERTS{{alertstate="firing"}} * on (host) group_left () {_HOSTS})', "{{host}}"),
          description="Prometheus' ALERTS series: the exported rules and the watcher rules, evaluated centrally."),
        P("Alerts per host (mevwatch)", ("sum by (host, state) (mevwatch_alerts{I})", "{{host}} {{state}}"),
          description="mevwatch's own rule engine on each host: pending and firing."),
        P("Notifications per sink", ("sum by (host, sink) (increase(mevwatch_notifications_sent_total{I}[R]))",
                                     "{{host}} {{sink}} sent"),
          ("sum by (host, sink) (increase(mevwatch_notifications_failed_total{I}[R]))", "{{host}} {{sink}} failed"),
          ("sum by (host, sink) (increase(mevwatch_notifications_dead_lettered_total{I}[R]))",
           "{{host}} {{sink}} dead-lettered"),
          description="Acknowledged deliveries, failed attempts (each retry), and notifications given up on."),
        P("Outbox waiting", ("sum by (host) (mevwatch_alert_outbox_depth{I})", "{{host}}"),
          ("max by (host) (mevwatch_alert_outbox_oldest_pending_age_seconds{I})", "{{host}} oldest (s)"),
          description="Notifications not yet acknowledged by their sink, and the age of the oldest."),
    )),
    Row("Host memory and OOM kills", "memory-high", (
        P("Memory used", ("mevwatch_memory_used_ratio{I}", "{{host}}"), unit="percentunit", max=1),
        P("Memory and swap", ("mevwatch_memory_available_bytes{I}", "available"),
          ("mevwatch_memory_total_bytes{I}", "total"),
          ("mevwatch_memory_swap_total_bytes{I} - mevwatch_memory_swap_free_bytes{I}", "swap used"), unit="bytes"),
        P("Memory pressure (PSI)", ('mevwatch_memory_pressure_ratio{I,window="10s"}', "{{kind}}"),
          unit="percentunit"),
        P("OOM kills by process", ("increase(mevwatch_oom_kills_total{I}[R])", "{{comm}} ({{unit}})"),
          ("increase(mevwatch_memory_oom_kills_total{I}[R])", "kernel counter"),
          ("increase(mevwatch_memory_cgroup_oom_kills_total{I}[R])", "cgroup {{unit}} {{cgroup}}"),
          description="From the kernel log (victim named) and /proc/vmstat oom_kill."),
        P("Watched cgroups: usage of limit", ("mevwatch_memory_cgroup_used_ratio{I}", "{{unit}} {{cgroup}}"),
          unit="percentunit", max=1),
        P("Largest processes (RSS)", ("topk(10, mevwatch_memory_top_process_resident_bytes{I})", "{{comm}} {{unit}}"),
          unit="bytes", kind="bargauge"),
    )),
    Row("Disk and time to full", "disk-full", (
        P("Filesystem used", ("mevwatch_filesystem_used_ratio{I}", "{{mountpoint}}"), unit="percentunit", max=1),
        P("Time to full", ("mevwatch_filesystem_time_to_full_seconds{I}", "{{mountpoint}}"), unit="s",
          description="Linear fit over the fill window; absent when a filesystem is not filling."),
        P("Watched directories", ("mevwatch_dir_disk_usage_bytes{I}", "{{path}}"), unit="bytes"),
        P("Newest backup age", ("mevwatch_backup_age_seconds{I}", "{{pattern}}"), unit="s", kind="stat"),
    )),
    Row("Services", "service-down", (
        P("Service up", ("mevwatch_service_up{I}", "{{unit}}"), kind="stat"),
        P("Service restarts", ("increase(mevwatch_service_restarts_total{I}[R])", "{{unit}}")),
    )),
    Row("CPU governor and frequency", "cpu-governor", (
        P("Governor (1 = active)", ('mevwatch_cpu_frequency_governor{I} == 1', "cpu{{cpu}} {{governor}}"),
          kind="table"),
        P("Frequency vs max", ("mevwatch_cpu_frequency_hertz{I} / on(host, cpu) "
                               "mevwatch_cpu_frequency_max_hertz{I}", "cpu{{cpu}}"), unit="percentunit", max=1),
        P("Thermal throttling", ("rate(mevwatch_cpu_core_throttles_total{I}[R])", "cpu{{cpu}}"),
          ("rate(mevwatch_cpu_package_throttles_total{I}[R])", "package {{package}}"), unit="ops"),
        P("Load and steal", ('mevwatch_cpu_load_average{I,window="1m"}', "load 1m"),
          ('mevwatch_cpu_time_ratio{I,mode="steal"}', "steal")),
    )),
    Row("RPC latency and circuit breaker", "rpc-timeouts", (
        P("RPC p99 latency", ("histogram_quantile(0.99, sum by (host, endpoint, method, le) "
                              "(rate(mevwatch_rpc_request_duration_seconds_bucket{I}[R])))", "{{endpoint}} {{method}}"),
          unit="s"),
        P("Circuit breaker open", ('mevwatch_rpc_circuit_breaker_state{I,state="open"}', "{{endpoint}}"),
          kind="stat"),
        P("RPC errors", ("sum by (host, endpoint, class) (rate(mevwatch_rpc_errors_total{I}[R]))",
                         "{{endpoint}} {{class}}"), unit="reqps"),
        P("RPC endpoint up", ("mevwatch_rpc_up{I}", "{{endpoint}}"), kind="stat"),
    )),
    Row("Peers, sync and head lag", "peer-loss", (
        P("Peers", ("mevwatch_chain_peers{I}", "{{endpoint}}")),
        P("Head lag", ("mevwatch_chain_head_lag_blocks{I}", "{{endpoint}}"), unit="short"),
        P("Head age", ("mevwatch_chain_head_age_seconds{I}", "{{endpoint}}"), unit="s"),
        P("Syncing", ("mevwatch_chain_syncing{I}", "{{endpoint}}"), kind="stat"),
    )),
    Row("Mempool", "mempool", (
        P("Pending transactions / s (stream)",
          ("mevwatch_mempool_stream_notifications_per_second{I}", "{{endpoint}}"), unit="ops"),
        P("Stream rate vs baseline", ("mevwatch_mempool_stream_rate_ratio{I}", "{{endpoint}}"),
          unit="percentunit"),
        P("Last notification age", ("mevwatch_mempool_stream_last_notification_age_seconds{I}", "{{endpoint}}"),
          unit="s"),
        P("txpool", ("mevwatch_mempool_txpool_transactions{I}", "{{endpoint}} {{state}}")),
        P("Pending filter up", ("mevwatch_mempool_filter_up{I}", "{{endpoint}}"), kind="stat"),
    )),
    Row("Gas", "gas-uncompetitive", (
        P("Base fee", ("mevwatch_gas_base_fee_wei{I}", "base"), ("mevwatch_gas_next_base_fee_wei{I}", "next"),
          unit="short"),
        P("Priority fee percentiles", ("mevwatch_gas_priority_fee_wei{I}", "p{{percentile}}")),
        P("Bid competitiveness", ("mevwatch_gas_bid_competitiveness_ratio{I}", "{{kind}} vs p{{percentile}}"),
          unit="percentunit"),
    )),
    Row("Wallets", "wallet-failures", (
        P("Balance", ("mevwatch_wallet_balance_ether{I}", "{{wallet}}"), unit="short", kind="stat"),
        P("Nonce gap (stuck transactions)", ("mevwatch_wallet_nonce_gap{I}", "{{wallet}}")),
        P("Transactions by outcome", ("increase(mevwatch_wallet_transactions_total{I}[R])", "{{wallet}} {{status}}")),
        P("Unexpected transactions", ("mevwatch_wallet_unexpected_transactions_total{I}", "{{wallet}}"),
          kind="stat"),
    )),
    Row("Engine latency", "engine-latency", (
        P("Engine p50 / p99", ("histogram_quantile(0.5, sum by (host, target, le) "
                               "(rate(mevwatch_http_request_duration_seconds_bucket{I}[R])))", "p50 {{target}}"),
          ("histogram_quantile(0.99, sum by (host, target, le) "
           "(rate(mevwatch_http_request_duration_seconds_bucket{I}[R])))", "p99 {{target}}"), unit="s"),
        P("Engine probe up", ("mevwatch_http_up{I}", "{{target}}"), kind="stat"),
        P("Engine HTTP status", ("mevwatch_http_status_code{I}", "{{target}}"), kind="stat"),
    )),
    Row("PostgreSQL", "slow-statements", (
        P("PostgreSQL up", ("mevwatch_postgres_up{I}", "{{server}} {{datname}}"), kind="stat"),
        P("Connections used", ("mevwatch_postgres_connections_used_ratio{I}", "{{server}}"), unit="percentunit",
          max=1),
        P("Dead tuple ratio (top 10)", ("topk(10, mevwatch_postgres_table_dead_tuple_ratio{I})",
                                        "{{datname}}.{{schema}}.{{table}}"), unit="percentunit"),
        P("Table size (top 10)", ("topk(10, mevwatch_postgres_table_size_bytes{I})",
                                  "{{datname}}.{{schema}}.{{table}}"), unit="bytes"),
        P("Slow statements", ("mevwatch_postgres_slow_statements{I}", "{{server}}"),
          ("topk(5, mevwatch_postgres_statement_mean_seconds{I})", "query {{queryid}}"),
          description="Statements over slow_statement_threshold; `mevwatch diagnose` shows their text."),
        P("Oldest transaction", ("mevwatch_postgres_oldest_transaction_age_seconds{I}", "{{server}}"), unit="s"),
    )),
    Row("Integrity", "integrity-violation", (
        P("Integrity violations", ("mevwatch_integrity_violations{I}", "{{kind}}"), kind="stat"),
        P("Violating files", ("mevwatch_integrity_violation{I} == 1", "{{path}} {{kind}}"), kind="table"),
        P("Watched files", ("mevwatch_integrity_files_watched{I}", "files"), kind="stat"),
        P("Changes detected", ("increase(mevwatch_integrity_changes_detected_total{I}[R])", "{{source}}")),
    )),
    Row("Logs", "strategy-errors", (
        P("Pattern matches", ("sum by (host, source, pattern) (increase(mevwatch_log_matches_total{I}[R]))",
                              "{{source}} {{pattern}}")),
        P("Lines read / s", ("rate(mevwatch_log_lines_read_total{I}[R])", "{{source}}"), unit="ops"),
        P("Log source status", ('mevwatch_log_source_status{I,status!="ok"} == 1', "{{source}} {{status}}"),
          ('mevwatch_log_source_status{I,status="ok"}', "{{source}} ok"), kind="stat"),
    )),
    Row("mevwatch itself", "collector-failing", (
        P("Collector success", ("mevwatch_collector_success{I}", "{{collector}}/{{instance}}"), kind="stat"),
        P("Collector duration", ("mevwatch_collector_duration_seconds{I}", "{{collector}}"), unit="s"),
        P("Resident memory", ("mevwatch_process_resident_memory_bytes{I}", "{{host}}"), unit="bytes"),
        P("Event loop lag", ("mevwatch_event_loop_lag_seconds{I}", "{{host}}"), unit="s"),
        P("Alerts", ("mevwatch_alerts{I}", "{{state}} {{severity}}")),
        P("Outbox", ("mevwatch_alert_outbox_depth{I}", "{{sink}}"),
          ("mevwatch_alert_outbox_oldest_pending_age_seconds{I}", "oldest age (s)")),
        P("Build", ("mevwatch_build_info{I}", "{{version}} python {{python}}"), kind="table"),
    )),
)


def panel_queries() -> list[tuple[str, str, str]]:
    """(row, panel, expr) of every query of the dashboard."""
    return [(row.title, p.title, expr) for row in ROWS for p in row.panels for expr, _ in p.targets]


_NAME_RE = re.compile(r"\b(mevwatch_[a-z0-9_]+)\b")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (names inside quoted label values do not count)."""
    return set(_NAME_RE.findall(re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)))


def _panel_json(p: Panel, pid: int, x: int, y: int, w: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": p.unit}
    if p.max is not None:
        defaults["max"] = p.max
        defaults["min"] = 0
    out: dict[str, Any] = {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend,
             "range": p.kind != "table", "instant": p.kind == "table"}
            for i, (expr, legend) in enumerate(p.targets)
        ],
    }
    if p.description:
        out["description"] = p.description
    if p.kind == "timeseries":
        out["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
                          "tooltip": {"mode": "multi", "sort": "none"}}
    elif p.kind == "stat":
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
    elif p.kind == "table":
        out["transformations"] = [{"id": "labelsToFields", "options": {}}]
    return out


def dashboard(runbook_url: str = "docs/runbooks.md") -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    pid = 1
    y = 0
    for row in ROWS:
        panels.append({"id": pid, "type": "row", "title": row.title, "collapsed": False, "panels": [],
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        pid += 1
        y += 1
        per_line = 4 if len(row.panels) in (4, 7, 8) else 3
        w = 24 // per_line
        for i, p in enumerate(row.panels):
            panel = _panel_json(p, pid, (i % per_line) * w, y + (i // per_line) * 8, w)
            panel["links"] = [{"title": "Runbook", "url": f"${{runbook_url}}#{row.runbook}", "targetBlank": True,
                               "type": "link", "tooltip": f"Runbook: {row.title}", "icon": "doc", "tags": [],
                               "asDropdown": False, "includeVars": False, "keepTime": False}]
            panels.append(panel)
            pid += 1
        y += ((len(row.panels) + per_line - 1) // per_line) * 8
    return {
        "uid": "mevwatch",
        "title": "mevwatch: MEV host",
        "description": "Every check of the MEV operations runbook, one row per section (generated; see "
                       "daemon/dashboard.py).",
        "tags": ["mevwatch", "ethereum", "mev"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard",
        }]},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {"text": "", "value": ""}, "hide": 0, "refresh": 1, "regex": "", "options": []},
            {"name": "host", "label": "Host", "type": "query", "datasource": DATASOURCE,
             "query": {"query": "label_values(mevwatch_build_info, host)", "refId": "PrometheusVariableQuery"},
             "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*",
             "current": {"text": "All", "value": "$__all"}, "hide": 0,
             "sort": 1, "regex": "", "options": []},
            # where docs/runbooks.md is served: the panels' runbook links append the section anchor
            {"name": "runbook_url", "label": "Runbook base URL", "type": "textbox", "query": runbook_url,
             "current": {"text": runbook_url, "value": runbook_url}, "hide": 2, "options": []},
        ]},
        "panels": panels,
        "links": [],
    }


def dashboard_json() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main() -> int:
    target = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "mevwatch.json"
    target.write_text(dashboard_json())
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
