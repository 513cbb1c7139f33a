"""Gas market from ``eth_feeHistory`` (next base fee, priority-fee percentiles, gas used) and the bot's bid vs it.

All fees are in wei, the base unit. The competitiveness ratio is the bot's bid divided by what the
market paid at a chosen percentile: below 1 the bot underbids that share of recent transactions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mevwatch.collectors._jsonrpc import Endpoint, JsonRpcClient, RpcError, parse_quantity
from mevwatch.collectors.base import (
    CollectorContext,
    CollectorError,
    CollectorOptions,
    Families,
    MetricSpec,
    PollCollector,
)
from mevwatch.collectors.registry import register
from mevwatch.families import GaugeMetricFamily, Metric

__all__ = [
    "BID_STATUSES",
    "RUNBOOK_PERCENTILE",
    "BidConfigError",
    "BidOptions",
    "FeeSummary",
    "GasCollector",
    "GasOptions",
    "bid_from_yaml",
    "competitiveness",
    "summarize_fee_history",
]

GWEI = 10**9
BID_STATUSES = ("ok", "missing", "unreadable", "invalid_yaml", "key_missing", "not_a_number")
BidKind = Literal["multiplier", "gas_price_gwei", "priority_fee_gwei"]


# --- pure parts ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeeSummary:
    blocks: int
    oldest_block: int
    latest_base_fee: int  # wei, base fee of the newest block of the window
    next_base_fee: int  # wei, base fee of the block after it (feeHistory's extra element)
    rewards: dict[float, float]  # percentile -> mean priority fee (wei) over blocks that had transactions
    blocks_with_transactions: int
    gas_used_ratio: float  # mean over the window
    last_gas_used_ratio: float


def summarize_fee_history(result: Any, percentiles: list[float]) -> FeeSummary:
    """Reduce an ``eth_feeHistory`` answer; ValueError names what is malformed."""
    if not isinstance(result, dict):
        raise ValueError(f"eth_feeHistory: expected an object, got {type(result).__name__}")
    oldest = parse_quantity(result.get("oldestBlock"), "eth_feeHistory.oldestBlock")
    base = result.get("baseFeePerGas")
    used = result.get("gasUsedRatio")
    if not isinstance(base, list) or not isinstance(used, list):
        raise ValueError("eth_feeHistory: baseFeePerGas and gasUsedRatio must be lists")
    n = len(used)
    if n == 0:
        raise ValueError("eth_feeHistory: empty window (no blocks)")
    if len(base) != n + 1:
        raise ValueError(f"eth_feeHistory: {len(base)} base fees for {n} blocks (expected {n + 1})")
    fees = [parse_quantity(v, f"eth_feeHistory.baseFeePerGas[{i}]") for i, v in enumerate(base)]
    ratios: list[float] = []
    for i, r in enumerate(used):
        if isinstance(r, bool) or not isinstance(r, int | float) or not 0 <= r <= 1 or not math.isfinite(r):
            raise ValueError(f"eth_feeHistory.gasUsedRatio[{i}]: expected a number in 0..1, got {str(r)[:30]!r}")
        ratios.append(float(r))
    reward = result.get("reward")
    if not isinstance(reward, list) or len(reward) != n:
        raise ValueError(f"eth_feeHistory.reward: expected {n} rows (one per block)")
    sums = dict.fromkeys(percentiles, 0.0)
    with_txs = 0
    for i, row in enumerate(reward):
        if not isinstance(row, list) or len(row) != len(percentiles):
            raise ValueError(f"eth_feeHistory.reward[{i}]: expected {len(percentiles)} values")
        values = [parse_quantity(v, f"eth_feeHistory.reward[{i}][{j}]") for j, v in enumerate(row)]
        if ratios[i] == 0:
            continue  # an empty block's "rewards" are zeros that say nothing about the market
        with_txs += 1
        for p, v in zip(percentiles, values, strict=True):
            sums[p] += v
    rewards = {p: (s / with_txs if with_txs else 0.0) for p, s in sums.items()}
    return FeeSummary(
        blocks=n, oldest_block=oldest, latest_base_fee=fees[-2], next_base_fee=fees[-1], rewards=rewards,
        blocks_with_transactions=with_txs, gas_used_ratio=sum(ratios) / n, last_gas_used_ratio=ratios[-1],
    )


class BidConfigError(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bid_from_yaml(text: str, key: str) -> float:
    """The number at dotted ``key`` of the bot's YAML; BidConfigError(status) when it is not there."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise BidConfigError("invalid_yaml", f"not valid YAML{where}") from None
    node: Any = doc
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise BidConfigError("key_missing", f"key {key!r} not found (missing {part!r})")
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, int | float | str):
        raise BidConfigError("not_a_number", f"{key} is {str(node)[:40]!r}, not a number")
    try:
        value = float(node)
    except ValueError:
        raise BidConfigError("not_a_number", f"{key} is {str(node)[:40]!r}, not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise BidConfigError("not_a_number", f"{key} is {value!r}; a bid must be a positive number")
    return value


def competitiveness(
    kind: BidKind, value: float, next_base_fee: int, reward: float
) -> tuple[float, float, float | None]:
    """(bid in wei, market price in wei, bid / market) for one reward percentile.

    ``multiplier``: the bot bids value x the next base fee, against base fee + the percentile's tip;
    ``gas_price_gwei``: a total gas price against the same; ``priority_fee_gwei``: a tip against the tip.
    The ratio is None when the market price is 0 (nothing to compare with).
    """
    if kind == "priority_fee_gwei":
        bid, market = value * GWEI, reward
    else:
        bid = value * next_base_fee if kind == "multiplier" else value * GWEI
        market = next_base_fee + reward
    return bid, market, (bid / market if market > 0 else None)


#: the runbook's competitive price: the recent base fee with a 15% premium (its gas strategy), 30% when pressed;
#: or what the market paid at its 75th percentile (its getCompetitiveGasPrice)
RUNBOOK_PERCENTILE = 75.0
RUNBOOK_PREMIUMS: tuple[tuple[str, float], ...] = (("base_fee_x1.15", 1.15), ("base_fee_x1.3", 1.3))


def runbook_ratios(kind: BidKind, value: float, next_base_fee: int) -> list[tuple[str, float, float]]:
    """(basis, the runbook's price in wei, bid / that price) per premium; none for a tip-only bid, which
    the runbook's total-price basis cannot judge, or without a base fee."""
    if kind == "priority_fee_gwei" or next_base_fee <= 0:
        return []
    bid = value * next_base_fee if kind == "multiplier" else value * GWEI
    return [(basis, next_base_fee * k, bid / (next_base_fee * k)) for basis, k in RUNBOOK_PREMIUMS]


# --- options -------------------------------------------------------------------------------------


class BidOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: BidKind = Field(
        "multiplier",
        description="multiplier (of the next base fee), gas_price_gwei (total), or priority_fee_gwei (tip)",
    )
    value: float | None = Field(None, description="the bid as a number here; or set file + key")
    file: Path | None = Field(None, description="the bot's YAML config holding the bid (read every run)")
    key: str = Field("detection.gas_price_multiplier", description="dotted key of the bid in that file")
    percentile: float = Field(
        RUNBOOK_PERCENTILE, description="market reward percentile the bid is compared with (the runbook's 75th)"
    )

    @field_validator("value")
    @classmethod
    def _value(cls, v: float | None) -> float | None:
        if v is not None and (not math.isfinite(v) or v <= 0):
            raise ValueError("value must be a positive number")
        return v

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not v or any(not part for part in v.split(".")):
            raise ValueError("key must be a dotted path such as detection.gas_price_multiplier")
        return v

    @model_validator(mode="after")
    def _source(self) -> BidOptions:
        if (self.value is None) == (self.file is None):
            raise ValueError("set exactly one of value (a number) or file (the bot's YAML, with key)")
        return self


class GasOptions(CollectorOptions):
    endpoint: Endpoint = Field(
        default_factory=lambda: Endpoint(name="local", url="http://127.0.0.1:8545"),
        description="JSON-RPC endpoint of the execution node",
    )
    blocks: int = Field(20, description="eth_feeHistory window in blocks (1..1024)")
    percentiles: list[float] = Field(
        default_factory=lambda: [10.0, 50.0, RUNBOOK_PERCENTILE, 90.0],
        description=("reward percentiles (0..100, increasing); the bid's percentile must be one of them (the "
                     "default 75th is added when a bid sets none and the list lacks it)"),
    )
    bid: BidOptions | None = Field(None, description="the bot's bid, to compare with the market")

    @field_validator("blocks")
    @classmethod
    def _blocks(cls, v: int) -> int:
        if not 1 <= v <= 1024:
            raise ValueError("blocks must be between 1 and 1024")
        return v

    @field_validator("percentiles")
    @classmethod
    def _percentiles(cls, v: list[float]) -> list[float]:
        if not v or len(v) > 10:
            raise ValueError("give 1 to 10 percentiles")
        if any(not 0 <= p <= 100 for p in v):
            raise ValueError("percentiles must be within 0..100")
        if any(a >= b for a, b in pairwise(v)):
            raise ValueError("percentiles must be strictly increasing")
        return v

    @model_validator(mode="before")
    @classmethod
    def _default_bid_percentile(cls, data: Any) -> Any:
        """A bid that names no percentile is compared with the runbook's 75th: a config listing its own
        percentiles without it (as before the 75th was the default) gets it added rather than refused."""
        if not isinstance(data, dict):
            return data
        bid, given = data.get("bid"), data.get("percentiles")
        if isinstance(bid, dict) and "percentile" not in bid and isinstance(given, list) and all(
                isinstance(p, int | float) for p in given) and RUNBOOK_PERCENTILE not in given:
            data = {**data, "percentiles": sorted([*given, RUNBOOK_PERCENTILE])}
        return data

    @model_validator(mode="after")
    def _bid_percentile(self) -> GasOptions:
        if self.bid is not None and self.bid.percentile not in self.percentiles:
            raise ValueError(f"bid.percentile {self.bid.percentile:g} must be one of percentiles "
                             f"{[float(p) for p in self.percentiles]}")
        return self


# --- the collector -------------------------------------------------------------------------------


def _label(p: float) -> str:
    return f"{p:g}"


GAS_NEXT_BASE_FEE_WEI = MetricSpec(
    "mevwatch_gas_next_base_fee_wei", "gauge",
    "Base fee of the next block, in wei",
    ("endpoint",),
)

GAS_BASE_FEE_WEI = MetricSpec(
    "mevwatch_gas_base_fee_wei", "gauge",
    "Base fee of the newest block, in wei",
    ("endpoint",),
)

GAS_USED_RATIO = MetricSpec(
    "mevwatch_gas_used_ratio", "gauge",
    "Mean gas used / gas limit over the window",
    ("endpoint",),
)

GAS_LAST_BLOCK_USED_RATIO = MetricSpec(
    "mevwatch_gas_last_block_used_ratio", "gauge",
    "Gas used / gas limit of the newest block",
    ("endpoint",),
)

GAS_WINDOW_BLOCKS = MetricSpec("mevwatch_gas_window_blocks", "gauge", "Blocks in the fee-history window", ("endpoint",))

GAS_WINDOW_BLOCKS_WITH_TRANSACTIONS = MetricSpec(
    "mevwatch_gas_window_blocks_with_transactions", "gauge",
    "Blocks of the window that had transactions (the priority fees come from these)",
    ("endpoint",),
)

GAS_PRIORITY_FEE_WEI = MetricSpec(
    "mevwatch_gas_priority_fee_wei", "gauge",
    "Priority fee (tip) paid at a reward percentile, in wei: mean over the window's non-empty blocks",
    ("endpoint", "percentile"),
)

GAS_BID_CONFIG_STATUS = MetricSpec(
    "mevwatch_gas_bid_config_status", "gauge",
    "Where the bot's bid was read from: 1 for the current status (ok, missing, unreadable, invalid_yaml, "
    "key_missing, not_a_number)",
    ("endpoint", "status"),
)

GAS_BID_VALUE = MetricSpec(
    "mevwatch_gas_bid_value", "gauge",
    "The bot's bid as configured (unit per kind)",
    ("endpoint", "kind"),
)

GAS_BID_WEI = MetricSpec(
    "mevwatch_gas_bid_wei", "gauge",
    "The bot's bid on the basis it is compared on, in wei",
    ("endpoint", "kind", "percentile"),
)

GAS_MARKET_PRICE_WEI = MetricSpec(
    "mevwatch_gas_market_price_wei", "gauge",
    "What the market paid at the compared percentile on the same basis, in wei",
    ("endpoint", "kind", "percentile"),
)

GAS_RUNBOOK_PRICE_WEI = MetricSpec(
    "mevwatch_gas_runbook_price_wei", "gauge",
    "The runbook's competitive gas price: the next base fee with its 15% or 30% premium (basis), in wei",
    ("endpoint", "basis"),
)

GAS_BID_RUNBOOK_RATIO = MetricSpec(
    "mevwatch_gas_bid_runbook_ratio", "gauge",
    "Bot's total bid / the runbook's competitive price on that basis (below 1: under the runbook's premium); "
    "absent for a tip-only bid",
    ("endpoint", "kind", "basis"),
)

GAS_BID_COMPETITIVENESS_RATIO = MetricSpec(
    "mevwatch_gas_bid_competitiveness_ratio", "gauge",
    "Bot's bid / market price at the percentile (below 1: underbidding it)",
    ("endpoint", "kind", "percentile"),
)


@register
class GasCollector(PollCollector[GasOptions]):
    kind: ClassVar[str] = "gas"
    Options = GasOptions
    default_interval: ClassVar[float] = 15.0
    default_timeout: ClassVar[float] = 10.0
    default_enabled: ClassVar[bool] = False
    runbook_section = "gas-uncompetitive"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        GAS_NEXT_BASE_FEE_WEI,
        GAS_BASE_FEE_WEI,
        GAS_USED_RATIO,
        GAS_LAST_BLOCK_USED_RATIO,
        GAS_WINDOW_BLOCKS,
        GAS_WINDOW_BLOCKS_WITH_TRANSACTIONS,
        GAS_PRIORITY_FEE_WEI,
        GAS_BID_CONFIG_STATUS,
        GAS_BID_VALUE,
        GAS_BID_WEI,
        GAS_MARKET_PRICE_WEI,
        GAS_BID_COMPETITIVENESS_RATIO,
        GAS_RUNBOOK_PRICE_WEI,
        GAS_BID_RUNBOOK_RATIO,
    )

    def __init__(self, ctx: CollectorContext, options: GasOptions) -> None:
        super().__init__(ctx, options)
        self.client = JsonRpcClient(options.endpoint)
        self._last_bid_status: str | None = None

    async def close(self) -> None:
        await self.client.close()

    async def _bid_value(self, bid: BidOptions) -> tuple[str, float | None, str]:
        if bid.value is not None:
            return "ok", bid.value, ""
        assert bid.file is not None
        path = bid.file
        try:
            text = await self.ctx.run_blocking(path.read_text, "utf-8", timeout=min(self.ctx.timeout, 2.0))
        except FileNotFoundError:
            return "missing", None, f"{path} does not exist"
        except (OSError, UnicodeDecodeError) as exc:
            return "unreadable", None, f"{path}: {getattr(exc, 'strerror', None) or exc}"
        except CollectorError as exc:
            return "unreadable", None, f"{path}: {exc.message}"
        try:
            return "ok", bid_from_yaml(text, bid.key), ""
        except BidConfigError as exc:
            return exc.status, None, f"{path}: {exc.message}"

    async def collect(self) -> Families:
        opts = self.options
        ep = opts.endpoint.name
        try:
            raw = await self.client.call("eth_feeHistory", [hex(opts.blocks), "latest", list(opts.percentiles)])
        except RpcError as exc:
            raise CollectorError(exc.reason, exc.message) from None
        try:
            fee = summarize_fee_history(raw, list(opts.percentiles))
        except ValueError as exc:
            raise CollectorError("invalid_response", str(exc)) from None

        def gauge(spec: MetricSpec, value: float) -> GaugeMetricFamily:
            g = spec.gauge()
            g.add_metric([ep], value)
            return g

        families: list[Metric] = [
            gauge(GAS_NEXT_BASE_FEE_WEI, float(fee.next_base_fee)),
            gauge(GAS_BASE_FEE_WEI, float(fee.latest_base_fee)),
            gauge(GAS_USED_RATIO, fee.gas_used_ratio),
            gauge(GAS_LAST_BLOCK_USED_RATIO,
                  fee.last_gas_used_ratio),
            gauge(GAS_WINDOW_BLOCKS, float(fee.blocks)),
            gauge(GAS_WINDOW_BLOCKS_WITH_TRANSACTIONS,
                  float(fee.blocks_with_transactions)),
        ]
        tips = GAS_PRIORITY_FEE_WEI.gauge()
        for p, v in fee.rewards.items():
            tips.add_metric([ep, _label(p)], v)
        families.append(tips)
        if opts.bid is not None:
            families += await self._bid_families(opts.bid, ep, fee)
        return families

    async def _bid_families(self, bid: BidOptions, ep: str, fee: FeeSummary) -> list[Metric]:
        status, value, message = await self._bid_value(bid)
        if status != self._last_bid_status:
            if status == "ok":
                if self._last_bid_status is not None:
                    self.ctx.log.info("gas_bid_config_ok", file=str(bid.file or ""))
            else:
                self.ctx.log.warning("gas_bid_config_bad", status=status, error=message)
            self._last_bid_status = status
        state = GAS_BID_CONFIG_STATUS.gauge()
        for s in BID_STATUSES:
            state.add_metric([ep, s], 1.0 if s == status else 0.0)
        out: list[Metric] = [state]
        if value is None:
            return out
        bid_wei, market_wei, ratio = competitiveness(bid.kind, value, fee.next_base_fee, fee.rewards[bid.percentile])
        lv = [ep, bid.kind, _label(bid.percentile)]
        configured = GAS_BID_VALUE.gauge()
        configured.add_metric([ep, bid.kind], value)
        bid_g = GAS_BID_WEI.gauge()
        bid_g.add_metric(lv, bid_wei)
        market = GAS_MARKET_PRICE_WEI.gauge()
        market.add_metric(lv, market_wei)
        out += [configured, bid_g, market]
        if ratio is not None:
            comp = GAS_BID_COMPETITIVENESS_RATIO.gauge()
            comp.add_metric(lv, ratio)
            out.append(comp)
        runbook = runbook_ratios(bid.kind, value, fee.next_base_fee)
        if runbook:
            price = GAS_RUNBOOK_PRICE_WEI.gauge()
            vs = GAS_BID_RUNBOOK_RATIO.gauge()
            for basis, wei, r in runbook:
                price.add_metric([ep, basis], wei)
                vs.add_metric([ep, bid.kind, basis], r)
            out += [price, vs]
        return out
