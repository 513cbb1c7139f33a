"""Line patterns of the logwatch collector: built-in runbook patterns, user regexes, nginx parsing.

Everything here works on bytes (logs are not guaranteed UTF-8) and on whole chunks of complete
lines: a cheap substring scan finds candidate lines, the full check runs on those lines only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "BUILTIN_PATTERNS",
    "BUILTIN_SOURCES",
    "JOURNAL_SOURCE",
    "LinePattern",
    "NginxRecord",
    "compile_user_regex",
    "count_lines",
    "limit_line_length",
    "parse_nginx_combined",
]

JOURNAL_SOURCE = "journal"

#: Default file sources: name -> globs. The runbook greps exactly these files.
BUILTIN_SOURCES: dict[str, tuple[str, ...]] = {
    "auth": ("/var/log/auth.log",),
    "nginx_access": ("/var/log/nginx/access.log",),
    "mev": ("/var/log/mev/*.log",),
    "syslog": ("/var/log/syslog", "/var/log/kern.log"),
}


@dataclass(frozen=True, slots=True)
class LinePattern:
    """A named pattern counted once per matching line.

    ``literal``, when set, is a substring every matching line contains; it is searched with
    ``bytes.find`` (memchr speed) and ``regex`` is then checked on candidate lines only. Without
    it the regex itself scans the chunk. Each hit is re-checked on its own line, so a regex that
    could cross a newline (``\\s``, ``[^x]``) never counts across two lines.
    """

    name: str
    regex: re.Pattern[bytes]
    literal: bytes = b""
    #: sources the pattern applies to (names of file sources, or "journal")
    sources: tuple[str, ...] = ()
    description: str = ""

    def count(self, chunk: bytes) -> int:
        """Lines of ``chunk`` (complete lines, each ending in a newline) that match."""
        search = self.regex.search
        find = chunk.find
        rfind = chunk.rfind
        end = len(chunk)
        pos = 0
        n = 0
        if self.literal:
            lit = self.literal
            while True:
                i = find(lit, pos)
                if i < 0:
                    return n
                ls = rfind(b"\n", 0, i) + 1
                le = find(b"\n", i)
                if le < 0:
                    le = end
                if search(chunk, ls, le) is not None:
                    n += 1
                pos = le + 1
        while pos < end:
            m = search(chunk, pos)
            if m is None:
                return n
            s = m.start()
            if s >= end:
                return n
            ls = rfind(b"\n", 0, s) + 1
            le = find(b"\n", s)
            if le < 0:
                le = end
            # Authoritative check on the line alone (endpos hides the rest of the chunk).
            if search(chunk, ls, le) is not None:
                n += 1
            pos = le + 1
        return n


def compile_user_regex(regex: str, ignore_case: bool = False) -> re.Pattern[bytes]:
    """Compile a configured regex for matching on raw log bytes; ValueError says what is wrong."""
    if not regex:
        raise ValueError("regex must not be empty")
    try:
        raw = regex.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("regex is not valid UTF-8 text") from None
    flags = re.MULTILINE | (re.IGNORECASE if ignore_case else 0)
    try:
        compiled = re.compile(raw, flags)
    except re.error as exc:
        where = f" at position {exc.pos}" if exc.pos is not None else ""
        raise ValueError(f"invalid regex {regex!r}: {exc.msg}{where}") from None
    if compiled.search(b"") is not None:
        raise ValueError(f"regex {regex!r} matches the empty line, so it would count every line")
    return compiled


def _rx(pattern: bytes) -> re.Pattern[bytes]:
    return re.compile(pattern, re.MULTILINE)


# nginx's combined format; nginx escapes '"' inside fields as \x22, older versions as \".
_QUOTED = rb'"((?:[^"\\\n]|\\.)*)"'
_NGINX_COMBINED = re.compile(
    rb"^(\S+) \S+ (\S+) \[([^\]\n]*)\] " + _QUOTED + rb" (\d{3}) (\d+|-) " + _QUOTED + rb" " + _QUOTED
)


class NginxRecord(NamedTuple):
    remote_addr: bytes
    remote_user: bytes
    time_local: bytes
    request: bytes
    status: int
    body_bytes_sent: int
    referer: bytes
    user_agent: bytes


def parse_nginx_combined(line: bytes) -> NginxRecord | None:
    """Fields of one nginx ``combined`` access-log line, or None when it is not in that format."""
    m = _NGINX_COMBINED.match(line)
    if m is None:
        return None
    size = m.group(6)
    return NginxRecord(
        m.group(1), m.group(2), m.group(3), m.group(4), int(m.group(5)),
        0 if size == b"-" else int(size), m.group(7), m.group(8),
    )


def _nginx_status_regex(status: int) -> re.Pattern[bytes]:
    # Same shape as _NGINX_COMBINED but with the status fixed: the request and size fields are
    # consumed by position, so a 401 in the URL, the size or the user agent never counts.
    return _rx(
        rb"^\S+ \S+ \S+ \[[^\]\n]*\] " + _QUOTED + rb" " + str(status).encode() + rb" (?:\d+|-) "
        + _QUOTED + rb" " + _QUOTED
    )


_WORD = rb"(?<![A-Za-z0-9_])"
_END = rb"(?![A-Za-z0-9_])"

BUILTIN_PATTERNS: tuple[LinePattern, ...] = (
    LinePattern(
        "sshd_failed_password",
        _rx(rb"sshd\[\d+\]: Failed password for (?:invalid user )?\S* from \S+"),
        literal=b"Failed password for ",
        sources=("auth",),
        description="sshd rejected a password (runbook: Security Incidents)",
    ),
    LinePattern(
        "sshd_invalid_user",
        _rx(rb"sshd\[\d+\]: Invalid user \S* ?from \S+"),
        literal=b"Invalid user ",
        sources=("auth",),
        description="ssh login attempt for a user that does not exist",
    ),
    LinePattern(
        "nginx_status_401",
        _nginx_status_regex(401),
        literal=b'" 401 ',
        sources=("nginx_access",),
        description="nginx answered 401 Unauthorized (status field of the combined format)",
    ),
    LinePattern(
        "nginx_status_403",
        _nginx_status_regex(403),
        literal=b'" 403 ',
        sources=("nginx_access",),
        description="nginx answered 403 Forbidden (status field of the combined format)",
    ),
    LinePattern(
        "error",
        _rx(_WORD + rb"ERROR" + _END),
        literal=b"ERROR",
        sources=("mev", JOURNAL_SOURCE),
        description="ERROR lines of the MEV services (runbook: Strategy Execution Errors)",
    ),
    LinePattern(
        "warning",
        _rx(_WORD + rb"WARN(?:ING)?" + _END),
        literal=b"WARN",
        sources=("mev", JOURNAL_SOURCE),
        description="WARN/WARNING lines of the MEV services",
    ),
    LinePattern(
        "no_space_left",
        _rx(rb"No space left on device"),
        literal=b"No space left on device",
        sources=("mev", "syslog", "nginx_access", JOURNAL_SOURCE),
        description="ENOSPC reported by a program (runbook: Disk Space Exhaustion)",
    ),
    LinePattern(
        "oom_killed_process",
        _rx(rb"Killed process \d+"),
        literal=b"Killed process ",
        sources=("syslog", JOURNAL_SOURCE),
        description="the kernel OOM killer killed a process",
    ),
)


def count_lines(chunk: bytes) -> int:
    return chunk.count(b"\n")


_WINDOW_FACTOR = 2


def limit_line_length(chunk: bytes, max_line: int) -> tuple[bytes, int]:
    """``chunk`` with every line longer than ``max_line`` bytes cut to ``max_line``; and how many were cut.

    A line longer than ``max_line`` spans a whole aligned window of ``max_line // 2`` bytes, so
    when every such window holds a newline (the usual case, a few ``find`` calls per MiB) no line
    is too long and the chunk is returned as is.
    """
    window = max(max_line // _WINDOW_FACTOR, 1)
    find = chunk.find
    size = len(chunk)
    for start in range(0, size, window):
        if find(b"\n", start, start + window) < 0 and start + window <= size:
            break
    else:
        return chunk, 0
    lines: Sequence[bytes] = chunk.split(b"\n")
    cut = 0
    out = []
    for line in lines:
        if len(line) > max_line:
            out.append(line[:max_line])
            cut += 1
        else:
            out.append(line)
    return b"\n".join(out), cut
