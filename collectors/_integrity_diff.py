"""What a watched text file's change was: copies of the baseline versions of small text files in the state DB,
and a bounded unified diff against them with secrets masked (Wazuh's ``report_changes``, and its ``nodiff``
for files whose content must never be stored or shown).

Pure and blocking code only: the collector runs it in the blocking pool, ``mevwatch integrity`` directly;
both through :class:`ReportChanges`, so a diff reads the same on a page and on the command line.
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import os
import re
import stat
from collections.abc import Callable, Container, Iterable, Mapping, Sequence

from mevwatch.collectors._integrity_scan import FileRecord, GlobSet, Violation
from mevwatch.collectors.base import StateStore
from mevwatch.families import label_text
from mevwatch.redaction import MASK, redact

__all__ = [
    "DIFF_MAX_CHARS",
    "DIFF_MAX_LINES",
    "CopyStore",
    "ReportChanges",
    "mask_lines",
    "masked_diff",
    "read_text",
]

COMPONENT = "integrity_copies"
MIGRATIONS = [
    """
    CREATE TABLE integrity_copy (
        instance TEXT NOT NULL, path BLOB NOT NULL, sha256 TEXT NOT NULL, content BLOB NOT NULL,
        PRIMARY KEY (instance, path)
    )
    """,
]
#: the diff a page carries: at most this many lines and characters, then a note of what was left out
DIFF_MAX_LINES = 40
DIFF_MAX_CHARS = 2000
_CONTEXT = 2  # unchanged lines around each change: enough to place it, little of the rest of the file


# --- reading a text file ------------------------------------------------------------------------


def read_text(real: str, max_size: int, follow_symlinks: bool = False) -> tuple[str, str] | str:
    """(sha256, text) of a regular UTF-8 text file of at most ``max_size`` bytes, else why not (a short reason).

    Opened as the hashing is (O_NONBLOCK, O_NOFOLLOW, checked to be a regular file), read at most
    ``max_size`` + 1 bytes: a file that grew is never read whole.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        return "the file is gone"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "the file is a symlink"
        return "the file cannot be read" + (": permission denied" if exc.errno in (errno.EACCES, errno.EPERM) else "")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_size > max_size:
            return f"larger than {max_size} bytes"
        chunks: list[bytes] = []
        left = max_size + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError:
        return "the file cannot be read"
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_size:
        return f"larger than {max_size} bytes"
    if b"\0" in data:
        return "not a text file"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "not a text file (not UTF-8)"
    return hashlib.sha256(data).hexdigest(), text


# --- the copies -----------------------------------------------------------------------------------


class CopyStore:
    """One integrity instance's copies of baseline versions, in the state DB (0600, the state dir's owner).

    A copy is kept with the sha256 of the baseline version it is: it is only used while the baseline (which
    an HMAC may protect) still has that hash, and its own content must hash to it.
    """

    def __init__(self, db: StateStore, instance: str) -> None:
        self.db = db
        self.instance = instance
        db.migrate(COMPONENT, MIGRATIONS)

    def hashes(self) -> dict[str, str]:
        rows = self.db.query("SELECT path, sha256 FROM integrity_copy WHERE instance = ?", (self.instance,))
        return {os.fsdecode(bytes(p)): str(h) for p, h in rows}

    def get(self, path: str, sha256: str) -> str | None:
        """The copy of ``path`` at the version ``sha256``, or None (none, another version, or edited in the DB)."""
        rows = self.db.query("SELECT content FROM integrity_copy WHERE instance = ? AND path = ? AND sha256 = ?",
                             (self.instance, os.fsencode(path), sha256))
        if not rows:
            return None
        data = bytes(rows[0][0])
        if hashlib.sha256(data).hexdigest() != sha256:
            return None
        return data.decode("utf-8", "replace")

    def put(self, path: str, sha256: str, text: str) -> None:
        self.db.execute(
            "INSERT INTO integrity_copy(instance, path, sha256, content) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(instance, path) DO UPDATE SET sha256 = excluded.sha256, content = excluded.content",
            (self.instance, os.fsencode(path), sha256, text.encode("utf-8")))

    def drop(self, paths: Iterable[str]) -> None:
        with self.db.transaction() as db:
            db.executemany("DELETE FROM integrity_copy WHERE instance = ? AND path = ?",
                           [(self.instance, os.fsencode(p)) for p in paths])


# --- masking --------------------------------------------------------------------------------------

# a key whose value is a secret: password, secret, token, private key, mnemonic or seed, API or access key, ...
_SECRET_KEY = re.compile(
    r"pass(?:word|wd|phrase)?|pwd|secret|token|private|priv_?key|mnemonic|seed|api[-_]?key|apikey|access[-_]?key"
    r"|credential|auth|bearer|cookie|session|signer|(?:^|[-_.\s])keys?(?:$|[-_.\s])",
    re.IGNORECASE,
)
# key: value, key = value, "key": value, export KEY=value, - key: value (YAML, JSON, INI, env files)
_KV_LINE = re.compile(
    r"""^(?P<pre>\s*(?:-\s+)?(?:export\s+)?(?P<q>["']?)(?P<key>[^\s"':=#]+)(?P=q)\s*[:=]\s*)"""
    r"""(?P<value>.*?)(?P<post>,?\s*)$"""
)
# "key": "value" anywhere in a line (several JSON pairs on one line)
_JSON_PAIR = re.compile(r'(?P<pre>"(?P<key>[^"\\]+)"\s*:\s*)(?P<value>"(?:[^"\\]|\\.)*"|[^\s,}\]]+)')
# a raw private key (64 hex digits, with or without 0x) and longer hex
_HEX_SECRET = re.compile(r"(?<![0-9A-Za-z])(?:0x)?[0-9a-fA-F]{64,}(?![0-9A-Za-z])")
# long random-looking tokens: base64 / base64url of 32+ characters mixing upper, lower case and digits, or 32+ hex
_TOKEN = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{32,}={0,2}(?![A-Za-z0-9+/=_-])")
_HEX32 = re.compile(r"(?:0x)?[0-9a-fA-F]{32,}")
# a BIP-39 style phrase alone on a line: 12 to 24 lowercase words
_MNEMONIC = re.compile(r"^\s*(?:-\s+)?[\"']?(?:[a-z]{3,8}\s+){11,23}[a-z]{3,8}[\"']?,?\s*$")
_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*-----")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]*-----")
_BLOCK_SCALAR = re.compile(r"^[|>][-+0-9]*\s*(?:#.*)?$")


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")  # an account address: public, and what a reader must see


def _random_token(m: re.Match[str]) -> str:
    tok = m.group(0)
    if _ADDRESS.fullmatch(tok):
        return tok
    if _HEX32.fullmatch(tok) or (any(c.isdigit() for c in tok) and any(c.islower() for c in tok)
                                 and any(c.isupper() for c in tok)):
        return MASK
    return tok


def _mask_value(value: str) -> str:
    if not value:
        return value
    q = value[0] if value[0] in "\"'" and len(value) > 1 and value[-1] == value[0] else ""
    return f"{q}{MASK}{q}"


def _mask_line(line: str) -> str:
    if _MNEMONIC.match(line):
        return re.match(r"\s*", line).group(0) + MASK  # type: ignore[union-attr]
    m = _KV_LINE.match(line)
    if m is not None and m.group("value") and _SECRET_KEY.search(m.group("key")) \
            and not _BLOCK_SCALAR.match(m.group("value")):
        line = m.group("pre") + _mask_value(m.group("value")) + m.group("post")
    line = _JSON_PAIR.sub(lambda p: p.group("pre") + _mask_value(p.group("value"))
                          if _SECRET_KEY.search(p.group("key")) else p.group(0), line)
    line = _HEX_SECRET.sub(MASK, line)
    line = _TOKEN.sub(_random_token, line)
    return redact(line)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def mask_lines(lines: Sequence[str]) -> list[str]:
    """``lines`` with secrets masked, line for line (the same count): values of secret-looking keys (also a
    YAML block under one), PEM blocks, 64-hex private keys, long random tokens, a mnemonic phrase, URL
    credentials. It masks more than needed rather than less: a page is no place for a near miss."""
    out: list[str] = []
    pem = False
    block: int | None = None  # indentation of a secret key whose block scalar follows
    for line in lines:
        if pem:
            out.append(line if _PEM_END.search(line) else MASK)
            pem = not _PEM_END.search(line)
            continue
        if block is not None:
            if not line.strip() or _indent(line) > block:
                out.append(line[:_indent(line)] + MASK if line.strip() else line)
                continue
            block = None
        if _PEM_BEGIN.search(line) and not _PEM_END.search(line):
            pem = True
            out.append(line)
            continue
        m = _KV_LINE.match(line)
        if m is not None and _SECRET_KEY.search(m.group("key")) and _BLOCK_SCALAR.match(m.group("value") or "-"):
            block = _indent(line)
        out.append(_mask_line(line))
    return out


# --- the diff -------------------------------------------------------------------------------------


def _range(start: int, length: int) -> str:
    first = start + 1 if length else start
    return str(first) if length == 1 else f"{first},{length}"


def masked_diff(old: str, new: str, path: str, max_lines: int = DIFF_MAX_LINES,
                max_chars: int = DIFF_MAX_CHARS) -> str:
    """A unified diff of ``old`` (the baseline version) and ``new``, computed on the real lines but shown with
    every line masked (a changed secret shows as a changed line whose value is ``***``), cut to ``max_lines``
    lines and ``max_chars`` characters with a note of what was left out."""
    a, b = old.splitlines(), new.splitlines()
    ma, mb = mask_lines(a), mask_lines(b)
    out = [f"--- {path} (baseline)", f"+++ {path} (now)"]
    for group in difflib.SequenceMatcher(None, a, b, autojunk=False).get_grouped_opcodes(_CONTEXT):
        i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
        out.append(f"@@ -{_range(i1, i2 - i1)} +{_range(j1, j2 - j1)} @@")
        for tag, p1, p2, q1, q2 in group:
            if tag == "equal":
                out.extend(" " + ln for ln in ma[p1:p2])
                continue
            out.extend("-" + ln for ln in ma[p1:p2])
            out.extend("+" + ln for ln in mb[q1:q2])
    if len(out) == 2:
        return ""  # the same lines (only line endings or a final newline differ)
    shown: list[str] = []
    size = 0
    for ln in out:
        if len(shown) >= max_lines or size + len(ln) + 1 > max_chars:
            break
        shown.append(ln)
        size += len(ln) + 1
    if len(shown) < len(out):
        shown.append(f"[diff cut: {len(out) - len(shown)} more lines not shown]")
    return "\n".join(shown)


# --- which files, and what their page says --------------------------------------------------------


class ReportChanges:
    """One integrity instance's ``report_changes`` and ``nodiff``: which watched files keep a copy of their
    baseline version, and what a changed one's page says (its masked diff, or why there is none)."""

    def __init__(self, report: Iterable[str], nodiff: Iterable[str], max_size: int, follow_symlinks: bool) -> None:
        self.report = GlobSet(report)
        self.nodiff = GlobSet(nodiff)
        self.max_size = max_size
        self.follow_symlinks = follow_symlinks

    def __bool__(self) -> bool:
        return bool(self.report)

    def diffable(self, path: str) -> bool:
        return self.report.matches(path) and not self.nodiff.matches(path)

    def sync_copies(self, copies: CopyStore, records: Mapping[str, FileRecord], changed: Container[str],
                    real: Callable[[str], str]) -> None:
        """Keep a copy of the baseline version (``records``) of every report_changes file: copied while the file
        still has the baseline's hash (never one in ``changed``), dropped once the baseline moved on or the file
        left report_changes (or went into nodiff). A nodiff file is never read here."""
        want: dict[str, str] = {}
        for path, rec in records.items():
            if self.diffable(path) and rec.ftype == "file" and rec.sha256 and rec.size <= self.max_size:
                want[path] = rec.sha256
        have = copies.hashes()
        stale = [p for p, h in have.items() if want.get(p) != h]
        if stale:
            copies.drop(stale)
        for path, digest in want.items():
            if have.get(path) == digest or path in changed:
                continue  # copied already, or no longer the baseline version: nothing to copy from
            got = read_text(real(path), self.max_size, self.follow_symlinks)
            if isinstance(got, tuple) and got[0] == digest:
                copies.put(path, digest, got[1])

    def diff(self, path: str, violations: Sequence[Violation], baseline: FileRecord | None,
             copies: CopyStore | None, real: str) -> str:
        """The masked diff of a changed file (``real`` is where it is read) against its baseline version, or
        why there is none; "" for a file outside report_changes or whose content did not change."""
        if not self.report.matches(path):
            return ""
        if self.nodiff.matches(path):
            return "no diff: the file is in nodiff (its content is never stored or shown)"
        if not any(v.kind == "content" for v in violations):
            return ""
        old = copies.get(path, baseline.sha256) if copies is not None and baseline and baseline.sha256 else None
        if old is None:
            return (f"no diff: no copy of the baseline version (only a UTF-8 text file of at most {self.max_size} "
                    "bytes is copied, while it matches the baseline)")
        got = read_text(real, self.max_size, self.follow_symlinks)
        if isinstance(got, str):
            return f"no diff: {got}"
        return masked_diff(old, got[1], label_text(path)) or "no diff: only line endings differ"
