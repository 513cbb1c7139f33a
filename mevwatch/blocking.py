"""A bounded thread pool for blocking OS calls (statvfs, hashing, psutil scans).

A call that never returns (a hung NFS statvfs, a stuck D-Bus) is abandoned after its timeout:
the awaiting coroutine gets BlockingCallFailed("timeout") at once, the thread is counted as
abandoned until it returns, and neither the event loop nor another collector waits on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from mevwatch.aio import wait_for

__all__ = ["BlockingCallFailed", "BlockingPool"]

T = TypeVar("T")


class BlockingCallFailed(Exception):
    """A blocking call did not return in time (``timeout``) or no worker is free (``pool_exhausted``).

    A collector's context turns it into a CollectorError with the same reason.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class BlockingPool:
    def __init__(self, max_workers: int = 8) -> None:
        self.max_workers = max_workers
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="mevwatch-blocking"
        )
        self._lock = threading.Lock()
        self._busy = 0
        self.abandoned = 0  # calls that timed out and whose thread has not returned yet
        self.abandoned_total = 0

    @property
    def busy(self) -> int:
        return self._busy

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float) -> T:
        with self._lock:
            if self._busy >= self.max_workers and self.abandoned >= self.max_workers:
                raise BlockingCallFailed("pool_exhausted", "every worker thread is stuck in a hung call")
            self._busy += 1
        # "returned" is set by the worker itself: the loop learns of the return an iteration later
        state = {"abandoned": False, "returned": False}

        def call() -> T:
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._busy -= 1
                    state["returned"] = True
                    if state["abandoned"]:
                        self.abandoned -= 1

        def abandon() -> None:
            with self._lock:
                if not state["returned"]:
                    state["abandoned"] = True
                    self.abandoned += 1
                    self.abandoned_total += 1
            fut.add_done_callback(_consume)

        fut = asyncio.get_running_loop().run_in_executor(self._executor, call)
        try:
            return await wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            abandon()
            raise BlockingCallFailed(
                "timeout", f"blocking call {getattr(fn, '__name__', fn)!s} hung > {timeout:g}s"
            ) from None
        except asyncio.CancelledError:
            abandon()
            raise

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
