"""The baseline keeps every file name exactly, whatever bytes it holds, under its HMAC."""

from __future__ import annotations

import os

from mevwatch.collectors._integrity_baseline import BaselineStore, Who
from mevwatch.collectors._integrity_scan import FileRecord
from mevwatch.daemon.state import StateDB

WHO = Who(0, "root", None)
# os.listdir's str for names holding the bytes 0xff, a newline, a quote; and a link to a 0xfe name
NAMES = ["/w/x" + os.fsdecode(b"\xff"), "/w/nl\nx", '/w/q"x', "/w/plain", "/w/caf\u00e9"]


def _rec(path: str, target: str | None = None) -> FileRecord:
    return FileRecord(path, "symlink" if target else "file", 1, 0o644, 0, 0, 1, 1, 1,
                      None if target else "a" * 64, target)


def test_names_that_are_not_utf8_round_trip_losslessly_under_the_hmac(state_db: StateDB) -> None:
    store = BaselineStore(state_db, "default", b"k" * 32)
    records = {p: _rec(p) for p in NAMES}
    link = "/w/link" + os.fsdecode(b"\xfd")
    records[link] = _rec(link, "/w/t" + os.fsdecode(b"\xfe"))
    store.replace_all(records, WHO)
    loaded = store.load()
    assert loaded.records == records
    assert not loaded.tampered
    assert not loaded.corrupt
    rows = dict(state_db.query("SELECT path, typeof(path) FROM integrity_baseline"))
    assert rows[b"/w/x\xff"] == "blob"  # the very bytes, not a replacement character
    assert rows["/w/caf\u00e9"] == "text"  # UTF-8 names stay text, as before
    store.update({NAMES[0]: None, NAMES[1]: _rec(NAMES[1])}, WHO)
    again = store.load()
    assert set(again.records) == set(records) - {NAMES[0]}
    assert not again.tampered
    assert store.accept_log()[0].paths == sorted([NAMES[0], NAMES[1]])
    state_db.execute("UPDATE integrity_baseline SET mode = 384 WHERE path = ?", (b"/w/link\xfd",))
    assert store.load().tampered  # an edit of a BLOB-named row is caught like any other
