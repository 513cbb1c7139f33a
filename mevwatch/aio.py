"""asyncio helpers whose behaviour is the same on every Python from 3.11.0 on.

``asyncio.wait_for`` on 3.11 swallows a cancellation that arrives while the awaited future has
completed but its waiter has not yet woken: the caller gets the result and the cancel is lost
(a collector told to stop runs on; a ``gather`` on it waits for ever). :func:`wait_for` is 3.11's
``wait_for`` without that: the work runs in its own task as before and the wait is
``asyncio.wait``, which lets the caller's cancel through. (3.12 rewrote ``wait_for`` on
``asyncio.timeout``; that one, before 3.11.3 - Debian bookworm ships 3.11.2 - raises CancelledError
instead of TimeoutError in a task already being cancelled, such as a stopping collector's
``finally``, and is not used here.) ruff bans ``asyncio.wait_for`` in this project
(``tool.ruff.lint.flake8-tidy-imports``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import Any, TypeVar

__all__ = ["cancel_and_wait", "grid_after", "grid_at", "sleep_until", "wait_for"]

T = TypeVar("T")


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    """Await ``aw`` for at most ``timeout`` seconds (None: no limit); TimeoutError when it runs out.

    On the timeout ``aw`` is cancelled and waited for, so it is not running when this returns (wrap
    it in ``asyncio.shield`` to let it run on); work that finished as the timeout fell gives its
    result. A cancellation of the caller always propagates, after ``aw`` is cancelled and has ended.
    """
    if timeout is None:
        return await aw
    fut = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait([fut], timeout=timeout)
    except asyncio.CancelledError:
        await _cancel_and_end(fut)
        raise
    if not done:
        await _cancel_and_end(fut)
        if fut.cancelled():
            raise TimeoutError
    return fut.result()


async def _cancel_and_end(fut: asyncio.Future[Any]) -> None:
    fut.cancel()
    await asyncio.wait([fut])  # a cancel of the caller meanwhile propagates from here
    if not fut.cancelled():
        fut.exception()  # retrieved, so that asyncio does not log it as never retrieved


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it has ended, whatever it ends with.

    ``with suppress(CancelledError): await task`` would also swallow a cancel of the caller that
    lands during the wait; ``asyncio.wait`` lets that one through. The task's own exception is
    dropped: its owner is stopping it.
    """
    await _cancel_and_end(task)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def grid_at(t: float, interval: float, offset: float = 0.0) -> float:
    """The first point ``k * interval + offset`` of the loop clock's grid at or after ``t``: where the
    collectors' runs (the supervisor's next_slot), the heartbeat, the alert engine's ticks and the
    malloc trim wake, so that the ones due together share one wake-up of the process."""
    return math.ceil((t - offset) / interval) * interval + offset


def grid_after(t: float, interval: float, early: float = 0.0) -> float:
    """The first point ``k * interval`` of the loop clock's grid after ``t``; a ``t`` at most ``early``
    seconds before a point counts as on it (a timer fires up to the clock's resolution early)."""
    return (math.floor((t + early) / interval) + 1) * interval


async def sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    """Until loop time ``when``: call_at on the planned instant, so that tasks due at the same instant
    (the collectors' runs on one grid, the supervisor's next_slot; the heartbeat, the alert engine's
    keep-fresh tick, the malloc trim) wake in one loop iteration (asyncio.sleep adds its own now)."""
    if when <= loop.time():
        return
    fut: asyncio.Future[None] = loop.create_future()
    timer = loop.call_at(when, _wake, fut)
    try:
        await fut
    finally:
        timer.cancel()
