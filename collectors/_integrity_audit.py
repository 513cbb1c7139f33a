"""Who wrote a watched file, as the Linux audit log tells it (auditd, a watch such as ``-w PATH -p wa``).

fanotify reports a writer's pid, but a short-lived writer (``sed -i``, ``cp``, a shell redirection) has
exited before its command name and user can be read from /proc. The kernel's audit subsystem records
them in the syscall itself: a SYSCALL record (pid, uid, auid, comm, exe) and one PATH record per name
it touched, joined by the event's serial (``msg=audit(SECONDS.MILLIS:SERIAL)``). The log is read from
its end backwards, so finding the last writes costs a few KiB, not the whole file.

Format: the audit "raw" log as auditd writes it (``log_format = RAW`` or ``ENRICHED``, whose
interpreted fields follow an ASCII GS byte and are ignored here). An untrusted string (a file name,
comm, exe, cwd) is written in double quotes, or as upper-case hex when it holds a space, a quote, a
control or a non-ASCII byte, or ``(null)``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from mevwatch.collectors._integrity_writers import UNKNOWN, UNSET_UID, Writer, WriterLog, user_name

__all__ = ["AuditEvent", "AuditLog", "AuditTarget", "parse_events", "parse_record", "who_wrote"]

_HEADER = re.compile(r"type=(\S+) msg=audit\((\d+)\.(\d+):(\d+)\):\s?")
_HEX = re.compile(r"[0-9A-F]+")
_CHUNK = 64 << 10
# The log is read back at most this far: auditd's default max_log_file is 8 MiB.
_SCAN_LIMIT = 8 << 20
# Untrusted strings the kernel writes with audit_log_untrustedstring (hex when they need it).
_STRINGS = frozenset({"name", "comm", "exe", "cwd", "proctitle", "key"})


@dataclass(frozen=True, slots=True)
class Record:
    type: str
    time: float
    serial: int
    fields: dict[str, str]


def _value(key: str, raw: str) -> str:
    if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
        return raw[1:-1]
    if key in _STRINGS and len(raw) % 2 == 0 and _HEX.fullmatch(raw):
        return bytes.fromhex(raw).decode("utf-8", "surrogateescape")
    return raw


def parse_record(line: str) -> Record | None:
    """One log line, its untrusted strings decoded; None for a line that is not an audit record."""
    m = _HEADER.match(line)
    if m is None:
        return None
    body = line[m.end():].split("\x1d", 1)[0]
    fields: dict[str, str] = {}
    for token in body.split(" "):
        key, eq, raw = token.partition("=")
        if eq and key not in fields:
            fields[key] = _value(key, raw)
    millis = m.group(3)
    return Record(m.group(1), int(m.group(2)) + int(millis) / 10 ** len(millis), int(m.group(4)), fields)


@dataclass(slots=True)
class AuditEvent:
    """One audited syscall: who made it and the names it touched (absolute, resolved against its cwd)."""

    time: float
    serial: int
    pid: int | None = None
    uid: int | None = None
    auid: int | None = None
    comm: str = ""
    exe: str = ""
    success: str = ""
    cwd: str = ""
    # (absolute name or "", inode or None, device "major:minor" or "", nametype)
    items: list[tuple[str, int | None, str, str]] = field(default_factory=list)

    def add(self, rec: Record) -> None:
        f = rec.fields
        if rec.type == "SYSCALL":
            self.pid, self.uid, self.auid = _int(f.get("pid")), _int(f.get("uid")), _int(f.get("auid"))
            self.comm, self.exe, self.success = f.get("comm", ""), f.get("exe", ""), f.get("success", "")
        elif rec.type == "CWD":
            self.cwd = f.get("cwd", "")
        elif rec.type == "PATH":
            self.items.append((f.get("name", ""), _int(f.get("inode")), f.get("dev", ""), f.get("nametype", "")))

    def names(self) -> Iterator[tuple[str, int | None, str]]:
        """The objects the syscall touched (not their parent directories): (absolute name, inode, dev)."""
        for name, inode, dev, nametype in self.items:
            if nametype == "PARENT":
                continue
            if name in ("", "(null)"):
                yield "", inode, dev
            elif name.startswith("/"):
                yield os.path.normpath(name), inode, dev
            else:
                yield os.path.normpath(os.path.join(self.cwd or "/", name)), inode, dev

    @property
    def login_uid(self) -> int | None:
        return None if self.auid == UNSET_UID else self.auid


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def parse_events(lines: Iterable[str]) -> list[AuditEvent]:
    """Syscall events (those with a SYSCALL record) in the order of their serials."""
    events: dict[tuple[float, int], AuditEvent] = {}
    for line in lines:
        rec = parse_record(line)
        if rec is not None:
            ev = events.setdefault((rec.time, rec.serial), AuditEvent(rec.time, rec.serial))
            ev.add(rec)
    return sorted((e for e in events.values() if e.pid is not None), key=lambda e: (e.time, e.serial))


def _lines_backwards(path: str, limit: int) -> Iterator[str]:
    with open(path, "rb") as f:
        end = pos = f.seek(0, os.SEEK_END)
        carry = b""
        while pos > 0 and end - pos < limit:
            n = min(_CHUNK, pos)
            pos -= n
            f.seek(pos)
            lines = (f.read(n) + carry).split(b"\n")
            carry = lines[0]
            for line in reversed(lines[1:]):
                if line:
                    yield line.decode("utf-8", "surrogateescape")
        if carry and pos == 0:
            yield carry.decode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class AuditTarget:
    """A changed file to find the writer of: its name, its inode now (if it exists), the pid fanotify
    saw writing it (if any), and the earliest time the change can have happened."""

    path: str
    inode: int | None = None
    dev: str = ""
    pid: int | None = None
    not_before: float = 0.0

    def matches(self, ev: AuditEvent) -> bool:
        for name, inode, dev in ev.names():
            if name == self.path or (self.inode is not None and inode == self.inode and dev == self.dev):
                return True
        return False


def device(st_dev: int) -> str:
    """A device number as audit writes it (``fe:00``)."""
    return f"{os.major(st_dev):02x}:{os.minor(st_dev):02x}"


class AuditLog:
    """The audit log file auditd writes; ``find`` names the last audited writer of each target."""

    def __init__(self, path: str, scan_limit: int = _SCAN_LIMIT) -> None:
        self.path = path
        self.scan_limit = scan_limit

    def status(self) -> str:
        """"" when the log can be read, else why not ("no audit log", "audit log not readable")."""
        try:
            with open(self.path, "rb"):
                return ""
        except FileNotFoundError:
            return "no audit log"
        except OSError:
            return "audit log not readable"

    def find(self, targets: Iterable[AuditTarget]) -> dict[str, AuditEvent]:
        """The latest audited syscall on each target's file since its ``not_before``; one with the pid
        fanotify saw wins over a later one by another process."""
        todo = {t.path: t for t in targets}
        found: dict[str, AuditEvent] = {}
        fallback: dict[str, AuditEvent] = {}
        if not todo:
            return found
        oldest = min(t.not_before for t in todo.values())
        partial: dict[tuple[float, int], AuditEvent] = {}
        try:
            for line in _lines_backwards(self.path, self.scan_limit):
                rec = parse_record(line)
                if rec is None:
                    continue
                if rec.time < oldest:
                    break
                key = (rec.time, rec.serial)
                ev = partial.setdefault(key, AuditEvent(rec.time, rec.serial))
                ev.add(rec)
                if rec.type != "SYSCALL":
                    continue  # an event's SYSCALL record comes first: read backwards, it completes it
                del partial[key]
                for path, t in list(todo.items()):
                    if ev.time < t.not_before or not t.matches(ev):
                        continue
                    if t.pid is None or ev.pid == t.pid:
                        found[path] = ev
                        del todo[path]
                    else:
                        fallback.setdefault(path, ev)
                if not todo:
                    break
        except OSError:
            pass
        for path, ev in fallback.items():
            found.setdefault(path, ev)
        return found


# A change's audit record is in the log a few milliseconds after the syscall; wait this long for it.
AUDIT_WAIT = 1.0
_AUDIT_POLL = 0.05
# Audit stamps a syscall when it starts, the file's ctime when it changes the inode; allow for both.
_CTIME_SLACK = 2.0
_RECENT = 10.0


def writer_of(ev: AuditEvent) -> Writer:
    uid = ev.uid if ev.uid != UNSET_UID else None
    return Writer(ev.pid or 0, ev.comm or "?", uid, user_name(uid) if uid is not None else "", ev.login_uid, ev.exe)


def who_wrote(
    paths: Iterable[str],
    writers: WriterLog | None,
    audit: AuditLog | None,
    *,
    real: Callable[[str], str] = lambda p: p,
    since: float = 0.0,
    wait: float = AUDIT_WAIT,
) -> dict[str, str]:
    """What each changed file's page says about its writer (blocking: stats the files, reads the audit log).

    fanotify's writer when /proc told all about it; else the audit log's last write since the file's ctime
    (for a file that is gone: since ``since``), waiting up to ``wait`` seconds for the record to arrive;
    else the pid fanotify saw, or "unknown", with the reason the audit log could not tell."""
    told: dict[str, str] = {}
    targets: list[AuditTarget] = []
    seen: dict[str, Writer | None] = {}
    for path in paths:
        host = real(path)
        try:
            st = os.lstat(host)
        except OSError:
            st = None
        inode = (st.st_dev, st.st_ino) if st is not None else None
        writer = writers.last(host, inode) if writers is not None else None
        seen[path] = writer
        if writer is not None and writer.complete:
            told[path] = str(writer)
            continue
        targets.append(AuditTarget(
            host, st.st_ino if st is not None else None, device(st.st_dev) if st is not None else "",
            writer.pid if writer is not None else None,
            st.st_ctime - _CTIME_SLACK if st is not None else since,
        ))
    why = audit.status() if audit is not None else "no audit log"
    found: dict[str, AuditEvent] = {}
    if targets and audit is not None and not why:
        found = audit.find(targets)
        # only a change made just now can have a record still on its way to the log
        recent = time.time() - _RECENT
        late = [t for t in targets if t.path not in found and t.not_before >= recent]
        deadline = time.monotonic() + wait
        while late and time.monotonic() < deadline:
            time.sleep(_AUDIT_POLL)
            found.update(audit.find(late))
            late = [t for t in late if t.path not in found]
        why = "not in the audit log"
    by_host = {t.path: t for t in targets}
    for path, writer in seen.items():
        if path in told:
            continue
        ev = found.get(real(path)) if real(path) in by_host else None
        if ev is not None:
            told[path] = str(writer_of(ev))
        elif writer is not None and not writer.exited:
            told[path] = str(writer)  # what /proc told before the writer exited
        elif writer is not None:
            told[path] = f"{writer} ({why})"
        else:
            told[path] = f"{UNKNOWN} ({why})"
    return told
