"""Wake-ups at changes in a set of directories (inotify), so that logwatch passes when a file moved.

A watch on a directory reports what happens to its entries: a file written, created, moved in or
out, deleted, its mode changed. It does not report writes made by another host on a network
filesystem (NFS, CIFS) nor anything in a subdirectory; logwatch's rescan period covers those. An
idle host's logs then cost no pass at all between rescans, where a pass every interval cost a
thread hand-off and two wake-ups of the process each second (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from asyncinotify import Event, Inotify, Mask, Watch

from mevwatch.aio import wait_for

__all__ = ["DirWatch"]

_MASK = (
    Mask.MODIFY | Mask.ATTRIB | Mask.CLOSE_WRITE | Mask.MOVED_FROM | Mask.MOVED_TO | Mask.CREATE | Mask.DELETE
    | Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.ONLYDIR
)
#: events taken at most per wait; past it the queue is left for the next wait (a change is a change)
_DRAIN_MAX = 4096


class DirWatch:
    """inotify watches on a set of directories. Raises OSError when the kernel gives no inotify instance
    (``fs.inotify.max_user_instances`` reached): the caller then passes every interval, as without it."""

    def __init__(self) -> None:
        self._inotify = Inotify(cache_size=64, sync_timeout=0)
        self._watches: dict[str, Watch] = {}

    @property
    def watched(self) -> frozenset[str]:
        return frozenset(self._watches)

    def watch(self, dirs: Iterable[str]) -> None:
        """Watch exactly these directories. One that is absent, not a directory or not ours to read is
        left out, and tried again at the next call."""
        want = set(dirs)
        for d in [d for d in self._watches if d not in want]:
            gone = self._watches.pop(d)
            if all(w.wd != gone.wd for w in self._watches.values()):  # not another name of a directory kept
                with contextlib.suppress(OSError):  # already gone with its directory
                    self._inotify.rm_watch(gone)
        for d in want - self._watches.keys():
            try:
                self._watches[d] = self._inotify.add_watch(d, _MASK)
            except OSError:
                continue

    async def wait(self, timeout: float) -> bool:
        """True at a change in a watched directory (the changes queued with it are taken too), False
        when ``timeout`` seconds pass without one."""
        if timeout <= 0:
            return False
        try:
            self._note(await wait_for(self._inotify.get(), timeout))
        except TimeoutError:
            return False
        for _ in range(_DRAIN_MAX):
            event = self._inotify.sync_get()
            if event is None:
                break
            self._note(event)
        return True

    def _note(self, event: Event) -> None:
        """A directory deleted or moved away has lost its watch: forget it, so the next watch() adds it
        again if it comes back."""
        if Mask.IGNORED in event.mask and event.watch is not None:
            for d, w in list(self._watches.items()):
                if w.wd == event.watch.wd:
                    del self._watches[d]

    def close(self) -> None:
        self._inotify.close()
        self._watches.clear()
