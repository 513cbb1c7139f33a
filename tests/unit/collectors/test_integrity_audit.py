"""The audit log reader: real auditd lines (``sed -i``, a shell append, a name that needs hex), read
backwards, matched to changed files; and the page text when the writer cannot be told."""

from __future__ import annotations

import os
import random
from pathlib import Path

from mevwatch.collectors._integrity_audit import (
    AuditLog,
    AuditTarget,
    device,
    parse_events,
    parse_record,
    who_wrote,
)
from mevwatch.collectors._integrity_writers import Writer, WriterLog, user_name

FIXTURE = Path(__file__).parents[2] / "fixtures" / "audit" / "sed-i.log"
SED_TIME = 1796411129.285  # the events of `sed -i s/hi/ho/ w/f` run in /tmp/writers-exp


def _lines(text: str) -> list[str]:
    return text.split("\n")  # not splitlines(): it also splits at the GS byte of the enriched format


def test_a_record_is_parsed_and_its_enriched_part_ignored() -> None:
    line = next(ln for ln in _lines(FIXTURE.read_text()) if 'syscall=257' in ln)
    rec = parse_record(line)
    assert rec is not None
    assert (rec.type, rec.time, rec.serial) == ("SYSCALL", SED_TIME, 11)
    assert (rec.fields["comm"], rec.fields["exe"]) == ("sed", "/usr/bin/sed")
    assert (rec.fields["pid"], rec.fields["auid"]) == ("27056", "4294967295")
    assert not {"ARCH", "AUID"} & set(rec.fields)  # after the GS byte: interpretations
    assert rec.fields["key"] == "mevwatch"
    assert parse_record("not an audit line") is None
    assert parse_record("") is None


def test_events_join_their_records_and_resolve_names_against_the_cwd() -> None:
    events = parse_events(_lines(FIXTURE.read_text()))
    rename = next(e for e in events if e.serial == 14)
    assert (rename.pid, rename.uid, rename.comm, rename.exe, rename.success) == (27056, 0, "sed", "/usr/bin/sed", "yes")
    assert rename.login_uid is None  # auid unset: no login session
    assert rename.cwd == "/tmp/writers-exp"
    names = list(rename.names())
    assert ("/tmp/writers-exp/w/f", 2213801, "fe:00") in names  # the temporary file, renamed over w/f
    assert ("/tmp/writers-exp/w/sedMqVax3", 2213801, "fe:00") in names
    assert all(n != "/tmp/writers-exp/w" for n, _, _ in names)  # parents are not what was written
    fchown = next(e for e in events if e.serial == 12)
    assert list(fchown.names()) == [("", 2213801, "fe:00")]  # (null): known by inode only
    # a name with a space and a quote is written in hex
    python = next(e for e in events if e.comm == "python3")
    assert ('/tmp/writers-exp/w/a b"c', 2213777, "fe:00") in list(python.names())
    assert [e.serial for e in events] == sorted(e.serial for e in events)


def test_find_names_the_last_writer_of_a_file_by_name_or_inode() -> None:
    log = AuditLog(str(FIXTURE))
    assert log.status() == ""
    by_name = AuditTarget("/tmp/writers-exp/w/f")
    found = log.find([by_name])
    assert found[by_name.path].comm == "sh"  # the append after sed is the last write
    # only what happened since the change counts, and fanotify's pid wins over a later writer
    sed = AuditTarget("/tmp/writers-exp/w/f", pid=27056, not_before=SED_TIME - 1)
    assert log.find([sed])[sed.path].serial == 14
    by_inode = AuditTarget("/tmp/writers-exp/w/renamed-since", inode=2213801, dev="fe:00", pid=27056)
    assert log.find([by_inode])[by_inode.path].comm == "sed"
    later = AuditTarget("/tmp/writers-exp/w/f", not_before=SED_TIME + 10)
    assert log.find([later]) == {}
    assert log.find([AuditTarget("/etc/shadow")]) == {}


def test_reading_backwards_crosses_chunk_boundaries(tmp_path: Path) -> None:
    """A log longer than one read: the match is found in its oldest chunk, lines cut by a chunk intact."""
    rng = random.Random(7)
    sample = FIXTURE.read_text()
    filler = [line for line in _lines(sample) if "auditctl" in line or "CONFIG_CHANGE" in line]
    lines = _lines(sample.rstrip())
    for serial in range(100, 1600):  # ~600 KiB of other processes' events after sed's
        pad = "x" * rng.randrange(1, 300)
        lines.append(f"type=SYSCALL msg=audit(1796411200.{serial % 1000:03d}:{serial}): arch=c000003e syscall=1 "
                     f"success=yes exit=1 items=1 ppid=1 pid={serial} auid=1000 uid=1000 comm=\"cat\" "
                     f"exe=\"/usr/bin/cat\" key=\"{pad}\"")
        lines.append(f"type=PATH msg=audit(1796411200.{serial % 1000:03d}:{serial}): item=0 name=\"/srv/{serial}\" "
                     "inode=1 dev=fe:00 nametype=NORMAL")
    lines.extend(filler)
    path = tmp_path / "audit.log"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size > 3 * (64 << 10)
    sed = AuditTarget("/tmp/writers-exp/w/f", pid=27056)
    assert AuditLog(str(path)).find([sed])[sed.path].serial == 14
    late = AuditTarget("/srv/1599")
    assert AuditLog(str(path)).find([late])[late.path].pid == 1599
    # bounded: a scan limit shorter than the distance to sed's events does not reach them
    assert AuditLog(str(path), scan_limit=64 << 10).find([sed]) == {}


def test_the_page_says_why_a_writer_is_unknown(tmp_path: Path) -> None:
    f = tmp_path / "config.yaml"
    f.write_text("x\n")
    st = f.stat()
    writers = WriterLog()
    writers._remember(str(f), (st.st_dev, st.st_ino), Writer(4242, "exited", None, ""))
    missing = AuditLog(str(tmp_path / "no-such.log"))
    assert missing.status() == "no audit log"
    assert who_wrote([str(f)], writers, missing) == {str(f): "pid 4242 (exited), uid unknown (no audit log)"}
    assert who_wrote([str(f)], None, None) == {str(f): "unknown (no audit log)"}
    empty = tmp_path / "audit.log"
    empty.write_text("")
    # an audit log without the record: said so, after waiting a bounded time for it
    assert who_wrote([str(f)], None, AuditLog(str(empty)), wait=0.2) == {str(f): "unknown (not in the audit log)"}
    # a running writer fanotify saw is named without the audit log
    writers._remember(str(f), (st.st_dev, st.st_ino), Writer(77, "vim", 1000, "alice"))
    assert who_wrote([str(f)], writers, missing) == {str(f): "pid 77 (vim), uid 1000 (alice)"}


def test_the_audit_log_names_an_exited_writer(tmp_path: Path) -> None:
    f = tmp_path / "wallets.json"
    f.write_text("{}\n")
    st = f.stat()
    dev = device(st.st_dev)
    log = tmp_path / "audit.log"
    log.write_text(
        f'type=SYSCALL msg=audit({st.st_ctime:.3f}:9): arch=c000003e syscall=82 success=yes exit=0 items=2 '
        f'ppid=1 pid=4242 auid=1000 uid=0 gid=0 euid=0 comm="cp" exe="/usr/bin/cp" key="mevwatch"\n'
        f'type=CWD msg=audit({st.st_ctime:.3f}:9): cwd="{tmp_path}"\n'
        f'type=PATH msg=audit({st.st_ctime:.3f}:9): item=0 name="{tmp_path}/" inode=2 dev={dev} nametype=PARENT\n'
        f'type=PATH msg=audit({st.st_ctime:.3f}:9): item=1 name="wallets.json" inode={st.st_ino} dev={dev} '
        "nametype=CREATE\n"
    )
    writers = WriterLog()
    writers._remember(str(f), (st.st_dev, st.st_ino), Writer(4242, "exited", None, ""))
    told = who_wrote([str(f)], writers, AuditLog(str(log)))[str(f)]
    assert told == f"pid 4242 (cp), uid 0 (root), login uid 1000 ({user_name(1000)}), /usr/bin/cp", told
    os.unlink(f)  # a file that is gone is matched by its name
    assert who_wrote([str(f)], None, AuditLog(str(log)), since=st.st_ctime - 5)[str(f)].startswith("pid 4242 (cp)")
