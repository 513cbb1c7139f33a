"""One sender's part of the node's pool from real txpool answers (geth, erigon, anvil), and malformed ones."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from mevwatch.collectors._txpool import (
    QueuedTransaction,
    SenderPool,
    list_text,
    parse_content,
    parse_content_from,
    ranges_text,
)

BOT = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
H3 = "0x5bb65993882522638003d3410d9330dde9be634d2999d70001c074b48703b23d"
H5 = "0x7ef9c6c5effd084e6f86240465f4bc11bda408123ccdfdfb0aa599b34d3bb267"


def _tx(nonce: int, h: str, sender: str = BOT.lower()) -> dict[str, Any]:
    """A pool transaction as geth's RPCTransaction marshals one (EIP-1559, not yet in a block)."""
    return {"blockHash": None, "blockNumber": None, "from": sender, "gas": "0x5208", "gasPrice": "0x77359400",
            "maxFeePerGas": "0x77359400", "maxPriorityFeePerGas": "0x3b9aca00", "hash": h, "input": "0x",
            "nonce": hex(nonce), "to": "0x000000000000000000000000000000000000dead", "transactionIndex": None,
            "value": "0x1", "type": "0x2", "accessList": [], "chainId": "0x1", "v": "0x0", "r": "0x1", "s": "0x2",
            "yParity": "0x0"}


# anvil 1.7.1's answer to txpool_content after two transactions of BOT with nonces 3 and 5 (its next nonce 0)
ANVIL_CONTENT = json.loads("""{"pending":{},"queued":{"0x70997970c51812dc3a010c7d01b50e0d17dc79c8":{
"3":{"type":"0x2","chainId":"0x7a69","nonce":"0x3","gas":"0x5208","maxFeePerGas":"0x77359400",
"maxPriorityFeePerGas":"0x3b9aca00","to":"0x000000000000000000000000000000000000dead","value":"0x1","accessList":[],
"input":"0x","r":"0x2b172a82c73e41d1dc6a18099e8eb88a5584ecd2ef4139abb9db63434fbabb86",
"s":"0x597431cbf6e2cfa67f4750f4eb6bbebef77ac3b286f430378ebb5d3914b8e65f","yParity":"0x0","v":"0x0",
"hash":"0x5bb65993882522638003d3410d9330dde9be634d2999d70001c074b48703b23d","blockHash":null,"blockNumber":null,
"transactionIndex":null,"from":"0x70997970c51812dc3a010c7d01b50e0d17dc79c8","gasPrice":"0x77359400"},
"5":{"type":"0x2","chainId":"0x7a69","nonce":"0x5","gas":"0x5208","maxFeePerGas":"0x77359400",
"maxPriorityFeePerGas":"0x3b9aca00","to":"0x000000000000000000000000000000000000dead","value":"0x1","accessList":[],
"input":"0x","r":"0x82c280e14d922cfe487a566bd1226d29225c58c3d34a7c1ad7351d75c1aa4d4",
"s":"0x4275d1f9320f4c7fdb186eb7bc3182e27a02f8072eb501e2031aab1403ef74d","yParity":"0x1","v":"0x1",
"hash":"0x7ef9c6c5effd084e6f86240465f4bc11bda408123ccdfdfb0aa599b34d3bb267","blockHash":null,"blockNumber":null,
"transactionIndex":null,"from":"0x70997970c51812dc3a010c7d01b50e0d17dc79c8","gasPrice":"0x77359400"}}}}""")


def test_anvil_content_nonce_too_high() -> None:
    pool = parse_content(ANVIL_CONTENT, BOT)  # the address in any case finds anvil's lowercase key
    assert pool == SenderPool((QueuedTransaction(3, H3), QueuedTransaction(5, H5)), None)
    assert pool.missing(0) == [(0, 2), (4, 4)]
    assert pool.stuck(0) == pool.queued
    assert ranges_text(pool.missing(0)) == "0-2, 4"
    # another sender has nothing in this pool: nothing queued, nothing missing
    other = parse_content(ANVIL_CONTENT, "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC")
    assert other == SenderPool((), None)
    assert other.missing(7) == []
    assert other.stuck(7) == ()


def test_geth_content_from_with_pending_and_queued() -> None:
    # geth's txpool_contentFrom: pending 7 and 8 (after the pending nonce 7 was read, 8 arrived), queued 10 and 11
    answer = {"pending": {"7": _tx(7, "0x" + "a" * 64), "8": _tx(8, "0x" + "b" * 64)},
              "queued": {"11": _tx(11, "0x" + "D" * 64), "10": _tx(10, "0x" + "c" * 64)}}
    pool = parse_content_from(answer)
    assert pool.in_order_next == 9
    assert [t.nonce for t in pool.queued] == [10, 11]  # by nonce, whatever the key order
    assert pool.queued[1].hash == "0x" + "d" * 64  # lowercase
    assert pool.next_nonce(7) == 9  # the pool is ahead of the pending nonce read before it
    assert pool.missing(7) == [(9, 9)]
    assert [t.nonce for t in pool.stuck(7)] == [10, 11]


def test_geth_content_with_checksummed_keys_and_other_senders() -> None:
    other = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
    answer = {"pending": {other: {"0": _tx(0, "0x" + "1" * 64, other.lower())}},
              "queued": {BOT: {"4": _tx(4, H5)}, other: {"9": _tx(9, "0x" + "2" * 64, other.lower())}}}
    pool = parse_content(answer, BOT.lower())
    assert pool == SenderPool((QueuedTransaction(4, H5),), None)
    assert pool.missing(2) == [(2, 3)]


def test_erigon_base_fee_part_counts_as_in_order() -> None:
    # Erigon's txpool_contentFrom adds "baseFee": in nonce order but bid under the base fee, not a gap
    answer = {"pending": {}, "baseFee": {"5": _tx(5, H3)}, "queued": {"6": _tx(6, H5)}}
    pool = parse_content_from(answer)
    assert pool.next_nonce(5) == 6
    assert pool.missing(5) == []
    assert pool.stuck(5) == ()


def test_a_queued_transaction_at_the_next_nonce_is_not_behind_a_gap_but_one_above_a_hole_is() -> None:
    pool = SenderPool((QueuedTransaction(5, H3), QueuedTransaction(7, H5)))
    assert pool.missing(5) == [(6, 6)]
    assert pool.stuck(5) == (QueuedTransaction(7, H5),)
    # a queued nonce already used (a replacement the node keeps aside) is not a gap
    assert SenderPool((QueuedTransaction(2, H3),)).missing(5) == []


def test_label_texts_are_bounded_whatever_the_pool_holds() -> None:
    queued = tuple(QueuedTransaction(n, "0x" + f"{n:064x}") for n in range(10, 2010, 2))  # 1000 queued, 1000 holes
    pool = SenderPool(queued)
    missing = ranges_text(pool.missing(0))
    stuck = list_text([t.hash for t in pool.stuck(0)])
    assert missing == "0-9, 11, 13 +997 more"
    assert stuck == ", ".join("0x" + f"{n:064x}" for n in (10, 12, 14)) + " +997 more"
    assert len(stuck) < 220
    assert list_text([]) == ""
    assert list_text(["a", "b", "c"]) == "a, b, c"


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (None, "txpool_contentFrom: expected an object with pending and queued, got NoneType"),
        ([], "txpool_contentFrom: expected an object with pending and queued, got list"),
        ({"pending": {}}, "txpool_contentFrom: expected an object under 'queued', got None"),
        ({"pending": [], "queued": {}}, "txpool_contentFrom: expected an object under 'pending', got []"),
        ({"pending": {}, "queued": {"0x3": _tx(3, H3)}},
         "txpool_contentFrom.queued: expected a decimal nonce as key, got '0x3'"),
        ({"pending": {}, "queued": {"9" * 21: _tx(3, H3)}},
         "txpool_contentFrom.queued: expected a decimal nonce as key"),
        ({"pending": {}, "queued": {"3": H3}}, "txpool_contentFrom.queued[3]: expected a transaction with a 32-byte"),
        ({"pending": {}, "queued": {"3": {"hash": "0x12"}}}, "txpool_contentFrom.queued[3]: expected a transaction"),
        ({"pending": {"1": {"nonce": "0x1"}}, "queued": {}}, "txpool_contentFrom.pending[1]: expected a transaction"),
        ({"pending": {}, "baseFee": [], "queued": {}}, "txpool_contentFrom.baseFee: expected an object of nonce"),
    ],
)
def test_malformed_content_from_is_a_clear_error(answer: Any, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}") as err:
        parse_content_from(answer)
    assert len(str(err.value)) < 200  # the offending value is cut short


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"pending": {}, "queued": {BOT: []}}, "txpool_content." + BOT + ".queued: expected an object of nonce"),
        ({"pending": {}, "queued": [BOT]}, "txpool_content: expected an object under 'queued'"),
        ({"pending": {}, "queued": {BOT: {"4": {"hash": None}}}},
         "txpool_content." + BOT + ".queued[4]: expected a transaction with a 32-byte hex hash, got {'hash': None}"),
    ],
)
def test_malformed_content_is_a_clear_error_naming_the_sender(answer: Any, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}") as err:
        parse_content(answer, BOT)
    assert len(str(err.value)) < 200  # the offending value is cut short
