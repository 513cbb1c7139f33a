"""A dead RPC endpoint (a refused port) judged by the default rules in the engine, with their `for`, and by
`mevwatch diagnose` when no daemon runs (its collectors run once, here). The other incidents are played
against a running daemon and checked on every screen: tests/e2e/test_chain_incidents_daemon.py,
tests/e2e/test_alert_truth_daemon.py and tests/integration/test_postgres_incidents_real.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mevwatch.collectors.base import CollectorContext, CollectorError
from mevwatch.collectors.rpc import RpcCollector, RpcOptions
from mevwatch.families import Metric
from tests.support.families import family_value
from tests.support.peers import free_port
from tests.unit.alerts._helpers import Harness

DEFAULTS = """
  default_rules: true
  host: mev-host-1
  group_wait: 0s
  startup_grace: 0s
"""


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path, DEFAULTS)
    yield h
    h.close()


def firing(h: Harness, alertname: str) -> list[dict[str, str]]:
    return [a.labels for a in h.engine.all_alerts() if a.rule == alertname and a.state == "firing"]


async def _collect(c: RpcCollector) -> list[Metric]:
    try:
        return list(await c.collect())
    except CollectorError as exc:
        return list(exc.families or [])


async def test_refused_rpc_port_is_critical_in_the_engine_and_in_diagnose(harness: Harness, tmp_path: Path) -> None:
    from mevwatch.daemon.config import load_config_text
    from mevwatch.daemon.diagnose import evaluate, run_collectors

    port = free_port()  # nothing listens: connect() is refused
    ctx = CollectorContext(kind="rpc", instance="default", interval=1.0, timeout=2.0)
    c = RpcCollector(ctx, RpcOptions(endpoints=[{"name": "dead", "url": f"http://127.0.0.1:{port}"}]))
    try:
        fams = await _collect(c)
    finally:
        await c.close()
    assert family_value(fams, "mevwatch_rpc_up", endpoint="dead") == 0.0
    harness.put(*fams, key=("rpc", "default"))
    harness.advance(1)
    assert firing(harness, "RpcEndpointDown") == []  # for: 30s
    harness.put(*fams, key=("rpc", "default"))
    harness.advance(30)
    [labels] = firing(harness, "RpcEndpointDown")
    assert labels["endpoint"] == "dead"
    assert labels["severity"] == "critical"

    text = (f"state_dir: '{tmp_path / 'diag-state'}'\n"
            f"collectors:\n  - rpc: {{endpoints: [{{name: dead, url: 'http://127.0.0.1:{port}'}}]}}\n")
    cfg = load_config_text(text, str(tmp_path / "mevwatch.yaml"))
    lines = evaluate(await run_collectors(cfg, None, 1.0, 5.0), cfg)
    [line] = [ln for ln in lines if ln.check.startswith("RpcEndpointDown")]
    assert line.status == "CRIT"
    assert "dead" in line.value

