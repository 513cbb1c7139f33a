"""File integrity core: the watched set (files, globs, directories), per-file records and their comparison.

Pure and blocking code only (no asyncio): the collector runs it in the blocking pool, the CLI directly.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import errno
import hashlib
import os
import re
import stat
import struct
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

__all__ = [
    "KINDS",
    "FileRecord",
    "GlobSet",
    "RecordTable",
    "Rule",
    "Violation",
    "WatchSet",
    "compare",
    "describe",
    "glob_to_regex",
    "hash_file",
    "read_record",
    "scan",
    "verify",
    "verify_each",
]

#: violation kinds, in the order they are reported
KINDS = ("type", "missing", "new", "unreadable", "content", "mode", "owner", "inode")

_FTYPES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
}
FTYPES = frozenset(_FTYPES.values())

DEFAULT_CHUNK = 1 << 20
# Files at least this big are hashed first so one large binary does not finish last on one thread.
_BIG = 8 << 20


@dataclass(frozen=True, slots=True)
class FileRecord:
    """What is known about one path; ``error`` is set when the content could not be read."""

    path: str
    ftype: str
    size: int
    mode: int
    uid: int
    gid: int
    inode: int
    mtime_ns: int
    ctime_ns: int
    sha256: str | None = None
    link_target: str | None = None
    error: str | None = None

    def same_stat(self, st: os.stat_result) -> bool:
        """True when size, mtime, ctime and inode match: the content cannot have changed without ctime moving."""
        return (
            self.size == st.st_size
            and self.mtime_ns == st.st_mtime_ns
            and self.ctime_ns == st.st_ctime_ns
            and self.inode == st.st_ino
        )


_KIND_NAMES = tuple(sorted(FTYPES | {"unknown"}))
_KIND_CODES = {name: i for i, name in enumerate(_KIND_NAMES)}
_HAS_DIGEST = 0x80
# size, mode, uid, gid, inode, mtime_ns, ctime_ns, file type (| _HAS_DIGEST), then the sha256
_STAT = struct.Struct("<qIIIQqqB")
_ROW = struct.Struct(_STAT.format + "32s")
_ROW_SIZE = _ROW.size
_HASHED_FILE = _KIND_CODES["file"] | _HAS_DIGEST


class _Entries:
    """The packed records of one directory's entries: names in sorted order, rows end to end in the same order."""

    __slots__ = ("names", "rows")

    def __init__(self) -> None:
        self.names: list[str] = []
        self.rows = bytearray()


class RecordTable(MutableMapping[str, FileRecord]):
    """Records by path, held packed while stored: the daemon keeps its whole baseline as long as it runs.

    As a dict of FileRecord objects (the record, its hex digest and seven ints) a path cost ~550
    bytes besides its name; as a dict of packed bytes ~260 bytes with its name. Here the entries of
    a directory share its name: each costs its base name, a list slot and a 77-byte row (~150
    bytes). A record comes back as a new FileRecord on each read. One that does not pack (a link
    target, an error, a field out of range) is kept as it is.
    """

    __slots__ = ("_dirs", "_odd", "_packed")

    def __init__(self, records: Iterable[FileRecord] = ()) -> None:
        self._dirs: dict[str, _Entries] = {}
        self._odd: dict[str, FileRecord] = {}
        self._packed = 0
        for rec in records:
            self[rec.path] = rec

    def _find(self, path: str) -> tuple[_Entries, int] | None:
        head, _, name = path.rpartition("/")
        entries = self._dirs.get(head)
        if entries is None:
            return None
        names = entries.names
        i = bisect.bisect_left(names, name)
        if i < len(names) and names[i] == name:
            return entries, i
        return None

    def __getitem__(self, path: str) -> FileRecord:
        found = self._find(path) if isinstance(path, str) else None
        if found is None:
            return self._odd[path]
        entries, i = found
        size, mode, uid, gid, inode, mtime_ns, ctime_ns, kind, digest = _ROW.unpack_from(entries.rows, i * _ROW_SIZE)
        return FileRecord(path, _KIND_NAMES[kind & ~_HAS_DIGEST], size, mode, uid, gid, inode, mtime_ns, ctime_ns,
                          digest.hex() if kind & _HAS_DIGEST else None)

    def __setitem__(self, path: str, rec: FileRecord) -> None:
        row = _pack(rec) if rec.path == path and "/" in path else None
        if row is None:
            self._drop_packed(path)
            self._odd[path] = rec
        else:
            self._put_row(path, row)

    def add_fields(
        self, path: str, ftype: str, size: int, mode: int, uid: int, gid: int, inode: int, mtime_ns: int,
        ctime_ns: int, sha256: str | None, link_target: str | None,
    ) -> None:
        """Store the record of these fields without building it first: a baseline load adds 100,000 rows,
        and building a frozen FileRecord only to pack it was most of the cost of each."""
        row = _pack_fields(ftype, size, mode, uid, gid, inode, mtime_ns, ctime_ns, sha256) \
            if link_target is None and "/" in path else None
        if row is None:
            self[path] = FileRecord(path, ftype, size, mode, uid, gid, inode, mtime_ns, ctime_ns, sha256, link_target)
        else:
            self._put_row(path, row)

    def _put_row(self, path: str, row: bytes) -> None:
        self._odd.pop(path, None)
        head, _, name = path.rpartition("/")
        entries = self._dirs.get(head)
        if entries is None:
            entries = self._dirs[head] = _Entries()
        names = entries.names
        if not names or name > names[-1]:  # records mostly arrive in path order: appended
            names.append(name)
            entries.rows += row
            self._packed += 1
            return
        i = bisect.bisect_left(names, name)
        at = i * _ROW_SIZE
        if i < len(names) and names[i] == name:
            entries.rows[at : at + _ROW_SIZE] = row
            return
        names.insert(i, name)
        entries.rows[at:at] = row
        self._packed += 1

    def _drop_packed(self, path: str) -> bool:
        found = self._find(path)
        if found is None:
            return False
        entries, i = found
        del entries.names[i]
        del entries.rows[i * _ROW_SIZE : (i + 1) * _ROW_SIZE]
        self._packed -= 1
        if not entries.names:
            del self._dirs[path.rpartition("/")[0]]
        return True

    def __delitem__(self, path: str) -> None:
        if not (isinstance(path, str) and self._drop_packed(path)):
            del self._odd[path]

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and (self._find(path) is not None or path in self._odd)

    def __iter__(self) -> Iterator[str]:
        for head, entries in self._dirs.items():
            for name in entries.names:
                yield f"{head}/{name}"
        yield from self._odd

    def __len__(self) -> int:
        return self._packed + len(self._odd)

    def unchanged(self, path: str, st: os.stat_result) -> bool:
        """True when ``path`` is a hashed regular file whose type, size, mtime, ctime, inode, mode and owner
        all still match ``st``: in quick mode, a file with nothing to read and no record to build."""
        if not stat.S_ISREG(st.st_mode):
            return False
        found = self._find(path)
        if found is None:
            return False
        entries, i = found
        try:
            now = _STAT.pack(st.st_size, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_ino, st.st_mtime_ns,
                             st.st_ctime_ns, _HASHED_FILE)
        except struct.error:
            return False
        at = i * _ROW_SIZE
        return entries.rows[at : at + _STAT.size] == now


def _pack(rec: FileRecord) -> bytes | None:
    if rec.link_target is not None or rec.error is not None:
        return None
    return _pack_fields(rec.ftype, rec.size, rec.mode, rec.uid, rec.gid, rec.inode, rec.mtime_ns, rec.ctime_ns,
                        rec.sha256)


def _pack_fields(
    ftype: str, size: int, mode: int, uid: int, gid: int, inode: int, mtime_ns: int, ctime_ns: int, sha256: str | None
) -> bytes | None:
    try:
        digest = bytes.fromhex(sha256) if sha256 is not None else bytes(32)
        if len(digest) != 32:
            return None
        kind = _KIND_CODES[ftype] | (_HAS_DIGEST if sha256 is not None else 0)
        return _ROW.pack(size, mode, uid, gid, inode, mtime_ns, ctime_ns, kind, digest)
    except (struct.error, ValueError, KeyError):
        return None


@dataclass(frozen=True, slots=True, order=True)
class Violation:
    path: str
    kind: str
    expected: str
    found: str


def describe(rec: FileRecord) -> str:
    """One-line summary of a record, for ``new`` and ``type`` violations."""
    parts = [rec.ftype, f"mode={rec.mode:04o}", f"uid={rec.uid}", f"gid={rec.gid}"]
    if rec.ftype == "file":
        parts.append(f"size={rec.size}")
        if rec.sha256:
            parts.append(f"sha256={rec.sha256}")
    if rec.link_target is not None:
        parts.append(f"target={rec.link_target}")
    return " ".join(parts)


def _content(rec: FileRecord) -> str:
    if rec.ftype == "symlink":
        return f"target={rec.link_target}"
    return f"sha256={rec.sha256 or '?'} size={rec.size}"


def compare(path: str, expected: FileRecord | None, found: FileRecord | None) -> list[Violation]:
    """Every difference between the baseline record and the current one, one violation per kind."""
    if expected is None and found is None:
        return []
    if expected is None:
        assert found is not None
        return [Violation(path, "new", "absent", describe(found))]
    if found is None:
        return [Violation(path, "missing", describe(expected), "absent")]
    if expected.ftype != found.ftype:
        return [Violation(path, "type", expected.ftype, found.ftype)]
    out: list[Violation] = []
    if found.error is not None:
        out.append(Violation(path, "unreadable", "readable", found.error))
    elif found.ftype == "file":
        if expected.size != found.size or (expected.sha256 and expected.sha256 != found.sha256):
            out.append(Violation(path, "content", _content(expected), _content(found)))
    elif found.ftype == "symlink" and expected.link_target != found.link_target:
        out.append(Violation(path, "content", _content(expected), _content(found)))
    if expected.mode != found.mode:
        out.append(Violation(path, "mode", f"{expected.mode:04o}", f"{found.mode:04o}"))
    if (expected.uid, expected.gid) != (found.uid, found.gid):
        out.append(Violation(path, "owner", f"{expected.uid}:{expected.gid}", f"{found.uid}:{found.gid}"))
    if expected.inode != found.inode:
        out.append(Violation(path, "inode", str(expected.inode), str(found.inode)))
    return out


# --- reading one path ----------------------------------------------------------------------


def _strerror(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror or type(exc).__name__


def hash_file(fd: int, chunk: int = DEFAULT_CHUNK, size: int | None = None) -> str:
    """sha256 of an open file read in pieces of at most ``chunk`` bytes (hashlib releases the GIL on big buffers).

    ``size`` (the file's size when stat'ed) bounds the buffer: a 1 MiB buffer per file is an mmap, zeroed
    and unmapped, for what is mostly a file of a few KiB; that cost 30 % of the CPU per 50 KiB file of a
    baseline (bench/integrity.py). The +1 lets a file read whole end with one short read; one that grew
    since is read on in buffer-sized pieces."""
    h = hashlib.sha256()
    buf = bytearray(chunk if size is None else max(1, min(chunk, size + 1)))
    view = memoryview(buf)
    while True:
        n = os.readv(fd, [buf])
        if not n:
            break
        h.update(view[:n])
    return h.hexdigest()


def _from_stat(path: str, st: os.stat_result, **extra: str | None) -> FileRecord:
    return FileRecord(
        path=path,
        ftype=_FTYPES.get(stat.S_IFMT(st.st_mode), "unknown"),
        size=st.st_size,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        inode=st.st_ino,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        **extra,
    )


def _stat_failed(label: str, exc: OSError) -> FileRecord | None:
    """What a failed stat says: None when the path does not exist, else the record of the refusal."""
    if isinstance(exc, FileNotFoundError):
        return None  # also a dangling symlink when following: the file it names is missing
    if exc.errno == errno.ENOTDIR:
        return None  # a parent was replaced by a file: the path no longer exists
    # lstat itself refused (no search permission on a parent directory)
    return FileRecord(label, "unknown", 0, 0, -1, -1, 0, 0, 0, error=_strerror(exc))


def _stat_record(
    real: str, label: str, follow_symlinks: bool, known: FileRecord | None
) -> FileRecord | os.stat_result | None:
    """The record when no content needs reading, the stat of a regular file to hash, or None when absent."""
    try:
        st = os.stat(real) if follow_symlinks else os.lstat(real)
    except OSError as exc:
        return _stat_failed(label, exc)
    return _classify(real, label, st, known)


def _classify(real: str, label: str, st: os.stat_result, known: FileRecord | None) -> FileRecord | os.stat_result:
    """The record of a stat'ed path when no content needs reading, else the stat of the regular file to hash."""
    fmt = stat.S_IFMT(st.st_mode)
    if fmt == stat.S_IFLNK:
        try:
            target = os.readlink(real)
        except OSError as exc:
            return _from_stat(label, st, error=_strerror(exc))
        return _from_stat(label, st, link_target=target)
    if fmt != stat.S_IFREG:
        return _from_stat(label, st)
    if known is not None and known.ftype == "file" and known.sha256 and known.same_stat(st):
        if known.mode == stat.S_IMODE(st.st_mode) and (known.uid, known.gid) == (st.st_uid, st.st_gid):
            return known  # nothing changed: no new record for the unchanged file
        return _from_stat(label, st, sha256=known.sha256)
    return st


def _hash_record(real: str, label: str, st: os.stat_result, follow_symlinks: bool, chunk: int) -> FileRecord | None:
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return read_record(real, label, follow_symlinks=follow_symlinks, chunk=chunk)  # became a symlink
        return _from_stat(label, st, error=_strerror(exc))
    try:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode):
            return _from_stat(label, fst)  # swapped for a FIFO or device between stat and open
        try:
            digest = hash_file(fd, chunk, fst.st_size)
        except OSError as exc:
            return _from_stat(label, fst, error=_strerror(exc))
        # The attributes of the file actually hashed, not of the one first stat'ed.
        return _from_stat(label, fst, sha256=digest)
    finally:
        os.close(fd)


def read_record(
    real: str,
    path: str | None = None,
    *,
    follow_symlinks: bool = False,
    known: FileRecord | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> FileRecord | None:
    """The record of ``real`` (labelled ``path``), or None when it does not exist.

    Only regular files are opened, with O_NONBLOCK and O_NOFOLLOW, and the open file is
    checked to be the one stat'ed: a FIFO or device swapped in never blocks the read.
    With ``known`` (quick mode) a file whose size, mtime, ctime and inode all match keeps
    the known hash instead of being read again.
    """
    label = path if path is not None else real
    first = _stat_record(real, label, follow_symlinks, known)
    if isinstance(first, os.stat_result):
        return _hash_record(real, label, first, follow_symlinks, chunk)
    return first


# --- the watched set -----------------------------------------------------------------------

_MAGIC = re.compile(r"[*?[]")


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Shell glob to a regex over whole paths: ``**`` spans directories, ``*`` and ``?`` do not."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
            if j < 0:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1 : j]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


class GlobSet:
    """Globs as ``exclude`` reads them: with a ``/`` a pattern matches the whole path, without one the base name."""

    __slots__ = ("_name", "_path", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self._path = [glob_to_regex(p) for p in self.patterns if "/" in p]
        self._name = [glob_to_regex(p) for p in self.patterns if "/" not in p]

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches(self, path: str) -> bool:
        name = path.rsplit("/", 1)[-1]
        return any(r.match(path) for r in self._path) or any(r.match(name) for r in self._name)


@dataclass(frozen=True, slots=True)
class Rule:
    """A tree to walk: everything under ``base`` (to ``recursive`` depth) that ``match``es and is not excluded."""

    base: str
    recursive: bool
    match: re.Pattern[str] | None = None

    def covers(self, path: str) -> bool:
        if path == self.base:
            return self.match is None or bool(self.match.match(path))
        prefix = self.base.rstrip("/") + "/"
        if not path.startswith(prefix):
            return False
        if not self.recursive and "/" in path[len(prefix) :]:
            return False
        return self.match is None or bool(self.match.match(path))

    @classmethod
    def from_glob(cls, pattern: str) -> Rule:
        parts = PurePosixPath(pattern).parts
        base_parts: list[str] = []
        for part in parts:
            if _MAGIC.search(part):
                break
            base_parts.append(part)
        magic = parts[len(base_parts) :]
        base = str(PurePosixPath(*base_parts)) if base_parts else "/"
        recursive = len(magic) > 1 or any("**" in p for p in magic)
        return cls(base, recursive, glob_to_regex(pattern))


@dataclass(slots=True)
class WatchSet:
    """The configured files, globs and directories, as host paths (``rootfs`` is prefixed to reach them).

    Excludes are globs: with a ``/`` they match the whole path, without one the base name.
    """

    files: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    excludes: tuple[str, ...] = ()
    rootfs: str = "/"
    _ex: GlobSet = field(default_factory=lambda: GlobSet(()))

    def __post_init__(self) -> None:
        self._ex = GlobSet(self.excludes)

    @classmethod
    def build(
        cls,
        files: Sequence[str] = (),
        globs: Sequence[str] = (),
        directories: Sequence[tuple[str, bool]] = (),
        excludes: Sequence[str] = (),
        rootfs: str = "/",
    ) -> WatchSet:
        rules = [Rule.from_glob(g) for g in globs] + [
            Rule(os.path.normpath(d), rec) for d, rec in directories
        ]
        return cls(tuple(os.path.normpath(f) for f in files), tuple(rules), tuple(excludes), rootfs)

    def real(self, path: str) -> str:
        """Where the host path ``path`` is reached from here (under ``rootfs``)."""
        if self.rootfs in ("", "/"):
            return path
        return os.path.join(self.rootfs, path.lstrip("/"))

    def host(self, real: str) -> str:
        if self.rootfs in ("", "/"):
            return real
        rel = os.path.relpath(real, self.rootfs)
        return "/" if rel == "." else "/" + rel

    def excluded(self, path: str) -> bool:
        return self._ex.matches(path)

    def covers(self, path: str) -> bool:
        """True when the host path ``path`` belongs to the watched set (whether or not it exists)."""
        if path in self.files:
            return True
        if self.excluded(path):
            return False
        return any(rule.covers(path) for rule in self.rules)

    def expand(self) -> list[str]:
        """Every host path of the watched set that exists now, plus the explicit files (even if absent)."""
        return sorted(self.existing())

    def existing(self) -> set[str]:
        """``expand()`` as a set."""
        seen: set[str] = set(self.files)
        for rule in self.rules:
            seen.update(self._walk(rule))
        return seen

    def _walk(self, rule: Rule) -> Iterator[str]:
        base_real = self.real(rule.base)
        if not os.path.lexists(base_real):
            return
        if rule.covers(rule.base) and not self.excluded(rule.base):
            yield rule.base
        if not os.path.isdir(base_real) or os.path.islink(base_real):
            return
        # once per entry of the set: a rule without a pattern covers every entry it walks to
        match_all = rule.match is None
        excludes = bool(self._ex)
        recursive = rule.recursive
        stack = [(rule.base, base_real)]
        while stack:
            host_dir, real_dir = stack.pop()
            try:
                with os.scandir(real_dir) as it:
                    entries = list(it)
            except OSError:
                continue  # vanished or unreadable directory: its own record says so
            prefix = host_dir.rstrip("/") + "/"
            for entry in entries:
                host = prefix + entry.name
                if excludes and self.excluded(host):
                    continue
                if match_all or rule.covers(host):
                    yield host
                if recursive:
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        is_dir = False
                    if is_dir:
                        stack.append((host, entry.path))

    def directories(self) -> list[str]:
        """Host directories whose entries must be watched to see every change of the set.

        For an explicit file whose parent does not exist yet, the nearest existing ancestor,
        so that creating the parent is seen too.
        """
        dirs: set[str] = set()
        for f in self.files:
            parent = os.path.dirname(f) or "/"
            while parent != "/" and not os.path.isdir(self.real(parent)):
                parent = os.path.dirname(parent)
            dirs.add(parent)
        for rule in self.rules:
            base = rule.base
            while base != "/" and not os.path.isdir(self.real(base)):
                base = os.path.dirname(base)
            if base != rule.base:
                dirs.add(base)
                continue
            dirs.add(base)
            if not rule.recursive or os.path.islink(self.real(base)):
                continue
            stack = [base]
            while stack:
                d = stack.pop()
                try:
                    entries = list(os.scandir(self.real(d)))
                except OSError:
                    continue
                for entry in entries:
                    host = d.rstrip("/") + "/" + entry.name
                    try:
                        if entry.is_dir(follow_symlinks=False) and not self.excluded(host):
                            dirs.add(host)
                            stack.append(host)
                    except OSError:
                        continue
        return sorted(dirs)


# --- scanning many paths -------------------------------------------------------------------


def scan(
    ws: WatchSet,
    paths: Iterable[str],
    *,
    follow_symlinks: bool = False,
    known: Mapping[str, FileRecord] | None = None,
    threads: int = 4,
    chunk: int = DEFAULT_CHUNK,
    unchanged: set[str] | None = None,
) -> dict[str, FileRecord]:
    """Records of the host ``paths`` that exist (and of unreadable ones), hashed on ``threads`` threads.

    With ``known`` (quick mode) a regular file is only hashed when its stat differs from its known record.
    With ``unchanged`` too, and ``known`` a RecordTable, a file whose stat matches its record gets no
    record: its path is added to ``unchanged`` (a quick verify of an unchanged set builds no record).
    """
    out: dict[str, FileRecord] = {}
    to_hash: list[tuple[str, str, os.stat_result]] = []
    table = known if unchanged is not None and isinstance(known, RecordTable) else None
    stat_of = os.stat if follow_symlinks else os.lstat
    real_of = None if ws.rootfs in ("", "/") else ws.real
    # stat is cheap and holds the GIL: done here; only reading and hashing goes to threads.
    for path in paths:
        real = path if real_of is None else real_of(path)
        try:
            st = stat_of(real)
        except OSError as exc:
            failed = _stat_failed(path, exc)
            if failed is not None:
                out[path] = failed
            continue
        if table is not None and unchanged is not None and table.unchanged(path, st):
            unchanged.add(path)
            continue
        first = _classify(real, path, st, known.get(path) if known is not None else None)
        if isinstance(first, os.stat_result):
            to_hash.append((path, real, first))
        else:
            out[path] = first
    if not to_hash:
        return out

    def many(batch: list[tuple[str, str, os.stat_result]]) -> list[tuple[str, FileRecord | None]]:
        return [(path, _hash_record(real, path, st, follow_symlinks, chunk)) for path, real, st in batch]

    if threads <= 1 or len(to_hash) == 1:
        results = many(to_hash)
    else:
        # Largest first, so the pool ends on many small files instead of one long hash; small
        # files go in batches, as one future per file would cost more than hashing it.
        to_hash.sort(key=lambda t: -t[2].st_size)
        n_big = sum(1 for t in to_hash if t[2].st_size >= _BIG)
        small = to_hash[n_big:]
        step = max(1, min(256, len(small) // (threads * 4) or 1))
        batches = [[t] for t in to_hash[:n_big]] + [small[i : i + step] for i in range(0, len(small), step)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mevwatch-hash") as ex:
            results = [r for batch in ex.map(many, batches) for r in batch]
    for path, rec in results:
        if rec is not None:
            out[path] = rec
    return out

def verify_each(
    ws: WatchSet,
    baseline: Mapping[str, FileRecord],
    *,
    quick: bool = False,
    follow_symlinks: bool = False,
    threads: int = 4,
    chunk: int = DEFAULT_CHUNK,
    batch: int | None = None,
) -> Iterator[tuple[str, FileRecord | None, bool, list[Violation]]]:
    """Each path of the watched set: (path, its current record, whether it exists, its violations), in path order.

    In quick mode with a RecordTable baseline, a file whose stat matches its record exists but has no
    record here (None): it costs one stat and one comparison of packed bytes, and its record is the
    baseline's. Baseline paths the watched set no longer covers (the config changed) are not checked.
    With ``batch``, paths are scanned that many at a time, so only one batch of records is held at once
    (the daemon, which keeps none of them); without, all at once (the most parallel hashing).
    """
    paths = ws.existing()
    paths.update(p for p in baseline if p not in paths and ws.covers(p))
    ordered = sorted(paths)
    del paths
    step = batch or max(len(ordered), 1)
    for i in range(0, len(ordered), step):
        part = ordered[i : i + step]
        same: set[str] = set()
        current = scan(ws, part, follow_symlinks=follow_symlinks, known=baseline if quick else None,
                       threads=threads, chunk=chunk, unchanged=same)
        for p in part:
            if p in same:
                yield p, None, True, []
            else:
                rec = current.get(p)
                yield p, rec, rec is not None, compare(p, baseline.get(p), rec)


def verify(
    ws: WatchSet,
    baseline: Mapping[str, FileRecord],
    *,
    quick: bool = False,
    follow_symlinks: bool = False,
    threads: int = 4,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[dict[str, FileRecord], list[Violation]]:
    """Scan the whole watched set and compare it with ``baseline``: (current records, violations)."""
    current: dict[str, FileRecord] = {}
    violations: list[Violation] = []
    for path, rec, exists, found in verify_each(ws, baseline, quick=quick, follow_symlinks=follow_symlinks,
                                                threads=threads, chunk=chunk):
        if exists:
            current[path] = rec if rec is not None else baseline[path]
        violations.extend(found)
    return current, violations
