"""Who wrote a watched file: fanotify tells a privileged listener the writer's pid (Linux, as root).

inotify says that a file changed, never by whom. A fanotify notification group marked on the watched
directories (FAN_MODIFY and FAN_CLOSE_WRITE of their children) reports the pid of every writer; its
command name and user are read from /proc at once, while the writer most likely still runs. A writer
that has already exited (``sed -i`` takes a millisecond) keeps only its pid; the audit log may know the
rest. Writers are remembered by path and by inode, so a file replaced by a rename (``sed -i``, editors)
is attributed to whoever wrote the temporary file that became it. Without the privilege (not root, or
no fanotify) nothing is attributed here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pwd
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["UNKNOWN", "Writer", "WriterLog"]

UNKNOWN = "unknown"
UNSET_UID = 4294967295  # (uid_t)-1: no login uid (a daemon, or started before any login)
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
    # who logged in (kept through su and sudo; None when unset) and the program file
    login_uid: int | None = None
    exe: str = ""

    @property
    def exited(self) -> bool:
        return self.uid is None

    @property
    def complete(self) -> bool:
        """Read whole from /proc: a writer that exited while being read lacks its program."""
        return self.uid is not None and bool(self.exe)

    def __str__(self) -> str:
        who = f"uid {self.uid} ({self.user})" if self.uid is not None else "uid unknown"
        text = f"pid {self.pid} ({self.comm}), {who}"
        if self.login_uid is not None:
            text += f", login uid {self.login_uid} ({user_name(self.login_uid)})"
        if self.exe:
            text += f", {self.exe}"
        return text


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _process(pid: int) -> Writer:
    try:
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
        with open(f"/proc/{pid}/status") as f:
            uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
    except (OSError, StopIteration, ValueError):
        return Writer(pid, "exited", None, "")
    try:
        with open(f"/proc/{pid}/loginuid") as f:
            login = int(f.read())
        exe = os.readlink(f"/proc/{pid}/exe")
    except (OSError, ValueError):  # exited meanwhile: what was read still holds
        login, exe = UNSET_UID, ""
    return Writer(pid, comm, uid, user_name(uid), None if login == UNSET_UID else login, exe)


class WriterLog:
    """The last writer of each file under the marked directories, read from a fanotify group.

    ``read`` runs on the event loop, ``last`` in the blocking pool: a lock keeps the two apart."""

    def __init__(self) -> None:
        self.fd = -1
        self.error = ""
        self._last: OrderedDict[str | tuple[int, int], Writer] = OrderedDict()
        self._lock = threading.Lock()
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
                    if pid == self._self:
                        continue
                    path = os.readlink(f"/proc/self/fd/{fd}")
                    st = os.fstat(fd)
                except OSError:
                    continue
                finally:
                    os.close(fd)
                self._remember(path, (st.st_dev, st.st_ino), _process(pid))

    def _remember(self, path: str, inode: tuple[int, int], writer: Writer) -> None:
        with self._lock:
            for key in (path, inode):
                self._last[key] = writer
                self._last.move_to_end(key)
            while len(self._last) > 2 * _KEPT:
                self._last.popitem(last=False)

    def last(self, path: str, inode: tuple[int, int] | None = None) -> Writer | None:
        """The last writer of the file now at ``path`` (its inode, if given, first: a file renamed
        into place was written under another name)."""
        with self._lock:
            return (self._last.get(inode) if inode is not None else None) or self._last.get(path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
