"""Every shipped collector keeps the contract: kind == module, valid defaults, documented families.

In the spirit of Home Assistant's hassfest: checks every registered collector at once, so a new
collector that forgets a piece fails here rather than in production.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mevwatch.aio import wait_for
from mevwatch.alerts.engine import ENGINE_METRICS, AlertEngine
from mevwatch.blocking import BlockingPool
from mevwatch.collectors.base import (
    Collector,
    CollectorContext,
    CollectorError,
    CollectorOptions,
    NoData,
    PollCollector,
    StreamCollector,
)
from mevwatch.collectors.registry import IMPORT_ERRORS, all_kinds
from mevwatch.daemon.config import load_config_text
from mevwatch.daemon.docgen import all_metric_specs, declaration_problems
from mevwatch.daemon.state import StateDB
from mevwatch.daemon.store import SampleStore
from mevwatch.daemon.supervisor import META_KEY, SUPERVISOR_METRICS, Supervisor
from tests.support.peers import REPO

SHIPPED = {k: c for k, c in all_kinds().items() if c.__module__.startswith("mevwatch.collectors.")}
EXAMPLE = (REPO / "config.example.yaml").read_text()


def test_every_collector_module_imports() -> None:
    assert IMPORT_ERRORS == {}


@pytest.mark.parametrize("kind", sorted(SHIPPED))
def test_collector_contract(kind: str) -> None:
    cls = SHIPPED[kind]
    assert cls.__module__ == f"mevwatch.collectors.{kind}", "kind must equal the module name"
    assert issubclass(cls.Options, CollectorOptions)
    assert cls.Options.model_config.get("extra") == "forbid"
    cls.Options()  # defaults validate
    assert issubclass(cls, PollCollector | StreamCollector)
    assert cls.default_interval > 0
    assert cls.default_timeout > 0
    assert cls.__doc__ or (cls.__module__ and __import__(cls.__module__, fromlist=["x"]).__doc__)
    assert f"- {kind}:" in EXAMPLE, f"{kind} missing from config.example.yaml"
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', (REPO / "docs" / "runbooks.md").read_text()))
    assert cls.runbook_section in anchors, f"{kind}.runbook_section {cls.runbook_section!r} is no runbook anchor"
    for name, field in cls.Options.model_fields.items():
        if name in CollectorOptions.model_fields:
            continue
        assert field.description or name in EXAMPLE, f"{kind}.{name} has neither a description nor an example"


async def _families_of(cls: type[Collector[Any]], state: StateDB, peer_here: bool = False) -> list[Any]:
    """The families of one run (a stream: of its first second) with default options. Without a peer
    a kind may fail or have nothing to report; with ``peer_here`` that is an error."""
    opts = cls.Options()
    ctx = CollectorContext(kind=cls.kind, instance="contract", interval=cls.default_interval,
                           timeout=min(cls.default_timeout, 5.0), state=state, pool=BlockingPool(4))
    collector = cls(ctx, opts)
    out: list[Any] = []
    try:
        if isinstance(collector, PollCollector):
            out = list(await wait_for(collector.collect(), 8.0))
        elif isinstance(collector, StreamCollector):
            task = asyncio.create_task(collector.run(lambda fams: out.extend(fams)))
            await asyncio.sleep(1.0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    except (CollectorError, NoData, TimeoutError):
        if peer_here:
            raise
        # no peer on this host for this kind (node, engine): families checked where it runs
    finally:
        await collector.close()
    return out


@pytest.mark.parametrize("kind", sorted(SHIPPED))
async def test_families_on_the_live_host_are_named_documented_and_declared(kind: str, state_db: StateDB) -> None:
    families = await _families_of(SHIPPED[kind], state_db)
    # same name, type and label names as declared (the e2e scrape checks the families that need peers)
    assert declaration_problems(families, SHIPPED[kind].metrics) == []
    for fam in families:
        assert fam.name.startswith("mevwatch_"), fam.name
        assert fam.documentation.strip(), f"{fam.name} has no help text"
        assert fam.type in {"gauge", "counter", "histogram", "info", "stateset", "summary", "unknown"}
        if fam.type == "counter":
            assert not fam.name.endswith("_total"), f"{fam.name}: the _total suffix is added on exposition"
        for s in fam.samples:
            assert "pid" not in s.labels, f"{fam.name} has a pid label (unbounded cardinality)"


def _listening(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return False
        return True

    return check


def _always() -> bool:
    return True


def _never() -> bool:
    return False


#: whether this host has the peer a kind reads with its default options. Host kinds read the kernel
#: and the files they watch (a missing file is a reported state, not nothing); the node kinds need
#: the JSON-RPC node of their default endpoint. A new kind must say here what its peer is.
PEERS: dict[str, Callable[[], bool]] = {
    "cpu": _always, "memory": _always, "filesystems": _always, "directories": _always, "backups": _always,
    "process": _always, "oomkill": _always,
    "services": _always, "integrity": _always, "logwatch": _always, "textfile": _always,
    "http": _always, "postgres": _always,  # a probe that cannot connect reports the target down
    "chain": _listening(8545), "gas": _listening(8545), "mempool": _listening(8545), "rpc": _listening(8545),
    "mempool_stream": _always,  # reports the stream down while it reconnects
    "wallet": _never,  # nothing to report until addresses are configured (the default has none)
}


@pytest.mark.parametrize("kind", sorted(SHIPPED))
async def test_a_collector_whose_peer_is_here_produces_samples(kind: str, state_db: StateDB) -> None:
    assert kind in PEERS, f"{kind}: add it to PEERS (when does this host have its peer?)"
    if not PEERS[kind]():
        pytest.skip(f"no peer for {kind} on this host")
    families = await _families_of(SHIPPED[kind], state_db, peer_here=True)
    assert any(f.samples for f in families), f"{kind} produced no samples on a host that has its peer"


@pytest.mark.parametrize("kind", sorted(SHIPPED))
def test_collector_declares_its_families(kind: str) -> None:
    specs = SHIPPED[kind].metrics
    assert specs, f"{kind} declares no metric families"
    names = [s.name for s in specs]
    assert len(names) == len(set(names)), f"{kind} declares a family twice"
    for spec in specs:
        assert spec.name.startswith("mevwatch_"), spec.name
        assert spec.help.strip(), f"{spec.name} has no help text"
        assert len(spec.labels) == len(set(spec.labels)), f"{spec.name} repeats a label"
        if spec.type == "counter":
            assert not spec.name.endswith("_total"), f"{spec.name}: declare counters without _total"


def test_every_declared_family_has_one_owner() -> None:
    specs = all_metric_specs()  # raises when two owners declare one name differently
    assert {owner for owner, _ in specs.values()} >= {"supervisor", "alerts", *SHIPPED}


async def test_supervisor_and_engine_families_are_declared(tmp_path: Path) -> None:
    store = SampleStore()
    sup = Supervisor(load_config_text("collectors:\n  - process: {interval: 5}\n", "t", {}), store)
    await sup.start()
    try:
        assert await sup.wait_first_round(5.0)
        meta = store.get(META_KEY)
        assert meta is not None
        assert declaration_problems(meta.families, SUPERVISOR_METRICS) == []
    finally:
        await sup.shutdown()
    db = StateDB.open_dir(tmp_path / "state")
    try:
        cfg = load_config_text("collectors: []\nalerts: {enabled: true}\n", str(tmp_path / "c.yaml"))
        engine = AlertEngine(cfg.daemon.alerts, SampleStore(), db)
        families = engine.families()
        assert {f.name for f in families} >= {"mevwatch_alerts", "mevwatch_alert_rules"}
        assert declaration_problems(families, ENGINE_METRICS) == []
    finally:
        db.close()
