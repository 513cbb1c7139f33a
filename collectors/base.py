"""The collector contract: poll and stream collectors, their options, context, errors and state store.

A collector never touches a Prometheus registry, never sleeps between runs, never retries
and never logs its own failure streak: the supervisor does all of that. A collector returns
metric families (``mevwatch.families``' ``*MetricFamily`` objects, built fresh each run) or
raises :class:`CollectorError` for an expected failure.
"""

from __future__ import annotations

import abc
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mevwatch.blocking import BlockingCallFailed, BlockingPool
from mevwatch.families import Metric, MetricSpec
from mevwatch.fields import Duration

__all__ = [
    "Collector",
    "CollectorContext",
    "CollectorError",
    "CollectorOptions",
    "Emit",
    "Families",
    "MetricSpec",
    "NoData",
    "Paths",
    "PollCollector",
    "StateError",
    "StateStore",
    "StreamCollector",
]

Families = Sequence[Metric]
Emit = Callable[[Families], None]
T = TypeVar("T")


class CollectorError(Exception):
    """An expected failure (node down, file missing): success 0, counted by ``reason``.

    ``families``, when given, are still published: what the failed run did measure, such as
    ``up 0`` for a dead endpoint, replaces the previous snapshot instead of leaving it to go stale.
    """

    def __init__(self, reason: str, message: str = "", families: Families | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.message = message or reason
        self.families = families


class NoData(Exception):
    """Nothing to report on this host (e.g. no cpufreq on a VM). Not a failure."""


class CollectorOptions(BaseModel):
    """Fields every collector entry has; each collector's ``Options`` subclasses this."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instance: str = Field(default="default", description="name of this instance of the collector kind")
    enabled: bool = Field(default=True, description="set false to keep the entry but not run it")
    interval: Duration | None = Field(default=None, description="time between runs (default per kind)")
    timeout: Duration | None = Field(default=None, description=(
        "a run longer than this fails (default per kind, at most the interval); under twice the interval, "
        "after which samples are stale"))
    jitter: Duration = Field(default=0.0, description="random delay added to the first run to spread load")

    @field_validator("instance")
    @classmethod
    def _instance_name(cls, v: str) -> str:
        if not v or len(v) > 64 or not all(c.isalnum() or c in "-_." for c in v):
            raise ValueError("instance must be 1-64 characters of letters, digits, '-', '_' or '.'")
        return v


@dataclass(frozen=True, slots=True)
class Paths:
    """Roots of the host filesystems, so tests can point collectors at fixture trees."""

    procfs: Path = Path("/proc")
    sysfs: Path = Path("/sys")
    rootfs: Path = Path("/")
    devfs: Path = Path("/dev")

    def proc(self, *parts: str) -> Path:
        return self.procfs.joinpath(*parts)

    def sys(self, *parts: str) -> Path:
        return self.sysfs.joinpath(*parts)


class StateError(Exception):
    """The state dir or DB cannot be used (unwritable, full, corrupt)."""


class StateStore(Protocol):
    """What a collector may do with the daemon's state DB: its own tables, under its own component.

    Every call may raise StateError; a collector keeps working without what it could not save.
    """

    def migrate(self, component: str, steps: Sequence[str]) -> int:
        """Apply the not yet applied schema ``steps`` of ``component`` in order; return the version."""
        ...

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction, committed when the block ends without an exception."""
        ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def each_row(self, sql: str, params: Sequence[Any], handle: Callable[[tuple[Any, ...]], None]) -> int:
        """Call ``handle`` with each row of one query without holding every row at once; the row count."""
        ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One write statement in its own transaction; returns the row count."""
        ...


@dataclass(slots=True)
class CollectorContext:
    """What the daemon gives a collector: its identity, host paths, state DB and thread pool."""

    kind: str
    instance: str
    interval: float
    timeout: float
    paths: Paths = field(default_factory=Paths)
    state: StateStore | None = None
    pool: BlockingPool | None = None
    log: Any = None

    def __post_init__(self) -> None:
        if self.log is None:
            self.log = structlog.get_logger("mevwatch.collector").bind(
                collector=self.kind, instance=self.instance
            )

    async def run_blocking(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """Run a blocking call in the bounded thread pool; a call that hangs is abandoned, not awaited.

        Raises CollectorError("timeout") when it does not return within ``timeout``
        (default: the collector's timeout).
        """
        if self.pool is None:
            self.pool = BlockingPool(max_workers=4)
        try:
            return await self.pool.run(fn, *args, timeout=timeout if timeout is not None else self.timeout)
        except BlockingCallFailed as exc:
            raise CollectorError(exc.reason, exc.message) from None


OptionsT = TypeVar("OptionsT", bound=CollectorOptions)


class Collector(abc.ABC, Generic[OptionsT]):
    """Common part of poll and stream collectors."""

    kind: ClassVar[str]
    Options: ClassVar[type[CollectorOptions]] = CollectorOptions
    default_interval: ClassVar[float] = 15.0
    default_timeout: ClassVar[float] = 10.0
    #: part of the embedded default config (``make run`` with no --config)
    default_enabled: ClassVar[bool] = True
    #: runbook section (anchor in docs/runbooks.md) this collector serves, for diagnose and docs
    runbook_section: ClassVar[str] = ""
    #: every metric family the collector may emit (docs/metrics.md, dashboards, the contract test)
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()

    def __init__(self, ctx: CollectorContext, options: OptionsT) -> None:
        self.ctx = ctx
        self.options = options

    async def close(self) -> None:
        """Release connections and files; called on stop and on reload."""

    async def details(self) -> list[tuple[str, str]]:
        """Lines for ``mevwatch diagnose`` that metrics must not carry (query texts, file paths).

        Called after a successful run; returns (check, text) pairs. Default: none.
        """
        return []


class PollCollector(Collector[OptionsT]):
    """Runs every ``interval``; each run returns the full set of families it owns."""

    @abc.abstractmethod
    async def collect(self) -> Families: ...


class StreamCollector(Collector[OptionsT]):
    """Runs forever (kmsg, inotify, websocket); calls ``emit`` with its full current families.

    The supervisor restarts ``run`` with capped exponential backoff when it raises or returns.
    Samples stay current while ``run`` is alive and vanish 2x ``keepalive_interval`` after it died.
    """

    @property
    def keepalive_interval(self) -> float:
        """How often the supervisor keeps a live stream's last snapshot fresh; its samples go stale 2x
        this after the stream died. The interval, unless the stream works on a longer period of its own."""
        return self.ctx.interval

    @abc.abstractmethod
    async def run(self, emit: Emit) -> None: ...
