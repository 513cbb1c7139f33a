"""One sender's part of the node's transaction pool, from a ``txpool_contentFrom`` or ``txpool_content`` answer.

Both answers group transactions by pool part, each a map of nonce (a decimal string) to transaction:
``pending`` (executable in nonce order), ``queued`` (geth's "future" transactions: waiting behind a missing
nonce) and, on Erigon, ``baseFee`` (in nonce order but bid under the base fee). ``txpool_content`` has one
such map per sender address under each part (checksummed on geth, lowercase on anvil). A transaction in
``queued`` above the sender's next nonce is stuck until every nonce below it is used: the classic stuck wallet.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mevwatch.collectors._jsonrpc import short_repr

__all__ = ["QueuedTransaction", "SenderPool", "list_text", "parse_content", "parse_content_from", "ranges_text"]

_HASH_RE = re.compile(r"^0x[0-9a-fA-F]{64}$")
_NONCE_RE = re.compile(r"^[0-9]{1,20}$")
#: pool parts whose transactions take their nonces in order: the next nonce the node waits for comes after them
_IN_ORDER = ("pending", "baseFee")


@dataclass(frozen=True, slots=True)
class QueuedTransaction:
    nonce: int
    hash: str  # lowercase


@dataclass(frozen=True, slots=True)
class SenderPool:
    """What the pool holds for one sender: its queued transactions (by nonce), and one past the highest nonce
    it holds in order (None when it holds none)."""

    queued: tuple[QueuedTransaction, ...]
    in_order_next: int | None = None

    def next_nonce(self, pending_nonce: int) -> int:
        """The nonce the node waits for: the pending nonce, or past the pool's in-order transactions if those
        were added after the pending nonce was read."""
        return max(pending_nonce, self.in_order_next or 0)

    def missing(self, pending_nonce: int) -> list[tuple[int, int]]:
        """The missing nonces from the next one up to the highest queued, as (first, last) ranges."""
        start = self.next_nonce(pending_nonce)
        out: list[tuple[int, int]] = []
        for n in sorted({t.nonce for t in self.queued}):
            if n < start:
                continue
            if n > start:
                out.append((start, n - 1))
            start = n + 1
        return out

    def stuck(self, pending_nonce: int) -> tuple[QueuedTransaction, ...]:
        """The queued transactions above the first missing nonce: none of them is mined until it is used."""
        missing = self.missing(pending_nonce)
        return tuple(t for t in self.queued if missing and t.nonce > missing[0][0])


def _by_nonce(part: Any, what: str) -> dict[int, str]:
    """{nonce: transaction hash} of one pool part of one sender."""
    if not isinstance(part, dict):
        raise ValueError(f"{what}: expected an object of nonce -> transaction, got {type(part).__name__}")
    out: dict[int, str] = {}
    for key, tx in part.items():
        if not isinstance(key, str) or not _NONCE_RE.match(key):
            raise ValueError(f"{what}: expected a decimal nonce as key, got {short_repr(key)}")
        h = tx.get("hash") if isinstance(tx, dict) else None
        if not isinstance(h, str) or not _HASH_RE.match(h):
            raise ValueError(f"{what}[{key}]: expected a transaction with a 32-byte hex hash, got {short_repr(tx)}")
        out[int(key)] = h.lower()
    return out


def _sender_pool(parts: Mapping[str, Any], what: str) -> SenderPool:
    queued = _by_nonce(parts.get("queued", {}), f"{what}.queued")
    in_order = [n for p in _IN_ORDER for n in _by_nonce(parts.get(p, {}), f"{what}.{p}")]
    return SenderPool(tuple(QueuedTransaction(n, queued[n]) for n in sorted(queued)),
                      max(in_order) + 1 if in_order else None)


def _parts(result: Any, what: str) -> dict[str, Any]:
    if not isinstance(result, dict):
        raise ValueError(f"{what}: expected an object with pending and queued, got {type(result).__name__}")
    for part in ("pending", "queued"):
        if not isinstance(result.get(part), dict):
            raise ValueError(f"{what}: expected an object under {part!r}, got {short_repr(result.get(part))}")
    return result


def parse_content_from(result: Any, what: str = "txpool_contentFrom") -> SenderPool:
    """A ``txpool_contentFrom(address)`` answer: ``{"pending": {nonce: tx}, "queued": {nonce: tx}}``."""
    return _sender_pool(_parts(result, what), what)


def parse_content(result: Any, address: str, what: str = "txpool_content") -> SenderPool:
    """``address``'s part of a ``txpool_content`` answer: ``{"pending": {addr: {nonce: tx}}, "queued": ...}``."""
    parts = _parts(result, what)
    want = address.lower()
    mine: dict[str, Any] = {}
    for name, senders in parts.items():
        if name not in ("queued", *_IN_ORDER):
            continue
        if not isinstance(senders, dict):
            raise ValueError(f"{what}.{name}: expected an object of sender -> transactions")
        hits = [v for k, v in senders.items() if isinstance(k, str) and k.lower() == want]
        if hits:
            mine[name] = hits[0]
    return _sender_pool(mine, f"{what}.{address}")


def ranges_text(ranges: Iterable[tuple[int, int]], limit: int = 3) -> str:
    """``5-6, 8`` for the ranges (5, 6) and (8, 8): at most ``limit``, then ``+N more``."""
    return list_text([str(a) if a == b else f"{a}-{b}" for a, b in ranges], limit)


def list_text(items: list[str], limit: int = 3) -> str:
    """``a, b, c +N more``: a label value of bounded length whatever the number of items."""
    shown = ", ".join(items[:limit])
    return shown + (f" +{len(items) - limit} more" if len(items) > limit else "")
