"""rpc collector: /proc/net/tcp parsing, the circuit breaker, options, and a run against a closed port."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from mevwatch.collectors import rpc
from mevwatch.collectors.base import CollectorContext, CollectorError, Paths
from mevwatch.collectors.rpc import (
    BreakerState,
    CircuitBreaker,
    RpcCollector,
    RpcOptions,
    count_established,
    parse_proc_net_tcp,
    read_tcp_sockets,
)
from mevwatch.families import Metric
from tests.support.collect import collect_anyway
from tests.support.families import family_value
from tests.support.peers import free_port, need_binary

FIXTURE_PROC = Path(__file__).resolve().parents[2] / "fixtures" / "rpc" / "proc"


def test_parse_proc_net_tcp_decodes_v4_and_v6() -> None:
    sockets = read_tcp_sockets(FIXTURE_PROC)
    assert len(sockets) == 9
    first = sockets[1]
    assert (first.local, first.remote, first.state) == (("127.0.0.1", 50000), ("127.0.0.1", 8545), "01")
    v6 = sockets[7]
    assert v6.remote == ("::1", 8545)
    assert sockets[8].remote == ("127.0.0.1", 8545)  # v4-mapped v6 address reads as its v4 form


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("127.0.0.1", 8545, 3),  # two v4 clients + one v4-mapped v6; TIME_WAIT and the server side not counted
        ("localhost", 8545, 4),  # ... plus ::1
        ("::1", 8545, 1),
        ("10.0.0.5", 8545, 1),
        ("10.0.0.5", 8546, 1),
        ("node.example", 8545, 5),  # a hostname matches every remote address on the port
        ("127.0.0.1", 9999, 0),
    ],
)
def test_count_established(host: str, port: int, expected: int) -> None:
    assert count_established(read_tcp_sockets(FIXTURE_PROC), host, port) == expected
    # only sockets to the endpoints' ports decoded: the same counts
    assert count_established(read_tcp_sockets(FIXTURE_PROC, frozenset({port})), host, port) == expected


@contextlib.contextmanager
def loopback_connections(groups: Sequence[tuple[int, str, int]], closed: bool = False) -> Iterator[list[int]]:
    """A listener per (family, host, connections) group with that many established client
    connections (and, with ``closed``, one more already closed); yields the listeners' ports
    (a v6 group is left out where there is no IPv6 loopback)."""
    listeners, conns, ports = [], [], []
    try:
        for family, host, n in groups:
            try:
                srv = socket.socket(family)
                srv.bind((host, 0))
            except OSError:
                continue  # no IPv6 loopback here
            srv.listen(8)
            listeners.append(srv)
            ports.append(srv.getsockname()[1])
            for _ in range(n):
                conns.append(socket.create_connection((host, ports[-1])))
                conns.append(srv.accept()[0])
            if closed:
                gone = socket.create_connection((host, ports[-1]))
                srv.accept()[0].close()
                gone.close()  # FIN_WAIT/TIME_WAIT on the server side, CLOSE_WAIT/LAST_ACK on ours
        yield ports
    finally:
        for s in (*conns, *listeners):
            s.close()


def test_sock_diag_and_proc_net_tcp_see_the_same_established_connections() -> None:
    with loopback_connections([(socket.AF_INET, "127.0.0.1", 3), (socket.AF_INET6, "::1", 3)]) as listening:
        ports = frozenset(listening)
        from_diag = rpc._netlink_established(ports)
        assert read_tcp_sockets(Path("/proc"), ports) == from_diag  # this process's own /proc: sock_diag
        from_text = [s for s in read_tcp_sockets(Path("/proc/self/.."), ports) if s.state == "01"]  # the files
        assert sorted(from_diag, key=repr) == sorted(from_text, key=repr)
        assert len(from_diag) == 3 * len(ports)
        assert count_established(from_diag, "127.0.0.1", listening[0]) == 3


def test_kernel_port_filter_counts_what_a_full_walk_and_ss_count() -> None:
    """The sock_diag request carries the endpoints' ports as a kernel filter: per port, the same
    established connections as walking every socket, and as ``ss state established dport = :N``."""
    ss = need_binary("ss")
    groups = [(socket.AF_INET, "127.0.0.1", 1), (socket.AF_INET, "127.0.0.1", 4), (socket.AF_INET6, "::1", 2)]
    with loopback_connections(groups, closed=True) as ports:
        full_walk = rpc._netlink_established(None)
        for port, (_, _, conns) in zip(ports, groups, strict=False):
            filtered = rpc._netlink_established(frozenset({port}))
            assert filtered == [s for s in full_walk if s.remote[1] == port]
            out = subprocess.run([ss, "-Htn", "state", "established", "dport", "=", f":{port}"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
            assert len(filtered) == len(out.splitlines()) == conns
        both = rpc._netlink_established(frozenset(ports[:2]))
        assert sorted(both, key=repr) == sorted((s for s in full_walk if s.remote[1] in ports[:2]), key=repr)
        assert len(both) == 5


def test_port_filter_needs_a_port() -> None:
    with pytest.raises(ValueError, match="no port"):
        rpc.sock_diag_port_filter([])


def test_port_filter_skips_other_sockets() -> None:
    assert {s.remote[1] for s in read_tcp_sockets(FIXTURE_PROC, frozenset({8546}))} == {8546}


def test_parse_proc_net_tcp_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="line 2: not a /proc/net/tcp socket line"):
        parse_proc_net_tcp("header\n   0: nonsense here 01\n")
    with pytest.raises(ValueError, match="line 2"):
        parse_proc_net_tcp("header\n   0: 0100007F:ZZZZ 00000000:0000 0A\n")


def state_of(br: CircuitBreaker) -> BreakerState:
    return br.state  # a call, so mypy does not keep an earlier narrowing across record()/allow()


def test_breaker_opens_after_threshold_and_half_opens_after_recovery() -> None:
    br = CircuitBreaker(failure_threshold=5, recovery_time=60.0)
    for i in range(4):
        assert br.allow(float(i))
        br.record(False, float(i))
    assert state_of(br) is BreakerState.CLOSED
    br.record(False, 4.0)
    assert state_of(br) is BreakerState.OPEN
    assert not br.allow(63.9)  # 59.9 s after opening
    assert br.allow(64.0)
    assert state_of(br) is BreakerState.HALF_OPEN
    br.record(False, 64.0)  # the trial failed: open again, for a full recovery time
    assert state_of(br) is BreakerState.OPEN
    assert not br.allow(100.0)
    assert br.allow(124.0)
    br.record(True, 124.0)
    assert state_of(br) is BreakerState.CLOSED
    assert br.failures == 0
    assert br.transitions == {BreakerState.OPEN: 2, BreakerState.HALF_OPEN: 2, BreakerState.CLOSED: 1}


def test_breaker_success_resets_the_streak() -> None:
    br = CircuitBreaker(failure_threshold=3)
    for ok in (False, False, True, False, False):
        br.record(ok, 0.0)
    assert state_of(br) is BreakerState.CLOSED


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"endpoints": []}, "at least one endpoint"),
        ({"endpoints": [{"name": "a", "url": "http://h"}, {"name": "a", "url": "http://g"}]}, "unique: a"),
        ({"endpoints": [{"name": "a", "url": "tcp://h"}]}, "must start with http"),
        ({"methods": []}, "at least one method"),
        ({"methods": ["eth blockNumber"]}, "not a JSON-RPC method name"),
        ({"methods": ["eth_chainId", "eth_chainId"]}, "unique"),
        ({"failure_threshold": 0}, "greater than or equal to 1"),
        ({"recovery_time": "soon"}, "invalid duration"),
        ({"buckets": [0.1, 0.05]}, "strictly increasing"),
    ],
)
def test_options_reject_bad_config(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RpcOptions(**fields)


def test_default_options_probe_local_node() -> None:
    opts = RpcOptions()
    assert [(e.name, e.url) for e in opts.endpoints] == [("local", "http://127.0.0.1:8545")]
    assert (opts.methods, opts.failure_threshold, opts.recovery_time) == (["eth_blockNumber"], 5, 60.0)
    assert opts.buckets[0] == 0.0005
    assert opts.buckets[-1] == 10.0


async def test_no_node_fails_cleanly_with_refused_and_still_reports() -> None:
    port = free_port()
    key = "0123456789abcdef0123456789abcdef"
    opts = RpcOptions(endpoints=[{"name": "local", "url": f"http://127.0.0.1:{port}/{key}"}])
    ctx = CollectorContext(kind="rpc", instance="t", interval=1.0, timeout=2.0, paths=Paths(procfs=FIXTURE_PROC))
    collector = RpcCollector(ctx, opts)
    try:
        with pytest.raises(CollectorError) as info:
            await collector.collect()
    finally:
        await collector.close()
    assert info.value.reason == "refused"
    assert key not in info.value.message
    families: list[Metric] = list(info.value.families or [])
    assert family_value(families, "mevwatch_rpc_up", endpoint="local") == 0.0
    assert family_value(families, "mevwatch_rpc_errors_total", endpoint="local", **{"class": "refused"}) == 1.0
    assert family_value(families, "mevwatch_rpc_established_connections", endpoint="local") == 0.0
    url = next(s.labels["url"] for f in families for s in f.samples if s.name == "mevwatch_rpc_endpoint_info")
    assert key not in url
    assert url.endswith("/***")


async def test_established_connections_from_fixture_proc() -> None:
    opts = RpcOptions(endpoints=[{"name": "node", "url": "http://127.0.0.1:8545"}])
    ctx = CollectorContext(kind="rpc", instance="t", interval=1.0, timeout=2.0, paths=Paths(procfs=FIXTURE_PROC))
    collector = RpcCollector(ctx, opts)
    try:
        families = await collect_anyway(collector)  # whether or not a node listens on 8545 here
    finally:
        await collector.close()
    assert family_value(families, "mevwatch_rpc_established_connections", endpoint="node") == 3.0
