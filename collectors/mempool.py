"""The runbook's mempool checks: the pending-transaction filter works and returns hashes; txpool_status.

A method the node does not support is reported as ``mevwatch_mempool_method_supported 0`` and then
only re-probed every ``unsupported_retry``, so an unsupported method never becomes an error storm.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

from pydantic import Field, field_validator

from mevwatch.collectors._jsonrpc import Endpoint, ErrorClass, JsonRpcClient, RpcError, parse_quantity
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

__all__ = ["MempoolCollector", "MempoolOptions", "parse_filter_changes", "parse_txpool_status"]

FILTER_METHODS = ("eth_newPendingTransactionFilter", "eth_getFilterChanges")
TXPOOL_METHOD = "txpool_status"
# Answers that mean "the node forgot the filter" (expired after ~5 min unpolled, or the node restarted).
_FILTER_GONE = ("filter not found", "filter does not exist", "unknown filter", "filter id not found")
# Transport failures: the node did not answer at all, so no mempool metric of this run means anything.
_TRANSPORT = {ErrorClass.TIMEOUT, ErrorClass.REFUSED, ErrorClass.RESET, ErrorClass.UNREACHABLE, ErrorClass.HTTP_STATUS}


def parse_filter_changes(result: Any) -> int:
    """Number of transaction hashes in an ``eth_getFilterChanges`` answer of a pending filter."""
    if not isinstance(result, list):
        raise ValueError(f"eth_getFilterChanges: expected a list of hashes, got {type(result).__name__}")
    for item in result:
        if not (isinstance(item, str) and item.startswith("0x")) and not isinstance(item, dict):
            raise ValueError(f"eth_getFilterChanges: expected transaction hashes, got {str(item)[:40]!r}")
    return len(result)


def parse_txpool_status(result: Any) -> tuple[int, int]:
    """(pending, queued) of a ``txpool_status`` answer (hex quantities, or plain numbers on some clients)."""
    if not isinstance(result, dict):
        raise ValueError(f"txpool_status: expected an object, got {type(result).__name__}")
    out: list[int] = []
    for key in ("pending", "queued"):
        value = result.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            out.append(value)
        else:
            out.append(parse_quantity(value, f"txpool_status.{key}"))
    return out[0], out[1]


def _is_filter_gone(exc: RpcError) -> bool:
    return exc.error_class == ErrorClass.RPC_ERROR and any(s in exc.message.lower() for s in _FILTER_GONE)


class MempoolOptions(CollectorOptions):
    endpoint: Endpoint = Field(
        default_factory=lambda: Endpoint(name="local", url="http://127.0.0.1:8545"),
        description="JSON-RPC endpoint of the execution node (http or ws)",
    )
    filter: bool = Field(True, description="check eth_newPendingTransactionFilter + eth_getFilterChanges")
    txpool: bool = Field(True, description="read txpool_status pending/queued")
    unsupported_retry: Duration = Field(600.0, description="how often a method the node lacks is asked again")

    @field_validator("unsupported_retry")
    @classmethod
    def _retry(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("unsupported_retry must be greater than 0")
        return v


MEMPOOL_FILTER_LAST_HASHES = MetricSpec(
    "mevwatch_mempool_filter_last_hashes", "gauge",
    "Transaction hashes the last eth_getFilterChanges poll returned",
    ("endpoint",),
)

MEMPOOL_FILTER_UP = MetricSpec(
    "mevwatch_mempool_filter_up", "gauge",
    "1 when eth_newPendingTransactionFilter + eth_getFilterChanges worked on this run",
    ("endpoint",),
)

MEMPOOL_FILTER_HASHES = MetricSpec(
    "mevwatch_mempool_filter_hashes", "counter",
    "Transaction hashes returned by eth_getFilterChanges since start",
    ("endpoint",),
)

MEMPOOL_FILTER_RECREATED = MetricSpec(
    "mevwatch_mempool_filter_recreated", "counter",
    "Pending filters re-created because the node had forgotten them",
    ("endpoint",),
)

MEMPOOL_TXPOOL_TRANSACTIONS = MetricSpec(
    "mevwatch_mempool_txpool_transactions", "gauge",
    "Transactions in the node's pool by state (txpool_status)",
    ("endpoint", "state"),
)

MEMPOOL_METHOD_SUPPORTED = MetricSpec(
    "mevwatch_mempool_method_supported", "gauge",
    "0 when the node answered that it does not have the method",
    ("endpoint", "method"),
)

MEMPOOL_ERRORS = MetricSpec(
    "mevwatch_mempool_errors", "counter",
    "Failed mempool calls by method and error class",
    ("endpoint", "method", "class"),
)


@register
class MempoolCollector(PollCollector[MempoolOptions]):
    kind: ClassVar[str] = "mempool"
    Options = MempoolOptions
    default_interval: ClassVar[float] = 15.0
    default_timeout: ClassVar[float] = 10.0
    default_enabled: ClassVar[bool] = False
    runbook_section = "mempool"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MEMPOOL_FILTER_LAST_HASHES,
        MEMPOOL_FILTER_UP,
        MEMPOOL_FILTER_HASHES,
        MEMPOOL_FILTER_RECREATED,
        MEMPOOL_TXPOOL_TRANSACTIONS,
        MEMPOOL_METHOD_SUPPORTED,
        MEMPOOL_ERRORS,
    )

    def __init__(self, ctx: CollectorContext, options: MempoolOptions) -> None:
        super().__init__(ctx, options)
        self.client = JsonRpcClient(options.endpoint)
        self._filter_id: str | None = None
        self._hashes_total = 0
        self._recreated = 0
        self._errors: dict[tuple[str, str], int] = {}
        self._unsupported_until: dict[str, float] = {}
        self._supported: dict[str, bool] = {}

    async def close(self) -> None:
        await self.client.close()

    def _skip(self, method: str) -> bool:
        return time.monotonic() < self._unsupported_until.get(method, 0.0)

    def _note_error(self, method: str, exc: RpcError) -> None:
        key = (method, exc.error_class.value)
        self._errors[key] = self._errors.get(key, 0) + 1
        if exc.error_class == ErrorClass.METHOD_NOT_SUPPORTED:
            if self._supported.get(method, True):
                self.ctx.log.info("rpc_method_not_supported", method=method, endpoint=self.options.endpoint.name)
            self._supported[method] = False
            self._unsupported_until[method] = time.monotonic() + self.options.unsupported_retry

    async def _call(self, method: str, params: list[Any] | None = None) -> Any:
        try:
            result = await self.client.call(method, params or [])
        except RpcError as exc:
            self._note_error(method, exc)
            raise
        self._supported[method] = True
        return result

    async def _check_filter(self) -> int:
        """Hashes returned by one getFilterChanges poll; re-creates a filter the node forgot, once."""
        for attempt in (1, 2):
            if self._filter_id is None:
                fid = await self._call(FILTER_METHODS[0])
                if not isinstance(fid, str) or not fid.startswith("0x"):
                    raise RpcError(ErrorClass.INVALID_RESPONSE, f"{FILTER_METHODS[0]} returned {str(fid)[:40]!r}")
                self._filter_id = fid
            try:
                result = await self.client.call(FILTER_METHODS[1], [self._filter_id])
            except RpcError as exc:
                if attempt == 1 and _is_filter_gone(exc):
                    self._filter_id = None
                    self._recreated += 1
                    continue
                self._note_error(FILTER_METHODS[1], exc)
                raise
            self._supported[FILTER_METHODS[1]] = True
            try:
                return parse_filter_changes(result)
            except ValueError as exc:
                err = RpcError(ErrorClass.INVALID_RESPONSE, str(exc))
                self._note_error(FILTER_METHODS[1], err)
                raise err from None
        raise AssertionError("unreachable")

    async def _txpool(self) -> tuple[int, int]:
        try:
            return parse_txpool_status(await self._call(TXPOOL_METHOD))
        except ValueError as exc:
            err = RpcError(ErrorClass.INVALID_RESPONSE, str(exc))
            self._note_error(TXPOOL_METHOD, err)
            raise err from None

    async def collect(self) -> Families:
        ep = self.options.endpoint.name
        run_filter = self.options.filter and not self._skip(FILTER_METHODS[0])
        run_txpool = self.options.txpool and not self._skip(TXPOOL_METHOD)
        # Side by side: a hung node costs one endpoint timeout per run, not one per check.
        filter_res, txpool_res = await asyncio.gather(
            self._check_filter() if run_filter else _nothing(),
            self._txpool() if run_txpool else _nothing(),
            return_exceptions=True,
        )
        for res in (filter_res, txpool_res):
            if isinstance(res, BaseException) and not isinstance(res, RpcError):
                raise res
        failures = [r for r in (filter_res, txpool_res) if isinstance(r, RpcError)]
        attempted = int(run_filter) + int(run_txpool)
        if attempted and len(failures) == attempted and all(f.error_class in _TRANSPORT for f in failures):
            # The node itself is unreachable: one collector failure, not a set of misleading zeros.
            raise CollectorError(failures[0].reason, failures[0].message)

        families: list[Metric] = []
        if self.options.filter:
            works = MEMPOOL_FILTER_UP.gauge()
            if run_filter and isinstance(filter_res, int):
                works.add_metric([ep], 1.0)
                self._hashes_total += filter_res
                last = MEMPOOL_FILTER_LAST_HASHES.gauge()
                last.add_metric([ep], float(filter_res))
                families.append(last)
            else:
                works.add_metric([ep], 0.0)
            hashes = MEMPOOL_FILTER_HASHES.counter()
            hashes.add_metric([ep], float(self._hashes_total))
            recreated = MEMPOOL_FILTER_RECREATED.counter()
            recreated.add_metric([ep], float(self._recreated))
            families += [works, hashes, recreated]
        if run_txpool and isinstance(txpool_res, tuple):
            pool = MEMPOOL_TXPOOL_TRANSACTIONS.gauge()
            pool.add_metric([ep, "pending"], float(txpool_res[0]))
            pool.add_metric([ep, "queued"], float(txpool_res[1]))
            families.append(pool)
        supported = MEMPOOL_METHOD_SUPPORTED.gauge()
        for method, ok in sorted(self._supported.items()):
            supported.add_metric([ep, method], 1.0 if ok else 0.0)
        errors = MEMPOOL_ERRORS.counter()
        for (method, cls), n in sorted(self._errors.items()):
            errors.add_metric([ep, method, cls], float(n))
        families += [supported, errors]
        return families


async def _nothing() -> None:
    return None
