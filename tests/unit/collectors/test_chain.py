"""chain collector: eth_syncing and head parsing, options, and a run with no node."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from mevwatch.collectors.base import CollectorContext, CollectorError
from mevwatch.collectors.chain import (
    BLOCK_TIME_MIN_INTERVALS,
    ChainCollector,
    ChainOptions,
    HeadBlock,
    SyncStatus,
    learn_block_time,
    parse_head_block,
    parse_syncing,
)
from tests.support.families import family_labels, family_value
from tests.support.peers import free_port


def test_not_syncing_is_a_normal_value() -> None:
    status = parse_syncing(False)
    assert status == SyncStatus(syncing=False)
    assert status.remaining_blocks == 0


def test_syncing_object() -> None:
    status = parse_syncing({"startingBlock": "0x0", "currentBlock": "0x10", "highestBlock": "0x64"})
    assert (status.syncing, status.current_block, status.highest_block, status.remaining_blocks) == (True, 16, 100, 84)
    # a node past its stale "highest" does not report negative remaining blocks
    assert parse_syncing({"currentBlock": "0x65", "highestBlock": "0x64"}).remaining_blocks == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "expected false or an object, got bool"),
        ("false", "expected false or an object, got str"),
        (None, "expected false or an object, got NoneType"),
        (0, "expected false or an object, got int"),
        ({}, "currentBlock: expected a hex string"),
        ({"currentBlock": "0x1", "highestBlock": "lots"}, "highestBlock: expected a hex string"),
    ],
)
def test_misread_syncing_answer_is_an_error_not_a_state(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_syncing(value)


def test_head_block() -> None:
    assert parse_head_block({"number": "0x12", "timestamp": "0x6553f100", "hash": "0xab"}) == HeadBlock(18, 1700000000)
    with pytest.raises(ValueError, match="expected an object, got NoneType"):
        parse_head_block(None)
    with pytest.raises(ValueError, match="latest block timestamp"):
        parse_head_block({"number": "0x12"})


def _chain(*intervals: int, start: int = 1_700_000_000) -> dict[int, int]:
    """Block number -> timestamp of blocks 0.. with these intervals between them."""
    times = [start]
    for gap in intervals:
        times.append(times[-1] + gap)
    return dict(enumerate(times))


def test_block_time_leaves_a_stall_out() -> None:
    # 12 s slots: a missed slot is the chain's pace, a 99 s stall is not
    assert learn_block_time(_chain(*[12] * 15, 99)) == 12.0
    assert learn_block_time(_chain(12, 12, 24, 12, 12, 12)) == 14.0
    # a second stall right after a first one: both left out, the block time stays the chain's
    assert learn_block_time(_chain(*[1] * 12, 60, 1, 1, 120)) == 1.0
    # a chain faster than a block a second (whole-second timestamps): its stall is still left out
    assert learn_block_time(_chain(0, 1, 0, 1, 0, 1, 0, 1, 30)) == 0.5


def test_block_time_cannot_be_told_from_too_few_or_inconsistent_blocks() -> None:
    assert learn_block_time(_chain(*[12] * (BLOCK_TIME_MIN_INTERVALS - 1))) is None
    assert learn_block_time(_chain(*[12] * BLOCK_TIME_MIN_INTERVALS)) == 12.0
    assert learn_block_time({1: 100, 3: 112, 5: 124, 7: 136, 9: 148}) is None  # no two consecutive blocks
    assert learn_block_time(_chain(12, 12, -5, 12, 12)) is None  # a timestamp going back: not one chain
    assert learn_block_time(_chain(0, 0, 0, 0, 0)) is None  # all in one second


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"endpoints": []}, "at least one endpoint"),
        ({"endpoints": [{"name": "a", "url": "http://h"}, {"name": "a", "url": "http://g"}]}, "unique: a"),
        ({"reference": {"name": "local", "url": "http://h"}}, "also an endpoint name"),
        ({"expected_chain_id": 0}, "greater than or equal to 1"),
        ({"recheck_unsupported": "-1s"}, "invalid duration"),
        ({"peers_min": 3}, "Extra inputs"),
    ],
)
def test_options_reject_bad_config(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ChainOptions(**fields)


async def test_no_node_fails_with_refused_and_up_zero_only() -> None:
    opts = ChainOptions(endpoints=[{"name": "local", "url": f"http://127.0.0.1:{free_port()}"}])
    collector = ChainCollector(CollectorContext(kind="chain", instance="t", interval=1.0, timeout=2.0), opts)
    try:
        with pytest.raises(CollectorError) as info:
            await collector.collect()
    finally:
        await collector.close()
    assert info.value.reason == "refused"
    families = info.value.families or []
    assert family_value(families, "mevwatch_chain_up", endpoint="local") == 0.0
    assert family_labels(families, "mevwatch_chain_head_block") == []
    assert family_labels(families, "mevwatch_chain_peers") == []
    assert family_value(families, "mevwatch_chain_errors_total", endpoint="local", method="eth_getBlockByNumber") == 1
