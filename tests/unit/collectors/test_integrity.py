"""Integrity core on real temp trees: glob rules, records of every file type, comparison, baseline and HMAC."""

from __future__ import annotations

import os
import sqlite3
import threading
import tracemalloc
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from pydantic import ValidationError

from mevwatch.collectors._integrity_baseline import BaselineStore, Who, who_am_i
from mevwatch.collectors._integrity_scan import (
    FileRecord,
    RecordTable,
    Rule,
    WatchSet,
    compare,
    glob_to_regex,
    read_record,
    scan,
    verify,
    verify_each,
)
from mevwatch.collectors.integrity import IntegrityOptions, read_hmac_key
from mevwatch.daemon.state import StateDB

WHO = Who(0, "root", None)


def rec(path: str = "/x", **kw: object) -> FileRecord:
    base: dict[str, object] = dict(
        path=path, ftype="file", size=1, mode=0o644, uid=0, gid=0, inode=1, mtime_ns=1, ctime_ns=1,
        sha256="a" * 64,
    )
    base.update(kw)
    return FileRecord(**base)  # type: ignore[arg-type]


# --- globs and the watched set ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/etc/mev/**", "/etc/mev/a/b/c.yaml", True),
        ("/etc/mev/**", "/etc/mev", False),
        ("/etc/mev/*.json", "/etc/mev/wallets.json", True),
        ("/etc/mev/*.json", "/etc/mev/sub/wallets.json", False),
        ("/etc/**/x", "/etc/x", True),
        ("/etc/**/x", "/etc/a/b/x", True),
        ("/etc/?.conf", "/etc/a.conf", True),
        ("/etc/?.conf", "/etc/ab.conf", False),
        ("/etc/[ab].conf", "/etc/b.conf", True),
        ("/etc/[!ab].conf", "/etc/b.conf", False),
        ("/etc/[!ab].conf", "/etc/c.conf", True),
        ("/etc/a+b(1).conf", "/etc/a+b(1).conf", True),
    ],
)
def test_glob_to_regex(pattern: str, path: str, matches: bool) -> None:
    assert bool(glob_to_regex(pattern).match(path)) is matches


def test_rule_from_glob_finds_base_and_depth() -> None:
    assert Rule.from_glob("/etc/mev/**").base == "/etc/mev"
    assert Rule.from_glob("/etc/mev/**").recursive
    assert not Rule.from_glob("/etc/mev/*.json").recursive
    assert Rule.from_glob("/etc/*/x").recursive
    assert Rule.from_glob("/etc/mev/config.yaml").base == "/etc/mev/config.yaml"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "a.yaml").write_text("a")
    (root / "b.json").write_text("b")
    (root / ".hidden").write_text("h")
    (root / "sub" / "c.yaml").write_text("c")
    (root / "sub" / "deep" / "d.swp").write_text("d")
    (root / "skip").mkdir()
    (root / "skip" / "e").write_text("e")
    return root


def test_watch_set_expands_globs_directories_and_excludes(tree: Path) -> None:
    r = str(tree)
    ws = WatchSet.build(
        files=[f"{r}/absent.conf"], globs=[f"{r}/**/*.yaml"], directories=[(r, True)],
        excludes=["*.swp", f"{r}/skip"],
    )
    got = ws.expand()
    assert f"{r}/absent.conf" in got  # explicit files are listed even when absent
    assert f"{r}/.hidden" in got  # hidden files are not skipped like a shell glob would
    assert f"{r}/sub/deep" in got
    assert f"{r}/sub/deep/d.swp" not in got
    assert not any(p.startswith(f"{r}/skip") for p in got)
    assert ws.covers(f"{r}/sub/new.yaml")
    assert not ws.covers(f"{r}/sub/new.swp")
    assert not ws.covers("/etc/passwd")
    assert set(ws.directories()) == {r, f"{r}/sub", f"{r}/sub/deep"}


def test_non_recursive_directory_and_missing_parent(tree: Path) -> None:
    r = str(tree)
    ws = WatchSet.build(files=[f"{r}/nope/deeper/f"], directories=[(r, False)])
    assert f"{r}/sub/c.yaml" not in ws.expand()
    assert f"{r}/sub" in ws.expand()
    # the nearest existing ancestor is watched so that creating the parent is seen
    assert set(ws.directories()) == {r}


def test_rootfs_prefix_maps_host_paths(tree: Path) -> None:
    ws = WatchSet.build(globs=["/sub/**"], rootfs=str(tree))
    assert ws.expand() == ["/sub/c.yaml", "/sub/deep", "/sub/deep/d.swp"]
    assert ws.real("/sub/c.yaml") == str(tree / "sub" / "c.yaml")
    assert ws.host(str(tree / "sub")) == "/sub"


# --- one record of each file type -----------------------------------------------------------


def test_regular_file_record(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"hello")
    r = read_record(str(f))
    assert r is not None
    assert r.ftype == "file"
    assert r.sha256 == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert (r.size, r.mode) == (5, f.stat().st_mode & 0o7777)


def test_large_file_hashed_in_chunks(tmp_path: Path) -> None:
    import hashlib

    f = tmp_path / "big"
    data = os.urandom(3 * 4096 + 17)
    f.write_bytes(data)
    r = read_record(str(f), chunk=4096)
    assert r is not None
    assert r.sha256 == hashlib.sha256(data).hexdigest()


def test_fifo_is_never_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result: list[FileRecord | None] = []
    t = threading.Thread(target=lambda: result.append(read_record(str(fifo))), daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "reading a FIFO blocked"
    assert result[0] is not None
    assert result[0].ftype == "fifo"
    assert result[0].sha256 is None


def test_dangling_symlink_is_recorded_not_followed(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    r = read_record(str(link))
    assert r is not None
    assert (r.ftype, r.link_target) == ("symlink", str(tmp_path / "nowhere"))
    # followed, a dangling link names a file that does not exist: missing
    assert read_record(str(link), follow_symlinks=True) is None


def test_symlink_followed_reads_the_target(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("x")
    (tmp_path / "l").symlink_to("t")
    r = read_record(str(tmp_path / "l"), follow_symlinks=True)
    assert r is not None
    assert r.ftype == "file"
    assert r.sha256 is not None


def test_vanished_path_and_parent_replaced_by_file(tmp_path: Path) -> None:
    assert read_record(str(tmp_path / "gone")) is None
    (tmp_path / "p").write_text("now a file")
    assert read_record(str(tmp_path / "p" / "child")) is None


def test_quick_mode_reuses_hash_only_when_stat_matches(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("one")
    first = read_record(str(f))
    assert first is not None
    fake = FileRecord(**{**{s: getattr(first, s) for s in FileRecord.__slots__}, "sha256": "b" * 64})
    assert read_record(str(f), known=fake) is fake  # same stat: not read again, no new record
    f.write_text("two")
    again = read_record(str(f), known=fake)
    assert again is not None
    assert again.sha256 not in (None, "b" * 64)


def test_record_table_gives_back_every_record_as_it_was() -> None:
    records = [
        rec("/etc/a"),
        rec("/etc/dir", ftype="dir", sha256=None, size=4096, mode=0o755),
        rec("/etc/link", ftype="symlink", sha256=None, link_target="/etc/a"),
        rec("/etc/secret", sha256=None, error="permission denied", mode=0),
        rec("/etc/unknown", ftype="unknown", uid=-1, gid=-1, sha256=None, error="permission denied"),
        rec("/etc/huge", size=2**62, inode=2**64 - 1, uid=2**32 - 2, mtime_ns=-5 * 10**18, ctime_ns=2**63 - 1),
        rec("/etc/over", inode=2**64),  # out of the packed range: kept as it is
        rec("/etc/named-elsewhere"),
        rec("/etc/empty", sha256=None),
    ]
    table = RecordTable(records[:-2])
    table["/etc/stored-under-another-key"] = records[-2]
    table["/etc/empty"] = records[-1]
    assert len(table) == len(records)
    for r in records[:-2]:
        assert r.path in table
        assert table[r.path] == r
    assert table["/etc/stored-under-another-key"] == records[-2]
    assert table["/etc/empty"] == records[-1]
    assert table.get("/nope") is None
    assert "/nope" not in table
    del table["/etc/a"]
    assert "/etc/a" not in table
    assert len(table) == len(records) - 1
    assert RecordTable(records[:3]) == {r.path: r for r in records[:3]}


def test_record_table_keeps_every_path_apart_whatever_the_order_of_writes() -> None:
    # names in and out of order, a name that is not UTF-8, the root, a directory and its files,
    # names that are prefixes of each other: the table answers as a dict would after each step
    paths = ["/etc/mev/b", "/etc/mev/a", "/etc/mev", "/etc/mev/a/x", "/etc/mev/ab", "/", "/etc/mev/\udcff",
             "/etc/mev/a.", "/etc/me", "/etc/mev/0"]
    table, model = RecordTable(), {}
    for i, p in enumerate(paths):
        table[p] = model[p] = rec(p, size=i)
        assert dict(table.items()) == model
    table["/etc/mev/a"] = model["/etc/mev/a"] = rec("/etc/mev/a", size=99)  # replaced in place
    table["/etc/mev/ab"] = model["/etc/mev/ab"] = rec("/etc/mev/ab", sha256=None, error="permission denied")
    assert dict(table.items()) == model
    for p in ["/etc/mev/a", "/", "/etc/mev/ab", "/etc/mev/\udcff"]:
        del table[p]
        del model[p]
        assert dict(table.items()) == model
        assert len(table) == len(model)
    with pytest.raises(KeyError):
        del table["/etc/mev/a"]
    assert "/etc/mev/a" not in table
    assert "/etc/mev/a/x" in table


def test_record_table_sees_an_unchanged_file_by_its_stat_alone(tmp_path: Path) -> None:
    f = tmp_path / "config.yaml"
    f.write_text("one")
    ws = WatchSet.build(files=[str(f)])
    table = RecordTable(verify(ws, {})[0].values())
    assert table.unchanged(str(f), os.lstat(f))
    assert not table.unchanged(str(tmp_path / "other"), os.lstat(f))
    assert not table.unchanged(str(tmp_path), os.lstat(tmp_path))  # not a regular file
    st = os.lstat(f)

    def restat(**changed: int) -> os.stat_result:
        fields = {name: getattr(st, name) for name in ("st_mode", "st_ino", "st_uid", "st_gid", "st_size",
                                                       "st_mtime_ns", "st_ctime_ns")}
        return cast(os.stat_result, SimpleNamespace(**(fields | changed)))

    assert table.unchanged(str(f), restat())
    for changed in (
        {"st_mode": st.st_mode | 0o002}, {"st_uid": st.st_uid + 1}, {"st_gid": st.st_gid + 1},
        {"st_ino": st.st_ino + 1},  # replaced by a rename
        {"st_size": st.st_size + 1}, {"st_mtime_ns": st.st_mtime_ns + 1}, {"st_ctime_ns": st.st_ctime_ns + 1},
    ):
        assert not table.unchanged(str(f), restat(**changed)), changed
    f.write_text("two")  # same size; ctime moves
    assert not table.unchanged(str(f), os.lstat(f))
    unreadable = RecordTable([rec(str(f), sha256=None)])  # no digest: quick mode must read it
    assert not unreadable.unchanged(str(f), os.lstat(f))


def test_record_table_holds_a_file_record_in_less_than_170_bytes() -> None:
    # As a FileRecord with its hex digest and its own ints (as loaded from the DB) a file costs ~500 bytes,
    # as a full path and a packed bytes object ~270.
    t0 = 1_700_000_000 * 10**9
    made = [rec(f"/srv/tree/d{i // 100:03d}/f{i:05d}.conf", size=100 + i, inode=10**6 + i, mtime_ns=t0 + i,
                ctime_ns=t0 + i, sha256=os.urandom(32).hex(), uid=1000, gid=1000) for i in range(2000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        table = RecordTable(made)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(table) == 2000
    assert held / 2000 < 170, f"{held / 2000:.0f} bytes per record"


def test_verify_in_batches_finds_what_verify_at_once_does(tree: Path) -> None:
    ws = WatchSet.build(directories=[(str(tree), True)])
    base, _ = verify(ws, {})
    table = RecordTable(base.values())
    (tree / "a.yaml").write_text("changed")
    (tree / "b.json").unlink()
    (tree / "new").write_text("n")
    for quick in (False, True):
        current, violations = verify(ws, table, quick=quick)
        batched = list(verify_each(ws, table, quick=quick, batch=2))
        assert {p: r or table[p] for p, r, exists, _ in batched if exists} == current
        assert [v for *_, found in batched for v in found] == violations
        assert [p for p, *_ in batched] == sorted(p for p, *_ in batched)
        # in quick mode an unchanged file is checked without a record of its own
        assert any(r is None and exists for _, r, exists, _ in batched) == quick
        assert {(v.path.rsplit("/", 1)[1], v.kind) for v in violations} == {
            ("a.yaml", "content"), ("b.json", "missing"), ("new", "new"),
        }


# --- comparison -------------------------------------------------------------------------------


def test_compare_each_kind() -> None:
    base = rec()
    assert compare("/x", base, base) == []

    def kinds(found: FileRecord | None) -> list[str]:
        return [v.kind for v in compare("/x", base, found)]

    assert kinds(rec(sha256="b" * 64)) == ["content"]
    assert kinds(rec(size=2, sha256="a" * 64)) == ["content"]
    assert kinds(rec(mode=0o666)) == ["mode"]
    assert kinds(rec(uid=1000)) == ["owner"]
    assert kinds(rec(gid=5)) == ["owner"]
    assert kinds(rec(inode=9)) == ["inode"]
    assert kinds(rec(ftype="dir", sha256=None)) == ["type"]
    assert kinds(None) == ["missing"]
    assert [v.kind for v in compare("/x", None, base)] == ["new"]
    assert kinds(rec(sha256=None, error="permission denied", mode=0)) == ["unreadable", "mode"]
    assert kinds(rec(inode=2, mode=0o600, sha256="c" * 64)) == ["content", "mode", "inode"]


def test_compare_symlink_target_and_expected_found_text() -> None:
    base = rec(ftype="symlink", sha256=None, link_target="/a")
    (v,) = compare("/x", base, rec(ftype="symlink", sha256=None, link_target="/b"))
    assert (v.kind, v.expected, v.found) == ("content", "target=/a", "target=/b")


def test_verify_reports_every_difference(tree: Path) -> None:
    r = str(tree)
    ws = WatchSet.build(directories=[(r, True)])
    base, everything_new = verify(ws, {})
    assert {v.kind for v in everything_new} == {"new"}
    assert verify(ws, base)[1] == []
    (tree / "a.yaml").write_text("changed")
    (tree / "b.json").unlink()
    (tree / "new").write_text("n")
    os.chmod(tree / "sub" / "c.yaml", 0o600)
    _, found = verify(ws, base, threads=3)
    got = {(v.path, v.kind) for v in found}
    assert got == {
        (f"{r}/a.yaml", "content"), (f"{r}/b.json", "missing"), (f"{r}/new", "new"), (f"{r}/sub/c.yaml", "mode"),
    }
    # quick mode finds the same through the changed ctime
    _, quick = verify(ws, base, quick=True)
    assert {(v.path, v.kind) for v in quick} == got


def test_scan_threads_match_single_thread(tree: Path) -> None:
    ws = WatchSet.build(directories=[(str(tree), True)])
    paths = ws.expand()
    (tree / "big").write_bytes(os.urandom(9 << 20))
    paths.append(str(tree / "big"))
    assert scan(ws, paths, threads=4) == scan(ws, paths, threads=1)


# --- baseline store -------------------------------------------------------------------------


def test_baseline_roundtrip_update_and_log(state_db: StateDB) -> None:
    store = BaselineStore(state_db, "default")
    assert not store.load().present
    store.replace_all({"/a": rec("/a"), "/b": rec("/b")}, WHO)
    b = store.load()
    assert b.present
    assert not b.tampered
    assert set(b.records) == {"/a", "/b"}
    gen = b.generation
    store.update({"/a": rec("/a", mode=0o600), "/b": None}, Who(0, "root", "alice"))
    b2 = store.load()
    assert b2.generation == gen + 1 == store.generation()
    assert set(b2.records) == {"/a"}
    assert b2.records["/a"].mode == 0o600
    log = store.accept_log()
    assert (log[0].action, log[0].paths, log[0].sudo_user) == ("accept", ["/a", "/b"], "alice")
    assert log[1].action == "baseline"


def test_baselines_of_instances_are_separate(state_db: StateDB) -> None:
    BaselineStore(state_db, "one").replace_all({"/a": rec("/a")}, WHO)
    assert not BaselineStore(state_db, "two").load().present


def test_hmac_detects_an_edited_row(state_db: StateDB) -> None:
    key = b"k" * 32
    store = BaselineStore(state_db, "default", key)
    store.replace_all({"/a": rec("/a")}, WHO)
    assert not store.load().tampered
    state_db.execute("UPDATE integrity_baseline SET sha256 = ? WHERE path = '/a'", ("f" * 64,))
    assert store.load().tampered
    assert BaselineStore(state_db, "default", b"other-key-123456").load().tampered


def test_hmac_detects_a_deleted_row_and_a_stripped_mac(state_db: StateDB) -> None:
    store = BaselineStore(state_db, "default", b"k" * 32)
    store.replace_all({"/a": rec("/a"), "/b": rec("/b")}, WHO)
    state_db.execute("DELETE FROM integrity_baseline WHERE path = '/b'")
    assert store.load().tampered
    store.replace_all({"/a": rec("/a")}, WHO)
    state_db.execute("DELETE FROM integrity_meta WHERE key = 'hmac'")
    assert store.load().tampered


def test_corrupt_rows_are_reported_not_raised(state_db: StateDB) -> None:
    store = BaselineStore(state_db, "default")
    store.replace_all({"/a": rec("/a"), "/b": rec("/b")}, WHO)
    state_db.execute("UPDATE integrity_baseline SET sha256 = 'xyz' WHERE path = '/a'")
    state_db.execute("UPDATE integrity_baseline SET ftype = 'banana' WHERE path = '/b'")
    b = store.load()
    assert b.present
    assert sorted(b.corrupt) == ["/a: sha256 is not 64 hex digits", "/b: unknown file type 'banana'"]
    assert b.records == {}


def test_rows_without_meta_are_corrupt(state_db: StateDB) -> None:
    store = BaselineStore(state_db, "default")
    store.replace_all({"/a": rec("/a")}, WHO)
    state_db.execute("DELETE FROM integrity_meta")
    b = store.load()
    assert b.present
    assert b.corrupt == ["meta: baseline rows without their metadata"]


def test_who_am_i_names_sudo_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUDO_USER", "alice")
    w = who_am_i()
    assert (w.uid, w.sudo_user) == (os.getuid(), "alice")
    assert w.user


def test_state_db_that_is_not_sqlite(tmp_path: Path) -> None:
    from mevwatch.daemon.state import StateError

    (tmp_path / "state.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError):
        BaselineStore(StateDB.open_dir(tmp_path), "default")


# --- options --------------------------------------------------------------------------------


def test_default_options_watch_the_runbook_files() -> None:
    o = IntegrityOptions()
    assert o.files == ["/etc/mev/config.yaml", "/usr/local/bin/mev-engine", "/etc/mev/wallets.json"]
    assert o.globs == ["/etc/mev/**"]
    assert o.verify_interval == 3600.0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"files": ["relative/path"]}, "is not an absolute path"),
        ({"globs": ["*.conf"]}, "is not an absolute path"),
        ({"directories": [{"path": "etc"}]}, "is not an absolute path"),
        ({"directories": [{"path": "/etc", "depth": 1}]}, "Extra inputs"),
        ({"verify_interval": "0s"}, "greater than 0"),
        ({"hash_threads": 0}, "greater than or equal to 1"),
        ({"chunk_size": "1KiB"}, "greater than or equal to 4096"),
        ({"verify_mode": "sometimes"}, "'quick' or 'full'"),
        ({"max_violation_series": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_options(body: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        IntegrityOptions.model_validate(body)


def test_hmac_key_file_errors(tmp_path: Path) -> None:
    assert read_hmac_key(IntegrityOptions()) is None
    with pytest.raises(ValueError, match="cannot read secret file"):
        read_hmac_key(IntegrityOptions(hmac_key_file=tmp_path / "absent"))
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ValueError, match="shorter than 16"):
        read_hmac_key(IntegrityOptions(hmac_key_file=tmp_path / "short"))
    (tmp_path / "good").write_text("0123456789abcdef0123\n")
    assert read_hmac_key(IntegrityOptions(hmac_key_file=tmp_path / "good")) == b"0123456789abcdef0123"


def test_sqlite_direct_edit_is_visible(state_db: StateDB) -> None:
    """The baseline lives in the shared state DB file, where a second connection (an attacker) can edit it."""
    store = BaselineStore(state_db, "default", b"k" * 32)
    store.replace_all({"/a": rec("/a")}, WHO)
    other = sqlite3.connect(str(state_db.path))
    other.execute("UPDATE integrity_baseline SET mode = 511")
    other.commit()
    other.close()
    assert store.load().tampered


@pytest.mark.parametrize(
    ("content", "stated"),
    [
        (b"", 0),
        (b"x" * 4096, 4096),  # read whole at its stat'ed size
        (b"y" * 70_000, 70_000),  # over the 16 KiB chunk: several reads
        (b"z" * 9000, 100),  # grew after the stat: read on past the size the buffer was cut to
        (b"w" * 100, 9000),  # shrank after the stat
    ],
)
def test_hash_file_reads_the_whole_file_whatever_size_it_was_stated_with(
    tmp_path: Path, content: bytes, stated: int
) -> None:
    import hashlib

    from mevwatch.collectors._integrity_scan import hash_file

    f = tmp_path / "f"
    f.write_bytes(content)
    fd = os.open(f, os.O_RDONLY)
    try:
        assert hash_file(fd, 16 << 10, stated) == hashlib.sha256(content).hexdigest()
    finally:
        os.close(fd)
