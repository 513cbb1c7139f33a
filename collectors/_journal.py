"""The journal source of logwatch: ``journalctl -f -o json`` with its cursor kept in the state DB.

Only the journal's MESSAGE field is matched. The first run starts at the end of the journal; later
runs resume after the saved cursor, so a restart neither recounts nor misses entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

from mevwatch.aio import wait_for
from mevwatch.collectors._logmatch import LinePattern, limit_line_length
from mevwatch.collectors._logtail import MIGRATIONS, STATE_COMPONENT, SourceStats, Status
from mevwatch.collectors.base import StateError, StateStore

__all__ = [
    "JOURNALD_SOCKET", "PRIORITY_ERR_PATTERN", "JournalFollower", "journal_available", "parse_journal_entry",
    "parse_journal_record",
]

log = structlog.get_logger("mevwatch.collector.logwatch")

JOURNALD_SOCKET = "run/systemd/journal/socket"
STREAM_LIMIT = 16 << 20
RETRY_SECONDS = 10.0
PRIORITY_ERR = 3  # syslog "err"; 0-2 (emerg, alert, crit) are worse and count too
#: the journal's entries at err priority or worse, counted whatever their words (the runbook's journalctl -p err)
PRIORITY_ERR_PATTERN = "priority_err"
CURSOR_SAVE_SECONDS = 1.0


def parse_journal_entry(line: bytes) -> tuple[str, bytes] | None:
    """(cursor, message) of one ``journalctl -o json`` line; None when it is not a journal entry.

    MESSAGE is a string, an array of byte values (binary or invalid UTF-8), or null.
    """
    record = parse_journal_record(line)
    return None if record is None else (record[0], record[1])


def parse_journal_record(line: bytes) -> tuple[str, bytes, int | None] | None:
    """(cursor, message, syslog priority 0..7 or None) of one ``journalctl -o json`` line."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    cursor = entry.get("__CURSOR")
    if not isinstance(cursor, str) or not cursor:
        return None
    msg = entry.get("MESSAGE")
    if isinstance(msg, str):
        data = msg.encode("utf-8", "surrogateescape")
    elif isinstance(msg, list) and all(isinstance(b, int) and 0 <= b < 256 for b in msg):
        data = bytes(msg)
    else:
        data = b""
    raw = entry.get("PRIORITY")
    priority = int(raw) if isinstance(raw, str) and raw.isdigit() and int(raw) <= 7 else None
    return cursor, data.replace(b"\n", b" "), priority


def journal_available(journalctl: str, rootfs: Path) -> tuple[str | None, str]:
    """(path of journalctl, "") when the journal can be followed, else (None, why not)."""
    exe = journalctl if os.path.isabs(journalctl) and os.access(journalctl, os.X_OK) else shutil.which(journalctl)
    if exe is None:
        return None, f"{journalctl} not found"
    if not (rootfs / JOURNALD_SOCKET).exists():
        return None, f"journald is not running (no {rootfs / JOURNALD_SOCKET})"
    return exe, ""


class JournalFollower:
    """Runs ``journalctl -f`` until cancelled, restarting it when it exits; counts into ``stats``."""

    def __init__(
        self,
        patterns: Sequence[LinePattern],
        *,
        instance: str = "default",
        state: StateStore | None = None,
        journalctl: str = "journalctl",
        units: Sequence[str] = (),
        rootfs: Path = Path("/"),
        max_line: int = 64 * 1024,
        retry: float = RETRY_SECONDS,
    ) -> None:
        self.patterns = tuple(patterns)
        self.instance = instance
        self.state = state
        self.journalctl = journalctl
        self.units = tuple(units)
        self.rootfs = rootfs
        self.max_line = max_line
        self.retry = retry
        self.stats = SourceStats(matches={**{p.name: 0 for p in patterns}, PRIORITY_ERR_PATTERN: 0})
        #: set when the stats may have moved (an entry counted, a status set): logwatch, which passes over
        #: its files on inotify's word, passes then too, so the journal's figures go out within an interval
        self.moved = asyncio.Event()
        self.cursor: str | None = None
        self._saved: str | None = None
        self._last_save = 0.0
        if state is not None:
            state.migrate(STATE_COMPONENT, MIGRATIONS)
            rows = state.query("SELECT cursor FROM logwatch_journal WHERE instance = ?", (instance,))
            self.cursor = self._saved = str(rows[0][0]) if rows else None

    def argv(self, exe: str) -> list[str]:
        args = [exe, "--follow", "--output=json", "--no-pager"]
        if self.cursor:
            args += [f"--after-cursor={self.cursor}", "--no-tail"]
        else:
            args.append("--lines=0")  # first run: the history is not news
        for unit in self.units:
            args.append(f"--unit={unit}")
        return args

    def _set_status(self, status: Status, reason: str) -> None:
        st = self.stats
        if (st.status, st.reason) != (status, reason):
            log.info("logwatch_journal_status", instance=self.instance, status=status, reason=reason)
            self.moved.set()
        st.status, st.reason = status, reason

    async def run(self) -> None:
        while True:
            exe, why = journal_available(self.journalctl, self.rootfs)
            if exe is None:
                self._set_status("missing", why)
                await asyncio.sleep(self.retry)
                continue
            await self._follow(exe)
            await asyncio.sleep(self.retry)

    async def _follow(self, exe: str) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv(exe), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, limit=STREAM_LIMIT,
            )
        except OSError as exc:
            self._set_status("unreadable", f"cannot start {exe}: {exc.strerror or exc}")
            self.stats.read_errors += 1
            self.moved.set()
            return
        assert proc.stdout is not None
        assert proc.stderr is not None
        self._set_status("ok", "")
        self.stats.files = 1
        ended = False
        try:
            while True:
                try:
                    line = await proc.stdout.readline()
                except ValueError:  # one entry over STREAM_LIMIT: resume after the last good cursor
                    self.stats.read_errors += 1
                    break
                if not line:
                    ended = True
                    break
                self.feed(line)
        finally:
            if ended:  # journalctl closed its output: let it exit with its own status
                with contextlib.suppress(TimeoutError):
                    await wait_for(proc.wait(), 2.0)
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            err = b""
            with contextlib.suppress(Exception):
                err = await wait_for(proc.stderr.read(4096), 1.0)
            with contextlib.suppress(Exception):
                await wait_for(proc.wait(), 2.0)
            self.stats.files = 0
            self.save_cursor(force=True)
        text = err.decode("utf-8", "replace").strip().splitlines()
        self._set_status("unreadable", f"journalctl exited with {proc.returncode}: {text[-1] if text else ''}")
        self.stats.read_errors += 1
        self.moved.set()

    def feed(self, line: bytes) -> None:
        """Count one ``journalctl -o json`` line."""
        entry = parse_journal_record(line)
        if entry is None:
            return
        self.cursor, message, priority = entry
        chunk, cut = limit_line_length(message + b"\n", self.max_line)
        st = self.stats
        st.lines += 1
        st.bytes += len(message)
        st.truncated += cut
        for p in self.patterns:
            if p.count(chunk):
                st.matches[p.name] += 1
        if priority is not None and priority <= PRIORITY_ERR:  # what `journalctl -p err` shows
            st.matches[PRIORITY_ERR_PATTERN] += 1
        self.moved.set()
        self.save_cursor()

    def save_cursor(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.state is None or self.cursor is None or self.cursor == self._saved:
            return
        if not force and now - self._last_save < CURSOR_SAVE_SECONDS:
            return
        try:
            self.state.execute(
                "INSERT INTO logwatch_journal(instance, cursor, updated) VALUES (?, ?, ?) "
                "ON CONFLICT(instance) DO UPDATE SET cursor = excluded.cursor, updated = excluded.updated",
                (self.instance, self.cursor, time.time()),
            )
        except StateError as exc:
            log.warning("logwatch_state_write_failed", instance=self.instance, error=str(exc))
            return
        self._saved = self.cursor
        self._last_save = now

