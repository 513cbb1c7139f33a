"""Node health per endpoint: up, peers, sync progress, head block and its age, head lag, chain id, client version.

The runbook's "Node Disconnections and Peer Loss" checks (``net_peerCount`` on every node port) plus the
sync and head checks behind "block sync falling behind". A dead node shows ``up 0`` and nothing else.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from pydantic import Field, field_validator, model_validator

from mevwatch.collectors._jsonrpc import Endpoint, ErrorClass, JsonRpcClient, RpcError, SharedSession, parse_quantity
from mevwatch.collectors.base import (
    CollectorContext,
    CollectorError,
    CollectorOptions,
    Families,
    MetricSpec,
    PollCollector,
)
from mevwatch.collectors.registry import register
from mevwatch.families import Metric
from mevwatch.fields import Duration

__all__ = [
    "BLOCK_TIME_MIN_INTERVALS", "BLOCK_TIME_SPAN", "DEFAULT_BLOCK_TIME", "STALL_FACTOR", "ChainCollector",
    "ChainOptions", "HeadBlock", "SyncStatus", "learn_block_time", "parse_head_block", "parse_syncing",
]

T = TypeVar("T")
_VERSION_MAX = 128
DEFAULT_BLOCK_TIME = 12.0  # mainnet's slot time, until the node's recent blocks tell
BLOCK_TIME_SPAN = 16  # the last block intervals the block time is learned from
BLOCK_TIME_MIN_INTERVALS = 4  # fewer intervals than this tell nothing yet: the default holds
# An interval longer than this many times the median is a stall (mining stopped, the node cut off), not the
# chain's pace: left out, so that a second stall right after a first is told as fast as the first.
STALL_FACTOR = 3.0


@dataclass(frozen=True, slots=True)
class SyncStatus:
    syncing: bool
    current_block: int = 0
    highest_block: int = 0

    @property
    def remaining_blocks(self) -> int:
        return max(self.highest_block - self.current_block, 0) if self.syncing else 0


def parse_syncing(value: Any) -> SyncStatus:
    """``eth_syncing``: ``false`` is "not syncing" (a normal answer); an object has current and highest block.

    Anything else raises ValueError, so a misread answer is an error and never reads as either state.
    """
    if value is False:
        return SyncStatus(syncing=False)
    if not isinstance(value, dict):
        raise ValueError(f"eth_syncing: expected false or an object, got {type(value).__name__} {str(value)[:40]!r}")
    current = parse_quantity(value.get("currentBlock"), "eth_syncing currentBlock")
    highest = parse_quantity(value.get("highestBlock"), "eth_syncing highestBlock")
    return SyncStatus(syncing=True, current_block=current, highest_block=highest)


@dataclass(frozen=True, slots=True)
class HeadBlock:
    number: int
    timestamp: int


def parse_head_block(value: Any) -> HeadBlock:
    """``eth_getBlockByNumber("latest", false)``: the head's number and timestamp."""
    if not isinstance(value, dict):
        raise ValueError(f"latest block: expected an object, got {type(value).__name__}")
    return HeadBlock(
        parse_quantity(value.get("number"), "latest block number"),
        parse_quantity(value.get("timestamp"), "latest block timestamp"),
    )


def learn_block_time(timestamps: Mapping[int, int]) -> float | None:
    """Seconds per block from the timestamps of consecutive blocks (number -> timestamp): the mean of the
    intervals no longer than STALL_FACTOR times their median (a missed slot counts, a stall does not).

    None when it cannot tell: fewer than BLOCK_TIME_MIN_INTERVALS intervals, a timestamp going back (a reorg or
    another chain behind the same URL), or blocks all within one second of each other.
    """
    intervals = [timestamps[n] - timestamps[n - 1] for n in sorted(timestamps) if n - 1 in timestamps]
    if len(intervals) < BLOCK_TIME_MIN_INTERVALS or min(intervals) < 0:
        return None
    # timestamps are whole seconds: a chain faster than one a second has a median of 0, its stalls still count
    cap = STALL_FACTOR * max(statistics.median(intervals), 1.0)
    kept = [i for i in intervals if i <= cap]
    mean = sum(kept) / len(kept)
    return mean if mean > 0 else None


def _parse_version(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"web3_clientVersion: expected a string, got {type(value).__name__}")
    return value.strip()[:_VERSION_MAX]


def _default_endpoints() -> list[Endpoint]:
    return [Endpoint(name="local", url="http://127.0.0.1:8545")]


class ChainOptions(CollectorOptions):
    endpoints: list[Endpoint] = Field(
        default_factory=_default_endpoints, description="nodes to watch (HTTP or WebSocket JSON-RPC), each named"
    )
    reference: Endpoint | None = Field(
        default=None,
        description="head lag is measured against this endpoint's head; default: the highest head of `endpoints`",
    )
    expected_chain_id: int | None = Field(
        default=None, ge=1, description="chain id every endpoint must report (1 = mainnet); a mismatch fails the run"
    )
    recheck_unsupported: Duration = Field(
        default=600.0, description="how long a method the node does not support is left alone before asking again"
    )
    block_time: Duration | None = Field(
        default=None, gt=0, description=(
            "seconds between blocks, to tell a stale head (HeadStale fires after a multiple of it); default: "
            f"learned from the node's last {BLOCK_TIME_SPAN} block intervals (longer than {STALL_FACTOR:g}x their "
            f"median left out as stalls), {DEFAULT_BLOCK_TIME:g}s until {BLOCK_TIME_MIN_INTERVALS} are seen"),
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

    @model_validator(mode="after")
    def _reference_name(self) -> ChainOptions:
        if self.reference is not None and self.reference.name in {e.name for e in self.endpoints}:
            raise ValueError(f"reference name {self.reference.name!r} is also an endpoint name; give it its own")
        return self


@dataclass(slots=True)
class _NodeReport:
    """What one run learnt about one endpoint; None means not measured this run."""

    up: bool = False
    head: HeadBlock | None = None
    peers: int | None = None
    sync: SyncStatus | None = None
    chain_id: int | None = None
    version: str | None = None
    error: RpcError | None = None
    block_time: float | None = None
    block_time_source: str = ""


@dataclass(slots=True)
class _NodeState:
    client: JsonRpcClient
    block_time: float | None = None  # learned, of the head it was learned at
    block_time_head: int = -1
    block_times: dict[int, int] = field(default_factory=dict)  # number -> timestamp of the recent blocks
    unsupported: dict[str, float] = field(default_factory=dict)  # method -> monotonic time it was found missing
    supported: dict[str, bool] = field(default_factory=dict)
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)  # (method, class)


_HEAD = ("eth_getBlockByNumber", ["latest", False])
_METHODS: tuple[tuple[str, list[Any]], ...] = (
    ("net_peerCount", []),
    ("eth_syncing", []),
    ("eth_chainId", []),
    ("web3_clientVersion", []),
)


CHAIN_UP = MetricSpec("mevwatch_chain_up", "gauge", "1 if the node answered its head block this run", ("endpoint",))

CHAIN_PEERS = MetricSpec("mevwatch_chain_peers", "gauge", "Connected peers (net_peerCount)", ("endpoint",))

CHAIN_SYNCING = MetricSpec("mevwatch_chain_syncing", "gauge", "1 while the node reports it is syncing", ("endpoint",))

CHAIN_SYNC_CURRENT_BLOCK = MetricSpec(
    "mevwatch_chain_sync_current_block", "gauge",
    "Block the syncing node has reached (eth_syncing)",
    ("endpoint",),
)

CHAIN_SYNC_HIGHEST_BLOCK = MetricSpec(
    "mevwatch_chain_sync_highest_block", "gauge",
    "Highest block the syncing node knows of (eth_syncing)",
    ("endpoint",),
)

CHAIN_SYNC_REMAINING_BLOCKS = MetricSpec(
    "mevwatch_chain_sync_remaining_blocks", "gauge",
    "Blocks left to sync (0 when not syncing)",
    ("endpoint",),
)

CHAIN_HEAD_BLOCK = MetricSpec("mevwatch_chain_head_block", "gauge", "Number of the node's latest block", ("endpoint",))

CHAIN_HEAD_BLOCK_TIMESTAMP_SECONDS = MetricSpec(
    "mevwatch_chain_head_block_timestamp_seconds", "gauge",
    "Unix time in the node's latest block header",
    ("endpoint",),
)

CHAIN_HEAD_AGE_SECONDS = MetricSpec(
    "mevwatch_chain_head_age_seconds", "gauge",
    "Seconds since the timestamp of the node's latest block",
    ("endpoint",),
)

CHAIN_BLOCK_TIME_SECONDS = MetricSpec(
    "mevwatch_chain_block_time_seconds", "gauge",
    "Seconds between blocks: learned from the node's recent blocks, or the configured block_time",
    ("endpoint",),
)

CHAIN_BLOCK_TIME_SOURCE = MetricSpec(
    "mevwatch_chain_block_time", "info",
    "Where the block time comes from: learned (from the node's recent blocks), default (too few blocks seen to "
    "learn it: mainnet's 12 s) or configured",
    ("endpoint", "source"),
)

CHAIN_HEAD_AGE_BLOCKS = MetricSpec(
    "mevwatch_chain_head_age_blocks", "gauge",
    "Head age over the block time: how many block times passed without a new head",
    ("endpoint",),
)

CHAIN_HEAD_LAG_BLOCKS = MetricSpec(
    "mevwatch_chain_head_lag_blocks", "gauge",
    "Blocks the node's head is behind the reference head (or the highest head of the instance); "
    "reference names the endpoint it is compared with",
    ("endpoint", "reference"),
)

CHAIN_HEAD_LAG_REFERENCE_BLOCK = MetricSpec(
    "mevwatch_chain_head_lag_reference_block", "gauge",
    "Head block of the reference the node's head lag is measured against (so a page can name both heads)",
    ("endpoint",),
)

CHAIN_DOWN_REASON = MetricSpec(
    "mevwatch_chain_down_reason", "gauge",
    "1 for the error class of the head request while the node is down (timeout, refused, http_status, "
    "rpc_error, ...); absent while it answers",
    ("endpoint", "reason"),
)

CHAIN_ID = MetricSpec("mevwatch_chain_id", "gauge", "Chain id the node reports (eth_chainId)", ("endpoint",))

CHAIN_ID_MATCH = MetricSpec(
    "mevwatch_chain_id_match", "gauge",
    "1 if the node's chain id is the configured expected_chain_id",
    ("endpoint",),
)

CHAIN_CLIENT = MetricSpec(
    "mevwatch_chain_client", "info",
    "Node client version (web3_clientVersion)",
    ("endpoint", "version"),
)

RPC_METHOD_SUPPORTED = MetricSpec(
    "mevwatch_rpc_method_supported", "gauge",
    "0 if the node answered 'method not found' for a method mevwatch uses",
    ("endpoint", "method"),
)

CHAIN_ERRORS = MetricSpec(
    "mevwatch_chain_errors", "counter",
    "Failed node calls by method and error class",
    ("endpoint", "method", "class"),
)

CHAIN_REFERENCE_UP = MetricSpec(
    "mevwatch_chain_reference_up", "gauge",
    "1 if the head-lag reference endpoint answered",
    ("reference",),
)

CHAIN_REFERENCE_HEAD_BLOCK = MetricSpec(
    "mevwatch_chain_reference_head_block", "gauge",
    "Head block of the head-lag reference endpoint",
    ("reference",),
)


@register
class ChainCollector(PollCollector[ChainOptions]):
    kind: ClassVar[str] = "chain"
    Options = ChainOptions
    default_interval: ClassVar[float] = 15.0
    default_timeout: ClassVar[float] = 10.0
    runbook_section = "peer-loss"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        CHAIN_UP,
        CHAIN_PEERS,
        CHAIN_SYNCING,
        CHAIN_SYNC_CURRENT_BLOCK,
        CHAIN_SYNC_HIGHEST_BLOCK,
        CHAIN_SYNC_REMAINING_BLOCKS,
        CHAIN_HEAD_BLOCK,
        CHAIN_HEAD_BLOCK_TIMESTAMP_SECONDS,
        CHAIN_HEAD_AGE_SECONDS,
        CHAIN_BLOCK_TIME_SECONDS,
        CHAIN_BLOCK_TIME_SOURCE,
        CHAIN_HEAD_AGE_BLOCKS,
        CHAIN_HEAD_LAG_BLOCKS,
        CHAIN_HEAD_LAG_REFERENCE_BLOCK,
        CHAIN_ID,
        CHAIN_ID_MATCH,
        CHAIN_CLIENT,
        RPC_METHOD_SUPPORTED,
        CHAIN_ERRORS,
        CHAIN_DOWN_REASON,
        CHAIN_REFERENCE_UP,
        CHAIN_REFERENCE_HEAD_BLOCK,
    )

    def __init__(self, ctx: CollectorContext, options: ChainOptions) -> None:
        super().__init__(ctx, options)
        self._session = SharedSession()
        self._nodes: dict[str, _NodeState] = {}

    def _node(self, ep: Endpoint) -> _NodeState:
        node = self._nodes.get(ep.name)
        if node is None:
            node = self._nodes[ep.name] = _NodeState(JsonRpcClient(ep, self._session.get()))
        return node

    async def collect(self) -> Families:
        eps = self.options.endpoints
        ref = self.options.reference
        reports = await asyncio.gather(*(self._report(ep) for ep in eps))
        ref_head: int | None
        ref_report: _NodeReport | None = None
        ref_name: str
        if ref is not None:
            ref_report = await self._reference(ref)
            ref_head = ref_report.head.number if ref_report.head else None
            ref_name = ref.name
        else:
            heads = [(r.head.number, ep.name) for ep, r in zip(eps, reports, strict=True) if r.head is not None]
            top = max(heads, key=lambda h: h[0]) if heads else None
            ref_head, ref_name = (top[0], top[1]) if top is not None else (None, "")
        families = self._families(list(zip(eps, reports, strict=True)), ref, ref_report, ref_head, ref_name)
        if not any(r.up for r in reports):
            err = next(r.error for r in reports if r.error is not None)
            raise CollectorError(err.reason, err.message, families)
        wrong = [ep.name for ep, r in zip(eps, reports, strict=True) if self._chain_mismatch(r)]
        if wrong:
            raise CollectorError(
                "chain_id_mismatch",
                f"chain id is not {self.options.expected_chain_id} on: {', '.join(wrong)}",
                families,
            )
        return families

    def _chain_mismatch(self, report: _NodeReport) -> bool:
        expected = self.options.expected_chain_id
        return expected is not None and report.chain_id is not None and report.chain_id != expected

    async def _reference(self, ep: Endpoint) -> _NodeReport:
        node = self._node(ep)
        report = _NodeReport()
        head = await self._ask(node, *_HEAD, parse_head_block)
        if isinstance(head, RpcError):
            report.error = head
        else:
            report.up, report.head = True, head
        return report

    async def _report(self, ep: Endpoint) -> _NodeReport:
        node = self._node(ep)
        report = _NodeReport()
        head, peers, sync, chain_id, version = await asyncio.gather(
            self._ask(node, *_HEAD, parse_head_block),
            self._ask(node, *_METHODS[0], lambda v: parse_quantity(v, "net_peerCount")),
            self._ask(node, *_METHODS[1], parse_syncing),
            self._ask(node, *_METHODS[2], lambda v: parse_quantity(v, "eth_chainId")),
            self._ask(node, *_METHODS[3], _parse_version),
        )
        if isinstance(head, RpcError):
            # A node that cannot tell its head is down: report nothing else about it, not even what it did answer.
            report.error = head
            return report
        report.up, report.head = True, head
        if head is not None:
            report.block_time, report.block_time_source = await self._block_time(node, head)
        report.peers = _value(peers)
        report.sync = _value(sync)
        report.chain_id = _value(chain_id)
        report.version = _value(version)
        return report

    async def _block_time(self, node: _NodeState, head: HeadBlock) -> tuple[float, str]:
        """The block time and where it comes from: the configured one, else the one learned from the last
        BLOCK_TIME_SPAN blocks (learned again only when the head moved, asking only for blocks not seen yet),
        else the default."""
        if self.options.block_time is not None:
            return float(self.options.block_time), "configured"
        if head.number != node.block_time_head:
            if not await self._recent_blocks(node, head):
                node.block_time = None
            node.block_time = learn_block_time(node.block_times) or node.block_time
            node.block_time_head = head.number
        if node.block_time is None:
            return DEFAULT_BLOCK_TIME, "default"
        return node.block_time, "learned"

    async def _recent_blocks(self, node: _NodeState, head: HeadBlock) -> bool:
        """Fill ``node.block_times`` with the head and the BLOCK_TIME_SPAN blocks before it; False when what was
        seen before is not of this chain (a head gone back, or another chain behind the same URL)."""
        first = max(head.number - BLOCK_TIME_SPAN, 0)
        seen = node.block_times
        same_chain = all(n < head.number for n in seen)
        if not same_chain:
            seen.clear()
        for n in [n for n in seen if n < first]:
            del seen[n]
        seen[head.number] = head.timestamp
        # one by one (the client has one call of a method in flight at a time): all of them at the first run, then
        # the blocks that came since the last
        for n in [n for n in range(first, head.number) if n not in seen]:
            block = await self._ask(node, "eth_getBlockByNumber", [hex(n), False], parse_head_block)
            if not isinstance(block, HeadBlock):
                break  # a node failing now fails the rest too: ask again at the next head
            if block.number == n:
                seen[n] = block.timestamp
        return same_chain

    async def _ask(
        self, node: _NodeState, method: str, params: list[Any], parse: Callable[[Any], T]
    ) -> T | RpcError | None:
        """The parsed answer, the classified error (counted), or None for a method known to be unsupported."""
        missing_since = node.unsupported.get(method)
        if missing_since is not None and time.monotonic() - missing_since < self.options.recheck_unsupported:
            return None
        try:
            value = parse(await node.client.call(method, params))
        except RpcError as exc:
            if exc.error_class is ErrorClass.METHOD_NOT_SUPPORTED:
                node.unsupported[method] = time.monotonic()
                node.supported[method] = False
                return None
            node.errors[(method, exc.error_class.value)] += 1
            return exc
        except ValueError as exc:
            node.errors[(method, ErrorClass.INVALID_RESPONSE.value)] += 1
            return RpcError(ErrorClass.INVALID_RESPONSE, f"{node.client.endpoint.name}: {exc}")
        node.unsupported.pop(method, None)
        node.supported[method] = True
        return value

    def _families(
        self, pairs: list[tuple[Endpoint, _NodeReport]], ref: Endpoint | None,
        ref_report: _NodeReport | None, ref_head: int | None, ref_name: str = "",
    ) -> list[Metric]:
        lbl = ["endpoint"]
        up = CHAIN_UP.gauge()
        peers = CHAIN_PEERS.gauge()
        syncing = CHAIN_SYNCING.gauge()
        current = CHAIN_SYNC_CURRENT_BLOCK.gauge()
        highest = CHAIN_SYNC_HIGHEST_BLOCK.gauge()
        remaining = CHAIN_SYNC_REMAINING_BLOCKS.gauge()
        head = CHAIN_HEAD_BLOCK.gauge()
        head_ts = CHAIN_HEAD_BLOCK_TIMESTAMP_SECONDS.gauge()
        head_age = CHAIN_HEAD_AGE_SECONDS.gauge()
        btime = CHAIN_BLOCK_TIME_SECONDS.gauge()
        btime_source = CHAIN_BLOCK_TIME_SOURCE.info(labels=lbl)
        age_blocks = CHAIN_HEAD_AGE_BLOCKS.gauge()
        lag = CHAIN_HEAD_LAG_BLOCKS.gauge()
        lag_ref = CHAIN_HEAD_LAG_REFERENCE_BLOCK.gauge()
        chain_id = CHAIN_ID.gauge()
        chain_ok = CHAIN_ID_MATCH.gauge()
        version = CHAIN_CLIENT.info(labels=lbl)
        supported = RPC_METHOD_SUPPORTED.gauge()
        errors = CHAIN_ERRORS.counter()
        down = CHAIN_DOWN_REASON.gauge()
        now = time.time()
        for ep, r in pairs:
            name = ep.name
            node = self._nodes[name]
            up.add_metric([name], 1.0 if r.up else 0.0)
            for (method, cls), n in sorted(node.errors.items()):
                errors.add_metric([name, method, cls], float(n))
            if not r.up:
                if r.error is not None:
                    down.add_metric([name, r.error.reason], 1.0)
                continue
            for method, ok in sorted(node.supported.items()):
                supported.add_metric([name, method], 1.0 if ok else 0.0)
            if r.head is not None:
                head.add_metric([name], float(r.head.number))
                head_ts.add_metric([name], float(r.head.timestamp))
                age = max(now - r.head.timestamp, 0.0)
                head_age.add_metric([name], age)
                if r.block_time is not None:
                    btime.add_metric([name], r.block_time)
                    btime_source.add_metric([name], {"source": r.block_time_source})
                    age_blocks.add_metric([name], age / r.block_time)
                if ref_head is not None:
                    lag.add_metric([name, ref_name], float(max(ref_head - r.head.number, 0)))
                    lag_ref.add_metric([name], float(ref_head))
            if r.peers is not None:
                peers.add_metric([name], float(r.peers))
            if r.sync is not None:
                syncing.add_metric([name], 1.0 if r.sync.syncing else 0.0)
                remaining.add_metric([name], float(r.sync.remaining_blocks))
                if r.sync.syncing:
                    current.add_metric([name], float(r.sync.current_block))
                    highest.add_metric([name], float(r.sync.highest_block))
            if r.chain_id is not None:
                chain_id.add_metric([name], float(r.chain_id))
                if self.options.expected_chain_id is not None:
                    chain_ok.add_metric([name], 0.0 if self._chain_mismatch(r) else 1.0)
            if r.version is not None:
                version.add_metric([name], {"version": r.version})
        families: list[Metric] = [
            up, peers, syncing, current, highest, remaining, head, head_ts, head_age, btime, btime_source,
            age_blocks, lag, lag_ref, chain_id, chain_ok, version, supported, errors, down,
        ]
        if ref is not None and ref_report is not None:
            ref_up = CHAIN_REFERENCE_UP.gauge()
            ref_up.add_metric([ref.name], 1.0 if ref_report.up else 0.0)
            families.append(ref_up)
            if ref_report.head is not None:
                ref_block = CHAIN_REFERENCE_HEAD_BLOCK.gauge()
                ref_block.add_metric([ref.name], float(ref_report.head.number))
                families.append(ref_block)
        return families

    async def close(self) -> None:
        for node in self._nodes.values():
            await node.client.close()
        self._nodes.clear()
        await self._session.close()


def _value(result: T | RpcError | None) -> T | None:
    return None if isinstance(result, RpcError) else result

