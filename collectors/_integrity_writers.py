"""Who wrote a watched file: fanotify tells a privileged listener the writer's pid (Linux, as root).

inotify says that a file changed, never by whom. A fanotify notification group marked on the watched
directories (FAN_MODIFY and FAN_CLOSE_WRITE of their children) reports the pid of every writer; its
command name and user are read from /proc at once, while the writer most likely still runs. Without
the privilege (not root, or no fanotify) nothing is attributed and a change's writer is "unknown".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pwd
import struct
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["UNKNOWN", "Writer", "WriterLog"]

UNKNOWN = "unknown"
_FAN_CLOEXEC = 0x1
_FAN_NONBLOCK = 0x2
_FAN_MARK_ADD = 0x1
_FAN_MODIFY = 0x2
_FAN_CLOSE_WRITE = 0x8
_FAN_EVENT_ON_CHILD = 0x08000000
_AT_FDCWD = -100
_META = struct.Struct("=IBBHQii")  # struct fanotify_event_metadata
_KEPT = 4096  # paths whose last writer is remembered


@dataclass(frozen=True, slots=True)
class Writer:
    pid: int
    comm: str
    uid: int | None
    user: str

    def __str__(self) -> str:
        who = f"uid {self.uid} ({self.user})" if self.uid is not None else "uid unknown"
        return f"pid {self.pid} ({self.comm}), {who}"


def _process(pid: int) -> Writer:
    try:
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
        with open(f"/proc/{pid}/status") as f:
            uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
    except (OSError, StopIteration, ValueError):
        return Writer(pid, "exited", None, "")
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return Writer(pid, comm, uid, user)


class WriterLog:
    """The last writer of each file under the marked directories, read from a fanotify group."""

    def __init__(self) -> None:
        self.fd = -1
        self.error = ""
        self._last: OrderedDict[str, Writer] = OrderedDict()
        self._self = os.getpid()

    def open(self) -> bool:
        """Start a notification group; False (and ``error`` says why) when this process may not."""
        if os.geteuid() != 0:
            self.error = "not root"
            return False
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._mark = libc.fanotify_mark
        self._mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
        fd = int(libc.fanotify_init(_FAN_CLOEXEC | _FAN_NONBLOCK, os.O_RDONLY | os.O_LARGEFILE))
        if fd < 0:
            self.error = os.strerror(ctypes.get_errno())
            return False
        self.fd = fd
        return True

    def mark(self, directory: str) -> None:
        """Report writes to the files directly in ``directory``."""
        if self.fd >= 0 and self._mark(self.fd, _FAN_MARK_ADD, _FAN_MODIFY | _FAN_CLOSE_WRITE | _FAN_EVENT_ON_CHILD,
                                       _AT_FDCWD, os.fsencode(directory)) < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), directory)

    def read(self) -> None:
        """Drain the queued events (call when the fd is readable)."""
        while True:
            try:
                buf = os.read(self.fd, 64 * _META.size)
            except BlockingIOError:
                return
            off = 0
            while off + _META.size <= len(buf):
                event_len, _vers, _res, _mlen, _mask, fd, pid = _META.unpack_from(buf, off)
                off += max(event_len, _META.size)
                if fd < 0:
                    continue  # queue overflow: no file
                try:
                    path = os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    path = ""
                finally:
                    os.close(fd)
                if path and pid != self._self:
                    self._last[path] = _process(pid)
                    self._last.move_to_end(path)
                    while len(self._last) > _KEPT:
                        self._last.popitem(last=False)

    def last(self, path: str) -> Writer | None:
        return self._last.get(path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
