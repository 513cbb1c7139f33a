"""The integrity baseline in the state DB: records per collector instance, an optional HMAC, and the accept log.

Paths are stored losslessly: a name that is not UTF-8 is kept as its bytes (a BLOB).
An HMAC (key from a file the daemon can read but an attacker editing the DB should not) covers every
baseline row, so a row changed in the DB to match a tampered file shows as ``tampered``.
"""

from __future__ import annotations

import hmac
import json
import os
import pwd
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any

from mevwatch.collectors._integrity_scan import FTYPES, FileRecord, RecordTable
from mevwatch.collectors.base import StateStore
from mevwatch.families import label_text

__all__ = ["AcceptEntry", "Baseline", "BaselineStore", "Who", "who_am_i"]

COMPONENT = "integrity"
MIGRATIONS = [
    """
    CREATE TABLE integrity_baseline (
        instance TEXT NOT NULL, path TEXT NOT NULL, ftype TEXT, size INTEGER, mode INTEGER,
        uid INTEGER, gid INTEGER, inode INTEGER, mtime_ns INTEGER, ctime_ns INTEGER,
        sha256 TEXT, link_target TEXT, PRIMARY KEY (instance, path)
    );
    CREATE TABLE integrity_meta (
        instance TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (instance, key)
    );
    CREATE TABLE integrity_accept_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT, instance TEXT NOT NULL, at REAL NOT NULL,
        uid INTEGER NOT NULL, user TEXT NOT NULL, sudo_user TEXT, action TEXT NOT NULL, paths TEXT NOT NULL
    )
    """,
]
_COLS = "path, ftype, size, mode, uid, gid, inode, mtime_ns, ctime_ns, sha256, link_target"
_SELECT = f"SELECT {_COLS} FROM integrity_baseline WHERE instance = ? ORDER BY path"
_INSERT = f"INSERT INTO integrity_baseline(instance, {_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


@dataclass(frozen=True, slots=True)
class Who:
    uid: int
    user: str
    sudo_user: str | None


def who_am_i() -> Who:
    """The account running the command, and the one that ran sudo, for the accept log."""
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return Who(uid, user, os.environ.get("SUDO_USER") or None)


@dataclass(frozen=True, slots=True)
class AcceptEntry:
    at: float
    uid: int
    user: str
    sudo_user: str | None
    action: str
    paths: list[str]


@dataclass(slots=True)
class Baseline:
    records: RecordTable = field(default_factory=RecordTable)
    present: bool = False
    tampered: bool = False
    #: rows that do not decode into a record (edited or damaged DB), as "path: problem"
    corrupt: list[str] = field(default_factory=list)
    generation: int = 0
    created_at: float | None = None


def _stored(name: str | None) -> str | bytes | None:
    """A path as the DB holds it: text when it is UTF-8, else its bytes (a BLOB), so no name is lost."""
    if name is None or name.isascii():
        return name
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name)


def _loaded(value: Any) -> Any:
    """A stored path back as Python's str for it (undecodable bytes as surrogates, as os.listdir gives)."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _mac_row(mac: hmac.HMAC, row: Sequence[Any]) -> None:
    # a BLOB path counts as its str (json writes its surrogates as \udcXX): the same for every read
    mac.update(json.dumps([_loaded(v) for v in row], separators=(",", ":")).encode() + b"\n")


def _row(rec: FileRecord) -> tuple[Any, ...]:
    return (_stored(rec.path), rec.ftype, rec.size, rec.mode, rec.uid, rec.gid, rec.inode, rec.mtime_ns,
            rec.ctime_ns, rec.sha256, _stored(rec.link_target))


_SEVEN_INTS = [int] * 7


def _decode(row: Sequence[Any]) -> tuple[Any, ...]:
    """A stored row's record fields (path first), checked: ValueError names what is wrong."""
    # once per row of a baseline of 100,000: no per-value function calls
    path, ftype, size, mode, uid, gid, inode, mtime_ns, ctime_ns, digest, target = row
    if type(path) is bytes:
        path = os.fsdecode(path)
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError("path is not absolute")
    if type(ftype) is bytes:
        ftype = os.fsdecode(ftype)
    if ftype not in FTYPES and ftype != "unknown":
        raise ValueError(f"unknown file type {ftype!r}")
    if list(map(type, row[2:9])) != _SEVEN_INTS and not all(isinstance(v, int) for v in row[2:9]):
        raise ValueError("a numeric attribute is not an integer")
    if type(digest) is bytes:
        digest = os.fsdecode(digest)
    if digest is not None and not (isinstance(digest, str) and _HEX64.match(digest)):
        raise ValueError("sha256 is not 64 hex digits")
    if type(target) is bytes:
        target = os.fsdecode(target)
    if target is not None and not isinstance(target, str):
        raise ValueError("link target is not text")
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"mode {mode} out of range")
    return path, ftype, size, mode, uid, gid, inode, mtime_ns, ctime_ns, digest, target


class BaselineStore:
    """One collector instance's baseline in the shared state DB."""

    def __init__(self, db: StateStore, instance: str, key: bytes | None = None) -> None:
        self.db = db
        self.instance = instance
        self.key = key
        db.migrate(COMPONENT, MIGRATIONS)

    def _meta(self) -> dict[str, str]:
        rows = self.db.query("SELECT key, value FROM integrity_meta WHERE instance = ?", (self.instance,))
        return {str(k): str(v) for k, v in rows}

    def generation(self) -> int:
        """Bumped by every write: a running daemon reloads when it sees a new one."""
        rows = self.db.query(
            "SELECT value FROM integrity_meta WHERE instance = ? AND key = 'generation'", (self.instance,)
        )
        try:
            return int(rows[0][0]) if rows else 0
        except ValueError:
            return -1

    def _mac(self, rows: Iterable[Sequence[Any]]) -> str:
        mac = self._new_mac()
        for row in rows:
            _mac_row(mac, row)
        return mac.hexdigest()

    def _new_mac(self) -> hmac.HMAC:
        assert self.key is not None
        return hmac.new(self.key, self.instance.encode(), sha256)

    def load(self) -> Baseline:
        """The baseline, read row by row: 100,000 rows are never all in memory at once beside the records."""
        meta = self._meta()
        out = Baseline()
        problems: list[str] = []
        mac = self._new_mac() if self.key is not None else None

        def take(row: tuple[Any, ...]) -> None:
            if mac is not None:
                _mac_row(mac, row)
            try:
                fields = _decode(row)
            except (ValueError, TypeError) as exc:
                problems.append(f"{label_text(str(_loaded(row[0])))}: {exc}")
                return
            out.records.add_fields(*fields)

        rows = self.db.each_row(_SELECT, (self.instance,), take)
        out.present = "created_at" in meta or rows > 0
        if not out.present:
            return out
        try:
            out.generation = int(meta.get("generation", "0"))
            out.created_at = float(meta["created_at"]) if "created_at" in meta else None
        except ValueError:
            out.corrupt.append("meta: generation or created_at is not a number")
        if "created_at" not in meta:
            out.corrupt.append("meta: baseline rows without their metadata")
        out.corrupt.extend(problems)
        if mac is not None:
            stored = meta.get("hmac")
            out.tampered = stored is None or not hmac.compare_digest(stored, mac.hexdigest())
        return out

    def _write_meta(self, db: Any, who: Who, action: str, paths: Sequence[str]) -> None:
        now = time.time()
        gen = db.execute(
            "SELECT value FROM integrity_meta WHERE instance = ? AND key = 'generation'", (self.instance,)
        ).fetchone()
        try:
            next_gen = int(gen[0]) + 1 if gen else 1
        except ValueError:
            next_gen = 1
        values = {"generation": str(next_gen), "updated_at": repr(now)}
        if action == "baseline" or not db.execute(
            "SELECT 1 FROM integrity_meta WHERE instance = ? AND key = 'created_at'", (self.instance,)
        ).fetchone():
            values["created_at"] = repr(now)
        if self.key is not None:
            values["hmac"] = self._mac(db.execute(_SELECT, (self.instance,)))
        else:
            db.execute("DELETE FROM integrity_meta WHERE instance = ? AND key = 'hmac'", (self.instance,))
        db.executemany(
            "INSERT INTO integrity_meta(instance, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT(instance, key) DO UPDATE SET value = excluded.value",
            [(self.instance, k, v) for k, v in values.items()],
        )
        db.execute(
            "INSERT INTO integrity_accept_log(instance, at, uid, user, sudo_user, action, paths) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (self.instance, now, who.uid, who.user, who.sudo_user, action, json.dumps(list(paths))),
        )

    def replace_all(self, records: Mapping[str, FileRecord], who: Who, action: str = "baseline") -> None:
        """Make ``records`` the whole baseline (``integrity baseline``, or ``accept`` with no path)."""
        with self.db.transaction() as db:
            db.execute("DELETE FROM integrity_baseline WHERE instance = ?", (self.instance,))
            db.executemany(_INSERT, ((self.instance, *_row(r)) for r in records.values()))
            self._write_meta(db, who, action, ["*"] if action != "baseline" else [])

    def update(self, changes: Mapping[str, FileRecord | None], who: Who, action: str = "accept") -> None:
        """Re-baseline single paths: a record replaces the row, None removes it (the file is gone for good)."""
        with self.db.transaction() as db:
            for path, rec in changes.items():
                db.execute("DELETE FROM integrity_baseline WHERE instance = ? AND path = ?",
                           (self.instance, _stored(path)))
                if rec is not None:
                    db.execute(_INSERT, (self.instance, *_row(rec)))
            self._write_meta(db, who, action, sorted(changes))

    def accept_log(self, limit: int = 50) -> list[AcceptEntry]:
        rows = self.db.query(
            "SELECT at, uid, user, sudo_user, action, paths FROM integrity_accept_log WHERE instance = ? "
            "ORDER BY id DESC LIMIT ?",
            (self.instance, limit),
        )
        return [AcceptEntry(float(a), int(u), str(n), s, str(act), json.loads(p)) for a, u, n, s, act, p in rows]
