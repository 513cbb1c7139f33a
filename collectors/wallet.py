"""Watched wallets: balance, nonce gap (stuck transactions), and their transactions followed block by block.

A transaction sent with a nonce too high waits in the node's ``queued`` pool, invisible to the pending nonce:
each wallet's queued transactions are read with ``txpool_contentFrom`` (geth, reth, erigon, recent nethermind),
else from the whole pool's ``txpool_content`` (anvil, older nethermind) within the endpoint's
``max_response_bytes``. When neither can be read the reason is exported (a monitoring gap), never zeros.

Failed (receipt status 0) transactions and the gas they burned are counted, and a transaction to an
address not on the allow list is flagged (security). The latest failed and the latest unexpected transaction
of each wallet are info series (one per wallet: bounded) with the responder's first facts: hash, destination,
nonce, block and value, and how many of the kind the run that found it found (with their hashes, at most
FACTS_SHOWN): several in one interval are told on the one page. Blocks are followed from the last one seen,
at most ``max_blocks_per_run`` per run; the position survives restarts in the state DB. Reorgs are
not re-scanned: a transaction is counted in the first block it was seen in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mevwatch.collectors._eth import validate_address
from mevwatch.collectors._jsonrpc import (
    Endpoint,
    ErrorClass,
    JsonRpcClient,
    ResponseTooLarge,
    RpcError,
    parse_quantity,
)
from mevwatch.collectors._txpool import SenderPool, list_text, parse_content, parse_content_from, ranges_text
from mevwatch.collectors.base import (
    CollectorContext,
    CollectorError,
    CollectorOptions,
    Families,
    MetricSpec,
    NoData,
    PollCollector,
    StateError,
)
from mevwatch.collectors.registry import register
from mevwatch.families import Metric
from mevwatch.fields import Duration

__all__ = ["SentTransaction", "WalletCollector", "WalletOptions", "WatchedAddress", "sent_by", "wei_to_ether"]

WEI_PER_ETHER = 10**18
CREATE = "create"  # the ``to`` label of a contract creation
CONTENT_FROM = "txpool_contentFrom"
CONTENT = "txpool_content"
#: missing nonce ranges and stuck transaction hashes named in a label, at most (then "+N more")
FACTS_SHOWN = 3


def wei_to_ether(wei: int) -> float:
    return wei / WEI_PER_ETHER


def ether_text(wei: int) -> str:
    """Exact ether amount of ``wei`` as text (no float rounding): 1 wei is 0.000000000000000001."""
    text = format(Decimal(wei).scaleb(-18), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True, slots=True)
class SentTransaction:
    hash: str
    sender: str  # lowercase
    to: str | None  # lowercase; None for a contract creation
    nonce: int = 0
    value_wei: int = 0


def sent_by(block: Any, watched: set[str]) -> list[SentTransaction]:
    """Transactions of a full ``eth_getBlockByNumber`` answer sent by one of ``watched`` (lowercase)."""
    if not isinstance(block, dict) or not isinstance(block.get("transactions"), list):
        raise ValueError("eth_getBlockByNumber: expected a block with a transactions list")
    out: list[SentTransaction] = []
    for i, tx in enumerate(block["transactions"]):
        if not isinstance(tx, dict):
            raise ValueError(f"eth_getBlockByNumber.transactions[{i}]: expected a full transaction object")
        sender, to, h = tx.get("from"), tx.get("to"), tx.get("hash")
        if not isinstance(sender, str) or not isinstance(h, str) or not (to is None or isinstance(to, str)):
            raise ValueError(f"eth_getBlockByNumber.transactions[{i}]: missing from/hash or bad to")
        if sender.lower() in watched:
            nonce = parse_quantity(tx.get("nonce"), f"eth_getBlockByNumber.transactions[{i}].nonce")
            value = parse_quantity(tx.get("value"), f"eth_getBlockByNumber.transactions[{i}].value")
            out.append(SentTransaction(h, sender.lower(), to.lower() if to else None, nonce, value))
    return out


class WatchedAddress(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="label value for this wallet (e.g. executor)")
    address: str = Field(description="0x address; mixed case must match its EIP-55 checksum")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or len(v) > 64 or not all(c.isalnum() or c in "-_." for c in v):
            raise ValueError("name must be 1-64 characters of letters, digits, '-', '_' or '.'")
        return v

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return validate_address(v)


class WalletOptions(CollectorOptions):
    endpoint: Endpoint = Field(
        default_factory=lambda: Endpoint(name="local", url="http://127.0.0.1:8545"),
        description="JSON-RPC endpoint of the execution node",
    )
    addresses: list[WatchedAddress] = Field(default_factory=list, description="wallets to watch (1..50)")
    allow_to: list[str] | None = Field(
        None,
        description="destinations a watched wallet may send to; others are flagged. null: no check. "
        "The watched wallets themselves are always allowed",
    )
    allow_create: bool = Field(False, description="allow contract creations from watched wallets")
    max_blocks_per_run: int = Field(20, description="blocks followed per run at most (catching up is spread out)")
    queued: Literal["auto", "content_from", "off"] = Field(
        "auto",
        description="how the wallets' queued transactions (waiting behind a missing nonce) are read. auto: "
        "txpool_contentFrom per wallet, else the whole pool's txpool_content within the endpoint's "
        "max_response_bytes; content_from: txpool_contentFrom only; off: not read (no WalletQueuedNonceGap)",
    )
    recheck_unsupported: Duration = Field(
        600.0, gt=0, description="how long a txpool method the node does not serve is left alone before asking again"
    )

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, v: list[WatchedAddress]) -> list[WatchedAddress]:
        if not 1 <= len(v) <= 50:  # bounded label cardinality
            raise ValueError("watch 1 to 50 addresses")
        for attr in ("name", "address"):
            values = [getattr(a, attr) for a in v]
            dup = next((x for x in values if values.count(x) > 1), None)
            if dup is not None:
                raise ValueError(f"duplicate {attr} {dup!r}")
        return v

    @field_validator("allow_to")
    @classmethod
    def _allow(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [validate_address(a) for a in v]

    @field_validator("max_blocks_per_run")
    @classmethod
    def _max_blocks(cls, v: int) -> int:
        if not 1 <= v <= 1000:
            raise ValueError("max_blocks_per_run must be between 1 and 1000")
        return v


@dataclass(frozen=True, slots=True)
class _Unread:
    """Why the wallets' queued transactions could not be read: the method asked last and its failure."""

    method: str
    reason: str  # an ErrorClass value, or too_large
    message: str


def _unread_reason(exc: RpcError) -> str:
    """The ``reason`` label of a failed pool read: an answer over max_response_bytes is ``too_large``."""
    return "too_large" if isinstance(exc, ResponseTooLarge) else exc.error_class.value


@dataclass(slots=True)
class _Found:
    """The transactions of one kind (failed, unexpected) of a wallet found by one run, the last one's facts first."""

    run: int
    last: _Facts
    hashes: list[str]

    def labels(self) -> list[str]:
        return [*self.last.labels(), str(len(self.hashes)), list_text(self.hashes, FACTS_SHOWN)]

    @staticmethod
    def add(found: _Found | None, run: int, facts: _Facts) -> _Found:
        """``found`` with ``facts`` as its last; a new one when ``found`` is of an earlier run."""
        if found is None or found.run != run:
            return _Found(run, facts, [facts.tx])
        found.last = facts
        found.hashes.append(facts.tx)
        return found


@dataclass(slots=True)
class _Tally:
    succeeded: int = 0
    failed: int = 0
    failed_gas_wei: int = 0
    unexpected: int = 0
    last_unexpected: _Found | None = None
    last_failed: _Found | None = None


@dataclass(frozen=True, slots=True)
class _Facts:
    """What a responder looks up first about one transaction: the labels of a last-transaction info series."""

    to: str  # checksummed, or "create"
    tx: str
    nonce: int
    block: int
    value_wei: int
    timestamp: float

    def labels(self) -> list[str]:
        return [self.to, self.tx, str(self.nonce), str(self.block), ether_text(self.value_wei)]


_CURSOR_SCHEMA = [
    "CREATE TABLE wallet_cursor (instance TEXT NOT NULL, endpoint TEXT NOT NULL, block INTEGER NOT NULL, "
    "PRIMARY KEY (instance, endpoint))",
]


WALLET_BALANCE_ETHER = MetricSpec(
    "mevwatch_wallet_balance_ether", "gauge",
    "Balance of the watched wallet, in ether",
    ("address", "wallet"),
)

WALLET_NONCE = MetricSpec(
    "mevwatch_wallet_nonce", "gauge",
    "Nonce of the wallet at the head block",
    ("address", "wallet"),
)

WALLET_PENDING_NONCE = MetricSpec(
    "mevwatch_wallet_pending_nonce", "gauge",
    "Nonce of the wallet counting its transactions in the node's pool (eth_getTransactionCount pending)",
    ("address", "wallet"),
)

WALLET_NONCE_GAP = MetricSpec(
    "mevwatch_wallet_nonce_gap", "gauge",
    "Pending minus mined nonce: transactions sent but not yet mined (stuck)",
    ("address", "wallet"),
)

WALLET_QUEUED_TRANSACTIONS = MetricSpec(
    "mevwatch_wallet_queued_transactions", "gauge",
    "Transactions of the wallet in the node's queued pool (not executable: waiting behind a missing nonce)",
    ("address", "wallet"),
)

WALLET_QUEUED_LOWEST_NONCE = MetricSpec(
    "mevwatch_wallet_queued_lowest_nonce", "gauge",
    "Lowest nonce among the wallet's queued transactions (absent when none is queued)",
    ("address", "wallet"),
)

WALLET_QUEUED_NONCE_GAP = MetricSpec(
    "mevwatch_wallet_queued_nonce_gap", "gauge",
    "Nonces missing between the node's next nonce for the wallet and its highest queued transaction: "
    "every queued transaction above the first missing nonce is stuck until each is used (0: none missing)",
    ("address", "wallet"),
)

WALLET_QUEUED_GAP_INFO = MetricSpec(
    "mevwatch_wallet_queued_gap_info", "gauge",
    "The wallet's missing nonces (ranges, at most 3 then +N more) and the hashes of the queued transactions "
    "stuck behind them (at most 3 then +N more); present while a nonce is missing",
    ("address", "wallet", "missing", "stuck"),
)

WALLET_QUEUED_UNREAD_REASON = MetricSpec(
    "mevwatch_wallet_queued_unread_reason", "gauge",
    "1 while the wallets' queued transactions cannot be read: the txpool method asked last and why "
    "(method_not_supported, too_large: over the endpoint's max_response_bytes, or the call's error class)",
    ("endpoint", "method", "reason"),
)

WALLET_TRANSACTIONS = MetricSpec(
    "mevwatch_wallet_transactions", "counter",
    "Mined transactions sent by the wallet, by outcome (failed: receipt status 0)",
    ("address", "wallet", "status"),
)

WALLET_FAILED_GAS_ETHER = MetricSpec(
    "mevwatch_wallet_failed_gas_ether", "counter",
    "Gas paid for failed transactions of the wallet, in ether",
    ("address", "wallet"),
)

WALLET_FOLLOWED_BLOCK = MetricSpec(
    "mevwatch_wallet_followed_block", "gauge",
    "Last block scanned for wallet transactions",
    ("endpoint",),
)

WALLET_BLOCKS_BEHIND = MetricSpec(
    "mevwatch_wallet_blocks_behind", "gauge",
    "Blocks between the head and the last scanned",
    ("endpoint",),
)

WALLET_UNEXPECTED_TRANSACTIONS = MetricSpec(
    "mevwatch_wallet_unexpected_transactions", "counter",
    "Transactions of the wallet to a destination not on the allow list",
    ("address", "wallet"),
)

WALLET_LAST_UNEXPECTED_TRANSACTION_INFO = MetricSpec(
    "mevwatch_wallet_last_unexpected_transaction_info", "gauge",
    "The latest unexpected transaction of the wallet (one series per wallet); found: how many unexpected "
    "transactions of the wallet the run that found it found (it included), found_txs: their hashes (at most 3, "
    "then +N more)",
    ("address", "wallet", "to", "tx", "nonce", "block", "value_ether", "found", "found_txs"),
)

WALLET_LAST_FAILED_TRANSACTION_INFO = MetricSpec(
    "mevwatch_wallet_last_failed_transaction_info", "gauge",
    "The latest failed (receipt status 0) transaction of the wallet (one series per wallet); found: how many "
    "failed transactions of the wallet the run that found it found (it included), found_txs: their hashes (at "
    "most 3, then +N more)",
    ("address", "wallet", "to", "tx", "nonce", "block", "value_ether", "found", "found_txs"),
)

WALLET_LAST_UNEXPECTED_TRANSACTION_TIMESTAMP_SECONDS = MetricSpec(
    "mevwatch_wallet_last_unexpected_transaction_timestamp_seconds", "gauge",
    "Block time of the latest unexpected transaction of the wallet",
    ("address", "wallet"),
)


@register
class WalletCollector(PollCollector[WalletOptions]):
    kind: ClassVar[str] = "wallet"
    Options = WalletOptions
    default_interval: ClassVar[float] = 15.0
    default_timeout: ClassVar[float] = 10.0
    default_enabled: ClassVar[bool] = False
    runbook_section = "wallet-failures"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        WALLET_BALANCE_ETHER,
        WALLET_NONCE,
        WALLET_PENDING_NONCE,
        WALLET_NONCE_GAP,
        WALLET_QUEUED_TRANSACTIONS,
        WALLET_QUEUED_LOWEST_NONCE,
        WALLET_QUEUED_NONCE_GAP,
        WALLET_QUEUED_GAP_INFO,
        WALLET_QUEUED_UNREAD_REASON,
        WALLET_TRANSACTIONS,
        WALLET_FAILED_GAS_ETHER,
        WALLET_FOLLOWED_BLOCK,
        WALLET_BLOCKS_BEHIND,
        WALLET_UNEXPECTED_TRANSACTIONS,
        WALLET_LAST_UNEXPECTED_TRANSACTION_INFO,
        WALLET_LAST_UNEXPECTED_TRANSACTION_TIMESTAMP_SECONDS,
        WALLET_LAST_FAILED_TRANSACTION_INFO,
    )

    def __init__(self, ctx: CollectorContext, options: WalletOptions) -> None:
        super().__init__(ctx, options)
        self.client = JsonRpcClient(options.endpoint)
        self._by_lower = {a.address.lower(): a for a in options.addresses}
        self._allowed = None if options.allow_to is None else (
            {a.lower() for a in options.allow_to} | set(self._by_lower))
        self._tally = {a.address.lower(): _Tally() for a in options.addresses}
        self.cursor: int | None = None
        self._cursor_loaded = False
        self._runs = 0  # _follow calls: which transactions were found together
        self._not_served: dict[str, tuple[float, _Unread]] = {}  # method -> (when the node said so, its failure)
        self._unread: _Unread | None = None  # the last run's, to log a change once

    async def close(self) -> None:
        await self.client.close()

    async def _call(self, method: str, params: list[Any]) -> Any:
        try:
            return await self.client.call(method, params)
        except RpcError as exc:
            raise CollectorError(exc.reason, f"{method}: {exc.message}") from None

    async def _quantity(self, method: str, params: list[Any]) -> int:
        value = await self._call(method, params)
        try:
            return parse_quantity(value, method)
        except ValueError as exc:
            raise CollectorError("invalid_response", str(exc)) from None

    # --- cursor persistence ----------------------------------------------------------------

    def _load_cursor(self) -> None:
        self._cursor_loaded = True
        if self.ctx.state is None:
            return
        try:
            self.ctx.state.migrate("wallet", _CURSOR_SCHEMA)
            rows = self.ctx.state.query("SELECT block FROM wallet_cursor WHERE instance = ? AND endpoint = ?",
                                        (self.ctx.instance, self.options.endpoint.name))
        except StateError as exc:
            self.ctx.log.warning("wallet_cursor_unavailable", error=str(exc))
            return
        if rows:
            self.cursor = int(rows[0][0])

    def _save_cursor(self) -> None:
        if self.ctx.state is None or self.cursor is None:
            return
        try:
            self.ctx.state.execute(
                "INSERT INTO wallet_cursor (instance, endpoint, block) VALUES (?, ?, ?) "
                "ON CONFLICT (instance, endpoint) DO UPDATE SET block = excluded.block",
                (self.ctx.instance, self.options.endpoint.name, self.cursor),
            )
        except StateError as exc:
            self.ctx.log.warning("wallet_cursor_not_saved", error=str(exc))

    # --- following blocks ------------------------------------------------------------------

    async def _follow(self, head: int) -> None:
        if not self._cursor_loaded:
            await self.ctx.run_blocking(self._load_cursor)
        if self.cursor is None or self.cursor > head:
            # First run (or the chain was reset): start at the head rather than scanning history.
            self.cursor = head
            await self.ctx.run_blocking(self._save_cursor)
            return
        last = min(head, self.cursor + self.options.max_blocks_per_run)
        start = self.cursor
        self._runs += 1
        for number in range(self.cursor + 1, last + 1):
            block = await self._call("eth_getBlockByNumber", [hex(number), True])
            if block is None:
                break  # not served yet (a load-balanced node behind its peer): next run
            try:
                txs = sent_by(block, set(self._by_lower))
                timestamp = float(parse_quantity(block.get("timestamp"), "block.timestamp"))
            except ValueError as exc:
                raise CollectorError("invalid_response", str(exc)) from None
            # Receipts first, tallies after: a failure mid-block leaves nothing half-counted for the retry.
            outcomes = [(tx, *await self._receipt(tx)) for tx in txs]
            for tx, failed, cost in outcomes:
                self._account(tx, failed, cost, number, timestamp)
            self.cursor = number
        if self.cursor != start:
            await self.ctx.run_blocking(self._save_cursor)

    async def _receipt(self, tx: SentTransaction) -> tuple[bool, int]:
        """(failed, gas cost in wei) of a mined transaction."""
        receipt = await self._call("eth_getTransactionReceipt", [tx.hash])
        if not isinstance(receipt, dict):
            raise CollectorError("invalid_response", f"no receipt for mined transaction {tx.hash}")
        try:
            status = parse_quantity(receipt.get("status"), "receipt.status")
            gas_used = parse_quantity(receipt.get("gasUsed"), "receipt.gasUsed")
            price = parse_quantity(receipt.get("effectiveGasPrice"), "receipt.effectiveGasPrice")
        except ValueError as exc:
            raise CollectorError("invalid_response", str(exc)) from None
        return status == 0, gas_used * price

    def _account(self, tx: SentTransaction, failed: bool, cost: int, block: int, timestamp: float) -> None:
        tally = self._tally[tx.sender]
        facts = _Facts(CREATE if tx.to is None else validate_address(tx.to), tx.hash, tx.nonce, block,
                       tx.value_wei, timestamp)
        if failed:
            tally.failed += 1
            tally.failed_gas_wei += cost
            tally.last_failed = _Found.add(tally.last_failed, self._runs, facts)
            self.ctx.log.warning("wallet_transaction_failed", wallet=self._by_lower[tx.sender].name,
                                 to=facts.to, tx=tx.hash, nonce=tx.nonce, block=block)
        else:
            tally.succeeded += 1
        if self._allowed is not None and ((tx.to is None and not self.options.allow_create)
                                          or (tx.to is not None and tx.to not in self._allowed)):
            tally.unexpected += 1
            tally.last_unexpected = _Found.add(tally.last_unexpected, self._runs, facts)
            self.ctx.log.warning("wallet_unexpected_transaction", wallet=self._by_lower[tx.sender].name,
                                 to=facts.to, tx=tx.hash)

    # --- the queued pool ---------------------------------------------------------------------

    async def _queued(self) -> dict[str, SenderPool] | _Unread | None:
        """Each wallet's part of the node's pool by address, why it cannot be read, or None when not asked.

        Only a method the node does not serve falls back to the next one (and is left alone for
        ``recheck_unsupported``); any other failure is this run's reason: a bad answer to the per-wallet
        call is no cause to read the whole pool."""
        if self.options.queued == "off":
            return None
        methods = (CONTENT_FROM, CONTENT) if self.options.queued == "auto" else (CONTENT_FROM,)
        unread: _Unread | None = None
        for method in methods:
            known = self._not_served.get(method)
            if known is not None and time.monotonic() - known[0] < self.options.recheck_unsupported:
                unread = known[1]
                continue
            try:
                pools = await self._read_pool(method)
            except RpcError as exc:
                unread = _Unread(method, _unread_reason(exc), exc.message)
                if exc.error_class is not ErrorClass.METHOD_NOT_SUPPORTED:
                    return unread
                self._not_served[method] = (time.monotonic(), unread)
                continue
            except ValueError as exc:
                return _Unread(method, ErrorClass.INVALID_RESPONSE.value, str(exc))
            self._not_served.pop(method, None)
            return pools
        return unread

    async def _read_pool(self, method: str) -> dict[str, SenderPool]:
        if method == CONTENT_FROM:
            return {a.address: parse_content_from(await self.client.call(method, [a.address]), f"{method}({a.name})")
                    for a in self.options.addresses}
        content = await self.client.call(method, [])
        return {a.address: parse_content(content, a.address) for a in self.options.addresses}

    def _note_unread(self, unread: _Unread | None) -> None:
        """One log line when the pool turns unreadable (or its reason changes) and one when it is read again."""
        if unread != self._unread:
            if unread is not None:
                self.ctx.log.warning("wallet_queued_unread", method=unread.method, reason=unread.reason,
                                     error=unread.message)
            elif self._unread is not None:
                self.ctx.log.info("wallet_queued_read_again")
        self._unread = unread

    # --- the run -----------------------------------------------------------------------------

    async def collect(self) -> Families:
        if not self.options.addresses:
            raise NoData
        head = await self._quantity("eth_blockNumber", [])
        tag = hex(head)
        balances: dict[str, int] = {}
        nonces: dict[str, tuple[int, int]] = {}
        for a in self.options.addresses:
            balances[a.address] = await self._quantity("eth_getBalance", [a.address, tag])
            latest = await self._quantity("eth_getTransactionCount", [a.address, tag])
            pending = await self._quantity("eth_getTransactionCount", [a.address, "pending"])
            nonces[a.address] = (latest, pending)
        queued = await self._queued()
        self._note_unread(queued if isinstance(queued, _Unread) else None)
        await self._follow(head)
        families = self._families(balances, nonces, head)
        if isinstance(queued, _Unread):
            reason = WALLET_QUEUED_UNREAD_REASON.gauge()
            reason.add_metric([self.options.endpoint.name, queued.method, queued.reason], 1.0)
            families.append(reason)
        elif queued is not None:
            families += self._queued_families(queued, nonces)
        return families

    def _queued_families(self, pools: dict[str, SenderPool], nonces: dict[str, tuple[int, int]]) -> list[Metric]:
        count = WALLET_QUEUED_TRANSACTIONS.gauge()
        lowest = WALLET_QUEUED_LOWEST_NONCE.gauge()
        gap = WALLET_QUEUED_NONCE_GAP.gauge()
        info = WALLET_QUEUED_GAP_INFO.gauge()
        for a in self.options.addresses:
            lv = [a.address, a.name]
            pool, pending = pools[a.address], nonces[a.address][1]
            missing = pool.missing(pending)
            count.add_metric(lv, float(len(pool.queued)))
            if pool.queued:
                lowest.add_metric(lv, float(pool.queued[0].nonce))
            gap.add_metric(lv, float(sum(last - first + 1 for first, last in missing)))
            if missing:
                stuck = [t.hash for t in pool.stuck(pending)]
                info.add_metric([*lv, ranges_text(missing, FACTS_SHOWN), list_text(stuck, FACTS_SHOWN)], 1.0)
        return [count, lowest, gap, info]

    def _families(self, balances: dict[str, int], nonces: dict[str, tuple[int, int]], head: int) -> list[Metric]:
        bal = WALLET_BALANCE_ETHER.gauge()
        nonce = WALLET_NONCE.gauge()
        pending_nonce = WALLET_PENDING_NONCE.gauge()
        gap = WALLET_NONCE_GAP.gauge()
        txs = WALLET_TRANSACTIONS.counter()
        burned = WALLET_FAILED_GAS_ETHER.counter()
        unexpected = WALLET_UNEXPECTED_TRANSACTIONS.counter()
        last_info = WALLET_LAST_UNEXPECTED_TRANSACTION_INFO.gauge()
        last_ts = WALLET_LAST_UNEXPECTED_TRANSACTION_TIMESTAMP_SECONDS.gauge()
        last_failed = WALLET_LAST_FAILED_TRANSACTION_INFO.gauge()
        for a in self.options.addresses:
            lv = [a.address, a.name]
            latest, pending = nonces[a.address]
            bal.add_metric(lv, wei_to_ether(balances[a.address]))
            nonce.add_metric(lv, float(latest))
            pending_nonce.add_metric(lv, float(pending))
            gap.add_metric(lv, float(max(0, pending - latest)))
            t = self._tally[a.address.lower()]
            txs.add_metric([*lv, "succeeded"], float(t.succeeded))
            txs.add_metric([*lv, "failed"], float(t.failed))
            burned.add_metric(lv, wei_to_ether(t.failed_gas_wei))
            if self._allowed is not None:
                unexpected.add_metric(lv, float(t.unexpected))
            if t.last_unexpected is not None:
                last_info.add_metric([*lv, *t.last_unexpected.labels()], 1.0)
                last_ts.add_metric(lv, t.last_unexpected.last.timestamp)
            if t.last_failed is not None:
                last_failed.add_metric([*lv, *t.last_failed.labels()], 1.0)
        followed = WALLET_FOLLOWED_BLOCK.gauge()
        behind = WALLET_BLOCKS_BEHIND.gauge()
        ep = self.options.endpoint.name
        followed.add_metric([ep], float(self.cursor if self.cursor is not None else head))
        behind.add_metric([ep], float(head - (self.cursor if self.cursor is not None else head)))
        out: list[Metric] = [bal, nonce, pending_nonce, gap, txs, burned, last_failed, followed, behind]
        if self._allowed is not None:
            out += [unexpected, last_info, last_ts]
        return out
