"""JSON-RPC endpoint health: latency per probed method, errors by class, open TCP connections, circuit breaker.

The runbook's "RPC Endpoint Timeouts" checks (`netstat | grep :8545 | wc -l`, a timed eth_blockNumber
loop, a 5-failure / 60 s circuit breaker) as metrics, for several HTTP and WebSocket endpoints.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import ClassVar, TypeVar

from pydantic import Field, field_validator

from mevwatch.collectors._jsonrpc import Endpoint, ErrorClass, JsonRpcClient, RpcError, SharedSession
from mevwatch.collectors.base import (
    CollectorContext,
    CollectorError,
    CollectorOptions,
    Families,
    MetricSpec,
    PollCollector,
)
from mevwatch.collectors.http import DEFAULT_BUCKETS, LatencyHistogram
from mevwatch.collectors.registry import register
from mevwatch.families import (
    Metric,
)
from mevwatch.fields import Duration

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "RpcCollector",
    "RpcOptions",
    "count_established",
    "parse_proc_net_tcp",
]

T = TypeVar("T")
_METHOD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_TCP_ESTABLISHED = "01"


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class CircuitBreaker:
    """The runbook's breaker: open after ``failure_threshold`` failures in a row, one trial after ``recovery_time``."""

    failure_threshold: int = 5
    recovery_time: float = 60.0
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    transitions: Counter[BreakerState] = field(default_factory=Counter)

    def allow(self, now: float) -> bool:
        """Whether a probe may be sent now; an open breaker past its recovery time turns half-open."""
        if self.state is BreakerState.OPEN:
            if now - self.opened_at < self.recovery_time:
                return False
            self._move(BreakerState.HALF_OPEN)
        return True

    def record(self, ok: bool, now: float) -> None:
        if ok:
            self.failures = 0
            if self.state is not BreakerState.CLOSED:
                self._move(BreakerState.CLOSED)
            return
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED and self.failures >= self.failure_threshold
        ):
            self.opened_at = now
            self._move(BreakerState.OPEN)

    def _move(self, state: BreakerState) -> None:
        self.state = state
        self.transitions[state] += 1


# --- /proc/net/tcp ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TcpSocket:
    local: tuple[str, int]
    remote: tuple[str, int]
    state: str


def _decode_addr(hex_addr: str) -> str:
    """/proc/net/tcp{,6} address: 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    if len(raw) != 16:
        raise ValueError(f"bad address {hex_addr!r}")
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    v6 = ipaddress.IPv6Address(words)
    return str(v6.ipv4_mapped) if v6.ipv4_mapped is not None else str(v6)


def parse_proc_net_tcp(text: str, remote_ports: frozenset[int] | None = None) -> list[TcpSocket]:
    """Sockets of /proc/net/tcp or /proc/net/tcp6 (header skipped); a malformed line raises ValueError.

    With ``remote_ports``, only sockets to those ports are decoded: a busy host has thousands of
    sockets and decoding their addresses was most of the rpc collector's cost.
    """
    out: list[TcpSocket] = []
    for lineno, line in enumerate(text.splitlines()[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        try:
            (laddr, lport), (raddr, rport) = (f.split(":") for f in fields[1:3])
            if remote_ports is not None and int(rport, 16) not in remote_ports:
                continue
            out.append(
                TcpSocket((_decode_addr(laddr), int(lport, 16)), (_decode_addr(raddr), int(rport, 16)), fields[3])
            )
        except (ValueError, IndexError):
            raise ValueError(f"line {lineno}: not a /proc/net/tcp socket line: {line.strip()[:80]!r}") from None
    return out


def _host_addresses(host: str) -> frozenset[str] | None:
    """The addresses an endpoint host stands for, or None when only a DNS lookup could tell (match any)."""
    if host == "localhost":
        return frozenset({"127.0.0.1", "::1"})
    try:
        return frozenset({str(ipaddress.ip_address(host.strip("[]")))})
    except ValueError:
        return None


def count_established(sockets: Iterable[TcpSocket], host: str, port: int) -> int:
    """Established connections from this host to ``host:port`` (the client side of the runbook's netstat)."""
    addrs = _host_addresses(host)
    return sum(
        1
        for s in sockets
        if s.state == _TCP_ESTABLISHED and s.remote[1] == port and (addrs is None or s.remote[0] in addrs)
    )


# sock_diag (linux/sock_diag.h, linux/inet_diag.h): the established TCP sockets as binary records.
_NETLINK_SOCK_DIAG = 4
# TCPDIAG_GETSOCK, the first version of the request (struct inet_diag_req), which ss also sends when no
# family is asked for: the kernel answers it as a request for AF_UNSPEC, so one walk of the TCP hash table
# yields the IPv4 and IPv6 sockets, where SOCK_DIAG_BY_FAMILY walks the whole table once per family (the
# walk, over every bucket, is the cost: 1.1 ms against 2.2 ms of CPU for the two on a 262,144-bucket table).
_TCPDIAG_GETSOCK = 18
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_DIAG_REQ = struct.Struct("=BBBB48xII")  # family, src_len, dst_len, ext, an empty inet_diag_sockid, states, dbs
_DIAG_MSG = struct.Struct("=BBBB2H16s16s")  # family, state, timer, retrans, sport, dport (both big-endian), src, dst
_NLATTR = struct.Struct("=HH")  # len, type
_INET_DIAG_REQ_BYTECODE = 1
# The filter program: inet_diag_bc_op (code, yes, no: byte offsets to the next op when the test
# holds / fails; landing exactly at the end accepts the socket, past it rejects) and, for a port
# condition, inet_diag_hostcond (family, prefix length, port in host order; AF_UNSPEC: any address).
_BC_OP = struct.Struct("=BBH")
_BC_HOSTCOND = struct.Struct("=BBxxi")
_INET_DIAG_BC_JMP, _INET_DIAG_BC_D_COND = 1, 8


def sock_diag_port_filter(ports: Iterable[int]) -> bytes:
    """inet_diag bytecode keeping the sockets whose remote port is one of ``ports``, as ``ss`` compiles
    ``dport = :A or dport = :B``: each test falls through to a jump to the end (accept) or, failing,
    skips that jump to the next test; the last one rejects on failure. The kernel checks that every
    jump lands on an op reached by the "yes" chain, hence the jumps between tests."""
    ordered = sorted(set(ports))
    if not ordered:
        raise ValueError("no port to filter on")
    cond = _BC_OP.size + _BC_HOSTCOND.size
    total = len(ordered) * (cond + _BC_OP.size) - _BC_OP.size
    out = bytearray()
    for i, port in enumerate(ordered):
        last = i == len(ordered) - 1
        out += _BC_OP.pack(_INET_DIAG_BC_D_COND, cond, cond + _BC_OP.size)
        out += _BC_HOSTCOND.pack(socket.AF_UNSPEC, 0, port)
        if not last:
            out += _BC_OP.pack(_INET_DIAG_BC_JMP, _BC_OP.size, total - len(out))
    return bytes(out)


def _netlink_established(remote_ports: frozenset[int] | None) -> list[TcpSocket]:
    """Established TCP sockets of this network namespace from the kernel's sock_diag interface.

    /proc/net/tcp has the kernel format a text line for every socket, TIME_WAIT ones included:
    59 ms for 4,800 sockets on a busy test host, most of the rpc collector's cost and a fifth of
    the idle default config's. Asking for established sockets only, in binary, costs ~1 ms; with
    ``remote_ports`` the kernel runs a port filter too (as ``ss state established dport = :N``
    does) and sends only the endpoints' connections, not a record for every established socket.
    """
    attr = b""
    if remote_ports:
        bc = sock_diag_port_filter(remote_ports)
        attr = _NLATTR.pack(_NLATTR.size + len(bc), _INET_DIAG_REQ_BYTECODE) + bc
    out: list[TcpSocket] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(2.0)
        body = _DIAG_REQ.pack(socket.AF_UNSPEC, 0, 0, 0, 1 << int(_TCP_ESTABLISHED, 16), 0) + attr
        nl.send(_NLMSG.pack(_NLMSG.size + len(body), _TCPDIAG_GETSOCK, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0) + body)
        done = False
        while not done:
            data = nl.recv(1 << 16)
            off = 0
            while off + _NLMSG.size <= len(data):
                length, kind, _, _, _ = _NLMSG.unpack_from(data, off)
                if length < _NLMSG.size:
                    raise OSError("sock_diag: malformed message")
                if kind == _NLMSG_DONE:
                    done = True
                    break
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, off + _NLMSG.size)[0]
                    raise OSError(code, f"sock_diag: {code}")
                fam, state, _, _, sport, dport, src, dst = _DIAG_MSG.unpack_from(data, off + _NLMSG.size)
                dport, sport = socket.ntohs(dport), socket.ntohs(sport)
                if remote_ports is None or dport in remote_ports:
                    out.append(TcpSocket((_diag_addr(fam, src), sport), (_diag_addr(fam, dst), dport),
                                         f"{state:02X}"))
                off += (length + 3) & ~3
    return out


def _diag_addr(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    v6 = ipaddress.IPv6Address(raw)
    return str(v6.ipv4_mapped) if v6.ipv4_mapped is not None else str(v6)


def read_tcp_sockets(procfs: Path, remote_ports: frozenset[int] | None = None) -> list[TcpSocket]:
    """TCP sockets of the host, to ``remote_ports`` if given: established ones from sock_diag when
    ``procfs`` is this process's own /proc, else (or when netlink is refused) every socket of
    procfs/net/tcp{,6}."""
    if procfs == Path("/proc"):
        try:
            return _netlink_established(remote_ports)
        except OSError:
            pass  # no netlink here (a seccomp profile, an old kernel): the text files say the same
    sockets: list[TcpSocket] = []
    for name in ("tcp", "tcp6"):
        try:
            text = (procfs / "net" / name).read_text(encoding="ascii")
        except FileNotFoundError:
            continue  # no IPv6 on this host
        sockets.extend(parse_proc_net_tcp(text, remote_ports))
    return sockets


# --- options and collector -------------------------------------------------------------------------


def _default_endpoints() -> list[Endpoint]:
    return [Endpoint(name="local", url="http://127.0.0.1:8545")]


class RpcOptions(CollectorOptions):
    endpoints: list[Endpoint] = Field(
        default_factory=_default_endpoints, description="JSON-RPC endpoints to probe (HTTP or WebSocket), each named"
    )
    methods: list[str] = Field(
        default_factory=lambda: ["eth_blockNumber"], description="methods called on every probe, without params"
    )
    failure_threshold: int = Field(default=5, ge=1, description="failed probes in a row that open the breaker")
    recovery_time: Duration = Field(default=60.0, description="how long an open breaker waits before one trial probe")
    buckets: list[float] = Field(
        default_factory=lambda: list(DEFAULT_BUCKETS), description="latency histogram bucket bounds in seconds"
    )

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: list[Endpoint]) -> list[Endpoint]:
        if not v:
            raise ValueError("at least one endpoint is required")
        names = [e.name for e in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"endpoint names must be unique: {', '.join(dupes)}")
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one method is required")
        bad = [m for m in v if not _METHOD_RE.match(m)]
        if bad:
            raise ValueError(f"not a JSON-RPC method name: {bad[0]!r}")
        if len(set(v)) != len(v):
            raise ValueError("methods must be unique")
        return v

    @field_validator("buckets")
    @classmethod
    def _buckets(cls, v: list[float]) -> list[float]:
        if not v or any(b <= 0 for b in v) or sorted(set(v)) != v:
            raise ValueError("buckets must be positive and strictly increasing")
        return v


@dataclass(slots=True)
class _EndpointState:
    endpoint: Endpoint
    client: JsonRpcClient
    breaker: CircuitBreaker
    latency: dict[str, LatencyHistogram]
    requests: Counter[str] = field(default_factory=Counter)
    errors: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (method, class, code)
    skipped: int = 0
    up: bool = False
    last_error: RpcError | None = None


RPC_ENDPOINT_INFO = MetricSpec(
    "mevwatch_rpc_endpoint_info", "gauge",
    "Probed JSON-RPC endpoint (URL with secrets redacted)",
    ("endpoint", "url", "transport"),
)

RPC_UP = MetricSpec("mevwatch_rpc_up", "gauge", "1 if the endpoint's last probe succeeded", ("endpoint",))

RPC_REQUEST_DURATION_SECONDS = MetricSpec(
    "mevwatch_rpc_request_duration_seconds", "histogram",
    "Latency of answered JSON-RPC probe calls",
    ("endpoint", "method"),
)

RPC_REQUESTS = MetricSpec("mevwatch_rpc_requests", "counter", "JSON-RPC probe calls sent", ("endpoint", "method"))

RPC_ERRORS = MetricSpec(
    "mevwatch_rpc_errors", "counter",
    "Failed JSON-RPC probe calls by error class (code: HTTP status or RPC error code)",
    ("endpoint", "method", "class", "code"),
)

RPC_ESTABLISHED_CONNECTIONS = MetricSpec(
    "mevwatch_rpc_established_connections", "gauge",
    "Established TCP connections from this host to the endpoint",
    ("endpoint",),
)

RPC_CIRCUIT_BREAKER_STATE = MetricSpec(
    "mevwatch_rpc_circuit_breaker_state", "gauge",
    "Circuit breaker state of the endpoint (1 for the current state)",
    ("endpoint", "state"),
)

RPC_CIRCUIT_BREAKER_TRANSITIONS = MetricSpec(
    "mevwatch_rpc_circuit_breaker_transitions", "counter",
    "Circuit breaker state changes by new state",
    ("endpoint", "state"),
)

RPC_PROBES_SKIPPED = MetricSpec(
    "mevwatch_rpc_probes_skipped", "counter",
    "Probes not sent because the circuit breaker was open",
    ("endpoint",),
)


@register
class RpcCollector(PollCollector[RpcOptions]):
    kind: ClassVar[str] = "rpc"
    Options = RpcOptions
    default_interval: ClassVar[float] = 15.0
    default_timeout: ClassVar[float] = 10.0
    runbook_section = "rpc-timeouts"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        RPC_ENDPOINT_INFO,
        RPC_UP,
        RPC_REQUEST_DURATION_SECONDS,
        RPC_REQUESTS,
        RPC_ERRORS,
        RPC_ESTABLISHED_CONNECTIONS,
        RPC_CIRCUIT_BREAKER_STATE,
        RPC_CIRCUIT_BREAKER_TRANSITIONS,
        RPC_PROBES_SKIPPED,
    )

    def __init__(self, ctx: CollectorContext, options: RpcOptions) -> None:
        super().__init__(ctx, options)
        self._session = SharedSession()
        self._states: dict[str, _EndpointState] = {}

    def _state_for(self, ep: Endpoint) -> _EndpointState:
        st = self._states.get(ep.name)
        if st is None:
            st = _EndpointState(
                endpoint=ep,
                client=JsonRpcClient(ep, self._session.get()),
                breaker=CircuitBreaker(self.options.failure_threshold, self.options.recovery_time),
                latency={m: LatencyHistogram(self.options.buckets) for m in self.options.methods},
            )
            self._states[ep.name] = st
        return st

    async def collect(self) -> Families:
        states = [self._state_for(ep) for ep in self.options.endpoints]
        probes = asyncio.gather(*(self._probe(st) for st in states))
        ports = frozenset(ep.port for ep in self.options.endpoints)
        sockets_task = self.ctx.run_blocking(read_tcp_sockets, self.ctx.paths.procfs, ports, timeout=2.0)
        _, sockets = await asyncio.gather(probes, _or_none(sockets_task))
        families = self._families(states, sockets)
        if not any(st.up for st in states):
            first = next((st.last_error for st in states if st.last_error is not None), None)
            if first is not None:
                raise CollectorError(first.reason, first.message, families)
            raise CollectorError("circuit_open", "every endpoint's circuit breaker is open", families)
        return families

    async def _probe(self, st: _EndpointState) -> None:
        breaker = st.breaker
        if not breaker.allow(time.monotonic()):
            st.skipped += 1
            st.up = False
            st.last_error = None  # not probed: the run fails as circuit_open, not with a stale error
            return
        # A half-open breaker lets exactly one trial call through, not the whole method list.
        methods = self.options.methods if breaker.state is BreakerState.CLOSED else self.options.methods[:1]
        results = await asyncio.gather(*(self._call(st, m) for m in methods))
        failures = [e for e in results if e is not None and e.error_class is not ErrorClass.METHOD_NOT_SUPPORTED]
        before = breaker.state
        breaker.record(not failures, time.monotonic())
        st.up = not failures
        st.last_error = failures[0] if failures else None
        # Logged when the breaker opens from closed and when it closes again; a dead node's failed
        # trial every recovery_time is visible in the transitions counter, not as a log line each time.
        opened = before is BreakerState.CLOSED and breaker.state is BreakerState.OPEN
        if opened or (before is BreakerState.HALF_OPEN and breaker.state is BreakerState.CLOSED):
            self.ctx.log.warning(
                "rpc_circuit_breaker", endpoint=st.endpoint.name, state=breaker.state.value,
                error=st.last_error.message if st.last_error else "",
            )

    async def _call(self, st: _EndpointState, method: str) -> RpcError | None:
        st.requests[method] += 1
        started = time.perf_counter()
        try:
            await st.client.call(method)
        except RpcError as exc:
            if exc.error_class in (ErrorClass.RPC_ERROR, ErrorClass.METHOD_NOT_SUPPORTED):
                st.latency[method].observe(time.perf_counter() - started)  # answered, just not with a result
            st.errors[(method, exc.error_class.value, "" if exc.code is None else str(exc.code))] += 1
            return exc
        st.latency[method].observe(time.perf_counter() - started)
        return None

    def _families(self, states: list[_EndpointState], sockets: list[TcpSocket] | None) -> list[Metric]:
        info = RPC_ENDPOINT_INFO.gauge()
        up = RPC_UP.gauge()
        latency = RPC_REQUEST_DURATION_SECONDS.histogram()
        requests = RPC_REQUESTS.counter()
        errors = RPC_ERRORS.counter()
        conns = RPC_ESTABLISHED_CONNECTIONS.gauge()
        state = RPC_CIRCUIT_BREAKER_STATE.gauge()
        transitions = RPC_CIRCUIT_BREAKER_TRANSITIONS.counter()
        skipped = RPC_PROBES_SKIPPED.counter()
        for st in states:
            ep = st.endpoint
            name = ep.name
            info.add_metric([name, ep.safe_url, "websocket" if ep.websocket else "http"], 1.0)
            up.add_metric([name], 1.0 if st.up else 0.0)
            for method, hist in st.latency.items():
                latency.add_metric([name, method], hist.buckets(), hist.sum)
                requests.add_metric([name, method], float(st.requests[method]))
            for (method, cls, code), n in sorted(st.errors.items()):
                errors.add_metric([name, method, cls, code], float(n))
            if sockets is not None:
                conns.add_metric([name], float(count_established(sockets, ep.host, ep.port)))
            for s in BreakerState:
                state.add_metric([name, s.value], 1.0 if st.breaker.state is s else 0.0)
                transitions.add_metric([name, s.value], float(st.breaker.transitions[s]))
            skipped.add_metric([name], float(st.skipped))
        return [info, up, latency, requests, errors, conns, state, transitions, skipped]

    async def close(self) -> None:
        for st in self._states.values():
            await st.client.close()
        self._states.clear()
        await self._session.close()


async def _or_none(aw: Awaitable[T]) -> T | None:
    """The connection count is secondary: an unreadable /proc must not fail the latency probe."""
    try:
        return await aw
    except (CollectorError, OSError, ValueError):
        return None
