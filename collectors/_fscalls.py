"""Filesystem calls that may hang (a dead NFS server, a stuck FUSE daemon), shared by the disk kinds.

A call runs in the blocking pool with its own timeout. One that hangs past it is reported as
stalled, and no second call on the same key starts until the hung one has returned, so a dead
mount never ties up more than one thread.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import AfterValidator

from mevwatch.collectors.base import CollectorContext, CollectorError

__all__ = [
    "STALLED",
    "AbsolutePaths",
    "HostRoot",
    "InFlight",
    "call_timeout",
    "consume",
    "guarded",
    "has_glob",
    "literal_parent",
    "probe_missing",
]

#: what a guarded call returns while its previous call on the same key still hangs
STALLED = object()
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(slots=True)
class InFlight:
    """Keys whose blocking call has not returned yet (possibly long after its timeout)."""

    keys: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __contains__(self, key: str) -> bool:
        with self.lock:
            return key in self.keys

    def claim(self, key: str) -> bool:
        with self.lock:
            if key in self.keys:
                return False
            self.keys.add(key)
            return True

    def release(self, key: str) -> None:
        with self.lock:
            self.keys.discard(key)


def call_timeout(ctx: CollectorContext, wanted: float) -> float:
    """``wanted``, cut so a blocking call gives up before the supervisor cancels the whole run."""
    return max(min(wanted, ctx.timeout * 0.8), 0.01)


async def guarded(
    ctx: CollectorContext, inflight: InFlight, key: str, fn: Callable[..., object], *args: object, timeout: float
) -> object:
    """``fn(*args)`` in the pool unless its previous call under ``key`` still hangs; STALLED then or on timeout."""
    if not inflight.claim(key):
        return STALLED

    def call() -> object:
        try:
            return fn(*args)
        finally:
            inflight.release(key)

    try:
        return await ctx.run_blocking(call, timeout=timeout)
    except CollectorError as exc:
        if exc.reason != "timeout":
            inflight.release(key)  # never started (pool exhausted)
        return STALLED


def consume(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned task's outcome so it is not logged as never retrieved."""
    if not task.cancelled():
        task.exception()


@dataclass(frozen=True, slots=True)
class HostRoot:
    """The configured rootfs: configured paths are read under it and labelled without it."""

    root: str

    @classmethod
    def of(cls, ctx: CollectorContext) -> HostRoot:
        return cls(str(ctx.paths.rootfs).rstrip("/"))

    def host(self, path: str) -> str:
        return self.root + path if self.root else path

    def label(self, path: str) -> str:
        return path[len(self.root):] or "/" if self.root and path.startswith(self.root) else path


def has_glob(path: str) -> bool:
    return _GLOB_CHARS.search(path) is not None


def literal_parent(pattern: str) -> str:
    """The directory part of a glob before its first wildcard."""
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        if has_glob(part):
            return "/".join(parts[:i]) or "/"
    return pattern


def probe_missing(path: str) -> tuple[str, str]:
    """Why a path (or a glob's literal parent) yields nothing: missing or permission_denied."""
    try:
        with os.scandir(path):
            pass
    except FileNotFoundError:
        return "missing", f"{path} does not exist"
    except NotADirectoryError:
        return "ok", ""
    except PermissionError:
        return "permission_denied", f"permission denied reading {path}"
    except OSError as exc:
        return "error", f"{path}: {exc.strerror or exc}"
    return "ok", ""


def _absolute_paths(v: list[str]) -> list[str]:
    """A config list of absolute paths (or globs) without duplicates."""
    for p in v:
        if not p.startswith("/"):
            raise ValueError(f"{p!r} is not an absolute path")
    if len(set(v)) != len(v):
        raise ValueError("duplicate path")
    return v


#: a config field: absolute paths (or globs), no duplicates
AbsolutePaths = Annotated[list[str], AfterValidator(_absolute_paths)]
