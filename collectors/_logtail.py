"""Following log files by glob for logwatch: rotation, truncation, new files, offsets kept in the state DB.

Files are followed by (device, inode), not by name, so a rename keeps the reader on the same
file: a rotated-away file is drained until it has been idle for ``rotate_wait``, while the new
file at the old name is read from its start. A copy-truncate is recognised by the file shrinking
or its first bytes changing; the lines written between the last read and the copy are then read
from the copy (``access.log.1``), found by the bytes just before the old offset.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import structlog

from mevwatch.collectors._logmatch import LinePattern, limit_line_length
from mevwatch.collectors.base import StateError, StateStore

__all__ = ["MIGRATIONS", "STATE_COMPONENT", "FileSource", "LogTailer", "SourceStats", "Status"]

log = structlog.get_logger("mevwatch.collector.logwatch")

READ_CHUNK = 1 << 20
FINGERPRINT = 64
#: files a rotated-away copy is looked for among (the rest of a copytruncate window)
MAX_COPY_CANDIDATES = 64
_COMPRESSED = (".gz", ".xz", ".bz2", ".zst", ".lz4", ".Z", ".zip")

MIGRATIONS = [
    """
    CREATE TABLE logwatch_files (
        instance TEXT NOT NULL, dev INTEGER NOT NULL, ino INTEGER NOT NULL, path TEXT NOT NULL,
        pos INTEGER NOT NULL, head BLOB NOT NULL, updated REAL NOT NULL,
        PRIMARY KEY (instance, dev, ino));
    CREATE TABLE logwatch_journal (instance TEXT PRIMARY KEY, cursor TEXT NOT NULL, updated REAL NOT NULL)
    """,
    # the bytes before the saved offset: after a restart, the copy of a copytruncate is found by them
    "ALTER TABLE logwatch_files ADD COLUMN tail BLOB NOT NULL DEFAULT x''",
]
STATE_COMPONENT = "logwatch"
Status = Literal["ok", "missing", "unreadable"]
Key = tuple[int, int]


@dataclass(frozen=True, slots=True)
class FileSource:
    name: str
    globs: tuple[str, ...]
    patterns: tuple[LinePattern, ...]


@dataclass(slots=True)
class SourceStats:
    """Counters of one source since this process started (the supervisor exports them as is)."""

    lines: int = 0
    bytes: int = 0
    truncated: int = 0
    read_errors: int = 0
    files: int = 0
    status: Status = "missing"
    reason: str = "no file matches"
    rotations: Counter[str] = field(default_factory=Counter)
    matches: dict[str, int] = field(default_factory=dict)

    def copy(self) -> SourceStats:
        """A copy that later counting does not change (a fifth of deepcopy's cost, every pass)."""
        return replace(self, rotations=Counter(self.rotations), matches=dict(self.matches))


@dataclass(slots=True)
class _Followed:
    key: Key
    path: str
    fd: int
    pos: int  # bytes consumed from the file (the carry is part of them)
    head: bytes
    sources: tuple[str, ...]
    plan: tuple[tuple[LinePattern, tuple[str, ...]], ...]
    carry: bytes = b""
    skipping: bool = False  # inside an over-long line whose first part was already counted
    tail: bytes = b""  # last bytes consumed, to recognise the copy after a copytruncate
    gone_since: float | None = None
    last_growth: float = 0.0
    saved_pos: int = -1

    @property
    def committed(self) -> int:
        """Offset of the end of the last complete line: where a restart resumes."""
        return self.pos if self.skipping else self.pos - len(self.carry)


@dataclass(frozen=True, slots=True)
class _Row:
    path: str
    pos: int
    head: bytes
    tail: bytes


class LogTailer:
    """Synchronous follower of every file of a set of sources; one ``poll()`` is one pass.

    ``poll`` runs in the blocking pool; a lock keeps an abandoned (timed-out) pass and the next
    one from running at the same time.
    """

    def __init__(
        self,
        sources: Sequence[FileSource],
        *,
        instance: str = "default",
        state: StateStore | None = None,
        rootfs: Path = Path("/"),
        start_at: Literal["end", "beginning"] = "end",
        max_line: int = 64 * 1024,
        max_bytes_per_pass: int = 16 << 20,
        rotate_wait: float = 5.0,
        max_files_per_source: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sources = {s.name: s for s in sources}
        self.instance = instance
        self.state = state
        self.rootfs = rootfs
        self.start_at = start_at
        self.max_line = max_line
        self.max_bytes_per_pass = max_bytes_per_pass
        self.rotate_wait = rotate_wait
        self.max_files_per_source = max_files_per_source
        self.clock = clock
        self.stats: dict[str, SourceStats] = {
            s.name: SourceStats(matches={p.name: 0 for p in s.patterns}) for s in sources
        }
        self._followed: dict[Key, _Followed] = {}
        self._path_errors: dict[str, str] = {}
        self._rows: dict[Key, _Row] | None = None
        self._first_scan = True
        self._lock = threading.Lock()
        self._rr = 0
        # where a change can show: each glob's directory before its first wildcard, and after each pass
        # the directories of the files followed (logwatch watches them with inotify)
        self._glob_dirs = frozenset(_glob_dir(self._rooted(g)) for s in sources for g in s.globs)
        self.directories: frozenset[str] = self._glob_dirs

    # --- state DB --------------------------------------------------------------------

    def _load_rows(self) -> dict[Key, _Row]:
        if self.state is None:
            return {}
        self.state.migrate(STATE_COMPONENT, MIGRATIONS)
        rows = self.state.query(
            "SELECT dev, ino, path, pos, head, tail FROM logwatch_files WHERE instance = ?", (self.instance,)
        )
        return {(int(d), int(i)): _Row(str(p), int(o), bytes(h), bytes(t)) for d, i, p, o, h, t in rows}

    def _save(self) -> None:
        if self.state is None:
            return
        changed = [f for f in self._followed.values() if f.committed != f.saved_pos]
        if not changed:
            return
        now = time.time()
        try:
            with self.state.transaction() as db:
                db.executemany(
                    "INSERT INTO logwatch_files(instance, dev, ino, path, pos, head, tail, updated) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(instance, dev, ino) DO UPDATE SET "
                    "path = excluded.path, pos = excluded.pos, head = excluded.head, tail = excluded.tail, "
                    "updated = excluded.updated",
                    [
                        (self.instance, f.key[0], f.key[1], f.path, f.committed, f.head, _committed_tail(f), now)
                        for f in changed
                    ],
                )
        except StateError as exc:
            log.warning("logwatch_state_write_failed", instance=self.instance, error=str(exc))
            return
        for f in changed:
            f.saved_pos = f.committed

    def _forget(self, key: Key) -> None:
        if self.state is None:
            return
        try:
            self.state.execute(
                "DELETE FROM logwatch_files WHERE instance = ? AND dev = ? AND ino = ?", (self.instance, *key)
            )
        except StateError as exc:
            log.warning("logwatch_state_write_failed", instance=self.instance, error=str(exc))

    # --- one pass --------------------------------------------------------------------

    def poll(self) -> tuple[bool, dict[str, SourceStats]] | None:
        """Scan the globs and read what is new, up to the byte budget.

        Returns (more data is waiting, a copy of the stats), or None when a previous pass is
        still running.
        """
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self._rows is None:
                self._rows = self._load_rows()
            present = self._scan()
            if self._first_scan:
                self._recover_rotated(present)
            more = self._read_all()
            self._retire_idle(present)
            self._save()
            self.directories = self._glob_dirs | {os.path.dirname(f.path) for f in self._followed.values()}
            self._first_scan = False
            return more, {name: st.copy() for name, st in self.stats.items()}
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            self._save()
            for f in self._followed.values():
                _close_fd(f.fd)
            self._followed.clear()

    def _rooted(self, pattern: str) -> str:
        if str(self.rootfs) != "/":
            return os.path.join(self.rootfs, pattern.lstrip("/"))
        return pattern

    def _glob(self, pattern: str) -> list[str]:
        if not glob.has_magic(pattern):
            # A plain path is stat()ed as is, so a directory we may not enter reads as unreadable.
            return [self._rooted(pattern)]
        # Compressed rotations are history, and binary: never followed even when a glob matches them.
        found = glob.glob(self._rooted(pattern), recursive=True)
        return sorted(p for p in found if not p.endswith(_COMPRESSED))

    def _scan(self) -> set[Key]:
        """Follow every file the globs match now; returns the keys of those files."""
        present: set[Key] = set()
        errors: dict[str, str] = {}
        for src in self.sources.values():
            st_src = self.stats[src.name]
            files = 0
            bad: list[str] = []
            paths: list[str] = []
            for g in src.globs:
                paths.extend(p for p in self._glob(g) if p not in paths)
            for path in paths[: self.max_files_per_source]:
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    errors[path] = exc.strerror or str(exc)
                    bad.append(path)
                    continue
                if not stat.S_ISREG(st.st_mode):
                    errors[path] = "not a regular file"
                    bad.append(path)
                    continue
                key = (st.st_dev, st.st_ino)
                f = self._followed.get(key)
                if f is None:
                    try:
                        f = self._open(path, key, st)
                    except OSError as exc:
                        errors[path] = exc.strerror or str(exc)
                        bad.append(path)
                        continue
                    self._followed[key] = f
                elif f.path != path:
                    f.path = path  # renamed, still matched by a glob: same file, same reader
                if src.name not in f.sources:
                    self._attach(f, src.name)
                f.gone_since = None
                present.add(key)
                files += 1
            st_src.files = files
            for path in bad:
                if self._path_errors.get(path) != errors[path]:
                    st_src.read_errors += 1
            if bad:
                st_src.status, st_src.reason = "unreadable", f"{bad[0]}: {errors[bad[0]]}"
            elif files:
                st_src.status, st_src.reason = "ok", ""
            else:
                st_src.status, st_src.reason = "missing", "no file matches " + ", ".join(src.globs)
        for path, reason in errors.items():
            if self._path_errors.get(path) != reason:
                log.warning("logwatch_file_unreadable", instance=self.instance, path=path, error=reason)
        self._path_errors = errors
        return present

    def _attach(self, f: _Followed, source: str) -> None:
        f.sources = (*f.sources, source)
        plan: dict[str, tuple[LinePattern, list[str]]] = {}
        for name in f.sources:
            for p in self.sources[name].patterns:
                plan.setdefault(p.name, (p, []))[1].append(name)
        f.plan = tuple((p, tuple(names)) for p, names in plan.values())

    def _open(self, path: str, key: Key, st: os.stat_result) -> _Followed:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            rows = self._rows or {}
            row = rows.get(key)
            if row is not None:
                # Followed before the restart: resume there. If it was truncated (or the inode now
                # holds another file), the first read sees the head differ and restarts at 0,
                # after reading the rest from a copytruncate copy when there is one.
                f = _Followed(key, path, fd, row.pos, row.head, (), (), last_growth=self.clock())
                f.tail = row.tail
                f.saved_pos = row.pos
                return f
            pos = 0
            if self._first_scan and self.start_at == "end" and not any(r.path == path for r in rows.values()):
                pos = st.st_size  # first sight of this log: its history is not news
            # any other file is new since we last looked (rotation, restart after a rotation)
            head = os.pread(fd, FINGERPRINT, 0)
            tail = os.pread(fd, min(FINGERPRINT, pos), pos - min(FINGERPRINT, pos)) if pos else b""
        except OSError:
            _close_fd(fd)
            raise
        f = _Followed(key, path, fd, pos, head, (), (), last_growth=self.clock())
        f.tail = tail
        return f

    def _recover_rotated(self, present: set[Key]) -> None:
        """After a restart: drain the rest of files rotated away while mevwatch was down."""
        for key, row in (self._rows or {}).items():
            if key in present:
                continue
            found = _find_inode(os.path.dirname(row.path), key)
            if found is None:
                self._forget(key)
                continue
            try:
                fd = os.open(found, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                self._forget(key)
                continue
            try:
                head = os.pread(fd, FINGERPRINT, 0)
                tail = os.pread(fd, min(FINGERPRINT, row.pos), row.pos - min(FINGERPRINT, row.pos))
            except OSError:
                head = tail = b""
            if not head or not head.startswith(row.head):
                _close_fd(fd)
                self._forget(key)
                continue
            f = _Followed(key, found, fd, row.pos, head, (), (), gone_since=self.clock(), last_growth=self.clock())
            f.saved_pos = row.pos
            f.tail = tail
            for name, src in self.sources.items():
                if any(fnmatch.fnmatchcase(row.path, self._rooted(g)) for g in src.globs):
                    self._attach(f, name)
            if f.sources:
                self._followed[key] = f
                log.info("logwatch_draining_rotated", instance=self.instance, path=found, pos=row.pos)
            else:
                _close_fd(fd)
                self._forget(key)

    def _read_all(self) -> bool:
        budget = self.max_bytes_per_pass
        files = list(self._followed.values())
        if not files:
            return False
        self._rr = (self._rr + 1) % len(files)
        more = False
        for f in files[self._rr :] + files[: self._rr]:
            if budget <= 0:
                more = True
                break
            try:
                budget, left = self._read_file(f, budget)
            except OSError as exc:
                for name in f.sources:
                    self.stats[name].read_errors += 1
                log.warning("logwatch_read_failed", instance=self.instance, path=f.path, error=str(exc))
                continue
            more = more or left
        return more

    def _read_file(self, f: _Followed, budget: int) -> tuple[int, bool]:
        size = os.fstat(f.fd).st_size
        current = os.pread(f.fd, len(f.head), 0) if f.head else b""
        if size < f.committed or current != f.head:
            self._truncated(f)
            size = os.fstat(f.fd).st_size
        if len(f.head) < FINGERPRINT and size > len(f.head):
            f.head = os.pread(f.fd, FINGERPRINT, 0)
        while f.pos < size and budget > 0:
            data = os.pread(f.fd, min(READ_CHUNK, budget, size - f.pos), f.pos)
            if not data:
                break
            f.pos += len(data)
            budget -= len(data)
            f.last_growth = self.clock()
            self._feed(f, data)
        return budget, f.pos < size

    def _truncated(self, f: _Followed) -> None:
        """The file was truncated in place (copytruncate, ``: > file``): finish from the copy, restart at 0."""
        copied = self._find_copy(f)
        if copied is not None:
            path, fd = copied
            try:
                size = os.fstat(fd).st_size
                while f.pos < size:
                    data = os.pread(fd, min(READ_CHUNK, size - f.pos), f.pos)
                    if not data:
                        break
                    f.pos += len(data)
                    self._feed(f, data)
            finally:
                _close_fd(fd)
            log.info("logwatch_copytruncate_recovered", instance=self.instance, path=f.path, copy=path)
        self._feed(f, b"", final=True)
        for name in f.sources:
            self.stats[name].rotations["truncate"] += 1
        f.pos = 0
        f.carry = b""
        f.skipping = False
        f.tail = b""
        f.head = os.pread(f.fd, FINGERPRINT, 0)

    def _find_copy(self, f: _Followed) -> tuple[str, int] | None:
        if f.pos == 0:
            return None
        directory, base = os.path.split(f.path)
        try:
            names = sorted(os.listdir(directory or "."))
        except OSError:
            return None
        checked = 0
        for name in names:
            if name == base or not name.startswith(base) or name.endswith(_COMPRESSED):
                continue
            checked += 1
            if checked > MAX_COPY_CANDIDATES:
                break
            path = os.path.join(directory, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                if (
                    stat.S_ISREG(st.st_mode)
                    and (st.st_dev, st.st_ino) != f.key
                    and st.st_size >= f.pos
                    and os.pread(fd, len(f.head), 0) == f.head
                    and os.pread(fd, len(f.tail), f.pos - len(f.tail)) == f.tail
                ):
                    return path, fd
            except OSError:
                pass
            _close_fd(fd)
        return None

    def _retire_idle(self, present: set[Key]) -> None:
        now = self.clock()
        for key, f in list(self._followed.items()):
            if key in present:
                continue
            if f.gone_since is None:
                f.gone_since = now
                for name in f.sources:
                    self.stats[name].rotations["rename"] += 1
            if now - f.gone_since >= self.rotate_wait and now - f.last_growth >= self.rotate_wait:
                try:
                    if f.pos >= os.fstat(f.fd).st_size:
                        self._feed(f, b"", final=True)
                    else:
                        continue  # still has data (budget ran out): not idle
                except OSError:
                    pass
                _close_fd(f.fd)
                del self._followed[key]
                self._forget(key)

    # --- lines -----------------------------------------------------------------------

    def _feed(self, f: _Followed, data: bytes, final: bool = False) -> None:
        buf = f.carry + data if f.carry else data
        if len(data) >= FINGERPRINT:
            f.tail = data[-FINGERPRINT:]  # never concatenate a whole chunk just to keep its end
        elif data:
            f.tail = (f.tail + data)[-FINGERPRINT:]
        cut = 0
        if f.skipping:
            nl = buf.find(b"\n")
            if nl < 0:
                f.carry = b""
                if final:
                    f.skipping = False
                return
            buf = buf[nl + 1 :]
            f.skipping = False
        last = buf.rfind(b"\n")
        complete = buf[: last + 1]
        rest = buf[last + 1 :]
        if len(rest) > self.max_line:
            complete += rest[: self.max_line] + b"\n"
            rest = b""
            cut = 1
            f.skipping = not final
        elif final and rest:
            complete += rest + b"\n"
            rest = b""
        f.carry = rest
        if complete:
            self._count(f, complete, cut)

    def _count(self, f: _Followed, complete: bytes, cut: int) -> None:
        chunk, n_cut = limit_line_length(complete, self.max_line)
        n_cut += cut
        lines = chunk.count(b"\n")
        size = len(complete)
        for name in f.sources:
            st = self.stats[name]
            st.lines += lines
            st.bytes += size
            st.truncated += n_cut
        for pattern, names in f.plan:
            hits = pattern.count(chunk)
            if hits:
                for name in names:
                    self.stats[name].matches[pattern.name] += hits


def _committed_tail(f: _Followed) -> bytes:
    """The bytes just before the committed offset (``tail`` ends at the read offset, past the carry)."""
    if not f.carry or f.skipping:
        return f.tail
    start = max(f.committed - FINGERPRINT, 0)
    try:
        return os.pread(f.fd, f.committed - start, start)
    except OSError:
        return b""


def _find_inode(directory: str, key: Key) -> str | None:
    try:
        with os.scandir(directory or ".") as it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) == key and stat.S_ISREG(st.st_mode):
                    return entry.path
    except OSError:
        return None
    return None


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _glob_dir(pattern: str) -> str:
    """The directory of a glob before its first wildcard: /var/log for /var/log/*.log and /var/log/syslog,
    /var/log for /var/log/**/x.log, /srv for /srv/*/logs/x.log."""
    parts = pattern.split("/")
    for i, part in enumerate(parts[:-1]):
        if glob.has_magic(part):
            return "/".join(parts[:i]) or "/"
    return os.path.dirname(pattern) or "/"
