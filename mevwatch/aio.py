"""asyncio helpers whose behaviour is the same on Python 3.11 and 3.12+.

``asyncio.wait_for`` on 3.11 swallows a cancellation that arrives while the awaited future has
completed but its waiter has not yet woken: the caller gets the result and the cancel is lost
(a collector told to stop runs on; a ``gather`` on it waits for ever). 3.12 rewrote it on
``asyncio.timeout``, which delivers the cancel; :func:`wait_for` is that rewrite, on both.
ruff bans ``asyncio.wait_for`` in this project (``tool.ruff.lint.flake8-tidy-imports``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["wait_for"]

T = TypeVar("T")


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    """Await ``aw`` for at most ``timeout`` seconds (None: no limit); TimeoutError when it runs out.

    As in 3.12's ``asyncio.wait_for``, ``aw`` is cancelled on the timeout (wrap it in
    ``asyncio.shield`` to let it run on) and a cancellation of the caller is never swallowed.
    """
    async with asyncio.timeout(timeout):
        return await aw
